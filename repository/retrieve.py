"""ITI-43 Retrieve Document Set: find each requested document and stream it back as an MTOM part."""
from __future__ import annotations

from lxml import etree

from xds import errors as E
from xds.ebrim import status_for
from xds.errors import XdsError
from xds.mtom import new_cid, xop_include
from xds.xdsb import SAFE_MIME, not_held, read_requests, retrieve_response, x as _x
from .blobs import BlobStore
from .store import RepositoryStore

__all__ = ["retrieve", "retrieve_response", "read_requests"]


def retrieve(body: etree._Element, store: RepositoryStore, blobs: BlobStore, repository_id: str, guard=None):
    """Returns the response element and its attachments [(cid, content type, file path)].
    guard: the access policy of the request (repository/guard.py); a document it withholds is answered
    exactly as one this repository does not hold. None: every document is served."""
    items = read_requests(body)
    mine = list(dict.fromkeys(uid for _, repo, uid in items if repo == repository_id))
    allowed = guard.retrievable(mine) if guard is not None else set(mine)
    rows = store.get_many(uid for uid in mine if uid in allowed)
    errors: list[XdsError] = []
    answers: list[etree._Element] = []
    attachments: list[tuple[str, str, str]] = []
    for home, repo, uid in items:
        if repo != repository_id:
            errors.append(XdsError(E.UNKNOWN_REPOSITORY_ID, f"RepositoryUniqueId {repo} (asked for document {uid}) "
                                   f"is not this repository, which is {repository_id}", repo))
            continue
        row = rows.get(uid)
        path = blobs.local_path(row.location) if row is not None else None
        if row is None:
            errors.append(not_held(uid, repository_id))
            continue
        if path is None or not blobs.exists(row.location):
            errors.append(XdsError(E.REPOSITORY_ERROR, f"document {uid} is recorded but its content is missing "
                                   f"from the document store", uid))
            continue
        cid = new_cid()
        dr = etree.Element(_x("DocumentResponse"))
        if home:
            etree.SubElement(dr, _x("HomeCommunityId")).text = home
        etree.SubElement(dr, _x("RepositoryUniqueId")).text = repository_id
        etree.SubElement(dr, _x("DocumentUniqueId")).text = uid
        etree.SubElement(dr, _x("mimeType")).text = row.mime_type
        xop_include(etree.SubElement(dr, _x("Document")), cid)
        answers.append(dr)
        part_type = row.mime_type if SAFE_MIME.match(row.mime_type) else "application/octet-stream"
        attachments.append((cid, part_type, path))
    status = status_for(errors, partial=bool(answers))
    response = retrieve_response(errors, status)
    for dr in answers:
        response.append(dr)
    return response, attachments
