"""Fake remote hosts for client-side tests: real HTTP/1.1 servers on 127.0.0.1 (plain or TLS) whose
answers the test chooses, and which count the connections they accept and the requests they serve.

They stand in for a remote registry or repository host; nothing in them is XDS logic beyond
building the canned answers.
"""
from __future__ import annotations

import select
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lxml import etree

from xds import constants as C
from xds import mtom, soap
from xds.ebrim import registry_response
from xds.xdsb import retrieve_response, x

SOAP12 = soap.CONTENT_TYPE[soap.SOAP12]


class Answer:
    """What a fake sends back: a status, headers and the body (bytes)."""

    def __init__(self, body: bytes, content_type: str, status: int = 200, headers: dict | None = None):
        self.body = body
        self.content_type = content_type
        self.status = status
        self.headers = headers or {}


def soap_answer(payload: etree._Element, action: str = C.response_action(C.ACTION_REGISTER)) -> Answer:
    return Answer(soap.build_envelope(soap.SOAP12, action, None, payload), f"{SOAP12}; charset=UTF-8")


def registry_success() -> Answer:
    return soap_answer(registry_response())


def retrieve_answer(docs: list[tuple[str, str, bytes]], epilogue: bytes = b"") -> Answer:
    """An ITI-43 answer over MTOM holding docs [(repositoryUniqueId, documentUniqueId, content)]."""
    response = retrieve_response([])
    writer = mtom.MtomWriter()
    for repo, uid, content in docs:
        dr = etree.SubElement(response, x("DocumentResponse"))
        etree.SubElement(dr, x("RepositoryUniqueId")).text = repo
        etree.SubElement(dr, x("DocumentUniqueId")).text = uid
        etree.SubElement(dr, x("mimeType")).text = "text/plain"
        cid = writer.add_bytes(content, "text/plain")
        doc = etree.SubElement(dr, x("Document"))
        etree.SubElement(doc, C.q(C.NS_XOP, "Include"), nsmap={"xop": C.NS_XOP}, href="cid:" + cid)
    writer.set_root(soap.build_envelope(soap.SOAP12, C.response_action(C.ACTION_RETRIEVE), None, response), SOAP12)
    return Answer(b"".join(writer.chunks()) + epilogue, writer.content_type(C.response_action(C.ACTION_RETRIEVE)))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet test output
        pass

    def handle(self):
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            # Idle until the next request (or the end of the connection) arrives.
            try:
                select.select([self.connection], [], [])
            except (OSError, ValueError):
                return
            if self.server.drop_reused:
                # The stale keep-alive race: a request arrives on a connection the server has
                # decided to end, and it closes without reading a byte of it.
                self.server.note("dropped")
                return
            self.handle_one_request()

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        out = bytearray()
        while True:  # chunked
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += self.rfile.read(size)
            self.rfile.readline()

    def do_POST(self):
        server: FakeHost = self.server
        body = self._body()
        server.note("requests")
        server.bodies.append(body)
        answer = server.answer(body) if callable(server.answer) else server.answer
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for k, v in answer.headers.items():
            self.send_header(k, v)
        if answer.headers.get("Connection", "").lower() == "close":
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer.body)
        self.wfile.flush()


class FakeHost(ThreadingHTTPServer):
    """A fake remote host: accepts on 127.0.0.1, answers every POST with `answer` (an Answer, or a
    callable taking the request body and returning one)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer, tls: ssl.SSLContext | None = None):
        self.answer = answer
        self.tls = tls
        self.counts = {"connections": 0, "requests": 0, "dropped": 0}
        self.bodies: list[bytes] = []
        self.drop_reused = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def note(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    @property
    def connections(self) -> int:
        return self.counts["connections"]

    @property
    def requests(self) -> int:
        return self.counts["requests"]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}/xds/fake"

    def get_request(self):
        sock, addr = super().get_request()
        self.note("connections")
        if self.tls is not None:
            # The handshake runs on the handler's thread, at its first read.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            self._open.add(sock)
        return sock, addr

    def shutdown_request(self, request):
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        pass  # a client that hangs up mid-answer is part of what these fakes are for

    def close_idle(self) -> None:
        """End, from the server side, every connection it holds open (between requests: idle)."""
        with self._lock:
            socks = list(self._open)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "FakeHost":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.close_idle()
        self.server_close()
