"""Every error code the registry and the repository give about their state, each in its own test over HTTP
against a real all-in-one server, on SQLite and PostgreSQL: the code, a codeContext that names the object (as
the sender named it), and, for the transactions that write, that nothing was stored.

Stateless metadata errors (XDSRegistryMetadataError, XDSRegistryDuplicateUniqueIdInMessage, ...) are
tests/test_validation.py's; ITI-92's own codes (XDSMetadataUpdateOperationError, XDSMetadataIdentifierError,
XDSPatientIDReconciliationError, UnmodifiableMetadataError) are tests/test_restricted_update.py's.
"""
from __future__ import annotations

import hashlib

import pytest
from lxml import etree
from sqlalchemy import select

from node.server import Services
from node.transfer import provide_and_register, retrieve_request
from registry import schema as S
from registry.config import RegistryConfig
from registry.guard import RegistryGuard
from registry.query import stored_query
from xds import builder
from xds import constants as C
from xds import errors as E
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.security.policy import PATIENT, Caller, Rules
from xds.settings import Settings
from tests.helpers import by_unique_id, count_all, entry_id, new_pid, replacement, unique_ids
from tests.test_stored_query_filters import _database, lst, sq
from tests.test_update import message, new_doc_version, status_change

REPO = "1.2.250.1.999.3.1"  # the server's repository, and builder.simple_submission's
SHA_A = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
SHA_B = "a9993e364706816aba3e25717850c26c9cd0d89d"
MAX_RESULTS = 5
APPROVED, DEPRECATED = C.STATUS_APPROVED, C.STATUS_DEPRECATED


class Server:
    def __init__(self, services: Services):
        self.services = services
        self.store = services.registry.store
        self.registry = SoapClient(services.url + "/xds/registry", timeout=60)
        self.repository = SoapClient(services.url + "/xds/repository", timeout=60,
                                     spool_dir=str(services.settings.data))

    def patient(self) -> str:
        pid = new_pid()
        self.store.add_patient(pid)
        return pid

    def state(self) -> tuple[int, int]:
        """Rows in the registry and documents in the repository: a refusal changes neither."""
        return count_all(self.store), self.services.repository.store.count()

    def call(self, action: str, body: etree._Element, repository: bool = False):
        reply = (self.repository if repository else self.registry).call(action, body,
                                                                        use_mtom=action == C.ACTION_RETRIEVE)
        assert reply.status == 200 and reply.envelope.action == C.response_action(action), reply.raw[:800]
        if reply.mtom is not None:
            reply.mtom.cleanup()
        return reply.body

    def register(self, request: etree._Element) -> None:
        body = self.call(C.ACTION_REGISTER, request)
        assert body.get("status") == C.RESPONSE_SUCCESS, etree.tostring(body)[:1500]

    def entry(self, pid: str, folder: bool = False, **doc) -> tuple[str, str]:
        """One DocumentEntry registered by ITI-42: its uniqueId and entryUUID."""
        req = builder.simple_submission(pid, folder_too=folder, doc_kwargs=doc)
        uid = unique_ids(req)["Document01"]
        self.register(req)
        return uid, entry_id(self.store, uid)

    def refused(self, action: str, body: etree._Element, code: str, *named: str, repository: bool = False,
                writes: bool = True) -> E.XdsError:
        """Send; the answer is Failure with errors of this code only, the first one's codeContext naming each of
        named."""
        before = self.state()
        answer = self.call(action, body, repository)
        status, errors = read_response_errors(answer if answer.find(C.q(C.NS_RS, "RegistryErrorList")) is not None
                                              or answer.tag == C.q(C.NS_RS, "RegistryResponse")
                                              else answer.find(C.q(C.NS_RS, "RegistryResponse")))
        errors = [e for e in errors if e.severity == C.SEVERITY_ERROR]
        assert C.last_segment(status) == "Failure", etree.tostring(answer)[:1500]
        assert errors and {e.code for e in errors} == {code}, [(e.code, e.message) for e in errors]
        for n in named:
            assert n in errors[0].message, (n, errors[0].message)
        if writes:
            assert self.state() == before, "a refused request changed what is stored"
        return errors[0]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    """An all-in-one server (registry, repository, ITI-43 routed through the registry) on loopback, whose
    caller is the administrator; LeafClass answers are bounded and extra metadata is not kept."""
    tmp = tmp_path_factory.mktemp(f"state-{request.param}")
    services = Services(Settings(role="all", port=0, data=str(tmp / "data"), db=_database(request.param, tmp),
                                 settle_interval=0, max_query_results=MAX_RESULTS,
                                 keep_extra_metadata=False)).start()
    try:
        yield Server(services)
    finally:
        services.stop()
        services.registry.store.engine.dispose()


def query(query_id: str, *slots: tuple[str, str], return_type: str = "ObjectRef") -> etree._Element:
    return builder.adhoc_query_request(query_id, list(slots), return_type)


def find(pid: str, *extra, return_type: str = "ObjectRef") -> etree._Element:
    return query(C.SQ_FIND_DOCUMENTS, ("$XDSDocumentEntryPatientId", sq(pid)),
                 ("$XDSDocumentEntryStatus", lst(APPROVED)), *extra, return_type=return_type)


def retrieve(uid: str, repo: str = REPO) -> etree._Element:
    return retrieve_request(uid, repo)


# --- XDSUnknownPatientId --------------------------------------------------------------------------------------

def test_unknown_patient_iti42(server):
    stranger = new_pid()
    server.refused(C.ACTION_REGISTER, builder.simple_submission(stranger), E.UNKNOWN_PATIENT_ID,
                   stranger, "SubmissionSet01")


def test_unknown_patient_iti41(server):
    stranger = new_pid()
    req = builder.simple_submission(stranger, register=False)
    pnr, attachments = provide_and_register(req, {"Document01": b"for nobody"})
    before = server.state()
    reply = server.repository.call(C.ACTION_PROVIDE, pnr, attachments=attachments, use_mtom=True)
    status, errors = read_response_errors(reply.body)
    assert C.last_segment(status) == "Failure" and [e.code for e in errors] == [E.UNKNOWN_PATIENT_ID]
    assert stranger in errors[0].message
    assert server.state() == before  # neither the registry nor the repository kept anything


def test_unknown_patient_iti18_under_a_policy_that_knows_patients(server):
    """ITI-18 answers XDSUnknownPatientId where the access policy decides per patient (the DMP rules, for a
    patient's own query); the generic rules answer an unknown patient with an empty list. The DMP caller needs
    a signed assertion, so the query is run as the pipeline would run it, with the guard it would build."""
    stranger = new_pid()
    guard = RegistryGuard(Caller(PATIENT, person=stranger), Rules(dmp=True), server.store)
    answer = stored_query(server.store, find(stranger), RegistryConfig(), guard)
    status, errors = read_response_errors(answer)
    assert C.last_segment(status) == "Failure" and [e.code for e in errors] == [E.UNKNOWN_PATIENT_ID]
    assert stranger in errors[0].message
    assert answer.find(C.q(C.NS_RIM, "RegistryObjectList")) is None or \
        len(answer.find(C.q(C.NS_RIM, "RegistryObjectList"))) == 0
    # Over HTTP with the generic rules: Success, nothing found.
    body = server.call(C.ACTION_QUERY, find(stranger))
    assert body.get("status") == C.RESPONSE_SUCCESS and len(body.find(C.q(C.NS_RIM, "RegistryObjectList"))) == 0


def test_unknown_patient_iti57(server):
    pid, stranger = server.patient(), new_pid()
    uid, v1 = server.entry(pid)
    server.refused(C.ACTION_UPDATE, message(stranger, *new_doc_version(stranger, v1, uid)), E.UNKNOWN_PATIENT_ID,
                   stranger)


# --- XDSPatientIdDoesNotMatch ------------------------------------------------------------------------------------

@pytest.mark.parametrize("relation", [C.ASSOC_RPLC, C.ASSOC_APND, C.ASSOC_XFRM, C.ASSOC_XFRM_RPLC, C.ASSOC_SIGNS],
                         ids=C.last_segment)
def test_relationship_to_another_patients_entry(server, relation):
    p, q = server.patient(), server.patient()
    _, target = server.entry(p)
    server.refused(C.ACTION_REGISTER, replacement(q, target, relation), E.PATIENT_ID_DOES_NOT_MATCH,
                   "a2", target, p, q)
    assert status_of(server, target) == APPROVED


def test_new_entry_of_another_patient_into_an_existing_folder(server):
    p, q = server.patient(), server.patient()
    req = builder.simple_submission(p, folder_too=True)
    server.register(req)
    folder = _folder_id(server, req)
    sub = builder.submit_objects_request([
        builder.submission_set(q), builder.submission_set_marker(),
        builder.document_entry(q, id="NewDoc", hash=SHA_A, size=0, repository_unique_id=REPO),
        builder.association("SubmissionSet01", "NewDoc", id="ss-new"),
        builder.association(folder, "NewDoc", id="fd-new", ss_status=None),
        builder.association("SubmissionSet01", "fd-new", id="ss-fd-new")])
    server.refused(C.ACTION_REGISTER, sub, E.PATIENT_ID_DOES_NOT_MATCH, "fd-new", folder, p, q)


def test_new_folder_holding_another_patients_entry(server):
    p, q = server.patient(), server.patient()
    _, theirs = server.entry(q)
    sub = builder.submit_objects_request([
        builder.submission_set(p), builder.submission_set_marker(),
        builder.folder(p), builder.folder_marker(), builder.association("SubmissionSet01", "Folder01", id="ss-f"),
        builder.association("Folder01", theirs, id="f-theirs", ss_status=None),
        builder.association("SubmissionSet01", "f-theirs", id="ss-f-theirs")])
    server.refused(C.ACTION_REGISTER, sub, E.PATIENT_ID_DOES_NOT_MATCH, "f-theirs", theirs, p, q)


def test_entry_of_another_patient_than_its_submission_set(server):
    p, q = server.patient(), server.patient()
    req = builder.simple_submission(p)
    for ei in req.iter(C.q(C.NS_RIM, "ExternalIdentifier")):
        if ei.get("identificationScheme") == C.DE_PATIENT_ID:
            ei.set("value", q)
    server.refused(C.ACTION_REGISTER, req, E.PATIENT_ID_DOES_NOT_MATCH, "Document01", q)


def test_new_version_moving_a_linked_entry_to_another_patient_iti57(server):
    p, q = server.patient(), server.patient()
    uid, v1 = server.entry(p, folder=True)
    server.refused(C.ACTION_UPDATE, message(q, *new_doc_version(q, v1, uid)), E.PATIENT_ID_DOES_NOT_MATCH,
                   "DocV2", p, q)


def status_of(server: Server, ident: str) -> str:
    with server.store.reading() as c:
        return c.execute(select(S.registry_object.c.status).where(S.registry_object.c.id == ident)).scalar_one()


def _folder_id(server: Server, request: etree._Element) -> str:
    for rp in request.iter(C.q(C.NS_RIM, "RegistryPackage")):
        for ei in rp.findall(C.q(C.NS_RIM, "ExternalIdentifier")):
            if ei.get("identificationScheme") == C.FOLDER_UNIQUE_ID:
                return entry_id(server.store, ei.get("value"))
    raise AssertionError("no Folder in the request")


# --- uniqueIds the registry already holds ------------------------------------------------------------------------

def test_document_unique_id_again_with_another_hash(server):
    pid = server.patient()
    uid, _ = server.entry(pid, hash=SHA_A)
    sub = builder.simple_submission(pid, doc_kwargs={"unique_id": uid, "hash": SHA_B})
    server.refused(C.ACTION_REGISTER, sub, E.NON_IDENTICAL_HASH, "Document01", uid, SHA_A, SHA_B)


def test_document_unique_id_again_with_another_size(server):
    pid = server.patient()
    uid, _ = server.entry(pid, hash=SHA_A, size=0)
    sub = builder.simple_submission(pid, doc_kwargs={"unique_id": uid, "hash": SHA_A, "size": 7})
    server.refused(C.ACTION_REGISTER, sub, E.NON_IDENTICAL_SIZE, "Document01", uid, "7")


def test_document_unique_id_again_identical_is_registered_again(server):
    """The same document registered again (same uniqueId, hash and size) is accepted: NIST kit test 12004."""
    pid = server.patient()
    uid, _ = server.entry(pid, hash=SHA_A, size=0)
    server.register(builder.simple_submission(pid, doc_kwargs={"unique_id": uid, "hash": SHA_A.upper(), "size": 0}))
    assert len(by_unique_id(server.store, uid)) == 2


def test_document_stored_again_with_other_bytes_iti41(server):
    pid = server.patient()
    req = builder.simple_submission(pid, register=False)
    uid = unique_ids(req)["Document01"]
    pnr, attachments = provide_and_register(req, {"Document01": b"first"})
    reply = server.repository.call(C.ACTION_PROVIDE, pnr, attachments=attachments, use_mtom=True)
    assert reply.body.get("status") == C.RESPONSE_SUCCESS, reply.raw[:800]
    again = builder.simple_submission(pid, register=False, doc_kwargs={"unique_id": uid})
    pnr, attachments = provide_and_register(again, {"Document01": b"second"})
    before = server.state()
    reply = server.repository.call(C.ACTION_PROVIDE, pnr, attachments=attachments, use_mtom=True)
    status, errors = read_response_errors(reply.body)
    assert C.last_segment(status) == "Failure" and [e.code for e in errors] == [E.NON_IDENTICAL_HASH]
    assert uid in errors[0].message and hashlib.sha1(b"second").hexdigest() in errors[0].message
    assert server.state() == before


@pytest.mark.parametrize("holder, reuser", [("SS", "SS"), ("FD", "FD"), ("FD", "DE"), ("DE", "SS")])
def test_unique_id_held_by_another_object(server, holder, reuser):
    pid = server.patient()
    uid = builder.new_oid()
    first = {"SS": lambda: builder.simple_submission(pid, ss_kwargs={"unique_id": uid}),
             "FD": lambda: _with_folder_uid(builder.simple_submission(pid, folder_too=True), uid),
             "DE": lambda: builder.simple_submission(pid, doc_kwargs={"unique_id": uid})}[holder]()
    server.register(first)
    second = {"SS": lambda: builder.simple_submission(pid, ss_kwargs={"unique_id": uid}),
              "FD": lambda: _with_folder_uid(builder.simple_submission(pid, folder_too=True), uid),
              "DE": lambda: builder.simple_submission(pid, doc_kwargs={"unique_id": uid})}[reuser]()
    sent_as = {"SS": "SubmissionSet01", "FD": "Folder01", "DE": "Document01"}[reuser]
    server.refused(C.ACTION_REGISTER, second, E.DUPLICATE_UNIQUE_ID_IN_REGISTRY, sent_as, uid)


def _with_folder_uid(request: etree._Element, uid: str) -> etree._Element:
    for ei in request.iter(C.q(C.NS_RIM, "ExternalIdentifier")):
        if ei.get("identificationScheme") == C.FOLDER_UNIQUE_ID:
            ei.set("value", uid)
    return request


# --- references -------------------------------------------------------------------------------------------------

def test_association_to_an_unknown_object_iti42(server):
    pid = server.patient()
    ghost = "urn:uuid:0badbeef-0000-4000-8000-000000000042"
    server.refused(C.ACTION_REGISTER, replacement(pid, ghost), E.UNRESOLVED_REFERENCE, "a2", ghost)


def test_removal_of_an_unknown_object_iti62(server):
    ghost = "urn:uuid:0badbeef-0000-4000-8000-000000000062"
    server.refused(C.ACTION_DELETE, builder.remove_objects_request(ghost), E.UNRESOLVED_REFERENCE, ghost)


def test_removal_leaving_references_iti62(server):
    pid = server.patient()
    req = builder.simple_submission(pid)
    server.register(req)
    ss = next(o.id for o in _objects_of(server, pid) if o.kind == "SS")
    server.refused(C.ACTION_DELETE, builder.remove_objects_request(ss), E.REFERENCES_EXIST, ss)


def test_removal_leaving_an_unreferenced_object_iti62(server):
    pid = server.patient()
    server.register(builder.simple_submission(pid))
    with server.store.reading() as c:
        link = c.execute(select(S.association.c.id).join(S.registry_object,
                                                         S.registry_object.c.id == S.association.c.target)
                         .where(S.registry_object.c.patient_id == pid)).scalar_one()
    server.refused(C.ACTION_DELETE, builder.remove_objects_request(link), E.UNREFERENCED_OBJECT, link)


def _objects_of(server: Server, pid: str) -> list:
    with server.store.reading() as c:
        return c.execute(select(S.registry_object).where(S.registry_object.c.patient_id == pid)).all()


# --- XDSRegistryDeprecatedDocumentError --------------------------------------------------------------------------

@pytest.mark.parametrize("relation", [C.ASSOC_RPLC, C.ASSOC_APND, C.ASSOC_XFRM], ids=C.last_segment)
def test_relationship_to_a_deprecated_entry(server, relation):
    pid = server.patient()
    old_uid, old = server.entry(pid)
    server.register(replacement(pid, old))  # old is Deprecated now
    server.refused(C.ACTION_REGISTER, replacement(pid, old, relation), E.REGISTRY_DEPRECATED_DOCUMENT,
                   "a2", old, old_uid)


# --- ITI-57 versions ---------------------------------------------------------------------------------------------

def test_wrong_previous_version_iti57(server):
    pid = server.patient()
    uid, v1 = server.entry(pid)
    server.refused(C.ACTION_UPDATE, message(pid, *new_doc_version(pid, v1, uid, previous="2")),
                   E.METADATA_VERSION_ERROR, "DocV2", v1)


def test_unknown_logical_id_iti57(server):
    pid = server.patient()
    uid, _ = server.entry(pid)
    lid = "urn:uuid:0badbeef-0000-4000-8000-000000000057"
    server.refused(C.ACTION_UPDATE, message(pid, *new_doc_version(pid, lid, uid)), E.METADATA_VERSION_ERROR,
                   "DocV2", lid)


def test_update_of_a_deprecated_entry_iti57(server):
    pid = server.patient()
    uid, v1 = server.entry(pid)
    server.register(replacement(pid, v1))
    server.refused(C.ACTION_UPDATE, message(pid, *new_doc_version(pid, v1, uid)), E.METADATA_UPDATE_ERROR,
                   "DocV2", v1, "Deprecated")


def test_status_change_from_a_status_it_does_not_have_iti57(server):
    pid = server.patient()
    _, v1 = server.entry(pid)
    server.refused(C.ACTION_UPDATE, message(pid, status_change(v1, DEPRECATED, APPROVED)), E.METADATA_UPDATE_ERROR,
                   v1)


# --- ITI-43 and ITI-86 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["repository", "registry"])
def test_retrieve_of_an_unknown_unique_id(server, endpoint):
    uid = builder.new_oid()
    err = server.refused(C.ACTION_RETRIEVE, retrieve(uid), E.DOCUMENT_UNIQUE_ID_ERROR, uid,
                         repository=endpoint == "repository", writes=False)
    assert err.location == uid


@pytest.mark.parametrize("endpoint", ["repository", "registry"])
def test_retrieve_from_an_unknown_repository(server, endpoint):
    uid = builder.new_oid()
    err = server.refused(C.ACTION_RETRIEVE, retrieve(uid, "1.2.250.1.999.3.404"), E.UNKNOWN_REPOSITORY_ID,
                         "1.2.250.1.999.3.404", uid, repository=endpoint == "repository", writes=False)
    assert err.location == "1.2.250.1.999.3.404"


def test_remove_documents_unknown_unique_id_and_repository_iti86(server):
    uid = builder.new_oid()
    server.refused(C.ACTION_REMOVE_DOCUMENTS, builder.remove_documents_request((REPO, uid)),
                   E.DOCUMENT_UNIQUE_ID_ERROR, uid, repository=True)
    server.refused(C.ACTION_REMOVE_DOCUMENTS, builder.remove_documents_request(("1.2.250.1.999.3.404", uid)),
                   E.UNKNOWN_REPOSITORY_ID, "1.2.250.1.999.3.404", repository=True)


# --- ITI-18 -----------------------------------------------------------------------------------------------------

def test_unknown_stored_query(server):
    qid = "urn:uuid:0badbeef-0000-4000-8000-000000000018"
    err = server.refused(C.ACTION_QUERY, query(qid, ("$XDSDocumentEntryStatus", lst(APPROVED))),
                         E.UNKNOWN_STORED_QUERY, qid, writes=False)
    assert err.location == qid


def test_missing_required_parameter(server):
    err = server.refused(C.ACTION_QUERY, query(C.SQ_FIND_DOCUMENTS, ("$XDSDocumentEntryPatientId", sq(new_pid()))),
                         E.STORED_QUERY_MISSING_PARAM, "$XDSDocumentEntryStatus", writes=False)
    assert err.location == "$XDSDocumentEntryStatus"


@pytest.mark.parametrize("case", ["two-slots", "two-values", "two-of-a-choice"])
def test_parameter_given_too_often(server, case):
    p1, p2 = new_pid(), new_pid()
    pid = "$XDSDocumentEntryPatientId"
    status = ("$XDSDocumentEntryStatus", lst(APPROVED))
    body, named = {
        "two-slots": (query(C.SQ_FIND_DOCUMENTS, (pid, sq(p1)), (pid, sq(p2)), status), pid),
        "two-values": (query(C.SQ_FIND_DOCUMENTS, (pid, lst(p1, p2)), status), pid),
        "two-of-a-choice": (query(C.SQ_GET_DOCUMENTS, ("$XDSDocumentEntryEntryUUID", lst("urn:uuid:" + "1" * 32)),
                                  ("$XDSDocumentEntryUniqueId", lst("1.2.3"))), "$XDSDocumentEntryUniqueId"),
    }[case]
    server.refused(C.ACTION_QUERY, body, E.STORED_QUERY_PARAM_NUMBER, named, writes=False)


def test_too_many_results(server):
    pid = server.patient()
    server.register(builder.simple_submission(pid, MAX_RESULTS + 1))
    server.refused(C.ACTION_QUERY, find(pid, return_type="LeafClass"), E.TOO_MANY_RESULTS, str(MAX_RESULTS),
                   writes=False)
    body = server.call(C.ACTION_QUERY, find(pid))  # ObjectRef answers are not bounded
    assert body.get("status") == C.RESPONSE_SUCCESS
    assert len(body.find(C.q(C.NS_RIM, "RegistryObjectList"))) == MAX_RESULTS + 1


def test_leaf_class_answer_of_two_patients(server):
    p, q = server.patient(), server.patient()
    (_, mine), (_, theirs) = server.entry(p), server.entry(q)
    body = query(C.SQ_GET_DOCUMENTS, ("$XDSDocumentEntryEntryUUID", lst(mine, theirs)), return_type="LeafClass")
    server.refused(C.ACTION_QUERY, body, E.RESULT_NOT_SINGLE_PATIENT, "2 patients", writes=False)
    ok = server.call(C.ACTION_QUERY, query(C.SQ_GET_DOCUMENTS, ("$XDSDocumentEntryEntryUUID", lst(mine, theirs))))
    assert ok.get("status") == C.RESPONSE_SUCCESS


# --- XDSExtraMetadataNotSaved (a warning) ---------------------------------------------------------------------------

def test_extra_metadata_not_saved(server):
    pid = server.patient()
    req = builder.simple_submission(pid, doc_kwargs={"extra_slots": {"urn:example:weight": ["12"]}})
    uid = unique_ids(req)["Document01"]
    body = server.call(C.ACTION_REGISTER, req)
    status, errors = read_response_errors(body)
    assert status == C.RESPONSE_SUCCESS
    assert [(e.code, e.severity) for e in errors] == [(E.EXTRA_METADATA_NOT_SAVED, C.SEVERITY_WARNING)]
    assert "urn:example:weight" in errors[0].message and "Document01" in errors[0].message
    [row] = by_unique_id(server.store, uid)
    assert "urn:example:weight" not in row.xml
