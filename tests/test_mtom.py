"""MTOM/XOP codec: byte-exact round trips, chunk-edge boundaries, limits, cleanup, bounded memory."""
from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import random
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest
from lxml import etree

from xds import constants as C
from xds.mtom import reader as mtom_reader
from xds.mtom import writer as mtom_writer
from xds.mtom import (
    CHUNK,
    MtomError,
    MtomLimitError,
    MtomWriter,
    is_mtom,
    parse_content_type,
    read_multipart,
    resolve_xop,
    xop_include,
)

MB = 1024 * 1024
BIG = 1 << 40  # "no limit" for tests that are not about limits


class Trickle:
    """A WSGI-input stand-in that hands out at most n bytes per read and refuses unbounded reads."""

    def __init__(self, data: bytes, n: int):
        self.f = io.BytesIO(data)
        self.n = n
        self.reads = 0

    def read(self, size: int) -> bytes:
        assert size is not None and 0 < size <= CHUNK, f"unbounded or oversized read({size})"
        self.reads += 1
        return self.f.read(min(size, self.n))


class GenStream:
    """File-like over a generator of blocks, so a huge body never exists as a whole."""

    def __init__(self, blocks):
        self.blocks = iter(blocks)
        self.pending = memoryview(b"")

    def read(self, size: int) -> bytes:
        assert 0 < size <= CHUNK
        while not len(self.pending):
            try:
                self.pending = memoryview(next(self.blocks))
            except StopIteration:
                return b""
        out = bytes(self.pending[:size])
        self.pending = self.pending[size:]
        return out


def envelope(*cids: str) -> bytes:
    env = etree.Element(C.q(C.NS_SOAP12, "Envelope"), nsmap={"s": C.NS_SOAP12})
    body = etree.SubElement(env, C.q(C.NS_SOAP12, "Body"))
    req = etree.SubElement(body, C.q(C.NS_XDSB, "ProvideAndRegisterDocumentSetRequest"))
    for cid in cids:
        doc = etree.SubElement(req, C.q(C.NS_XDSB, "Document"), id="Doc-" + cid.split("@")[0][:8])
        xop_include(doc, cid)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def build(contents: list[bytes], boundary: str | None = None, types: list[str] | None = None):
    w = MtomWriter(boundary)
    cids = [w.add_bytes(c, (types or [])[i] if types else "application/octet-stream")
            for i, c in enumerate(contents)]
    root = envelope(*cids)
    w.set_root(root)
    body = b"".join(w)
    return w, cids, root, body


def spool_empty(path) -> bool:
    return os.listdir(path) == []


# --------------------------------------------------------------------------------------------
# Content-Type


def test_parse_content_type_quoting_and_case():
    mime, p = parse_content_type(
        'Multipart/Related; BOUNDARY="MIME;b=ou\\"nd"; type="application/xop+xml";'
        " start = '<root@x>' ; start-info=\"application/soap+xml\"; action=\"urn:a;b\"")
    assert mime == "multipart/related"
    assert p["boundary"] == 'MIME;b=ou"nd'
    assert p["type"] == "application/xop+xml"
    assert p["start"] == "<root@x>"
    assert p["start-info"] == "application/soap+xml"
    assert p["action"] == "urn:a;b"


def test_parse_content_type_tokens_and_garbage():
    assert parse_content_type("text/xml") == ("text/xml", {})
    assert parse_content_type(None) == ("", {})
    mime, p = parse_content_type("multipart/related;;boundary=Abc_1 ; junk; type=application/xop+xml")
    assert mime == "multipart/related"
    assert p == {"boundary": "Abc_1", "type": "application/xop+xml"}


def test_is_mtom():
    assert is_mtom('multipart/related; type="application/xop+xml"; boundary=x')
    assert is_mtom("MULTIPART/RELATED; boundary=x; TYPE=Application/XOP+XML")
    assert is_mtom("multipart/related; boundary=x")
    assert not is_mtom('multipart/related; type="text/xml"; boundary=x')
    assert not is_mtom("application/soap+xml; charset=utf-8")
    assert not is_mtom(None)


# --------------------------------------------------------------------------------------------
# Round trips


def tricky_contents(boundary: str) -> list[bytes]:
    delim = b"\r\n--" + boundary.encode()
    return [
        b"\r\n\r\nleading and trailing line breaks\r\n\r\n",
        b"",
        b"--",
        b"\r\n--",
        b"\n\r",
        delim[:-1],  # a delimiter missing its last byte, at the very end of the part
        b"x" * 4093 + delim[:7] + b"y" * 100 + delim[:-2] + b"\r\n",
        bytes(range(256)) * 40 + b"--" + boundary.encode()[:-1] + b"--\r\n",
        delim + b"X is not a boundary line, so this is content",
        b"\r\r\n\n--\r\n--\r",
    ]


@pytest.mark.parametrize("chunk", [1, 7, 4096, CHUNK])
def test_round_trip_byte_exact_at_any_chunking(tmp_path, chunk):
    boundary = "MIMEBoundary_edgecase"
    contents = tricky_contents(boundary)
    types = [f"application/x-test-{i}" for i in range(len(contents))]
    w, cids, root, body = build(contents, boundary, types)
    assert len(body) == w.content_length()
    stream = Trickle(body, chunk)
    with read_multipart(stream, w.content_type("urn:x"), str(tmp_path), BIG, BIG,
                        content_length=len(body)) as msg:
        assert msg.root == root
        assert msg.root_content_type.startswith("application/xop+xml")
        assert list(msg.parts) == cids
        for cid, data, ctype in zip(cids, contents, types):
            att = msg.parts[cid]
            assert att.read_bytes() == data
            assert att.size == len(data)
            assert att.sha1 == hashlib.sha1(data).hexdigest()
            assert att.content_type == ctype
            assert os.path.dirname(att.path) == str(tmp_path)
    assert spool_empty(tmp_path)


@pytest.mark.parametrize("chunk", [7, 4096])
@pytest.mark.parametrize("shift", range(0, 24, 3))
def test_partial_delimiters_straddle_chunk_edges(tmp_path, chunk, shift):
    boundary = "b0undary"
    delim = b"\r\n--" + boundary.encode()
    # Put every prefix of the delimiter across the edge of a read, at several alignments.
    content = b"".join(b"." * ((chunk - shift - k) % chunk) + delim[:k] + b"|" for k in range(1, len(delim)))
    w, cids, _, body = build([content, content[::-1]], boundary)
    with read_multipart(Trickle(body, chunk), w.content_type(), str(tmp_path), BIG, BIG) as msg:
        assert msg.parts[cids[0]].read_bytes() == content
        assert msg.parts[cids[1]].read_bytes() == content[::-1]


def test_five_megabyte_part_sha1(tmp_path):
    data = os.urandom(5 * MB) + b"\r\n"
    w, cids, _, body = build([data, b"small"])
    with read_multipart(io.BytesIO(body), w.content_type(), str(tmp_path), 6 * MB, 8 * MB,
                        content_length=len(body)) as msg:
        att = msg.parts[cids[0]]
        assert att.size == len(data)
        assert att.sha1 == hashlib.sha1(data).hexdigest()
        with att.open() as f:
            assert f.read() == data
    assert spool_empty(tmp_path)


def test_writer_streams_files_and_reports_length(tmp_path):
    src = tmp_path / "doc.bin"
    payload = os.urandom(CHUNK * 2 + 17)
    src.write_bytes(payload)
    spool = tmp_path / "spool"
    spool.mkdir()
    w = MtomWriter()
    c1 = w.add_file(str(src), "application/pdf")
    c2 = w.add_bytes(b"\r\nhello\r\n", "text/plain")
    w.set_root(envelope(c1, c2))
    chunks = list(w)
    assert max(len(c) for c in chunks) <= CHUNK + 1024
    body = b"".join(chunks)
    assert len(body) == w.content_length()
    ct = w.content_type("urn:ihe:iti:2007:RetrieveDocumentSetResponse")
    mime, p = parse_content_type(ct)
    assert mime == "multipart/related" and p["type"] == "application/xop+xml"
    assert p["start-info"] == "application/soap+xml"
    assert p["action"] == "urn:ihe:iti:2007:RetrieveDocumentSetResponse"
    assert p["start"] == f"<{w.root_cid}>"
    with read_multipart(io.BytesIO(body), ct, str(spool), BIG, BIG) as msg:
        assert msg.root_cid == w.root_cid
        assert msg.parts[c1].read_bytes() == payload
        assert msg.parts[c1].content_type == "application/pdf"
        assert msg.parts[c2].read_bytes() == b"\r\nhello\r\n"


def test_writer_unknown_size_has_no_content_length():
    w = MtomWriter()
    w.add_stream(iter([b"ab", b"cd"]))
    w.set_root(b"<x/>")
    assert w.content_length() is None
    assert b"abcd" in b"".join(w)


def test_handwritten_message_with_preamble_start_padding_base64(tmp_path):
    data = os.urandom(3000)
    b64 = base64.encodebytes(data)  # line-wrapped, as mail-style encoders produce
    root = b'<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"/>'
    body = (b"This preamble is ignored.\r\n"
            b"--MIME_x \t\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"content-id: doc1@example.org\r\n\r\n" + b64 +
            b"\r\n--MIME_x\r\n"
            b"Content-Type: application/xop+xml;\r\n"
            b'  charset=UTF-8; type="application/soap+xml"\r\n'
            b"Content-ID: <root.message@example.org>\r\n\r\n" + root +
            b"\r\n--MIME_x\r\n\r\nno headers at all"
            b"\r\n--MIME_x--\r\nepilogue")
    ct = 'multipart/related; boundary=MIME_x; type="application/xop+xml"; start="<root.message@example.org>"'
    with pytest.raises(MtomError, match="has no Content-ID"):
        read_multipart(Trickle(body, 5), ct, str(tmp_path), BIG, BIG)
    assert spool_empty(tmp_path)
    body = body.replace(b"\r\n--MIME_x\r\n\r\nno headers at all", b"")
    with read_multipart(Trickle(body, 5), ct, str(tmp_path), BIG, BIG) as msg:
        assert msg.root == root
        assert msg.root_content_type == 'application/xop+xml; charset=UTF-8; type="application/soap+xml"'
        att = msg.parts["doc1@example.org"]
        assert att.read_bytes() == data and att.sha1 == hashlib.sha1(data).hexdigest()


def test_first_part_is_root_without_start(tmp_path):
    body = b"--b\r\nContent-Type: application/xop+xml\r\n\r\n<a/>\r\n--b--"
    with read_multipart(io.BytesIO(body), "multipart/related; boundary=b", str(tmp_path), BIG, BIG) as msg:
        assert msg.root == b"<a/>" and msg.parts == {} and msg.root_cid is None


# --------------------------------------------------------------------------------------------
# Errors: precise messages and no spooled file left behind


def _fixture(tmp_path):
    w, cids, root, body = build([b"A" * 5000, b"B" * 9000 + b"!", b"C" * 100], "bnd")
    return w.content_type(), body


def _fails(tmp_path, body, ct, match, limit=False, **kw):
    """The body is refused with that message, as a size limit (MtomLimitError: HTTP 413) or not (400)."""
    kw.setdefault("max_part_bytes", BIG)
    kw.setdefault("max_total_bytes", BIG)
    for chunk in (1, 4096, CHUNK):
        with pytest.raises(MtomError, match=match) as info:
            read_multipart(Trickle(body, chunk), ct, str(tmp_path), **kw)
        assert isinstance(info.value, MtomLimitError) == limit, info.value
        assert spool_empty(tmp_path), f"spooled files left behind at chunk {chunk}"
    # A stream with readinto is read another way (straight into the reader's blocks).
    with pytest.raises(MtomError, match=match) as info:
        read_multipart(io.BytesIO(body), ct, str(tmp_path), **kw)
    assert isinstance(info.value, MtomLimitError) == limit, info.value
    assert spool_empty(tmp_path), "spooled files left behind reading with readinto"


def test_error_no_boundary_parameter(tmp_path):
    ct, body = _fixture(tmp_path)
    _fails(tmp_path, body, 'multipart/related; type="application/xop+xml"', "no boundary parameter")


def test_error_not_multipart(tmp_path):
    _fails(tmp_path, b"<x/>", "application/soap+xml", "is not multipart/related")


def test_error_wrong_boundary(tmp_path):
    ct, body = _fixture(tmp_path)
    _fails(tmp_path, body, ct.replace('"bnd"', '"other"'), r"never occurs in the body \(wrong boundary\?\)")


def test_error_no_closing_delimiter(tmp_path):
    ct, body = _fixture(tmp_path)
    cut = body[:body.rindex(b"\r\n--bnd--")]
    _fails(tmp_path, cut, ct, r"body truncated: the stream ended inside MIME part #4 <.*> before its closing")


def test_error_stream_ends_mid_part(tmp_path):
    ct, body = _fixture(tmp_path)
    cut = body[:body.index(b"B" * 9000) + 4000]
    _fails(tmp_path, cut, ct, "body truncated: the stream ended inside MIME part #3")


def test_error_stream_ends_in_headers_and_after_boundary(tmp_path):
    ct, body = _fixture(tmp_path)
    i = body.index(b"B" * 9000)
    _fails(tmp_path, body[:i - 10], ct, "stream ended inside the headers of MIME part #3")
    j = body.rindex(b"\r\n--bnd--")
    _fails(tmp_path, body[:j + 7], ct, "stream ended after a boundary line")


def test_error_content_length_shorter_than_body(tmp_path):
    ct, body = _fixture(tmp_path)
    _fails(tmp_path, body, ct, r"the \d+ bytes announced by Content-Length end inside MIME part #3",
           content_length=body.index(b"B" * 9000) + 10)


def test_error_stream_shorter_than_content_length(tmp_path):
    ct, body = _fixture(tmp_path)
    cut = body[:body.index(b"B" * 9000) + 10]
    _fails(tmp_path, cut, ct, rf"stream ended after {len(cut)} of the {len(body)} bytes announced by Content-Length",
           content_length=len(body))


def test_error_part_over_limit(tmp_path):
    ct, body = _fixture(tmp_path)
    _fails(tmp_path, body, ct, r"MIME part #3 <.*> exceeds the per-part limit of 8999 bytes", limit=True,
           max_part_bytes=8999)


def test_error_root_over_xml_limit(tmp_path):
    ct, body = _fixture(tmp_path)
    _fails(tmp_path, body, ct, "the root XML part .* exceeds the limit of 100 bytes", limit=True,
           max_xml_bytes=100)


def test_error_total_over_limit(tmp_path):
    ct, body = _fixture(tmp_path)
    _fails(tmp_path, body, ct, f"exceeds the total limit of {len(body) - 5} bytes", limit=True,
           max_total_bytes=len(body) - 5)


def test_error_missing_root_part(tmp_path):
    ct, body = _fixture(tmp_path)
    mime, p = parse_content_type(ct)
    ct2 = ct.replace(p["start"], "<nowhere@x>")
    _fails(tmp_path, body, ct2, "the root part <nowhere@x> named by the start parameter is missing")
    _fails(tmp_path, b"--bnd--\r\n", ct, "closes before its first part; the root part is missing")


def test_error_malformed_headers(tmp_path):
    ct, body = _fixture(tmp_path)
    i = body.index(b"B" * 9000)
    bad = body[:i - 4] + b"\r\nthis line has no colon" + body[i - 4:]
    _fails(tmp_path, bad, ct, r"malformed headers in MIME part #3: 'this line has no colon'")
    endless = body[:i - 4] + b"\r\nX-Pad: " + b"p" * 20000 + body[i - 4:]
    _fails(tmp_path, endless, ct, "malformed headers in MIME part #3: no blank line within")


def test_error_duplicate_content_id(tmp_path):
    w = MtomWriter("bnd")
    w.add_bytes(b"one", cid="same@x")
    w.set_root(b"<r/>")
    body = b"".join(w)
    dup = body.replace(b"\r\n--bnd--", b"\r\n--bnd\r\nContent-ID: <same@x>\r\n\r\ntwo\r\n--bnd--")
    _fails(tmp_path, dup, w.content_type(), "Content-ID <same@x> is used by two parts")


def test_error_bad_transfer_encoding_and_base64(tmp_path):
    ct, body = _fixture(tmp_path)
    at = body.rindex(b"Content-Transfer-Encoding: Binary", 0, body.index(b"B" * 9000))
    qp = body[:at] + body[at:].replace(b"Binary", b"quoted-printable", 1)
    _fails(tmp_path, qp, ct, "uses Content-Transfer-Encoding 'quoted-printable'")
    b64 = body[:at] + body[at:].replace(b"Binary", b"base64", 1)
    _fails(tmp_path, b64, ct, r"MIME part #3 <.*> is not valid base64")


# --------------------------------------------------------------------------------------------
# XOP resolution


def test_resolve_xop_good_and_dangling(tmp_path):
    w = MtomWriter()
    odd_cid = "doc 1/%weird@example.org"
    c1 = w.add_bytes(b"first", cid=odd_cid)
    c2 = w.add_bytes(b"second")
    w.set_root(envelope(c1, c2))
    body = b"".join(w)
    with read_multipart(io.BytesIO(body), w.content_type(), str(tmp_path), BIG, BIG) as msg:
        root = etree.fromstring(msg.root)
        found = resolve_xop(root, msg)
        docs = root.findall(".//" + C.q(C.NS_XDSB, "Document"))
        assert [found[d].read_bytes() for d in docs] == [b"first", b"second"]
        assert found[docs[0]].cid == odd_cid
        # Angle brackets, percent-encoded or not, name the same part.
        inc = docs[1][0]
        inc.set("href", "CID:%3C" + c2.replace("@", "%40") + "%3E")
        assert resolve_xop(root, msg)[docs[1]].cid == c2
        inc.set("href", "cid:missing@example.org")
        with pytest.raises(MtomError, match="xop:Include href=cid:missing@example.org points to no MIME part"):
            resolve_xop(root, msg)
        inc.set("href", "http://example.org/doc")
        with pytest.raises(MtomError, match="is not a cid: URL"):
            resolve_xop(root, msg.parts)


def test_xop_include_element():
    parent = etree.Element("Document")
    inc = xop_include(parent, "a b@x")
    assert inc.tag == C.q(C.NS_XOP, "Include") and inc.getparent() is parent
    assert inc.get("href") == "cid:a%20b@x"


def test_writer_rejects_bad_boundary_and_header_injection():
    with pytest.raises(ValueError):
        MtomWriter("bad\r\nboundary")
    w = MtomWriter()
    with pytest.raises(ValueError):
        w.add_bytes(b"x", "text/plain\r\nX-Evil: 1")


# --------------------------------------------------------------------------------------------
# Memory stays flat in document size


def test_200mb_stream_keeps_memory_flat(tmp_path):
    total = 200 * MB
    block = os.urandom(64 * 1024)
    w = MtomWriter()
    cid = w.add_stream(None, size=total)
    w.set_root(envelope(cid))
    head = w._root_head() + w.root + w._part_head(w.parts[0])
    tail = w._tail()
    expected = hashlib.sha1()

    def blocks():
        yield head
        for _ in range(total // len(block)):
            expected.update(block)
            yield block
        yield tail

    # Blocks kept from earlier tests would be invisible to tracemalloc; this read must allocate its own.
    mtom_reader._spare_blocks.clear()
    tracemalloc.start()
    try:
        msg = read_multipart(GenStream(blocks()), w.content_type(), str(tmp_path), 256 * MB, 300 * MB,
                             content_length=len(head) + total + len(tail))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with msg:
        att = msg.parts[cid]
        assert att.size == total
        assert att.sha1 == expected.hexdigest()
        assert os.path.getsize(att.path) == total
    assert peak < 8 * MB, f"tracemalloc peak {peak / MB:.1f} MB"
    assert spool_empty(tmp_path)


# --------------------------------------------------------------------------------------------
# The block path: binary parts read into blocks and hashed on a helper thread


class SlowExecutor(ThreadPoolExecutor):
    """Hashes late, so that a block the reader refilled too early would change under the hash."""

    tasks = 0

    def submit(self, fn, *args, **kwargs):
        SlowExecutor.tasks += 1

        def late():
            time.sleep(0.001)
            return fn(*args, **kwargs)

        return super().submit(late)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks small enough for test bodies to cross many of their edges, and a helper that hashes late."""
    monkeypatch.setattr(mtom_reader, "BLOCK", 4096)
    monkeypatch.setattr(mtom_reader, "CHUNK", 1024)
    monkeypatch.setattr(mtom_reader, "ThreadPoolExecutor", SlowExecutor)
    SlowExecutor.tasks = 0
    yield
    assert not [t for t in threading.enumerate() if t.name.startswith("mtom-sha1")], "helper thread left running"


def delimiter_minefield(boundary: str, size: int, seed: int) -> bytes:
    """Content dense with partial and false delimiters, so block edges fall inside them everywhere."""
    delim = b"\r\n--" + boundary.encode()
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rnd.randbytes(rnd.randrange(0, 300))
        pick = rnd.randrange(4)
        if pick == 0:
            out += delim[:rnd.randrange(1, len(delim))]
        elif pick == 1:
            out += delim + b"X"  # a delimiter not followed by a line end is content
        elif pick == 2:
            out += delim + b"-X"  # nor is one followed by a single dash
        else:
            out += b"\r\n" * rnd.randrange(1, 4)
    return bytes(out)


STREAMS = {
    "readinto": lambda body: io.BytesIO(body),
    "read-7": lambda body: Trickle(body, 7),
    "read-1000": lambda body: Trickle(body, 1000),
}


@pytest.mark.parametrize("stream", STREAMS)
def test_block_path_round_trip_with_delimiters_on_block_edges(tmp_path, small_blocks, stream):
    boundary = "MIMEBoundary_edgecase"
    contents = [delimiter_minefield(boundary, 60_000, seed) for seed in range(3)]
    contents += tricky_contents(boundary) + [os.urandom(4096 * 5 + 1), b"z"]
    w, cids, root, body = build(contents, boundary)
    with read_multipart(STREAMS[stream](body), w.content_type(), str(tmp_path), BIG, BIG,
                        content_length=len(body)) as msg:
        assert msg.root == root
        for cid, data in zip(cids, contents):
            att = msg.parts[cid]
            assert att.read_bytes() == data
            assert (att.size, att.sha1) == (len(data), hashlib.sha1(data).hexdigest())
    assert SlowExecutor.tasks >= 3, "the helper was not used"
    assert spool_empty(tmp_path)


@pytest.mark.parametrize("stream", STREAMS)
def test_false_delimiters_at_every_offset_of_a_block_edge(tmp_path, small_blocks, stream):
    boundary = "b0undary"
    delim = b"\r\n--" + boundary.encode()
    # Block edges sit a fixed step apart (the block minus the carried delimiter length); pieces one
    # byte longer than that step move a delimiter across an edge one byte per block.
    step = mtom_reader.BLOCK - len(delim) + 1
    pieces = []
    for k in range(3 * len(delim)):
        tail = delim + b"X" if k % 2 else delim[:-1] + b"|"
        pieces.append(os.urandom(step - len(tail)) + tail)
    content = b"".join(pieces)
    w, cids, _, body = build([content, content[::-1]], boundary)
    with read_multipart(STREAMS[stream](body), w.content_type(), str(tmp_path), BIG, BIG) as msg:
        assert msg.parts[cids[0]].read_bytes() == content
        assert msg.parts[cids[1]].read_bytes() == content[::-1]
        assert msg.parts[cids[0]].sha1 == hashlib.sha1(content).hexdigest()


@pytest.mark.parametrize("stream", STREAMS)
def test_closing_delimiters_at_every_offset_of_a_block_edge(tmp_path, small_blocks, monkeypatch, stream):
    boundary = "b0undary"
    delim = b"\r\n--" + boundary.encode()
    # The smallest block the fast path takes, so that a few dozen parts cover every offset: each
    # part's framing is one byte longer than a whole number of block steps.
    monkeypatch.setattr(mtom_reader, "BLOCK", 4 * len(delim))
    step = mtom_reader.BLOCK - len(delim)
    head = len(MtomWriter(boundary)._part_head(mtom_writer._OutPart("x" * 32 + "@xds.local",
                                                                    "application/octet-stream")))
    contents = [os.urandom(8 * step + 1 - head) for _ in range(step + len(delim))]
    w, cids, _, body = build(contents, boundary)
    with read_multipart(STREAMS[stream](body), w.content_type(), str(tmp_path), BIG, BIG) as msg:
        assert [msg.parts[c].read_bytes() for c in cids] == contents
        assert [msg.parts[c].sha1 for c in cids] == [hashlib.sha1(c).hexdigest() for c in contents]


@pytest.mark.parametrize("stream", STREAMS)
def test_block_path_errors_keep_their_messages_and_clean_up(tmp_path, small_blocks, stream):
    data = os.urandom(50_000)
    w, cids, _, body = build([data, b"after"], "bnd")
    ct = w.content_type()
    start = body.index(data)
    cases = [
        (body[:start + 30_000], {}, r"body truncated: the stream ended inside MIME part #2 <.*> before its closing"),
        (body, {"max_part_bytes": 40_000}, r"MIME part #2 <.*> exceeds the per-part limit of 40000 bytes"),
        (body, {"max_total_bytes": start + 20_000}, f"exceeds the total limit of {start + 20_000} bytes"),
        (body, {"content_length": start + 30_000},
         rf"the {start + 30_000} bytes announced by Content-Length end inside MIME part #2"),
        (body[:start + 30_000], {"content_length": len(body)},
         rf"stream ended after {start + 30_000} of the {len(body)} bytes announced by Content-Length"),
    ]
    for data_in, kw, match in cases:
        kw = {"max_part_bytes": BIG, "max_total_bytes": BIG, **kw}
        with pytest.raises(MtomError, match=match):
            read_multipart(STREAMS[stream](data_in), ct, str(tmp_path), **kw)
        assert spool_empty(tmp_path), f"spooled files left behind: {match}"


def test_base64_and_root_parts_beside_block_parts(tmp_path, small_blocks):
    data = os.urandom(30_000)
    b64 = base64.encodebytes(data)
    big = os.urandom(30_000)
    body = (b"--b\r\nContent-Type: application/xop+xml\r\n\r\n<r>" + b"x" * 20_000 + b"</r>"
            b"\r\n--b\r\nContent-ID: <a@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64 +
            b"\r\n--b\r\nContent-ID: <b@x>\r\n\r\n" + big + b"\r\n--b--\r\n")
    for stream in STREAMS.values():
        with read_multipart(stream(body), "multipart/related; boundary=b", str(tmp_path), BIG, BIG) as msg:
            assert len(msg.root) == 20_007
            assert msg.parts["a@x"].read_bytes() == data
            assert msg.parts["b@x"].sha1 == hashlib.sha1(big).hexdigest()


def test_a_boundary_too_long_for_the_blocks_takes_the_slow_path(tmp_path, small_blocks):
    boundary = "B" * 1100  # above RFC 2046's 70, which the reader tolerates; x4 exceeds the 4096-byte block
    data = delimiter_minefield(boundary, 20_000, 7)
    line = b"\r\n--" + boundary.encode()
    body = (line[2:] + b"\r\nContent-Type: application/xop+xml\r\n\r\n<r/>" +
            line + b"\r\nContent-ID: <a@x>\r\n\r\n" + data + line + b"--\r\n")
    ct = f'multipart/related; boundary="{boundary}"'
    with read_multipart(io.BytesIO(body), ct, str(tmp_path), BIG, BIG) as msg:
        assert msg.parts["a@x"].read_bytes() == data
    assert SlowExecutor.tasks == 0


# --------------------------------------------------------------------------------------------
# Bare-LF framing: refused by default with a message that says so; read exactly with bare_lf


LF_ROOT_CID = "root.message@example.org"


def lf_part_head(boundary: str, cid: str, eol: bytes = b"\n", base64_cte: bool = False) -> bytes:
    """A part's framing: the delimiter before it and its header block, with eol line ends."""
    head = eol + b"--" + boundary.encode() + eol + b"Content-Type: application/octet-stream" + eol
    if base64_cte:
        head += b"Content-Transfer-Encoding: base64" + eol
    return head + b"Content-ID: <" + cid.encode() + b">" + eol + eol


def lf_body(contents: list[bytes], boundary: str = "MIME_lf.0", eol: bytes = b"\n", preamble: bytes = b"",
            base64_parts: frozenset = frozenset()):
    """A hand-framed body, as a Source with its own MIME code would send it (the writer frames in CRLF).

    The first boundary line carries padding, the root's Content-Type is folded over two lines, and
    an epilogue follows the closing delimiter. Part i is sent base64-encoded when i is in base64_parts.
    """
    cids = [f"{i:032d}@xds.local" for i in range(len(contents))]
    root = envelope(*cids)
    b = boundary.encode()
    out = [preamble, b"--" + b + b" \t" + eol,
           b"Content-Type: application/xop+xml;" + eol + b'  charset=UTF-8; type="application/soap+xml"' + eol,
           b"Content-ID: <" + LF_ROOT_CID.encode() + b">" + eol + eol, root]
    for i, (cid, data) in enumerate(zip(cids, contents)):
        out.append(lf_part_head(boundary, cid, eol, i in base64_parts))
        out.append(base64.encodebytes(data) if i in base64_parts else data)
    out.append(eol + b"--" + b + b"--" + eol + b"epilogue" + eol)
    ct = f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; start="<{LF_ROOT_CID}>"'
    return ct, cids, root, b"".join(out)


def lf_contents(boundary: str) -> list[bytes]:
    """Content that LF framing must keep byte for byte: every line end, a CR before the delimiter."""
    delim = b"\n--" + boundary.encode()
    return [
        b"line one\r\nline two\r\n",
        b"bare\rCR\rinside",
        b"bare\nLF\ninside\n",
        b"\n--not-a-boundary\n--not-a-boundary--\n",
        b"ends in a CR\r",  # the CR before "\n--boundary" belongs to the content
        b"",
        b"\r",
        b"\n",
        b"\r\n",
        b"\r\n\r\n",
        delim[:-1] + b"\n",
        delim + b"X is not a boundary line, so this is content",
        delim + b"-X nor is this",
        # In LF framing a boundary line ends in LF: one ending in CRLF is not a boundary line.
        delim + b"\r\nis content too\r",
        bytes(range(256)) * 20,
        os.urandom(5000),
    ]


class SplitStream:
    """Hands out the body in pieces cut at the given offsets (each read stays within one piece)."""

    def __init__(self, data: bytes, cuts):
        edges = [0, *sorted(cuts), len(data)]
        self.pieces = [memoryview(data)[a:b] for a, b in zip(edges, edges[1:]) if b > a]

    def read(self, size: int) -> bytes:
        assert 0 < size <= CHUNK
        if not self.pieces:
            return b""
        piece = self.pieces[0]
        out, self.pieces[0] = bytes(piece[:size]), piece[size:]
        if not len(self.pieces[0]):
            self.pieces.pop(0)
        return out


class SplitStreamInto(SplitStream):
    def readinto(self, view) -> int:
        data = self.read(min(len(view), CHUNK))
        view[:len(data)] = data
        return len(data)


BARE_LF_WORDS = ("bare LF", "CRLF", "RFC 2046", "mime_bare_lf")


def _assert_bare_lf_refusal(tmp_path, body, ct):
    _fails(tmp_path, body, ct, "bare LF")
    with pytest.raises(MtomError) as info:
        read_multipart(io.BytesIO(body), ct, str(tmp_path), BIG, BIG)
    message = str(info.value)
    assert all(word in message for word in BARE_LF_WORDS), message
    assert "never occurs" not in message


def _assert_lf_read(msg, cids, root, contents):
    assert msg.root == root
    assert msg.root_cid == LF_ROOT_CID
    assert msg.root_content_type == 'application/xop+xml; charset=UTF-8; type="application/soap+xml"'
    assert list(msg.parts) == cids
    for cid, data in zip(cids, contents):
        att = msg.parts[cid]
        assert att.read_bytes() == data
        assert (att.size, att.sha1) == (len(data), hashlib.sha1(data).hexdigest())
        assert att.content_type == "application/octet-stream"


def test_bare_lf_framing_is_refused_by_default_and_says_why(tmp_path):
    boundary = "MIME_lf.0"
    cases = [
        lf_body([b"plain"], boundary),                          # first boundary at byte 0, then "\n"
        lf_body([b"plain"], boundary, preamble=b"preamble\n"),  # every boundary after a bare LF
        lf_body([b"plain"], boundary, preamble=b"preamble\r\n"),  # a CRLF before, a bare LF after
        # A part ending in CR makes its delimiter look like a CRLF one, here the closing one.
        lf_body([b"ends in a CR\r"], boundary, preamble=b"preamble\n"),
        lf_body(lf_contents(boundary), boundary),
        lf_body([b"x" * 300_000], boundary, preamble=b"p" * 70_000 + b"\n"),  # across many reads
    ]
    for ct, _, _, body in cases:
        _assert_bare_lf_refusal(tmp_path, body, ct)
    # The body's last boundary is cut short: still named as bare LF.
    ct, _, _, body = lf_body([b"plain"], boundary, preamble=b"preamble\n")
    _assert_bare_lf_refusal(tmp_path, body[:body.rindex(b"\n--" + boundary.encode()) + len(boundary) + 3], ct)


def test_bare_lf_framing_is_read_exactly_with_bare_lf(tmp_path):
    boundary = "MIME_lf.0"
    contents = lf_contents(boundary)
    for preamble in (b"", b"preamble\n", b"preamble ends in CR\r\n", b"\n\n"):
        ct, cids, root, body = lf_body(contents, boundary, preamble=preamble)
        streams = [Trickle(body, n) for n in (1, 7, 4096, CHUNK)] + [io.BytesIO(body)]
        for stream in streams:
            with read_multipart(stream, ct, str(tmp_path), BIG, BIG, content_length=len(body),
                                bare_lf=True) as msg:
                _assert_lf_read(msg, cids, root, contents)
            assert spool_empty(tmp_path)


@pytest.mark.parametrize("stream", [SplitStream, SplitStreamInto])
def test_bare_lf_boundaries_split_across_reads_at_every_offset(tmp_path, stream):
    boundary = "b0undary"
    contents = [b"ends in CR\r", b"\n--b0undar\n", b"y"]
    ct, cids, root, body = lf_body(contents, boundary, preamble=b"pre\n")
    for cut in range(1, len(body)):
        with read_multipart(stream(body, [cut]), ct, str(tmp_path), BIG, BIG, bare_lf=True) as msg:
            _assert_lf_read(msg, cids, root, contents)
        with pytest.raises(MtomError, match="bare LF"):
            read_multipart(stream(body, [cut]), ct, str(tmp_path), BIG, BIG)
    # Every boundary cut at every offset at once: reads of 1 to 12 bytes.
    for n in range(1, 13):
        with read_multipart(stream(body, range(n, len(body), n)), ct, str(tmp_path), BIG, BIG,
                            bare_lf=True) as msg:
            _assert_lf_read(msg, cids, root, contents)
    assert spool_empty(tmp_path)


def test_bare_lf_base64_part(tmp_path):
    data = os.urandom(3000)  # base64.encodebytes wraps it in LF-ended lines
    contents = [data, b"binary beside it\r"]
    ct, cids, root, body = lf_body(contents, "MIME_lf.0", base64_parts=frozenset({0}))
    assert b"Content-Transfer-Encoding: base64\n" in body
    for stream in (Trickle(body, 5), io.BytesIO(body)):
        with read_multipart(stream, ct, str(tmp_path), BIG, BIG, bare_lf=True) as msg:
            _assert_lf_read(msg, cids, root, contents)
    _assert_bare_lf_refusal(tmp_path, body, ct)


@pytest.mark.parametrize("stream", STREAMS)
def test_bare_lf_false_delimiters_at_every_offset_of_a_block_edge(tmp_path, small_blocks, stream):
    boundary = "b0undary"
    delim = b"\n--" + boundary.encode()
    step = mtom_reader.BLOCK - len(delim) + 1
    pieces = []
    for k in range(3 * len(delim)):
        tail = delim + b"X" if k % 2 else (b"\r" if k % 4 == 1 else b"") + delim[:-1] + b"|"
        pieces.append(os.urandom(step - len(tail)) + tail)
    content = b"".join(pieces)
    contents = [content, content[::-1], content + b"\r"]
    ct, cids, root, body = lf_body(contents, boundary)
    with read_multipart(STREAMS[stream](body), ct, str(tmp_path), BIG, BIG, bare_lf=True) as msg:
        _assert_lf_read(msg, cids, root, contents)
    assert SlowExecutor.tasks >= 3, "the helper was not used"
    assert spool_empty(tmp_path)


@pytest.mark.parametrize("stream", STREAMS)
def test_bare_lf_closing_delimiters_at_every_offset_of_a_block_edge(tmp_path, small_blocks, monkeypatch, stream):
    boundary = "b0undary"
    delim = b"\n--" + boundary.encode()
    monkeypatch.setattr(mtom_reader, "BLOCK", 4 * len(delim))
    step = mtom_reader.BLOCK - len(delim)
    head = len(lf_part_head(boundary, f"{0:032d}@xds.local"))
    contents = [os.urandom(8 * step + 1 - head) for _ in range(step + len(delim))]
    ct, cids, root, body = lf_body(contents, boundary)
    with read_multipart(STREAMS[stream](body), ct, str(tmp_path), BIG, BIG, bare_lf=True) as msg:
        _assert_lf_read(msg, cids, root, contents)


def test_crlf_bodies_read_the_same_with_bare_lf(tmp_path):
    boundary = "MIMEBoundary_edgecase"
    contents = tricky_contents(boundary) + [b"bare\nLF\n--" + boundary.encode() + b"\n", b"ends in LF\n"]
    w, cids, root, body = build(contents, boundary)
    for stream in [Trickle(body, n) for n in (1, 7, 4096, CHUNK)] + [io.BytesIO(body)]:
        with read_multipart(stream, w.content_type(), str(tmp_path), BIG, BIG, bare_lf=True) as msg:
            assert msg.root == root
            assert [msg.parts[c].read_bytes() for c in cids] == contents
    # Hand-framed CRLF, with a preamble holding a bare-LF boundary line that is not the first boundary.
    ct, cids, root, body = lf_body(contents[:3], boundary, eol=b"\r\n",
                                   preamble=b"not a boundary: \r\n--" + boundary.encode() + b"X\r\n"
                                            b"nor this: \n--" + boundary.encode() + b"\r\n")
    for mode in (False, True):
        with read_multipart(Trickle(body, 3), ct, str(tmp_path), BIG, BIG, bare_lf=mode) as msg:
            _assert_lf_read(msg, cids, root, contents[:3])
    assert spool_empty(tmp_path)


def test_crlf_errors_keep_their_messages_with_bare_lf(tmp_path):
    ct, body = _fixture(tmp_path)
    _fails(tmp_path, body, ct.replace('"bnd"', '"other"'), r"never occurs in the body \(wrong boundary\?\)",
           bare_lf=True)
    cut = body[:body.rindex(b"\r\n--bnd--")]
    _fails(tmp_path, cut, ct, r"body truncated: the stream ended inside MIME part #4 <.*> before its closing",
           bare_lf=True)
    _fails(tmp_path, b"--bnd--\r\n", ct, "closes before its first part; the root part is missing", bare_lf=True)


def test_wrong_boundary_keeps_its_message_whatever_the_line_ends(tmp_path):
    crlf_ct, crlf = _fixture(tmp_path)
    lf_ct, _, _, lf = lf_body([b"A" * 5000, b"B" * 9000 + b"\r"], "bnd", preamble=b"preamble\n")
    # "bn" is a prefix of the boundary used: "--bnd" lines are not "--bn" boundary lines.
    for ct, body in ((crlf_ct, crlf), (lf_ct, lf)):
        for wrong in ('"other"', '"bn"'):
            for mode in (False, True):
                _fails(tmp_path, body, ct.replace('"bnd"', wrong),
                       r"the MIME boundary '\w+' never occurs in the body \(wrong boundary\?\)", bare_lf=mode)
    lf_ct2, _, _, lf2 = lf_body([b"x"], "bnd")
    _fails(tmp_path, b"preamble\n--bnd--\n", lf_ct2, "closes before its first part", bare_lf=True)
    _fails(tmp_path, lf2[:lf2.index(b"Content-ID")], lf_ct2, "stream ended inside the headers of MIME part #1",
           bare_lf=True)
