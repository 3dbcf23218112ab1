"""An XDS SOAP client on the standard library: used by the repository to reach a remote
registry, by the CLI and by the conformance harness."""
from __future__ import annotations

import copy
import http.client
import select
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from lxml import etree

from . import constants as C
from . import mtom, soap
from .errors import REGISTRY_NOT_AVAILABLE, XdsException


class TransportError(Exception):
    """The peer could not be reached or did not answer with SOAP."""

    def __init__(self, message: str, unsent: bool = False):
        super().__init__(message)
        self.unsent = unsent  # True only when not one byte of the request can have reached the peer


class RegistryUnreachable(XdsException):
    """XDSRegistryNotAvailable before anything was sent: the registry cannot have acted on the request."""


class _NoAnswer(ConnectionError):
    """The connection ended before the first byte of an answer."""


class _Response(http.client.HTTPResponse):
    def begin(self):
        # Whether any byte of the answer came is what decides if a request may be sent again,
        # and once the status line is being parsed that is no longer visible.
        try:
            first = self.fp.peek(1)
        except (ConnectionResetError, ConnectionAbortedError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            raise _NoAnswer(f"connection ended before any answer: {exc}") from None
        if not first:
            raise _NoAnswer("connection closed before any answer")
        super().begin()


class _HTTPConnection(http.client.HTTPConnection):
    response_class = _Response


class _HTTPSConnection(http.client.HTTPSConnection):
    response_class = _Response


# What a peer that closed the connection does to a request being written.
_PEER_CLOSED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ssl.SSLEOFError,
                ssl.SSLZeroReturnError)
# A multipart answer may end with an epilogue after its closing boundary; this much of it is read
# so that the connection can carry the next request, and a longer one costs the connection.
DRAIN_BYTES = 64 * 1024
DEFAULT_MAX_IDLE = 8
# Under the keep-alive timeout of our own server (cheroot's, 10 s), so that a connection is not
# picked just as the server ends it; older idle connections are closed instead.
DEFAULT_IDLE_SECONDS = 5.0


def _still_idle(sock) -> bool:
    """True when an idle connection has nothing to read, as a live one has between answers:
    anything readable is the server's close (EOF, reset, TLS close_notify) or bytes nobody asked for."""
    if sock is None:
        return False
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLPRI)
            return not poller.poll(0)
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable
    except (OSError, ValueError):
        return False


class ConnectionPool:
    """Idle HTTP/1.1 keep-alive connections, shared by threads, by (scheme, host, port, TLS context).

    A connection is either in use by one caller or idle here, never both. At most max_idle idle
    connections are kept per key; one idle longer than idle_seconds, or that has become readable
    (the server closed it), is closed rather than handed out. After close() nothing is kept."""

    def __init__(self, max_idle: int = DEFAULT_MAX_IDLE, idle_seconds: float = DEFAULT_IDLE_SECONDS):
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self._idle: dict[tuple, list[tuple[http.client.HTTPConnection, float]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def take(self, key: tuple) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                stack = self._idle.get(key)
                if not stack:
                    return None
                # The most recently used: the least likely to have been closed by the server.
                conn, since = stack.pop()
            if time.monotonic() - since <= self.idle_seconds and _still_idle(conn.sock):
                return conn
            conn.close()

    def give_back(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        now = time.monotonic()
        with self._lock:
            expired = self._expired(now)
            stack = self._idle.setdefault(key, [])
            if not self._closed and len(stack) < self.max_idle:
                stack.append((conn, now))
                conn = None
        for old in expired + ([conn] if conn is not None else []):
            old.close()

    def _expired(self, now: float) -> list[http.client.HTTPConnection]:
        # Idle connections to every host are swept here, so that hosts no longer called do not keep
        # sockets open for the life of the process.
        out = []
        for key in list(self._idle):
            stack = self._idle[key]
            keep = [(c, t) for c, t in stack if now - t <= self.idle_seconds]
            out += [c for c, t in stack if now - t > self.idle_seconds]
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return out

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(stack) for stack in self._idle.values())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for stack in idle.values():
            for conn, _ in stack:
                conn.close()


# Shared by every registry_call of the process: a repository host talks to one registry.
_registry_pool = ConnectionPool()


def _drain(resp: http.client.HTTPResponse) -> None:
    left = DRAIN_BYTES
    while left > 0 and not resp.isclosed():
        got = resp.read(min(left, 16 * 1024))
        if not got:
            break
        left -= len(got)


def _reusable(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> bool:
    # will_close covers Connection: close, HTTP/1.0 and a body that ends with the connection;
    # isclosed() says the body was read to its end, so the next answer starts at the next byte.
    return not resp.will_close and resp.isclosed() and conn.sock is not None


@dataclass
class SoapReply:
    status: int
    envelope: soap.Envelope | None
    content_type: str
    raw: bytes
    mtom: mtom.MtomMessage | None = None

    @property
    def body(self) -> etree._Element:
        if self.envelope is None:
            raise TransportError(f"HTTP {self.status} with no SOAP envelope: {self.raw[:200]!r}")
        return self.envelope.body

    @property
    def is_fault(self) -> bool:
        return self.envelope is not None and etree.QName(self.envelope.body).localname == "Fault"


class SoapClient:
    """pool: keep connections open between calls (None: one connection per call, closed after it).
    max_part_bytes and max_total_bytes bound what an MTOM answer may spool: each part, the whole body."""

    def __init__(self, url: str, timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None,
                 spool_dir: str | None = None, *, pool: ConnectionPool | None = None,
                 max_part_bytes: int = 1 << 40, max_total_bytes: int | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{url}: only http and https endpoints are supported")
        self.url = url
        self.parts = parts
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.spool_dir = spool_dir or tempfile.gettempdir()
        self.pool = pool
        self.max_part_bytes = max_part_bytes
        self.max_total_bytes = max_total_bytes if max_total_bytes is not None else 2 * max_part_bytes
        self._key = (parts.scheme, parts.hostname, parts.port, ssl_context)

    def _connection(self) -> http.client.HTTPConnection:
        host, port = self.parts.hostname, self.parts.port
        if self.parts.scheme == "https":
            return _HTTPSConnection(host, port, timeout=self.timeout, context=self.ssl_context)
        return _HTTPConnection(host, port, timeout=self.timeout)

    def envelope(self, action: str, payload: etree._Element, version: str = soap.SOAP12,
                 extra_headers: list[etree._Element] | None = None) -> bytes:
        env, body = soap._envelope(version, None, None)  # writes the MessageID
        header = env[0]
        for tag, text in ((f"{{{C.NS_WSA}}}Action", action), (f"{{{C.NS_WSA}}}To", self.url)):
            el = etree.SubElement(header, tag)
            el.text = text
            el.set(f"{{{soap._ENV_NS[version]}}}mustUnderstand", "true" if version == soap.SOAP12 else "1")
        for el in extra_headers or ():
            header.append(copy.deepcopy(el))  # the caller's element stays where it is (several hosts may share it)
        body.append(payload)
        return etree.tostring(env, xml_declaration=True, encoding="UTF-8")

    def call(self, action: str, payload: etree._Element, *, attachments=None, use_mtom: bool = False,
             version: str = soap.SOAP12, extra_headers: list[etree._Element] | None = None) -> SoapReply:
        """Send one request. attachments: [(cid, content_type, bytes | path)] referenced by xop:Include."""
        envelope = self.envelope(action, payload, version, extra_headers)
        if use_mtom or attachments:
            writer = mtom.MtomWriter()
            for cid, ctype, data in attachments or []:
                (writer.add_bytes if isinstance(data, bytes) else writer.add_file)(data, ctype, cid)
            writer.set_root(envelope, soap.CONTENT_TYPE[version])
            headers = {"Content-Type": writer.content_type(action)}
            length = writer.content_length()
            if length is not None:
                headers["Content-Length"] = str(length)
            body = writer.chunks  # made again if the request has to be sent again
        else:
            ctype = soap.CONTENT_TYPE[version]
            headers = {"Content-Type": f'{ctype}; charset=UTF-8; action="{action}"'
                       if version == soap.SOAP12 else f"{ctype}; charset=UTF-8"}
            if version == soap.SOAP11:
                headers["SOAPAction"] = f'"{action}"'
            body = envelope
        return self.send_raw(body, headers)

    def _open(self) -> http.client.HTTPConnection:
        conn = self._connection()
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError(f"{self.url}: {exc.__class__.__name__}: {exc}", unsent=True) from None
        return conn

    def _exchange(self, body, headers: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request and read the answer's status and headers: on an idle pooled connection
        when there is one, else on a new one."""
        reused = self.pool.take(self._key) if self.pool is not None else None
        replayable = isinstance(body, bytes) or callable(body)
        sent_before = False
        while True:
            try:
                conn = reused or self._open()
            except TransportError as exc:
                if not sent_before:
                    raise
                # The stale connection carried the request to the peer, whatever it did with it.
                raise TransportError(str(exc)) from None
            if reused is not None:
                conn.timeout = self.timeout
                conn.sock.settimeout(self.timeout)
            data = body() if callable(body) else body
            sending = True
            try:
                conn.request("POST", self.parts.path or "/", body=data, headers=headers,
                             encode_chunked="Content-Length" not in headers and not isinstance(data, bytes))
                sending = False
                return conn, conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                stale = isinstance(exc, _NoAnswer) or (sending and isinstance(exc, _PEER_CLOSED))
                if reused is not None and stale and replayable:
                    # Sent once more, on a new connection, although a POST is not idempotent: a
                    # server ends a keep-alive connection between requests, when it has been idle
                    # too long, and that close crossed our request on the wire. It had not read the
                    # request, or it would have answered it; and a request it was still receiving
                    # (the failure came while sending) was incomplete, so not acted on. The check
                    # before reuse (_still_idle) catches a close that arrived earlier; this is the
                    # close that was still in flight. One retry, on a connection never used before,
                    # whose failure is final.
                    reused = None
                    sent_before = True
                    continue
                raise TransportError(f"{self.url}: {exc.__class__.__name__}: {exc}") from None

    def _release(self, conn: http.client.HTTPConnection, reusable: bool) -> None:
        if reusable and self.pool is not None:
            self.pool.give_back(self._key, conn)
        else:
            conn.close()

    def send_raw(self, body, headers: dict) -> SoapReply:
        """POST body: bytes, an iterable of chunks, or a callable returning a fresh iterable of them
        (bytes and callables can be sent again when a pooled connection turns out to be stale).

        The answer is read to its end before the connection goes back to the pool; a connection
        that failed, was not read to its end, or that the server ends, is closed. An MTOM answer's
        parts are spooled; on any failure here they are removed before the error is raised."""
        conn, resp = self._exchange(body, headers)
        message = None
        reusable = False
        try:
            ctype = resp.getheader("Content-Type", "")
            mime, _ = mtom.parse_content_type(ctype)
            if mime == "multipart/related":
                message = mtom.read_multipart(resp, ctype, self.spool_dir, max_part_bytes=self.max_part_bytes,
                                              max_total_bytes=self.max_total_bytes)
                raw = message.root
                _drain(resp)
            else:
                raw = resp.read()
            reusable = _reusable(conn, resp)
        except (OSError, http.client.HTTPException) as exc:
            if message is not None:
                message.cleanup()
            raise TransportError(f"{self.url}: {exc.__class__.__name__}: {exc}") from None
        except BaseException:
            if message is not None:
                message.cleanup()
            raise
        finally:
            self._release(conn, reusable)
        env = None
        try:
            if raw.strip():
                try:
                    env = soap.parse_envelope(raw, understood={f"{{{C.NS_WSA}}}RelatesTo"})
                except Exception:
                    env = None
            if env is not None and message is not None:
                mtom.resolve_xop(env.root, message)
        except BaseException:
            if message is not None:
                message.cleanup()
            raise
        return SoapReply(resp.status, env, ctype, raw, message)


def registry_call(url: str, action: str, payload: etree._Element, timeout: float = 30.0,
                  ssl_context=None, extra_headers: list[etree._Element] | None = None) -> etree._Element:
    """Call a registry; an unreachable one is XDSRegistryNotAvailable, as ITI-41 requires."""
    try:
        reply = SoapClient(url, timeout, ssl_context, pool=_registry_pool).call(action, payload,
                                                                               extra_headers=extra_headers)
    except TransportError as exc:
        kind = RegistryUnreachable if exc.unsent else XdsException
        raise kind(REGISTRY_NOT_AVAILABLE, f"the registry could not be reached: {exc}", url) from None
    if reply.envelope is None or reply.is_fault:
        reason = reply.raw[:300].decode("utf-8", "replace")
        raise XdsException(REGISTRY_NOT_AVAILABLE, f"the registry answered HTTP {reply.status} without a "
                           f"RegistryResponse: {reason}", url)
    return reply.body

