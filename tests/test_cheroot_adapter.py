"""The HTTP server adapter (xds/cheroot_adapter.py): what it puts into the environ, over real sockets."""
from __future__ import annotations

import hashlib
import http.client
import io
import os
import ssl

import pytest

from tests.certs import Authority
from tests.test_mtom import BIG, MB, Trickle, build, spool_empty
from xds.app import INPUT_KEY, PEER_KEY, request_input
from xds.cheroot_adapter import HttpServer, direct_input
from xds.mtom import read_multipart
from xds.tls import TlsFiles, client_context


def _connect(server: HttpServer, ca: Authority | None) -> http.client.HTTPConnection:
    """A connection to server: HTTPS trusting ca, or plain HTTP without one."""
    if ca is None:
        return http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    return http.client.HTTPSConnection("127.0.0.1", server.port, timeout=20,
                                       context=ssl.create_default_context(cafile=ca.path))


def test_direct_input_leaves_other_streams_alone():
    from cheroot.server import KnownLengthRFile

    class Sub(KnownLengthRFile):
        pass

    for stream in (io.BytesIO(b"x"), Sub(io.BytesIO(b"x"), 1), Trickle(b"x", 1)):
        assert direct_input(stream) is stream


def test_without_the_adapter_the_app_reads_wsgi_input():
    stream = io.BytesIO(b"x")
    assert request_input({"wsgi.input": stream}) is stream
    faster = io.BytesIO(b"y")
    assert request_input({"wsgi.input": stream, INPUT_KEY: faster}) is faster


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_cheroot_input_read_directly_keeps_the_connection_usable(tmp_path, tls):
    seen = []

    def app(environ, start_response):
        stream = environ[INPUT_KEY]
        seen.append(type(stream).__name__)
        length = environ.get("CONTENT_LENGTH")
        with read_multipart(stream, environ["CONTENT_TYPE"], str(spool), BIG, BIG,
                            content_length=int(length) if length else None) as msg:
            out = " ".join(f"{att.size}:{att.sha1}" for att in msg.parts.values()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
        return [out]

    spool = tmp_path / "spool"
    spool.mkdir()
    ca = Authority(str(tmp_path)) if tls else None
    server = HttpServer(app, "127.0.0.1", 0, threads=2,
                        tls=TlsFiles(*ca.issue("server")) if tls else None).start()
    data = os.urandom(3 * MB + 17)
    w, _, _, body = build([data, b"small"])
    expected = f"{len(data)}:{hashlib.sha1(data).hexdigest()} 5:{hashlib.sha1(b'small').hexdigest()}"
    # Past the closing delimiter: the reader stops there, and cheroot must drain the rest exactly,
    # or the next request on the connection would start inside this one's epilogue.
    epilogue = b"E" * 300_000
    try:
        conn = _connect(server, ca if tls else None)
        for framing in ("length", "chunked", "length"):
            if framing == "length":
                conn.request("POST", "/", body=body + epilogue, headers={"Content-Type": w.content_type()})
            else:
                pieces = [body[i:i + 5000] for i in range(0, len(body), 5000)]
                conn.request("POST", "/", body=iter(pieces), headers={"Content-Type": w.content_type()},
                             encode_chunked=True)
            resp = conn.getresponse()
            assert (resp.status, resp.read().decode()) == (200, expected), framing
        conn.close()
    finally:
        server.stop()
    assert seen == ["_CherootInput", "_ChunkedInput", "_CherootInput"]
    assert spool_empty(spool)


def _peer_app(seen):
    def app(environ, start_response):
        seen.append(environ.get(PEER_KEY))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    return app


def test_peer_subject_is_the_verified_client_certificate(tmp_path):
    ca = Authority(str(tmp_path))
    cert, key = ca.issue("server")
    seen = []
    server = HttpServer(_peer_app(seen), "127.0.0.1", 0, threads=2, tls=TlsFiles(cert, key, ca.path)).start()
    try:
        client = ca.issue("host-a")
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=20,
                                           context=client_context(TlsFiles(*client, ca.path)))
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok"
        conn.close()
    finally:
        server.stop()
    assert len(seen) == 1 and "CN=host-a" in seen[0] and "O=XDS test" in seen[0]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https-no-client-ca"])
def test_no_peer_subject_without_a_verified_certificate(tmp_path, tls):
    ca = Authority(str(tmp_path))
    seen = []
    server = HttpServer(_peer_app(seen), "127.0.0.1", 0, threads=2,
                        tls=TlsFiles(*ca.issue("server")) if tls else None).start()
    try:
        conn = _connect(server, ca if tls else None)
        # A header cannot pose as the contract's key: headers become HTTP_* keys.
        conn.request("GET", "/", headers={"xds.peer_subject": "CN=forged"})
        assert conn.getresponse().read() == b"ok"
        conn.close()
    finally:
        server.stop()
    assert seen == [None]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_large_answers_bypass_the_buffered_writer_and_arrive_exactly(tmp_path, tls):
    """A bytes chunk of 64 kB or more goes straight to the socket (_Gateway._send_bytes): with a
    Content-Length, chunked (HTTP/1.1 without one), after a small chunk that must go first, and to a
    client that reads slowly, each answer arrives byte-exact and the keep-alive connection stays usable."""
    import time

    small, big = b"<head/>", os.urandom(5 * MB + 3)   # larger than a socket buffer: several send() calls

    def app(environ, start_response):
        framing = environ["PATH_INFO"]
        headers = [("Content-Type", "application/octet-stream")]
        if framing == "/length":
            headers.append(("Content-Length", str(len(small) + len(big))))
        start_response("200 OK", headers)
        return [small, big, small] if framing == "/chunked" else [small, big]

    ca = Authority(str(tmp_path)) if tls else None
    server = HttpServer(app, "127.0.0.1", 0, threads=2,
                        tls=TlsFiles(*ca.issue("server")) if tls else None).start()
    try:
        conn = _connect(server, ca)
        for path, expected in (("/length", small + big), ("/chunked", small + big + small),
                               ("/length", small + big)):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200
            assert (resp.getheader("Transfer-Encoding") == "chunked") == (path == "/chunked")
            got = bytearray()
            while chunk := resp.read(256 * 1024):
                got += chunk
                time.sleep(0.002)   # a slow reader: the server's send() waits for room more than once
            assert bytes(got) == expected, path
        conn.close()
    finally:
        server.stop()


def test_a_large_chunk_past_the_declared_length_gets_cheroot_s_answer(tmp_path):
    """cheroot's own rule for an application that yields more than its Content-Length, kept on the direct
    path: before anything was sent, a 500 that says so; once the head is out, the bytes announced and no
    more, so the client does not wait for bytes that will not come."""
    big = os.urandom(200_000)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", "100000")])
        return [big] if environ["PATH_INFO"] == "/first" else [b"x" * 10, big]

    server = HttpServer(app, "127.0.0.1", 0, threads=2).start()
    try:
        conn = _connect(server, None)
        conn.request("GET", "/first")
        resp = conn.getresponse()
        assert resp.status == 500 and b"more bytes than the declared Content-Length" in resp.read()
        conn.close()
        conn = _connect(server, None)
        conn.request("GET", "/second")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"x" * 10 + big[:100_000 - 10]
        conn.close()
    finally:
        server.stop()
