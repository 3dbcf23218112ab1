"""ITI-41 survives SIGKILL at each of its steps, in one process and split over HTTP.

Each case starts real `xds serve` processes with XDS_CRASH_AT naming one step (xds/faults.py), sends
one two-document ITI-41, lets the process die there, restarts it without the crash point and waits
for settlement. Then: every DocumentEntry the registry lists is retrievable with its hash, every file
has a row and every row a file, staging and the MTOM spool are empty, and what the source was told
is what was kept.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest
import sqlalchemy as sa
from lxml import etree

from node.transfer import provide_and_register
from registry import schema as RS
from repository import schema as PS
from xds import builder
from xds import constants as C
from xds.client import SoapClient, TransportError
from xds.ebrim import read_response_errors
from xds.mtom import href_to_cid
from tests.test_split_deployment import Proc

PID = "CRASH1^^^&1.2.250.1.213.1.4.10&ISO"
REPO = "1.2.250.1.999.3.77"
# Short enough for a quick suite; the protocol is the same with the default 30 s.
TIMINGS = ["--registry-timeout", "2"]
SETTLE = {"XDS_SETTLE_INTERVAL": "0.3"}


class Node(Proc):
    """One `xds serve` process over plain HTTP; restartable on the same port and data folder, with or
    without a crash point."""

    def __init__(self, tmp, name: str, *args: str, db: str | None = None):
        # One process: a crash point kills the process that reaches it, which must be the whole server (with
        # workers, the supervisor would start the dead worker again: tests/test_workers.py).
        super().__init__(tmp, name, "--no-patient-check", "--workers", "1", *args, *(["--db", db] if db else []))
        self.db = db

    def start(self, crash_at: str | None = None) -> "Node":
        # An empty XDS_CRASH_AT names no point: a restart never inherits the crash.
        self.env = {**SETTLE, "XDS_CRASH_AT": crash_at or ""}
        return super().start()

    def died(self, timeout: float = 20) -> bool:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.db or f"sqlite:///{os.path.join(self.data, 'registry.db')}", poolclass=sa.pool.NullPool)


def submit(repository: Node):
    sub = builder.simple_submission(PID, 2, register=False)
    uids = [ei.get("value") for ei in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
            if ei.get("identificationScheme") == C.DE_UNIQUE_ID]
    docs = {f"Document{i:02d}": os.urandom(2000) + f" document {i}".encode() for i in (1, 2)}
    pnr, att = provide_and_register(sub, docs)
    try:
        reply = SoapClient(repository.url + "/xds/repository", 30).call(C.ACTION_PROVIDE, pnr, attachments=att)
    except TransportError:
        return None, [], uids  # the process died before answering
    status, errors = read_response_errors(reply.body)
    return status, errors, uids


def registry_entries(registry: Node) -> dict[str, str]:
    t, d = RS.registry_object, RS.doc_entry
    with registry.engine().connect() as c:
        return dict(c.execute(sa.select(t.c.unique_id, d.c.hash).select_from(t.join(d, d.c.id == t.c.id))).all())


def retrieve(repository: Node, uid: str) -> bytes | None:
    req = etree.Element(C.q(C.NS_XDSB, "RetrieveDocumentSetRequest"), nsmap={"xdsb": C.NS_XDSB})
    dr = etree.SubElement(req, C.q(C.NS_XDSB, "DocumentRequest"))
    etree.SubElement(dr, C.q(C.NS_XDSB, "RepositoryUniqueId")).text = REPO
    etree.SubElement(dr, C.q(C.NS_XDSB, "DocumentUniqueId")).text = uid
    reply = SoapClient(repository.url + "/xds/repository", 30).call(C.ACTION_RETRIEVE, req, use_mtom=True)
    try:
        inc = reply.body.find(f"{C.q(C.NS_XDSB, 'DocumentResponse')}/{C.q(C.NS_XDSB, 'Document')}/"
                              f"{C.q(C.NS_XOP, 'Include')}")
        return None if inc is None else reply.mtom.parts[href_to_cid(inc.get("href"))].read_bytes()
    finally:
        if reply.mtom:
            reply.mtom.cleanup()


def settled(repository: Node, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with repository.engine().connect() as c:
            if c.execute(sa.select(sa.func.count()).select_from(PS.pending)).scalar_one() == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"documents still pending after {timeout} s:\n" + open(repository.log).read()[-3000:])


def check_consistent(registry: Node, repository: Node, nodes: list[Node]) -> dict[str, str]:
    entries = registry_entries(registry)
    for uid, sha1 in entries.items():
        data = retrieve(repository, uid)
        assert data is not None, f"registered document {uid} is not retrievable"
        assert hashlib.sha1(data).hexdigest() == sha1
    objects = os.path.join(repository.data, "documents", "objects")
    files = {os.path.relpath(os.path.join(d, f), objects) for d, _, fs in os.walk(objects) for f in fs}
    with repository.engine().connect() as c:
        rows = set(c.execute(sa.select(PS.document.c.location)).scalars())
    assert files == rows, "files and rows differ"
    assert os.listdir(os.path.join(repository.data, "documents", "staging")) == []
    for node in nodes:
        assert [n for n in os.listdir(os.path.join(node.data, "spool")) if n.startswith("xop-")] == []
    return entries


def answered_as_kept(status, errors, uids, entries) -> None:
    kept = [u for u in uids if u in entries]
    assert kept in ([], uids), "a submission is registered whole or not at all"
    if status == C.RESPONSE_SUCCESS:
        assert kept == uids
    elif status is not None and not any("kept pending" in e.message for e in errors):
        assert kept == [], f"told {status} {[e.code for e in errors]} but the registry holds the documents"


# Where each step is: in the repository's ITI-41 handling (repository/provide.py, repository/settle.py),
# or in the registry once its ITI-42 transaction has committed (registry/register.py).
BEFORE_REGISTRY = ["staged", "pending"]
AFTER_REGISTRY = ["registry-committed", "registered", "moved", "rows"]


@pytest.mark.parametrize("point", BEFORE_REGISTRY + AFTER_REGISTRY)
def test_all_in_one_killed_at_each_step(tmp_path, point, db_url):
    db = None if db_url.startswith("sqlite") else db_url
    node = Node(tmp_path, "all", "--repository-id", REPO, *TIMINGS, db=db).start(crash_at=point)
    try:
        status, errors, uids = submit(node)
        assert node.died(), f"the process did not reach {point}"
        assert status is None  # it died before it could answer
        node.start()
        settled(node)
        entries = check_consistent(node, node, [node])
        answered_as_kept(status, errors, uids, entries)
        assert sorted(entries) == (sorted(uids) if point in AFTER_REGISTRY else [])
    finally:
        node.stop()


@pytest.mark.parametrize("point", BEFORE_REGISTRY + AFTER_REGISTRY)
def test_split_killed_at_each_step(tmp_path, point):
    registry = Node(tmp_path, "registry", "--role", "registry")
    in_registry = point == "registry-committed"
    registry.start(crash_at=point if in_registry else None)
    repository = Node(tmp_path, "repository", "--role", "repository", "--repository-id", REPO,
                      "--registry-url", registry.url + "/xds/registry", *TIMINGS)
    repository.start(crash_at=None if in_registry else point)
    try:
        if in_registry:
            # The registry dies after its commit; it comes back while the repository asks what it holds.
            import threading

            def restart():
                if registry.died():
                    registry.start()

            back = threading.Thread(target=restart)
            back.start()
            status, errors, uids = submit(repository)
            back.join()
            assert status is not None, "the repository must answer when the registry dies"
        else:
            status, errors, uids = submit(repository)
            assert repository.died(), f"the repository did not reach {point}"
            assert status is None
            repository.start()
        settled(repository)
        entries = check_consistent(registry, repository, [registry, repository])
        answered_as_kept(status, errors, uids, entries)
        assert sorted(entries) == (sorted(uids) if point in AFTER_REGISTRY else [])
        if in_registry:
            # Asked after the registry came back, the repository learnt the truth and said Success.
            assert status == C.RESPONSE_SUCCESS, errors
    finally:
        repository.stop()
        registry.stop()


def test_restart_removes_spooled_parts_and_unowned_staging(tmp_path):
    node = Node(tmp_path, "all", "--repository-id", REPO)
    os.makedirs(os.path.join(node.data, "spool"))
    os.makedirs(os.path.join(node.data, "documents", "staging"))
    for path in (os.path.join(node.data, "spool", "xop-abc.part"),
                 os.path.join(node.data, "documents", "staging", "doc-abc.staged")):
        with open(path, "wb") as f:
            f.write(b"left by a crash")
    node.start()
    try:
        assert os.listdir(os.path.join(node.data, "spool")) == []
        assert os.listdir(os.path.join(node.data, "documents", "staging")) == []
        assert "removed 1 spooled MTOM parts" in open(node.log).read()
    finally:
        node.stop()
