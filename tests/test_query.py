"""ITI-18 stored queries on SQLite and PostgreSQL: every query, every parameter, both return types."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

import pytest
from lxml import etree
from sqlalchemy import select, update

from registry import schema as S
from registry.config import RegistryConfig
from registry.query import stored_query
from registry.query.filters import Ctx
from registry.query.params import RawSlot, parse_params
from registry.query.queries import find_documents_select
from registry.store import RegistryStore
from tests import helpers
from xds import builder, ebrim
from xds import constants as C
from xds import errors as E
from xds.model import Association

RIM = C.NS_RIM
APPROVED, DEPRECATED, SUBMITTED = C.STATUS_APPROVED, C.STATUS_DEPRECATED, C.STATUS_SUBMITTED
STABLE, ON_DEMAND = C.OBJECT_TYPE_STABLE, C.OBJECT_TYPE_ON_DEMAND
PID = "PQ1^^^&1.2.250.1.213.1.4.10&ISO"
PID2 = "PQ2^^^&1.2.250.1.213.1.4.10&ISO"

# --- loading test data ------------------------------------------------------------------------------
# Flip to True to load through ITI-42 (registry.register) rather than straight into the store.
USE_REGISTER = False


def load(store: RegistryStore, request: etree._Element, now: str = "20240101000000", direct: bool = False) -> dict[str, str]:
    """Register a SubmitObjectsRequest; returns symbolic id -> assigned UUID.

    The direct path does what ITI-42 does to the registry state that queries read: RPLC targets
    become Deprecated, the replacement joins the replaced entry's folders (recorded by the
    SubmissionSet), and folders that gain members get a new lastUpdateTime."""
    sub = ebrim.parse_submission(request)
    mapping = ebrim.assign_uuids(sub)
    if USE_REGISTER and not direct:
        from registry.register import register
        # ITI-42 refuses on-demand entries (ITI-61 registers them): register them as stable,
        # then mark them on-demand in the index, which is all that the queries read.
        on_demand = [o.id for o in sub.document_entries if o.is_on_demand]
        for o in sub.document_entries:
            if o.is_on_demand:
                o.object_type = STABLE
        register(store, ebrim.to_request(sub), RegistryConfig(check_patients=False))
        with store.transaction() as conn:
            conn.execute(update(S.doc_entry).where(S.doc_entry.c.id.in_(on_demand)).values(entry_type=ON_DEMAND))
        return mapping
    objs = [o for o in sub.objects if not isinstance(o, Association)]
    assocs = list(sub.associations)
    local = {o.id for o in objs}
    with store.transaction() as conn:
        replaced = {a.target: a.source for a in assocs if a.type in C.REPLACING_TYPES}
        touched = {a.source for a in assocs if a.type == C.ASSOC_HAS_MEMBER and a.source not in local
                   and a.source in store.objects(conn, [a.source])}
        for link in store.folders_holding(conn, replaced):
            fd = builder.association(link.source, replaced[link.target], id=ebrim.new_uuid(), ss_status=None)
            ref = builder.association(sub.submission_sets[0].id, fd.get("id"), id=ebrim.new_uuid())
            assocs += [ebrim.read_object(fd), ebrim.read_object(ref)]
            touched.add(link.source)
        store.insert_submission(conn, objs, assocs, now)
        store.set_status(conn, list(replaced), DEPRECATED)
        store.touch_folders(conn, touched, now)
    return mapping


def code(c: str, scheme: str = "2.16.840.1.113883.6.1") -> tuple[str, str, str]:
    return (c, scheme, c)


CONF_N = code("N", "2.16.840.1.113883.5.25")
CONF_R = code("R", "2.16.840.1.113883.5.25")
EV1, EV2, EV3 = code("EV1", "1.2.3.9"), code("EV2", "1.2.3.9"), code("EV3", "1.2.3.9")


def doc(pid: str, sym: str, uid: str, *, klass="CL-A", conf=(CONF_N,), event=(), fmt="FMT-1", type_="TY-1",
        practice="PS-1", hcft="HF-1", created="20200101120000", start=None, stop=None,
        author="123^Smith^John^^^^^^&1.2.3&ISO", refs=(), object_type=STABLE) -> etree._Element:
    codes = {"class": code(klass), "confidentiality": list(conf), "event": list(event), "format": code(fmt),
             "type": code(type_), "practice": code(practice), "hcft": code(hcft)}
    return builder.document_entry(pid, id=sym, unique_id=uid, codes=codes, creation_time=created,
                                  service_start=start, service_stop=stop, author_person=author,
                                  reference_ids=refs, object_type=object_type, hash="da39a3ee5e6b4b0d3255bfef95601890afd80709",
                                  size=0, repository_unique_id="1.2.3.4.5")


def submission(pid: str, ss_uid: str, objects: list, links: list, *, ss_author="123^Smith^John",
               source_id="1.2.3.7", submitted="20240101100000", content=None) -> etree._Element:
    ss = builder.submission_set(pid, unique_id=ss_uid, author_person=ss_author, source_id=source_id,
                                submission_time=submitted, content_type=content)
    items = [ss, builder.submission_set_marker()] + objects
    for src, tgt, typ, ident, status in links:
        items.append(builder.association(src, tgt, typ, id=ident, ss_status=status))
    return builder.submit_objects_request(items)


@dataclass
class World:
    store: RegistryStore
    ids: dict[str, str] = field(default_factory=dict)  # our names -> UUIDs

    def __getitem__(self, name: str) -> str:
        return self.ids[name]


def _hm(src, tgt, ident, status="Original"):
    return (src, tgt, C.ASSOC_HAS_MEMBER, ident, status)


def build_world(url: str) -> World:
    """Two patients.

    PID, submission 1 (SS1): D1 (class A, N, events 1+2, 2020, Smith, ref R1, practice PS-1),
      D2 (class B, R, event 1, mid-2021, Doe, format 2, ref R2), D3 (class A, N and R, 2022, author
      with LIKE specials), D4 (on-demand, class A), Folder F1 (Referrals) holding D1 and D2.
    PID, submission 2 (SS2): D5 replaces D1 (RPLC), D6 appends to D2 (APND), D5 added to F1.
    PID2, submission 3 (SS3): D7 and Folder F2 holding it.
    """
    store = helpers.schema_store(url)
    w = World(store)
    s1 = submission(PID, "1.9.1", [
        doc(PID, "D1", "1.9.11", event=(EV1, EV2), created="20200101120000", start="20200101", stop="20200105",
            refs=("R1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession",)),
        doc(PID, "D2", "1.9.12", klass="CL-B", conf=(CONF_R,), event=(EV1,), fmt="FMT-2", type_="TY-2",
            practice="PS-2", hcft="HF-2", created="20210615", start="2021", stop="2022",
            author="456^Doe^Jane", refs=("R2^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession",)),
        doc(PID, "D3", "1.9.13", conf=(CONF_N, CONF_R), created="2022", author="789^O'Br%en_x\\y^Z"),
        doc(PID, "D4", "1.9.14", object_type=ON_DEMAND, created="20230101"),
        builder.folder(PID, id="F1", unique_id="1.9.15", codes=[("Referrals", "1.3.6.1.4.1.21367.100.1", "R")]),
        builder.folder_marker("F1"),
    ], [
        _hm("SubmissionSet01", "D1", "a_ss_d1"), _hm("SubmissionSet01", "D2", "a_ss_d2"),
        _hm("SubmissionSet01", "D3", "a_ss_d3"), _hm("SubmissionSet01", "D4", "a_ss_d4"),
        _hm("SubmissionSet01", "F1", "a_ss_f1"),
        _hm("F1", "D1", "a_f1_d1", None), _hm("F1", "D2", "a_f1_d2", None),
        _hm("SubmissionSet01", "a_f1_d1", "a_ss_fd1"), _hm("SubmissionSet01", "a_f1_d2", "a_ss_fd2"),
    ], submitted="20240101100000", content=code("CT-1", "1.2.250.1.213.1.1.4.12"))
    m1 = load(store, s1, now="20240101100000")
    w.ids.update({"SS1": m1["SubmissionSet01"], **{k: m1[k] for k in m1 if not k.startswith("cl")
                                                     and not k.startswith("ei") and k != "SubmissionSet01"}})
    s2 = submission(PID, "1.9.2", [
        doc(PID, "D5", "1.9.21", created="20230601"),
        doc(PID, "D6", "1.9.22", klass="CL-C", created="20230701"),
    ], [
        _hm("SubmissionSet01", "D5", "a_ss2_d5"), _hm("SubmissionSet01", "D6", "a_ss2_d6"),
        ("D5", w["D1"], C.ASSOC_RPLC, "a_rplc", None), ("D6", w["D2"], C.ASSOC_APND, "a_apnd", None),
    ], ss_author="999^Other^Ann", source_id="1.2.3.8", submitted="20240301100000",
        content=code("CT-2", "1.2.250.1.213.1.1.4.12"))
    m2 = load(store, s2, now="20240301100000")
    w.ids.update({"SS2": m2["SubmissionSet01"], **{k: m2[k] for k in m2 if k.startswith(("D", "a_"))}})
    # The registry put D5 in D1's folder F1 (a Folder -> D5 link, and SS2's membership of that link).
    with store.reading() as c:
        a = S.association.c
        w.ids["a_f1_d5"] = c.execute(select(a.id).where(a.source == w["F1"], a.target == w["D5"])).scalar_one()
        w.ids["a_ss2_fd5"] = c.execute(select(a.id).where(a.source == w["SS2"],
                                                          a.target == w["a_f1_d5"])).scalar_one()
    s3 = submission(PID2, "1.9.3", [
        doc(PID2, "D7", "1.9.31"),
        builder.folder(PID2, id="F2", unique_id="1.9.32"), builder.folder_marker("F2"),
    ], [_hm("SubmissionSet01", "D7", "a_ss3_d7"), _hm("SubmissionSet01", "F2", "a_ss3_f2"),
        _hm("F2", "D7", "a_f2_d7", None), _hm("SubmissionSet01", "a_f2_d7", "a_ss3_fd7")])
    m3 = load(store, s3, now="20240401100000")
    w.ids.update({"SS3": m3["SubmissionSet01"], **{k: m3[k] for k in m3 if k.startswith(("D", "F", "a_"))}})
    return w


@pytest.fixture
def world(db_url) -> World:
    return build_world(db_url)


# --- asking -----------------------------------------------------------------------------------------------

def sq(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def lst(*vs: str) -> str:
    return "(" + ",".join(sq(v) for v in vs) + ")"


def request(query_id: str, params: list[tuple[str, str | list[str]]], return_type: str = "ObjectRef",
            home: str | None = None) -> etree._Element:
    req = etree.Element(C.q(C.NS_QUERY, "AdhocQueryRequest"), nsmap={"query": C.NS_QUERY, "rim": RIM})
    etree.SubElement(req, C.q(C.NS_QUERY, "ResponseOption"), returnType=return_type, returnComposedObjects="true")
    aq = etree.SubElement(req, C.q(RIM, "AdhocQuery"), id=query_id)
    if home:
        aq.set("home", home)
    for name, values in params:
        s = etree.SubElement(aq, C.q(RIM, "Slot"), name=name)
        vl = etree.SubElement(s, C.q(RIM, "ValueList"))
        for v in [values] if isinstance(values, str) else values:
            etree.SubElement(vl, C.q(RIM, "Value")).text = v
    return req


@dataclass
class Answer:
    element: etree._Element

    @property
    def status(self) -> str:
        return self.element.get("status")

    @property
    def errors(self) -> list[tuple[str, str]]:
        return [(e.get("errorCode"), e.get("location")) for e in self.element.iter(C.q(C.NS_RS, "RegistryError"))
                if e.get("severity") == C.SEVERITY_ERROR]

    @property
    def items(self) -> list[etree._Element]:
        return list(self.element.find(C.q(RIM, "RegistryObjectList")))

    @property
    def ids(self) -> list[str]:
        return [e.get("id") for e in self.items]

    def of(self, local: str) -> list[str]:
        return [e.get("id") for e in self.items if e.tag == C.q(RIM, local)]


def ask(w: World, query_id: str, params, return_type="ObjectRef", config=None, home=None) -> Answer:
    resp = stored_query(w.store, request(query_id, params, return_type, home), config or RegistryConfig())
    assert resp.tag == C.q(C.NS_QUERY, "AdhocQueryResponse")
    return Answer(resp)


def names(w: World, ids) -> set[str]:
    back = {v: k for k, v in w.ids.items()}
    return {back.get(i, i) for i in ids}


def find_docs(w: World, *extra, statuses=(APPROVED,), return_type="ObjectRef", pid=PID) -> Answer:
    return ask(w, C.SQ_FIND_DOCUMENTS, [("$XDSDocumentEntryPatientId", sq(pid)),
                                        ("$XDSDocumentEntryStatus", lst(*statuses)), *extra], return_type)


def found(w: World, *extra, **kw) -> set[str]:
    a = find_docs(w, *extra, **kw)
    assert a.status == C.RESPONSE_SUCCESS, a.errors
    return names(w, a.ids)


# --- FindDocuments --------------------------------------------------------------------------------------

def test_find_documents_approved_stable_by_default(world):
    # D1 is Deprecated by the RPLC, D4 is on-demand, D7 belongs to another patient.
    assert found(world) == {"D2", "D3", "D5", "D6"}


def test_find_documents_status_filters(world):
    assert found(world, statuses=(DEPRECATED,)) == {"D1"}
    assert found(world, statuses=(APPROVED, DEPRECATED)) == {"D1", "D2", "D3", "D5", "D6"}
    assert found(world, statuses=(SUBMITTED,)) == set()


def test_find_documents_other_patient(world):
    assert found(world, pid=PID2) == {"D7"}
    assert found(world, pid="NOBODY^^^&1.2.3&ISO") == set()


def test_find_documents_class_code_or(world):
    cl = "2.16.840.1.113883.6.1"
    assert found(world, ("$XDSDocumentEntryClassCode", lst(f"CL-B^^{cl}"))) == {"D2"}
    assert found(world, ("$XDSDocumentEntryClassCode", lst(f"CL-B^^{cl}", f"CL-C^^{cl}"))) == {"D2", "D6"}
    # Code and scheme must both match.
    assert found(world, ("$XDSDocumentEntryClassCode", lst("CL-B^^9.9.9"))) == set()


@pytest.mark.parametrize("param, value, expected", [
    ("$XDSDocumentEntryTypeCode", "TY-2", {"D2"}),
    ("$XDSDocumentEntryPracticeSettingCode", "PS-2", {"D2"}),
    ("$XDSDocumentEntryHealthcareFacilityTypeCode", "HF-2", {"D2"}),
    ("$XDSDocumentEntryFormatCode", "FMT-2", {"D2"}),
    ("$XDSDocumentEntryFormatCode", "FMT-1", {"D3", "D5", "D6"}),
])
def test_find_documents_single_coded_attributes(world, param, value, expected):
    assert found(world, (param, lst(f"{value}^^2.16.840.1.113883.6.1")), statuses=(APPROVED,)) == expected


def test_find_documents_event_codes_or_within_slot_and_across_slots(world):
    e1, e2, e3 = "EV1^^1.2.3.9", "EV2^^1.2.3.9", "EV3^^1.2.3.9"
    both = (APPROVED, DEPRECATED)
    assert found(world, ("$XDSDocumentEntryEventCodeList", lst(e1)), statuses=both) == {"D1", "D2"}
    assert found(world, ("$XDSDocumentEntryEventCodeList", lst(e2, e3)), statuses=both) == {"D1"}
    assert found(world, ("$XDSDocumentEntryEventCodeList", lst(e1)),
                 ("$XDSDocumentEntryEventCodeList", lst(e2)), statuses=both) == {"D1"}
    assert found(world, ("$XDSDocumentEntryEventCodeList", lst(e1)),
                 ("$XDSDocumentEntryEventCodeList", lst(e3)), statuses=both) == set()


def test_find_documents_confidentiality_and_or(world):
    n, r = "N^^2.16.840.1.113883.5.25", "R^^2.16.840.1.113883.5.25"
    assert found(world, ("$XDSDocumentEntryConfidentialityCode", lst(r))) == {"D2", "D3"}
    assert found(world, ("$XDSDocumentEntryConfidentialityCode", lst(n, r))) == {"D2", "D3", "D5", "D6"}
    assert found(world, ("$XDSDocumentEntryConfidentialityCode", lst(n)),
                 ("$XDSDocumentEntryConfidentialityCode", lst(r))) == {"D3"}


def test_find_documents_creation_time_edges(world):
    both = (APPROVED, DEPRECATED)
    # From is inclusive.
    assert found(world, ("$XDSDocumentEntryCreationTimeFrom", "20210615"),
                 ("$XDSDocumentEntryCreationTimeTo", "20210616"), statuses=both) == {"D2"}
    # To is exclusive.
    assert found(world, ("$XDSDocumentEntryCreationTimeFrom", "20210101"),
                 ("$XDSDocumentEntryCreationTimeTo", "20210615"), statuses=both) == set()
    # Values of different precision compare as strings: "2022" sorts before "20220101".
    assert found(world, ("$XDSDocumentEntryCreationTimeFrom", "2022"),
                 ("$XDSDocumentEntryCreationTimeTo", "2023"), statuses=both) == {"D3"}
    assert found(world, ("$XDSDocumentEntryCreationTimeFrom", "20220101"),
                 ("$XDSDocumentEntryCreationTimeTo", "2023"), statuses=both) == set()
    # Open-ended ranges.
    assert found(world, ("$XDSDocumentEntryCreationTimeTo", "2021"), statuses=both) == {"D1"}
    assert found(world, ("$XDSDocumentEntryCreationTimeFrom", "202306"), statuses=both) == {"D5", "D6"}


def test_find_documents_service_times_skip_entries_without_them(world):
    both = (APPROVED, DEPRECATED)
    assert found(world, ("$XDSDocumentEntryServiceStartTimeFrom", "2020"), statuses=both) == {"D1", "D2"}
    assert found(world, ("$XDSDocumentEntryServiceStartTimeTo", "2021"), statuses=both) == {"D1"}
    assert found(world, ("$XDSDocumentEntryServiceStopTimeFrom", "2021"),
                 ("$XDSDocumentEntryServiceStopTimeTo", "2023"), statuses=both) == {"D2"}


def test_find_documents_author_wildcards(world):
    assert found(world, ("$XDSDocumentEntryAuthorPerson", lst("%Doe%"))) == {"D2"}
    assert found(world, ("$XDSDocumentEntryAuthorPerson", lst("456^Do_^Jane"))) == {"D2"}
    assert found(world, ("$XDSDocumentEntryAuthorPerson", lst("%Doe%", "%Smith%"))) == {"D2", "D5", "D6"}
    # Exact text without wildcards must match the whole name.
    assert found(world, ("$XDSDocumentEntryAuthorPerson", lst("Doe"))) == set()
    # Matching is case-sensitive on both backends.
    assert found(world, ("$XDSDocumentEntryAuthorPerson", lst("%doe%"))) == set()


def test_find_documents_author_special_characters_are_literal(world):
    # D3's author is 789^O'Br%en_x\y^Z: quote, percent, underscore and backslash.
    assert found(world, ("$XDSDocumentEntryAuthorPerson", lst("789^O'Br%en_x\\y^Z"))) == {"D3"}
    assert found(world, ("$XDSDocumentEntryAuthorPerson", lst("%x\\y%"))) == {"D3"}
    assert found(world, ("$XDSDocumentEntryAuthorPerson", lst("%[%"))) == set()
    assert found(world, ("$XDSDocumentEntryAuthorPerson", lst("%*%"))) == set()


def test_find_documents_entry_type(world):
    assert found(world, ("$XDSDocumentEntryType", lst(ON_DEMAND))) == {"D4"}
    assert found(world, ("$XDSDocumentEntryType", lst(STABLE, ON_DEMAND))) == {"D2", "D3", "D4", "D5", "D6"}


def test_find_documents_combined_filters(world):
    cl = "2.16.840.1.113883.6.1"
    assert found(world, ("$XDSDocumentEntryClassCode", lst(f"CL-A^^{cl}")),
                 ("$XDSDocumentEntryCreationTimeFrom", "2023"),
                 ("$XDSDocumentEntryAuthorPerson", lst("%Smith%"))) == {"D5"}


def test_find_documents_leaf_class_renders_objects(world):
    a = find_docs(world, ("$XDSDocumentEntryClassCode", lst("CL-B^^2.16.840.1.113883.6.1")),
                  return_type="LeafClass")
    assert a.status == C.RESPONSE_SUCCESS
    [eo] = a.items
    assert eo.tag == C.q(RIM, "ExtrinsicObject") and eo.get("id") == world["D2"]
    assert eo.get("status") == APPROVED
    assert eo.find(C.q(RIM, "VersionInfo")).get("versionName") == "1"
    assert "home" not in eo.attrib


def test_find_documents_deprecated_is_rendered_deprecated(world):
    a = find_docs(world, statuses=(DEPRECATED,), return_type="LeafClass")
    assert [(e.get("id"), e.get("status")) for e in a.items] == [(world["D1"], DEPRECATED)]


def test_find_documents_by_reference_id(world):
    def by_ref(*groups, statuses=(APPROVED, DEPRECATED)):
        a = ask(world, C.SQ_FIND_DOCUMENTS_BY_REFERENCE_ID,
                [("$XDSDocumentEntryPatientId", sq(PID)), ("$XDSDocumentEntryStatus", lst(*statuses))]
                + [("$XDSDocumentEntryReferenceIdList", lst(*g)) for g in groups])
        assert a.status == C.RESPONSE_SUCCESS, a.errors
        return names(world, a.ids)

    r1, r2 = "R1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession", "R2^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession"
    assert by_ref([r1]) == {"D1"}
    assert by_ref([r1, r2]) == {"D1", "D2"}
    assert by_ref([r1], statuses=(APPROVED,)) == set()
    assert by_ref([r1], [r2]) == set()
    assert by_ref(["R9^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession"]) == set()


def test_find_documents_missing_status_fails(world):
    a = ask(world, C.SQ_FIND_DOCUMENTS, [("$XDSDocumentEntryPatientId", sq(PID))])
    assert a.status == C.RESPONSE_FAILURE and a.ids == []
    assert a.errors == [(E.STORED_QUERY_MISSING_PARAM, "$XDSDocumentEntryStatus")]


def test_find_documents_unknown_parameter_warns_but_succeeds(world):
    a = find_docs(world, ("$XDSDocumentEntryPracticeSettingCodeScheme", lst("x")))
    assert a.status == C.RESPONSE_SUCCESS and len(a.ids) == 4
    warnings = [e for e in a.element.iter(C.q(C.NS_RS, "RegistryError"))]
    assert [w.get("severity") for w in warnings] == [C.SEVERITY_WARNING]


# --- FindSubmissionSets / FindFolders ----------------------------------------------------------------------

def find_ss(w, *extra, statuses=(APPROVED,), pid=PID):
    a = ask(w, C.SQ_FIND_SUBMISSION_SETS, [("$XDSSubmissionSetPatientId", sq(pid)),
                                           ("$XDSSubmissionSetStatus", lst(*statuses)), *extra])
    assert a.status == C.RESPONSE_SUCCESS, a.errors
    return names(w, a.ids)


def test_find_submission_sets(world):
    assert find_ss(world) == {"SS1", "SS2"}
    assert find_ss(world, pid=PID2) == {"SS3"}
    assert find_ss(world, statuses=(DEPRECATED,)) == set()
    assert find_ss(world, ("$XDSSubmissionSetSourceId", lst("1.2.3.8"))) == {"SS2"}
    assert find_ss(world, ("$XDSSubmissionSetSourceId", lst("1.2.3.7", "1.2.3.8"))) == {"SS1", "SS2"}
    assert find_ss(world, ("$XDSSubmissionSetSubmissionTimeFrom", "20240301100000")) == {"SS2"}
    assert find_ss(world, ("$XDSSubmissionSetSubmissionTimeTo", "20240301100000")) == {"SS1"}
    assert find_ss(world, ("$XDSSubmissionSetAuthorPerson", sq("%Other%"))) == {"SS2"}
    assert find_ss(world, ("$XDSSubmissionSetAuthorPerson", sq("%Nobody%"))) == set()
    assert find_ss(world, ("$XDSSubmissionSetContentType", lst("CT-1^^1.2.250.1.213.1.1.4.12"))) == {"SS1"}


def find_fd(w, *extra, statuses=(APPROVED,), pid=PID, level=None):
    params = [("$XDSFolderPatientId", sq(pid)), ("$XDSFolderStatus", lst(*statuses)), *extra]
    if level:
        params.append(("$MetadataLevel", str(level)))
    a = ask(w, C.SQ_FIND_FOLDERS, params)
    assert a.status == C.RESPONSE_SUCCESS, a.errors
    return names(w, a.ids)


def test_find_folders(world):
    assert find_fd(world) == {"F1"}
    assert find_fd(world, pid=PID2) == {"F2"}
    # lastUpdateTime moved when SS2 added D5 to F1.
    with world.store.reading() as c:
        last = c.execute(select(S.folder.c.last_update_time).where(S.folder.c.id == world["F1"])).scalar_one()
    assert last != "20240101100000"
    assert find_fd(world, ("$XDSFolderLastUpdateTimeFrom", last)) == {"F1"}
    assert find_fd(world, ("$XDSFolderLastUpdateTimeTo", last)) == set()
    assert find_fd(world, ("$XDSFolderLastUpdateTimeFrom", last[:4]),
                   ("$XDSFolderLastUpdateTimeTo", str(int(last[:4]) + 1))) == {"F1"}
    assert find_fd(world, ("$XDSFolderLastUpdateTimeTo", "2000")) == set()
    assert find_fd(world, ("$XDSFolderCodeList", lst("Referrals^^1.3.6.1.4.1.21367.100.1"))) == {"F1"}
    assert find_fd(world, ("$XDSFolderCodeList", lst("Referrals^^1.3.6.1.4.1.21367.100.1")),
                   ("$XDSFolderCodeList", lst("Other^^1.2"))) == set()


def test_find_folders_deprecated_hidden_at_level_one(world):
    with world.store.transaction() as c:
        c.execute(update(S.registry_object).where(S.registry_object.c.id == world["F1"]).values(status=DEPRECATED))
    assert find_fd(world, statuses=(DEPRECATED,)) == set()
    assert find_fd(world, statuses=(DEPRECATED,), level=2) == {"F1"}


# --- GetAll -----------------------------------------------------------------------------------------------

def get_all(w, *extra, de=(APPROVED,), ss=(APPROVED,), fd=(APPROVED,), return_type="ObjectRef", config=None):
    return ask(w, C.SQ_GET_ALL, [("$patientId", sq(PID)), ("$XDSDocumentEntryStatus", lst(*de)),
                                 ("$XDSSubmissionSetStatus", lst(*ss)), ("$XDSFolderStatus", lst(*fd)), *extra],
               return_type, config)


def test_get_all_composition(world):
    a = get_all(world, de=(APPROVED, DEPRECATED), return_type="LeafClass")
    assert a.status == C.RESPONSE_SUCCESS
    assert names(world, a.of("ExtrinsicObject")) == {"D1", "D2", "D3", "D5", "D6"}
    assert names(world, a.of("RegistryPackage")) == {"SS1", "SS2", "F1"}
    # Every association touching one of those objects: all of SS1's and SS2's, except the
    # ones to the on-demand D4 that was filtered out... which still touch SS1, so they stay.
    assert names(world, a.of("Association")) == {
        "a_ss_d1", "a_ss_d2", "a_ss_d3", "a_ss_d4", "a_ss_f1", "a_f1_d1", "a_f1_d2", "a_ss_fd1", "a_ss_fd2",
        "a_ss2_d5", "a_ss2_d6", "a_rplc", "a_apnd", "a_f1_d5", "a_ss2_fd5"}


def test_get_all_filters(world):
    a = get_all(world, ("$XDSDocumentEntryFormatCode", lst("FMT-2^^2.16.840.1.113883.6.1")))
    assert names(world, a.ids) >= {"D2"} and not names(world, a.ids) & {"D3", "D5", "D6"}
    a = get_all(world, ("$XDSDocumentEntryConfidentialityCode", lst("R^^2.16.840.1.113883.5.25")))
    assert {n for n in names(world, a.ids) if n.startswith("D")} == {"D2", "D3"}
    a = get_all(world, ("$XDSDocumentEntryType", lst(ON_DEMAND)))
    assert {n for n in names(world, a.ids) if n.startswith("D")} == {"D4"}
    a = get_all(world, ss=(DEPRECATED,), fd=(DEPRECATED,))
    assert not names(world, a.ids) & {"SS1", "SS2", "F1"}


def test_get_all_too_many_results(world):
    a = get_all(world, return_type="LeafClass", config=RegistryConfig(max_query_results=5))
    assert a.status == C.RESPONSE_FAILURE and a.ids == []
    assert a.errors == [(E.TOO_MANY_RESULTS, "AdhocQuery")]
    # ObjectRef answers are not limited.
    a = get_all(world, config=RegistryConfig(max_query_results=5))
    assert a.status == C.RESPONSE_SUCCESS and len(a.ids) > 5


# --- GetDocuments / GetFolders ---------------------------------------------------------------------------

def test_get_documents_by_uuid_and_unique_id(world):
    a = ask(world, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryEntryUUID", lst(world["D1"], world["D2"]))], "LeafClass")
    assert names(world, a.ids) == {"D1", "D2"}
    assert {e.get("status") for e in a.items} == {APPROVED, DEPRECATED}
    a = ask(world, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryUniqueId", lst("1.9.13"))])
    assert names(world, a.ids) == {"D3"}
    # On-demand entries are answered too: GetDocuments has no entry type filter.
    a = ask(world, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryUniqueId", lst("1.9.14"))])
    assert names(world, a.ids) == {"D4"}


def test_get_documents_ignores_other_object_kinds(world):
    a = ask(world, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryEntryUUID", lst(world["SS1"], world["F1"]))])
    assert a.status == C.RESPONSE_SUCCESS and a.ids == []


def test_get_documents_home_community_echoed(world):
    a = ask(world, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryEntryUUID", lst(world["D2"]))], "LeafClass",
            home="urn:oid:1.2.3")
    assert [e.get("home") for e in a.items] == ["urn:oid:1.2.3"]
    a = ask(world, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryEntryUUID", lst(world["D2"]))], home="urn:oid:1.2.3")
    assert [(e.tag, e.get("home")) for e in a.items] == [(C.q(RIM, "ObjectRef"), "urn:oid:1.2.3")]


def test_get_documents_not_single_patient(world):
    uuids = lst(world["D2"], world["D7"])
    a = ask(world, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryEntryUUID", uuids)], "LeafClass")
    assert a.status == C.RESPONSE_FAILURE and a.ids == []
    assert a.errors == [(E.RESULT_NOT_SINGLE_PATIENT, "AdhocQuery")]
    a = ask(world, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryEntryUUID", uuids)], "ObjectRef")
    assert a.status == C.RESPONSE_SUCCESS and names(world, a.ids) == {"D2", "D7"}


def _new_version(world: World, of: str, uid: str, sym: str, kind: str = "DE") -> str:
    """Register a second version of an entry (lid = the first version's id), as ITI-57 would."""
    if kind == "DE":
        el = doc(PID, sym, uid, klass="CL-V2", created="20240505")
    else:
        el = builder.folder(PID, id=sym, unique_id=uid)
    el.set("lid", world[of])
    objs = [el, builder.folder_marker(sym)] if kind == "FD" else [el]
    m = load(world.store, submission(PID, f"1.9.9{len(world.ids)}", objs, [_hm("SubmissionSet01", sym, f"a_v_{sym}")]),
             direct=True)
    new = m[sym]
    world.ids[sym] = new
    with world.store.transaction() as c:
        # Numbered behind the store's back (ITI-57 passes the version to insert_submission): the stored text
        # no longer holds the row's versionName, so it is not answer-ready (registry/splice.py prepare).
        c.execute(update(S.registry_object).where(S.registry_object.c.id == new).values(version=2, ready=False))
        c.execute(update(S.registry_object).where(S.registry_object.c.id == world[of]).values(status=DEPRECATED))
    return new


def test_get_documents_versions(world):
    _new_version(world, "D3", "1.9.13", "D3v2")
    by_uid = [("$XDSDocumentEntryUniqueId", lst("1.9.13"))]
    # Level 1 answers the latest version only; level 2 every version.
    assert names(world, ask(world, C.SQ_GET_DOCUMENTS, by_uid).ids) == {"D3v2"}
    assert names(world, ask(world, C.SQ_GET_DOCUMENTS, by_uid + [("$MetadataLevel", "2")]).ids) == {"D3", "D3v2"}
    # A logical id asks for the whole history.
    a = ask(world, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryLogicalID", lst(world["D3"]))], "LeafClass")
    assert {(e.get("lid"), e.find(C.q(RIM, "VersionInfo")).get("versionName"), e.get("status"))
            for e in a.items} == {(world["D3"], "1", DEPRECATED), (world["D3"], "2", APPROVED)}
    # FindDocuments with Deprecated: the superseded version stays hidden at level 1.
    assert "D3" not in found(world, statuses=(APPROVED, DEPRECATED))
    assert "D3" in found(world, ("$MetadataLevel", "2"), statuses=(APPROVED, DEPRECATED))


def test_get_documents_offline_hidden_at_level_one(world):
    with world.store.transaction() as c:
        c.execute(update(S.doc_entry).where(S.doc_entry.c.id == world["D2"]).values(
            availability=C.AVAILABILITY_OFFLINE))
    by_uuid = [("$XDSDocumentEntryEntryUUID", lst(world["D2"]))]
    assert ask(world, C.SQ_GET_DOCUMENTS, by_uuid).ids == []
    assert names(world, ask(world, C.SQ_GET_DOCUMENTS, by_uuid + [("$MetadataLevel", "2")]).ids) == {"D2"}
    assert "D2" not in found(world)


def test_get_folders(world):
    a = ask(world, C.SQ_GET_FOLDERS, [("$XDSFolderEntryUUID", lst(world["F1"]))], "LeafClass")
    assert names(world, a.ids) == {"F1"} and a.items[0].tag == C.q(RIM, "RegistryPackage")
    assert names(world, ask(world, C.SQ_GET_FOLDERS, [("$XDSFolderUniqueId", lst("1.9.15", "1.9.32"))]).ids) == {
        "F1", "F2"}
    # A DocumentEntry id is not a folder.
    assert ask(world, C.SQ_GET_FOLDERS, [("$XDSFolderEntryUUID", lst(world["D2"]))]).ids == []


def test_get_folders_versions(world):
    _new_version(world, "F1", "1.9.15", "F1v2", kind="FD")
    by_uid = [("$XDSFolderUniqueId", lst("1.9.15"))]
    assert names(world, ask(world, C.SQ_GET_FOLDERS, by_uid).ids) == {"F1v2"}
    assert names(world, ask(world, C.SQ_GET_FOLDERS, by_uid + [("$MetadataLevel", "2")]).ids) == {"F1", "F1v2"}
    a = ask(world, C.SQ_GET_FOLDERS, [("$XDSFolderLogicalID", lst(world["F1"]))])
    assert names(world, a.ids) == {"F1", "F1v2"}


# --- association queries --------------------------------------------------------------------------------

def test_get_associations(world):
    a = ask(world, C.SQ_GET_ASSOCIATIONS, [("$uuid", lst(world["D2"]))], "LeafClass")
    assert names(world, a.ids) == {"a_ss_d2", "a_f1_d2", "a_apnd"}
    assert all(e.tag == C.q(RIM, "Association") for e in a.items)
    a = ask(world, C.SQ_GET_ASSOCIATIONS, [("$uuid", lst(world["F1"], world["a_f1_d1"]))])
    assert names(world, a.ids) == {"a_ss_f1", "a_f1_d1", "a_f1_d2", "a_f1_d5", "a_ss_fd1"}


def test_get_associations_status(world):
    with world.store.transaction() as c:
        c.execute(update(S.association).where(S.association.c.id == world["a_apnd"]).values(status=DEPRECATED))
    uuid = [("$uuid", lst(world["D2"]))]
    assert names(world, ask(world, C.SQ_GET_ASSOCIATIONS, uuid).ids) == {"a_ss_d2", "a_f1_d2"}
    assert names(world, ask(world, C.SQ_GET_ASSOCIATIONS, uuid + [("$MetadataLevel", "2")]).ids) == {
        "a_ss_d2", "a_f1_d2", "a_apnd"}
    only_dep = uuid + [("$MetadataLevel", "2"), ("$XDSAssociationStatus", lst(DEPRECATED))]
    assert names(world, ask(world, C.SQ_GET_ASSOCIATIONS, only_dep).ids) == {"a_apnd"}


def test_get_documents_and_associations(world):
    a = ask(world, C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS, [("$XDSDocumentEntryUniqueId", lst("1.9.12"))], "LeafClass")
    assert names(world, a.of("ExtrinsicObject")) == {"D2"}
    assert names(world, a.of("Association")) == {"a_ss_d2", "a_f1_d2", "a_apnd"}
    a = ask(world, C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS, [("$XDSDocumentEntryEntryUUID", lst(world["D3"]))])
    assert names(world, a.ids) == {"D3", "a_ss_d3"}


def test_get_documents_and_associations_status(world):
    with world.store.transaction() as c:
        c.execute(update(S.association).where(S.association.c.id == world["a_apnd"]).values(status=DEPRECATED))
    by_uid = [("$XDSDocumentEntryUniqueId", lst("1.9.12"))]
    a = ask(world, C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS, by_uid)
    assert names(world, a.ids) == {"D2", "a_ss_d2", "a_f1_d2"}
    a = ask(world, C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS,
            by_uid + [("$MetadataLevel", "2"), ("$XDSAssociationStatus", lst(APPROVED, DEPRECATED))])
    assert names(world, a.ids) == {"D2", "a_ss_d2", "a_f1_d2", "a_apnd"}


def test_get_submission_sets(world):
    a = ask(world, C.SQ_GET_SUBMISSION_SETS, [("$uuid", lst(world["D2"], world["D5"]))], "LeafClass")
    assert names(world, a.of("RegistryPackage")) == {"SS1", "SS2"}
    assert names(world, a.of("Association")) == {"a_ss_d2", "a_ss2_d5"}
    # A Folder -> DE association is a member too.
    a = ask(world, C.SQ_GET_SUBMISSION_SETS, [("$uuid", lst(world["a_f1_d5"]))])
    assert names(world, a.ids) == {"SS2", "a_ss2_fd5"}
    # F1 holds D1, but the folder is not a SubmissionSet.
    a = ask(world, C.SQ_GET_SUBMISSION_SETS, [("$uuid", lst(world["D1"]))])
    assert names(world, a.ids) == {"SS1", "a_ss_d1"}


def test_get_submission_sets_not_single_patient(world):
    a = ask(world, C.SQ_GET_SUBMISSION_SETS, [("$uuid", lst(world["D2"], world["D7"]))], "LeafClass")
    assert a.errors == [(E.RESULT_NOT_SINGLE_PATIENT, "AdhocQuery")]


# --- composition queries ----------------------------------------------------------------------------------

def ss_contents(w, *extra, return_type="LeafClass", **key):
    params = [("$XDSSubmissionSetUniqueId", sq(key["uid"]))] if "uid" in key else [
        ("$XDSSubmissionSetEntryUUID", sq(key["uuid"]))]
    a = ask(w, C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, params + list(extra), return_type)
    assert a.status == C.RESPONSE_SUCCESS, a.errors
    return a


def test_get_submission_set_and_contents(world):
    a = ss_contents(world, uid="1.9.1")
    assert names(world, a.of("RegistryPackage")) == {"SS1", "F1"}
    # D4 is on-demand and left out by default, with its HasMember association.
    assert names(world, a.of("ExtrinsicObject")) == {"D1", "D2", "D3"}
    assert names(world, a.of("Association")) == {"a_ss_d1", "a_ss_d2", "a_ss_d3", "a_ss_f1", "a_f1_d1", "a_f1_d2",
                                                 "a_ss_fd1", "a_ss_fd2"}
    assert a.items[0].get("id") == world["SS1"]


def test_get_submission_set_and_contents_by_uuid_object_ref(world):
    a = ss_contents(world, uuid=world["SS2"], return_type="ObjectRef")
    # F1 is not a member of SS2, so its link to D5 (a member of SS2) is dropped, and with it
    # SS2's HasMember to that link.
    assert names(world, a.ids) == {"SS2", "D5", "D6", "a_ss2_d5", "a_ss2_d6"}


def test_get_submission_set_and_contents_filters(world):
    a = ss_contents(world, ("$XDSDocumentEntryConfidentialityCode", lst("R^^2.16.840.1.113883.5.25")), uid="1.9.1")
    assert names(world, a.of("ExtrinsicObject")) == {"D2", "D3"}
    # D1 is filtered out: its HasMember, its folder link and the SS membership of that link go too.
    assert names(world, a.of("Association")) == {"a_ss_d2", "a_ss_d3", "a_ss_f1", "a_f1_d2", "a_ss_fd2"}
    a = ss_contents(world, ("$XDSDocumentEntryFormatCode", lst("FMT-2^^2.16.840.1.113883.6.1")), uid="1.9.1")
    assert names(world, a.of("ExtrinsicObject")) == {"D2"}
    a = ss_contents(world, ("$XDSDocumentEntryType", lst(ON_DEMAND)), uid="1.9.1")
    assert names(world, a.of("ExtrinsicObject")) == {"D4"}
    assert "a_ss_d4" in names(world, a.of("Association"))


def test_get_submission_set_and_contents_unknown(world):
    a = ss_contents(world, uid="9.9.9")
    assert a.ids == []


def fol_contents(w, *extra, return_type="LeafClass", **key):
    params = [("$XDSFolderUniqueId", sq(key["uid"]))] if "uid" in key else [("$XDSFolderEntryUUID", sq(key["uuid"]))]
    a = ask(w, C.SQ_GET_FOLDER_AND_CONTENTS, params + list(extra), return_type)
    assert a.status == C.RESPONSE_SUCCESS, a.errors
    return a


def test_get_folder_and_contents(world):
    a = fol_contents(world, uid="1.9.15")
    assert names(world, a.of("RegistryPackage")) == {"F1"}
    assert names(world, a.of("ExtrinsicObject")) == {"D1", "D2", "D5"}
    assert names(world, a.of("Association")) == {"a_f1_d1", "a_f1_d2", "a_f1_d5"}
    a = fol_contents(world, ("$XDSDocumentEntryConfidentialityCode", lst("R^^2.16.840.1.113883.5.25")),
                     uuid=world["F1"], return_type="ObjectRef")
    assert names(world, a.ids) == {"F1", "D2", "a_f1_d2"}
    a = fol_contents(world, ("$XDSDocumentEntryFormatCode", lst("FMT-1^^2.16.840.1.113883.6.1")), uuid=world["F1"])
    assert names(world, a.ids) == {"F1", "D1", "D5", "a_f1_d1", "a_f1_d5"}


def test_get_folder_and_contents_association_status_and_versions(world):
    with world.store.transaction() as c:
        c.execute(update(S.association).where(S.association.c.id == world["a_f1_d1"]).values(status=DEPRECATED))
    a = fol_contents(world, uid="1.9.15", return_type="ObjectRef")
    assert names(world, a.ids) == {"F1", "D2", "D5", "a_f1_d2", "a_f1_d5"}
    a = fol_contents(world, ("$MetadataLevel", "2"), ("$XDSAssociationStatus", lst(APPROVED, DEPRECATED)),
                     uid="1.9.15", return_type="ObjectRef")
    assert names(world, a.ids) == {"F1", "D1", "D2", "D5", "a_f1_d1", "a_f1_d2", "a_f1_d5"}
    _new_version(world, "F1", "1.9.15", "F1v2", kind="FD")
    a = fol_contents(world, uid="1.9.15", return_type="ObjectRef")
    assert names(world, a.ids) == {"F1v2"}
    a = fol_contents(world, ("$MetadataLevel", "2"), uid="1.9.15", return_type="ObjectRef")
    assert names(world, a.ids) >= {"F1", "F1v2", "D1"}


def test_get_folder_and_contents_entry_type(world):
    with world.store.transaction() as c:
        c.execute(update(S.doc_entry).where(S.doc_entry.c.id == world["D2"]).values(entry_type=ON_DEMAND))
    a = fol_contents(world, uuid=world["F1"], return_type="ObjectRef")
    assert names(world, a.ids) == {"F1", "D1", "D5", "a_f1_d1", "a_f1_d5"}
    a = fol_contents(world, ("$XDSDocumentEntryType", lst(ON_DEMAND)), uuid=world["F1"], return_type="ObjectRef")
    assert names(world, a.ids) == {"F1", "D2", "a_f1_d2"}


def test_get_folder_and_contents_unknown(world):
    assert fol_contents(world, uid="9.9.9").ids == []


def test_get_folders_for_document(world):
    a = ask(world, C.SQ_GET_FOLDERS_FOR_DOCUMENT, [("$XDSDocumentEntryEntryUUID", sq(world["D5"]))], "LeafClass")
    assert names(world, a.ids) == {"F1"} and a.items[0].tag == C.q(RIM, "RegistryPackage")
    a = ask(world, C.SQ_GET_FOLDERS_FOR_DOCUMENT, [("$XDSDocumentEntryUniqueId", sq("1.9.31"))])
    assert names(world, a.ids) == {"F2"}
    assert ask(world, C.SQ_GET_FOLDERS_FOR_DOCUMENT, [("$XDSDocumentEntryUniqueId", sq("1.9.13"))]).ids == []
    # Only Approved folder memberships count.
    with world.store.transaction() as c:
        c.execute(update(S.association).where(S.association.c.id == world["a_f1_d5"]).values(status=DEPRECATED))
    assert ask(world, C.SQ_GET_FOLDERS_FOR_DOCUMENT, [("$XDSDocumentEntryEntryUUID", sq(world["D5"]))]).ids == []


def related(w, *extra, types=(C.ASSOC_RPLC, C.ASSOC_APND), return_type="ObjectRef", **key):
    params = [("$XDSDocumentEntryUniqueId", sq(key["uid"]))] if "uid" in key else [
        ("$XDSDocumentEntryEntryUUID", sq(key["uuid"]))]
    a = ask(w, C.SQ_GET_RELATED_DOCUMENTS, params + [("$AssociationTypes", lst(*types))] + list(extra), return_type)
    assert a.status == C.RESPONSE_SUCCESS, a.errors
    return a


def test_get_related_documents_both_directions(world):
    # D1 is the target of D5's RPLC.
    assert names(world, related(world, uuid=world["D1"]).ids) == {"D1", "D5", "a_rplc"}
    # D5 is the source of it.
    a = related(world, uid="1.9.21", return_type="LeafClass")
    assert names(world, a.of("ExtrinsicObject")) == {"D1", "D5"}
    assert names(world, a.of("Association")) == {"a_rplc"}


def test_get_related_documents_type_filter(world):
    assert names(world, related(world, uuid=world["D2"], types=(C.ASSOC_APND,)).ids) == {"D2", "D6", "a_apnd"}
    # Nothing related by the asked types: nothing at all, not even the document.
    assert related(world, uuid=world["D2"], types=(C.ASSOC_RPLC,)).ids == []
    assert related(world, uuid=world["D3"]).ids == []
    assert related(world, uuid="urn:uuid:00000000-0000-0000-0000-000000000000").ids == []
    # HasMember links to folders and submission sets never count as relations.
    assert related(world, uuid=world["D3"], types=(C.ASSOC_HAS_MEMBER,)).ids == []


def test_get_related_documents_deprecated_association(world):
    with world.store.transaction() as c:
        c.execute(update(S.association).where(S.association.c.id == world["a_apnd"]).values(status=DEPRECATED))
    assert related(world, uuid=world["D2"]).ids == []
    a = related(world, ("$MetadataLevel", "2"), uuid=world["D2"])
    assert names(world, a.ids) == {"D2", "D6", "a_apnd"}
    a = related(world, ("$MetadataLevel", "2"), ("$XDSAssociationStatus", lst(APPROVED)), uuid=world["D2"])
    assert a.ids == []


def test_get_related_documents_entry_type(world):
    with world.store.transaction() as c:
        c.execute(update(S.doc_entry).where(S.doc_entry.c.id == world["D6"]).values(entry_type=ON_DEMAND))
    assert related(world, uuid=world["D2"]).ids == []
    a = related(world, ("$XDSDocumentEntryType", lst(ON_DEMAND)), uuid=world["D2"])
    assert names(world, a.ids) == {"D2", "D6", "a_apnd"}


# --- envelope and failures ---------------------------------------------------------------------------------

def test_unknown_stored_query(world):
    a = ask(world, "urn:uuid:11111111-2222-3333-4444-555555555555", [])
    assert a.status == C.RESPONSE_FAILURE
    assert a.errors == [(E.UNKNOWN_STORED_QUERY, "urn:uuid:11111111-2222-3333-4444-555555555555")]


def test_parameter_error_reaches_response(world):
    a = find_docs(world, ("$XDSDocumentEntryClassCode", lst("a^^")))
    assert a.status == C.RESPONSE_FAILURE and a.ids == []
    err = next(a.element.iter(C.q(C.NS_RS, "RegistryError")))
    assert err.get("errorCode") == E.REGISTRY_ERROR
    assert err.get("location") == "$XDSDocumentEntryClassCode"
    assert "$XDSDocumentEntryClassCode" in err.get("codeContext")


def test_internal_error_does_not_leak(world, monkeypatch, caplog):
    def broken(*_a, **_k):
        raise RuntimeError("secret table detail")

    monkeypatch.setattr(world.store, "object_rows", broken)
    with caplog.at_level(logging.ERROR, logger="registry.query"):
        a = find_docs(world, return_type="LeafClass")
    assert a.status == C.RESPONSE_FAILURE and a.errors == [(E.REGISTRY_ERROR, "AdhocQuery")]
    text = etree.tostring(a.element).decode()
    assert "secret" not in text and "Traceback" not in text
    assert any("secret table detail" in (r.exc_text or "") for r in caplog.records)


def test_object_ref_has_no_duplicates(world):
    a = ask(world, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryEntryUUID", [lst(world["D2"]), lst(world["D2"])])])
    assert a.ids == [world["D2"]]


# --- plans on PostgreSQL --------------------------------------------------------------------------------------

def _plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_find_documents_uses_reg_object_index_on_postgres(db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("EXPLAIN is checked on PostgreSQL")
    store = RegistryStore(db_url)
    store.create_schema()
    objs = []
    for p in range(300):
        pid = f"EX{p:04d}^^^&1.2.3&ISO"
        for i in range(10):
            objs.append(doc(pid, f"d{p}_{i}", f"1.7.{p}.{i}", klass=f"CL-{i % 4}", created=f"20{10 + i:02d}0101",
                            event=(EV1,) if i % 2 else ()))
    sub = ebrim.parse_submission(builder.submit_objects_request(objs))
    ebrim.assign_uuids(sub)
    with store.transaction() as c:
        store.insert_submission(c, sub.objects, [], "20240101000000")
    with store.engine.connect() as c:
        c.exec_driver_sql("ANALYZE")
    params = parse_params(C.SQ_FIND_DOCUMENTS, [
        _raw("$XDSDocumentEntryPatientId", sq("EX0042^^^&1.2.3&ISO")),
        _raw("$XDSDocumentEntryStatus", lst(APPROVED)),
        _raw("$XDSDocumentEntryClassCode", lst("CL-1^^2.16.840.1.113883.6.1")),
        _raw("$XDSDocumentEntryCreationTimeFrom", "2012"),
        _raw("$XDSDocumentEntryCreationTimeTo", "2019"),
        _raw("$XDSDocumentEntryEventCodeList", lst("EV1^^1.2.3.9")),
    ])
    with store.reading() as c:
        stmt, values = find_documents_select(Ctx(c, True, params, partitioned=store.partitioned))
        sql = str(stmt.params(values).compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True}))
        rows = c.execute(stmt, values).all()
        plan = c.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql).scalar()
        if isinstance(plan, str):  # psycopg2 usually decodes json itself
            plan = json.loads(plan)
    nodes = list(_plan_nodes(plan[0]["Plan"]))
    # Partitioned by patient (XDS_TEST_PARTITIONS), the patient's partition reg_object_pN and its own index.
    table = re.compile(r"reg_object(_p\d+)?$")
    on_reg_object = [n for n in nodes if table.match(n.get("Relation Name") or "")]
    assert on_reg_object, nodes
    assert not [n for n in on_reg_object if n["Node Type"] == "Seq Scan"]
    assert any(n["Node Type"] in ("Index Scan", "Bitmap Heap Scan", "Index Only Scan") for n in on_reg_object)
    assert any(re.match(r"ix_reg_object|reg_object_p\d+_patient_id", n.get("Index Name") or "") for n in nodes)
    # Class CL-1 with events at i=1,5,9 -> creation 2011, 2015, 2019: only 2015 is in [2012, 2019).
    assert len(rows) == 1


def _raw(name, value):
    return RawSlot(name, [value])


def test_by_id_leaf_class_answers_read_the_stored_text_with_their_rows(world):
    """GetRelatedDocuments and GetFolderAndContents read each DocumentEntry's and Association's stored
    text in the statement that selects it (and an association's two directions in one statement), so the
    LeafClass answer needs no second read of either table: GetRelatedDocuments is three statements, and
    GetFolderAndContents reads only the Folder again (its lastUpdateTime). The answers are the same
    objects as the ObjectRef ones, parsed from those rows."""
    from tests.test_query_limits import RowMeter

    def measured(fn):
        meter = RowMeter(world.store.engine)
        try:
            answer = fn()
        finally:
            meter.close()
        # Tables partitioned by patient (XDS_TEST_PARTITIONS) read the ids' patients first (filters.pin_ids).
        return answer, [sql for sql, _, _ in meter.statements if sql.lstrip().upper().startswith("SELECT")
                        and "FROM registry_key" not in sql]

    leaf, statements = measured(lambda: related(world, uuid=world["D1"], return_type="LeafClass"))
    assert names(world, leaf.ids) == names(world, related(world, uuid=world["D1"]).ids) == {"D1", "D5", "a_rplc"}
    assert len(statements) == 3, statements
    assert "UNION ALL" in statements[1] and "association.xml" in statements[1]
    assert all("reg_object.xml" in s for s in (statements[0], statements[2]))

    leaf, statements = measured(lambda: fol_contents(world, uuid=world["F1"], return_type="LeafClass"))
    refs = fol_contents(world, uuid=world["F1"], return_type="ObjectRef")
    assert names(world, leaf.ids) == names(world, refs.ids) and names(world, leaf.of("ExtrinsicObject")) >= {"D1"}
    reread = [s for s in statements if "folder.last_update_time" in s]
    assert len(reread) == 1, statements
    assert not any("FROM association" in s and "association.xml" not in s for s in statements), statements
