"""The XDS.b document-request messages (ITI-43, and ITI-86 which reuses its list): shared by the
repository that answers them and the registry that routes them to repository hosts."""
from __future__ import annotations

import re

from lxml import etree

from . import constants as C
from . import errors as E
from .ebrim import registry_response
from .errors import ErrorList, XdsError, XdsException

REQUEST_TAG = C.q(C.NS_XDSB, "RetrieveDocumentSetRequest")
RESPONSE_TAG = C.q(C.NS_XDSB, "RetrieveDocumentSetResponse")
_NSMAP = {"xdsb": C.NS_XDSB, "rs": C.NS_RS}
# A stored mimeType becomes a MIME header only when it cannot break the framing.
SAFE_MIME = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")


def x(local: str) -> str:
    return C.q(C.NS_XDSB, local)


def retrieve_response(errors: list[XdsError] = (), status: str | None = None) -> etree._Element:
    """The ITI-43 answer; also the error payload, because a Consumer expects this element even on failure."""
    el = etree.Element(RESPONSE_TAG, nsmap=_NSMAP)
    el.append(registry_response(errors, status))
    return el


def _text(parent: etree._Element, local: str) -> str | None:
    child = parent.find(x(local))
    if child is None or not (child.text or "").strip():
        return None
    return child.text.strip()


def not_held(unique_id: str, repository_id: str) -> XdsError:
    """The answer for a document a repository does not hold: a host's own (ITI-43, ITI-86), and the
    registry's for a document its access policy withholds, which must read exactly the same."""
    return XdsError(E.DOCUMENT_UNIQUE_ID_ERROR, f"document {unique_id} is not stored in repository {repository_id}",
                    unique_id)


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
    for n, dr in enumerate(body.iterchildren(x("DocumentRequest")), 1):
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
