"""Every ITI-18 stored query and each of its parameters (ITI TF-2a 3.18.4.1.2.3.7), over HTTP against a real
server, on SQLite and PostgreSQL.

The NIST kit catches most filters with one test each, and some not at all (its only GetAll asks for both
statuses, so a GetAll that ignores $XDSDocumentEntryStatus passes it). Here one fixture set, registered once
per database through ITI-42, holds entries that differ in exactly one attribute at a time, and a table of
(query, parameters, expected objects) says what each filter keeps. Every row is asked twice, for ObjectRef and
for LeafClass: both answers name the same objects, ObjectRefs in one, the objects themselves in the other.

The fixture set, patient P unless said otherwise (stable entries with "base" codes CL-A, N, FMT-1, TY-1, PS-1,
HF-1 and author 123^Smith^John unless said otherwise):
  SS1 (submitted 20240101100000, sourceId 1.2.3.7, author Smith, contentType CT-1):
    D1 events EV1+EV2, created 20200101120000, service 20200101-20200105, ref R1: replaced by D5 (Deprecated)
    D2 CL-B, R, EV1, FMT-2/TY-2/PS-2/HF-2, created 20210615, service 2021-2022, author 456^Doe^Jane, ref R2
    D3 confidentiality N and R, created 20220101, author 457^Dot^Jane, refs R1 and R3
    D4 created 20230101, made On-Demand in the index (ITI-61 is another transaction)
    F1 (FC-1, lastUpdateTime 20240301100000) holding D1 and D2
  SS2 (20240301100000, 1.2.3.8, author 999^Other^Ann, CT-2):
    D5 RPLC D1 (so the registry adds it to F1), EV2, created 20230601, service 202306-20230610
    D6 APND D2, CL-C, EV1+EV3, FMT-3/TY-3/PS-3/HF-3, created 20230701
    F3 (FC-1 and FC-2, lastUpdateTime 20240401100000), empty
  SS3, patient Q (20240401100000): D7, F2 (FC-1) holding D7
  SS4 (20240501100000, 1.2.3.9, author Smith, CT-3):
    D8 XFRM D3, created 20240501; D9 signs D3 (that association made Deprecated), created 20240502
    F4 (FC-3, lastUpdateTime 20240501100000, made Deprecated) holding D8
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

import pytest
from lxml import etree
from sqlalchemy import select, update

from node.server import Services
from registry import schema as S
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.settings import Settings
from tests import pgserver

RIM = C.NS_RIM
APPROVED, DEPRECATED, SUBMITTED = C.STATUS_APPROVED, C.STATUS_DEPRECATED, C.STATUS_SUBMITTED
STABLE, ON_DEMAND = C.OBJECT_TYPE_STABLE, C.OBJECT_TYPE_ON_DEMAND
LOINC, CONF, EVENTS, FOLDERS, CONTENT = ("2.16.840.1.113883.6.1", "2.16.840.1.113883.5.25", "1.2.3.9",
                                         "1.2.3.8", "1.2.250.1.213.1.1.4.12")
SHA = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
SMITH, DOE, DOT, OTHER = "123^Smith^John", "456^Doe^Jane", "457^Dot^Jane", "999^Other^Ann"


def ref(n: str) -> str:
    return f"{n}^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession"


# --- the fixture set --------------------------------------------------------------------------------------

def _code(c: str, scheme: str = LOINC) -> tuple[str, str, str]:
    return (c, scheme, c)


def _doc(w: "World", pid: str, name: str, *, klass="CL-A", conf=("N",), events=(), v="1", created="20240101",
         start=None, stop=None, author=SMITH, refs=()) -> etree._Element:
    codes = {"class": _code(klass), "confidentiality": [_code(c, CONF) for c in conf],
             "event": [_code(e, EVENTS) for e in events], "format": _code(f"FMT-{v}"), "type": _code(f"TY-{v}"),
             "practice": _code(f"PS-{v}"), "hcft": _code(f"HF-{v}")}
    return builder.document_entry(pid, id=w.id[name], unique_id=w.uid[name], codes=codes, creation_time=created,
                                  service_start=start, service_stop=stop, author_person=author,
                                  reference_ids=[ref(r) for r in refs], hash=SHA, size=0,
                                  repository_unique_id="1.2.250.1.999.3.1")


class World:
    """Names (D1, SS2, F3, a_rplc, ...) to the entryUUIDs this test chose for them, and uniqueIds."""

    def __init__(self, services: Services):
        self.services, self.store = services, services.registry.store
        self.client = SoapClient(services.url + "/xds/registry")
        self.p, self.q = f"PF{uuid.uuid4().hex[:8]}^^^&1.2.250.1.213.1.4.10&ISO", \
            f"QF{uuid.uuid4().hex[:8]}^^^&1.2.250.1.213.1.4.10&ISO"
        self.id: dict[str, str] = {}
        self.uid: dict[str, str] = {}

    def name(self, *names: str) -> None:
        for n in names:
            self.id[n] = f"urn:uuid:{uuid.uuid4()}"
            self.uid[n] = builder.new_oid()

    def submit(self, pid: str, ss: str, objects: list, links: list, **ss_kw) -> None:
        """links: (name, source, target, type); HasMember from the SubmissionSet gets SubmissionSetStatus."""
        items = [builder.submission_set(pid, id=self.id[ss], unique_id=self.uid[ss], **ss_kw),
                 builder.submission_set_marker(self.id[ss])] + objects
        for n, src, tgt, typ in links:
            self.id[n] = f"urn:uuid:{uuid.uuid4()}"
            status = "Original" if typ == C.ASSOC_HAS_MEMBER and src == ss else None
            items.append(builder.association(self.id[src], self.id[tgt], typ, id=self.id[n], ss_status=status))
        reply = self.client.call(C.ACTION_REGISTER, builder.submit_objects_request(items))
        assert reply.body.get("status") == C.RESPONSE_SUCCESS, reply.raw[:1500]

    def folder(self, pid: str, name: str, *codes: str) -> list[etree._Element]:
        return [builder.folder(pid, id=self.id[name], unique_id=self.uid[name],
                               codes=[_code(c, FOLDERS) for c in codes]), builder.folder_marker(self.id[name])]

    def build(self) -> "World":
        p, q, HM = self.p, self.q, C.ASSOC_HAS_MEMBER
        for pid in (p, q):
            self.store.add_patient(pid)
        self.name("SS1", "SS2", "SS3", "SS4", "D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8", "D9",
                  "F1", "F2", "F3", "F4")
        self.submit(p, "SS1", [
            _doc(self, p, "D1", events=("EV1", "EV2"), created="20200101120000", start="20200101",
                 stop="20200105", refs=("R1",)),
            _doc(self, p, "D2", klass="CL-B", conf=("R",), events=("EV1",), v="2", created="20210615",
                 start="2021", stop="2022", author=DOE, refs=("R2",)),
            _doc(self, p, "D3", conf=("N", "R"), created="20220101", author=DOT, refs=("R1", "R3")),
            _doc(self, p, "D4", created="20230101"),
            *self.folder(p, "F1", "FC-1"),
        ], [("a_ss1_d1", "SS1", "D1", HM), ("a_ss1_d2", "SS1", "D2", HM), ("a_ss1_d3", "SS1", "D3", HM),
            ("a_ss1_d4", "SS1", "D4", HM), ("a_ss1_f1", "SS1", "F1", HM),
            ("a_f1_d1", "F1", "D1", HM), ("a_f1_d2", "F1", "D2", HM),
            ("a_ss1_f1d1", "SS1", "a_f1_d1", HM), ("a_ss1_f1d2", "SS1", "a_f1_d2", HM)],
            submission_time="20240101100000", source_id="1.2.3.7", author_person=SMITH,
            content_type=_code("CT-1", CONTENT))
        self.submit(p, "SS2", [
            _doc(self, p, "D5", events=("EV2",), created="20230601", start="202306", stop="20230610"),
            _doc(self, p, "D6", klass="CL-C", events=("EV1", "EV3"), v="3", created="20230701"),
            *self.folder(p, "F3", "FC-1", "FC-2"),
        ], [("a_ss2_d5", "SS2", "D5", HM), ("a_ss2_d6", "SS2", "D6", HM), ("a_ss2_f3", "SS2", "F3", HM),
            ("a_rplc", "D5", "D1", C.ASSOC_RPLC), ("a_apnd", "D6", "D2", C.ASSOC_APND)],
            submission_time="20240301100000", source_id="1.2.3.8", author_person=OTHER,
            content_type=_code("CT-2", CONTENT))
        self.submit(q, "SS3", [_doc(self, q, "D7"), *self.folder(q, "F2", "FC-1")],
                    [("a_ss3_d7", "SS3", "D7", HM), ("a_ss3_f2", "SS3", "F2", HM), ("a_f2_d7", "F2", "D7", HM),
                     ("a_ss3_f2d7", "SS3", "a_f2_d7", HM)], submission_time="20240401100000")
        self.submit(p, "SS4", [
            _doc(self, p, "D8", created="20240501"), _doc(self, p, "D9", created="20240502"),
            *self.folder(p, "F4", "FC-3"),
        ], [("a_ss4_d8", "SS4", "D8", HM), ("a_ss4_d9", "SS4", "D9", HM), ("a_ss4_f4", "SS4", "F4", HM),
            ("a_f4_d8", "F4", "D8", HM), ("a_ss4_f4d8", "SS4", "a_f4_d8", HM),
            ("a_xfrm", "D8", "D3", C.ASSOC_XFRM), ("a_signs", "D9", "D3", C.ASSOC_SIGNS)],
            submission_time="20240501100000", source_id="1.2.3.9", author_person=SMITH,
            content_type=_code("CT-3", CONTENT))
        O, A, FOL = S.registry_object, S.association, S.folder
        with self.store.reading() as c:
            # The registry's own links: D5 joins F1 (the folder of the entry it replaces), recorded by SS2.
            self.id["a_f1_d5"] = c.execute(select(A.c.id).where(A.c.source == self.id["F1"],
                                                                A.c.target == self.id["D5"])).scalar_one()
            self.id["a_ss2_f1d5"] = c.execute(select(A.c.id).where(A.c.source == self.id["SS2"],
                                                                   A.c.target == self.id["a_f1_d5"])).scalar_one()
        # What other transactions would do (ITI-61, ITI-57), and lastUpdateTimes a second apart, written in the
        # index the queries read.
        with self.store.transaction() as c:
            c.execute(update(S.doc_entry).where(S.doc_entry.c.id == self.id["D4"]).values(entry_type=ON_DEMAND))
            c.execute(update(O).where(O.c.id == self.id["F4"]).values(status=DEPRECATED))
            c.execute(update(A).where(A.c.id == self.id["a_signs"]).values(status=DEPRECATED))
            for f, t in (("F1", "20240301100000"), ("F3", "20240401100000"), ("F4", "20240501100000")):
                c.execute(update(FOL).where(FOL.c.id == self.id[f]).values(last_update_time=t))
        self.back = {v: k for k, v in self.id.items()}
        return self


def _database(backend: str, tmp) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp}/registry.db"
    if not pgserver.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing; .ci/run installs them")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    from tests.conftest import _dbs, _pg_admin_url

    return pgserver.create_database(_pg_admin_url(), f"xds_sqfilters_{os.getpid()}_{next(_dbs)}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory):
    """The fixture set, once per database, in a registry served over HTTP (security none on loopback)."""
    tmp = tmp_path_factory.mktemp(f"sqf-{request.param}")
    services = Services(Settings(role="registry", port=0, data=str(tmp / "data"), db=_database(request.param, tmp),
                                 settle_interval=0)).start()
    try:
        yield World(services).build()
    finally:
        services.stop()
        services.registry.store.engine.dispose()


# --- the table ----------------------------------------------------------------------------------------------

def sq(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def lst(*vs: str) -> str:
    return "(" + ",".join(sq(v) for v in vs) + ")"


def codes(*cs: str, scheme: str = LOINC) -> str:
    return lst(*(f"{c}^^{scheme}" for c in cs))


@dataclass
class Case:
    label: str
    query: str
    params: list[tuple[str, str]]
    expected: set[str]
    objects_only: bool = False  # compare the objects, not the associations (GetAll's long lists)


# Values naming fixture objects are written <D2> (its entryUUID) or <uid:D2> (its uniqueId), and <P>, <Q>.
_TOKEN = re.compile(r"<(uid:)?([A-Za-z0-9_]+)>")

FD, FDR, FSS, FF, GA = (C.SQ_FIND_DOCUMENTS, C.SQ_FIND_DOCUMENTS_BY_REFERENCE_ID, C.SQ_FIND_SUBMISSION_SETS,
                        C.SQ_FIND_FOLDERS, C.SQ_GET_ALL)
ST = "$XDSDocumentEntryStatus"
BOTH = lst(APPROVED, DEPRECATED)
P_APPROVED = {"D2", "D3", "D5", "D6", "D8", "D9"}  # P's Approved stable entries


def find_docs(label, *extra, expected, status=(APPROVED,), pid="<P>", query=FD) -> Case:
    return Case(label, query, [("$XDSDocumentEntryPatientId", sq(pid)), (ST, lst(*status)), *extra], set(expected))


def find_by_ref(label, *groups, expected, status=(APPROVED, DEPRECATED), extra=()) -> Case:
    return find_docs(label, *[("$XDSDocumentEntryReferenceIdList", lst(*(ref(r) for r in g))) for g in groups],
                     *extra, expected=expected, status=status, query=FDR)


def coded(param: str, label: str) -> list[Case]:
    """The four single-valued coded attributes that D2 (2), D6 (3) and the others (1) differ in."""
    stem = {"TypeCode": "TY", "PracticeSettingCode": "PS", "HealthcareFacilityTypeCode": "HF",
            "FormatCode": "FMT"}[param]
    name = f"$XDSDocumentEntry{param}"
    return [find_docs(f"{label}-one", (name, codes(f"{stem}-2")), expected={"D2"}),
            find_docs(f"{label}-or", (name, codes(f"{stem}-2", f"{stem}-3")), expected={"D2", "D6"}),
            find_docs(f"{label}-base", (name, codes(f"{stem}-1")), expected={"D3", "D5", "D8", "D9"}),
            find_docs(f"{label}-scheme", (name, codes(f"{stem}-2", scheme="9.9.9")), expected=set())]


def find_ss(label, *extra, expected, status=(APPROVED,), pid="<P>") -> Case:
    return Case(label, FSS, [("$XDSSubmissionSetPatientId", sq(pid)), ("$XDSSubmissionSetStatus", lst(*status)),
                             *extra], set(expected))


def find_fd(label, *extra, expected, status=(APPROVED,), pid="<P>") -> Case:
    return Case(label, FF, [("$XDSFolderPatientId", sq(pid)), ("$XDSFolderStatus", lst(*status)), *extra],
                set(expected))


def get_all(label, *extra, expected, de=(APPROVED,), ss=(APPROVED,), fd=(APPROVED,), pid="<P>",
            objects_only=True) -> Case:
    return Case(label, GA, [("$patientId", sq(pid)), (ST, lst(*de)), ("$XDSSubmissionSetStatus", lst(*ss)),
                            ("$XDSFolderStatus", lst(*fd)), *extra], set(expected), objects_only)


def by_id(label, query, *params, expected) -> Case:
    return Case(label, query, list(params), set(expected))


LEVEL2 = ("$MetadataLevel", "2")
SS_P = {"SS1", "SS2", "SS4"}
GET_ALL_P_ASSOCIATIONS = {
    "a_ss1_d1", "a_ss1_d2", "a_ss1_d3", "a_ss1_d4", "a_ss1_f1", "a_f1_d1", "a_f1_d2", "a_ss1_f1d1", "a_ss1_f1d2",
    "a_ss2_d5", "a_ss2_d6", "a_ss2_f3", "a_rplc", "a_apnd", "a_f1_d5", "a_ss2_f1d5",
    "a_ss4_d8", "a_ss4_d9", "a_ss4_f4", "a_f4_d8", "a_ss4_f4d8", "a_xfrm"}  # a_signs is Deprecated
SS1_CONTENTS = {"SS1", "D1", "D2", "D3", "F1", "a_ss1_d1", "a_ss1_d2", "a_ss1_d3", "a_ss1_f1", "a_f1_d1", "a_f1_d2",
                "a_ss1_f1d1", "a_ss1_f1d2"}
RELATED = "$AssociationTypes"
E_UUID, E_UID = "$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"

CASES: list[Case] = [
    # FindDocuments: status, patient, then each parameter.
    find_docs("fd-approved", expected=P_APPROVED),
    find_docs("fd-deprecated", expected={"D1"}, status=(DEPRECATED,)),
    find_docs("fd-both-statuses", expected=P_APPROVED | {"D1"}, status=(APPROVED, DEPRECATED)),
    find_docs("fd-submitted", expected=set(), status=(SUBMITTED,)),
    find_docs("fd-other-patient", expected={"D7"}, pid="<Q>"),
    find_docs("fd-unknown-patient", expected=set(), pid="NOBODY^^^&1.2.250.1.213.1.4.10&ISO"),
    find_docs("fd-class-one", ("$XDSDocumentEntryClassCode", codes("CL-B")), expected={"D2"}),
    find_docs("fd-class-or", ("$XDSDocumentEntryClassCode", codes("CL-B", "CL-C")), expected={"D2", "D6"}),
    find_docs("fd-class-base", ("$XDSDocumentEntryClassCode", codes("CL-A")), expected={"D3", "D5", "D8", "D9"}),
    find_docs("fd-class-scheme", ("$XDSDocumentEntryClassCode", codes("CL-B", scheme="9.9.9")), expected=set()),
    *coded("TypeCode", "fd-type"),
    *coded("PracticeSettingCode", "fd-practice"),
    *coded("HealthcareFacilityTypeCode", "fd-hcft"),
    *coded("FormatCode", "fd-format"),
    find_docs("fd-creation-from-inclusive", ("$XDSDocumentEntryCreationTimeFrom", "20220101"),
              expected={"D3", "D5", "D6", "D8", "D9"}),
    find_docs("fd-creation-to-exclusive", ("$XDSDocumentEntryCreationTimeTo", "20220101"), expected={"D2"}),
    find_docs("fd-creation-range", ("$XDSDocumentEntryCreationTimeFrom", "20210615"),
              ("$XDSDocumentEntryCreationTimeTo", "20230601"), expected={"D2", "D3"}),
    find_docs("fd-creation-short-from", ("$XDSDocumentEntryCreationTimeFrom", "2023"),
              expected={"D5", "D6", "D8", "D9"}),
    find_docs("fd-creation-short-to", ("$XDSDocumentEntryCreationTimeTo", "2022"), expected={"D2"}),
    find_docs("fd-creation-one-day", ("$XDSDocumentEntryCreationTimeFrom", "20240501"),
              ("$XDSDocumentEntryCreationTimeTo", "20240502"), expected={"D8"}),
    find_docs("fd-creation-deprecated", ("$XDSDocumentEntryCreationTimeTo", "2021"), expected={"D1"},
              status=(APPROVED, DEPRECATED)),
    find_docs("fd-start-from", ("$XDSDocumentEntryServiceStartTimeFrom", "2021"), expected={"D2", "D5"}),
    find_docs("fd-start-from-inclusive", ("$XDSDocumentEntryServiceStartTimeFrom", "202306"), expected={"D5"}),
    find_docs("fd-start-to-exclusive", ("$XDSDocumentEntryServiceStartTimeTo", "202306"), expected={"D2"}),
    find_docs("fd-stop-from", ("$XDSDocumentEntryServiceStopTimeFrom", "2022"), expected={"D2", "D5"}),
    find_docs("fd-stop-from-inclusive", ("$XDSDocumentEntryServiceStopTimeFrom", "20230610"), expected={"D5"}),
    find_docs("fd-stop-to-exclusive", ("$XDSDocumentEntryServiceStopTimeTo", "2022"), expected=set()),
    find_docs("fd-stop-to", ("$XDSDocumentEntryServiceStopTimeTo", "20230610"), expected={"D2"}),
    find_docs("fd-author-percent", ("$XDSDocumentEntryAuthorPerson", lst("%Smith%")),
              expected={"D5", "D6", "D8", "D9"}),
    find_docs("fd-author-underscore", ("$XDSDocumentEntryAuthorPerson", lst("45_^Do_^Jane")), expected={"D2", "D3"}),
    find_docs("fd-author-exact", ("$XDSDocumentEntryAuthorPerson", lst(DOE)), expected={"D2"}),
    find_docs("fd-author-no-wildcard-is-whole", ("$XDSDocumentEntryAuthorPerson", lst("Doe")), expected=set()),
    find_docs("fd-author-or", ("$XDSDocumentEntryAuthorPerson", lst("%Doe%", "%Dot%")), expected={"D2", "D3"}),
    find_docs("fd-author-case", ("$XDSDocumentEntryAuthorPerson", lst("%doe%")), expected=set()),
    find_docs("fd-author-both", ("$XDSDocumentEntryAuthorPerson", lst("_23^%")), expected={"D5", "D6", "D8", "D9"}),
    find_docs("fd-author-one-char", ("$XDSDocumentEntryAuthorPerson", lst("456^Do_")), expected=set()),
    find_docs("fd-events-one", ("$XDSDocumentEntryEventCodeList", codes("EV1", scheme=EVENTS)), expected={"D2", "D6"}),
    find_docs("fd-events-or", ("$XDSDocumentEntryEventCodeList", codes("EV1", "EV2", scheme=EVENTS)),
              expected={"D2", "D5", "D6"}),
    find_docs("fd-events-and", ("$XDSDocumentEntryEventCodeList", codes("EV1", scheme=EVENTS)),
              ("$XDSDocumentEntryEventCodeList", codes("EV3", scheme=EVENTS)), expected={"D6"}),
    find_docs("fd-events-and-none", ("$XDSDocumentEntryEventCodeList", codes("EV2", scheme=EVENTS)),
              ("$XDSDocumentEntryEventCodeList", codes("EV3", scheme=EVENTS)), expected=set()),
    find_docs("fd-events-and-deprecated", ("$XDSDocumentEntryEventCodeList", codes("EV1", scheme=EVENTS)),
              ("$XDSDocumentEntryEventCodeList", codes("EV2", scheme=EVENTS)), expected={"D1"},
              status=(APPROVED, DEPRECATED)),
    find_docs("fd-conf-one", ("$XDSDocumentEntryConfidentialityCode", codes("R", scheme=CONF)), expected={"D2", "D3"}),
    find_docs("fd-conf-or", ("$XDSDocumentEntryConfidentialityCode", codes("N", "R", scheme=CONF)),
              expected=P_APPROVED),
    find_docs("fd-conf-and", ("$XDSDocumentEntryConfidentialityCode", codes("N", scheme=CONF)),
              ("$XDSDocumentEntryConfidentialityCode", codes("R", scheme=CONF)), expected={"D3"}),
    find_docs("fd-type-on-demand", ("$XDSDocumentEntryType", lst(ON_DEMAND)), expected={"D4"}),
    find_docs("fd-type-both", ("$XDSDocumentEntryType", lst(STABLE, ON_DEMAND)), expected=P_APPROVED | {"D4"}),
    find_docs("fd-type-stable", ("$XDSDocumentEntryType", lst(STABLE)), expected=P_APPROVED),
    find_docs("fd-combined", ("$XDSDocumentEntryClassCode", codes("CL-A")),
              ("$XDSDocumentEntryCreationTimeFrom", "2024"), ("$XDSDocumentEntryAuthorPerson", lst("%Smith%")),
              expected={"D8", "D9"}),
    # FindDocumentsByReferenceId: each Slot an OR list, the Slots ANDed; the FindDocuments filters apply.
    find_by_ref("fdr-one", ["R1"], expected={"D1", "D3"}),
    find_by_ref("fdr-or", ["R1", "R2"], expected={"D1", "D2", "D3"}),
    find_by_ref("fdr-and", ["R1"], ["R3"], expected={"D3"}),
    find_by_ref("fdr-and-none", ["R1"], ["R2"], expected=set()),
    find_by_ref("fdr-approved", ["R1"], expected={"D3"}, status=(APPROVED,)),
    find_by_ref("fdr-unknown", ["R9"], expected=set()),
    find_by_ref("fdr-with-conf", ["R1", "R2"], expected={"D2", "D3"},
                extra=[("$XDSDocumentEntryConfidentialityCode", codes("R", scheme=CONF))]),
    find_by_ref("fdr-with-creation", ["R1", "R2"], expected={"D1", "D2"},
                extra=[("$XDSDocumentEntryCreationTimeTo", "2022")]),
    # FindSubmissionSets
    find_ss("fss-approved", expected=SS_P),
    find_ss("fss-deprecated", expected=set(), status=(DEPRECATED,)),
    find_ss("fss-other-patient", expected={"SS3"}, pid="<Q>"),
    find_ss("fss-source-one", ("$XDSSubmissionSetSourceId", lst("1.2.3.8")), expected={"SS2"}),
    find_ss("fss-source-or", ("$XDSSubmissionSetSourceId", lst("1.2.3.7", "1.2.3.8")), expected={"SS1", "SS2"}),
    find_ss("fss-time-from-inclusive", ("$XDSSubmissionSetSubmissionTimeFrom", "20240301100000"),
            expected={"SS2", "SS4"}),
    find_ss("fss-time-to-exclusive", ("$XDSSubmissionSetSubmissionTimeTo", "20240301100000"), expected={"SS1"}),
    find_ss("fss-time-range", ("$XDSSubmissionSetSubmissionTimeFrom", "20240101100000"),
            ("$XDSSubmissionSetSubmissionTimeTo", "20240501100000"), expected={"SS1", "SS2"}),
    find_ss("fss-author-percent", ("$XDSSubmissionSetAuthorPerson", sq("%Other%")), expected={"SS2"}),
    find_ss("fss-author-underscore", ("$XDSSubmissionSetAuthorPerson", sq("999^Othe_^Ann")), expected={"SS2"}),
    find_ss("fss-author-many", ("$XDSSubmissionSetAuthorPerson", sq("%Smith%")), expected={"SS1", "SS4"}),
    find_ss("fss-author-none", ("$XDSSubmissionSetAuthorPerson", sq("Other")), expected=set()),
    find_ss("fss-content-one", ("$XDSSubmissionSetContentType", codes("CT-1", scheme=CONTENT)), expected={"SS1"}),
    find_ss("fss-content-or", ("$XDSSubmissionSetContentType", codes("CT-2", "CT-3", scheme=CONTENT)),
            expected={"SS2", "SS4"}),
    # FindFolders: F4 is Deprecated, which $MetadataLevel 1 hides.
    find_fd("ff-approved", expected={"F1", "F3"}),
    find_fd("ff-deprecated-level1", expected=set(), status=(DEPRECATED,)),
    find_fd("ff-deprecated-level2", LEVEL2, expected={"F4"}, status=(DEPRECATED,)),
    find_fd("ff-both-level2", LEVEL2, expected={"F1", "F3", "F4"}, status=(APPROVED, DEPRECATED)),
    find_fd("ff-other-patient", expected={"F2"}, pid="<Q>"),
    find_fd("ff-updated-from-inclusive", ("$XDSFolderLastUpdateTimeFrom", "20240401100000"), expected={"F3"}),
    find_fd("ff-updated-to-exclusive", ("$XDSFolderLastUpdateTimeTo", "20240401100000"), expected={"F1"}),
    find_fd("ff-updated-range", ("$XDSFolderLastUpdateTimeFrom", "2024"),
            ("$XDSFolderLastUpdateTimeTo", "20240401"), expected={"F1"}),
    find_fd("ff-updated-after", ("$XDSFolderLastUpdateTimeFrom", "20240301100001"), expected={"F3"}),
    find_fd("ff-codes-one", ("$XDSFolderCodeList", codes("FC-1", scheme=FOLDERS)), expected={"F1", "F3"}),
    find_fd("ff-codes-other", ("$XDSFolderCodeList", codes("FC-2", scheme=FOLDERS)), expected={"F3"}),
    find_fd("ff-codes-or", ("$XDSFolderCodeList", codes("FC-2", "FC-3", scheme=FOLDERS)), expected={"F3"}),
    find_fd("ff-codes-and", ("$XDSFolderCodeList", codes("FC-1", scheme=FOLDERS)),
            ("$XDSFolderCodeList", codes("FC-2", scheme=FOLDERS)), expected={"F3"}),
    find_fd("ff-codes-and-none", ("$XDSFolderCodeList", codes("FC-1", scheme=FOLDERS)),
            ("$XDSFolderCodeList", codes("FC-3", scheme=FOLDERS)), expected=set()),
    find_fd("ff-codes-deprecated", LEVEL2, ("$XDSFolderCodeList", codes("FC-3", scheme=FOLDERS)),
            expected={"F4"}, status=(APPROVED, DEPRECATED)),
    # GetAll: each of its three statuses filters its own kind, and the content filters the entries.
    get_all("ga-approved", expected=P_APPROVED | SS_P | {"F1", "F3"} | GET_ALL_P_ASSOCIATIONS, objects_only=False),
    get_all("ga-de-deprecated", expected={"D1"} | SS_P | {"F1", "F3"}, de=(DEPRECATED,)),
    get_all("ga-de-both", expected=P_APPROVED | {"D1"} | SS_P | {"F1", "F3"}, de=(APPROVED, DEPRECATED)),
    get_all("ga-de-submitted", expected=SS_P | {"F1", "F3"}, de=(SUBMITTED,)),
    get_all("ga-ss-deprecated", expected=P_APPROVED | {"F1", "F3"}, ss=(DEPRECATED,)),
    get_all("ga-fd-deprecated", expected=P_APPROVED | SS_P, fd=(DEPRECATED,)),
    get_all("ga-fd-deprecated-level2", LEVEL2, expected=P_APPROVED | SS_P | {"F4"}, fd=(DEPRECATED,)),
    get_all("ga-fd-both-level2", LEVEL2, expected=P_APPROVED | SS_P | {"F1", "F3", "F4"},
            fd=(APPROVED, DEPRECATED)),
    get_all("ga-only-documents", expected={"D1"}, de=(DEPRECATED,), ss=(DEPRECATED,), fd=(DEPRECATED,)),
    get_all("ga-format", ("$XDSDocumentEntryFormatCode", codes("FMT-2", "FMT-3")),
            expected={"D2", "D6"} | SS_P | {"F1", "F3"}),
    get_all("ga-conf-one", ("$XDSDocumentEntryConfidentialityCode", codes("R", scheme=CONF)),
            expected={"D2", "D3"} | SS_P | {"F1", "F3"}),
    get_all("ga-conf-and", ("$XDSDocumentEntryConfidentialityCode", codes("N", scheme=CONF)),
            ("$XDSDocumentEntryConfidentialityCode", codes("R", scheme=CONF)), expected={"D3"} | SS_P | {"F1", "F3"}),
    get_all("ga-type-on-demand", ("$XDSDocumentEntryType", lst(ON_DEMAND)), expected={"D4"} | SS_P | {"F1", "F3"}),
    get_all("ga-other-patient", expected={"D7", "SS3", "F2", "a_ss3_d7", "a_ss3_f2", "a_f2_d7", "a_ss3_f2d7"},
            pid="<Q>", objects_only=False),
    get_all("ga-signs-level2", LEVEL2, ("$XDSAssociationStatus", lst(DEPRECATED)),
            expected=P_APPROVED | SS_P | {"F1", "F3", "a_signs"}, objects_only=False),
    # GetDocuments: by entryUUID, uniqueId or logical id, whatever the status and type.
    by_id("gd-uuids", C.SQ_GET_DOCUMENTS, (E_UUID, lst("<D2>", "<D3>")), expected={"D2", "D3"}),
    by_id("gd-unique-id", C.SQ_GET_DOCUMENTS, (E_UID, lst("<uid:D5>")), expected={"D5"}),
    by_id("gd-deprecated", C.SQ_GET_DOCUMENTS, (E_UUID, lst("<D1>")), expected={"D1"}),
    by_id("gd-on-demand", C.SQ_GET_DOCUMENTS, (E_UID, lst("<uid:D4>")), expected={"D4"}),
    by_id("gd-logical-id", C.SQ_GET_DOCUMENTS, ("$XDSDocumentEntryLogicalID", lst("<D6>")), expected={"D6"}),
    by_id("gd-not-documents", C.SQ_GET_DOCUMENTS, (E_UUID, lst("<SS1>", "<F1>")), expected=set()),
    by_id("gd-unknown", C.SQ_GET_DOCUMENTS, (E_UUID, lst(f"urn:uuid:{uuid.UUID(int=7)}")), expected=set()),
    # GetFolders
    by_id("gf-uuid", C.SQ_GET_FOLDERS, ("$XDSFolderEntryUUID", lst("<F1>")), expected={"F1"}),
    by_id("gf-unique-ids", C.SQ_GET_FOLDERS, ("$XDSFolderUniqueId", lst("<uid:F1>", "<uid:F3>")),
          expected={"F1", "F3"}),
    by_id("gf-logical-id", C.SQ_GET_FOLDERS, ("$XDSFolderLogicalID", lst("<F3>")), expected={"F3"}),
    by_id("gf-deprecated-level1", C.SQ_GET_FOLDERS, ("$XDSFolderEntryUUID", lst("<F4>")), expected=set()),
    by_id("gf-deprecated-level2", C.SQ_GET_FOLDERS, ("$XDSFolderEntryUUID", lst("<F4>")), LEVEL2, expected={"F4"}),
    by_id("gf-not-folders", C.SQ_GET_FOLDERS, ("$XDSFolderEntryUUID", lst("<D2>", "<SS1>")), expected=set()),
    # GetAssociations
    by_id("gas-document", C.SQ_GET_ASSOCIATIONS, ("$uuid", lst("<D2>")), expected={"a_ss1_d2", "a_f1_d2", "a_apnd"}),
    by_id("gas-folder", C.SQ_GET_ASSOCIATIONS, ("$uuid", lst("<F1>")),
          expected={"a_ss1_f1", "a_f1_d1", "a_f1_d2", "a_f1_d5"}),
    by_id("gas-deprecated-hidden", C.SQ_GET_ASSOCIATIONS, ("$uuid", lst("<D9>")), expected={"a_ss4_d9"}),
    by_id("gas-level2", C.SQ_GET_ASSOCIATIONS, ("$uuid", lst("<D9>")), LEVEL2, expected={"a_ss4_d9", "a_signs"}),
    by_id("gas-status", C.SQ_GET_ASSOCIATIONS, ("$uuid", lst("<D9>")), LEVEL2,
          ("$XDSAssociationStatus", lst(DEPRECATED)), expected={"a_signs"}),
    by_id("gas-several", C.SQ_GET_ASSOCIATIONS, ("$uuid", lst("<D2>", "<D9>")),
          expected={"a_ss1_d2", "a_f1_d2", "a_apnd", "a_ss4_d9"}),
    # GetDocumentsAndAssociations
    by_id("gda-uuid", C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS, (E_UUID, lst("<D2>")),
          expected={"D2", "a_ss1_d2", "a_f1_d2", "a_apnd"}),
    by_id("gda-unique-id", C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS, (E_UID, lst("<uid:D3>")),
          expected={"D3", "a_ss1_d3", "a_xfrm"}),
    by_id("gda-level2", C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS, (E_UID, lst("<uid:D3>")), LEVEL2,
          expected={"D3", "a_ss1_d3", "a_xfrm", "a_signs"}),
    # GetSubmissionSets
    by_id("gss-documents", C.SQ_GET_SUBMISSION_SETS, ("$uuid", lst("<D2>", "<D5>")),
          expected={"SS1", "SS2", "a_ss1_d2", "a_ss2_d5"}),
    by_id("gss-folder-link", C.SQ_GET_SUBMISSION_SETS, ("$uuid", lst("<a_f1_d5>")), expected={"SS2", "a_ss2_f1d5"}),
    by_id("gss-replaced", C.SQ_GET_SUBMISSION_SETS, ("$uuid", lst("<D1>")), expected={"SS1", "a_ss1_d1"}),
    by_id("gss-folder", C.SQ_GET_SUBMISSION_SETS, ("$uuid", lst("<F4>")), expected={"SS4", "a_ss4_f4"}),
    # GetSubmissionSetAndContents
    by_id("gssc-unique-id", C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, ("$XDSSubmissionSetUniqueId", sq("<uid:SS1>")),
          expected=SS1_CONTENTS),
    by_id("gssc-uuid", C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, ("$XDSSubmissionSetEntryUUID", sq("<SS2>")),
          expected={"SS2", "D5", "D6", "F3", "a_ss2_d5", "a_ss2_d6", "a_ss2_f3"}),
    by_id("gssc-conf", C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, ("$XDSSubmissionSetUniqueId", sq("<uid:SS1>")),
          ("$XDSDocumentEntryConfidentialityCode", codes("R", scheme=CONF)),
          expected={"SS1", "D2", "D3", "F1", "a_ss1_d2", "a_ss1_d3", "a_ss1_f1", "a_f1_d2", "a_ss1_f1d2"}),
    by_id("gssc-conf-and", C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, ("$XDSSubmissionSetUniqueId", sq("<uid:SS1>")),
          ("$XDSDocumentEntryConfidentialityCode", codes("N", scheme=CONF)),
          ("$XDSDocumentEntryConfidentialityCode", codes("R", scheme=CONF)),
          expected={"SS1", "D3", "F1", "a_ss1_d3", "a_ss1_f1"}),
    by_id("gssc-format", C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, ("$XDSSubmissionSetUniqueId", sq("<uid:SS1>")),
          ("$XDSDocumentEntryFormatCode", codes("FMT-2")),
          expected={"SS1", "D2", "F1", "a_ss1_d2", "a_ss1_f1", "a_f1_d2", "a_ss1_f1d2"}),
    by_id("gssc-on-demand", C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, ("$XDSSubmissionSetUniqueId", sq("<uid:SS1>")),
          ("$XDSDocumentEntryType", lst(ON_DEMAND)), expected={"SS1", "D4", "F1", "a_ss1_d4", "a_ss1_f1"}),
    by_id("gssc-deprecated-folder", C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, ("$XDSSubmissionSetEntryUUID", sq("<SS4>")),
          expected={"SS4", "D8", "D9", "a_ss4_d8", "a_ss4_d9"}),
    by_id("gssc-unknown", C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, ("$XDSSubmissionSetUniqueId", sq("9.9.9.9")),
          expected=set()),
    # GetFolderAndContents
    by_id("gfc-unique-id", C.SQ_GET_FOLDER_AND_CONTENTS, ("$XDSFolderUniqueId", sq("<uid:F1>")),
          expected={"F1", "D1", "D2", "D5", "a_f1_d1", "a_f1_d2", "a_f1_d5"}),
    by_id("gfc-conf", C.SQ_GET_FOLDER_AND_CONTENTS, ("$XDSFolderEntryUUID", sq("<F1>")),
          ("$XDSDocumentEntryConfidentialityCode", codes("R", scheme=CONF)), expected={"F1", "D2", "a_f1_d2"}),
    by_id("gfc-format", C.SQ_GET_FOLDER_AND_CONTENTS, ("$XDSFolderEntryUUID", sq("<F1>")),
          ("$XDSDocumentEntryFormatCode", codes("FMT-1")), expected={"F1", "D1", "D5", "a_f1_d1", "a_f1_d5"}),
    by_id("gfc-on-demand", C.SQ_GET_FOLDER_AND_CONTENTS, ("$XDSFolderEntryUUID", sq("<F1>")),
          ("$XDSDocumentEntryType", lst(ON_DEMAND)), expected={"F1"}),
    by_id("gfc-empty", C.SQ_GET_FOLDER_AND_CONTENTS, ("$XDSFolderEntryUUID", sq("<F3>")), expected={"F3"}),
    by_id("gfc-deprecated-level1", C.SQ_GET_FOLDER_AND_CONTENTS, ("$XDSFolderEntryUUID", sq("<F4>")),
          expected=set()),
    by_id("gfc-deprecated-level2", C.SQ_GET_FOLDER_AND_CONTENTS, ("$XDSFolderEntryUUID", sq("<F4>")), LEVEL2,
          expected={"F4", "D8", "a_f4_d8"}),
    # GetFoldersForDocument
    by_id("gffd-uuid", C.SQ_GET_FOLDERS_FOR_DOCUMENT, (E_UUID, sq("<D5>")), expected={"F1"}),
    by_id("gffd-unique-id", C.SQ_GET_FOLDERS_FOR_DOCUMENT, (E_UID, sq("<uid:D1>")), expected={"F1"}),
    by_id("gffd-none", C.SQ_GET_FOLDERS_FOR_DOCUMENT, (E_UID, sq("<uid:D3>")), expected=set()),
    by_id("gffd-other-patient", C.SQ_GET_FOLDERS_FOR_DOCUMENT, (E_UUID, sq("<D7>")), expected={"F2"}),
    by_id("gffd-deprecated-level1", C.SQ_GET_FOLDERS_FOR_DOCUMENT, (E_UUID, sq("<D8>")), expected=set()),
    by_id("gffd-deprecated-level2", C.SQ_GET_FOLDERS_FOR_DOCUMENT, (E_UUID, sq("<D8>")), LEVEL2, expected={"F4"}),
    # GetRelatedDocuments: the association types it follows, either way.
    by_id("grd-rplc-target", C.SQ_GET_RELATED_DOCUMENTS, (E_UUID, sq("<D1>")), (RELATED, lst(C.ASSOC_RPLC)),
          expected={"D1", "D5", "a_rplc"}),
    by_id("grd-rplc-source", C.SQ_GET_RELATED_DOCUMENTS, (E_UID, sq("<uid:D5>")), (RELATED, lst(C.ASSOC_RPLC)),
          expected={"D1", "D5", "a_rplc"}),
    by_id("grd-apnd", C.SQ_GET_RELATED_DOCUMENTS, (E_UUID, sq("<D2>")), (RELATED, lst(C.ASSOC_APND)),
          expected={"D2", "D6", "a_apnd"}),
    by_id("grd-apnd-asked-rplc", C.SQ_GET_RELATED_DOCUMENTS, (E_UUID, sq("<D2>")), (RELATED, lst(C.ASSOC_RPLC)),
          expected=set()),
    by_id("grd-xfrm", C.SQ_GET_RELATED_DOCUMENTS, (E_UUID, sq("<D3>")), (RELATED, lst(C.ASSOC_XFRM)),
          expected={"D3", "D8", "a_xfrm"}),
    by_id("grd-xfrm-or-signs", C.SQ_GET_RELATED_DOCUMENTS, (E_UUID, sq("<D3>")),
          (RELATED, lst(C.ASSOC_XFRM, C.ASSOC_SIGNS)), expected={"D3", "D8", "a_xfrm"}),
    by_id("grd-signs-deprecated", C.SQ_GET_RELATED_DOCUMENTS, (E_UUID, sq("<D3>")), (RELATED, lst(C.ASSOC_SIGNS)),
          expected=set()),
    by_id("grd-signs-level2", C.SQ_GET_RELATED_DOCUMENTS, (E_UUID, sq("<D3>")), (RELATED, lst(C.ASSOC_SIGNS)), LEVEL2,
          expected={"D3", "D9", "a_signs"}),
    by_id("grd-signs-level2-approved", C.SQ_GET_RELATED_DOCUMENTS, (E_UUID, sq("<D3>")),
          (RELATED, lst(C.ASSOC_SIGNS)), LEVEL2, ("$XDSAssociationStatus", lst(APPROVED)), expected=set()),
    by_id("grd-every-type", C.SQ_GET_RELATED_DOCUMENTS, (E_UUID, sq("<D6>")),
          (RELATED, lst(C.ASSOC_RPLC, C.ASSOC_APND, C.ASSOC_XFRM, C.ASSOC_XFRM_RPLC, C.ASSOC_SIGNS)),
          expected={"D2", "D6", "a_apnd"}),
    by_id("grd-has-member-never", C.SQ_GET_RELATED_DOCUMENTS, (E_UUID, sq("<D3>")),
          (RELATED, lst(C.ASSOC_HAS_MEMBER)), expected=set()),
    by_id("grd-type-on-demand", C.SQ_GET_RELATED_DOCUMENTS, (E_UUID, sq("<D1>")), (RELATED, lst(C.ASSOC_RPLC)),
          ("$XDSDocumentEntryType", lst(ON_DEMAND)), expected=set()),
]


# --- asking ----------------------------------------------------------------------------------------------------

def resolve(w: World, text: str) -> str:
    def one(m: re.Match) -> str:
        name = m.group(2)
        if name in ("P", "Q"):
            return w.p if name == "P" else w.q
        return w.uid[name] if m.group(1) else w.id[name]
    return _TOKEN.sub(one, text)


def ask(w: World, query: str, params, return_type: str, home: str | None = None) -> etree._Element:
    body = builder.adhoc_query_request(query, [(n, resolve(w, v)) for n, v in params], return_type, home)
    reply = w.client.call(C.ACTION_QUERY, body)
    assert reply.status == 200 and reply.body.tag == C.q(C.NS_QUERY, "AdhocQueryResponse"), reply.raw[:800]
    return reply.body


def listed(answer: etree._Element) -> list[etree._Element]:
    errors = [(e.get("errorCode"), e.get("codeContext")) for e in answer.iter(C.q(C.NS_RS, "RegistryError"))]
    assert answer.get("status") == C.RESPONSE_SUCCESS and not errors, errors
    objects = answer.find(C.q(RIM, "RegistryObjectList"))
    return list(objects) if objects is not None else []


def tag_for(name: str) -> str:
    if name.startswith("a_"):
        return C.q(RIM, "Association")
    return C.q(RIM, "ExtrinsicObject" if name.startswith("D") else "RegistryPackage")


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_filter(world, case: Case):
    refs = listed(ask(world, case.query, case.params, "ObjectRef"))
    leaves = listed(ask(world, case.query, case.params, "LeafClass"))
    unknown = [el.get("id") for el in refs + leaves if el.get("id") not in world.back]
    assert not unknown, f"objects outside the fixture set: {unknown}"
    by_ref = [world.back[el.get("id")] for el in refs]
    by_leaf = [world.back[el.get("id")] for el in leaves]
    assert len(by_ref) == len(set(by_ref)) and len(by_leaf) == len(set(by_leaf)), (by_ref, by_leaf)
    keep = (lambda n: not n.startswith("a_")) if case.objects_only else (lambda n: True)
    assert {n for n in by_ref if keep(n)} == case.expected
    assert set(by_leaf) == set(by_ref)
    assert {el.tag for el in refs} <= {C.q(RIM, "ObjectRef")}
    for el in leaves:
        assert el.tag == tag_for(world.back[el.get("id")]), (world.back[el.get("id")], el.tag)


def test_leaf_class_renders_the_status_of_each_object(world):
    leaves = listed(ask(world, FD, [("$XDSDocumentEntryPatientId", sq("<P>")), (ST, BOTH)], "LeafClass"))
    status = {world.back[el.get("id")]: el.get("status") for el in leaves}
    assert status == {**{n: APPROVED for n in P_APPROVED}, "D1": DEPRECATED}
    folders = listed(ask(world, C.SQ_GET_FOLDERS, [("$XDSFolderEntryUUID", lst("<F1>", "<F4>")), LEVEL2],
                         "LeafClass"))
    assert {world.back[el.get("id")]: el.get("status") for el in folders} == {"F1": APPROVED, "F4": DEPRECATED}
    [assoc] = listed(ask(world, C.SQ_GET_ASSOCIATIONS, [("$uuid", lst("<D9>")), LEVEL2,
                                                        ("$XDSAssociationStatus", lst(DEPRECATED))], "LeafClass"))
    assert assoc.get("associationType") == C.ASSOC_SIGNS and assoc.get("status") == DEPRECATED


def test_leaf_class_folder_carries_its_last_update_time(world):
    [f3] = listed(ask(world, FF, [("$XDSFolderPatientId", sq("<P>")), ("$XDSFolderStatus", lst(APPROVED)),
                                  ("$XDSFolderLastUpdateTimeFrom", "20240401100000")], "LeafClass"))
    values = [s.findtext(f"{{{RIM}}}ValueList/{{{RIM}}}Value") for s in f3.iter(C.q(RIM, "Slot"))
              if s.get("name") == "lastUpdateTime"]
    assert values == ["20240401100000"]


@pytest.mark.parametrize("return_type", ["ObjectRef", "LeafClass"])
def test_home_community_id_is_echoed_on_every_object(world, return_type):
    home = "urn:oid:1.2.250.1.999.77"
    for query, params in ((C.SQ_GET_DOCUMENTS, [(E_UUID, lst("<D2>", "<D3>"))]),
                          (C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, [("$XDSSubmissionSetEntryUUID", sq("<SS2>"))])):
        found = listed(ask(world, query, params, return_type, home=home))
        assert found and {el.get("home") for el in found} == {home}, query
    # Without the attribute no object carries one.
    assert {el.get("home") for el in listed(ask(world, C.SQ_GET_DOCUMENTS, [(E_UUID, lst("<D2>"))],
                                                return_type))} == {None}


def test_every_query_and_return_type_is_in_the_table():
    asked = {c.query for c in CASES}
    from registry.query.params import QUERIES

    assert asked == set(QUERIES), set(QUERIES) - asked
