"""ITI-51 Multi-Patient Stored Query over HTTP against a real server, on SQLite and PostgreSQL.

FindDocumentsForMultiplePatients and FindFoldersForMultiplePatients are ITI-18's FindDocuments and
FindFolders over a list of patients (or, without a list, every patient): the same parameters, filters and
access policy. Without a patient list the query is refused to anyone but an administrator (checked on a
mutual-TLS registry where a caller that is not an administrator exists). The audit record has one
patient participant object per patient named.
"""
from __future__ import annotations

import pytest
from lxml import etree
from sqlalchemy import select

from node.server import Services
from registry import schema as S
from xds import builder
from xds import constants as C
from xds import errors as E
from xds.audit import facts as F
from xds.audit import records as R
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.settings import Settings
from xds.tls import TlsFiles, client_context
from tests.certs import Authority
from tests.helpers import new_pid
from tests.test_query import code, doc

RIM = C.NS_RIM
APPROVED, DEPRECATED = C.STATUS_APPROVED, C.STATUS_DEPRECATED
MPQ_DOCS, MPQ_FOLDERS = C.SQ_FIND_DOCUMENTS_FOR_MULTIPLE_PATIENTS, C.SQ_FIND_FOLDERS_FOR_MULTIPLE_PATIENTS
EV1, EV2 = code("EV1", "1.2.3.9"), code("EV2", "1.2.3.9")
FC1, FC2 = code("FC-1", "1.2.3.8"), code("FC-2", "1.2.3.8")


def sq(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def lst(*vs: str) -> str:
    return "(" + ", ".join(sq(v) for v in vs) + ")"


def codes(*cs: str, scheme: str = "2.16.840.1.113883.6.1") -> str:
    return lst(*(f"{c}^^{scheme}" for c in cs))


def submission(pid: str, docs: list, folders: list) -> etree._Element:
    items = [builder.submission_set(pid), builder.submission_set_marker()] + docs
    for d in docs:
        items.append(builder.association("SubmissionSet01", d.get("id"), id=f"hm-{d.get('id')}"))
    for f in folders:
        items += [f, builder.folder_marker(f.get("id")),
                  builder.association("SubmissionSet01", f.get("id"), id=f"hm-{f.get('id')}", ss_status=None)]
    return builder.submit_objects_request(items)


class Data:
    """Three patients. P1: D1 (class A, EV1, HF-1, 2020), D2 (class B, EV2, HF-2, 2022, Deprecated), folder F1
    (FC-1). P2: D3 (class A, EV2, HF-1, 2021), folder F2 (FC-1, FC-2). P3: D4 (class A, EV2, HF-2, 2023)."""

    def __init__(self, services: Services, call):
        self.p1, self.p2, self.p3 = new_pid(), new_pid(), new_pid()
        self.uid = {n: builder.new_oid() for n in ("D1", "D2", "D3", "D4", "F1", "F2")}
        store = services.registry.store
        for p in (self.p1, self.p2, self.p3):
            store.add_patient(p)
        subs = [
            submission(self.p1, [doc(self.p1, "D1", self.uid["D1"], klass="CL-A", event=(EV1,), hcft="HF-1",
                                     created="20200101120000"),
                                 doc(self.p1, "D2", self.uid["D2"], klass="CL-B", event=(EV2,), hcft="HF-2",
                                     created="20220101120000")],
                       [builder.folder(self.p1, id="F1", unique_id=self.uid["F1"], codes=[FC1])]),
            submission(self.p2, [doc(self.p2, "D3", self.uid["D3"], klass="CL-A", event=(EV2,), hcft="HF-1",
                                     created="20210601120000")],
                       [builder.folder(self.p2, id="F2", unique_id=self.uid["F2"], codes=[FC1, FC2])]),
            submission(self.p3, [doc(self.p3, "D4", self.uid["D4"], klass="CL-A", event=(EV2,), hcft="HF-2",
                                     created="20230101120000")], []),
        ]
        for sub in subs:
            reply = call(C.ACTION_REGISTER, sub)
            assert reply.body.get("status") == C.RESPONSE_SUCCESS, reply.raw[:800]
        O = S.registry_object
        with store.reading() as conn:
            rows = conn.execute(select(O.c.id, O.c.unique_id).where(O.c.unique_id.in_(list(self.uid.values())))).all()
        back = {u: n for n, u in self.uid.items()}
        self.id = {back[r.unique_id]: r.id for r in rows}
        assert len(self.id) == 6, self.id
        self.name = {i: n for n, i in self.id.items()}
        with store.transaction() as conn:
            store.set_status(conn, [self.id["D2"]], DEPRECATED)


@pytest.fixture
def world(db_url, tmp_path):
    """An all-in-one server with security none on loopback: the caller is the administrator."""
    services = Services(Settings(role="all", port=0, data=str(tmp_path / "data"), db=db_url,
                                 settle_interval=0)).start()
    client = SoapClient(services.url + "/xds/registry")
    data = Data(services, client.call)
    yield services, client, data
    services.stop()


class Answer:
    def __init__(self, reply):
        self.reply = reply
        self.body = reply.body
        assert self.body.tag == C.q(C.NS_QUERY, "AdhocQueryResponse"), reply.raw[:600]
        status, errors = read_response_errors(self.body)
        self.status = C.last_segment(status)
        self.errors = [(e.code, e.message) for e in errors if e.severity != C.SEVERITY_WARNING]
        self.codes = [c for c, _ in self.errors]
        objects = self.body.find(C.q(RIM, "RegistryObjectList"))
        self.items = list(objects) if objects is not None else []

    @property
    def ids(self) -> list[str]:
        return [el.get("id") for el in self.items]


def ask(client, query_id: str, slots, return_type="ObjectRef", action=C.ACTION_MPQ) -> Answer:
    return Answer(client.call(action, builder.adhoc_query_request(query_id, slots, return_type)))


def names(data: Data, answer: Answer) -> set[str]:
    return {data.name.get(i, i) for i in answer.ids}


def docs_query(client, patients=None, *extra, statuses=(APPROVED,), return_type="ObjectRef", klass=("CL-A", "CL-B")):
    slots = [("$XDSDocumentEntryStatus", lst(*statuses))]
    if patients is not None:
        slots.append(("$XDSDocumentEntryPatientId", lst(*patients)))
    if klass:
        slots.append(("$XDSDocumentEntryClassCode", codes(*klass)))
    return ask(client, MPQ_DOCS, slots + list(extra), return_type)


# --- FindDocumentsForMultiplePatients ---------------------------------------------------------------

def test_two_patients_documents_found_together(world):
    _, client, d = world
    a = docs_query(client, [d.p1, d.p2])
    assert a.status == "Success", a.errors
    assert names(d, a) == {"D1", "D3"}                      # D2 is Deprecated, D4 is P3's
    assert {el.tag for el in a.items} == {C.q(RIM, "ObjectRef")}
    assert a.reply.envelope.action == C.response_action(C.ACTION_MPQ)
    a = docs_query(client, [d.p1, d.p2], statuses=(APPROVED, DEPRECATED))
    assert names(d, a) == {"D1", "D2", "D3"}


def test_one_patient_list(world):
    _, client, d = world
    assert names(d, docs_query(client, [d.p2])) == {"D3"}


@pytest.mark.parametrize("extra,expected", [
    (("$XDSDocumentEntryEventCodeList", codes("EV2", scheme="1.2.3.9")), {"D3"}),
    (("$XDSDocumentEntryHealthcareFacilityTypeCode", codes("HF-1")), {"D1", "D3"}),
    (("$XDSDocumentEntryCreationTimeFrom", "20210101"), {"D3"}),
    (("$XDSDocumentEntryCreationTimeTo", "20210101"), {"D1"}),
    (("$XDSDocumentEntryTypeCode", codes("TY-1")), {"D1", "D3"}),
    (("$XDSDocumentEntryTypeCode", codes("TY-9")), set()),
    (("$XDSDocumentEntryAuthorPerson", lst("%Smith%")), {"D1", "D3"}),
])
def test_filters_apply(world, extra, expected):
    _, client, d = world
    a = docs_query(client, [d.p1, d.p2, d.p3], extra, klass=("CL-A",) if "CreationTime" in extra[0] else ("CL-A", "CL-B"))
    assert a.status == "Success", a.errors
    assert names(d, a) - {"D4"} == expected


def test_class_code_only_and_event_code_only(world):
    _, client, d = world
    assert names(d, docs_query(client, [d.p1, d.p2], klass=("CL-B",), statuses=(APPROVED, DEPRECATED))) == {"D2"}
    a = ask(client, MPQ_DOCS, [("$XDSDocumentEntryPatientId", lst(d.p1, d.p2)),
                               ("$XDSDocumentEntryEventCodeList", codes("EV1", "EV2", scheme="1.2.3.9")),
                               ("$XDSDocumentEntryStatus", lst(APPROVED))])
    assert names(d, a) == {"D1", "D3"}


def test_leaf_class_holds_several_patients(world):
    _, client, d = world
    a = docs_query(client, [d.p1, d.p2], return_type="LeafClass")
    assert a.status == "Success", a.errors                  # no XDSResultNotSinglePatient: that is ITI-18's
    assert {el.tag for el in a.items} == {C.q(RIM, "ExtrinsicObject")}
    assert names(d, a) == {"D1", "D3"}
    assert F.patients_of(a.items) == {d.p1, d.p2}


def test_a_list_with_an_unknown_patient(world):
    _, client, d = world
    a = docs_query(client, [d.p1, "NOBODY^^^&1.2.250.1.213.1.4.10&ISO"])
    assert a.status == "Success", a.errors
    assert names(d, a) == {"D1"}


def test_no_patient_list_is_every_patient_for_the_administrator(world):
    _, client, d = world
    a = docs_query(client, None, klass=("CL-A",))
    assert a.status == "Success", a.errors
    assert names(d, a) >= {"D1", "D3", "D4"}                # other tests' patients may add theirs
    assert "D2" not in names(d, a)


def test_iti18_find_documents_is_unchanged(world):
    _, client, d = world
    a = ask(client, C.SQ_FIND_DOCUMENTS, [("$XDSDocumentEntryPatientId", sq(d.p1)),
                                          ("$XDSDocumentEntryStatus", lst(APPROVED))], action=C.ACTION_QUERY)
    assert names(d, a) == {"D1"}


# --- FindFoldersForMultiplePatients -------------------------------------------------------------------

def test_folders_of_two_patients(world):
    _, client, d = world
    a = ask(client, MPQ_FOLDERS, [("$XDSFolderPatientId", lst(d.p1, d.p2)), ("$XDSFolderStatus", lst(APPROVED)),
                                  ("$XDSFolderCodeList", codes("FC-1", scheme="1.2.3.8"))])
    assert a.status == "Success", a.errors
    assert names(d, a) == {"F1", "F2"}
    a = ask(client, MPQ_FOLDERS, [("$XDSFolderPatientId", lst(d.p1, d.p2)), ("$XDSFolderStatus", lst(APPROVED)),
                                  ("$XDSFolderCodeList", codes("FC-2", scheme="1.2.3.8"))], "LeafClass")
    assert [el.tag for el in a.items] == [C.q(RIM, "RegistryPackage")]
    assert names(d, a) == {"F2"}


def test_folders_without_list_for_the_administrator(world):
    _, client, d = world
    a = ask(client, MPQ_FOLDERS, [("$XDSFolderStatus", lst(APPROVED)),
                                  ("$XDSFolderCodeList", codes("FC-1", scheme="1.2.3.8"))])
    assert a.status == "Success", a.errors
    assert names(d, a) >= {"F1", "F2"}


# --- errors --------------------------------------------------------------------------------------------

def test_no_code_parameter_is_refused(world):
    """The NIST kit's 12364/nothing: status alone (no patient, no class, event or facility code)."""
    _, client, d = world
    for patients in (None, [d.p1]):
        a = docs_query(client, patients, klass=())
        assert a.status == "Failure"
        assert a.codes == [E.STORED_QUERY_MISSING_PARAM]
        assert "$XDSDocumentEntryClassCode" in a.errors[0][1]


def test_required_parameters(world):
    _, client, d = world
    a = ask(client, MPQ_DOCS, [("$XDSDocumentEntryPatientId", lst(d.p1)),
                               ("$XDSDocumentEntryClassCode", codes("CL-A"))])
    assert a.codes == [E.STORED_QUERY_MISSING_PARAM]
    assert "$XDSDocumentEntryStatus" in a.errors[0][1]
    a = ask(client, MPQ_FOLDERS, [("$XDSFolderPatientId", lst(d.p1)), ("$XDSFolderStatus", lst(APPROVED))])
    assert a.codes == [E.STORED_QUERY_MISSING_PARAM]
    assert "$XDSFolderCodeList" in a.errors[0][1]


def test_query_ids_belong_to_their_action(world):
    _, client, d = world
    a = ask(client, C.SQ_FIND_DOCUMENTS, [("$XDSDocumentEntryPatientId", sq(d.p1)),
                                          ("$XDSDocumentEntryStatus", lst(APPROVED))])
    assert a.status == "Failure" and a.codes == [E.UNKNOWN_STORED_QUERY]
    assert C.ACTION_QUERY in a.errors[0][1]
    a = ask(client, MPQ_DOCS, [("$XDSDocumentEntryPatientId", lst(d.p1)), ("$XDSDocumentEntryStatus", lst(APPROVED)),
                               ("$XDSDocumentEntryClassCode", codes("CL-A"))], action=C.ACTION_QUERY)
    assert a.status == "Failure" and a.codes == [E.UNKNOWN_STORED_QUERY]
    assert C.ACTION_MPQ in a.errors[0][1]
    a = ask(client, "urn:uuid:00000000-0000-0000-0000-000000000051", [("$XDSDocumentEntryStatus", lst(APPROVED))])
    assert a.codes == [E.UNKNOWN_STORED_QUERY]


def test_malformed_patient_values(world):
    _, client, d = world
    a = docs_query(client, None, ("$XDSDocumentEntryPatientId", f"({d.p1})"))   # not quoted
    assert a.status == "Failure" and a.codes == [E.REGISTRY_ERROR]
    a = docs_query(client, ["not a cx"])
    assert a.status == "Failure" and a.codes == [E.REGISTRY_ERROR]
    assert "CX" in a.errors[0][1]
    a = ask(client, MPQ_DOCS, [("$XDSDocumentEntryPatientId", lst(d.p1)), ("$XDSDocumentEntryPatientId", lst(d.p2)),
                               ("$XDSDocumentEntryStatus", lst(APPROVED)), ("$XDSDocumentEntryClassCode", codes("CL-A"))])
    assert a.codes == [E.STORED_QUERY_PARAM_NUMBER]


def test_too_many_results_for_leaf_class(db_url, tmp_path):
    services = Services(Settings(role="all", port=0, data=str(tmp_path / "data"), db=db_url, settle_interval=0,
                                 max_query_results=1)).start()
    try:
        client = SoapClient(services.url + "/xds/registry")
        d = Data(services, client.call)
        a = docs_query(client, [d.p1, d.p2], return_type="LeafClass")
        assert a.status == "Failure" and a.codes == [E.TOO_MANY_RESULTS]
        assert names(d, docs_query(client, [d.p1, d.p2])) == {"D1", "D3"}   # ObjectRef is not bounded
    finally:
        services.stop()


# --- the audit record ------------------------------------------------------------------------------------

def test_audit_record_names_each_patient(world):
    services, client, d = world
    rows = services.auditor.store.records(0, 1000000)
    after = rows[-1][0] if rows else 0
    assert docs_query(client, [d.p1, d.p2]).status == "Success"
    records = [etree.fromstring(R.render(R.from_stored(stored, seq), "test"))
               for seq, stored, _, _ in services.auditor.store.records(after, 1000)]
    mpq = [r for r in records if r.find("EventIdentification/EventTypeCode").get("csd-code") == "ITI-51"]
    assert len(mpq) == 1
    rec = mpq[0]
    ident = rec.find("EventIdentification")
    assert ident.get("EventActionCode") == "E" and ident.find("EventID").get("csd-code") == "110112"
    patients = [o.get("ParticipantObjectID") for o in rec.iterfind("ParticipantObjectIdentification")
                if o.get("ParticipantObjectTypeCodeRole") == "1"]
    assert sorted(patients) == sorted([d.p1, d.p2])
    query = [o for o in rec.iterfind("ParticipantObjectIdentification")
             if o.get("ParticipantObjectTypeCodeRole") == "24"]
    assert len(query) == 1 and query[0].get("ParticipantObjectID") == MPQ_DOCS
    assert query[0].find("ParticipantObjectIDTypeCode").get("csd-code") == "ITI-51"


# --- who may ask without a patient list (mutual TLS: a system caller and an administrator) -------------------

def dn(cn: str) -> str:
    return f"O=XDS test,CN={cn}"


@pytest.fixture(scope="module")
def tls_world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpq-tls")
    ca = Authority(str(folder))
    certs = {n: ca.issue(n) for n in ("registry", "consumer", "admin")}
    cert, key = certs["registry"]
    services = Services(Settings(role="all", port=0, data=str(folder / "data"), settle_interval=0, tls_cert=cert,
                                 tls_key=key, tls_ca=ca.path, admin_subjects=[dn("admin")])).start()

    def client(who):
        c, k = certs[who]
        return SoapClient(services.url + "/xds/registry", 30, client_context(TlsFiles(c, k, ca.path)))

    data = Data(services, client("admin").call)
    yield services, client, data
    services.stop()


def test_no_patient_list_refused_to_a_caller_that_is_not_administrator(tls_world):
    _, client, d = tls_world
    a = docs_query(client("consumer"), None, klass=("CL-A",))
    assert a.status == "Failure" and a.codes == [E.REGISTRY_ERROR]
    assert "administrator" in a.errors[0][1]
    assert a.items == []
    a = ask(client("consumer"), MPQ_FOLDERS, [("$XDSFolderStatus", lst(APPROVED)),
                                              ("$XDSFolderCodeList", codes("FC-1", scheme="1.2.3.8"))])
    assert a.status == "Failure" and a.codes == [E.REGISTRY_ERROR]


def test_the_same_caller_with_a_patient_list_succeeds(tls_world):
    _, client, d = tls_world
    a = docs_query(client("consumer"), [d.p1, d.p2], klass=("CL-A",))
    assert a.status == "Success", a.errors
    assert names(d, a) == {"D1", "D3"}


def test_the_administrator_without_a_patient_list_succeeds(tls_world):
    _, client, d = tls_world
    a = docs_query(client("admin"), None, klass=("CL-A",))
    assert a.status == "Success", a.errors
    assert names(d, a) == {"D1", "D3", "D4"}


# --- the DMP policy, patient by patient (in process: the guard the pipeline would hand the handler) ---------

def test_dmp_policy_applies_to_each_patient_of_the_list(db_url, tmp_path):
    """Under the DMP rules a patient sees its own record and nobody else's: asking for two patients answers
    the caller's own documents only (the scope's per-patient conditions), and an unknown patient in the list
    refuses the whole query with ITI-18's answer for that patient."""
    from registry.config import RegistryConfig
    from registry.guard import RegistryGuard
    from registry.query import stored_query
    from xds.security.policy import PATIENT, Caller, Rules

    services = Services(Settings(role="all", port=0, data=str(tmp_path / "data"), db=db_url,
                                 settle_interval=0)).start()
    try:
        client = SoapClient(services.url + "/xds/registry")
        d = Data(services, client.call)
        store = services.registry.store
        guard = RegistryGuard(Caller(PATIENT, person=d.p1), Rules(dmp=True), store)

        def run(patients, return_type="ObjectRef"):
            slots = [("$XDSDocumentEntryStatus", lst(APPROVED)), ("$XDSDocumentEntryClassCode", codes("CL-A"))]
            if patients is not None:
                slots.append(("$XDSDocumentEntryPatientId", lst(*patients)))
            request = builder.adhoc_query_request(MPQ_DOCS, slots, return_type)
            body = stored_query(store, request, RegistryConfig(), guard, "ITI-51")
            status, errors = read_response_errors(body)
            objects = body.find(C.q(RIM, "RegistryObjectList"))
            ids = [el.get("id") for el in objects] if objects is not None else []
            return C.last_segment(status), [e.code for e in errors], {d.name.get(i, i) for i in ids}

        assert run([d.p1, d.p2]) == ("Success", [], {"D1"})
        assert run([d.p1, d.p2], "LeafClass") == ("Success", [], {"D1"})
        assert run([d.p1]) == ("Success", [], {"D1"})
        assert run([d.p2]) == ("Success", [], set())
        status, errors, found = run([d.p1, "NOBODY^^^&1.2.250.1.213.1.4.10&ISO"])
        assert (status, errors, found) == ("Failure", [E.UNKNOWN_PATIENT_ID], set())
        status, errors, found = run(None)
        assert (status, errors, found) == ("Failure", [E.REGISTRY_ERROR], set())
    finally:
        services.stop()


# --- the parameter tables -------------------------------------------------------------------------------------

def test_parameters_are_parsed_by_the_iti18_parser():
    from registry.query.params import MPQ_QUERIES, QUERIES, RawSlot, parse_params
    from xds import hl7

    assert len(QUERIES) == 14 and set(MPQ_QUERIES) == {MPQ_DOCS, MPQ_FOLDERS}
    p1, p2 = "A1^^^&1.2.3&ISO", "A2^^^&1.2.3&ISO"
    params = parse_params(MPQ_DOCS, [RawSlot("$XDSDocumentEntryPatientId", [f"('{p1}',", f"'{p2}')"]),
                                     RawSlot("$XDSDocumentEntryStatus", [lst(APPROVED)]),
                                     RawSlot("$XDSDocumentEntryEventCodeList", [codes("E1", scheme="1.2")]),
                                     RawSlot("$XDSDocumentEntryEventCodeList", [codes("E2", scheme="1.2")])],
                          transaction="ITI-51")
    assert params.get("$XDSDocumentEntryPatientId") == [hl7.patient_key(p1), hl7.patient_key(p2)]
    assert params.get("$XDSDocumentEntryEventCodeList") == [["E1^^1.2"], ["E2^^1.2"]]    # AND of ORs, as ITI-18
    # a single quoted patient without parentheses is a list of one
    params = parse_params(MPQ_FOLDERS, [RawSlot("$XDSFolderPatientId", [sq(p1)]),
                                        RawSlot("$XDSFolderStatus", [lst(APPROVED)]),
                                        RawSlot("$XDSFolderCodeList", [codes("F", scheme="1.2")])], transaction="ITI-51")
    assert params.get("$XDSFolderPatientId") == [hl7.patient_key(p1)]
