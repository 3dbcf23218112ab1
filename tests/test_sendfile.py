"""ITI-43 document parts sent with sendfile: byte-exact answers over real HTTP, the sendfile path really
taken on plain HTTP, and the ordinary bytes path over TLS and for callers that offer no file regions."""
import http.client
import io
import os

import pytest
from lxml import etree

from node.server import Services
from node.transfer import provide_and_register, retrieve_request
from xds import builder
from xds import constants as C
from xds import mtom
from xds.app import FILE_REGION_KEY
from xds.client import SoapClient
from xds.settings import Settings
from tests.helpers import new_pid, unique_ids

REPO = "1.2.250.1.999.3.1"
NS = {"x": C.NS_XDSB}

# Text a careless MIME writer or reader could take for framing, at the start, middle and end.
BOUNDARY_LIKE = (b"\r\n--MIMEBoundary_" + b"0" * 32 + b"\r\n\r\n--\r\n--" + os.urandom(300)
                 + b"\r\n--MIMEBoundary_x--\r\n" + os.urandom(100) + b"\r\n--")

DOCUMENTS = {
    "empty": b"",
    "one byte": b"\n",
    "boundary-like": BOUNDARY_LIKE,
    # Larger than a socket buffer, so that sendfile runs more than once and waits for the client.
    "three megabytes": os.urandom(3 * 1024 * 1024 + 17),
}


def _client(services: Services, ssl_context=None) -> SoapClient:
    return SoapClient(services.url + "/xds/repository", timeout=60, ssl_context=ssl_context,
                      spool_dir=str(services.settings.data))


def _store(services: Services, documents: dict[str, bytes], ssl_context=None) -> dict[str, str]:
    """Stores each document with ITI-41; label -> uniqueId."""
    pid = new_pid()
    services.registry.store.add_patient(pid)
    labels = list(documents)
    req = builder.simple_submission(pid, len(labels), register=False,
                                    doc_kwargs={"mime_type": "application/octet-stream"})
    ids = unique_ids(req)
    symbolic = sorted(ids)
    assert len(symbolic) == len(labels)
    pnr, attachments = provide_and_register(req, {sym: documents[label] for sym, label in zip(symbolic, labels)})
    reply = _client(services, ssl_context).call(C.ACTION_PROVIDE, pnr, attachments=attachments, use_mtom=True)
    assert reply.body.get("status") == C.RESPONSE_SUCCESS, etree.tostring(reply.body)[:800]
    return {label: ids[sym] for sym, label in zip(symbolic, labels)}


def _retrieve(services: Services, uids: list[str], ssl_context=None) -> dict[str, bytes]:
    req = etree.Element(f"{{{C.NS_XDSB}}}RetrieveDocumentSetRequest", nsmap={"xdsb": C.NS_XDSB})
    for uid in uids:
        req.append(retrieve_request(uid, REPO)[0])
    reply = _client(services, ssl_context).call(C.ACTION_RETRIEVE, req, use_mtom=True)
    try:
        found = mtom.resolve_xop(reply.body, reply.mtom)
        return {dr.findtext("x:DocumentUniqueId", namespaces=NS): found[dr.find("x:Document", NS)].read_bytes()
                for dr in reply.body.iterfind("x:DocumentResponse", NS)}
    finally:
        reply.mtom.cleanup()


@pytest.fixture
def plain(tmp_path):
    services = Services(Settings(role="all", port=0, data=str(tmp_path / "plain"))).start()
    yield services
    services.stop()


def test_documents_come_back_byte_exact_through_sendfile(plain):
    uids = _store(plain, DOCUMENTS)
    before = plain.http.file_regions
    for label, data in DOCUMENTS.items():
        assert _retrieve(plain, [uids[label]]) == {uids[label]: data}, label
    regions, sent = plain.http.file_regions
    non_empty = [d for d in DOCUMENTS.values() if d]
    # Every non-empty part went out with sendfile, and nothing else did; an empty part has no region.
    assert regions - before[0] == len(non_empty)
    assert sent - before[1] == sum(map(len, non_empty))


def test_two_documents_in_one_answer(plain):
    docs = {"first": BOUNDARY_LIKE, "second": os.urandom(200_000)}
    uids = _store(plain, docs)
    before = plain.http.file_regions[0]
    got = _retrieve(plain, [uids["first"], uids["second"]])
    assert got == {uids["first"]: docs["first"], uids["second"]: docs["second"]}
    assert plain.http.file_regions[0] - before == 2


def test_the_answer_is_framed_exactly_and_the_connection_is_reused(plain):
    """Raw HTTP: the Content-Length matches the bytes sent around the file regions, and the next
    request on the same keep-alive connection is answered normally."""
    uids = _store(plain, {"a": BOUNDARY_LIKE})
    writer = mtom.MtomWriter()
    writer.set_root(_client(plain).envelope(C.ACTION_RETRIEVE, retrieve_request(uids["a"], REPO)),
                    "application/soap+xml")
    body = b"".join(writer.chunks())
    headers = {"Content-Type": writer.content_type(C.ACTION_RETRIEVE)}
    conn = http.client.HTTPConnection("127.0.0.1", plain.port, timeout=30)
    try:
        for _ in range(2):
            conn.request("POST", "/xds/repository", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200
            assert len(data) == int(resp.getheader("Content-Length"))
            message = mtom.read_multipart(io.BytesIO(data), resp.getheader("Content-Type"), str(plain.settings.data),
                                          max_part_bytes=1 << 30, max_total_bytes=1 << 30)
            try:
                [part] = message.parts.values()
                assert part.read_bytes() == BOUNDARY_LIKE
            finally:
                message.cleanup()
    finally:
        conn.close()


def test_a_caller_offering_no_regions_gets_bytes(plain):
    """The WSGI application called without FILE_REGION_KEY (another server, a test) yields only bytes."""
    uids = _store(plain, {"a": BOUNDARY_LIKE})
    writer = mtom.MtomWriter()
    writer.set_root(_client(plain).envelope(C.ACTION_RETRIEVE, retrieve_request(uids["a"], REPO)),
                    "application/soap+xml")
    body = b"".join(writer.chunks())
    env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/xds/repository", "CONTENT_TYPE": writer.content_type(),
           "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), "SERVER_NAME": "x",
           "SERVER_PORT": "1", "wsgi.url_scheme": "http", "REMOTE_ADDR": "127.0.0.1"}
    assert FILE_REGION_KEY not in env
    seen = {}
    chunks = list(plain.app(env, lambda status, headers, exc=None: seen.update(headers)))
    assert all(type(c) is bytes for c in chunks)
    data = b"".join(chunks)
    assert len(data) == int(seen["Content-Length"]) and BOUNDARY_LIKE in data


def test_writer_regions_frame_the_same_bytes():
    """chunks(file_region) gives the bytes of chunks() once each region is replaced by its file's bytes."""

    class Region:
        def __init__(self, path, offset, length):
            self.path, self.offset, self.length = path, offset, length

    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, data in enumerate([b"", b"x", BOUNDARY_LIKE, os.urandom(600_000)]):
            path = os.path.join(folder, f"doc{i}")
            with open(path, "wb") as f:
                f.write(data)
            paths.append(path)
        writer = mtom.MtomWriter()
        for path in paths:
            writer.add_file(path)
        writer.add_bytes(b"in memory")
        writer.set_root(b"<root/>")
        plain_bytes = b"".join(writer.chunks())
        rebuilt, regions = [], 0
        for chunk in writer.chunks(Region):
            if isinstance(chunk, Region):
                regions += 1
                with open(chunk.path, "rb") as f:
                    f.seek(chunk.offset)
                    rebuilt.append(f.read(chunk.length))
            else:
                assert type(chunk) is bytes
                rebuilt.append(chunk)
        assert b"".join(rebuilt) == plain_bytes and len(plain_bytes) == writer.content_length()
        assert regions == 3  # the empty file has no region


def test_over_tls_the_bytes_path_returns_exact_documents(tmp_path):
    from tests.certs import Authority
    from xds.tls import TlsFiles, client_context

    (tmp_path / "ca").mkdir()
    ca = Authority(str(tmp_path / "ca"))
    server_cert, server_key = ca.issue("127.0.0.1")
    client_cert, client_key = ca.issue("consumer")
    services = Services(Settings(role="all", port=0, data=str(tmp_path / "tls"), tls_cert=server_cert,
                                 tls_key=server_key, tls_ca=ca.path)).start()
    try:
        assert services.url.startswith("https://")
        ctx = client_context(TlsFiles(client_cert, client_key, ca.path))
        uids = _store(services, DOCUMENTS, ctx)
        got = _retrieve(services, list(uids.values()), ctx)
        assert got == {uids[label]: data for label, data in DOCUMENTS.items()}
        assert services.http.file_regions == (0, 0)  # TLS: no sendfile
    finally:
        services.stop()
