"""ITI-42 registration against a real database (SQLite and PostgreSQL)."""
import threading

import pytest
from lxml import etree
from sqlalchemy import select

from registry import schema as S
from registry.config import RegistryConfig
from xds import builder
from xds import constants as C
from xds import errors as E
from xds.errors import XdsException
from tests.helpers import (by_unique_id, count_all, entry_id, make_store, new_pid, replacement, rows, submit,
                           unique_ids)

SHA_A = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
SHA_B = "a9993e364706816aba3e25717850c26c9cd0d89d"


def codes_of(exc: pytest.ExceptionInfo) -> list[str]:
    return [e.code for e in exc.value.errors if e.is_error]


def test_valid_submission_is_stored_with_uuids_and_status(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    req = builder.simple_submission(pid, 2, folder_too=True)
    uids = unique_ids(req)
    assert submit(store, req) == []
    objs = rows(store, S.registry_object)
    assert sorted(o.kind for o in objs) == ["DE", "DE", "FD", "SS"]
    for o in objs:
        assert o.id.startswith("urn:uuid:") and o.lid == o.id and o.status == C.STATUS_APPROVED
        assert o.patient_id == pid
        assert 'status="urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"' in o.xml
    assocs = rows(store, S.association)
    ids = {o.id for o in objs} | {a.id for a in assocs}
    assert len(assocs) == 7
    for a in assocs:  # symbolic references were rewritten to the assigned UUIDs
        assert a.source in ids and a.target in ids
    de = rows(store, S.doc_entry)
    assert {d.hash for d in de} == {SHA_A}
    assert all(d.class_code == "11488-4^^2.16.840.1.113883.6.1" for d in de)
    assert len(rows(store, S.folder)[0].last_update_time) == 14
    assert {r.code for r in rows(store, S.object_code) if r.scheme == C.DE_CONFIDENTIALITY_CODE} == \
        {"N^^2.16.840.1.113883.5.25"}
    for uid in uids.values():
        assert len(by_unique_id(store, uid)) == 1


def test_unknown_patient_is_refused_and_nothing_stored(db_url):
    pid = new_pid()
    store = make_store(db_url)
    with pytest.raises(XdsException) as exc:
        submit(store, builder.simple_submission(pid))
    assert codes_of(exc) == [E.UNKNOWN_PATIENT_ID]
    assert pid in exc.value.errors[0].message
    assert count_all(store) == 0
    assert submit(store, builder.simple_submission(pid), RegistryConfig(check_patients=False)) == []


def test_merged_patient_is_refused_with_the_survivor_named(db_url):
    old, new = new_pid(), new_pid()
    store = make_store(db_url, old)
    req = builder.simple_submission(old)
    submit(store, req)
    store.merge_patient(old, new)
    with pytest.raises(XdsException) as exc:
        submit(store, builder.simple_submission(old))
    assert codes_of(exc) == [E.UNKNOWN_PATIENT_ID] and new in exc.value.errors[0].message
    assert {o.patient_id for o in rows(store, S.registry_object)} == {new}
    for o in rows(store, S.registry_object):  # the patientId identifiers moved; sourcePatientId stays the source's
        el = etree.fromstring(o.xml)
        values = [e.get("value") for e in el.findall(f"{{{C.NS_RIM}}}ExternalIdentifier")
                  if e.get("identificationScheme") in (C.DE_PATIENT_ID, C.SS_PATIENT_ID)]
        assert values == [new]


def test_resubmitted_unique_id_same_hash_accepted_different_hash_refused(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    uid = builder.new_oid()
    submit(store, builder.simple_submission(pid, doc_kwargs={"unique_id": uid, "hash": SHA_A}))
    submit(store, builder.simple_submission(pid, doc_kwargs={"unique_id": uid, "hash": SHA_A.upper()}))
    assert len(by_unique_id(store, uid)) == 2
    before = count_all(store)
    with pytest.raises(XdsException) as exc:
        submit(store, builder.simple_submission(pid, doc_kwargs={"unique_id": uid, "hash": SHA_B}))
    assert codes_of(exc) == [E.NON_IDENTICAL_HASH]
    assert uid in exc.value.errors[0].message and SHA_B in exc.value.errors[0].message
    assert count_all(store) == before


def test_submission_set_unique_id_reused_is_refused(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    ss_uid = builder.new_oid()
    submit(store, builder.simple_submission(pid, ss_kwargs={"unique_id": ss_uid}))
    before = count_all(store)
    with pytest.raises(XdsException) as exc:
        submit(store, builder.simple_submission(pid, ss_kwargs={"unique_id": ss_uid}))
    assert codes_of(exc) == [E.DUPLICATE_UNIQUE_ID_IN_REGISTRY]
    assert count_all(store) == before


def test_document_unique_id_held_by_a_folder_is_refused(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    uid = builder.new_oid()
    submit(store, builder.submit_objects_request([
        builder.submission_set(pid), builder.submission_set_marker(),
        builder.folder(pid, unique_id=uid), builder.folder_marker(),
        builder.association("SubmissionSet01", "Folder01")]))
    with pytest.raises(XdsException) as exc:
        submit(store, builder.simple_submission(pid, doc_kwargs={"unique_id": uid}))
    assert codes_of(exc) == [E.DUPLICATE_UNIQUE_ID_IN_REGISTRY]


def test_submitted_uuid_that_exists_is_refused(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    submit(store, builder.simple_submission(pid))
    existing = rows(store, S.registry_object)[0].id
    req = builder.simple_submission(pid)
    de = req.find(f".//{{{C.NS_RIM}}}ExtrinsicObject")
    for el in req.iter():
        for attr in ("id", "classifiedObject", "registryObject", "targetObject"):
            if el.get(attr) == "Document01":
                el.set(attr, existing)
    with pytest.raises(XdsException) as exc:
        submit(store, req)
    assert codes_of(exc) == [E.REGISTRY_METADATA_ERROR] and existing in exc.value.errors[0].message


def test_rplc_deprecates_original_and_carries_folder_membership(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    req = builder.simple_submission(pid, 1, folder_too=True)
    uid = unique_ids(req)["Document01"]
    submit(store, req)
    old = entry_id(store, uid)
    fold = [o for o in rows(store, S.registry_object) if o.kind == "FD"][0]
    with store.transaction() as c:  # make the folder's lastUpdateTime visibly older
        c.execute(S.folder.update().values(last_update_time="20000101000000"))
    submit(store, replacement(pid, old))
    statuses = {o.id: o.status for o in rows(store, S.registry_object)}
    assert statuses[old] == C.STATUS_DEPRECATED
    new = [o.id for o in rows(store, S.registry_object) if o.kind == "DE" and o.id != old][0]
    assert statuses[new] == C.STATUS_APPROVED
    members = [a for a in rows(store, S.association) if a.source == fold.id and a.type == C.ASSOC_HAS_MEMBER]
    assert {a.target for a in members} == {old, new}
    carried = [a for a in members if a.target == new][0]
    ss_refs = [a for a in rows(store, S.association) if a.target == carried.id]
    assert len(ss_refs) == 1  # the new SubmissionSet records the new membership
    assert rows(store, S.folder)[0].last_update_time > "20000101000000"


def test_rplc_deprecates_transforms_and_addenda_recursively(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    req = builder.simple_submission(pid)
    uid_ = unique_ids(req)["Document01"]
    submit(store, req)
    orig = entry_id(store, uid_)
    r = replacement(pid, orig, C.ASSOC_APND)
    uid_ = unique_ids(r)["NewDoc"]
    submit(store, r)
    apnd = entry_id(store, uid_)
    r = replacement(pid, apnd, C.ASSOC_XFRM)
    uid_ = unique_ids(r)["NewDoc"]
    submit(store, r)
    xfrm = entry_id(store, uid_)
    submit(store, replacement(pid, orig, C.ASSOC_RPLC))
    statuses = {o.id: o.status for o in rows(store, S.registry_object)}
    assert statuses[orig] == statuses[apnd] == statuses[xfrm] == C.STATUS_DEPRECATED


@pytest.mark.parametrize("kind", [C.ASSOC_APND, C.ASSOC_XFRM, C.ASSOC_RPLC, C.ASSOC_XFRM_RPLC])
def test_relationship_onto_deprecated_entry_is_refused(db_url, kind):
    pid = new_pid()
    store = make_store(db_url, pid)
    req = builder.simple_submission(pid)
    uid_ = unique_ids(req)["Document01"]
    submit(store, req)
    orig = entry_id(store, uid_)
    submit(store, replacement(pid, orig, C.ASSOC_RPLC))
    before = count_all(store)
    with pytest.raises(XdsException) as exc:
        submit(store, replacement(pid, orig, kind))
    assert codes_of(exc) == [E.REGISTRY_DEPRECATED_DOCUMENT]
    assert orig in exc.value.errors[0].message
    assert count_all(store) == before


def test_association_to_unknown_object_is_unresolved(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    ghost = "urn:uuid:00000000-0000-4000-8000-000000000001"
    with pytest.raises(XdsException) as exc:
        submit(store, replacement(pid, ghost, C.ASSOC_RPLC))
    assert codes_of(exc) == [E.UNRESOLVED_REFERENCE] and ghost in exc.value.errors[0].message
    assert count_all(store) == 0


def test_relationship_across_patients_is_refused(db_url):
    p1, p2 = new_pid(), new_pid()
    store = make_store(db_url, p1, p2)
    req = builder.simple_submission(p1)
    uid_ = unique_ids(req)["Document01"]
    submit(store, req)
    orig = entry_id(store, uid_)
    with pytest.raises(XdsException) as exc:
        submit(store, replacement(p2, orig, C.ASSOC_RPLC))
    assert codes_of(exc) == [E.PATIENT_ID_DOES_NOT_MATCH]
    assert rows(store, S.registry_object)[0].status == C.STATUS_APPROVED


def test_same_entry_replaced_twice_in_one_submission_is_refused(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    req = builder.simple_submission(pid)
    uid_ = unique_ids(req)["Document01"]
    submit(store, req)
    orig = entry_id(store, uid_)
    kw = {"hash": SHA_A, "size": 0, "repository_unique_id": "1.2.250.1.999.3.1"}
    two = builder.submit_objects_request([
        builder.submission_set(pid), builder.submission_set_marker(),
        builder.document_entry(pid, id="D1", **kw), builder.document_entry(pid, id="D2", **kw),
        builder.association("SubmissionSet01", "D1", id="h1"), builder.association("SubmissionSet01", "D2", id="h2"),
        builder.association("D1", orig, C.ASSOC_RPLC, id="r1"), builder.association("D2", orig, C.ASSOC_RPLC, id="r2"),
    ])
    with pytest.raises(XdsException) as exc:
        submit(store, two)
    assert E.REGISTRY_METADATA_ERROR in codes_of(exc) and "replaced twice" in exc.value.errors[0].message


def test_existing_document_added_to_existing_folder_updates_last_update_time(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    submit(store, builder.simple_submission(pid, 1, folder_too=True))
    req = builder.simple_submission(pid)
    uid_ = unique_ids(req)["Document01"]
    submit(store, req)
    doc = entry_id(store, uid_)
    fold = [o for o in rows(store, S.registry_object) if o.kind == "FD"][0].id
    with store.transaction() as c:
        c.execute(S.folder.update().values(last_update_time="20000101000000"))
    submit(store, builder.submit_objects_request([
        builder.submission_set(pid), builder.submission_set_marker(),
        builder.association(fold, doc, id="fd", ss_status=None),
        builder.association("SubmissionSet01", "fd", id="ref")]))
    assert rows(store, S.folder)[0].last_update_time > "20000101000000"


def test_existing_document_of_other_patient_cannot_join_folder(db_url):
    p1, p2 = new_pid(), new_pid()
    store = make_store(db_url, p1, p2)
    submit(store, builder.simple_submission(p1, 1, folder_too=True))
    req = builder.simple_submission(p2)
    uid_ = unique_ids(req)["Document01"]
    submit(store, req)
    doc = entry_id(store, uid_)
    fold = [o for o in rows(store, S.registry_object) if o.kind == "FD"][0].id
    with pytest.raises(XdsException) as exc:
        submit(store, builder.submit_objects_request([
            builder.submission_set(p1), builder.submission_set_marker(),
            builder.association(fold, doc, id="fd", ss_status=None),
            builder.association("SubmissionSet01", "fd", id="ref")]))
    assert codes_of(exc) == [E.PATIENT_ID_DOES_NOT_MATCH]


def test_extra_metadata_kept_or_dropped_with_warning(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    extra = {"urn:example:deletionStatus": ["pending"]}
    submit(store, builder.simple_submission(pid, doc_kwargs={"extra_slots": extra}))
    de = [o for o in rows(store, S.registry_object) if o.kind == "DE"][0]
    assert "urn:example:deletionStatus" in de.xml
    warnings = submit(store, builder.simple_submission(pid, doc_kwargs={"extra_slots": extra}),
                      RegistryConfig(keep_extra_metadata=False))
    assert [w.code for w in warnings] == [E.EXTRA_METADATA_NOT_SAVED]
    assert sum("urn:example:deletionStatus" in o.xml for o in rows(store, S.registry_object)) == 1


def test_reference_ids_and_authors_are_indexed(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    ref = "ORD-1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:order"
    submit(store, builder.simple_submission(pid, doc_kwargs={"reference_ids": [ref]}))
    assert [r.value for r in rows(store, S.reference_id)] == [ref]
    assert {r.person for r in rows(store, S.object_author)} == {"123^Martin^Paul^^^^^^&1.2.250.1.71.4.2.1&ISO",
                                                                 "123^Martin^Paul"}


def test_not_a_submit_objects_request_is_refused(db_url):
    store = make_store(db_url)
    with pytest.raises(XdsException) as exc:
        submit(store, etree.Element(f"{{{C.NS_QUERY}}}AdhocQueryRequest"))
    assert codes_of(exc) == [E.REGISTRY_ERROR] and "SubmitObjectsRequest" in exc.value.errors[0].message


def test_concurrent_submissions_of_one_unique_id_with_different_hashes(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    uid = builder.new_oid()
    results = []

    def go(h):
        try:
            submit(store, builder.simple_submission(pid, doc_kwargs={"unique_id": uid, "hash": h}))
            results.append("ok")
        except XdsException as exc:
            results.append(exc.errors[0].code)

    threads = [threading.Thread(target=go, args=(h,)) for h in (SHA_A, SHA_B, SHA_A, SHA_B)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hashes = {d.hash for d in rows(store, S.doc_entry)}
    assert len(hashes) == 1  # whichever came first, the other hash never got in
    assert results.count("ok") == 2 and results.count(E.NON_IDENTICAL_HASH) == 2


def test_package_markers_are_stored_inside_their_packages(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    submit(store, builder.simple_submission(pid, 1, folder_too=True))
    for o in rows(store, S.registry_object):
        if o.kind in ("SS", "FD"):
            el = etree.fromstring(o.xml)
            nodes = [c.get("classificationNode") for c in el.findall(f"{{{C.NS_RIM}}}Classification")]
            wanted = C.SS_CLASSIFICATION_NODE if o.kind == "SS" else C.FOLDER_CLASSIFICATION_NODE
            assert wanted in nodes
            marker = [c for c in el.findall(f"{{{C.NS_RIM}}}Classification")
                      if c.get("classificationNode") == wanted][0]
            assert marker.get("classifiedObject") == o.id
            # ebRIM order: Classifications come before ExternalIdentifiers
            tags = [etree.QName(c).localname for c in el]
            assert tags.index("Classification") < tags.index("ExternalIdentifier")
            assert max(i for i, t in enumerate(tags) if t == "Classification") < tags.index("ExternalIdentifier")


def test_values_with_sql_and_format_characters_are_stored_verbatim(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    tricky = "100% O'Brien; DROP TABLE reg_object; -- %s %(u)s \\ é"
    submit(store, builder.simple_submission(pid, doc_kwargs={"extra_slots": {"urn:example:note": [tricky]},
                                                             "title": tricky}))
    de = [o for o in rows(store, S.registry_object) if o.kind == "DE"][0]
    el = etree.fromstring(de.xml)
    values = [v.text for v in el.iter(f"{{{C.NS_RIM}}}Value")]
    assert tricky in values
    assert el.find(f"{{{C.NS_RIM}}}Name/{{{C.NS_RIM}}}LocalizedString").get("value") == tricky


def _with_object_ref(req, ident):
    rol = req.find(f".//{{{C.NS_RIM}}}RegistryObjectList")
    rol.insert(0, etree.Element(f"{{{C.NS_RIM}}}ObjectRef", id=ident))
    return req


def test_object_refs_to_the_xds_models_schemes_are_accepted_and_not_stored(db_url):
    """The NIST kit's DICOM sample (PnrXop) names the classification schemes it uses as ObjectRefs."""
    pid = new_pid()
    store = make_store(db_url, pid)
    req = _with_object_ref(_with_object_ref(builder.simple_submission(pid), C.DE_CLASS_CODE), C.SS_PATIENT_ID)
    assert submit(store, req) == []
    stored = {r.id for r in rows(store, S.registry_object)}
    assert len(stored) == 2 and not stored & {C.DE_CLASS_CODE, C.SS_PATIENT_ID}


def test_an_object_ref_to_anything_else_is_refused_and_nothing_stored(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    stranger = "urn:uuid:0f6f0c8e-4c7b-4a55-9a0e-6a2b5b1d9e11"
    with pytest.raises(XdsException) as exc:
        submit(store, _with_object_ref(builder.simple_submission(pid), stranger))
    assert codes_of(exc) == [E.REGISTRY_METADATA_ERROR]
    assert stranger in exc.value.errors[0].message and exc.value.errors[0].location == stranger
    assert count_all(store) == 0
