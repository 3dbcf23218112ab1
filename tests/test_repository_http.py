"""The repository over real HTTP on 127.0.0.1: ITI-41 and ITI-43 round trips, bad input, split roles, CLI."""
import hashlib
import http.client
import os
import socket

import pytest
from lxml import etree

from node.transfer import provide_and_register, retrieve_request
from xds import builder
from xds import constants as C
from xds import errors as E
from xds import mtom
from node.cli import main as cli_main
from xds.client import SoapClient
from node.server import Services
from xds.settings import Settings
from tests.helpers import new_pid, unique_ids

REPO = "1.2.250.1.999.3.1"
NS = {"rs": C.NS_RS, "s": C.NS_SOAP12, "x": C.NS_XDSB, "xop": C.NS_XOP}


def start(tmp_path, name="data", **kw) -> Services:
    kw.setdefault("role", "all")
    return Services(Settings(port=0, data=str(tmp_path / name), **kw)).start()


@pytest.fixture
def server(db_url, tmp_path):
    services = start(tmp_path, db=db_url, max_document_bytes=32 * 1024 * 1024)
    yield services
    services.stop()


@pytest.fixture
def small_server(tmp_path):
    services = start(tmp_path, "small", max_document_bytes=64 * 1024)
    yield services
    services.stop()


def patient(server) -> str:
    pid = new_pid()
    server.registry.store.add_patient(pid)
    return pid


def client(server) -> SoapClient:
    return SoapClient(server.url + "/xds/repository", timeout=60, spool_dir=str(server.settings.data))


def provide(server, request, documents, inline=False):
    pnr, attachments = provide_and_register(request, documents, inline=inline)
    return client(server).call(C.ACTION_PROVIDE, pnr, attachments=attachments, use_mtom=not inline)


def retrieve(server, *uids, repo=REPO):
    req = etree.Element(f"{{{C.NS_XDSB}}}RetrieveDocumentSetRequest", nsmap={"xdsb": C.NS_XDSB})
    for uid in uids:
        req.append(retrieve_request(uid, repo)[0])
    reply = client(server).call(C.ACTION_RETRIEVE, req, use_mtom=True)
    docs = {}
    if reply.mtom is not None:
        found = mtom.resolve_xop(reply.body, reply.mtom)
        for dr in reply.body.iterfind("x:DocumentResponse", NS):
            att = found[dr.find("x:Document", NS)]
            docs[dr.findtext("x:DocumentUniqueId", namespaces=NS)] = (att.read_bytes(),
                                                                    dr.findtext("x:mimeType", namespaces=NS))
        reply.mtom.cleanup()
    return reply, docs


def status_codes(body) -> tuple[str, list[str]]:
    rr = body if body.tag == f"{{{C.NS_RS}}}RegistryResponse" else body.find("rs:RegistryResponse", NS)
    return rr.get("status"), [e.get("errorCode") for e in rr.iterfind(".//rs:RegistryError", NS)]


def leftovers(server) -> dict:
    data = server.settings.data
    files = lambda p: sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(data, p)) for f in fs)
    return {"spool": files("spool"), "staging": files("documents/staging"), "objects": files("documents/objects"),
            "rows": server.repository.store.count()}


def assert_clean(server):
    assert leftovers(server) == {"spool": [], "staging": [], "objects": [], "rows": 0}


def assert_still_serving(server):
    pid = patient(server)
    req = builder.simple_submission(pid, register=False)
    uid = unique_ids(req)["Document01"]
    assert status_codes(provide(server, req, {"Document01": b"still here"}).body)[0] == C.RESPONSE_SUCCESS
    assert retrieve(server, uid)[1][uid][0] == b"still here"


def fault_reason(data: bytes) -> str:
    return " ".join(etree.fromstring(data).xpath("//s:Reason/s:Text/text()", namespaces=NS))


def raw_post(server, body: bytes, content_type: str, send: int | None = None) -> tuple[int, bytes]:
    """POST over a bare socket, optionally sending only the first `send` bytes of the body."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    s.sendall(f"POST /xds/repository HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:send])
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def mtom_body(server, pnr, attachments, boundary=None) -> tuple[bytes, str]:
    writer = mtom.MtomWriter(boundary)
    for cid, ctype, data in attachments:
        writer.add_bytes(data, ctype, cid)
    writer.set_root(client(server).envelope(C.ACTION_PROVIDE, pnr), "application/soap+xml")
    return b"".join(writer.chunks()), writer.content_type(C.ACTION_PROVIDE)


# --- round trips ----------------------------------------------------------------------------------

BINARY = b"\r\n" + bytes(range(256)) * 4 + b"--MIMEBoundary\r\n\r\n\x00\r\n"
TEXT = "Compte rendu : élève, naïve, 日本語, emoji 🩺\r\n".encode("utf-8")


def test_provide_then_retrieve_is_byte_exact(server):
    pid = patient(server)
    req = builder.simple_submission(pid, 2, register=False)
    uids = unique_ids(req)
    reply = provide(server, req, {"Document01": BINARY, "Document02": TEXT})
    assert reply.status == 200 and reply.mtom is not None  # MTOM in, MTOM out
    assert reply.envelope.action == C.ACTION_PROVIDE + "Response"
    assert status_codes(reply.body) == (C.RESPONSE_SUCCESS, [])
    reply, docs = retrieve(server, uids["Document01"], uids["Document02"])
    assert reply.envelope.action == C.ACTION_RETRIEVE + "Response" and reply.content_type.startswith("multipart/")
    assert docs == {uids["Document01"]: (BINARY, "text/plain"), uids["Document02"]: (TEXT, "text/plain")}
    assert leftovers(server)["spool"] == [] and leftovers(server)["staging"] == []


def test_inline_base64_request_gets_a_plain_answer(server):
    pid = patient(server)
    req = builder.simple_submission(pid, register=False, doc_kwargs={"mime_type": "text/goofy"})
    uid = unique_ids(req)["Document01"]
    reply = provide(server, req, {"Document01": BINARY}, inline=True)
    assert reply.mtom is None and reply.content_type.startswith("application/soap+xml")
    assert status_codes(reply.body) == (C.RESPONSE_SUCCESS, [])
    assert retrieve(server, uid)[1] == {uid: (BINARY, "text/goofy")}


def test_twenty_megabyte_document(server, tmp_path):
    pid = patient(server)
    path = tmp_path / "big.bin"
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as f:
        f.write(b"\r\n")
        for _ in range(20):
            f.write(block)
        f.write(b"\r\n")
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    req = builder.simple_submission(pid, register=False, doc_kwargs={"mime_type": "application/octet-stream"})
    uid = unique_ids(req)["Document01"]
    assert status_codes(provide(server, req, {"Document01": str(path)}).body)[0] == C.RESPONSE_SUCCESS
    assert server.repository.store.get(uid).hash == digest
    _, docs = retrieve(server, uid)
    assert hashlib.sha1(docs[uid][0]).hexdigest() == digest and len(docs[uid][0]) == 20 * 1024 * 1024 + 4


def test_retrieve_three_with_one_unknown_is_partial_success(server):
    pid = patient(server)
    req = builder.simple_submission(pid, 2, register=False)
    uids = unique_ids(req)
    provide(server, req, {"Document01": b"one", "Document02": b"two"})
    reply, docs = retrieve(server, uids["Document01"], "1.2.3.404", uids["Document02"])
    assert status_codes(reply.body) == (C.RESPONSE_PARTIAL_SUCCESS, [E.DOCUMENT_UNIQUE_ID_ERROR])
    err = reply.body.find(".//rs:RegistryError", NS)
    assert err.get("location") == "1.2.3.404"
    assert set(docs) == {uids["Document01"], uids["Document02"]}


def test_retrieve_nothing_found_is_failure_in_a_retrieve_response(server):
    reply, docs = retrieve(server, "1.2.3.404", repo="9.9.9")
    assert reply.body.tag == f"{{{C.NS_XDSB}}}RetrieveDocumentSetResponse"
    assert status_codes(reply.body) == (C.RESPONSE_FAILURE, [E.UNKNOWN_REPOSITORY_ID])
    assert docs == {} and reply.content_type.startswith("multipart/related")


def test_retrieve_request_missing_ids_is_a_repository_error(server):
    req = etree.Element(f"{{{C.NS_XDSB}}}RetrieveDocumentSetRequest")
    etree.SubElement(etree.SubElement(req, f"{{{C.NS_XDSB}}}DocumentRequest"),
                     f"{{{C.NS_XDSB}}}DocumentUniqueId").text = "1.2"
    reply = client(server).call(C.ACTION_RETRIEVE, req, use_mtom=True)
    assert reply.body.tag == f"{{{C.NS_XDSB}}}RetrieveDocumentSetResponse"
    assert status_codes(reply.body) == (C.RESPONSE_FAILURE, [E.REPOSITORY_ERROR])
    assert "RepositoryUniqueId" in reply.body.find(".//rs:RegistryError", NS).get("codeContext")
    reply.mtom.cleanup()


def test_repository_wsdl_is_served(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/xds/repository?wsdl")
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200 and b"ProvideAndRegisterDocumentSet-b" in body and server.url.encode() in body


# --- bad input: every case leaves nothing behind and the server keeps serving --------------------

def test_truncated_multipart_body(server):
    pid = patient(server)
    pnr, atts = provide_and_register(builder.simple_submission(pid, register=False), {"Document01": b"x" * 500_000})
    body, ctype = mtom_body(server, pnr, atts)
    status, data = raw_post(server, body, ctype, send=len(body) // 2)
    assert status == 400 and "truncated" in fault_reason(data)
    assert_clean(server)
    assert_still_serving(server)


def test_xop_include_pointing_to_no_part(server):
    pid = patient(server)
    pnr, atts = provide_and_register(builder.simple_submission(pid, register=False), {"Document01": b"abc"})
    pnr.find(".//xop:Include", NS).set("href", "cid:nowhere@example")
    body, ctype = mtom_body(server, pnr, atts)
    status, data = raw_post(server, body, ctype)
    assert status >= 400 and "points to no MIME part" in fault_reason(data)
    assert_clean(server)
    assert_still_serving(server)


def test_wrong_boundary(server):
    pid = patient(server)
    pnr, atts = provide_and_register(builder.simple_submission(pid, register=False), {"Document01": b"abc"})
    body, ctype = mtom_body(server, pnr, atts, boundary="RealBoundary")
    status, data = raw_post(server, body, ctype.replace("RealBoundary", "OtherBoundary"))
    assert status == 400 and "boundary" in fault_reason(data)
    assert_clean(server)
    assert_still_serving(server)


def test_xop_include_in_a_plain_soap_request(server):
    pid = patient(server)
    pnr, _ = provide_and_register(builder.simple_submission(pid, register=False), {"Document01": b"abc"})
    status, data = raw_post(server, client(server).envelope(C.ACTION_PROVIDE, pnr), "application/soap+xml")
    assert status >= 400 and "not MTOM" in fault_reason(data)
    assert_clean(server)
    assert_still_serving(server)


def test_document_above_the_configured_limit_is_413(small_server):
    pid = patient(small_server)
    req = builder.simple_submission(pid, register=False)
    pnr, atts = provide_and_register(req, {"Document01": b"z" * (200 * 1024)})
    body, ctype = mtom_body(small_server, pnr, atts)
    status, data = raw_post(small_server, body, ctype)
    assert status == 413 and "limit" in fault_reason(data)
    assert_clean(small_server)
    assert_still_serving(small_server)


@pytest.mark.parametrize("case,code", [
    ("document_without_entry", E.MISSING_DOCUMENT_METADATA),
    ("entry_without_document", E.MISSING_DOCUMENT),
    ("hash_mismatch", E.REPOSITORY_METADATA_ERROR),
    ("size_mismatch", E.REPOSITORY_METADATA_ERROR),
    ("unknown_patient", E.UNKNOWN_PATIENT_ID),
])
def test_refused_submissions(server, case, code):
    pid = new_pid() if case == "unknown_patient" else patient(server)
    kw = {"hash": "F" * 40} if case == "hash_mismatch" else {"size": 12345} if case == "size_mismatch" else {}
    req = builder.simple_submission(pid, 2 if case == "entry_without_document" else 1, register=False, doc_kwargs=kw)
    docs = {"Document01": b"content"}
    if case == "document_without_entry":
        docs["Unlisted"] = b"orphan"
    reply = provide(server, req, docs)
    assert reply.mtom is not None and reply.envelope.action == C.ACTION_PROVIDE + "Response"
    assert status_codes(reply.body) == (C.RESPONSE_FAILURE, [code])
    assert_clean(server)
    assert_still_serving(server)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_registry(tmp_path):
    services = start(tmp_path, "repo", role="repository",
                     registry_url=f"http://127.0.0.1:{_closed_port()}/xds/registry", registry_timeout=5)
    try:
        reply = provide(services, builder.simple_submission(new_pid(), register=False), {"Document01": b"x"})
        assert status_codes(reply.body) == (C.RESPONSE_FAILURE, [E.REGISTRY_NOT_AVAILABLE])
        assert_clean(services)
    finally:
        services.stop()


def test_repository_role_needs_a_registry_url(tmp_path):
    with pytest.raises(ValueError, match="registry"):
        Services(Settings(role="repository", port=0, data=str(tmp_path / "d")))
    with pytest.raises(ValueError, match="registry_url"):
        Settings(role="repository").validate()


# --- registry and repository in two servers ------------------------------------------------------

def test_split_registry_and_repository(db_url, tmp_path):
    registry = start(tmp_path, "registry", role="registry", db=db_url)
    repository = start(tmp_path, "repository", role="repository", registry_url=registry.url + "/xds/registry",
                       db=db_url)
    try:
        assert repository.registry is None and registry.repository is None
        pid = new_pid()
        registry.registry.store.add_patient(pid)
        req = builder.simple_submission(pid, register=False)
        uid = unique_ids(req)["Document01"]
        reply = provide(repository, req, {"Document01": BINARY})
        assert status_codes(reply.body) == (C.RESPONSE_SUCCESS, [])
        assert retrieve(repository, uid)[1] == {uid: (BINARY, "text/plain")}

        # the registry's own errors come back unchanged through the repository
        refused = builder.simple_submission(new_pid(), register=False)
        reply = provide(repository, refused, {"Document01": b"x"})
        assert status_codes(reply.body) == (C.RESPONSE_FAILURE, [E.UNKNOWN_PATIENT_ID])
        assert repository.repository.store.count() == 1
        assert leftovers(repository)["staging"] == [] and leftovers(repository)["spool"] == []
    finally:
        repository.stop()
        registry.stop()


# --- the command line -------------------------------------------------------------------------------

def test_cli_submit_and_retrieve(server, tmp_path, capsys):
    pid = patient(server)
    a, b = tmp_path / "a.txt", tmp_path / "b.bin"
    a.write_bytes(TEXT)
    b.write_bytes(BINARY)
    assert cli_main(["submit", str(a), str(b), "--patient", pid, "--url", server.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Success"
    uids = dict(reversed(line.split("\t")) for line in lines[1:])
    out = tmp_path / "out.bin"
    assert cli_main(["retrieve", uids[str(b)], "--url", server.url, "--repository-id", REPO, "-o", str(out)]) == 0
    assert out.read_bytes() == BINARY
    assert cli_main(["retrieve", uids[str(a)], "--url", server.url + "/xds/repository", "-o", str(out)]) == 0
    assert out.read_bytes() == TEXT
    assert "text/plain" in capsys.readouterr().out


def test_cli_reports_failures(server, tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_bytes(b"x")
    assert cli_main(["submit", str(f), "--patient", new_pid(), "--url", server.url]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("Failure") and E.UNKNOWN_PATIENT_ID in captured.err
    assert cli_main(["retrieve", "1.2.3.404", "--url", server.url, "-o", str(tmp_path / "o")]) == 1
    assert E.DOCUMENT_UNIQUE_ID_ERROR in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_large_transfers_show_progress_on_stderr(server, tmp_path):
    import io

    from node import transfer

    pid = patient(server)
    big = tmp_path / "nine.bin"
    big.write_bytes(b"\x01" * (9 * 1024 * 1024))
    up = io.StringIO()
    result = transfer.provide_files(server.url, pid, [str(big)], progress_stream=up)
    assert result.ok and "sending: 100%" in up.getvalue() and up.getvalue().endswith("\n")
    down = io.StringIO()
    out = tmp_path / "back.bin"
    got = transfer.retrieve_document(server.url, result.unique_ids[0][1], REPO, str(out), progress_stream=down)
    assert got.size == big.stat().st_size and out.read_bytes() == big.read_bytes()
    assert "receiving: 100%" in down.getvalue()


def test_concurrent_submissions_all_land(server):
    import concurrent.futures

    pid = patient(server)

    def one(i):
        req = builder.simple_submission(pid, register=False)
        uid = unique_ids(req)["Document01"]
        data = f"document {i}\r\n".encode() * (i + 1)
        return uid, data, status_codes(provide(server, req, {"Document01": data}).body)[0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert all(status == C.RESPONSE_SUCCESS for _, _, status in results)
    _, docs = retrieve(server, *(uid for uid, _, _ in results))
    assert docs == {uid: (data, "text/plain") for uid, data, _ in results}
    assert leftovers(server)["staging"] == [] and leftovers(server)["spool"] == []


def test_all_in_one_registry_endpoint_routes_retrieve_to_the_local_repository(server):
    pid = patient(server)
    req = builder.simple_submission(pid, 1, register=False)
    uid = unique_ids(req)["Document01"]
    provide(server, req, {"Document01": BINARY})
    assert server.registry.store.repositories()[REPO][0] == server.url + "/xds/repository"
    ask = etree.Element(f"{{{C.NS_XDSB}}}RetrieveDocumentSetRequest", nsmap={"xdsb": C.NS_XDSB})
    ask.append(retrieve_request(uid, REPO)[0])
    reply = SoapClient(server.url + "/xds/registry", timeout=60).call(C.ACTION_RETRIEVE, ask, use_mtom=True)
    assert status_codes(reply.body) == (C.RESPONSE_SUCCESS, [])
    found = mtom.resolve_xop(reply.body, reply.mtom)
    assert [a.read_bytes() for a in found.values()] == [BINARY]
    reply.mtom.cleanup()
