"""ITI-57 Update Document Set against a real database (SQLite and PostgreSQL), and once over HTTP."""
from __future__ import annotations

import threading

import pytest
from lxml import etree
from sqlalchemy import update

from registry import schema as S
from registry.config import RegistryConfig
from registry.query import stored_query
from registry.update import update_document_set
from xds import builder
from xds import constants as C
from xds.builder import status_change
from xds import errors as E
from xds.client import SoapClient
from xds.ebrim import new_uuid
from xds.errors import XdsException
from node.server import Services
from xds.settings import Settings
from tests.helpers import by_unique_id, entry_id, make_store, new_pid, replacement, rows, submit, unique_ids
from tests.test_query import request as query_request

SS = "SubmissionSet01"
SHA = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
REPO = "1.2.250.1.999.3.1"
APPROVED, DEPRECATED = C.STATUS_APPROVED, C.STATUS_DEPRECATED
RIM = C.NS_RIM


# --- building ITI-57 messages ----------------------------------------------------------------------

def message(pid: str, *parts: etree._Element, ss_uid: str | None = None) -> etree._Element:
    return builder.submit_objects_request([builder.submission_set(pid, unique_id=ss_uid),
                                           builder.submission_set_marker(), *parts])


def version_link(target: str, previous: str | None = "1", propagation: str | None = None,
                 id: str = "ssv") -> etree._Element:
    link = builder.association(SS, target, id=id)
    if previous is not None:
        builder.slot(link, "PreviousVersion", [previous])
    if propagation is not None:
        builder.slot(link, "AssociationPropagation", [propagation])
    return link


def new_doc_version(pid: str, lid: str | None, uid: str, *, id: str = "DocV2", title: str = "Version 2",
                    **link) -> list[etree._Element]:
    doc = builder.document_entry(pid, id=id, unique_id=uid, title=title, hash=SHA, size=0,
                                 repository_unique_id=REPO)
    if lid:
        doc.set("lid", lid)
    return [doc, version_link(id, id=f"ss{id}", **link)]


def new_folder_version(pid: str, lid: str, uid: str, *, title: str = "Folder v2", **link) -> list[etree._Element]:
    fd = builder.folder(pid, id="FolV2", unique_id=uid, title=title)
    fd.set("lid", lid)
    return [fd, builder.folder_marker("FolV2"), version_link("FolV2", **link)]


def submitted(source: str, target: str, type_: str) -> list[etree._Element]:
    return [builder.association(source, target, type_, id="added", ss_status=None),
            builder.association(SS, "added", C.ASSOC_SUBMIT_ASSOCIATION, id="sa")]


# --- registry state ---------------------------------------------------------------------------------

CFG = RegistryConfig()


def update_set(store, req, config=CFG):
    return update_document_set(store, req, config)


def registered(store, pid: str, n: int = 1, folder: bool = False) -> list[str]:
    """Register n entries (in a Folder if asked); their uniqueIds."""
    req = builder.simple_submission(pid, n, folder_too=folder)
    uids = unique_ids(req)  # before registration turns the symbolic ids into UUIDs
    submit(store, req)
    return [uids[f"Document{i:02d}"] for i in range(1, n + 1)]


def folder_of(store, doc_id: str) -> str:
    return next(a.source for a in rows(store, S.association)
                if a.target == doc_id and a.type == C.ASSOC_HAS_MEMBER and _kind(store, a.source) == "FD")


def _kind(store, ident: str) -> str | None:
    return next((o.kind for o in rows(store, S.registry_object) if o.id == ident), None)


def versions(store, uid: str) -> list[tuple[int, str, str]]:
    """(version, status, lid) of every object holding uniqueId, oldest first."""
    return sorted((o.version, o.status, o.lid) for o in by_unique_id(store, uid))


def latest(store, uid: str):
    return max(by_unique_id(store, uid), key=lambda o: o.version)


def links(store, source: str | None = None, target: str | None = None, type_: str = C.ASSOC_HAS_MEMBER) -> list:
    return [a for a in rows(store, S.association) if a.type == type_
            and (source is None or a.source == source) and (target is None or a.target == target)]


def snapshot(store) -> tuple:
    objects = sorted((o.id, o.status, o.version) for o in rows(store, S.registry_object))
    assocs = sorted((a.id, a.status) for a in rows(store, S.association))
    return objects, assocs, sorted(tuple(f) for f in rows(store, S.folder))


def refused(store, req, *codes: str) -> list:
    """The errors of an update that must fail, after checking it changed nothing."""
    before = snapshot(store)
    with pytest.raises(XdsException) as exc:
        update_set(store, req)
    found = [e.code for e in exc.value.errors if e.is_error]
    for code in codes:
        assert code in found, exc.value.errors
    assert snapshot(store) == before
    return exc.value.errors


def query(store, query_id: str, params, return_type: str = "LeafClass") -> list[etree._Element]:
    resp = stored_query(store, query_request(query_id, params, return_type), CFG)
    assert resp.get("status") == C.RESPONSE_SUCCESS, etree.tostring(resp)
    return list(resp.find(f"{{{RIM}}}RegistryObjectList"))


def version_name(el: etree._Element) -> str:
    return el.find(f"{{{RIM}}}VersionInfo").get("versionName")


def title(el: etree._Element) -> str:
    return el.find(f"{{{RIM}}}Name/{{{RIM}}}LocalizedString").get("value")


@pytest.fixture
def setup(db_url):
    pid = new_pid()
    return make_store(db_url, pid), pid


# --- Update DocumentEntry metadata ---------------------------------------------------------------

def test_document_entry_update_makes_a_new_version(setup):
    store, pid = setup
    [uid] = registered(store, pid)
    v1 = entry_id(store, uid)
    assert update_set(store, message(pid, *new_doc_version(pid, v1, uid))) == []
    assert versions(store, uid) == [(1, DEPRECATED, v1), (2, APPROVED, v1)]
    v2 = latest(store, uid).id
    assert v2 != v1
    assert 'name="PreviousVersion"' in links(store, target=v2)[0].xml  # the SubmissionSet's link keeps it

    both = query(store, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryUniqueId", f"('{uid}')"), ("$MetadataLevel", "2")])
    assert sorted((e.get("id"), e.get("status"), e.get("lid"), version_name(e), title(e)) for e in both) == sorted(
        [(v1, DEPRECATED, v1, "1", "Document"), (v2, APPROVED, v1, "2", "Version 2")])
    current = query(store, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryUniqueId", f"('{uid}')")])
    assert [e.get("id") for e in current] == [v2]
    history = query(store, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryLogicalID", f"('{v1}')")], "ObjectRef")
    assert sorted(e.get("id") for e in history) == sorted([v1, v2])

    update_set(store, message(pid, *new_doc_version(pid, v1, uid, id="DocV3", previous="2")))
    assert [(v, s) for v, s, _ in versions(store, uid)] == [(1, DEPRECATED), (2, DEPRECATED), (3, APPROVED)]


def test_document_entry_update_carries_folder_membership(setup):
    store, pid = setup
    [uid] = registered(store, pid, folder=True)
    v1 = entry_id(store, uid)
    fd = folder_of(store, v1)
    with store.transaction() as c:
        c.execute(update(S.folder).values(last_update_time="20000101000000"))
    update_set(store, message(pid, *new_doc_version(pid, v1, uid)))
    v2 = latest(store, uid).id
    assert [a.status for a in links(store, fd, v2)] == [APPROVED]
    assert rows(store, S.folder)[0].last_update_time > "20000101000000"
    contents = query(store, C.SQ_GET_FOLDER_AND_CONTENTS, [("$XDSFolderEntryUUID", f"'{fd}'")])
    assert {e.get("id") for e in contents if e.tag == f"{{{RIM}}}ExtrinsicObject"} == {v2}


def test_document_entry_update_without_propagation_leaves_the_folder(setup):
    store, pid = setup
    [uid] = registered(store, pid, folder=True)
    v1 = entry_id(store, uid)
    fd = folder_of(store, v1)
    update_set(store, message(pid, *new_doc_version(pid, v1, uid, propagation="no")))
    assert links(store, fd, latest(store, uid).id) == []
    assert len(links(store, fd, v1)) == 1


def test_document_entry_update_carries_relationships(setup):
    store, pid = setup
    [uid] = registered(store, pid)
    v1 = entry_id(store, uid)
    req = replacement(pid, v1, C.ASSOC_APND)
    addendum_uid = unique_ids(req)["NewDoc"]
    submit(store, req)
    addendum = entry_id(store, addendum_uid)
    update_set(store, message(pid, *new_doc_version(pid, v1, uid)))
    v2 = latest(store, uid).id
    assert len(links(store, addendum, v1, C.ASSOC_APND)) == 1
    assert [a.status for a in links(store, addendum, v2, C.ASSOC_APND)] == [APPROVED]


def test_patient_change_is_allowed_only_for_an_unlinked_entry(setup):
    store, pid = setup
    other = new_pid()
    store.add_patient(other)
    [alone] = registered(store, pid)
    update_set(store, message(other, *new_doc_version(other, entry_id(store, alone), alone)))
    assert latest(store, alone).patient_id == other
    [filed] = registered(store, pid, folder=True)
    errors = refused(store, message(other, *new_doc_version(other, entry_id(store, filed), filed)),
                     E.PATIENT_ID_DOES_NOT_MATCH)
    assert "linked" in errors[0].message


# --- Update Folder -------------------------------------------------------------------------------------

@pytest.mark.parametrize("propagation,carried", [(None, 2), ("yes", 2), ("no", 0)])
def test_folder_update(setup, propagation, carried):
    store, pid = setup
    docs = [entry_id(store, u) for u in registered(store, pid, 2, folder=True)]
    f1 = folder_of(store, docs[0])
    fuid = next(o.unique_id for o in rows(store, S.registry_object) if o.id == f1)
    req = message(pid, *new_folder_version(pid, f1, fuid, propagation=propagation))
    update_set(store, req)
    assert versions(store, fuid) == [(1, DEPRECATED, f1), (2, APPROVED, f1)]
    f2 = latest(store, fuid).id
    assert sorted(a.target for a in links(store, f2)) == (sorted(docs) if carried else [])
    assert len(links(store, f1)) == 2
    # The copied memberships are the registry's doing, not the SubmissionSet's.
    ss = next(o.id for o in rows(store, S.registry_object) if o.kind == "SS" and o.id not in
              {a.source for a in links(store, target=docs[0])})
    assert [a.target for a in rows(store, S.association) if a.source == ss] == [f2]
    found = query(store, C.SQ_GET_FOLDERS, [("$XDSFolderUniqueId", f"('{fuid}')"), ("$MetadataLevel", "2")])
    assert sorted((e.get("status"), version_name(e)) for e in found) == [(APPROVED, "2"), (DEPRECATED, "1")]


def test_folder_and_member_updated_together_stay_linked(setup):
    store, pid = setup
    [uid] = registered(store, pid, folder=True)
    d1 = entry_id(store, uid)
    f1 = folder_of(store, d1)
    fuid = next(o.unique_id for o in rows(store, S.registry_object) if o.id == f1)
    update_set(store, message(pid, *new_folder_version(pid, f1, fuid), *new_doc_version(pid, d1, uid)))
    f2, d2 = latest(store, fuid).id, latest(store, uid).id
    assert [a.target for a in links(store, f2)] == [d2]


# --- UpdateAvailabilityStatus ---------------------------------------------------------------------

def test_availability_status_deprecated_and_back(setup):
    store, pid = setup
    [uid] = registered(store, pid)
    de = entry_id(store, uid)
    update_set(store, message(pid, status_change(de, APPROVED, DEPRECATED)))
    assert versions(store, uid) == [(1, DEPRECATED, de)]
    found = query(store, C.SQ_FIND_DOCUMENTS, [("$XDSDocumentEntryPatientId", f"'{pid}'"),
                                               ("$XDSDocumentEntryStatus", f"('{APPROVED}')")], "ObjectRef")
    assert de not in {e.get("id") for e in found}
    update_set(store, message(pid, status_change(de, DEPRECATED, APPROVED)))
    assert versions(store, uid) == [(1, APPROVED, de)]


def test_availability_status_of_folder_and_relationship(setup):
    store, pid = setup
    [uid] = registered(store, pid, folder=True)
    de = entry_id(store, uid)
    fd = folder_of(store, de)
    submit(store, replacement(pid, de, C.ASSOC_APND))
    apnd = links(store, target=de, type_=C.ASSOC_APND)[0].id
    membership = links(store, fd, de)[0].id
    update_set(store, message(pid, status_change(fd, APPROVED, DEPRECATED, id="u1"),
                              status_change(apnd, APPROVED, DEPRECATED, id="u2"),
                              status_change(membership, APPROVED, DEPRECATED, id="u3")))
    assoc_status = {a.id: a.status for a in rows(store, S.association)}
    assert assoc_status[apnd] == DEPRECATED and assoc_status[membership] == DEPRECATED
    assert next(o.status for o in rows(store, S.registry_object) if o.id == fd) == DEPRECATED


# --- SubmitAssociation ------------------------------------------------------------------------------

def test_submit_relationship_between_registered_entries(setup):
    store, pid = setup
    first, second = (entry_id(store, u) for u in registered(store, pid, 2))
    update_set(store, message(pid, *submitted(second, first, C.ASSOC_APND)))
    assert [a.status for a in links(store, second, first, C.ASSOC_APND)] == [APPROVED]
    related = query(store, C.SQ_GET_RELATED_DOCUMENTS, [("$XDSDocumentEntryEntryUUID", f"'{first}'"),
                                                        ("$AssociationTypes", f"('{C.ASSOC_APND}')")], "ObjectRef")
    assert {e.get("id") for e in related} >= {first, second}


def test_submit_folder_membership(setup):
    store, pid = setup
    [uid] = registered(store, pid, folder=True)
    fd = folder_of(store, entry_id(store, uid))
    [other] = registered(store, pid)
    doc = entry_id(store, other)
    with store.transaction() as c:
        c.execute(update(S.folder).values(last_update_time="20000101000000"))
    update_set(store, message(pid, *submitted(fd, doc, C.ASSOC_HAS_MEMBER)))
    assert [a.status for a in links(store, fd, doc)] == [APPROVED]
    assert rows(store, S.folder)[0].last_update_time > "20000101000000"


# --- refusals: each changes nothing ------------------------------------------------------------------

def test_unknown_logical_id_is_a_version_error(setup):
    store, pid = setup
    [uid] = registered(store, pid)
    refused(store, message(pid, *new_doc_version(pid, new_uuid(), uid)), E.METADATA_VERSION_ERROR)


def test_previous_version_must_be_the_latest(setup):
    store, pid = setup
    [uid] = registered(store, pid)
    v1 = entry_id(store, uid)
    update_set(store, message(pid, *new_doc_version(pid, v1, uid)))
    refused(store, message(pid, *new_doc_version(pid, v1, uid, id="DocV3", previous="1")), E.METADATA_VERSION_ERROR)


def test_deprecated_latest_version_cannot_be_updated(setup):
    store, pid = setup
    [uid] = registered(store, pid)
    v1 = entry_id(store, uid)
    update_set(store, message(pid, status_change(v1, APPROVED, DEPRECATED)))
    errors = refused(store, message(pid, *new_doc_version(pid, v1, uid)), E.METADATA_UPDATE_ERROR)
    assert "Approved" in errors[0].message


def test_unique_id_and_object_type_are_kept(setup):
    store, pid = setup
    [uid] = registered(store, pid)
    v1 = entry_id(store, uid)
    refused(store, message(pid, *new_doc_version(pid, v1, builder.new_oid())), E.METADATA_UPDATE_ERROR)
    with store.transaction() as c:
        c.execute(update(S.doc_entry).values(entry_type=C.OBJECT_TYPE_ON_DEMAND))
    errors = refused(store, message(pid, *new_doc_version(pid, v1, uid)), E.METADATA_UPDATE_ERROR)
    assert "objectType" in errors[0].message


def test_logical_id_of_a_folder_is_not_a_document_entry(setup):
    store, pid = setup
    [uid] = registered(store, pid, folder=True)
    fd = folder_of(store, entry_id(store, uid))
    refused(store, message(pid, *new_doc_version(pid, fd, uid)), E.METADATA_UPDATE_ERROR)


@pytest.mark.parametrize("case", ["no lid", "lid is id", "symbolic lid"])
def test_originals_are_refused(setup, case):
    store, pid = setup
    [uid] = registered(store, pid)
    lid = {"no lid": None, "lid is id": "DocV2", "symbolic lid": "Document01"}[case]
    refused(store, message(pid, *new_doc_version(pid, lid, builder.new_oid())), E.METADATA_UPDATE_ERROR)


@pytest.mark.parametrize("link", [{"previous": None}, {"previous": "no"}, {"previous": "0"},
                                  {"propagation": "maybe"}])
def test_malformed_version_link(setup, link):
    store, pid = setup
    [uid] = registered(store, pid)
    refused(store, message(pid, *new_doc_version(pid, entry_id(store, uid), uid, **link)), E.METADATA_UPDATE_ERROR)


def test_two_updates_of_one_logical_id_are_refused(setup):
    store, pid = setup
    [uid] = registered(store, pid)
    v1 = entry_id(store, uid)
    refused(store, message(pid, *new_doc_version(pid, v1, uid), *new_doc_version(pid, v1, uid, id="DocV3")),
            E.REGISTRY_METADATA_ERROR)


def test_one_bad_operation_stops_all(setup):
    store, pid = setup
    first, second = registered(store, pid, 2)
    d1, d2 = entry_id(store, first), entry_id(store, second)
    refused(store, message(pid, *new_doc_version(pid, d1, first), status_change(d2, DEPRECATED, APPROVED)),
            E.METADATA_UPDATE_ERROR)


@pytest.mark.parametrize("case,code", [
    ("original status", E.METADATA_UPDATE_ERROR),
    ("older version", E.METADATA_UPDATE_ERROR),
    ("submission set", E.METADATA_UPDATE_ERROR),
    ("submission set membership", E.METADATA_UPDATE_ERROR),
    ("unknown", E.UNRESOLVED_REFERENCE),
    ("submitted status", E.METADATA_UPDATE_ERROR),
    ("other patient", E.PATIENT_ID_DOES_NOT_MATCH),
])
def test_availability_status_refusals(setup, case, code):
    store, pid = setup
    [uid] = registered(store, pid)
    v1 = entry_id(store, uid)
    update_set(store, message(pid, *new_doc_version(pid, v1, uid)))
    ss_link = links(store, target=v1)[0]
    target, original, new = {
        "original status": (latest(store, uid).id, DEPRECATED, APPROVED),
        "older version": (v1, DEPRECATED, APPROVED),
        "submission set": (ss_link.source, APPROVED, DEPRECATED),
        "submission set membership": (ss_link.id, APPROVED, DEPRECATED),
        "unknown": (new_uuid(), APPROVED, DEPRECATED),
        "submitted status": (latest(store, uid).id, APPROVED, C.STATUS_SUBMITTED),
        "other patient": (latest(store, uid).id, APPROVED, DEPRECATED),
    }[case]
    sender = pid
    if case == "other patient":
        sender = new_pid()
        store.add_patient(sender)
    refused(store, message(sender, status_change(target, original, new)), code)


@pytest.mark.parametrize("case,code", [
    ("deprecated end", E.METADATA_UPDATE_ERROR),
    ("submission set end", E.METADATA_UPDATE_ERROR),
    ("entry to folder", E.METADATA_UPDATE_ERROR),
    ("already linked", E.METADATA_UPDATE_ERROR),
    ("unknown end", E.UNRESOLVED_REFERENCE),
    ("other patient", E.PATIENT_ID_DOES_NOT_MATCH),
])
def test_submit_association_refusals(setup, case, code):
    store, pid = setup
    [uid] = registered(store, pid, folder=True)
    de = entry_id(store, uid)
    fd = folder_of(store, de)
    [spare] = registered(store, pid)
    other_doc = entry_id(store, spare)
    ss = links(store, target=de)[0].source
    if case == "deprecated end":
        update_set(store, message(pid, status_change(other_doc, APPROVED, DEPRECATED)))
    if case == "other patient":
        stranger = new_pid()
        store.add_patient(stranger)
        other_doc = entry_id(store, registered(store, stranger)[0])
    source, target, type_ = {
        "deprecated end": (other_doc, de, C.ASSOC_APND),
        "submission set end": (ss, de, C.ASSOC_APND),
        "entry to folder": (de, fd, C.ASSOC_HAS_MEMBER),
        "already linked": (fd, de, C.ASSOC_HAS_MEMBER),
        "unknown end": (new_uuid(), de, C.ASSOC_APND),
        "other patient": (fd, other_doc, C.ASSOC_HAS_MEMBER),
    }[case]
    refused(store, message(pid, *submitted(source, target, type_)), code)


def test_association_outside_any_operation_is_refused(setup):
    store, pid = setup
    [uid] = registered(store, pid, folder=True)
    de = entry_id(store, uid)
    fd = folder_of(store, de)
    [spare] = registered(store, pid)
    # The ITI-42 way of filing an entry: ITI-57 adds associations with SubmitAssociation only.
    req = message(pid, builder.association(fd, entry_id(store, spare), id="fdde", ss_status=None),
                  builder.association(SS, "fdde", id="ssfdde"))
    errors = refused(store, req, E.METADATA_UPDATE_ERROR)
    assert any("not part of any ITI-57 operation" in e.message for e in errors)


def test_submission_set_unique_id_must_be_new(setup):
    store, pid = setup
    [uid] = registered(store, pid)
    v1 = entry_id(store, uid)
    ss_uid = next(o.unique_id for o in rows(store, S.registry_object) if o.kind == "SS")
    refused(store, message(pid, *new_doc_version(pid, v1, uid), ss_uid=ss_uid), E.DUPLICATE_UNIQUE_ID_IN_REGISTRY)


def test_register_refuses_update_operations(setup):
    store, pid = setup
    [uid] = registered(store, pid)
    req = message(pid, status_change(entry_id(store, uid), APPROVED, DEPRECATED))
    with pytest.raises(XdsException) as exc:
        submit(store, req)
    assert [e.code for e in exc.value.errors] == [E.REGISTRY_METADATA_ERROR]


def test_concurrent_updates_of_one_entry_make_one_version(setup):
    store, pid = setup
    [uid] = registered(store, pid)
    v1 = entry_id(store, uid)
    results = []

    def go(n):
        try:
            update_set(store, message(pid, *new_doc_version(pid, v1, uid, id=f"Doc{n}", title=f"T{n}")))
            results.append("ok")
        except XdsException as exc:
            results.append(exc.errors[0].code)

    threads = [threading.Thread(target=go, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1 and results.count(E.METADATA_VERSION_ERROR) == 3
    assert [(v, s) for v, s, _ in versions(store, uid)] == [(1, DEPRECATED), (2, APPROVED)]


# --- over HTTP --------------------------------------------------------------------------------------

def test_update_over_http(db_url, tmp_path):
    s = Settings(role="all", port=0, data=str(tmp_path / "data"), db=db_url, mllp_port=0)
    services = Services(s).start()
    try:
        pid = new_pid()
        store = services.registry.store
        store.add_patient(pid)
        client = SoapClient(services.url + "/xds/registry")
        req = builder.simple_submission(pid)
        assert client.call(C.ACTION_REGISTER, req).body.get("status") == C.RESPONSE_SUCCESS
        uid = unique_ids(req)["Document01"]
        v1 = entry_id(store, uid)
        reply = client.call(C.ACTION_UPDATE, message(pid, *new_doc_version(pid, v1, uid)))
        assert reply.status == 200 and reply.envelope.action == C.ACTION_UPDATE + "Response"
        assert reply.body.tag == f"{{{C.NS_RS}}}RegistryResponse"
        assert reply.body.get("status") == C.RESPONSE_SUCCESS
        assert [(v, st) for v, st, _ in versions(store, uid)] == [(1, DEPRECATED), (2, APPROVED)]
        reply = client.call(C.ACTION_UPDATE, message(pid, *new_doc_version(pid, v1, uid, id="DocV3")))
        assert reply.body.get("status") == C.RESPONSE_FAILURE
        codes = [e.get("errorCode") for e in reply.body.iter(f"{{{C.NS_RS}}}RegistryError")]
        assert codes == [E.METADATA_VERSION_ERROR]
    finally:
        services.stop()
