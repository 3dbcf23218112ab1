"""Asynchronous WS-Addressing replies (IHE ITI TF-2x Appendix V, "asynchronous message exchange").

A request whose wsa:ReplyTo is not the anonymous address is answered HTTP 202 at once; a bounded pool
of workers then runs it through the same pipeline as any request (audit, authentication, policy,
handler) and POSTs the answer, on a connection of its own, to the ReplyTo address (faults to the
FaultTo address when there is one), with wsa:RelatesTo = the request's MessageID.

Only addresses under a prefix of the async_reply_to setting are ever written to: the server would
otherwise POST patient data wherever a caller asks. Faults about the addressing headers themselves
(no MessageID, an address not allowed, the workers all busy) are answered on the request's own HTTP
response, since there is no usable address to send them to (WS-Addressing 1.0 SOAP Binding, section 6);
every other fault, WS-Security's included, is a reply like any other and goes to FaultTo/ReplyTo
(WS-Addressing 1.0 Core, 3.4).
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from . import constants as C
from . import logs, soap
from .errors import SoapFault

log = logging.getLogger("xds.async_reply")

ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"
NONE = "http://www.w3.org/2005/08/addressing/none"
# The transactions answered asynchronously; any other keeps to the HTTP response.
TRANSACTIONS = ("ITI-18", "ITI-41", "ITI-42", "ITI-43")
WORKERS = 4          # requests processed and replies delivered at once
QUEUE_DEPTH = 64     # accepted requests waiting for a worker; beyond, wsa:EndpointUnavailable
TIMEOUT = 30.0       # seconds for each connect, send and read of a delivery


class AddressingFault(SoapFault):
    """A WS-Addressing 1.0 SOAP Binding fault: Subcode, optional Subsubcode, and the header at fault."""

    def __init__(self, reason: str, subcode: str, subsubcode: str | None = None, problem_header: str | None = None,
                 code: str = "Sender", http_status: int | None = None):
        super().__init__(reason, code=code, subcode=subcode, http_status=http_status)
        self.subsubcode = subsubcode
        self.problem_header = problem_header


@dataclass(frozen=True)
class Route:
    message_id: str
    reply_to: str
    fault_to: str   # ReplyTo when the request names no FaultTo


def _anonymous(address: str | None) -> bool:
    return address is None or address == ANONYMOUS


def _origin(address: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path) of an http(s) address, None for anything else."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or parts.fragment:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80), parts.path or "/"


def check_allow_list(prefixes: list[str]) -> None:
    """Each entry must be an http(s) address: a typo would otherwise allow nothing, silently."""
    for p in prefixes:
        if _origin(p) is None:
            raise ValueError(f"async_reply_to: {p!r} is not an http:// or https:// address with a host")


def allowed(address: str, prefixes: list[str]) -> bool:
    """address is under one of the prefixes: same scheme, host and port, and a path below the prefix's
    at a segment boundary (https://h/replies allows https://h/replies/x, not https://h/replies-x)."""
    origin = _origin(address)
    if origin is None:
        return False
    for p in prefixes:
        want = _origin(p)
        if want is None or want[:3] != origin[:3]:
            continue
        base = want[3].rstrip("/")
        if not base or origin[3] == base or origin[3].startswith(base + "/"):
            return True
    return False


def _refuse(header: str, address: str, prefixes: list[str], why: str = "") -> AddressingFault:
    if not prefixes:
        return AddressingFault(
            f"{header} {address[:200]} is not anonymous, and this server sends no asynchronous replies "
            f"(its async_reply_to list is empty){why}: use {ANONYMOUS} or leave {header} out",
            "a:InvalidAddressingHeader", "a:OnlyAnonymousAddressSupported", f"a:{header.split(':')[-1]}")
    return AddressingFault(
        f"{header} {address[:200]} is not under any address of this server's async_reply_to list{why}",
        "a:InvalidAddressingHeader", "a:InvalidAddress", f"a:{header.split(':')[-1]}")


def route(env: soap.Envelope, action: str, prefixes: list[str]) -> Route | None:
    """Where the answer to this request goes: None for the HTTP response, else a Route. Raises an
    AddressingFault, before anything is processed, when the request cannot be answered as it asks."""
    reply_to, fault_to = env.reply_to, env.fault_to
    if _anonymous(reply_to):
        if not _anonymous(fault_to):
            # Its faults would go elsewhere while its answer comes back here; not a mode this server has.
            raise AddressingFault(f"wsa:FaultTo {fault_to[:200]} is not anonymous while wsa:ReplyTo is: faults are "
                                  "answered where the response is; name the same address in both, or leave "
                                  "FaultTo out", "a:InvalidAddressingHeader", "a:OnlyAnonymousAddressSupported",
                                  "a:FaultTo")
        return None
    transaction = C.TRANSACTIONS.get(action, action)
    if transaction not in TRANSACTIONS:
        raise AddressingFault(f"{transaction} is answered synchronously only: send wsa:ReplyTo {ANONYMOUS} "
                              f"(asynchronous replies: {', '.join(TRANSACTIONS)})",
                              "a:InvalidAddressingHeader", "a:OnlyAnonymousAddressSupported", "a:ReplyTo")
    if not env.message_id:
        raise AddressingFault("a request with a non-anonymous wsa:ReplyTo needs a wsa:MessageID: the reply "
                              "names it in wsa:RelatesTo", "a:MessageAddressingHeaderRequired",
                              problem_header="a:MessageID")
    if reply_to == NONE or not allowed(reply_to, prefixes):
        raise _refuse("wsa:ReplyTo", reply_to, prefixes)
    if fault_to is not None and fault_to != reply_to:
        if fault_to == ANONYMOUS:
            raise AddressingFault("wsa:FaultTo is anonymous while wsa:ReplyTo is not: the HTTP response is the "
                                  "202 of an accepted request and carries no fault; name a FaultTo address or "
                                  "leave FaultTo out (faults then go to ReplyTo)", "a:InvalidAddressingHeader",
                                  "a:OnlyNonAnonymousAddressSupported", "a:FaultTo")
        if fault_to == NONE or not allowed(fault_to, prefixes):
            raise _refuse("wsa:FaultTo", fault_to, prefixes)
    return Route(env.message_id, reply_to, fault_to or reply_to)


def package(version: str, action: str, relates_to: str, to: str, resp, use_mtom: bool):
    """(headers, body) of an answer (an app.SoapResponse) as it goes on its own connection: the envelope
    the synchronous answer would carry, plus wsa:To, plain or MTOM likewise."""
    from . import mtom

    envelope = resp.envelope(version, action, relates_to, to=to)
    attachments = resp.attachments
    ctype = soap.CONTENT_TYPE[version]
    if not use_mtom:
        return _plain_headers(version, ctype, action), envelope
    writer = mtom.MtomWriter()
    for cid, content_type, data in attachments:
        (writer.add_bytes if isinstance(data, bytes) else writer.add_file)(data, content_type, cid)
    writer.set_root(envelope, ctype)
    headers = {"Content-Type": writer.content_type(action)}
    n = writer.content_length()
    if n is not None:
        headers["Content-Length"] = str(n)
    return headers, writer.chunks


def _plain_headers(version: str, ctype: str, action: str) -> dict:
    if version == soap.SOAP11:
        return {"Content-Type": f"{ctype}; charset=UTF-8", "SOAPAction": f'"{action}"'}
    return {"Content-Type": f'{ctype}; charset=UTF-8; action="{action}"'}


class Replies:
    """The bounded pool that processes accepted requests and delivers their answers."""

    def __init__(self, ssl_context=None, timeout: float = TIMEOUT, workers: int = WORKERS,
                 depth: int = QUEUE_DEPTH):
        self.ssl_context = ssl_context   # our client certificate and the trusted CA, for https addresses
        self.timeout = timeout
        self._workers = workers
        self._queue: queue.Queue = queue.Queue(depth)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, req, route_: Route, process: Callable, cleanup: Callable[[], None] | None) -> None:
        """Queue the request; process(req) -> (response action, SoapResponse, use_mtom) runs in a worker.
        cleanup (the request's spooled MTOM parts) runs once the worker is done with it."""
        job = (req, route_, process, cleanup)
        with self._lock:
            if self._closed:
                raise AddressingFault("the server is stopping and accepts no asynchronous request",
                                      "a:EndpointUnavailable", code="Receiver", http_status=503)
            if not self._threads:
                for i in range(self._workers):
                    t = threading.Thread(target=self._run, name=f"xds-async-reply-{i}", daemon=True)
                    t.start()
                    self._threads.append(t)
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise AddressingFault(f"{self._queue.maxsize} asynchronous requests are already waiting; try "
                                      "again later", "a:EndpointUnavailable", code="Receiver",
                                      http_status=503) from None

    def close(self, timeout: float = 30.0) -> None:
        """Finish what was accepted (within timeout), then stop the workers."""
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
        for _ in threads:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                break
        for t in threads:
            t.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._one(*job)
            except Exception:  # a worker survives whatever one request does
                log.exception("asynchronous request %s: not answered", job[0].request_id)

    def _one(self, req, route_: Route, process: Callable, cleanup) -> None:
        token = logs.request_id.set(req.request_id)
        resp = None
        try:
            version = req.envelope.version
            try:
                action, resp, use_mtom = process(req)
            except SoapFault as fault:
                log.warning(json.dumps({"event": "soap_fault", "reason": fault.reason, "async": True}))
                body = soap.build_fault(version, fault, route_.message_id, to=route_.fault_to)
                headers = _plain_headers(version, soap.CONTENT_TYPE[version],
                                         "http://www.w3.org/2005/08/addressing/soap/fault")
                self.deliver(req, route_.fault_to, headers, body, "fault")
                return
            headers, body = package(version, action, route_.message_id, route_.reply_to, resp, use_mtom)
            self.deliver(req, route_.reply_to, headers, body, "response")
        finally:
            if resp is not None and resp.cleanup is not None:
                resp.cleanup()
            if cleanup is not None:
                cleanup()
            logs.request_id.reset(token)

    def deliver(self, req, url: str, headers: dict, body, what: str) -> bool:
        """POST once; the outcome is logged (the address and the HTTP status, never the content). The
        transaction's audit record was written by the pipeline, whatever becomes of the delivery."""
        from .client import SoapClient, TransportError

        line = {"event": "async_reply", "transaction": C.TRANSACTIONS.get(req.action, req.action),
                "message_id": req.envelope.message_id, "to": url[:200], "what": what}
        try:
            reply = SoapClient(url, self.timeout, self.ssl_context if url.lower().startswith("https:") else None,
                               max_part_bytes=1 << 20).send_raw(body, headers)
        except (TransportError, OSError, ValueError) as exc:
            log.warning(json.dumps({**line, "delivered": False, "error": str(exc)[:300]}))
            return False
        if reply.mtom is not None:
            reply.mtom.cleanup()
        ok = 200 <= reply.status < 300
        (log.info if ok else log.warning)(json.dumps({**line, "delivered": ok, "http_status": reply.status}))
        return ok
