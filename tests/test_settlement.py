"""The settlement protocol's rules one by one, over HTTP between a registry and a repository host
(docs/decisions.md, "ITI-41 as a recoverable protocol"). Slow steps are made slow with
XDS_DELAY_AT (xds/faults.py); both servers run in this process on real sockets."""
from __future__ import annotations

import datetime as _dt
import hashlib
import os

import pytest
import sqlalchemy as sa
from lxml import etree

from node.server import Services
from node.transfer import provide_and_register
from registry import schema as RS
from xds import builder, registered
from xds import constants as C
from xds import errors as E
from xds.client import SoapClient, registry_call
from xds.ebrim import read_response_errors
from xds.mtom import href_to_cid
from xds.settings import Settings

PID = "SETTLE1^^^&1.2.250.1.213.1.4.10&ISO"
REPO = "1.2.250.1.999.3.88"


@pytest.fixture
def pair(tmp_path):
    registry = Services(Settings(role="registry", port=0, data=str(tmp_path / "registry"),
                                 check_patients=False)).start()
    repository = Services(Settings(role="repository", port=0, data=str(tmp_path / "repository"),
                                   repository_id=REPO, registry_url=registry.url + "/xds/registry",
                                   registry_timeout=1, settle_interval=0)).start()
    yield registry, repository
    repository.stop()
    registry.stop()


def provide(repository, n=1):
    sub = builder.simple_submission(PID, n, register=False)
    uids = [ei.get("value") for ei in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
            if ei.get("identificationScheme") == C.DE_UNIQUE_ID]
    docs = {f"Document{i:02d}": os.urandom(100) for i in range(1, n + 1)}
    pnr, att = provide_and_register(sub, docs)
    reply = SoapClient(repository.url + "/xds/repository", 30).call(C.ACTION_PROVIDE, pnr, attachments=att)
    status, errors = read_response_errors(reply.body)
    return status, errors, dict(zip(uids, docs.values()))


def registry_count(registry) -> int:
    with registry.registry.store.engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(RS.doc_entry)).scalar_one()


def repository_state(repository):
    store, blobs = repository.repository.store, repository.repository.blobs
    files = [f for _, _, fs in os.walk(blobs.objects) for f in fs]
    return store.count(), store.pending_count(), files, blobs.staged_names()


def retrieve(repository, uid):
    req = etree.Element(C.q(C.NS_XDSB, "RetrieveDocumentSetRequest"), nsmap={"xdsb": C.NS_XDSB})
    dr = etree.SubElement(req, C.q(C.NS_XDSB, "DocumentRequest"))
    etree.SubElement(dr, C.q(C.NS_XDSB, "RepositoryUniqueId")).text = REPO
    etree.SubElement(dr, C.q(C.NS_XDSB, "DocumentUniqueId")).text = uid
    reply = SoapClient(repository.url + "/xds/repository", 30).call(C.ACTION_RETRIEVE, req, use_mtom=True)
    inc = reply.body.find(f".//{C.q(C.NS_XOP, 'Include')}")
    data = reply.mtom.parts[href_to_cid(inc.get("href"))].read_bytes() if inc is not None else None
    reply.mtom and reply.mtom.cleanup()
    return data


def test_an_answer_lost_after_the_commit_is_settled_to_success(pair, monkeypatch):
    registry, repository = pair
    # The registry commits, then takes longer than the repository waits to answer.
    monkeypatch.setenv("XDS_DELAY_AT", "registry-committed:2.5")
    status, errors, docs = provide(repository)
    assert status == C.RESPONSE_SUCCESS, errors
    assert [e.code for e in errors] == [E.REGISTRY_NOT_AVAILABLE] and "holds this submission" in errors[0].message
    (uid, data), = docs.items()
    assert retrieve(repository, uid) == data
    assert repository_state(repository)[:2] == (1, 0)


def test_a_registry_too_slow_to_commit_refuses_and_the_source_is_told_failure(pair, monkeypatch):
    registry, repository = pair
    # Ready to commit only after the CommitDeadline: the registry rolls back, the repository learns it.
    monkeypatch.setenv("XDS_DELAY_AT", "registry-stored:2.5")
    status, errors, _ = provide(repository, 2)
    assert status == C.RESPONSE_FAILURE
    assert errors[0].code == E.REGISTRY_NOT_AVAILABLE and "kept pending" not in errors[0].message
    assert registry_count(registry) == 0
    assert repository_state(repository) == (0, 0, [], [])


def test_the_registry_refuses_to_commit_past_the_deadline(pair):
    registry, _ = pair
    request = builder.simple_submission(PID, 1, repository_unique_id=REPO)
    with pytest.raises(Exception) as info:
        registry.registry.register_element(request, _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=1))
    assert info.value.errors[0].code == E.REGISTRY_BUSY and "deadline" in info.value.errors[0].message
    assert registry_count(registry) == 0


def test_a_malformed_commit_deadline_is_refused(pair):
    registry, _ = pair
    header = etree.Element(C.COMMIT_DEADLINE)
    header.text = "tomorrow"
    reply = SoapClient(registry.url + "/xds/registry").call(
        C.ACTION_REGISTER, builder.simple_submission(PID, 1, repository_unique_id=REPO), extra_headers=[header])
    status, errors = read_response_errors(reply.body)
    assert status == C.RESPONSE_FAILURE and "CommitDeadline" in errors[0].message
    assert registry_count(registry) == 0


def test_the_lookup_is_blind_to_status(pair):
    registry, _ = pair
    first = builder.simple_submission(PID, 1, repository_unique_id=REPO)
    registry.registry.register_element(first)
    uid = next(ei.get("value") for ei in first.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
               if ei.get("identificationScheme") == C.DE_UNIQUE_ID)
    with registry.registry.store.transaction() as c:
        c.execute(sa.update(RS.registry_object).where(RS.registry_object.c.unique_id == uid)
                  .values(status=C.STATUS_DEPRECATED))
    answer = registered.read_response(registry_call(registry.url + "/xds/registry", C.ACTION_REGISTERED_DOCUMENTS,
                                                    registered.request(REPO, [uid, "1.2.3.404"])))
    assert list(answer.documents) == [uid] and answer.documents[uid][2] == "Deprecated"
    assert answer.holds(uid, "da39a3ee5e6b4b0d3255bfef95601890afd80709")


def test_the_lookup_pages_through_a_repository(pair):
    registry, _ = pair
    uids = set()
    for _ in range(5):
        sub = builder.simple_submission(PID, 1, repository_unique_id=REPO)
        registry.registry.register_element(sub)
    registry.registry.register_element(builder.simple_submission(PID, 1, repository_unique_id="1.2.250.1.999.3.99"))
    after = None
    pages = 0
    while True:
        answer = registered.read_response(registry_call(
            registry.url + "/xds/registry", C.ACTION_REGISTERED_DOCUMENTS, registered.request(REPO, after=after,
                                                                                              limit=2)))
        pages += 1
        uids |= set(answer.documents)
        if answer.next is None:
            break
        after = answer.next
    assert len(uids) == 5 and pages == 3


@pytest.mark.parametrize("attrs,words", [({}, "no repositoryUniqueId"),
                                         ({"repositoryUniqueId": REPO, "limit": "0"}, "limit"),
                                         ({"repositoryUniqueId": REPO, "limit": "many"}, "limit")])
def test_a_bad_lookup_is_refused(pair, attrs, words):
    registry, _ = pair
    req = etree.Element(registered.REQUEST_TAG, **attrs)
    reply = SoapClient(registry.url + "/xds/registry").call(C.ACTION_REGISTERED_DOCUMENTS, req)
    status, errors = read_response_errors(reply.body)
    assert status == C.RESPONSE_FAILURE and words in errors[0].message


def test_pending_documents_left_by_a_crash_are_settled_at_start_up(tmp_path):
    """Rows and staged files as a repository killed after recording them leaves them (a registry that
    never got the ITI-42): the next start discards them once the deadline has passed."""
    settings = Settings(port=0, data=str(tmp_path / "all"), repository_id=REPO, check_patients=False,
                        settle_interval=0)
    first = Services(settings)
    actor = first.repository
    staged = actor.blobs.stage([b"orphan"], move=False)
    actor.ledger.record([("1.2.3.4.5", staged, "text/plain")], _dt.datetime.now(_dt.timezone.utc))
    assert actor.store.pending_count() == 1
    again = Services(settings).start()
    try:
        assert again.repository.store.pending_count() == 0
        assert again.repository.blobs.staged_names() == []
        assert again.repository.store.count() == 0
    finally:
        again.stop()


def test_a_refusal_for_a_uniqueid_the_registry_holds_keeps_the_bytes_it_lists(pair):
    """The registry holds the document already (an earlier copy of this ITI-42 was committed, e.g. sent
    again by a retrying client, or an earlier submission registered it) and refuses this one as a
    duplicate: the bytes it lists must not be thrown away."""
    registry, repository = pair
    sub = builder.simple_submission(PID, 1, register=False)
    uid = next(ei.get("value") for ei in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
               if ei.get("identificationScheme") == C.DE_UNIQUE_ID)
    data = b"registered before, never stored"
    first = builder.simple_submission(PID, 1, repository_unique_id=REPO, doc_kwargs={
        "unique_id": uid, "hash": hashlib.sha1(data).hexdigest(), "size": len(data)})
    ss_uid = next(ei.get("value") for ei in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
                  if ei.get("identificationScheme") == C.SS_UNIQUE_ID)
    for ei in first.iter(f"{{{C.NS_RIM}}}ExternalIdentifier"):
        if ei.get("identificationScheme") == C.SS_UNIQUE_ID:
            ei.set("value", ss_uid)  # the same SubmissionSet: the second copy is a duplicate
    registry.registry.register_element(first)
    pnr, att = provide_and_register(sub, {"Document01": data})
    reply = SoapClient(repository.url + "/xds/repository", 30).call(C.ACTION_PROVIDE, pnr, attachments=att)
    status, errors = read_response_errors(reply.body)
    assert status == C.RESPONSE_FAILURE and E.DUPLICATE_UNIQUE_ID_IN_REGISTRY in [e.code for e in errors]
    assert retrieve(repository, uid) == data
    assert repository_state(repository)[:2] == (1, 0)


def test_a_refusal_for_a_uniqueid_of_another_object_keeps_nothing(pair):
    """Refused by the registry (its SubmissionSet uniqueId is taken) for documents it does not hold."""
    registry, repository = pair
    earlier = builder.simple_submission(PID, 1, repository_unique_id=REPO)
    registry.registry.register_element(earlier)
    taken = next(ei.get("value") for ei in earlier.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
                 if ei.get("identificationScheme") == C.SS_UNIQUE_ID)
    sub = builder.simple_submission(PID, 1, register=False)
    for ei in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier"):
        if ei.get("identificationScheme") == C.SS_UNIQUE_ID:
            ei.set("value", taken)
    pnr, att = provide_and_register(sub, {"Document01": b"x"})
    reply = SoapClient(repository.url + "/xds/repository", 30).call(C.ACTION_PROVIDE, pnr, attachments=att)
    status, errors = read_response_errors(reply.body)
    assert status == C.RESPONSE_FAILURE and errors[0].code == E.DUPLICATE_UNIQUE_ID_IN_REGISTRY
    assert repository_state(repository) == (0, 0, [], [])
    assert registry_count(registry) == 1
