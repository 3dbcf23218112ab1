"""The harness's end of asynchronous WS-Addressing (the kit's <ASync/> steps): a ReplyTo listener on a
real socket, and the send that names it.

A step is sent with wsa:ReplyTo = the listener's address and a MessageID of its own; the SUT must answer
HTTP 202 with no SOAP envelope, then POST the response to the listener, where it is matched to the
request by wsa:RelatesTo. What came to the listener is then judged exactly as a synchronous answer.
"""
from __future__ import annotations

import copy
import http.server
import io
import shutil
import ssl
import tempfile
import threading
import time
import uuid

from lxml import etree

from xds import constants as C
from xds import mtom, soap
from xds.client import SoapClient, SoapReply, TransportError

MAX_BYTES = 256 * 1024 * 1024   # one reply; a larger one is refused (413) and never matched
PATH = "/async-replies"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *_args) -> None:   # replies are reported by the step, not on stderr
        pass

    def do_POST(self) -> None:
        try:
            data = self._body()
        except ValueError as exc:
            return self._answer(400 if "chunk" in str(exc) else 413, str(exc))
        cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        peer = ",".join(f"{k}={v}" for rdn in (cert or {}).get("subject", ()) for k, v in rdn) or None
        self.server.listener._arrived(self.path, self.headers.get("Content-Type", ""), data, peer)
        self._answer(202, "")

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(1024).split(b";")[0].strip()
                try:
                    size = int(line, 16)
                except ValueError:
                    raise ValueError(f"bad chunk size {line[:20]!r}") from None
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass
                    return bytes(out)
                if len(out) + size > MAX_BYTES:
                    raise ValueError("reply too large")
                out += self.rfile.read(size)
                self.rfile.readline(8)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BYTES:
            raise ValueError("reply too large")
        return self.rfile.read(length)

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    listener: "ReplyListener"


class Arrival:
    """One POST the listener took: the reply as the client would have read it, and where it came."""

    def __init__(self, path: str, content_type: str, raw: bytes, spool: str, peer: str | None = None):
        self.path = path
        self.peer = peer   # the TLS client certificate's subject, over https
        self.content_type = content_type
        self.wire = raw
        self.reply = _as_reply(content_type, raw, spool)

    @property
    def relates_to(self) -> str | None:
        env = self.reply.envelope
        el = env.header(C.q(C.NS_WSA, "RelatesTo")) if env is not None else None
        return (el.text or "").strip() if el is not None else None


def _as_reply(content_type: str, raw: bytes, spool: str) -> SoapReply:
    mime, _ = mtom.parse_content_type(content_type)
    message = None
    root = raw
    if mime == "multipart/related":
        try:
            message = mtom.read_multipart(io.BytesIO(raw), content_type, spool, max_part_bytes=MAX_BYTES,
                                          max_total_bytes=MAX_BYTES, content_length=len(raw))
            root = message.root
        except mtom.MtomError:
            message = None
    env = None
    try:
        env = soap.parse_envelope(root, understood={C.q(C.NS_WSA, "RelatesTo")}) if root.strip() else None
        if env is not None and message is not None:
            mtom.resolve_xop(env.root, message)
    except Exception:
        env = None
    return SoapReply(200, env, content_type, root, message)


class ReplyListener:
    """Listens on 127.0.0.1 (or host) for the SUT's asynchronous replies, in a thread of its own."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None):
        self._server = _Server((host, port), _Handler)
        self._server.listener = self
        self.scheme = "http"
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._spool = tempfile.mkdtemp(prefix="xds-async-replies-")
        self._arrivals: list[Arrival] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Where replies are to be sent (also the async_reply_to prefix a server under test allows)."""
        return f"{self.scheme}://{self._server.server_address[0]}:{self.port}{PATH}"

    def start(self) -> "ReplyListener":
        self._thread = threading.Thread(target=self._server.serve_forever, name="async-reply-listener", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._cond:
            for a in self._arrivals:
                if a.reply.mtom is not None:
                    a.reply.mtom.cleanup()
        shutil.rmtree(self._spool, ignore_errors=True)

    def __enter__(self) -> "ReplyListener":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    def _arrived(self, path: str, content_type: str, raw: bytes, peer: str | None = None) -> None:
        arrival = Arrival(path, content_type, raw, self._spool, peer)
        with self._cond:
            self._arrivals.append(arrival)
            self._cond.notify_all()

    def arrivals(self) -> list[Arrival]:
        with self._cond:
            return list(self._arrivals)

    def wait(self, message_id: str, timeout: float) -> Arrival | None:
        """The reply whose RelatesTo is message_id, once it came (None after timeout); taken from the list."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for a in self._arrivals:
                    if a.relates_to == message_id:
                        self._arrivals.remove(a)
                        return a
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


def reply_to_header(address: str, name: str = "ReplyTo") -> etree._Element:
    el = etree.Element(C.q(C.NS_WSA, name), nsmap={"a": C.NS_WSA})
    etree.SubElement(el, C.q(C.NS_WSA, "Address")).text = address
    return el


def async_envelope(url: str, action: str, payload: etree._Element, reply_to: str, version: str = soap.SOAP12,
                   extra_headers: list[etree._Element] | None = None) -> tuple[bytes, str]:
    """(envelope, MessageID): Action, To, MessageID and a non-anonymous ReplyTo, then extra_headers."""
    message_id = "urn:uuid:" + str(uuid.uuid4())
    ns = soap._ENV_NS[version]
    must = "true" if version == soap.SOAP12 else "1"
    env = etree.Element(C.q(ns, "Envelope"), nsmap={"s": ns, "a": C.NS_WSA})
    header = etree.SubElement(env, C.q(ns, "Header"))
    for name, text in (("Action", action), ("To", url), ("MessageID", message_id)):
        el = etree.SubElement(header, C.q(C.NS_WSA, name))
        el.text = text
        if name != "MessageID":
            el.set(C.q(ns, "mustUnderstand"), must)
    header.append(reply_to_header(reply_to))
    for el in extra_headers or ():
        header.append(copy.deepcopy(el))
    etree.SubElement(env, C.q(ns, "Body")).append(copy.deepcopy(payload))
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8"), message_id


def send_async(listener: ReplyListener, url: str, action: str, payload: etree._Element, *,
               attachments=(), use_mtom: bool = False, version: str = soap.SOAP12,
               extra_headers: list[etree._Element] | None = None, timeout: float = 60.0,
               ssl_context: ssl.SSLContext | None = None):
    """Send with ReplyTo = the listener; returns (envelope sent, the HTTP answer, the Arrival or None, note).
    note says what went wrong with the exchange itself (no 202, a body on the 202, no reply in time)."""
    envelope, message_id = async_envelope(url, action, payload, listener.url, version, extra_headers)
    client = SoapClient(url, timeout, ssl_context)
    if use_mtom or attachments:
        writer = mtom.MtomWriter()
        for cid, ctype, data in attachments:
            (writer.add_bytes if isinstance(data, bytes) else writer.add_file)(data, ctype, cid)
        writer.set_root(envelope, soap.CONTENT_TYPE[version])
        headers = {"Content-Type": writer.content_type(action)}
        n = writer.content_length()
        if n is not None:
            headers["Content-Length"] = str(n)
        body = writer.chunks
    else:
        ctype = soap.CONTENT_TYPE[version]
        headers = {"Content-Type": f'{ctype}; charset=UTF-8; action="{action}"' if version == soap.SOAP12
                   else f"{ctype}; charset=UTF-8"}
        if version == soap.SOAP11:
            headers["SOAPAction"] = f'"{action}"'
        body = envelope
    try:
        answer = client.send_raw(body, headers)
    except TransportError as exc:
        return envelope, None, None, str(exc)
    if answer.status != 202:
        what = "a SOAP fault" if answer.is_fault else "an answer"
        return envelope, answer, None, (f"the request with a non-anonymous ReplyTo got HTTP {answer.status} "
                                        f"({what} on the request's own connection), not 202 Accepted")
    if answer.envelope is not None:
        return envelope, answer, None, "HTTP 202 carried a SOAP envelope; an asynchronous answer goes to ReplyTo only"
    arrival = listener.wait(message_id, timeout)
    if arrival is None:
        return envelope, answer, None, (f"no reply with wsa:RelatesTo {message_id} reached the ReplyTo "
                                        f"{listener.url} within {timeout:g} s")
    return envelope, answer, arrival, None



def exchange(kind, url: str, payload: etree._Element, attachments, timeout: float, listener: ReplyListener, *,
             soap11: bool = False, use_mtom: bool | None = None, assertion: etree._Element | None = None,
             ssl_context: ssl.SSLContext | None = None):
    """An <ASync/> step: what send_soap does, with the answer taken from the listener. The Exchange's reply
    is the one that reached ReplyTo, so the step is judged as a synchronous one would be; a missing 202 or
    reply is its transport error."""
    from xds.security.issue import wsse_security

    from .transactions import Exchange

    version = soap.SOAP11 if soap11 else soap.SOAP12
    headers = [wsse_security(copy.deepcopy(assertion), version)] if assertion is not None else None
    ex = Exchange(endpoint=url, attachments=list(attachments))
    started = time.monotonic()
    sent, answer, arrival, note = send_async(listener, url, kind.action, payload, attachments=attachments,
                                             use_mtom=kind.mtom if use_mtom is None else use_mtom, version=version,
                                             extra_headers=headers, timeout=timeout, ssl_context=ssl_context)
    ex.elapsed = time.monotonic() - started
    ex.request = sent
    if note is not None:
        ex.transport_error = f"asynchronous exchange (ReplyTo {listener.url}): {note}"
        if answer is not None and answer.raw:
            ex.response_text = answer.raw.decode("utf-8", "replace")
        return ex
    ex.reply = arrival.reply
    ex.response_text = (f"<!-- HTTP {answer.status} on the request's connection; this reply came to "
                        f"{listener.url} with wsa:RelatesTo {arrival.relates_to} -->\n"
                        + arrival.reply.raw.decode("utf-8", "replace"))
    to = arrival.reply.envelope.to if arrival.reply.envelope is not None else None
    if to != listener.url:
        ex.transport_error = (f"the asynchronous reply's wsa:To is {to or '(none)'}, not the request's ReplyTo "
                              f"{listener.url}")
    return ex
