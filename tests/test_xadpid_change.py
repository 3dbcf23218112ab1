"""ITI-64 Notify XAD-PID Link Change (XPID): an ADT^A43 on the registry's patient feed (MLLP), checked through
ITI-18 over HTTP against a real server, on SQLite and PostgreSQL.

The entries of a local patient id move to the new XAD-PID as new versions (the old ones Deprecated), with
their document relationships and Folders; a merge of local ids rewrites sourcePatientId; every refusal
(unknown XAD-PIDs, a sender that may not merge, a malformed message, a Folder or relationship the change
would split across two patients) changes nothing; each message leaves an ITI-64 audit record.
"""
from __future__ import annotations

import base64

import pytest
from lxml import etree
from sqlalchemy import select

from node.server import Services
from registry import schema as S
from registry.feed import feed_handler, internal_error_ack
from registry.feed_sources import FeedSources
from registry.service import FeedPatients
from xds import builder
from xds import constants as C
from xds.audit import records as R
from xds.client import SoapClient
from xds.mllp import MllpServer, mllp_send
from xds.settings import Settings
from tests.helpers import new_pid

RIM = C.NS_RIM
APPROVED, DEPRECATED = C.STATUS_APPROVED, C.STATUS_DEPRECATED
OID = "1.2.250.1.213.1.4.10"
LOCAL_OID = "1.2.250.1.999.77"


@pytest.fixture
def server(tmp_path, db_url):
    services = Services(Settings(port=0, data=str(tmp_path / "data"), db=db_url, mllp_port=0,
                                 settle_interval=0)).start()
    yield services
    services.stop()


_local = iter(range(1, 10**6))


def local_pid() -> str:
    return f"L{next(_local):05d}^^^&{LOCAL_OID}&ISO"


def a43(new_xad: str, local: str, previous_xad: str, subsumed: str | None = None, *, control="A43-1",
        app="PIXMGR", pid3: str | None = None, mrg: str | None = None) -> str:
    pid3 = pid3 if pid3 is not None else f"{new_xad}~{local}"
    mrg = mrg if mrg is not None else previous_xad + (f"~{subsumed}" if subsumed else "")
    segments = [f"MSH|^~\\&|{app}|XAD|XDS|REG|20240101120000||ADT^A43^ADT_A43|{control}|P|2.5",
                "EVN|A43|20240101120000", f"PID|||{pid3}|| "]
    if mrg != "-":
        segments.append(f"MRG|{mrg}")
    return "\r".join(segments) + "\r"


def ack(reply: str) -> tuple[str, str, str]:
    """(MSA-1, ERR-3 code, ERR-5 code) of an acknowledgement."""
    fields = {line.split("|")[0]: line.split("|") for line in reply.replace("\n", "\r").split("\r") if line}
    err = fields.get("ERR", [])
    return (fields["MSA"][1], err[3].split("^")[0] if len(err) > 3 else "",
            err[5].split("^")[0] if len(err) > 5 else "")


def send(services: Services, message: str, port: int | None = None) -> tuple[str, str, str]:
    return ack(mllp_send("127.0.0.1", port or services.mllp.port, message, timeout=10))


def register(services: Services, pid: str, docs: list, folder: bool = False, related=()) -> dict[str, str]:
    """Register documents (id, sourcePatientId) for pid, optionally in a new Folder and linked by (type,
    source, registered entryUUID); returns uniqueId by symbolic id."""
    uids = {}
    items = [builder.submission_set(pid), builder.submission_set_marker()]
    for sym, source in docs:
        uids[sym] = builder.new_oid()
        items += [builder.document_entry(pid, id=sym, unique_id=uids[sym], source_patient_id=source,
                                         hash="da39a3ee5e6b4b0d3255bfef95601890afd80709", size=0,
                                         repository_unique_id="1.2.250.1.999.3.1"),
                  builder.association("SubmissionSet01", sym, id=f"hm-{sym}")]
    if folder:
        uids["F"] = builder.new_oid()
        items += [builder.folder(pid, id="F", unique_id=uids["F"]), builder.folder_marker("F"),
                  builder.association("SubmissionSet01", "F", id="hm-F", ss_status=None)]
        for sym, _ in docs:
            items += [builder.association("F", sym, id=f"fm-{sym}", ss_status=None),
                      builder.association("SubmissionSet01", f"fm-{sym}", id=f"hm-fm-{sym}", ss_status=None)]
    for type_, source, target in related:
        items.append(builder.association(source, target, type_, id=f"rel-{source}"))
    body = SoapClient(services.url + "/xds/registry").call(C.ACTION_REGISTER,
                                                            builder.submit_objects_request(items)).body
    assert body.get("status") == C.RESPONSE_SUCCESS, [e.get("codeContext") for e in body.iter(
        C.q(C.NS_RS, "RegistryError"))]
    return uids


def query(services: Services, query_id: str, pid: str, statuses=(APPROVED, DEPRECATED), level: int = 2):
    param = "$XDSDocumentEntry" if query_id == C.SQ_FIND_DOCUMENTS else "$XDSFolder"
    quoted = ",".join(f"'{s}'" for s in statuses)
    request = builder.adhoc_query_request(query_id, [(f"{param}PatientId", f"'{pid}'"),
                                                     (f"{param}Status", f"({quoted})"),
                                                     ("$MetadataLevel", str(level))])
    body = SoapClient(services.url + "/xds/registry").call(C.ACTION_QUERY, request).body
    assert body.get("status") == C.RESPONSE_SUCCESS, etree.tostring(body)
    tag = "ExtrinsicObject" if query_id == C.SQ_FIND_DOCUMENTS else "RegistryPackage"
    out = []
    for el in body.iter(C.q(RIM, tag)):
        version = el.find(C.q(RIM, "VersionInfo"))
        source = el.find(f"{{{RIM}}}Slot[@name='sourcePatientId']/{{{RIM}}}ValueList/{{{RIM}}}Value")
        unique = [e.get("value") for e in el.iter(C.q(RIM, "ExternalIdentifier"))
                  if e.get("identificationScheme") in (C.DE_UNIQUE_ID, C.FOLDER_UNIQUE_ID)]
        out.append(dict(id=el.get("id"), lid=el.get("lid"), status=el.get("status"), unique_id=unique[0],
                        version=version.get("versionName") if version is not None else None,
                        source=source.text if source is not None else None))
    return out


def docs(services, pid, statuses=(APPROVED, DEPRECATED)):
    return query(services, C.SQ_FIND_DOCUMENTS, pid, statuses)


def snapshot(services: Services) -> tuple:
    """Everything a refused message must leave as it was."""
    store = services.registry.store
    with store.reading() as c:
        objects = sorted(tuple(r) for r in c.execute(select(S.registry_object.c.id, S.registry_object.c.status,
                                                            S.registry_object.c.patient_id,
                                                            S.registry_object.c.xml)))
        links = sorted(tuple(r) for r in c.execute(select(S.association.c.id, S.association.c.status)))
    return objects, links


def audit(services: Services, control: str) -> list:
    store = services.auditor.store
    found = [R.from_stored(stored, seq) for seq, stored, _, _ in store.records(0, 100000)]
    return [e for e in found if isinstance(e, R.AuditEvent) and e.message_control_id == control]


def patients(services: Services, *pids: str) -> None:
    for p in pids:
        services.registry.store.add_patient(p)


# --- the link change ---------------------------------------------------------------------------

def test_link_change_moves_the_local_ids_entries_to_the_new_xad_pid(server):
    old, new, local, other = new_pid(), new_pid(), local_pid(), local_pid()
    patients(server, old, new)
    uids = register(server, old, [("D1", local), ("D2", local)])
    kept = register(server, old, [("D3", other)])

    assert send(server, a43(new, local, old, control="MOVE-1"))[0] == "AA"

    assert [d["unique_id"] for d in docs(server, old, (APPROVED,))] == [kept["D3"]]
    moved = docs(server, new)
    assert sorted(d["unique_id"] for d in moved) == sorted(uids.values())
    assert all(d["status"] == APPROVED and d["version"] == "2" and d["id"] != d["lid"] and d["source"] == local
               for d in moved)
    # The superseded versions stay with the previous XAD-PID, Deprecated, as the history of each entry.
    history = [d for d in docs(server, old) if d["unique_id"] in uids.values()]
    assert sorted(d["lid"] for d in history) == sorted(d["lid"] for d in moved)
    assert all(d["status"] == DEPRECATED and d["version"] == "1" and d["id"] == d["lid"] for d in history)
    # At $MetadataLevel 1 only the latest versions answer.
    assert not [d for d in query(server, C.SQ_FIND_DOCUMENTS, old, level=1) if d["unique_id"] in uids.values()]

    # The change is one new SubmissionSet of the new XAD-PID holding the new versions.
    body = SoapClient(server.url + "/xds/registry").call(C.ACTION_QUERY, builder.adhoc_query_request(
        C.SQ_FIND_SUBMISSION_SETS, [("$XDSSubmissionSetPatientId", f"'{new}'"),
                                    ("$XDSSubmissionSetStatus", f"('{APPROVED}')")])).body
    sets = list(body.iter(C.q(RIM, "RegistryPackage")))
    assert len(sets) == 1
    content = [c.get("nodeRepresentation") for c in sets[0].iter(C.q(RIM, "Classification"))
               if c.get("classificationScheme") == C.SS_CONTENT_TYPE_CODE]
    assert content == ["XPID-LinkChange"]


def test_link_change_without_entries_is_accepted_and_changes_nothing(server):
    old, new = new_pid(), new_pid()
    patients(server, old, new)
    register(server, old, [("D1", local_pid())])
    before = snapshot(server)
    assert send(server, a43(new, local_pid(), old))[0] == "AA"
    assert snapshot(server) == before


def test_merge_of_local_ids_within_one_xad_pid_rewrites_source_patient_id(server):
    xad, kept, subsumed = new_pid(), local_pid(), local_pid()
    patients(server, xad)
    uids = register(server, xad, [("D1", subsumed), ("D2", kept)])

    assert send(server, a43(xad, kept, xad, subsumed))[0] == "AA"

    entries = docs(server, xad)
    by_uid = {}
    for d in entries:
        by_uid.setdefault(d["unique_id"], []).append(d)
    merged = sorted(by_uid[uids["D1"]], key=lambda d: d["version"])
    assert [(d["version"], d["status"], d["source"]) for d in merged] == [
        ("1", DEPRECATED, subsumed), ("2", APPROVED, kept)]
    # The entry that already carries the local id needs no change and gets no new version.
    assert [(d["version"], d["status"], d["source"]) for d in by_uid[uids["D2"]]] == [("1", APPROVED, kept)]


def test_merge_to_another_xad_pid_and_local_id(server):
    old, new, subsumed, local = new_pid(), new_pid(), local_pid(), local_pid()
    patients(server, old, new)
    uids = register(server, old, [("D1", subsumed)])
    assert send(server, a43(new, local, old, subsumed))[0] == "AA"
    assert docs(server, old, (APPROVED,)) == []
    moved = docs(server, new)
    assert [(d["unique_id"], d["source"], d["version"]) for d in moved] == [(uids["D1"], local, "2")]


def entry_uuid(services: Services, pid: str, unique_id: str) -> str:
    return next(d["id"] for d in docs(services, pid, (APPROVED,)) if d["unique_id"] == unique_id)


def test_related_documents_and_their_folder_follow_the_move(server):
    old, new, local = new_pid(), new_pid(), local_pid()
    patients(server, old, new)
    uids = register(server, old, [("D1", local), ("D2", local)], folder=True)
    uids.update(register(server, old, [("A1", local)],
                         related=[(C.ASSOC_APND, "A1", entry_uuid(server, old, uids["D1"]))]))

    assert send(server, a43(new, local, old))[0] == "AA"

    folders = query(server, C.SQ_FIND_FOLDERS, new)
    assert [(f["unique_id"], f["version"], f["status"]) for f in folders] == [(uids["F"], "2", APPROVED)]
    old_folders = query(server, C.SQ_FIND_FOLDERS, old)
    assert [(f["unique_id"], f["version"], f["status"]) for f in old_folders] == [(uids["F"], "1", DEPRECATED)]
    new_ids = {d["unique_id"]: d["id"] for d in docs(server, new, (APPROVED,))}
    assert sorted(new_ids) == sorted(uids[k] for k in ("D1", "D2", "A1"))
    body = SoapClient(server.url + "/xds/registry").call(C.ACTION_QUERY, builder.adhoc_query_request(
        C.SQ_GET_FOLDER_AND_CONTENTS, [("$XDSFolderEntryUUID", f"'{folders[0]['id']}'")])).body
    assert {e.get("id") for e in body.iter(C.q(RIM, "ExtrinsicObject"))} == {new_ids[uids["D1"]],
                                                                               new_ids[uids["D2"]]}
    # The APND now links the two new versions.
    body = SoapClient(server.url + "/xds/registry").call(C.ACTION_QUERY, builder.adhoc_query_request(
        C.SQ_GET_ASSOCIATIONS, [("$uuid", f"('{new_ids[uids['A1']]}')")])).body
    apnd = [(a.get("sourceObject"), a.get("targetObject")) for a in body.iter(C.q(RIM, "Association"))
            if a.get("associationType") == C.ASSOC_APND and a.get("status") == APPROVED]
    assert apnd == [(new_ids[uids["A1"]], new_ids[uids["D1"]])]


def test_a_folder_the_change_would_split_is_refused_and_nothing_changes(server):
    old, new, local, other = new_pid(), new_pid(), local_pid(), local_pid()
    patients(server, old, new)
    register(server, old, [("D1", local), ("D2", other)], folder=True)
    before = snapshot(server)
    assert send(server, a43(new, local, old, control="SPLIT")) == ("AE", "207", "XPID_CONFLICT")
    assert snapshot(server) == before
    assert [e.outcome for e in audit(server, "SPLIT")] == [4]


def test_a_relationship_the_change_would_split_is_refused_and_nothing_changes(server):
    old, new, local, other = new_pid(), new_pid(), local_pid(), local_pid()
    patients(server, old, new)
    uids = register(server, old, [("D1", local)])
    register(server, old, [("A1", other)], related=[(C.ASSOC_APND, "A1", entry_uuid(server, old, uids["D1"]))])
    before = snapshot(server)
    assert send(server, a43(new, local, old)) == ("AE", "207", "XPID_CONFLICT")
    assert snapshot(server) == before


# --- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("which,code", [("new", "204"), ("previous", "204")])
def test_an_unknown_xad_pid_is_refused_and_nothing_changes(server, which, code):
    old, new, local = new_pid(), new_pid(), local_pid()
    patients(server, old if which == "new" else new)
    if which == "new":
        register(server, old, [("D1", local)])
    before = snapshot(server)
    result = send(server, a43(new, local, old))
    assert result[:2] == ("AE", code)
    assert snapshot(server) == before


@pytest.mark.parametrize("kwargs,code", [
    (dict(pid3="{new}"), "101"),                                    # no local id
    (dict(mrg="-"), "100"),                                         # no MRG segment
    (dict(pid3="{new}~NOAUTH"), "102"),                             # local id without an ISO authority
    (dict(mrg="X1^^^&not-an-oid&ISO"), "102"),                      # an authority that is not an OID
    (dict(mrg="X9^^^&1.2.250.1.999.55&ISO"), "102"),                # XAD-PIDs of two authorities
    (dict(mrg="{new}"), "102"),                                     # same XAD-PID, nothing to merge
])
def test_a_malformed_message_is_refused_and_nothing_changes(server, kwargs, code):
    old, new, local = new_pid(), new_pid(), local_pid()
    patients(server, old, new)
    register(server, old, [("D1", local)])
    filled = {k: v.format(new=new, old=old) for k, v in kwargs.items()}
    before = snapshot(server)
    result = send(server, a43(new, local, old, **filled))
    assert result[:2] == ("AE", code), result
    assert snapshot(server) == before


def test_a_sender_that_may_not_merge_is_refused_and_nothing_changes(server):
    old, new, local = new_pid(), new_pid(), local_pid()
    patients(server, old, new)
    register(server, old, [("D1", local)])
    sources = FeedSources.from_dict({"source": [
        {"name": "pix", "plain": True, "application": "PIXMGR", "facility": "XAD", "authorities": [OID]},
        {"name": "other", "plain": True, "application": "OTHER", "facility": "XAD", "authorities": [OID],
         "merge": True, "addresses": ["10.9.0.0/16"]}]})
    listener = MllpServer("127.0.0.1", 0, feed_handler(FeedPatients(server.registry.store), sources,
                                                       server.auditor.feed),
                          error_reply=internal_error_ack).start()
    try:
        before = snapshot(server)
        assert send(server, a43(new, local, old, control="DENY-1"), listener.port) == ("AR", "207",
                                                                                      "MERGE_NOT_ALLOWED")
        assert send(server, a43(new, local, old, control="DENY-2", app="OTHER"), listener.port)[0] == "AR"
        assert snapshot(server) == before
    finally:
        listener.stop()
    assert [e.outcome for e in audit(server, "DENY-1")] == [8]


# --- the audit record ----------------------------------------------------------------------------

def test_the_link_change_is_audited_as_iti_64(server):
    old, new, subsumed, local = new_pid(), new_pid(), local_pid(), local_pid()
    patients(server, old, new)
    register(server, old, [("D1", subsumed)])
    assert send(server, a43(new, local, old, subsumed, control="AUD-64"))[0] == "AA"
    [event] = audit(server, "AUD-64")
    assert event.transaction == "ITI-64" and event.outcome == 0 and event.action == "U"
    rec = etree.fromstring(R.render(event, "test"))
    assert rec.find("EventIdentification/EventTypeCode").get("csd-code") == "ITI-64"
    assert rec.find("EventIdentification/EventID").get("csd-code") == "110110"
    objects = {}
    for obj in rec.iterfind("ParticipantObjectIdentification[@ParticipantObjectTypeCodeRole='1']"):
        details = {d.get("type"): base64.b64decode(d.get("value")).decode() for d in obj.iterfind(
            "ParticipantObjectDetail")}
        assert details["MSH-10"] == "AUD-64"
        objects[details["urn:ihe:iti:xpid:2017:patientIdentifierType"]] = (
            obj.get("ParticipantObjectID"), obj.get("ParticipantObjectDataLifeCycle"))
    assert objects == {"localPatientId": (local, "1"), "subsumedPatientId": (subsumed, "14"),
                       "newPatientId": (new, "1"), "previousPatientId": (old, "14")}
    ss = rec.find("ParticipantObjectIdentification[@ParticipantObjectTypeCodeRole='20']")
    assert ss is not None and ss.get("ParticipantObjectID").startswith("urn:uuid:")


def test_the_conformance_harness_a43_is_applied(server):
    from conformance import patient_move

    old, new, local = new_pid(), new_pid(), local_pid()
    patients(server, old, new)
    uids = register(server, old, [("D1", local)])
    values = {patient_move.NEW_XAD: new, patient_move.NEW_LOCAL: local, patient_move.OLD_XAD: old}
    ex = patient_move.send_move("127.0.0.1", server.mllp.port, values, timeout=10)
    assert ex.ack_code == "AA", ex.response_text
    assert [d["unique_id"] for d in docs(server, new, (APPROVED,))] == [uids["D1"]]
