"""MLLP, the framing HL7 v2 uses over TCP: ``\\x0b`` message ``\\x1c\\x0d``.

The server is meant to face senders we do not control, so a misbehaving peer
costs at most its own connection: stray bytes are dropped, an endless frame
closes the connection, and a failing handler never takes the listener down.
"""
from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
DEFAULT_MAX_FRAME = 1024 * 1024
RECV_SIZE = 65536

Handler = Callable[[str], Optional[str]]
ErrorReply = Callable[[str, BaseException], Optional[str]]


class FrameTooLarge(Exception):
    pass


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


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address, mllp: "MllpServer"):
        self.mllp = mllp
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _RequestHandler)


class _RequestHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.mllp._serve_connection(self.request, self.client_address)


class MllpServer:
    """Listens in background threads; ``handler(message) -> reply`` runs once per frame.

    The handler is called concurrently from one thread per connection. When it
    raises, ``error_reply(message, exc)`` supplies the answer; without one the
    connection is closed so that the sender sees a failure instead of waiting.
    """

    def __init__(self, host: str, port: int, handler: Handler, *, max_frame: int = DEFAULT_MAX_FRAME,
                 error_reply: ErrorReply | None = None, idle_timeout: float | None = 300.0):
        self.host = host
        self._requested_port = port
        self.handler = handler
        self.error_reply = error_reply
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self._server: _TcpServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        if self._server is not None:
            return self._server.server_address[1]
        return self._requested_port

    def start(self) -> "MllpServer":
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _TcpServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"mllp-{self.port}", daemon=True)
        self._thread.start()
        log.info("MLLP listening on %s:%d", self.host, self.port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            open_connections = list(self._connections.items())
        for sock, _ in open_connections:
            try:
                # Wakes the connection thread out of recv(); close() alone would not.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for _, thread in open_connections:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            self._thread = None

    def __enter__(self) -> "MllpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- per connection ---------------------------------------------------------

    def _serve_connection(self, sock: socket.socket, peer) -> None:
        with self._lock:
            self._connections[sock] = threading.current_thread()
        try:
            sock.settimeout(self.idle_timeout)
            self._read_frames(sock, peer)
        finally:
            with self._lock:
                self._connections.pop(sock, None)

    def _read_frames(self, sock: socket.socket, peer) -> None:
        decoder = FrameDecoder(self.max_frame)
        while not self._stopping.is_set():
            try:
                data = sock.recv(RECV_SIZE)
            except socket.timeout:
                log.info("MLLP connection from %s idle for %ss, closing", peer, self.idle_timeout)
                return
            except OSError:
                return
            if not data:
                return
            try:
                frames = decoder.feed(data)
            except FrameTooLarge as exc:
                log.warning("MLLP connection from %s closed: %s", peer, exc)
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
                        sock.sendall(reply)
                    except OSError:
                        return

    def _dispatch(self, raw: bytes, peer) -> bytes | None:
        message, encoding = decode_payload(raw)
        try:
            reply = self.handler(message)
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


def mllp_send(host: str, port: int, message: str, timeout: float = 5.0, *,
              max_frame: int = DEFAULT_MAX_FRAME, encoding: str = "utf-8") -> str:
    """Send one message and return the first reply frame.

    ``timeout`` bounds the whole exchange. Raises ``ConnectionError`` when the
    peer closes before replying and ``TimeoutError`` when it never does.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(encode_frame(message, encoding))
        decoder = FrameDecoder(max_frame)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no MLLP reply from {host}:{port} within {timeout}s")
            sock.settimeout(remaining)
            try:
                data = sock.recv(RECV_SIZE)
            except socket.timeout:
                raise TimeoutError(f"no MLLP reply from {host}:{port} within {timeout}s") from None
            if not data:
                raise ConnectionError(f"{host}:{port} closed the connection before a complete reply")
            frames = decoder.feed(data)
            if frames:
                return decode_payload(frames[0])[0]
