"""ITI-92 Restricted Update Document Set (IHE RMU) over HTTP against a real server, on SQLite and PostgreSQL.

ITI-92 is ITI-57 restricted to new versions of DocumentEntries: each other operation (a status change, a
SubmitAssociation, a Folder, an original) is refused with its code and changes nothing; the attributes RMU
keeps from version to version are refused under RMU's codes; a Deprecated latest version may be updated and
its successor stays Deprecated (kit test 12319). The caller who is not the submitter is refused as ITI-57
refuses it (the access policy, over mutual TLS in the generic deployment).
"""
from __future__ import annotations

import hashlib

import pytest
from lxml import etree

from node.server import Services
from xds import builder
from xds import constants as C
from xds import errors as E
from xds.audit import records as R
from xds.builder import status_change
from xds.client import SoapClient
from xds.ebrim import new_uuid
from xds.settings import Settings
from tests.helpers import entry_id, new_pid, unique_ids
from tests.test_access_generic import PID as GEN_PID, REPO_A, entry_of, outcome, provide, registry_call
from tests import test_access_generic
from tests.test_update import SHA, message, snapshot, submitted, version_link, versions

world = test_access_generic.world  # the split deployment over mutual TLS, for the access policy
APPROVED, DEPRECATED = C.STATUS_APPROVED, C.STATUS_DEPRECATED
REPO = "1.2.250.1.999.3.1"  # builder.simple_submission's repository
RMU = C.ACTION_RESTRICTED_UPDATE


def doc_version(pid: str, lid: str | None, uid: str, *, id: str = "DocV2", previous: str | None = "1",
                title: str = "Version 2", **doc) -> list[etree._Element]:
    """A new version of a DocumentEntry registered by builder.simple_submission, as ITI-92 sends it."""
    doc.setdefault("hash", SHA)
    doc.setdefault("size", 0)
    doc.setdefault("repository_unique_id", REPO)
    eo = builder.document_entry(pid, id=id, unique_id=uid, title=title, **doc)
    if lid:
        eo.set("lid", lid)
    return [eo, version_link(id, previous=previous, id=f"ss{id}")]


def folder_uid(request: etree._Element) -> str:
    for rp in request.iter(f"{{{C.NS_RIM}}}RegistryPackage"):
        for ei in rp.findall(f"{{{C.NS_RIM}}}ExternalIdentifier"):
            if ei.get("identificationScheme") == C.FOLDER_UNIQUE_ID:
                return ei.get("value")
    raise AssertionError("no Folder in the request")


@pytest.fixture
def server(db_url, tmp_path):
    s = Settings(role="all", port=0, data=str(tmp_path / "data"), db=db_url, mllp_port=0)
    services = Services(s).start()
    try:
        yield services
    finally:
        services.stop()


def answer(client: SoapClient, action: str, body: etree._Element) -> tuple[str, list[str]]:
    reply = client.call(action, body)
    assert reply.status == 200 and reply.envelope.action == C.response_action(action)
    assert reply.body.tag == f"{{{C.NS_RS}}}RegistryResponse"
    codes = [e.get("errorCode") for e in reply.body.iter(f"{{{C.NS_RS}}}RegistryError")
             if e.get("severity") == C.SEVERITY_ERROR]
    return C.last_segment(reply.body.get("status")), codes


def registered(services, client, pid: str, folder: bool = False) -> tuple[etree._Element, str, str]:
    """One DocumentEntry registered by ITI-42 (in a Folder if asked): the request, its uniqueId, entryUUID."""
    req = builder.simple_submission(pid, folder_too=folder)
    uid = unique_ids(req)["Document01"]
    assert answer(client, C.ACTION_REGISTER, req) == ("Success", [])
    return req, uid, entry_id(services.registry.store, uid)


def test_new_version_of_a_document_entry(server):
    store, pid = server.registry.store, new_pid()
    store.add_patient(pid)
    client = SoapClient(server.url + "/xds/registry")
    _, uid, v1 = registered(server, client, pid)
    # A new version may change the attributes RMU leaves modifiable: title, codes, hash, size, ...
    changed = doc_version(pid, v1, uid, hash="0" * 40, size=12, codes={"type": ("11506-3", "2.16.840.1.113883.6.1",
                                                                               "Progress note")})
    assert answer(client, RMU, message(pid, *changed)) == ("Success", [])
    assert [(v, s) for v, s, _ in versions(store, uid)] == [(1, DEPRECATED), (2, APPROVED)]
    assert {lid for _, _, lid in versions(store, uid)} == {v1}
    # ... and the version after it, named by its PreviousVersion.
    assert answer(client, RMU, message(pid, *doc_version(pid, v1, uid, id="DocV3", previous="2"))) == ("Success", [])
    assert [(v, s) for v, s, _ in versions(store, uid)] == [(1, DEPRECATED), (2, DEPRECATED), (3, APPROVED)]


def test_every_other_operation_is_refused_and_changes_nothing(server):
    store, pid, other = server.registry.store, new_pid(), new_pid()
    store.add_patient(pid)
    store.add_patient(other)
    client = SoapClient(server.url + "/xds/registry")
    req, uid, v1 = registered(server, client, pid, folder=True)
    _, uid2, d2 = registered(server, client, pid)
    with store.reading() as conn:
        folder_id = next(r[0].id for r in store.by_unique_ids(conn, [folder_uid(req)]))
    new_folder = builder.folder(pid, id="FolV2", unique_id=folder_uid(req), title="Folder v2")
    new_folder.set("lid", folder_id)
    no_lid = doc_version(pid, None, builder.new_oid())
    cases = {
        "status change": ([status_change(v1, APPROVED, DEPRECATED)], E.METADATA_UPDATE_OPERATION_ERROR),
        "submitted association": (submitted(v1, d2, C.ASSOC_APND), E.METADATA_UPDATE_OPERATION_ERROR),
        "folder version": ([new_folder, builder.folder_marker("FolV2"), version_link("FolV2")],
                           E.METADATA_UPDATE_OPERATION_ERROR),
        "extra association": (doc_version(pid, v1, uid) + [builder.association("DocV2", d2, C.ASSOC_APND, id="x")],
                              E.METADATA_UPDATE_OPERATION_ERROR),
        "new version with a status change": (doc_version(pid, v1, uid) + [status_change(d2, APPROVED, DEPRECATED)],
                                             E.METADATA_UPDATE_OPERATION_ERROR),
        "initial version": (no_lid, E.METADATA_UPDATE_ERROR),
        "wrong PreviousVersion": (doc_version(pid, v1, uid, previous="2"), E.METADATA_VERSION_ERROR),
        "unknown lid": (doc_version(pid, new_uuid(), uid), E.METADATA_VERSION_ERROR),
        "uniqueId": (doc_version(pid, v1, uid2), E.METADATA_IDENTIFIER_ERROR),
        "repositoryUniqueId": (doc_version(pid, v1, uid, repository_unique_id="1.2.250.1.999.3.2"),
                               E.UNMODIFIABLE_METADATA),
        "sourcePatientId": (doc_version(pid, v1, uid, source_patient_id="SRC9^^^&1.2.3.4&ISO"),
                            E.UNMODIFIABLE_METADATA),
        "documentAvailability": (doc_version(pid, v1, uid, extra_slots={"documentAvailability":
                                                                         [C.AVAILABILITY_OFFLINE]}),
                                 E.UNMODIFIABLE_METADATA),
        "objectType": (doc_version(pid, v1, uid, object_type=C.OBJECT_TYPE_ON_DEMAND), E.UNMODIFIABLE_METADATA),
    }
    before = snapshot(store)
    for name, (parts, code) in cases.items():
        status, codes = answer(client, RMU, message(pid, *parts))
        assert status == "Failure" and code in codes, (name, codes)
        assert snapshot(store) == before, name
    # patientId: the other patient is known, so the refusal is RMU's, not XDSUnknownPatientId.
    status, codes = answer(client, RMU, message(other, *doc_version(other, v1, uid, source_patient_id=pid)))
    assert (status, codes) == ("Failure", [E.PATIENT_ID_RECONCILIATION_ERROR])
    assert snapshot(store) == before
    # The same documentAvailability written out (Online, the default) is no change.
    same = doc_version(pid, v1, uid, extra_slots={"documentAvailability": [C.AVAILABILITY_ONLINE]})
    assert answer(client, RMU, message(pid, *same)) == ("Success", [])


def test_a_deprecated_latest_version_is_updated_and_stays_deprecated(server):
    """Kit test 12319 (XDS Persistence of Metadata, CP 1190): ITI-92 on a Deprecated latest version."""
    store, pid = server.registry.store, new_pid()
    store.add_patient(pid)
    client = SoapClient(server.url + "/xds/registry")
    _, uid, v1 = registered(server, client, pid)
    assert answer(client, C.ACTION_UPDATE, message(pid, status_change(v1, APPROVED, DEPRECATED))) == ("Success", [])
    # ITI-57 updates only an Approved version.
    status, codes = answer(client, C.ACTION_UPDATE, message(pid, *doc_version(pid, v1, uid)))
    assert status == "Failure" and E.METADATA_UPDATE_ERROR in codes
    assert answer(client, RMU, message(pid, *doc_version(pid, v1, uid))) == ("Success", [])
    assert [(v, s) for v, s, _ in versions(store, uid)] == [(1, DEPRECATED), (2, DEPRECATED)]
    # A version that is not the latest any more cannot be updated, by ITI-57 or ITI-92.
    for action in (C.ACTION_UPDATE, RMU):
        status, codes = answer(client, action, message(pid, *doc_version(pid, v1, uid, id="DocV3")))
        assert status == "Failure" and E.METADATA_VERSION_ERROR in codes, (action, codes)
    assert [(v, s) for v, s, _ in versions(store, uid)] == [(1, DEPRECATED), (2, DEPRECATED)]


def test_another_host_may_not_update_and_the_submitter_may(world):
    w = world
    content = b"restricted update"
    entry, uid = provide(w, "host-a", content)
    update = message(GEN_PID, *doc_version(GEN_PID, entry, uid, hash=hashlib.sha1(content).hexdigest(),
                                           size=len(content), repository_unique_id=REPO_A))
    reply = registry_call(w, "host-b", RMU, update)
    assert outcome(reply) == ("Failure", ["XDSRegistryError"])
    assert "submitter" in reply.raw.decode()
    assert entry_of(w, uid) == entry
    reply = registry_call(w, "host-a", RMU, update)
    assert outcome(reply) == ("Success", []), reply.raw[:600]
    assert entry_of(w, uid) != entry


def test_audit_record_names_iti_92():
    event = R.AuditEvent(transaction="ITI-92", actor=R.REGISTRY, requestor=R.Node(user_id="http://client", address="127.0.0.1"),
                         responder=R.Node(user_id="http://registry/xds/registry", address="127.0.0.1"), sequence=1,
                         patient_id="P1^^^&1.2.3&ISO", submission_set_uid="1.2.3.4")
    xml = etree.tostring(R.to_xml(event, "registry")).decode()
    assert 'csd-code="ITI-92"' in xml and 'originalText="Restricted Update Document Set"' in xml
    assert 'csd-code="110110"' in xml and 'EventActionCode="U"' in xml
    assert 'ParticipantObjectID="1.2.3.4"' in xml
    assert R.ACTORS["ITI-92"] == (R.REGISTRY,)
