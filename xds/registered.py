"""The wire format of the settlement lookup between this server's repositories and its registry
(action urn:xds-server:2026:RegisteredDocuments; registry/lookup.py answers it, repository/settle.py
asks it). Kept in the core so that both sides read and write it with the same code.

    <srv:RegisteredDocumentsRequest repositoryUniqueId="R" [after="uid" limit="n"]>
      <srv:DocumentUniqueId>uid</srv:DocumentUniqueId>*
    <srv:RegisteredDocumentsResponse registryTime="xs:dateTime" [next="uid"]>
      <srv:Document uniqueId="uid" hash="sha1" size="n" status="Approved" mimeType="text/xml"/>*
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Sequence

from lxml import etree

from . import constants as C
from . import errors as E
from .ebrim import read_response_errors
from .errors import XdsError, XdsException

REQUEST_TAG = C.q(C.NS_SERVER, "RegisteredDocumentsRequest")
RESPONSE_TAG = C.q(C.NS_SERVER, "RegisteredDocumentsResponse")
UNIQUE_ID_TAG = C.q(C.NS_SERVER, "DocumentUniqueId")
DOCUMENT_TAG = C.q(C.NS_SERVER, "Document")


def utc_text(when: _dt.datetime) -> str:
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str | None, where: str) -> _dt.datetime:
    value = (text or "").strip()
    try:
        parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise XdsException(E.REGISTRY_ERROR, f"{where} is {value[:64]!r}, not an xs:dateTime with a time zone", where)
    return parsed.astimezone(_dt.timezone.utc)


@dataclass
class Registered:
    """The registry's answer: its clock when it answered, and what it holds."""

    registry_time: _dt.datetime
    # uniqueId -> (hash, size, status, mimeType)
    documents: dict[str, tuple[str | None, int | None, str, str | None]] = field(default_factory=dict)
    next: str | None = None  # for a page: the uniqueId to continue after

    def holds(self, unique_id: str, sha1: str) -> bool:
        found = self.documents.get(unique_id)
        return found is not None and (found[0] or "").lower() == sha1.lower()

    def final_for(self, deadline: _dt.datetime) -> bool:
        """True once no ITI-42 sent with this CommitDeadline can still be committed."""
        return self.registry_time >= deadline


def request(repository_id: str, unique_ids: Sequence[str] = (), after: str | None = None,
            limit: int | None = None) -> etree._Element:
    req = etree.Element(REQUEST_TAG, nsmap={"srv": C.NS_SERVER}, repositoryUniqueId=repository_id)
    if after is not None:
        req.set("after", after)
    if limit is not None:
        req.set("limit", str(limit))
    for uid in unique_ids:
        etree.SubElement(req, UNIQUE_ID_TAG).text = uid
    return req


def response(registry_time: _dt.datetime, rows, next_uid: str | None = None) -> etree._Element:
    """rows: (uniqueId, hash, size, status URN or name, mimeType)."""
    out = etree.Element(RESPONSE_TAG, nsmap={"srv": C.NS_SERVER}, registryTime=utc_text(registry_time))
    if next_uid is not None:
        out.set("next", next_uid)
    for uid, sha1, size, status, mime in rows:
        el = etree.SubElement(out, DOCUMENT_TAG, uniqueId=uid, status=C.last_segment(status))
        if mime is not None:
            el.set("mimeType", mime)
        if sha1 is not None:
            el.set("hash", sha1)
        if size is not None:
            el.set("size", str(size))
    return out


def read_response(answer: etree._Element) -> Registered:
    if answer.tag != RESPONSE_TAG:
        _, errors = read_response_errors(answer)
        raise XdsException.of(errors or [XdsError(E.REGISTRY_ERROR, "the registry answered the settlement lookup "
                                                  f"with {etree.QName(answer).localname}", "lookup")])
    out = Registered(parse_utc(answer.get("registryTime"), "registryTime"), next=answer.get("next"))
    for el in answer.iterchildren(DOCUMENT_TAG):
        size = el.get("size")
        # Versions of one document share its uniqueId, hash and size: the first describes them all.
        out.documents.setdefault(el.get("uniqueId") or "", (el.get("hash"), int(size) if size and size.isdigit()
                                                            else None, el.get("status") or "", el.get("mimeType")))
    return out
