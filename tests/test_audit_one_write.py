"""An ITI-41 served by one process writes all its audit rows in one transaction: the repository's record of
the ITI-41, its record of the ITI-42 hop, the registry's side of that hop and the patient's access log entry
(xds/audit/auditor.py, Auditor.holding). Over HTTP, on the all-in-one server."""
from __future__ import annotations

import pytest

from node.server import Services
from node.transfer import provide_and_register
from xds import builder
from xds import constants as C
from xds import faults
from xds.audit import records as R
from xds.client import SoapClient
from xds.security.policy import patient_key
from xds.settings import Settings
from tests.helpers import new_pid


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    services = Services(Settings(role="all", port=0, data=str(tmp_path_factory.mktemp("one-write")),
                                 settle_interval=0)).start()
    yield services
    services.stop()


@pytest.fixture
def writes(node, monkeypatch):
    """The audit store's append calls (each one transaction), as lists of (transaction, actor, outcome)."""
    calls: list[list[tuple]] = []
    real = node.auditor.store.append

    def counting(records, *args, **kwargs):
        events = [R.from_stored(text, 0) for _, text in records]
        calls.append(sorted((e.transaction, e.actor, e.outcome) for e in events if isinstance(e, R.AuditEvent)))
        return real(records, *args, **kwargs)

    monkeypatch.setattr(node.auditor.store, "append", counting)
    return calls


def provide(node, pid: str):
    sub = builder.simple_submission(pid, 1, register=False)
    pnr, att = provide_and_register(sub, {"Document01": b"one audit transaction"})
    return SoapClient(node.url + "/xds/repository").call(C.ACTION_PROVIDE, pnr, attachments=att)


def records_with_ids(node) -> dict[str, tuple]:
    out = {}
    for seq, stored, _, _ in node.auditor.store.records(0, 100000):
        e = R.from_stored(stored, seq)
        if isinstance(e, R.AuditEvent):
            out[e.record_id] = (e.transaction, e.actor, e.outcome)
    return out


def test_a_provide_and_register_is_one_audit_write(node, writes):
    pid = new_pid()
    node.registry.store.add_patient(pid)
    reply = provide(node, pid)
    assert reply.body.get("status") == C.RESPONSE_SUCCESS
    assert writes == [[("ITI-41", R.REPOSITORY, 0), ("ITI-42", R.REGISTRY, 0), ("ITI-42", R.REPOSITORY, 0)]]
    # The patient's log entry stays under the hop's record, as when the hop was written on its own.
    [access] = node.auditor.store.accesses(patient_key(pid), include_secret=True)
    assert access["action"] == "submit"
    assert records_with_ids(node)[access["record_id"]] == ("ITI-42", R.REPOSITORY, 0)


def test_a_refused_registration_is_one_audit_write(node, writes):
    reply = provide(node, new_pid())  # a patient the registry does not know
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    assert writes == [[("ITI-41", R.REPOSITORY, 8), ("ITI-42", R.REGISTRY, 8), ("ITI-42", R.REPOSITORY, 8)]]


def test_a_handler_failing_after_the_hop_still_writes_the_hop(node, writes, monkeypatch):
    pid = new_pid()
    node.registry.store.add_patient(pid)
    real = faults.point

    def failing(name):
        if name == "registered":
            raise RuntimeError("injected after the registration")
        return real(name)

    monkeypatch.setattr(faults, "point", failing)
    reply = provide(node, pid)
    assert reply.body.get("status") == C.RESPONSE_FAILURE  # the pipeline answers the internal error
    # Registered, so the hop is recorded as a success, with the ITI-41's own failure beside it; once.
    assert writes == [[("ITI-41", R.REPOSITORY, 8), ("ITI-42", R.REGISTRY, 0), ("ITI-42", R.REPOSITORY, 0)]]
    [access] = node.auditor.store.accesses(patient_key(pid), include_secret=True)
    assert access["action"] == "submit"


def test_calls_outside_a_request_are_written_at_once(node, writes):
    from xds.security.principal import Principal

    node.auditor.hop("ITI-42", principal=Principal(mode="tls"), destination="http://elsewhere/xds/registry",
                     outcome=0, patient_id=new_pid())
    assert writes == [[("ITI-42", R.REPOSITORY, 0)]]
    with node.auditor.holding():
        node.auditor.hop("ITI-42", principal=Principal(mode="tls"), destination="http://elsewhere/xds/registry",
                         outcome=0, patient_id=new_pid())
        assert len(writes) == 1  # held
    assert len(writes) == 2 and writes[1] == [("ITI-42", R.REPOSITORY, 0)]  # written when the request ended
