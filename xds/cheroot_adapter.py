"""Everything specific to cheroot, the HTTP server, in one module.

The rest of the code knows only the server-neutral contract below (docs/decisions.md, "HTTP server
adapter"); serving with another WSGI server means writing another module that provides the same:

* HttpServer(app, host, port, threads=, tls=): start() binds and serves in a background thread,
  port is the bound port, stop() finishes the requests in flight (within shutdown_timeout) and returns;
* in every request's environ, before the application sees it, app.INPUT_KEY ("xds.input"): the body as
  an object with read(n), and readinto(memoryview) when the server can fill a buffer directly; and
  app.PEER_KEY ("xds.peer_subject"): the subject of the client certificate verified during the TLS
  handshake (RFC 2253-like DN), absent when there is none; the INPUT_KEY stream raises
  app.MalformedBody for broken HTTP framing (answered 400);
* HttpServer(..., max_header_bytes=): the bound on the request line and on the header block.
"""
from __future__ import annotations

import threading

from cheroot import errors, makefile, server, wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from .app import INPUT_KEY, PEER_KEY, MalformedBody
from .tls import TlsFiles, server_context


class HttpServer:
    """cheroot's wsgi.Server, with TLS through its BuiltinSSLAdapter."""

    def __init__(self, app, host: str, port: int, *, threads: int = 16, tls: TlsFiles | None = None,
                 server_name: str = "xds", shutdown_timeout: float = 10, max_header_bytes: int = 64 * 1024):
        self._server = wsgi.Server((host, port), with_contract(app), numthreads=threads, server_name=server_name,
                                   shutdown_timeout=shutdown_timeout)
        # The request line and the header block each: cheroot answers 414 and 413 beyond it (0 = unbounded).
        self._server.max_request_header_size = max_header_bytes
        if tls is not None:
            self._server.ssl_adapter = _ssl_adapter(tls)
        self._thread: threading.Thread | None = None

    def start(self) -> "HttpServer":
        """Bind, then serve in a background thread."""
        self._server.prepare()
        self._thread = threading.Thread(target=self._server.serve, name="xds-http", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        return self._server.bind_addr[1]

    def stop(self) -> None:
        self._server.stop()  # finishes requests in flight within shutdown_timeout
        if self._thread is not None:
            self._thread.join(timeout=15)


def _ssl_adapter(tls: TlsFiles) -> BuiltinSSLAdapter:
    adapter = BuiltinSSLAdapter(tls.cert, tls.key)
    # Our context replaces cheroot's so that client certificates are required and checked against tls.ca
    # during the handshake; cheroot then exposes the verified subject as SSL_CLIENT_S_DN.
    adapter.context = server_context(tls)
    return adapter


def with_contract(app):
    """app, called with the contract's environ keys filled in from cheroot's."""

    def contract_app(environ, start_response):
        environ[INPUT_KEY] = direct_input(environ["wsgi.input"])
        subject = peer_subject(environ)
        if subject is None:
            environ.pop(PEER_KEY, None)
        else:
            environ[PEER_KEY] = subject
        return app(environ, start_response)

    return contract_app


def peer_subject(environ: dict) -> str | None:
    """The verified client certificate subject as cheroot reports it (RFC 2253-like DN), or None."""
    if environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
        return None
    return environ.get("SSL_CLIENT_S_DN")


# --- the request body, read faster than through cheroot's own wsgi.input -----------------------------


class _CherootInput:
    """cheroot's wsgi.input for a body with a Content-Length, read without its copies.

    cheroot reads the socket through a pure-Python BufferedReader whose read(n) allocates
    and zero-fills a fresh n-byte bytearray for every recv and then joins the pieces: draining
    a socket with it runs at 1300 MB/s in 256 KiB reads and 650 MB/s in 4 MiB reads, where
    recv_into runs at 1500. readinto1() on the same reader hands over what it has buffered and
    otherwise lets recv_into fill our block directly.
    """

    def __init__(self, wrapper):
        self.wrapper = wrapper
        self.rfile = wrapper.rfile

    def read(self, size: int) -> bytes:
        return self.wrapper.read(size)

    def readinto(self, view: memoryview) -> int:
        n = min(len(view), self.wrapper.remaining)
        if n <= 0:
            return 0
        got = self.rfile.readinto1(view[:n]) or 0
        # cheroot drains `remaining` bytes after the response to keep the connection usable, so it
        # must stay exact; bytes_read only feeds its statistics.
        self.wrapper.remaining -= got
        if isinstance(getattr(self.rfile, "bytes_read", None), int):
            self.rfile.bytes_read += got
        return got


CHUNKED_READ = 64 * 1024


class _ChunkedInput:
    """cheroot's wsgi.input for a chunked body, asked for smaller reads.

    ChunkedRFile.read(n) grows its answer by bytes concatenation, one HTTP chunk at a time,
    so its cost per byte grows with n / chunk size, and clients chunk at 2-16 KiB. Measured
    over 4 KiB to 1 MiB chunks, 64 KiB reads are the best compromise: draining 4 KiB chunks
    runs at 370 MB/s against 260 MB/s with 256 KiB reads; 64 KiB and larger chunks lose
    about 10%.

    The MTOM reader asks a stream without readinto for whole chunks (xds/mtom/reader.py, _Source):
    ChunkedRFile consumes the end of a chunked body only when a read asks past it.
    """

    def __init__(self, wrapper):
        self.wrapper = wrapper

    def read(self, size: int) -> bytes:
        try:
            return self.wrapper.read(min(size, CHUNKED_READ))
        except (ValueError, errors.MaxSizeExceeded) as exc:
            # ChunkedRFile's word for a chunk size that is not hexadecimal or a chunk without its CRLF.
            raise MalformedBody(str(exc)[:200]) from None


def direct_input(stream):
    """stream, or a faster reader over the same bytes when stream is cheroot's input.

    Only cheroot's KnownLengthRFile and ChunkedRFile are recognised, by their exact classes: a
    subclass or another server's object may count or limit differently, and keeps its own read().
    So must the socket reader under KnownLengthRFile: the pyOpenSSL adapter's subclass handles
    its library's errors in read(), which readinto1() would bypass.
    """
    if (type(stream) is server.KnownLengthRFile
            and isinstance(getattr(stream, "remaining", None), int)
            and type(getattr(stream, "rfile", None)) is makefile.StreamReader):
        return _CherootInput(stream)
    if type(stream) is server.ChunkedRFile:
        return _ChunkedInput(stream)
    return stream
