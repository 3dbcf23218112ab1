"""Malformed HTTP framing over real sockets: a 400 (or 413/414) with a body that says what is wrong,
never a 500 with an empty body; nothing of a huge request line comes back; the server keeps serving."""
from __future__ import annotations

import os
import socket

import pytest

from node.server import Services
from xds.settings import Settings


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    services = Services(Settings(port=0, data=str(tmp_path_factory.mktemp("framing")))).start()
    yield services
    services.stop()


def exchange(server, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.http.port), timeout=10) as c:
        try:
            c.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            # A server that refuses an oversized head answers and closes before the rest arrives; its
            # answer is already in our receive buffer (the adapter lingers so that it is not reset away).
            pass
        out = b""
        while True:
            got = c.recv(65536)
            if not got:
                return out
            out += got


def status_and_body(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


SOAP = b"Content-Type: application/soap+xml; charset=UTF-8\r\n"
MTOM = (b'Content-Type: multipart/related; boundary="b1"; type="application/xop+xml"; '
        b'start-info="application/soap+xml"\r\n')


@pytest.mark.parametrize("ctype", [SOAP, MTOM], ids=["soap", "mtom"])
@pytest.mark.parametrize("chunks,words", [
    (b"ZZZ\r\nabc\r\n0\r\n\r\n", "framing is malformed"),
    (b"3\r\nabcXY\r\n0\r\n\r\n", "framing is malformed"),
])
def test_bad_chunked_framing_is_400_with_a_reason(server, ctype, chunks, words):
    raw = exchange(server, b"POST /xds/registry HTTP/1.1\r\nHost: x\r\n" + ctype +
                   b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks)
    status, body = status_and_body(raw)
    assert status == 400 and words.encode() in body, raw[:400]
    assert not [n for n in os.listdir(os.path.join(server.settings.data, "spool")) if n.startswith("xop-")]


@pytest.mark.parametrize("length", [b"-5", b"12abc"])
def test_negative_or_bogus_content_length_is_400(server, length):
    raw = exchange(server, b"POST /xds/registry HTTP/1.1\r\nHost: x\r\n" + SOAP +
                   b"Content-Length: " + length + b"\r\nConnection: close\r\n\r\nabc")
    status, body = status_and_body(raw)
    assert status == 400 and b"Content-Length" in body, raw[:400]


def test_huge_request_line_is_refused_and_not_echoed(server):
    raw = exchange(server, b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, _ = status_and_body(raw)
    assert status == 414 and len(raw) < 1000


def test_long_unknown_path_is_quoted_short(server):
    raw = exchange(server, b"GET /" + b"a" * 30_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, body = status_and_body(raw)
    assert status == 404 and len(body) < 400 and b"30001 characters" in body


def test_header_block_is_bounded(server):
    raw = exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2_000_000 +
                   b"\r\nConnection: close\r\n\r\n")
    status, _ = status_and_body(raw)
    assert status == 413 and len(raw) < 1000


def test_still_serving_after_all_of_it(server):
    raw = exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_and_body(raw)[0] == 200
