"""ITI-43 answered by the registry for every repository it knows: each DocumentRequest goes to
its repository host, and the answers are merged, so a consumer needs one address."""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds.app import SoapRequest, SoapResponse
from xds.client import ConnectionPool, SoapClient, TransportError
from xds.ebrim import read_response_errors, status_for
from xds.errors import XdsError
from xds.mtom import DEFAULT_MAX_XML_BYTES, MtomError, MtomLimitError, href_to_cid, new_cid
from xds.xdsb import not_held, read_requests, retrieve_response, x as _x
from .store import RegistryStore

log = logging.getLogger(__name__)

MAX_FORWARDS = 8  # repository hosts asked at once
DEFAULT_MAX_DOCUMENT_BYTES = 4 * 1024 ** 3  # as the repository's own default bound
# MIME framing per part (boundary line, part headers), far above what any writer produces.
_PART_FRAMING = 64 * 1024


@dataclass
class _HostAnswer:
    """What one repository host contributed: errors, DocumentResponses, the attachments they name,
    and the removal of the files spooled for them."""

    errors: list[XdsError]
    answers: list = field(default_factory=list)
    attachments: list = field(default_factory=list)
    cleanup: Callable[[], None] | None = None


def _run_all(cleanups: list[Callable[[], None]]) -> Callable[[], None]:
    def cleanup() -> None:
        # Every one runs: a failure removing one host's files must not leave the others'.
        failed = None
        for c in cleanups:
            try:
                c()
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            log.error("removing spooled ITI-43 parts failed: %s", failed)

    return cleanup


class RetrieveRouter:
    """Forwards ITI-43 to the repository hosts of the directory, several at once on a pool of threads
    that lives as long as the router: `close()` ends it, and closes the connections kept to the hosts.

    A document a host sends may be at most max_document_bytes long (None: the default), as one sent
    to this server's own repository; a longer one is that host's failure, spooled no further."""

    def __init__(self, store: RegistryStore, timeout: float = 30.0, ssl_context=None, spool_dir: str | None = None,
                 max_document_bytes: int | None = None):
        self.store = store
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.spool_dir = spool_dir
        self.max_document_bytes = max_document_bytes or DEFAULT_MAX_DOCUMENT_BYTES
        # Threads are started as forwards need them, up to MAX_FORWARDS.
        self._pool = ThreadPoolExecutor(max_workers=MAX_FORWARDS, thread_name_prefix="xds-route")
        self._connections = ConnectionPool()
        # (request, host URL, repositoryUniqueId, [(home, uid)], errors, documents answered) for each host
        # asked: the audit record of this side of the hop (node/server.py sets it).
        self.hop_audit: Callable | None = None

    def close(self) -> None:
        """Wait for the forwards in flight, then end the threads and the kept connections."""
        self._pool.shutdown(wait=True)
        self._connections.close()

    def retrieve(self, req: SoapRequest, guard=None) -> SoapResponse:
        """guard: the access policy of the request (registry/guard.py): a document it withholds is answered
        as the host answers one it does not hold, and is never asked for."""
        items = read_requests(req.body)
        directory = self.store.repositories()
        errors: list[XdsError] = []
        groups: dict[str, list[tuple[str | None, str]]] = {}
        allowed = None
        if guard is not None:
            with self.store.reading() as conn:
                allowed = guard.retrievable(conn, [uid for _, repo, uid in items if repo in directory])
        withheld = []
        for home, repo, uid in items:
            if repo not in directory:
                errors.append(XdsError(E.UNKNOWN_REPOSITORY_ID, f"RepositoryUniqueId {repo} (asked for document "
                                       f"{uid}) is not in this registry's repository directory", repo))
            elif allowed is not None and uid not in allowed:
                withheld.append(not_held(uid, repo))  # as the host answers a document it does not hold
            else:
                groups.setdefault(repo, []).append((home, uid))
        replies = self._forward_all(groups, directory, req.request_id, req.security_to_pass_on())
        if self.hop_audit is not None:
            for (repo, wanted), reply in zip(groups.items(), replies):
                self.hop_audit(req, directory[repo][0], repo, wanted, reply.errors, len(reply.answers))
        errors += withheld
        cleanup = _run_all([r.cleanup for r in replies if r.cleanup is not None])
        try:
            answers, attachments = [], []
            for r in replies:
                errors += r.errors
                answers += r.answers
                attachments += r.attachments
            response = retrieve_response(errors, status_for(errors, partial=bool(answers)))
            for dr in answers:
                response.append(dr)
        except BaseException:
            cleanup()
            raise
        # The attachments are the spooled files themselves: they go once the answer has been sent.
        return SoapResponse(response, attachments, mtom=True, cleanup=cleanup)

    def _forward_all(self, groups: dict, directory: dict, request_id: str, forward: list) -> list[_HostAnswer]:
        """Every host's answer; should anything fail here, every file already spooled is removed."""
        futures: list[Future] = []
        failure: BaseException | None = None
        try:
            for repo, wanted in groups.items():
                futures.append(self._pool.submit(self._forward, repo, directory[repo][0], wanted, request_id,
                                                 forward))
        except BaseException as exc:  # e.g. the router closing: the forwards already started still finish
            failure = exc
        replies = []
        for f in futures:
            try:
                replies.append(f.result())
            except BaseException as exc:  # _forward answers for its host; this is the router's own failure
                failure = failure or exc
        if failure is not None:
            _run_all([r.cleanup for r in replies if r.cleanup is not None])()
            raise failure
        return replies

    def _forward(self, repo: str, url: str, wanted: list[tuple[str | None, str]], request_id: str,
                 forward: list = ()) -> _HostAnswer:
        """One host's part of the answer. Whatever goes wrong with the host (unreachable, a fault, no
        RetrieveDocumentSetResponse, a malformed multipart, a document above the limit) becomes an
        XDSRepositoryError for each of its documents, and nothing it sent stays on disk."""
        request = etree.Element(_x("RetrieveDocumentSetRequest"), nsmap={"xdsb": C.NS_XDSB})
        for home, uid in wanted:
            dr = etree.SubElement(request, _x("DocumentRequest"))
            if home:
                etree.SubElement(dr, _x("HomeCommunityId")).text = home
            etree.SubElement(dr, _x("RepositoryUniqueId")).text = repo
            etree.SubElement(dr, _x("DocumentUniqueId")).text = uid
        # The whole body may hold each document, base64 at its worst, and the root XML.
        total = len(wanted) * (self.max_document_bytes * 4 // 3 + _PART_FRAMING) + DEFAULT_MAX_XML_BYTES
        client = SoapClient(url, self.timeout, self.ssl_context, self.spool_dir, pool=self._connections,
                            max_part_bytes=self.max_document_bytes, max_total_bytes=total)
        reply = None
        try:
            reply = client.call(C.ACTION_RETRIEVE, request, use_mtom=True, extra_headers=list(forward))
            if reply.envelope is None or reply.is_fault:
                raise TransportError(f"HTTP {reply.status} without a RetrieveDocumentSetResponse")
            return self._read_answer(repo, reply)
        except Exception as exc:
            if reply is not None and reply.mtom is not None:
                reply.mtom.cleanup()
            if isinstance(exc, MtomLimitError):
                why = f"its answer exceeds this registry's limit of {self.max_document_bytes} bytes per document " \
                      f"({exc})"
            elif isinstance(exc, (TransportError, MtomError)):
                why = str(exc)
            else:
                why = f"its answer could not be read ({exc.__class__.__name__})"
            log.warning("request %s: repository %s at %s failed: %s", request_id, repo, url, why,
                        exc_info=not isinstance(exc, (TransportError, MtomError)))
            return _HostAnswer([XdsError(E.REPOSITORY_ERROR, f"repository {repo} at {url} could not answer for "
                                         f"document {uid}: {why}", uid) for _, uid in wanted])

    def _read_answer(self, repo: str, reply) -> _HostAnswer:
        body = reply.body
        rr = body.find(C.q(C.NS_RS, "RegistryResponse"))
        _, errors = read_response_errors(rr) if rr is not None else ("", [])
        out = _HostAnswer(errors, cleanup=reply.mtom.cleanup if reply.mtom is not None else None)
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
            out.answers.append(dr)
            out.attachments.append((cid, part.content_type or "application/octet-stream", part.path))
        return out
