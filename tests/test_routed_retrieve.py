"""ITI-43 sent to the registry and forwarded to repository hosts, over real HTTP on 127.0.0.1: the
hosts are fakes (real HTTP servers standing in for remote repositories), each failing its own way;
one host's failure costs only its documents, and the registry's spool is left empty every time."""
from __future__ import annotations

import os
import socket
import time

import pytest
from lxml import etree

from registry.config import RegistryConfig
from registry.service import RegistryActor
from registry.store import RegistryStore
from xds import constants as C
from xds import soap
from xds.errors import SoapFault
from xds.app import AppConfig, XdsApp
from xds.cheroot_adapter import HttpServer
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.mtom import href_to_cid
from tests.fakehttp import Answer, FakeHost, retrieve_answer

LIMIT = 64 * 1024  # the registry's max_document_bytes
GOOD, BROKEN, BIG, FAULT, DOWN = (f"1.2.250.1.999.7.{i}" for i in range(1, 6))
GOOD_DOC = os.urandom(40_000)


def broken_multipart() -> Answer:
    """A well-formed start, then the body ends inside the document's part: the multipart never closes."""
    whole = retrieve_answer([(BROKEN, BROKEN + ".1", os.urandom(30_000))])
    return Answer(whole.body[:len(whole.body) // 2], whole.content_type)


def fault() -> Answer:
    body = soap.build_fault(soap.SOAP12, SoapFault("the fake repository is failing"))
    return Answer(body, soap.CONTENT_TYPE[soap.SOAP12], status=500)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """The registry actor served over HTTP by our own server, with its spool in its own folder."""

    def __init__(self, tmp_path, max_document_bytes: int = LIMIT):
        self.spool = str(tmp_path / "spool")
        os.makedirs(self.spool)
        self.store = RegistryStore(f"sqlite:///{tmp_path}/registry.db")
        self.store.create_schema()
        self.actor = RegistryActor(self.store, RegistryConfig(check_patients=False, forward_timeout=5),
                                   spool_dir=self.spool, max_document_bytes=max_document_bytes)
        app = XdsApp([self.actor.endpoint()], AppConfig(spool_dir=self.spool))
        self.http = HttpServer(app, "127.0.0.1", 0, threads=4).start()
        self.url = f"http://127.0.0.1:{self.http.port}/xds/registry"

    def close(self):
        self.http.stop()
        self.actor.close()

    def spooled(self, wait: float = 5.0) -> list[str]:
        """What is left in the spool once the answer is done with (cleanup follows the last byte sent)."""
        deadline = time.monotonic() + wait
        while os.listdir(self.spool) and time.monotonic() < deadline:
            time.sleep(0.02)
        return os.listdir(self.spool)


@pytest.fixture
def registry(tmp_path):
    r = Registry(tmp_path)
    yield r
    r.close()


def retrieve(registry: Registry, tmp_path, wanted: list[tuple[str, str]]):
    req = etree.Element(C.q(C.NS_XDSB, "RetrieveDocumentSetRequest"), nsmap={"xdsb": C.NS_XDSB})
    for repo, uid in wanted:
        dr = etree.SubElement(req, C.q(C.NS_XDSB, "DocumentRequest"))
        etree.SubElement(dr, C.q(C.NS_XDSB, "RepositoryUniqueId")).text = repo
        etree.SubElement(dr, C.q(C.NS_XDSB, "DocumentUniqueId")).text = uid
    mine = tmp_path / "consumer"
    mine.mkdir(exist_ok=True)
    reply = SoapClient(registry.url, 10, spool_dir=str(mine)).call(C.ACTION_RETRIEVE, req, use_mtom=True)
    rr = reply.body.find(C.q(C.NS_RS, "RegistryResponse"))
    status, errors = read_response_errors(rr)
    got = {}
    for dr in reply.body.iterchildren(C.q(C.NS_XDSB, "DocumentResponse")):
        inc = dr.find(f"{C.q(C.NS_XDSB, 'Document')}/{C.q(C.NS_XOP, 'Include')}")
        got[dr.findtext(C.q(C.NS_XDSB, "DocumentUniqueId"))] = \
            reply.mtom.parts[href_to_cid(inc.get("href"))].read_bytes()
    if reply.mtom is not None:
        reply.mtom.cleanup()
    return status, {e.location: e for e in errors if e.is_error}, got


def test_each_failing_host_costs_only_its_documents(registry, tmp_path):
    big_doc = os.urandom(LIMIT * 4)
    with FakeHost(retrieve_answer([(GOOD, GOOD + ".1", GOOD_DOC)])) as good, \
            FakeHost(broken_multipart()) as broken, \
            FakeHost(retrieve_answer([(BIG, BIG + ".1", big_doc)])) as big, \
            FakeHost(fault()) as failing:
        for repo, host in ((GOOD, good), (BROKEN, broken), (BIG, big), (FAULT, failing)):
            registry.store.add_repository(repo, host.url)
        registry.store.add_repository(DOWN, f"http://127.0.0.1:{closed_port()}/xds/repository")
        wanted = [(r, r + ".1") for r in (GOOD, BROKEN, BIG, FAULT, DOWN)]
        status, errors, got = retrieve(registry, tmp_path, wanted)
        assert status == C.RESPONSE_PARTIAL_SUCCESS
        assert got == {GOOD + ".1": GOOD_DOC}
        assert set(errors) == {r + ".1" for r in (BROKEN, BIG, FAULT, DOWN)}
        assert {e.code for e in errors.values()} == {"XDSRepositoryError"}
        assert str(LIMIT) in errors[BIG + ".1"].message
        assert all(h.requests == 1 for h in (good, broken, big, failing))
    assert registry.spooled() == []


def test_no_host_answering_is_a_failure_and_leaves_nothing(registry, tmp_path):
    with FakeHost(broken_multipart()) as broken, \
            FakeHost(retrieve_answer([(BIG, BIG + ".1", os.urandom(LIMIT + 1))])) as big:
        registry.store.add_repository(BROKEN, broken.url)
        registry.store.add_repository(BIG, big.url)
        status, errors, got = retrieve(registry, tmp_path, [(BROKEN, BROKEN + ".1"), (BIG, BIG + ".1")])
    assert status == C.RESPONSE_FAILURE and got == {}
    assert set(errors) == {BROKEN + ".1", BIG + ".1"}
    assert registry.spooled() == []


def test_document_at_the_limit_is_forwarded_and_the_spool_emptied_after_sending(registry, tmp_path):
    doc = os.urandom(LIMIT)
    with FakeHost(retrieve_answer([(GOOD, GOOD + ".1", doc), (GOOD, GOOD + ".2", GOOD_DOC)])) as good:
        registry.store.add_repository(GOOD, good.url)
        for _ in range(3):
            status, errors, got = retrieve(registry, tmp_path, [(GOOD, GOOD + ".1"), (GOOD, GOOD + ".2")])
            assert status == C.RESPONSE_SUCCESS and errors == {}
            assert got == {GOOD + ".1": doc, GOOD + ".2": GOOD_DOC}
            assert registry.spooled() == []
        # The forwards share one kept-alive connection to the host.
        assert good.connections == 1


def test_failure_while_merging_the_answers_leaves_no_spool(registry, tmp_path, monkeypatch):
    from registry import route

    def broken_merge(*args, **kwargs):
        raise RuntimeError("merging failed")

    with FakeHost(retrieve_answer([(GOOD, GOOD + ".1", GOOD_DOC)])) as good, \
            FakeHost(retrieve_answer([(BIG, BIG + ".1", GOOD_DOC)])) as other:
        registry.store.add_repository(GOOD, good.url)
        registry.store.add_repository(BIG, other.url)
        monkeypatch.setattr(route, "retrieve_response", broken_merge)
        status, errors, got = retrieve(registry, tmp_path, [(GOOD, GOOD + ".1"), (BIG, BIG + ".1")])
    assert status == C.RESPONSE_FAILURE and got == {}
    assert [e.code for e in errors.values()] == ["XDSRegistryError"]
    assert registry.spooled() == []


def test_answer_naming_a_part_it_does_not_hold_leaves_no_spool(registry, tmp_path):
    # The reply parses and its parts are spooled, then an xop:Include names no part of it.
    good = retrieve_answer([(GOOD, GOOD + ".1", GOOD_DOC)])
    body = good.body.replace(b'href="cid:', b'href="cid:missing-', 1)
    with FakeHost(Answer(body, good.content_type)) as host:
        registry.store.add_repository(GOOD, host.url)
        status, errors, got = retrieve(registry, tmp_path, [(GOOD, GOOD + ".1")])
    assert status == C.RESPONSE_FAILURE and set(errors) == {GOOD + ".1"}
    assert registry.spooled() == []
