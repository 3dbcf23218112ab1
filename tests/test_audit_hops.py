"""One record per actor and per hop on a split deployment: a registry and a repository host, each with
its own database and outbox (IHE has each actor audit its own side)."""
from __future__ import annotations

import pytest

from node.server import Services
from node.transfer import provide_and_register, retrieve_request
from xds import builder
from xds import constants as C
from xds.audit import records as R
from xds.client import SoapClient
from xds.settings import Settings
from tests.helpers import new_pid

REPO = "1.2.250.1.999.3.78"


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hops")
    registry = Services(Settings(role="registry", port=0, data=str(folder / "registry"))).start()
    host = Services(Settings(role="repository", port=0, data=str(folder / "host"), repository_id=REPO,
                             registry_url=registry.url + "/xds/registry", settle_interval=0)).start()
    registry.registry.store.add_repository(REPO, host.url + "/xds/repository")
    yield registry, host
    host.stop()
    registry.stop()


def sides(services, after) -> list[tuple[str, str, str]]:
    """(transaction, actor, the requestor's UserID) of each record after a sequence number."""
    out = []
    for seq, stored, _, _ in services.auditor.store.records(after, 100000):
        e = R.from_stored(stored, seq)
        if isinstance(e, R.AuditEvent):
            out.append((e.transaction, e.actor, e.outcome))
    return sorted(out)


def last(services) -> int:
    return services.auditor.store.records(0, 100000)[-1][0]


def test_each_side_records_its_own_hop(split):
    registry, host = split
    pid = new_pid()
    registry.registry.store.add_patient(pid)
    r0, h0 = last(registry), last(host)
    sub = builder.simple_submission(pid, 1, register=False)
    pnr, att = provide_and_register(sub, {"Document01": b"hop document"})
    reply = SoapClient(host.url + "/xds/repository").call(C.ACTION_PROVIDE, pnr, attachments=att)
    assert reply.body.get("status") == C.RESPONSE_SUCCESS
    assert sides(host, h0) == [("ITI-41", R.REPOSITORY, 0), ("ITI-42", R.REPOSITORY, 0)]
    assert sides(registry, r0) == [("ITI-42", R.REGISTRY, 0)]

    uid = next(e.get("value") for e in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
               if e.get("identificationScheme") == C.DE_UNIQUE_ID)
    r0, h0 = last(registry), last(host)
    reply = SoapClient(registry.url + "/xds/registry").call(C.ACTION_RETRIEVE, retrieve_request(uid, REPO),
                                                            use_mtom=True)
    assert reply.body.find(f".//{{{C.NS_XDSB}}}DocumentResponse") is not None
    assert sides(registry, r0) == [("ITI-43", R.CONSUMER, 0), ("ITI-43", R.REPOSITORY, 0)]
    assert sides(host, h0) == [("ITI-43", R.REPOSITORY, 0)]
    # The registry's log of the patient names the retrieval; the host keeps no patient log.
    from xds.security.policy import patient_key

    assert [e["action"] for e in registry.auditor.store.accesses(patient_key(pid), include_secret=True)] == \
        ["retrieve", "submit"]
    assert host.auditor.registry is None


def test_a_refused_registration_is_recorded_on_both_sides(split):
    registry, host = split
    r0, h0 = last(registry), last(host)
    sub = builder.simple_submission(new_pid(), 1, register=False)  # a patient the registry does not know
    pnr, att = provide_and_register(sub, {"Document01": b"refused"})
    reply = SoapClient(host.url + "/xds/repository").call(C.ACTION_PROVIDE, pnr, attachments=att)
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    assert sides(host, h0) == [("ITI-41", R.REPOSITORY, 8), ("ITI-42", R.REPOSITORY, 8)]
    assert sides(registry, r0) == [("ITI-42", R.REGISTRY, 8)]
