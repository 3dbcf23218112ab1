"""What a Success Retrieve (ITI-43) must hand back: one document per request, from the
right repository, with the registry's mimeType, hash and size, and the submitted bytes."""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from lxml import etree

from xds import constants as C
from xds import mtom


def _x(local: str) -> str:
    return C.q(C.NS_XDSB, local)


@dataclass
class Registered:
    mime_type: str | None
    hash: str | None
    size: str | None


def registry_view(result: etree._Element | None) -> dict[str, Registered]:
    """DocumentEntry uniqueId → what the registry said about it (ReferenceMetadata)."""
    out: dict[str, Registered] = {}
    if result is None:
        return out
    for eo in result.iter(C.q(C.NS_RIM, "ExtrinsicObject")):
        uid = None
        for ei in eo.iter(C.q(C.NS_RIM, "ExternalIdentifier")):
            if ei.get("identificationScheme") == C.DE_UNIQUE_ID:
                uid = ei.get("value")
        slots = {}
        for slot in eo.findall(C.q(C.NS_RIM, "Slot")):
            v = slot.find(f"{C.q(C.NS_RIM, 'ValueList')}/{C.q(C.NS_RIM, 'Value')}")
            if v is not None:
                slots[slot.get("name")] = (v.text or "").strip()
        if uid:
            out[uid] = Registered(eo.get("mimeType"), slots.get("hash"), slots.get("size"))
    return out


def document_bytes(doc: etree._Element, parts) -> bytes | None:
    include = doc.find(C.q(C.NS_XOP, "Include"))
    if include is not None:
        if parts is None:
            return None
        found = mtom.resolve_xop(doc, parts)
        att = found.get(doc)
        return att.read_bytes() if att is not None else None
    text = "".join(doc.itertext()).strip()
    try:
        return base64.b64decode(text, validate=False)
    except ValueError:
        return None


def check(body: etree._Element, requested: list[tuple[str, str]], reference: dict[str, Registered],
          documents: dict[str, bytes], parts, expected_mime: str | None = None
          ) -> tuple[list[str], dict[str, str]]:
    """Problems, and the reports the toolkit publishes per returned document ($repuid_doc1$ …)."""
    problems: list[str] = []
    reports: dict[str, str] = {}
    responses = body.findall(_x("DocumentResponse"))
    if len(responses) != len(requested):
        problems.append(f"{len(requested)} document(s) requested, {len(responses)} returned")
    wanted_repo = {uid: repo for repo, uid in requested}
    for n, resp in enumerate(responses, 1):
        uid = (resp.findtext(_x("DocumentUniqueId")) or "").strip()
        repo = (resp.findtext(_x("RepositoryUniqueId")) or "").strip()
        mime = resp.findtext(_x("mimeType"))
        home = resp.findtext(_x("HomeCommunityId")) or ""
        label = f"document {uid or n}"
        if uid not in wanted_repo:
            problems.append(f"{label} was not requested")
        elif repo != wanted_repo[uid]:
            problems.append(f"{label}: RepositoryUniqueId {repo}, requested {wanted_repo[uid]}")
        reg = reference.get(uid)
        want_mime = expected_mime or (reg.mime_type if reg else None)
        if want_mime and mime != want_mime:
            problems.append(f"{label}: mimeType {mime}, the registry says {want_mime}")
        doc = resp.find(_x("Document"))
        data = document_bytes(doc, parts) if doc is not None else None
        if data is None:
            problems.append(f"{label}: no Document content")
            continue
        sha1 = hashlib.sha1(data).hexdigest()
        if reg is not None and reg.hash and reg.hash.lower() != sha1:
            problems.append(f"{label}: SHA-1 of the bytes is {sha1}, the registry's hash is {reg.hash}")
        if reg is not None and reg.size and reg.size != str(len(data)):
            problems.append(f"{label}: {len(data)} bytes returned, the registry's size is {reg.size}")
        if reg is None and reference:
            problems.append(f"{label}: not in the reference metadata")
        if uid in documents and documents[uid] != data:
            problems.append(f"{label}: the bytes differ from the submitted file "
                            f"({len(data)} returned, {len(documents[uid])} expected)")
        reports.update({f"$repuid_doc{n}$": repo, f"$mimetype_doc{n}$": mime or "", f"$hash_doc{n}$": sha1,
                        f"$size_doc{n}$": str(len(data)), f"$home_doc{n}$": home})
    return problems, reports
