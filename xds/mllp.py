"""MLLP, the framing HL7 v2 uses over TCP: ``\\x0b`` message ``\\x1c\\x0d``, optionally inside TLS.

The server is meant to face senders we do not control, so a misbehaving peer
costs at most its own connection: stray bytes are dropped, an endless frame
closes the connection, and a failing handler never takes the listener down.
Every connection has its own thread and its own deadlines (TLS handshake,
waiting for a frame, reading one), and the number of connections is bounded in
total and per source, so a slow or hostile sender holds one slot for a bounded
time and never delays another sender's acknowledgement.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
DEFAULT_MAX_FRAME = 1024 * 1024
RECV_SIZE = 65536

# How the stdlib names subject attributes, and the short keys cheroot (hence the HTTP side,
# `xds.peer_subject`) writes them with: one subject string then names a host for both.
_DN_KEYS = {
    "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L", "organizationName": "O",
    "organizationalUnitName": "OU", "commonName": "CN", "title": "T", "initials": "I", "givenName": "G",
    "surname": "S", "description": "D", "userid": "UID", "emailAddress": "Email",
}


class FrameTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection, as far as the transport can tell."""

    address: str                    # the peer's IP address
    port: int
    subject: str | None = None      # subject of the client certificate verified in the handshake
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.address}:{self.port}" + (f" ({self.subject})" if self.subject else "")


Handler = Callable[[str, Peer], Optional[str]]
ErrorReply = Callable[[str, BaseException], Optional[str]]
# The composition's word on which source a connection belongs to and how many it may hold at once.
SourceLimit = Callable[[Peer], "tuple[str, int]"]


def certificate_subject(cert: dict | None) -> str | None:
    """A peer certificate's subject written as the HTTP side writes it: ``O=Example,CN=host-a``."""
    if not cert or not cert.get("subject"):
        return None
    return ",".join(f"{_DN_KEYS.get(key, key)}={value}" for rdn in cert["subject"] for key, value in rdn)


def encode_frame(message: str | bytes, encoding: str = "utf-8") -> bytes:
    data = message.encode(encoding, errors="replace") if isinstance(message, str) else message
    return START_BLOCK + data + END_BLOCK


def decode_payload(data: bytes) -> tuple[str, str]:
    """The text and the encoding it was read with, so a reply can use the same one."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        # latin-1 maps every byte, so an old 8-bit sender still gets an answer.
        return data.decode("latin-1"), "latin-1"


class FrameDecoder:
    """Turns a byte stream into frames; keeps at most ``max_frame`` bytes buffered."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()
        self._in_frame = False
        self._scanned = 0  # bytes of the open frame already searched, so large frames stay linear
        self.discarded = 0

    @property
    def in_frame(self) -> bool:
        """A start block has arrived and its frame is not complete yet."""
        return self._in_frame

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        while True:
            if not self._in_frame:
                start = self._buf.find(START_BLOCK)
                if start < 0:
                    self.discarded += len(self._buf)
                    self._buf.clear()
                    return frames
                self.discarded += start
                del self._buf[:start + 1]
                self._in_frame = True
                self._scanned = 0
            frame = self._take_frame()
            if frame is None:
                if len(self._buf) > self.max_frame:
                    raise FrameTooLarge(f"frame exceeds {self.max_frame} bytes without an end block")
                return frames
            frames.append(frame)

    def _take_frame(self) -> bytes | None:
        # Step back one byte: the two-byte end block may straddle two reads.
        origin = max(0, self._scanned - 1)
        end = self._buf.find(END_BLOCK, origin)
        restart = self._buf.rfind(START_BLOCK, origin, end if end >= 0 else len(self._buf))
        if restart >= 0:
            # A start block cannot occur inside HL7 text, so the open frame was
            # truncated; drop it and resynchronise on the newest one.
            self.discarded += restart + 1
            del self._buf[:restart + 1]
            if end >= 0:
                end -= restart + 1
        if end < 0:
            self._scanned = len(self._buf)
            return None
        if end > self.max_frame:
            raise FrameTooLarge(f"frame of {end} bytes exceeds {self.max_frame}")
        frame = bytes(self._buf[:end])
        del self._buf[:end + len(END_BLOCK)]
        self._in_frame = False
        self._scanned = 0
        return frame


class _CloseConnection(Exception):
    pass


class _Slots:
    """Counts held per key under one lock; ``take`` refuses beyond the key's cap."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    def take(self, key: str, cap: int) -> bool:
        with self._lock:
            held = self._held.get(key, 0)
            if held >= cap:
                return False
            self._held[key] = held + 1
            return True

    def give(self, key: str) -> None:
        with self._lock:
            left = self._held.get(key, 0) - 1
            if left > 0:
                self._held[key] = left
            else:
                self._held.pop(key, None)


def _event(name: str, peer, **fields) -> str:
    return json.dumps({"event": name, "transport": "mllp", "peer": str(peer), **fields})


class MllpServer:
    """Listens in background threads; ``handler(message, peer) -> reply`` runs once per frame.

    The handler is called concurrently, from one thread per connection. When it
    raises, ``error_reply(message, exc)`` supplies the answer; without one the
    connection is closed so that the sender sees a failure instead of waiting.

    With ``ssl_context`` every connection is TLS: whether a client certificate is
    required is the context's business (``xds.tls.server_context``), and the
    verified subject reaches the handler in ``peer.subject``.

    Bounds: ``max_connections`` open at once; per source (``source_limit(peer)``
    names the source and its cap; by default the certificate subject, else the
    address, each with ``per_source``); ``handshake_timeout`` from accepting to
    the end of the TLS handshake, counted by the same per-address cap while the
    peer is unknown; ``idle_timeout`` waiting for the start of a frame (bytes
    outside frames do not count as activity); ``frame_timeout`` from a frame's
    start block to its end block; ``write_timeout`` for each reply.
    """

    def __init__(self, host: str, port: int, handler: Handler, *, max_frame: int = DEFAULT_MAX_FRAME,
                 error_reply: ErrorReply | None = None, idle_timeout: float | None = 300.0,
                 frame_timeout: float = 30.0, handshake_timeout: float = 10.0, write_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None, max_connections: int = 64, per_source: int = 8,
                 source_limit: SourceLimit | None = None):
        self.host = host
        self._requested_port = port
        self.handler = handler
        self.error_reply = error_reply
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.handshake_timeout = handshake_timeout
        self.write_timeout = write_timeout
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.per_source = per_source
        self.source_limit = source_limit
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._sources = _Slots()
        self._unidentified = _Slots()

    @property
    def port(self) -> int:
        if self._listener is not None:
            return self._listener.getsockname()[1]
        return self._requested_port

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    def start(self) -> "MllpServer":
        if self._listener is not None:
            return self
        self._stopping.clear()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self._requested_port))
            listener.listen(min(self.max_connections * 2, socket.SOMAXCONN))
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, args=(listener,), name=f"mllp-{self.port}",
                                        daemon=True)
        self._thread.start()
        log.info("MLLP%s listening on %s:%d", " over TLS" if self.tls else "", self.host, self.port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            self._thread = None
        listener.close()
        with self._lock:
            open_connections = list(self._connections.items())
        for sock, _ in open_connections:
            try:
                # Wakes the connection thread out of recv(); close() alone would not.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, thread in open_connections:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "MllpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- accepting -----------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        # The loop only accepts: handshakes and reads happen in each connection's thread, so
        # nothing a peer does (or fails to do) can hold it up.
        while not self._stopping.is_set():
            ready, _, _ = select.select([listener], [], [], 0.2)
            if not ready:
                continue
            try:
                sock, addr = listener.accept()
            except OSError:
                continue
            peer = Peer(addr[0], addr[1])
            with self._lock:
                full = len(self._connections) >= self.max_connections
                if not full:
                    thread = threading.Thread(target=self._serve_connection, args=(sock, peer),
                                              name=f"mllp-conn-{addr[0]}:{addr[1]}", daemon=True)
                    self._connections[sock] = thread
            if full:
                log.warning(_event("mllp_refused", peer, reason="max_connections", limit=self.max_connections))
                _close(sock)
                continue
            thread.start()

    # --- per connection ---------------------------------------------------------

    def _serve_connection(self, sock: socket.socket, peer: Peer) -> None:
        conn = sock
        try:
            if self.ssl_context is not None:
                # Until the handshake says who it is, a peer is counted by its address, so one
                # address cannot fill the server with handshakes that never finish.
                pending = "address:" + peer.address
                if not self._unidentified.take(pending, self.per_source):
                    log.warning(_event("mllp_refused", peer, reason="per_address_handshakes",
                                       limit=self.per_source))
                    return
                try:
                    wrapped = self._handshake(sock, peer)
                finally:
                    self._unidentified.give(pending)
                if wrapped is None:
                    return
                conn = wrapped
                with self._lock:
                    self._connections[conn] = self._connections.pop(sock, threading.current_thread())
                peer = Peer(peer.address, peer.port, certificate_subject(conn.getpeercert()), tls=True)
            key, cap = self._source_limit(peer)
            if not self._sources.take(key, cap):
                log.warning(_event("mllp_refused", peer, reason="per_source_connections", source=key, limit=cap))
                return
            try:
                self._read_frames(conn, peer)
            finally:
                self._sources.give(key)
        except Exception:
            log.exception("MLLP connection from %s failed", peer)
        finally:
            with self._lock:
                self._connections.pop(sock, None)
                self._connections.pop(conn, None)
            _close(conn)
            if conn is not sock:
                _close(sock)

    def _source_limit(self, peer: Peer) -> tuple[str, int]:
        if self.source_limit is not None:
            return self.source_limit(peer)
        if peer.subject is not None:
            return "subject:" + peer.subject, self.per_source
        return "address:" + peer.address, self.per_source

    def _handshake(self, sock: socket.socket, peer: Peer) -> ssl.SSLSocket | None:
        """The TLS handshake against one deadline, however the peer spaces its bytes."""
        deadline = time.monotonic() + self.handshake_timeout
        sock.setblocking(False)
        try:
            conn = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            log.warning(_event("mllp_refused", peer, reason="tls-handshake", detail=str(exc)))
            return None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping.is_set():
                log.warning(_event("slow_client", peer, phase="tls-handshake", seconds=self.handshake_timeout))
                _close(conn)
                return None
            try:
                conn.do_handshake()
                break
            except ssl.SSLWantReadError:
                select.select([conn], [], [], min(remaining, 0.5))
            except ssl.SSLWantWriteError:
                select.select([], [conn], [], min(remaining, 0.5))
            except (ssl.SSLError, OSError) as exc:
                # No certificate, or one our CA did not sign: refused before any HL7 is read.
                log.warning(_event("mllp_refused", peer, reason="tls-handshake",
                                   detail=getattr(exc, "reason", None) or str(exc)))
                _close(conn)
                return None
        conn.setblocking(True)
        return conn

    def _read_frames(self, sock: socket.socket, peer: Peer) -> None:
        decoder = FrameDecoder(self.max_frame)
        idle_since = time.monotonic()
        frame_since = None
        while not self._stopping.is_set():
            now = time.monotonic()
            if decoder.in_frame:
                if frame_since is None:
                    frame_since = now
                deadline, phase, limit = frame_since + self.frame_timeout, "frame", self.frame_timeout
            else:
                frame_since = None
                if self.idle_timeout is None:
                    deadline, phase, limit = None, "idle", None
                else:
                    deadline, phase, limit = idle_since + self.idle_timeout, "idle", self.idle_timeout
            if deadline is not None and deadline <= now:
                log.warning(_event("slow_client", peer, phase=phase, seconds=limit))
                return
            sock.settimeout(None if deadline is None else deadline - now)
            try:
                data = sock.recv(RECV_SIZE)
            except socket.timeout:
                continue  # the deadline check above closes it
            except OSError:
                return
            if not data:
                return
            try:
                frames = decoder.feed(data)
            except FrameTooLarge as exc:
                log.warning(_event("mllp_closed", peer, reason="max_frame", detail=str(exc)))
                return
            if decoder.discarded:
                log.debug("MLLP discarded %d bytes outside frames from %s", decoder.discarded, peer)
                decoder.discarded = 0
            for raw in frames:
                try:
                    reply = self._dispatch(raw, peer)
                except _CloseConnection:
                    return
                if reply:
                    try:
                        sock.settimeout(self.write_timeout)
                        sock.sendall(reply)
                    except OSError:
                        return
            if frames:
                idle_since = time.monotonic()
                if decoder.in_frame:
                    frame_since = idle_since

    def _dispatch(self, raw: bytes, peer: Peer) -> bytes | None:
        message, encoding = decode_payload(raw)
        try:
            reply = self.handler(message, peer)
        except Exception as exc:
            log.exception("MLLP handler failed on a message from %s", peer)
            reply = self._error_reply(message, exc)
        if not reply:
            return None
        return encode_frame(reply, encoding)

    def _error_reply(self, message: str, exc: BaseException) -> str:
        if self.error_reply is None:
            raise _CloseConnection()
        try:
            reply = self.error_reply(message, exc)
        except Exception:
            log.exception("MLLP error_reply failed too")
            raise _CloseConnection() from None
        if not reply:
            raise _CloseConnection()
        return reply


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


# --- the sending side -----------------------------------------------------------------------

def parse_hostport(text: str, default_port: int = 2575) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host (then the usual HL7 port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"{text!r}: no host")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"{text!r}: port {port!r} is not a number") from None
    if not 0 < number < 65536:
        raise ValueError(f"{text!r}: port {number} is out of range")
    return host, number


class MllpClient:
    """One connection to an MLLP receiver, for sending messages one after another.

    With ``ssl_context`` the connection is TLS; the context carries our client
    certificate and the CA the receiver's certificate must chain to
    (``xds.tls.client_context``). ``timeout`` bounds connecting (handshake
    included) and each exchange. Raises ``ConnectionError`` when the peer closes
    before replying and ``TimeoutError`` when it never does; TLS refusals are
    ``ssl.SSLError`` (all three are ``OSError``).
    """

    def __init__(self, host: str, port: int, timeout: float = 5.0, *, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, max_frame: int = DEFAULT_MAX_FRAME):
        self.host, self.port, self.timeout, self.max_frame = host, port, timeout, max_frame
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._decoder = FrameDecoder(max_frame)
        self._replies: list[bytes] = []

    def send(self, message: str, encoding: str = "utf-8") -> str:
        """Send one message and return its reply frame."""
        deadline = time.monotonic() + self.timeout
        self.sock.settimeout(self.timeout)
        self.sock.sendall(encode_frame(message, encoding))
        while not self._replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no MLLP reply from {self.host}:{self.port} within {self.timeout}s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(RECV_SIZE)
            except socket.timeout:
                raise TimeoutError(f"no MLLP reply from {self.host}:{self.port} within {self.timeout}s") from None
            if not data:
                raise ConnectionError(f"{self.host}:{self.port} closed the connection before a complete reply")
            self._replies += self._decoder.feed(data)
        return decode_payload(self._replies.pop(0))[0]

    def close(self) -> None:
        _close(self.sock)

    def __enter__(self) -> "MllpClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def mllp_send(host: str, port: int, message: str, timeout: float = 5.0, *,
              max_frame: int = DEFAULT_MAX_FRAME, encoding: str = "utf-8",
              ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None) -> str:
    """Send one message on a new connection and return the first reply frame.

    ``timeout`` bounds connecting and the exchange, each. See ``MllpClient`` for
    TLS and for the errors raised.
    """
    with MllpClient(host, port, timeout, ssl_context=ssl_context, server_hostname=server_hostname,
                    max_frame=max_frame) as client:
        return client.send(message, encoding)
