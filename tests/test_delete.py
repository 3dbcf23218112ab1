"""ITI-62 Delete Document Set on SQLite and PostgreSQL: what is removed, each refusal with its code,
and that a refused request changes nothing."""
from __future__ import annotations

import threading

import pytest
from lxml import etree

from registry import schema as S
from registry.config import RegistryConfig
from registry.delete import delete_document_set
from registry.query import stored_query
from xds import builder
from xds import constants as C
from xds.builder import remove_objects_request as remove_request
from xds import errors as E
from xds.client import SoapClient
from xds.errors import XdsException
from node.server import Services
from xds.settings import Settings
from tests.helpers import count_all, make_store, new_pid, replacement, rows, submit

RIM = C.NS_RIM
_TAGS = (C.q(RIM, "ExtrinsicObject"), C.q(RIM, "RegistryPackage"), C.q(RIM, "Association"))


def register(store, request) -> dict[str, str]:
    """Register request; returns symbolic id -> id the registry gave the object."""
    elements = {el.get("id"): el for el in request.iter(*_TAGS)}
    submit(store, request)
    return {sym: el.get("id") for sym, el in elements.items()}


def refused(store, request) -> list[tuple[str, str]]:
    with pytest.raises(XdsException) as info:
        delete_document_set(store, request)
    return [(e.code, e.location) for e in info.value.errors]


def snapshot(store) -> dict:
    return {t.name: sorted(tuple(r) for r in rows(store, t))
            for t in (S.registry_object, S.association, S.doc_entry, S.submission_set, S.folder, S.object_code,
                      S.object_author, S.reference_id)}


def get_all(pid: str, entry_statuses=(C.STATUS_APPROVED, C.STATUS_DEPRECATED)) -> etree._Element:
    q = etree.Element(C.q(C.NS_QUERY, "AdhocQueryRequest"), nsmap={"query": C.NS_QUERY, "rim": RIM})
    etree.SubElement(q, C.q(C.NS_QUERY, "ResponseOption"), returnType="ObjectRef", returnComposedObjects="true")
    aq = etree.SubElement(q, C.q(RIM, "AdhocQuery"), id=C.SQ_GET_ALL)
    for name, value in (("$patientId", f"'{pid}'"),
                        ("$XDSDocumentEntryStatus", "(" + ",".join(f"'{s}'" for s in entry_statuses) + ")"),
                        ("$XDSSubmissionSetStatus", f"('{C.STATUS_APPROVED}')"),
                        ("$XDSFolderStatus", f"('{C.STATUS_APPROVED}')")):
        vl = etree.SubElement(etree.SubElement(aq, C.q(RIM, "Slot"), name=name), C.q(RIM, "ValueList"))
        etree.SubElement(vl, C.q(RIM, "Value")).text = value
    return q


def find_documents(store, pid) -> list[str]:
    """Every id GetAll answers for the patient: entries, sets, folders and associations."""
    resp = stored_query(store, get_all(pid), RegistryConfig())
    assert resp.get("status") == C.RESPONSE_SUCCESS, etree.tostring(resp)
    return [el.get("id") for el in resp.find(C.q(RIM, "RegistryObjectList"))]


@pytest.fixture
def world(db_url):
    """A registry holding one submission: SS, two DEs, a Folder holding both, every HasMember."""
    pid = new_pid()
    store = make_store(db_url, pid)
    ids = register(store, builder.simple_submission(pid, 2, folder_too=True))
    return store, pid, ids


def test_removing_a_whole_submission_leaves_nothing(world):
    store, pid, ids = world
    assert len(find_documents(store, pid)) == len(ids)
    delete_document_set(store, remove_request(*ids.values()))
    assert count_all(store) == 0
    assert find_documents(store, pid) == []


def test_only_the_named_submission_goes(world):
    store, pid, ids = world
    other = register(store, builder.simple_submission(pid))
    before = set(find_documents(store, pid))
    delete_document_set(store, remove_request(*ids.values()))
    assert set(find_documents(store, pid)) == before - set(ids.values())
    assert set(find_documents(store, pid)) == set(other.values())


def test_a_repeated_object_ref_counts_once(world):
    store, pid, ids = world
    delete_document_set(store, remove_request(*ids.values(), ids["Document01"]))
    assert count_all(store) == 0


def test_unknown_id_is_unresolved_and_nothing_changes(world):
    store, _, ids = world
    before = snapshot(store)
    ghost = "urn:uuid:00000000-0000-4000-8000-000000000001"
    assert refused(store, remove_request(*ids.values(), ghost)) == [(E.UNRESOLVED_REFERENCE, ghost)]
    assert snapshot(store) == before


def test_removing_twice_is_unresolved(world):
    store, _, ids = world
    delete_document_set(store, remove_request(*ids.values()))
    codes = {c for c, _ in refused(store, remove_request(*ids.values()))}
    assert codes == {E.UNRESOLVED_REFERENCE}


def test_submission_set_alone_is_still_referenced(world):
    store, _, ids = world
    before = snapshot(store)
    assert refused(store, remove_request(ids["SubmissionSet01"])) == [(E.REFERENCES_EXIST, ids["SubmissionSet01"])]
    assert snapshot(store) == before


def test_document_entry_still_in_a_folder_is_referenced(world):
    store, _, ids = world
    before = snapshot(store)
    # Its SubmissionSet membership goes too, but the Folder's HasMember still points at it.
    errors = refused(store, remove_request(ids["Document01"], ids["ssde1"]))
    assert (E.REFERENCES_EXIST, ids["Document01"]) in errors
    assert snapshot(store) == before


def test_an_association_referenced_by_another_is_still_referenced(world):
    store, _, ids = world
    # The SubmissionSet's HasMember ssfdde1 records the Folder membership fdde1.
    assert refused(store, remove_request(ids["fdde1"])) == [(E.REFERENCES_EXIST, ids["fdde1"])]


def test_removing_the_last_link_to_a_kept_object_leaves_it_unreferenced(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    ids = register(store, builder.simple_submission(pid))
    before = snapshot(store)
    # The DocumentEntry and its HasMember go; the SubmissionSet would stay with nothing pointing at it.
    errors = refused(store, remove_request(ids["Document01"], ids["ssde1"]))
    assert errors == [(E.UNREFERENCED_OBJECT, ids["SubmissionSet01"])]
    assert snapshot(store) == before


def test_removing_a_membership_record_alone_orphans_the_membership(world):
    store, _, ids = world
    errors = refused(store, remove_request(ids["ssfdde1"]))
    assert errors == [(E.UNREFERENCED_OBJECT, ids["fdde1"])]


def test_every_problem_is_reported_at_once(world):
    store, _, ids = world
    ghost = "urn:uuid:00000000-0000-4000-8000-000000000002"
    assert refused(store, remove_request(ids["SubmissionSet01"], ghost)) == [(E.UNRESOLVED_REFERENCE, ghost)]
    errors = refused(store, remove_request(ids["SubmissionSet01"], ids["fdde2"]))
    assert sorted(errors) == sorted([(E.REFERENCES_EXIST, ids["SubmissionSet01"]),
                                     (E.REFERENCES_EXIST, ids["fdde2"])])


def test_leaving_a_folder_keeps_both_and_touches_the_folder(world):
    store, pid, ids = world
    with store.transaction() as c:
        c.execute(S.folder.update().values(last_update_time="20000101000000"))
    delete_document_set(store, remove_request(ids["fdde1"], ids["ssfdde1"]))
    left = {r.id for r in rows(store, S.association)}
    assert ids["fdde1"] not in left and ids["ssfdde1"] not in left
    assert {ids["Document01"], ids["Folder01"]} <= set(find_documents(store, pid))
    assert rows(store, S.folder)[0].last_update_time != "20000101000000"


def test_a_replaced_entry_cannot_go_while_its_replacement_points_at_it(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    original = register(store, builder.simple_submission(pid))
    replacing = register(store, replacement(pid, original["Document01"]))
    errors = refused(store, remove_request(*original.values()))
    assert errors == [(E.REFERENCES_EXIST, original["Document01"])]
    # The replacement's own submission, RPLC included, can go; the original stays (Deprecated).
    delete_document_set(store, remove_request(*replacing.values()))
    assert set(find_documents(store, pid)) == set(original.values())
    delete_document_set(store, remove_request(*original.values()))
    assert count_all(store) == 0


def test_two_removals_of_the_same_objects_at_once(world):
    store, _, ids = world
    barrier = threading.Barrier(2)
    outcomes = []

    def run():
        barrier.wait()
        try:
            delete_document_set(store, remove_request(*ids.values()))
            outcomes.append("removed")
        except XdsException as exc:
            outcomes.append(frozenset(e.code for e in exc.errors))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # One wins; the other waits for it and then finds nothing left to remove.
    assert sorted(outcomes, key=str) == sorted(["removed", frozenset({E.UNRESOLVED_REFERENCE})], key=str)
    assert count_all(store) == 0


# --- the request's shape (checked before the registry is read) ---------------------------------

def _codes(store, request) -> set[str]:
    return {c for c, _ in refused(store, request)}


def test_empty_object_ref_list(world):
    store, _, _ = world
    assert _codes(store, remove_request()) == {E.REGISTRY_ERROR}
    no_list = etree.Element(C.q(C.NS_LCM, "RemoveObjectsRequest"))
    assert _codes(store, no_list) == {E.REGISTRY_ERROR}


def test_adhoc_query_is_refused(world):
    store, _, ids = world
    before = snapshot(store)
    req = remove_request(*ids.values())
    aq = etree.Element(C.q(RIM, "AdhocQuery"), id=C.SQ_GET_ALL)
    req.insert(0, aq)
    errors = refused(store, req)
    assert errors == [(E.REGISTRY_ERROR, "AdhocQuery")]
    assert snapshot(store) == before


def test_registry_objects_are_refused(world):
    store, pid, ids = world
    req = remove_request(ids["Document01"])
    rol = etree.SubElement(req, C.q(RIM, "RegistryObjectList"))
    rol.append(builder.document_entry(pid))
    assert _codes(store, req) == {E.REGISTRY_ERROR}


def test_other_shapes_are_refused(world):
    store, _, ids = world
    before = snapshot(store)
    partial = remove_request(ids["Document01"])
    partial.set("deletionScope", "urn:oasis:names:tc:ebxml-regrep:DeletionScopeType:DeleteRepositoryItemOnly")
    assert _codes(store, partial) == {E.REGISTRY_ERROR}
    assert _codes(store, remove_request(ids["Document01"], home="urn:oid:1.2.3")) == {E.REGISTRY_ERROR}
    no_id = remove_request()
    etree.SubElement(no_id[0], C.q(RIM, "ObjectRef"))
    assert _codes(store, no_id) == {E.REGISTRY_ERROR}
    assert _codes(store, builder.simple_submission(new_pid())) == {E.REGISTRY_ERROR}
    assert snapshot(store) == before
    explicit = remove_request(*ids.values())
    explicit.set("deletionScope", "urn:oasis:names:tc:ebxml-regrep:DeletionScopeType:DeleteAll")
    delete_document_set(store, explicit)
    assert count_all(store) == 0


# --- over HTTP ---------------------------------------------------------------------------------

def test_delete_document_set_over_http(db_url, tmp_path):
    services = Services(Settings(role="all", port=0, data=str(tmp_path / "data"), db=db_url)).start()
    try:
        store = services.registry.store
        pid = new_pid()
        store.add_patient(pid)
        client = SoapClient(services.url + "/xds/registry")
        reply = client.call(C.ACTION_REGISTER, builder.simple_submission(pid))
        assert reply.body.get("status") == C.RESPONSE_SUCCESS
        # The ids the registry gave (the symbolic ones stayed on this side): SS, DE and their HasMember.
        reply = client.call(C.ACTION_QUERY, get_all(pid))
        given = [el.get("id") for el in reply.body.find(C.q(RIM, "RegistryObjectList"))]
        assert len(given) == 3

        # Any one of the three alone breaks the metadata model.
        reply = client.call(C.ACTION_DELETE, remove_request(given[0]))
        assert reply.envelope.action == C.response_action(C.ACTION_DELETE)
        assert reply.body.tag == C.q(C.NS_RS, "RegistryResponse")
        assert reply.body.get("status") == C.RESPONSE_FAILURE
        codes = {e.get("errorCode") for e in reply.body.iter(C.q(C.NS_RS, "RegistryError"))}
        assert codes <= {E.REFERENCES_EXIST, E.UNREFERENCED_OBJECT} and codes

        reply = client.call(C.ACTION_DELETE, remove_request(*given))
        assert reply.status == 200 and reply.mtom is None
        assert reply.envelope.action == C.response_action(C.ACTION_DELETE)
        assert reply.body.get("status") == C.RESPONSE_SUCCESS
        assert list(reply.body) == []
        reply = client.call(C.ACTION_QUERY, get_all(pid))
        assert len(reply.body.find(C.q(RIM, "RegistryObjectList"))) == 0
    finally:
        services.stop()

