"""ITI-61 Register On-Demand Document Entry and the On-Demand Documents option, over HTTP on SQLite and
PostgreSQL.

ITI-61 is ITI-42's registration in its On-Demand mode (registry/register.py): On-Demand DocumentEntries only,
without hash or size and with a repositoryUniqueId, HasMember and RPLC (between On-Demand entries) only;
each refusal stores nothing. A stable entry registered by ITI-42 may be a snapshot of an On-Demand one
(IsSnapshotOf), which GetRelatedDocuments follows. Queries answer stable entries unless $XDSDocumentEntryType
asks for On-Demand ones; the queries by id answer both. Each ITI-61 leaves its own ATNA record.
"""
from __future__ import annotations

import pytest
from lxml import etree

from node.server import Services
from xds import builder
from xds import constants as C
from xds import errors as E
from xds.audit import records as R
from xds.client import SoapClient
from xds.settings import Settings
from tests.helpers import count_all, entry_id, new_pid, unique_ids
from tests.test_access_generic import REPO_A, REPO_B, outcome, registry_call
from tests import test_access_generic

world = test_access_generic.world  # the split deployment over mutual TLS, for require_known_repositories
OD, STABLE = C.OBJECT_TYPE_ON_DEMAND, C.OBJECT_TYPE_STABLE
ITI61 = C.ACTION_REGISTER_ON_DEMAND
REPO = "1.2.250.1.999.3.1"
SHA = "da39a3ee5e6b4b0d3255bfef95601890afd80709"


@pytest.fixture
def server(db_url, tmp_path):
    s = Settings(role="all", port=0, data=str(tmp_path / "data"), db=db_url, mllp_port=0)
    services = Services(s).start()
    try:
        yield services
    finally:
        services.stop()


def on_demand_entry(pid: str, id: str = "Document01", repository_unique_id: str | None = REPO,
                    **kw) -> etree._Element:
    """An On-Demand DocumentEntry as an On-Demand Document Source sends it: no creationTime, hash or size."""
    eo = builder.document_entry(pid, id=id, object_type=OD, repository_unique_id=repository_unique_id, **kw)
    for s in eo.findall(f"{{{C.NS_RIM}}}Slot"):
        if s.get("name") == "creationTime":
            eo.remove(s)
    return eo


def submission(pid: str, *objects: etree._Element, members: tuple[str, ...] = ("Document01",)) -> etree._Element:
    objs = [builder.submission_set(pid), builder.submission_set_marker(), *objects]
    objs += [builder.association("SubmissionSet01", m, id=f"ss-{m}") for m in members]
    return builder.submit_objects_request(objs)


def answer(client: SoapClient, action: str, body: etree._Element) -> tuple[str, list[str]]:
    reply = client.call(action, body)
    assert reply.status == 200 and reply.envelope.action == C.response_action(action)
    codes = [e.get("errorCode") for e in reply.body.iter(f"{{{C.NS_RS}}}RegistryError")
             if e.get("severity") == C.SEVERITY_ERROR]
    return C.last_segment(reply.body.get("status")), codes


def query(client: SoapClient, query_id: str, *slots: tuple[str, str]) -> tuple[set[str], list[etree._Element]]:
    """The entryUUIDs of the DocumentEntries answered, and the Associations."""
    reply = client.call(C.ACTION_QUERY, builder.adhoc_query_request(query_id, list(slots)))
    assert C.last_segment(reply.body.get("status")) == "Success", etree.tostring(reply.body)[:800]
    docs = {eo.get("id") for eo in reply.body.iter(f"{{{C.NS_RIM}}}ExtrinsicObject")}
    return docs, list(reply.body.iter(f"{{{C.NS_RIM}}}Association"))


def types(*values: str) -> tuple[str, str]:
    return "$XDSDocumentEntryType", "(" + ",".join(f"'{v}'" for v in values) + ")"


APPROVED = "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"


def registered_on_demand(server, client, pid: str, folder: bool = False) -> tuple[str, str]:
    """One On-Demand entry registered by ITI-61 (in a new Folder if asked): its entryUUID and SubmissionSet's."""
    objs = [on_demand_entry(pid)]
    members = ("Document01",)
    if folder:
        objs += [builder.folder(pid), builder.folder_marker(),
                 builder.association("Folder01", "Document01", id="fd", ss_status=None)]
        members += ("Folder01", "fd")
    req = submission(pid, *objs, members=members)
    assert answer(client, ITI61, req) == ("Success", [])
    store = server.registry.store
    ss_uid = next(ei.get("value") for ei in req.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
                  if ei.get("identificationScheme") == C.SS_UNIQUE_ID)
    return entry_id(store, unique_ids(req)["Document01"]), entry_id(store, ss_uid)


def snapshot_of(pid: str, target: str) -> etree._Element:
    """ITI-42: a stable entry that is a snapshot of the On-Demand entry target."""
    de = builder.document_entry(pid, id="Snap", hash=SHA, size=0, repository_unique_id=REPO)
    return submission(pid, de, builder.association("Snap", target, C.ASSOC_IS_SNAPSHOT_OF, id="snap"),
                      members=("Snap",))


def entry_type(server, entry: str) -> str | None:
    store = server.registry.store
    with store.reading() as conn:
        return store.entry_type(conn, entry)


# --- registration and queries --------------------------------------------------------------------------

def test_register_on_demand_then_snapshot_and_query_by_type(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    client = SoapClient(server.url + "/xds/registry")
    od, od_ss = registered_on_demand(server, client, pid, folder=True)
    assert entry_type(server, od) == OD
    assert answer(client, C.ACTION_REGISTER, snapshot_of(pid, od)) == ("Success", [])
    snap = next(i for i in entry_ids(server, pid) if i != od)
    assert entry_type(server, snap) == STABLE

    patient = ("$XDSDocumentEntryPatientId", f"'{pid}'")
    status = ("$XDSDocumentEntryStatus", APPROVED)
    fd = C.SQ_FIND_DOCUMENTS
    assert query(client, fd, patient, status)[0] == {snap}       # stable only by default
    assert query(client, fd, patient, status, types(OD))[0] == {od}
    assert query(client, fd, patient, status, types(STABLE))[0] == {snap}
    assert query(client, fd, patient, status, types(OD, STABLE))[0] == {od, snap}

    get_all = [("$patientId", f"'{pid}'"), ("$XDSDocumentEntryStatus", APPROVED),
               ("$XDSSubmissionSetStatus", APPROVED), ("$XDSFolderStatus", APPROVED)]
    assert query(client, C.SQ_GET_ALL, *get_all)[0] == {snap}
    assert query(client, C.SQ_GET_ALL, *get_all, types(OD))[0] == {od}
    assert query(client, C.SQ_GET_ALL, *get_all, types(OD, STABLE))[0] == {od, snap}

    ss = ("$XDSSubmissionSetEntryUUID", f"'{od_ss}'")
    docs, assocs = query(client, C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, ss)
    assert docs == set() and all(a.get("targetObject") != od for a in assocs)
    assert query(client, C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, ss, types(OD))[0] == {od}

    folder = ("$XDSFolderEntryUUID", f"'{folder_of(server, pid)}'")
    assert query(client, C.SQ_GET_FOLDER_AND_CONTENTS, folder)[0] == set()
    assert query(client, C.SQ_GET_FOLDER_AND_CONTENTS, folder, types(OD))[0] == {od}

    # The queries by id answer both types: they name the entries they want.
    both = ("$XDSDocumentEntryEntryUUID", f"('{od}','{snap}')")
    assert query(client, C.SQ_GET_DOCUMENTS, both)[0] == {od, snap}
    assert query(client, C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS, both)[0] == {od, snap}

    # GetRelatedDocuments follows IsSnapshotOf both ways; the related entries answered are filtered by type.
    snaps = ("$AssociationTypes", f"('{C.ASSOC_IS_SNAPSHOT_OF}')")
    docs, assocs = query(client, C.SQ_GET_RELATED_DOCUMENTS, ("$XDSDocumentEntryEntryUUID", f"'{od}'"), snaps)
    assert docs == {od, snap}
    assert [(a.get("sourceObject"), a.get("targetObject")) for a in assocs] == [(snap, od)]
    from_snap = ("$XDSDocumentEntryEntryUUID", f"'{snap}'")
    assert query(client, C.SQ_GET_RELATED_DOCUMENTS, from_snap, snaps)[0] == set()
    assert query(client, C.SQ_GET_RELATED_DOCUMENTS, from_snap, snaps, types(OD))[0] == {od, snap}
    # A snapshot does not supersede the On-Demand entry.
    assert status_of(server, od) == C.STATUS_APPROVED


def entry_ids(server, pid: str) -> list[str]:
    from sqlalchemy import select
    from registry import schema as S

    with server.registry.store.reading() as c:
        return [r.id for r in c.execute(select(S.registry_object.c.id).where(
            S.registry_object.c.patient_id == pid, S.registry_object.c.kind == S.KIND_DOCUMENT_ENTRY))]


def folder_of(server, pid: str) -> str:
    from sqlalchemy import select
    from registry import schema as S

    with server.registry.store.reading() as c:
        return c.execute(select(S.registry_object.c.id).where(
            S.registry_object.c.patient_id == pid, S.registry_object.c.kind == S.KIND_FOLDER)).scalar_one()


def status_of(server, entry: str) -> str:
    store = server.registry.store
    with store.reading() as conn:
        return store.objects(conn, [entry])[entry].status


def test_on_demand_entry_replaces_another(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    client = SoapClient(server.url + "/xds/registry")
    old, _ = registered_on_demand(server, client, pid)
    req = submission(pid, on_demand_entry(pid, id="New"),
                     builder.association("New", old, C.ASSOC_RPLC, id="rplc"), members=("New",))
    assert answer(client, ITI61, req) == ("Success", [])
    new = entry_id(server.registry.store, unique_ids(req)["New"])
    assert entry_type(server, new) == OD
    assert status_of(server, old) == C.STATUS_DEPRECATED and status_of(server, new) == C.STATUS_APPROVED


# --- what ITI-61 refuses, storing nothing ------------------------------------------------------------------

def _without(eo: etree._Element, slot_name: str) -> etree._Element:
    for s in eo.findall(f"{{{C.NS_RIM}}}Slot"):
        if s.get("name") == slot_name:
            eo.remove(s)
    return eo


REFUSALS = {
    "stable entry": lambda pid, t: submission(pid, builder.document_entry(pid, hash=SHA, size=0,
                                                                          repository_unique_id=REPO)),
    "hash": lambda pid, t: submission(pid, on_demand_entry(pid, hash=SHA)),
    "size": lambda pid, t: submission(pid, on_demand_entry(pid, size=12)),
    "no repositoryUniqueId": lambda pid, t: submission(pid, on_demand_entry(pid, repository_unique_id=None)),
    "no SubmissionSet": lambda pid, t: builder.submit_objects_request([on_demand_entry(pid)]),
    **{f"{C.last_segment(kind)} association": (
        lambda kind: lambda pid, t: submission(pid, on_demand_entry(pid, id="New"),
                                               builder.association("New", t["od"], kind, id="rel"),
                                               members=("New",)))(kind)
       for kind in (C.ASSOC_APND, C.ASSOC_XFRM, C.ASSOC_XFRM_RPLC, C.ASSOC_SIGNS, C.ASSOC_IS_SNAPSHOT_OF)},
    "RPLC of a stable entry": lambda pid, t: submission(pid, on_demand_entry(pid, id="New"),
                                                        builder.association("New", t["stable"], C.ASSOC_RPLC,
                                                                            id="rel"), members=("New",)),
    "RPLC of an unknown entry": lambda pid, t: submission(pid, on_demand_entry(pid, id="New"),
                                                          builder.association("New", t["unknown"], C.ASSOC_RPLC,
                                                                              id="rel"), members=("New",)),
}
CODES = {"no SubmissionSet": E.REGISTRY_METADATA_ERROR, "RPLC of an unknown entry": E.UNRESOLVED_REFERENCE}


@pytest.fixture
def targets(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    client = SoapClient(server.url + "/xds/registry")
    od, _ = registered_on_demand(server, client, pid)
    stable_req = builder.simple_submission(pid)
    assert answer(client, C.ACTION_REGISTER, stable_req) == ("Success", [])
    stable = entry_id(server.registry.store, unique_ids(stable_req)["Document01"])
    return pid, client, {"od": od, "stable": stable, "unknown": "urn:uuid:0b9a6a2e-1111-4c3e-9d77-5a0e1f2d3c4b"}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_iti61_refusal_stores_nothing(server, targets, case):
    pid, client, t = targets
    before = count_all(server.registry.store)
    status, codes = answer(client, ITI61, REFUSALS[case](pid, t))
    assert status == "Failure" and codes, case
    assert CODES.get(case, E.REGISTRY_METADATA_ERROR) in codes, (case, codes)
    assert count_all(server.registry.store) == before
    assert status_of(server, t["od"]) == C.STATUS_APPROVED and status_of(server, t["stable"]) == C.STATUS_APPROVED


def test_iti42_still_refuses_on_demand_entries(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    client = SoapClient(server.url + "/xds/registry")
    before = count_all(server.registry.store)
    status, codes = answer(client, C.ACTION_REGISTER, submission(pid, on_demand_entry(pid)))
    assert status == "Failure" and codes == [E.REGISTRY_METADATA_ERROR]
    assert count_all(server.registry.store) == before


def test_iti61_unknown_patient_stores_nothing(server):
    client = SoapClient(server.url + "/xds/registry")
    pid = new_pid()  # never fed
    before = count_all(server.registry.store)
    assert answer(client, ITI61, submission(pid, on_demand_entry(pid))) == ("Failure", [E.UNKNOWN_PATIENT_ID])
    assert count_all(server.registry.store) == before


# --- IsSnapshotOf's registry-state rules (ITI-42) ----------------------------------------------------------

def test_snapshot_refusals_store_nothing(server, targets):
    pid, client, t = targets
    other = new_pid()
    server.registry.store.add_patient(other)
    other_od, _ = registered_on_demand(server, client, other)
    replaced, _ = registered_on_demand(server, client, pid)
    req = submission(pid, on_demand_entry(pid, id="New"), builder.association("New", replaced, C.ASSOC_RPLC,
                                                                              id="rplc"), members=("New",))
    assert answer(client, ITI61, req) == ("Success", [])
    cases = {
        "stable target": (t["stable"], E.REGISTRY_METADATA_ERROR),
        "unknown target": (t["unknown"], E.UNRESOLVED_REFERENCE),
        "deprecated target": (replaced, E.REGISTRY_DEPRECATED_DOCUMENT),
        "other patient's target": (other_od, E.PATIENT_ID_DOES_NOT_MATCH),
    }
    for case, (target, code) in cases.items():
        before = count_all(server.registry.store)
        status, codes = answer(client, C.ACTION_REGISTER, snapshot_of(pid, target))
        assert status == "Failure" and code in codes, (case, codes)
        assert count_all(server.registry.store) == before, case
    # The allowed one, so that a registry refusing every snapshot fails this test.
    assert answer(client, C.ACTION_REGISTER, snapshot_of(pid, t["od"])) == ("Success", [])


# --- audit ---------------------------------------------------------------------------------------------

def _records(server, after: int) -> list[etree._Element]:
    return [etree.fromstring(R.render(R.from_stored(stored, seq), "test"))
            for seq, stored, _, _ in server.auditor.store.records(after, 100000)]


def _last_seq(server) -> int:
    rows = server.auditor.store.records(0, 1000000)
    return rows[-1][0] if rows else 0


def test_iti61_is_audited(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    client = SoapClient(server.url + "/xds/registry")
    after = _last_seq(server)
    req = submission(pid, on_demand_entry(pid))
    assert answer(client, ITI61, req) == ("Success", [])
    refused = submission(pid, builder.document_entry(pid, hash=SHA, size=0, repository_unique_id=REPO))
    assert answer(client, ITI61, refused)[0] == "Failure"
    mine = [r for r in _records(server, after)
            if r.find("EventIdentification/EventTypeCode").get("csd-code") == "ITI-61"]
    assert len(mine) == 2
    ok, failed = mine
    for rec in mine:
        ident = rec.find("EventIdentification")
        assert ident.get("EventActionCode") == "C" and ident.find("EventID").get("csd-code") == "110107"
        assert ident.find("EventTypeCode").get("originalText") == "Register On-Demand Document Entry"
    assert ok.find("EventIdentification").get("EventOutcomeIndicator") == "0"
    assert failed.find("EventIdentification").get("EventOutcomeIndicator") == "8"
    objects = {o.get("ParticipantObjectTypeCodeRole"): o.get("ParticipantObjectID")
               for o in ok.iterfind("ParticipantObjectIdentification")}
    ss_uid = next(ei.get("value") for ei in req.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
                  if ei.get("identificationScheme") == C.SS_UNIQUE_ID)
    assert objects.get("1") == pid and objects.get("20") == ss_uid


# --- who may register: ITI-42's rule under require_known_repositories -----------------------------------

def test_known_repositories_apply_to_iti61(world):
    pid = test_access_generic.PID
    store = world["registry"].registry.store
    ok = submission(pid, on_demand_entry(pid, repository_unique_id=REPO_A))
    assert outcome(registry_call(world, "host-a", ITI61, ok)) == ("Success", [])
    for who, repo, code in (("source", REPO_A, E.REGISTRY_ERROR),         # not a host of the directory
                            ("host-a", REPO_B, E.UNKNOWN_REPOSITORY_ID)):  # another host's repository
        before = count_all(store)
        reply = registry_call(world, who, ITI61, submission(pid, on_demand_entry(pid, repository_unique_id=repo)))
        assert outcome(reply) == ("Failure", [code]), who
        assert count_all(store) == before
