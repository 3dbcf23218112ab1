"""ITI-43 answered by the registry for every repository it knows: each DocumentRequest goes to
its repository host, and the answers are merged, so a consumer needs one address."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds.app import SoapRequest, SoapResponse
from xds.client import SoapClient, TransportError
from xds.ebrim import read_response_errors, status_for
from xds.errors import XdsError
from xds.mtom import href_to_cid, new_cid
from xds.xdsb import read_requests, retrieve_response, x as _x
from .store import RegistryStore

log = logging.getLogger(__name__)

MAX_FORWARDS = 8  # repository hosts asked at once


class RetrieveRouter:
    """Forwards ITI-43 to the repository hosts of the directory, several at once on a pool of threads
    that lives as long as the router: `close()` ends it."""

    def __init__(self, store: RegistryStore, timeout: float = 30.0, ssl_context=None, spool_dir: str | None = None):
        self.store = store
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.spool_dir = spool_dir
        # Threads are started as forwards need them, up to MAX_FORWARDS.
        self._pool = ThreadPoolExecutor(max_workers=MAX_FORWARDS, thread_name_prefix="xds-route")

    def close(self) -> None:
        """Wait for the forwards in flight, then end the threads."""
        self._pool.shutdown(wait=True)

    def retrieve(self, req: SoapRequest) -> SoapResponse:
        items = read_requests(req.body)
        directory = self.store.repositories()
        errors: list[XdsError] = []
        groups: dict[str, list[tuple[str | None, str]]] = {}
        for home, repo, uid in items:
            if repo not in directory:
                errors.append(XdsError(E.UNKNOWN_REPOSITORY_ID, f"RepositoryUniqueId {repo} (asked for document "
                                       f"{uid}) is not in this registry's repository directory", repo))
            else:
                groups.setdefault(repo, []).append((home, uid))
        replies = list(self._pool.map(lambda kv: self._forward(kv[0], directory[kv[0]][0], kv[1], req.request_id),
                                      groups.items()))
        answers, attachments, cleanups = [], [], []
        for repo_errors, repo_answers, repo_attachments, cleanup in replies:
            errors += repo_errors
            answers += repo_answers
            attachments += repo_attachments
            if cleanup:
                cleanups.append(cleanup)
        response = retrieve_response(errors, status_for(errors, partial=bool(answers)))
        for dr in answers:
            response.append(dr)

        def cleanup() -> None:
            for c in cleanups:
                c()

        return SoapResponse(response, attachments, mtom=True, cleanup=cleanup)

    def _forward(self, repo: str, url: str, wanted: list[tuple[str | None, str]], request_id: str):
        request = etree.Element(_x("RetrieveDocumentSetRequest"), nsmap={"xdsb": C.NS_XDSB})
        for home, uid in wanted:
            dr = etree.SubElement(request, _x("DocumentRequest"))
            if home:
                etree.SubElement(dr, _x("HomeCommunityId")).text = home
            etree.SubElement(dr, _x("RepositoryUniqueId")).text = repo
            etree.SubElement(dr, _x("DocumentUniqueId")).text = uid
        client = SoapClient(url, self.timeout, self.ssl_context, self.spool_dir)
        try:
            reply = client.call(C.ACTION_RETRIEVE, request, use_mtom=True)
            if reply.envelope is None or reply.is_fault:
                raise TransportError(f"HTTP {reply.status} without a RetrieveDocumentSetResponse")
        except TransportError as exc:
            log.warning("request %s: repository %s at %s failed: %s", request_id, repo, url, exc)
            return ([XdsError(E.REPOSITORY_ERROR, f"repository {repo} at {url} could not answer for document {uid}: "
                              f"{exc}", uid) for _, uid in wanted], [], [], None)
        body = reply.body
        rr = body.find(C.q(C.NS_RS, "RegistryResponse"))
        _, errors = read_response_errors(rr) if rr is not None else ("", [])
        answers, attachments = [], []
        parts = reply.mtom.parts if reply.mtom is not None else {}
        for dr in body.iterchildren(_x("DocumentResponse")):
            doc = dr.find(_x("Document"))
            inc = doc.find(C.q(C.NS_XOP, "Include")) if doc is not None else None
            part = parts.get(href_to_cid(inc.get("href", ""))) if inc is not None else None
            if part is None:
                uid = (dr.findtext(_x("DocumentUniqueId")) or "").strip()
                errors.append(XdsError(E.REPOSITORY_ERROR, f"repository {repo} answered document {uid} without "
                                       f"its content as an MTOM part", uid))
                continue
            cid = new_cid()
            inc.set("href", "cid:" + cid)
            answers.append(dr)
            attachments.append((cid, part.content_type or "application/octet-stream", part.path))
        return errors, answers, attachments, (reply.mtom.cleanup if reply.mtom is not None else None)
