"""What a repository asks its registry to settle its documents: which of them are registered.

Blind to status and to the access policy: hidden, Deprecated and every other state count as
registered, because the question is only whether the bytes are still needed. Asked about given
uniqueIds, the answer is taken under the same per-uniqueId locks as ITI-42, with the registry's
own clock: a registration of those uniqueIds is either committed before it or refused after it
once its CommitDeadline has passed (docs/decisions.md, "ITI-41 as a recoverable protocol").
"""
from __future__ import annotations

import datetime as _dt

from lxml import etree

from xds import errors as E
from xds import registered as wire
from xds.errors import XdsException
from .store import RegistryStore

MAX_PAGE = 10_000


def registered_documents(store: RegistryStore, body: etree._Element, allowed: set[str] | None) -> etree._Element:
    """Answer one RegisteredDocumentsRequest. allowed: the repositoryUniqueIds this caller may ask
    about (None: any, where ITI-42 itself is open to any caller)."""
    if body.tag != wire.REQUEST_TAG:
        raise XdsException(E.REGISTRY_ERROR, f"expected RegisteredDocumentsRequest, got "
                           f"{etree.QName(body).localname}", "Body")
    repo = (body.get("repositoryUniqueId") or "").strip()
    if not repo:
        raise XdsException(E.REGISTRY_ERROR, "RegisteredDocumentsRequest has no repositoryUniqueId", "Body")
    if allowed is not None and repo not in allowed:
        raise XdsException(E.UNKNOWN_REPOSITORY_ID, f"the caller is not repository {repo} in this registry's "
                           "directory", repo)
    uids = [(el.text or "").strip() for el in body.iterchildren(wire.UNIQUE_ID_TAG)]
    next_uid = None
    if uids:
        with store.transaction() as conn:
            # Waits for any registration of these uniqueIds in progress, then reads the clock.
            store.lock_unique_ids(conn, uids)
            now = _dt.datetime.now(_dt.timezone.utc)
            rows = store.registered_documents(conn, repo, unique_ids=uids)
    else:
        limit = _limit(body.get("limit"))
        with store.reading() as conn:
            now = _dt.datetime.now(_dt.timezone.utc)
            rows = store.registered_documents(conn, repo, after=body.get("after"), limit=limit + 1)
        if len(rows) > limit:
            rows = rows[:limit]
            next_uid = rows[-1][0]
    return wire.response(now, rows, next_uid)


def _limit(text: str | None) -> int:
    if text is None:
        return 1000
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 0 < n <= MAX_PAGE:
        raise XdsException(E.REGISTRY_ERROR, f"limit {text[:32]!r} is not a number from 1 to {MAX_PAGE}", "limit")
    return n
