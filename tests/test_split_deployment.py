"""The national shape, end to end: one registry on PostgreSQL and two repository hosts, each a
separate process on 127.0.0.1, talking ITI-42 over mutual TLS with certificates made here."""
from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
from lxml import etree

from node.transfer import provide_and_register
from xds import builder
from xds import constants as C
from xds.client import SoapClient, TransportError
from xds.ebrim import read_response_errors
from xds.tls import TlsFiles, client_context
from tests.certs import Authority

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PID = "SPLIT1^^^&1.2.250.1.213.1.4.10&ISO"
REPO_A, REPO_B, REPO_X = "1.2.250.1.999.3.10", "1.2.250.1.999.3.20", "1.2.250.1.999.3.30"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """One `xds` process with its own data folder, logging to a file."""

    def __init__(self, tmp, name: str, *args: str, env: dict | None = None):
        self.name = name
        self.data = str(tmp / name)
        self.log = str(tmp / f"{name}.log")
        self.port = free_port()
        self.args = ["serve", "--port", str(self.port), "--data", self.data, *args]
        self.env = env or {}
        self.proc = None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, **self.env})
        assert r.returncode == 0, r.stderr
        return r

    def start(self) -> "Proc":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", *self.args], cwd=ROOT,
                                         env={**os.environ, **self.env}, stdout=subprocess.PIPE, stderr=log)
        line = self.proc.stdout.readline().decode()
        assert "xds:" in line, open(self.log).read()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def logged(self) -> str:
        with open(self.log) as f:
            return f.read()


def documents_on_disk(proc: Proc) -> list[str]:
    root = os.path.join(proc.data, "documents")
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, request):
    from tests import pgserver
    from tests.conftest import _pg_admin_url, _dbs

    if not pgserver.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing; .ci/run installs them")
        pytest.skip("PostgreSQL is not installed here")
    tmp = tmp_path_factory.mktemp("split")
    db = pgserver.create_database(_pg_admin_url(), f"xds_split_{os.getpid()}_{next(_dbs)}")
    ca = Authority(str(tmp))
    rogue = Authority(str(tmp), "Rogue CA")
    certs = {n: ca.issue(n) for n in ("registry", "repo-a", "repo-b", "repo-x", "consumer", "admin")}
    certs["rogue"] = rogue.issue("rogue")

    def tls(name):
        cert, key = certs[name]
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca.path]

    reg = Proc(tmp, "registry", "--role", "registry", "--db", db, *tls("registry"), "--require-known-repositories",
               "--admin-subject", "O=XDS test,CN=admin")
    repos = {}
    for name, rid in (("repo-a", REPO_A), ("repo-b", REPO_B), ("repo-x", REPO_X)):
        repos[name] = Proc(tmp, name, "--role", "repository", "--repository-id", rid,
                           "--registry-url", reg.url + "/xds/registry", "--registry-timeout", "5", *tls(name))
    # Only serve and db upgrade make a database. The directory knows A and B (by their certificate subjects);
    # X has a good certificate but is unknown.
    reg.cli("db", "--db", db, "--data", reg.data, "--role", "registry", "upgrade")
    reg.cli("repository", "--db", db, "--data", reg.data, "add", REPO_A, repos["repo-a"].url + "/xds/repository",
            "--subject", "O=XDS test,CN=repo-a")
    reg.cli("repository", "--db", db, "--data", reg.data, "add", REPO_B, repos["repo-b"].url + "/xds/repository",
            "--subject", "O=XDS test,CN=repo-b")
    procs = [reg.start()] + [p.start() for p in repos.values()]
    reg.cli("patient", "add", PID, "--url", reg.url, *tls("admin"))  # through the registry, as its administrator
    yield {"registry": reg, **repos, "ca": ca, "certs": certs, "db": db}
    for p in procs:
        p.stop()


def client(d, url: str, who: str = "consumer", timeout: float = 30) -> SoapClient:
    cert, key = d["certs"][who]
    return SoapClient(url, timeout, client_context(TlsFiles(cert, key, d["ca"].path)))


def provide(d, repo: str, n: int, who: str = "consumer"):
    sub = builder.simple_submission(PID, n, register=False)
    uids = [ei.get("value") for ei in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
            if ei.get("identificationScheme") == C.DE_UNIQUE_ID]
    docs = {f"Document{i:02d}": f"{repo} document {i}\r\n".encode() for i in range(1, n + 1)}
    pnr, att = provide_and_register(sub, docs)
    reply = client(d, d[repo].url + "/xds/repository", who).call(C.ACTION_PROVIDE, pnr, attachments=att)
    status, errors = read_response_errors(reply.body)
    return status, errors, dict(zip(uids, docs.values()))


def retrieve(d, url: str, wanted: list[tuple[str, str]]):
    req = etree.Element(C.q(C.NS_XDSB, "RetrieveDocumentSetRequest"), nsmap={"xdsb": C.NS_XDSB})
    for repo_id, uid in wanted:
        dr = etree.SubElement(req, C.q(C.NS_XDSB, "DocumentRequest"))
        etree.SubElement(dr, C.q(C.NS_XDSB, "RepositoryUniqueId")).text = repo_id
        etree.SubElement(dr, C.q(C.NS_XDSB, "DocumentUniqueId")).text = uid
    reply = client(d, url).call(C.ACTION_RETRIEVE, req, use_mtom=True)
    rr = reply.body.find(C.q(C.NS_RS, "RegistryResponse"))
    status, errors = read_response_errors(rr)
    got = {}
    for dr in reply.body.iterchildren(C.q(C.NS_XDSB, "DocumentResponse")):
        uid = dr.findtext(C.q(C.NS_XDSB, "DocumentUniqueId"))
        inc = dr.find(f"{C.q(C.NS_XDSB, 'Document')}/{C.q(C.NS_XOP, 'Include')}")
        from xds.mtom import href_to_cid
        got[uid] = reply.mtom.parts[href_to_cid(inc.get("href"))].read_bytes()
    if reply.mtom:
        reply.mtom.cleanup()
    return status, errors, got


def find_documents(d) -> list[str]:
    req = builder.find_documents_request(PID)
    reply = client(d, d["registry"].url + "/xds/registry").call(C.ACTION_QUERY, req)
    assert reply.body.get("status") == C.RESPONSE_SUCCESS, etree.tostring(reply.body)
    return reply.body.findall(f".//{{{C.NS_RIM}}}ExtrinsicObject")


def test_submit_find_and_retrieve_across_hosts(deployment):
    d = deployment
    sa, ea, docs_a = provide(d, "repo-a", 2)
    sb, eb, docs_b = provide(d, "repo-b", 1)
    assert (sa, sb) == (C.RESPONSE_SUCCESS, C.RESPONSE_SUCCESS), (ea, eb)
    entries = find_documents(d)
    repos = {}
    for e in entries:
        slots = {s.get("name"): s.findtext(f".//{{{C.NS_RIM}}}Value") for s in e.findall(f"{{{C.NS_RIM}}}Slot")}
        uid = [x.get("value") for x in e.findall(f"{{{C.NS_RIM}}}ExternalIdentifier")
               if x.get("identificationScheme") == C.DE_UNIQUE_ID][0]
        repos[uid] = slots["repositoryUniqueId"]
    for uid in docs_a:
        assert repos[uid] == REPO_A
    for uid in docs_b:
        assert repos[uid] == REPO_B
    # Through each host
    status, _, got = retrieve(d, d["repo-a"].url + "/xds/repository", [(REPO_A, u) for u in docs_a])
    assert status == C.RESPONSE_SUCCESS and got == docs_a
    # Through the registry's routing: one address for both hosts
    wanted = [(REPO_A, u) for u in docs_a] + [(REPO_B, u) for u in docs_b]
    status, errors, got = retrieve(d, d["registry"].url + "/xds/registry", wanted)
    assert status == C.RESPONSE_SUCCESS, errors
    assert got == {**docs_a, **docs_b}
    d["found"] = (docs_a, docs_b)


def test_unknown_repository_is_refused_and_logged_and_keeps_nothing(deployment):
    d = deployment
    status, errors, _ = provide(d, "repo-x", 1)
    assert status == C.RESPONSE_FAILURE
    assert errors[0].code == "XDSRegistryError" and "O=XDS test,CN=repo-x" in errors[0].message
    assert "not in the repository directory" in d["registry"].logged()
    assert documents_on_disk(d["repo-x"]) == []


def test_certificate_from_another_ca_is_refused_at_the_handshake(deployment):
    d = deployment
    with pytest.raises(TransportError):
        provide(d, "repo-a", 1, who="rogue")
    with pytest.raises(TransportError):  # and a client with no certificate at all
        SoapClient(d["registry"].url + "/xds/registry", 10,
                   client_context(None, ca=d["ca"].path)).call(C.ACTION_QUERY, etree.Element("x"))


def test_registry_slow_gives_registry_not_available_within_the_timeout(tmp_path, deployment):
    """A stand-in registry that accepts TLS connections and never answers (a fake: a hung peer)."""
    d = deployment
    cert, key = d["certs"]["registry"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    held = []

    def accept():
        while True:
            try:
                conn, _ = hung.accept()
            except OSError:
                return
            try:
                held.append(ctx.wrap_socket(conn, server_side=True))
            except (ssl.SSLError, OSError):
                pass

    threading.Thread(target=accept, daemon=True).start()
    cert_a, key_a = d["certs"]["repo-a"]
    slow = Proc(tmp_path, "repo-slow", "--role", "repository", "--repository-id", REPO_A,
                "--registry-url", f"https://127.0.0.1:{hung.getsockname()[1]}/xds/registry",
                "--registry-timeout", "2", "--tls-cert", cert_a, "--tls-key", key_a, "--tls-ca", d["ca"].path)
    slow.start()
    try:
        d["repo-slow"] = slow
        t0 = time.monotonic()
        status, errors, _ = provide(d, "repo-slow", 1)
        elapsed = time.monotonic() - t0
        assert status == C.RESPONSE_FAILURE and errors[0].code == "XDSRegistryNotAvailable"
        assert elapsed < 15
        # Whether the hung registry committed cannot be known, so the bytes are neither retrievable nor
        # thrown away: they wait in staging under a pending row for settlement, and the source is told so.
        assert "kept pending" in errors[0].message
        on_disk = documents_on_disk(slow)
        assert len(on_disk) == 1 and os.sep + "staging" + os.sep in on_disk[0]
    finally:
        slow.stop()
        hung.close()


@pytest.mark.parametrize("who,asks,answered", [("repo-a", REPO_A, True), ("repo-a", REPO_B, False),
                                               ("consumer", REPO_A, False), ("repo-x", REPO_X, False)])
def test_settlement_lookup_answers_a_repository_only_about_itself(deployment, who, asks, answered):
    from xds import registered

    d = deployment
    status, _, docs = provide(d, "repo-a", 1)
    assert status == C.RESPONSE_SUCCESS
    reply = client(d, d["registry"].url + "/xds/registry", who).call(
        C.ACTION_REGISTERED_DOCUMENTS, registered.request(asks, list(docs)))
    if answered:
        assert list(registered.read_response(reply.body).documents) == list(docs)
    else:
        status, errors = read_response_errors(reply.body)
        assert status == C.RESPONSE_FAILURE and errors[0].code == "XDSUnknownRepositoryId"
        assert not list(reply.body.iter(registered.DOCUMENT_TAG))


def test_repository_host_down_during_routed_retrieve(deployment):
    d = deployment
    if "found" not in d:
        pytest.skip("needs the documents of the first test")
    docs_a, docs_b = d["found"]
    d["repo-b"].stop()
    wanted = [(REPO_A, u) for u in docs_a] + [(REPO_B, u) for u in docs_b]
    status, errors, got = retrieve(d, d["registry"].url + "/xds/registry", wanted)
    assert status == C.RESPONSE_PARTIAL_SUCCESS
    assert got == docs_a
    assert {e.location for e in errors} == set(docs_b) and all(e.code == "XDSRepositoryError" for e in errors)


def test_registry_down_during_provide_keeps_nothing(deployment):
    d = deployment
    before = documents_on_disk(d["repo-a"])
    d["registry"].stop()
    status, errors, _ = provide(d, "repo-a", 1)
    assert status == C.RESPONSE_FAILURE and errors[0].code == "XDSRegistryNotAvailable"
    assert documents_on_disk(d["repo-a"]) == before
    assert os.listdir(os.path.join(d["repo-a"].data, "documents", "staging")) == []

