"""ITI-18 parameter parsing: value syntax, per-query parameter tables and every error code."""
from __future__ import annotations

import pytest
from lxml import etree

from registry.config import RegistryConfig
from registry.query import stored_query
from registry.query.params import (
    ASSOCIATION_STATUS, METADATA_LEVEL, QUERIES, RawSlot, SyntaxProblem, parse_params, parse_slot_values,
    read_request,
)
from registry.store import RegistryStore
from xds import constants as C
from xds import errors as E
from xds.errors import XdsException

PID = "P1^^^&1.2.3.4&ISO"
APPROVED = C.STATUS_APPROVED
DEPRECATED = C.STATUS_DEPRECATED


def q(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def lst(*vs: str) -> str:
    return "(" + ",".join(q(v) for v in vs) + ")"


def slots(*pairs) -> list[RawSlot]:
    out = []
    for name, values in pairs:
        out.append(RawSlot(name, [values] if isinstance(values, str) else list(values)))
    return out


def find_docs(*extra) -> list[RawSlot]:
    return slots(("$XDSDocumentEntryPatientId", q(PID)), ("$XDSDocumentEntryStatus", lst(APPROVED)), *extra)


def errors_of(query_id: str, raw: list[RawSlot]) -> list[tuple[str, str, str]]:
    with pytest.raises(XdsException) as exc:
        parse_params(query_id, raw)
    return [(e.code, e.location, e.message) for e in exc.value.errors if e.is_error]


def codes_of(query_id: str, raw: list[RawSlot]) -> list[tuple[str, str]]:
    return [(c, loc) for c, loc, _ in errors_of(query_id, raw)]


# --- value syntax -----------------------------------------------------------------------------

def test_quoted_string():
    sv = parse_slot_values(["'abc'"])
    assert [(i.text, i.quoted) for i in sv.items] == [("abc", True)] and not sv.is_list


def test_doubled_quote_is_one_quote():
    sv = parse_slot_values(["'O''Brien'"])
    assert sv.items[0].text == "O'Brien"


def test_list_in_one_value_with_spaces():
    sv = parse_slot_values(["( 'a' , 'b','c' )"])
    assert [i.text for i in sv.items] == ["a", "b", "c"] and sv.is_list


def test_list_split_over_values():
    sv = parse_slot_values(["('a',", "'b')"])
    assert [i.text for i in sv.items] == ["a", "b"]


def test_list_split_without_trailing_comma():
    sv = parse_slot_values(["('a'", "'b')"])
    assert [i.text for i in sv.items] == ["a", "b"]


def test_several_values_each_a_list():
    sv = parse_slot_values(["('a')", "('b','c')"])
    assert [i.text for i in sv.items] == ["a", "b", "c"]


def test_bare_number():
    sv = parse_slot_values(["20041224"])
    assert [(i.text, i.quoted) for i in sv.items] == [("20041224", False)]


def test_commas_and_parentheses_inside_quotes_are_text():
    sv = parse_slot_values(["('a,b)', '(c')"])
    assert [i.text for i in sv.items] == ["a,b)", "(c"]


@pytest.mark.parametrize("text", ["'abc", "('a'", "'a')", "(('a'))", "('a' 'b')", "('a',,'b')", "'a' 'b'"])
def test_malformed_values(text):
    with pytest.raises(SyntaxProblem):
        parse_slot_values([text])


def test_empty_list_has_no_items():
    sv = parse_slot_values(["()"])
    assert sv.items == [] and sv.is_list


# --- the request envelope ------------------------------------------------------------------------

def _request(body: str) -> etree._Element:
    return etree.fromstring(
        f'<query:AdhocQueryRequest xmlns:query="{C.NS_QUERY}" xmlns:rim="{C.NS_RIM}">{body}</query:AdhocQueryRequest>')


def test_read_request_parts():
    req = read_request(_request(
        f'<query:ResponseOption returnType="ObjectRef" returnComposedObjects="true"/>'
        f'<rim:AdhocQuery id="{C.SQ_GET_DOCUMENTS}" home="urn:oid:1.2.3"><rim:Slot name="$x"><rim:ValueList>'
        f'<rim:Value> (\'a\') </rim:Value></rim:ValueList></rim:Slot></rim:AdhocQuery>'))
    assert (req.query_id, req.return_type, req.home) == (C.SQ_GET_DOCUMENTS, "ObjectRef", "urn:oid:1.2.3")
    assert req.slots == [RawSlot("$x", ["('a')"])]


@pytest.mark.parametrize("body, location", [
    (f'<rim:AdhocQuery id="{C.SQ_GET_DOCUMENTS}"/>', "ResponseOption"),
    ('<query:ResponseOption returnType="LeafClass"/>', "AdhocQuery"),
    (f'<query:ResponseOption returnType="RegistryObject"/><rim:AdhocQuery id="{C.SQ_GET_DOCUMENTS}"/>',
     "returnType"),
    (f'<query:ResponseOption/><rim:AdhocQuery id="{C.SQ_GET_DOCUMENTS}"/>', "returnType"),
])
def test_envelope_errors(body, location):
    with pytest.raises(XdsException) as exc:
        read_request(_request(body))
    assert exc.value.errors[0].code == E.REGISTRY_ERROR and exc.value.errors[0].location == location


def test_wrong_root_element():
    with pytest.raises(XdsException) as exc:
        read_request(etree.fromstring(f'<rim:AdhocQuery xmlns:rim="{C.NS_RIM}"/>'))
    assert exc.value.errors[0].code == E.REGISTRY_ERROR


def test_envelope_errors_through_stored_query(sqlite_url):
    store = RegistryStore(sqlite_url)
    store.create_schema()
    resp = stored_query(store, _request(f'<rim:AdhocQuery id="{C.SQ_GET_DOCUMENTS}"/>'), RegistryConfig())
    assert resp.get("status") == C.RESPONSE_FAILURE
    err = resp.find(f".//{{{C.NS_RS}}}RegistryError")
    assert err.get("errorCode") == E.REGISTRY_ERROR and "ResponseOption" in err.get("codeContext")


def test_unknown_query_id():
    errs = errors_of("urn:uuid:00000000-0000-0000-0000-000000000000", [])
    assert errs[0][0] == E.UNKNOWN_STORED_QUERY
    assert "urn:uuid:00000000-0000-0000-0000-000000000000" in errs[0][2]


def test_every_query_id_is_defined():
    ids = {C.SQ_FIND_DOCUMENTS, C.SQ_FIND_DOCUMENTS_BY_REFERENCE_ID, C.SQ_FIND_SUBMISSION_SETS,
           C.SQ_FIND_FOLDERS, C.SQ_GET_ALL, C.SQ_GET_DOCUMENTS, C.SQ_GET_FOLDERS, C.SQ_GET_ASSOCIATIONS,
           C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS, C.SQ_GET_SUBMISSION_SETS, C.SQ_GET_SUBMISSION_SET_AND_CONTENTS,
           C.SQ_GET_FOLDER_AND_CONTENTS, C.SQ_GET_FOLDERS_FOR_DOCUMENT, C.SQ_GET_RELATED_DOCUMENTS}
    assert set(QUERIES) == ids


# --- successful parsing ---------------------------------------------------------------------------

def test_find_documents_values():
    p = parse_params(C.SQ_FIND_DOCUMENTS, find_docs(
        ("$XDSDocumentEntryClassCode", "('a^^s1', 'b^^s2')"),
        ("$XDSDocumentEntryCreationTimeFrom", "2004"),
        ("$XDSDocumentEntryCreationTimeTo", "'20050101'"),
        ("$XDSDocumentEntryAuthorPerson", lst("%Smith%")),
        (METADATA_LEVEL, "2"),
    ))
    assert p.get("$XDSDocumentEntryPatientId") == PID
    assert p.get("$XDSDocumentEntryStatus") == [APPROVED]
    assert p.get("$XDSDocumentEntryClassCode") == ["a^^s1", "b^^s2"]
    assert p.get("$XDSDocumentEntryCreationTimeFrom") == "2004"
    assert p.get("$XDSDocumentEntryCreationTimeTo") == "20050101"
    assert p.get("$XDSDocumentEntryAuthorPerson") == ["%Smith%"]
    assert p.metadata_level == 2
    assert p.warnings == []


def test_metadata_level_defaults_to_one():
    assert parse_params(C.SQ_FIND_DOCUMENTS, find_docs()).metadata_level == 1


def test_and_or_parameter_keeps_one_group_per_slot():
    p = parse_params(C.SQ_FIND_DOCUMENTS, find_docs(
        ("$XDSDocumentEntryEventCodeList", ["('a^^s')", "('b^^s')"]),
        ("$XDSDocumentEntryEventCodeList", "('c^^s')"),
    ))
    assert p.get("$XDSDocumentEntryEventCodeList") == [["a^^s", "b^^s"], ["c^^s"]]


@pytest.mark.parametrize("name, query_id", [
    ("$XDSDocumentEntryConfidentialityCode", C.SQ_FIND_DOCUMENTS),
    ("$XDSFolderCodeList", C.SQ_FIND_FOLDERS),
])
def test_other_and_or_parameters_may_repeat(name, query_id):
    base = find_docs() if query_id == C.SQ_FIND_DOCUMENTS else slots(
        ("$XDSFolderPatientId", q(PID)), ("$XDSFolderStatus", lst(APPROVED)))
    p = parse_params(query_id, base + slots((name, "('a^^s')"), (name, "('b^^s')")))
    assert p.get(name) == [["a^^s"], ["b^^s"]]


def test_coded_value_middle_part_is_ignored():
    p = parse_params(C.SQ_FIND_DOCUMENTS, find_docs(("$XDSDocumentEntryClassCode", "('a^x^s')")))
    assert p.get("$XDSDocumentEntryClassCode") == ["a^^s"]


def test_single_valued_in_a_one_element_list_is_accepted():
    # NIST tests (16101, 20008) send single-valued parameters as one-element lists.
    p = parse_params(C.SQ_FIND_DOCUMENTS, slots(("$XDSDocumentEntryPatientId", lst(PID)),
                                                ("$XDSDocumentEntryStatus", lst(APPROVED))))
    assert p.get("$XDSDocumentEntryPatientId") == PID


def test_multi_valued_given_as_one_quoted_string_is_accepted():
    p = parse_params(C.SQ_FIND_DOCUMENTS, slots(("$XDSDocumentEntryPatientId", q(PID)),
                                                ("$XDSDocumentEntryStatus", q(APPROVED))))
    assert p.get("$XDSDocumentEntryStatus") == [APPROVED]


def test_duplicate_values_are_removed():
    p = parse_params(C.SQ_GET_DOCUMENTS, slots(("$XDSDocumentEntryUniqueId", ["('1.2')", "('1.2','1.3')"])))
    assert p.get("$XDSDocumentEntryUniqueId") == ["1.2", "1.3"]


def test_unknown_dollar_parameter_is_a_warning():
    p = parse_params(C.SQ_FIND_DOCUMENTS, find_docs(("$XDSDocumentEntryPracticeSettingCodeScheme", lst("x"))))
    assert [(w.code, w.location, w.severity) for w in p.warnings] == [
        (E.REGISTRY_ERROR, "$XDSDocumentEntryPracticeSettingCodeScheme", C.SEVERITY_WARNING)]


def test_extra_metadata_parameters_may_repeat_and_are_ignored():
    p = parse_params(C.SQ_FIND_DOCUMENTS, find_docs(("$urn:acme:x", lst("a")), ("$urn:acme:x", lst("b"))))
    assert len(p.warnings) == 1 and p.warnings[0].location == "$urn:acme:x"
    assert "$urn:acme:x" not in p.values


def test_association_status_and_types():
    p = parse_params(C.SQ_GET_RELATED_DOCUMENTS, slots(
        ("$XDSDocumentEntryEntryUUID", q("urn:uuid:1")),
        ("$AssociationTypes", lst(C.ASSOC_RPLC, C.ASSOC_APND)),
        (ASSOCIATION_STATUS, lst(APPROVED, DEPRECATED))))
    assert p.get("$AssociationTypes") == [C.ASSOC_RPLC, C.ASSOC_APND]
    assert p.get(ASSOCIATION_STATUS) == [APPROVED, DEPRECATED]


# --- XDSStoredQueryMissingParam ------------------------------------------------------------------

@pytest.mark.parametrize("query_id, given, missing", [
    (C.SQ_FIND_DOCUMENTS, [("$XDSDocumentEntryStatus", lst(APPROVED))], "$XDSDocumentEntryPatientId"),
    (C.SQ_FIND_DOCUMENTS, [("$XDSDocumentEntryPatientId", q(PID))], "$XDSDocumentEntryStatus"),
    (C.SQ_FIND_DOCUMENTS_BY_REFERENCE_ID, [("$XDSDocumentEntryPatientId", q(PID)),
                                           ("$XDSDocumentEntryStatus", lst(APPROVED))],
     "$XDSDocumentEntryReferenceIdList"),
    (C.SQ_FIND_SUBMISSION_SETS, [("$XDSSubmissionSetPatientId", q(PID))], "$XDSSubmissionSetStatus"),
    (C.SQ_FIND_FOLDERS, [("$XDSFolderStatus", lst(APPROVED))], "$XDSFolderPatientId"),
    (C.SQ_GET_ALL, [("$patientId", q(PID)), ("$XDSDocumentEntryStatus", lst(APPROVED)),
                    ("$XDSSubmissionSetStatus", lst(APPROVED))], "$XDSFolderStatus"),
    (C.SQ_GET_ASSOCIATIONS, [], "$uuid"),
    (C.SQ_GET_SUBMISSION_SETS, [], "$uuid"),
    (C.SQ_GET_RELATED_DOCUMENTS, [("$XDSDocumentEntryEntryUUID", q("urn:uuid:1"))], "$AssociationTypes"),
])
def test_missing_required_parameter(query_id, given, missing):
    assert (E.STORED_QUERY_MISSING_PARAM, missing) in codes_of(query_id, slots(*given))


@pytest.mark.parametrize("query_id, first", [
    (C.SQ_GET_DOCUMENTS, "$XDSDocumentEntryEntryUUID"),
    (C.SQ_GET_FOLDERS, "$XDSFolderEntryUUID"),
    (C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS, "$XDSDocumentEntryEntryUUID"),
    (C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, "$XDSSubmissionSetEntryUUID"),
    (C.SQ_GET_FOLDER_AND_CONTENTS, "$XDSFolderEntryUUID"),
    (C.SQ_GET_FOLDERS_FOR_DOCUMENT, "$XDSDocumentEntryEntryUUID"),
])
def test_choice_with_nothing_given(query_id, first):
    errs = errors_of(query_id, [])
    assert errs[0][:2] == (E.STORED_QUERY_MISSING_PARAM, first)
    assert "one of" in errs[0][2]


def test_every_error_names_its_parameter():
    errs = errors_of(C.SQ_FIND_DOCUMENTS, slots(("$XDSDocumentEntryStatus", lst("Approved"))))
    for code, location, message in errs:
        assert location.startswith("$") and location in message


# --- XDSStoredQueryParamNumber --------------------------------------------------------------------

@pytest.mark.parametrize("query_id, given, second", [
    (C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryEntryUUID", lst("urn:uuid:1")),
                          ("$XDSDocumentEntryUniqueId", lst("1.2"))], "$XDSDocumentEntryUniqueId"),
    (C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryUniqueId", lst("1.2")),
                          ("$XDSDocumentEntryLogicalID", lst("urn:uuid:1"))], "$XDSDocumentEntryLogicalID"),
    (C.SQ_GET_FOLDERS, [("$XDSFolderEntryUUID", lst("urn:uuid:1")), ("$XDSFolderUniqueId", lst("1.2"))],
     "$XDSFolderUniqueId"),
    (C.SQ_GET_SUBMISSION_SET_AND_CONTENTS, [("$XDSSubmissionSetEntryUUID", q("urn:uuid:1")),
                                            ("$XDSSubmissionSetUniqueId", q("1.2"))], "$XDSSubmissionSetUniqueId"),
    (C.SQ_GET_FOLDER_AND_CONTENTS, [("$XDSFolderEntryUUID", q("urn:uuid:1")), ("$XDSFolderUniqueId", q("1.2"))],
     "$XDSFolderUniqueId"),
    (C.SQ_GET_RELATED_DOCUMENTS, [("$XDSDocumentEntryEntryUUID", q("urn:uuid:1")),
                                  ("$XDSDocumentEntryUniqueId", q("1.2")),
                                  ("$AssociationTypes", lst(C.ASSOC_RPLC))], "$XDSDocumentEntryUniqueId"),
])
def test_choice_with_two_given(query_id, given, second):
    assert (E.STORED_QUERY_PARAM_NUMBER, second) in codes_of(query_id, slots(*given))


def test_single_valued_parameter_with_two_values():
    raw = find_docs(("$XDSDocumentEntryCreationTimeFrom", ["2004", "2005"]))
    assert codes_of(C.SQ_FIND_DOCUMENTS, raw) == [(E.STORED_QUERY_PARAM_NUMBER, "$XDSDocumentEntryCreationTimeFrom")]


def test_single_valued_parameter_given_as_a_longer_list():
    raw = slots(("$XDSDocumentEntryPatientId", lst(PID, PID.replace("P1", "P2"))),
                ("$XDSDocumentEntryStatus", lst(APPROVED)))
    assert codes_of(C.SQ_FIND_DOCUMENTS, raw) == [(E.STORED_QUERY_PARAM_NUMBER, "$XDSDocumentEntryPatientId")]


def test_non_and_parameter_in_two_slots():
    raw = find_docs(("$XDSDocumentEntryClassCode", "('a^^s')"), ("$XDSDocumentEntryClassCode", "('b^^s')"))
    errs = errors_of(C.SQ_FIND_DOCUMENTS, raw)
    assert [(c, loc) for c, loc, _ in errs] == [(E.STORED_QUERY_PARAM_NUMBER, "$XDSDocumentEntryClassCode")]
    assert "2 Slots" in errs[0][2]


def test_required_single_parameter_in_two_slots():
    raw = find_docs(("$XDSDocumentEntryPatientId", q(PID)))
    assert codes_of(C.SQ_FIND_DOCUMENTS, raw) == [(E.STORED_QUERY_PARAM_NUMBER, "$XDSDocumentEntryPatientId")]


def test_ss_author_person_is_single_valued():
    raw = slots(("$XDSSubmissionSetPatientId", q(PID)), ("$XDSSubmissionSetStatus", lst(APPROVED)),
                ("$XDSSubmissionSetAuthorPerson", lst("%a%", "%b%")))
    assert codes_of(C.SQ_FIND_SUBMISSION_SETS, raw) == [(E.STORED_QUERY_PARAM_NUMBER,
                                                         "$XDSSubmissionSetAuthorPerson")]


# --- value errors (XDSRegistryError) -----------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("$XDSDocumentEntryClassCode", "('Dialysis')"),         # no scheme
    ("$XDSDocumentEntryClassCode", "('a^^')"),              # empty scheme
    ("$XDSDocumentEntryClassCode", "('^^s')"),              # empty code
    ("$XDSDocumentEntryClassCode", "('a^^s', 'a^^^s')"),    # four parts
    ("$XDSDocumentEntryEventCodeList", "('a^b')"),
    ("$XDSDocumentEntryStatus", "('Approved')"),             # short status
    ("$XDSDocumentEntryType", "('urn:uuid:00000000-0000-0000-0000-000000000000')"),
    ("$XDSDocumentEntryCreationTimeFrom", "200412241"),      # odd length
    ("$XDSDocumentEntryCreationTimeFrom", "'2004-12-24'"),   # not digits
    ("$XDSDocumentEntryCreationTimeTo", "20041332"),         # month 13
    ("$XDSDocumentEntryServiceStartTimeFrom", "200"),        # too short
    ("$XDSDocumentEntryServiceStopTimeTo", "200412241200001"),  # too long
    ("$XDSDocumentEntryAuthorPerson", "(Smith)"),            # unquoted string
    ("$XDSDocumentEntryFormatCode", "()"),                   # empty list
    ("$XDSDocumentEntryTypeCode", "('a^^s'"),               # unclosed list
    (METADATA_LEVEL, "3"),
    (METADATA_LEVEL, "'x'"),
])
def test_bad_values(name, value):
    raw = find_docs() if name != "$XDSDocumentEntryStatus" else slots(("$XDSDocumentEntryPatientId", q(PID)))
    errs = errors_of(C.SQ_FIND_DOCUMENTS, raw + slots((name, value)))
    assert [(c, loc) for c, loc, _ in errs] == [(E.REGISTRY_ERROR, name)]
    assert name in errs[0][2]


@pytest.mark.parametrize("pid", ["P1", "P1^^^&1.2.3&XX", "P1^^^1.2.3", " P1^^^&1.2.3&ISO"])
def test_bad_patient_id(pid):
    raw = slots(("$XDSDocumentEntryPatientId", q(pid)), ("$XDSDocumentEntryStatus", lst(APPROVED)))
    assert codes_of(C.SQ_FIND_DOCUMENTS, raw) == [(E.REGISTRY_ERROR, "$XDSDocumentEntryPatientId")]


def test_bad_association_type():
    raw = slots(("$XDSDocumentEntryEntryUUID", q("urn:uuid:1")), ("$AssociationTypes", lst("RPLC")))
    assert codes_of(C.SQ_GET_RELATED_DOCUMENTS, raw) == [(E.REGISTRY_ERROR, "$AssociationTypes")]


def test_slot_name_without_dollar():
    assert codes_of(C.SQ_FIND_DOCUMENTS, find_docs(("XDSDocumentEntryClassCode", "('a^^s')"))) == [
        (E.REGISTRY_ERROR, "XDSDocumentEntryClassCode")]


def test_all_problems_are_reported_together():
    raw = slots(("$XDSDocumentEntryStatus", lst("Approved")), ("$XDSDocumentEntryClassCode", "('x')"))
    codes = sorted(codes_of(C.SQ_FIND_DOCUMENTS, raw))
    assert codes == sorted([(E.STORED_QUERY_MISSING_PARAM, "$XDSDocumentEntryPatientId"),
                            (E.REGISTRY_ERROR, "$XDSDocumentEntryStatus"),
                            (E.REGISTRY_ERROR, "$XDSDocumentEntryClassCode")])
