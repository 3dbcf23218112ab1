"""ITI-43 Retrieve Document Set: find each requested document and stream it back as an MTOM part."""
from __future__ import annotations

import re

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds.ebrim import registry_response
from xds.errors import ErrorList, XdsError, XdsException
from xds.mtom import new_cid, xop_include
from .blobs import BlobStore
from .store import RepositoryStore

REQUEST_TAG = C.q(C.NS_XDSB, "RetrieveDocumentSetRequest")
RESPONSE_TAG = C.q(C.NS_XDSB, "RetrieveDocumentSetResponse")
_NSMAP = {"xdsb": C.NS_XDSB, "rs": C.NS_RS}
# A stored mimeType becomes a MIME header only when it cannot break the framing.
_SAFE_MIME = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")


def _x(local: str) -> str:
    return C.q(C.NS_XDSB, local)


def retrieve_response(errors: list[XdsError] = (), status: str | None = None) -> etree._Element:
    """The ITI-43 answer; also the error payload, because a Consumer expects this element even on failure."""
    el = etree.Element(RESPONSE_TAG, nsmap=_NSMAP)
    el.append(registry_response(errors, status))
    return el


def _text(parent: etree._Element, local: str) -> str | None:
    child = parent.find(_x(local))
    if child is None or not (child.text or "").strip():
        return None
    return child.text.strip()


def read_requests(body: etree._Element, expected: str = REQUEST_TAG) -> list[tuple[str | None, str, str]]:
    """(homeCommunityId, repositoryUniqueId, documentUniqueId) of each DocumentRequest.

    expected: the request element, for the transactions that share this list (ITI-86 uses it too).
    """
    request_name = etree.QName(expected).localname
    if body.tag != expected:
        prefix = {C.NS_XDSB: "xdsb:", C.NS_RMD: "rmd:"}.get(etree.QName(expected).namespace, "")
        raise XdsException(E.REPOSITORY_ERROR, f"expected {prefix}{request_name}, got "
                           f"{etree.QName(body).localname}", "Body")
    problems = ErrorList(E.REPOSITORY_ERROR)
    items = []
    for n, dr in enumerate(body.iterchildren(_x("DocumentRequest")), 1):
        home, repo, uid = _text(dr, "HomeCommunityId"), _text(dr, "RepositoryUniqueId"), _text(dr, "DocumentUniqueId")
        where = f"DocumentRequest #{n}" + (f" (DocumentUniqueId {uid})" if uid else "")
        if repo is None:
            problems.add(f"{where} has no RepositoryUniqueId", uid or f"DocumentRequest[{n}]")
        if uid is None:
            problems.add(f"{where} has no DocumentUniqueId", repo or f"DocumentRequest[{n}]")
        if repo is not None and uid is not None:
            items.append((home, repo, uid))
    if not items and not problems.has_errors:
        problems.add(f"the {request_name} has no DocumentRequest", request_name)
    problems.raise_if_errors()
    return items


def retrieve(body: etree._Element, store: RepositoryStore, blobs: BlobStore, repository_id: str):
    """Returns the response element and its attachments [(cid, content type, file path)]."""
    items = read_requests(body)
    rows = store.get_many(uid for _, repo, uid in items if repo == repository_id)
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
            errors.append(XdsError(E.DOCUMENT_UNIQUE_ID_ERROR,
                                   f"document {uid} is not stored in repository {repository_id}", uid))
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
        part_type = row.mime_type if _SAFE_MIME.match(row.mime_type) else "application/octet-stream"
        attachments.append((cid, part_type, path))
    status = C.RESPONSE_SUCCESS
    if errors:
        status = C.RESPONSE_PARTIAL_SUCCESS if answers else C.RESPONSE_FAILURE
    response = retrieve_response(errors, status)
    for dr in answers:
        response.append(dr)
    return response, attachments
