"""Judging replies: status and error expectations, ExpectedContents, Reports and Assertions."""
import hashlib
from datetime import date

from lxml import etree

from conformance import assertions, contents, evaluate, response_checks, retrieve_check
from conformance.logstore import SectionLog, StepLog
from conformance.plan import Assertion, ReportSpec, UseId, parse_step
from xds import constants as C
from xds.ebrim import adhoc_query_response, registry_response
from xds.errors import XdsError

U = "urn:uuid:"


def _step(inner="", status="Success"):
    return parse_step(etree.fromstring(f"<TestStep id='s'><ExpectedStatus>{status}</ExpectedStatus>{inner}"
                                       "<NullTransaction/></TestStep>"))


def _uuid(n: int) -> str:
    return f"{U}00000000-0000-4000-8000-{n:012d}"


def _rim(tag, parent=None, **attrs):
    el = etree.Element(C.q(C.NS_RIM, tag)) if parent is None else etree.SubElement(parent, C.q(C.NS_RIM, tag))
    for k, v in attrs.items():
        el.set(k, v)
    return el


def _package(ident, node, status=C.STATUS_APPROVED):
    pkg = _rim("RegistryPackage", id=ident, lid=ident, status=status)
    _rim("VersionInfo", pkg, versionName="1")
    _rim("Classification", pkg, classificationNode=node, classifiedObject=ident, id=_uuid(900))
    return pkg


def _entry(ident, status=C.STATUS_APPROVED, object_type=C.OBJECT_TYPE_STABLE):
    eo = _rim("ExtrinsicObject", id=ident, lid=ident, status=status, objectType=object_type)
    slot = _rim("Slot", eo, name="repositoryUniqueId")
    _rim("Value", _rim("ValueList", slot)).text = "1.2.3"
    _rim("VersionInfo", eo, versionName="1")
    return eo


def _assoc(n, source, target, kind=C.ASSOC_HAS_MEMBER):
    return _rim("Association", id=_uuid(n), sourceObject=source, targetObject=target, associationType=kind,
                status=C.STATUS_APPROVED)


def _response(*objects):
    return adhoc_query_response(objects)


def _check(xml, body, resolve=None):
    return contents.check(etree.fromstring(f"<ExpectedContents>{xml}</ExpectedContents>"), body, resolve)


def test_status_expectations():
    ok = registry_response()
    assert evaluate.judge_status(_step(), ok) == []
    failure = registry_response([XdsError("XDSUnknownPatientId", "who is this?")])
    assert "status Failure, expected Success" in evaluate.judge_status(_step(), failure)[0]
    assert evaluate.judge_status(_step("<ExpectedErrorCode>XDSUnknownPatientId</ExpectedErrorCode>", "Failure"),
                                 failure) == []
    wrong_code = evaluate.judge_status(_step("<ExpectedErrorCode>XDSPatientIdDoesNotMatch</ExpectedErrorCode>",
                                             "Failure"), failure)
    assert wrong_code == ["expected error code XDSPatientIdDoesNotMatch, got XDSUnknownPatientId"]
    assert evaluate.judge_status(_step("<ExpectedErrorMessage>who is</ExpectedErrorMessage>", "Failure"),
                                 failure) == []
    assert evaluate.judge_status(_step("", "Failure, Success"), failure) == []


def test_success_with_errors_fails_but_warnings_do_not():
    warned = registry_response([XdsError("XDSExtraMetadataNotSaved", "dropped", severity=C.SEVERITY_WARNING)],
                               status=C.RESPONSE_SUCCESS)
    assert evaluate.judge_status(_step(), warned) == []
    errored = registry_response([XdsError("XDSRegistryError", "boom")], status=C.RESPONSE_SUCCESS)
    assert "RegistryError(s) of severity Error" in evaluate.judge_status(_step(), errored)[0]


def test_status_must_be_a_full_urn():
    short = registry_response(status="Success")
    assert "not a full ResponseStatusType URN" in evaluate.judge_status(_step(), short)[0]


def test_expected_contents_counts_and_shapes():
    ss, de, fol = _uuid(1), _uuid(2), _uuid(3)
    body = _response(_package(ss, C.SS_CLASSIFICATION_NODE), _entry(de), _assoc(10, ss, de))
    assert _check("<SSwithOneDoc/><DocApp/><SSApproved/><Documents count='1'/><SubmissionSets count='1'/>"
                  "<Associations count='1'/><Folders count='0'/><NoDocument/>", body) == \
        ["NoDocument: got 1"]
    assert _check("<DocDep/>", body)[0].startswith("DocDep: expected every one Deprecated")
    with_folder = _response(_package(ss, C.SS_CLASSIFICATION_NODE), _package(fol, C.FOLDER_CLASSIFICATION_NODE),
                            _assoc(11, ss, fol))
    assert _check("<SSwithOneFol/><FolApp/>", with_folder) == []
    assert "expected 1 SubmissionSet, 1 DocumentEntry" in _check("<SSwithOneDoc/>", with_folder)[0]
    assert _check("<None/>", _response()) == []
    assert _check("<Bogus/>", body) == ["ExpectedContents Bogus is not understood by this harness"]


def test_object_refs_and_relationships():
    refs = _response(_rim("ObjectRef", id=_uuid(1)), _rim("ObjectRef", id=_uuid(2)))
    assert _check("<ObjectRefs count='2'/>", refs) == []
    assert _check("<ObjectRefs count='1'/>", refs) == ["ObjectRefs: expected 1, got 2"]
    rplc = _response(_entry(_uuid(1), C.STATUS_DEPRECATED), _entry(_uuid(2)), _assoc(3, _uuid(2), _uuid(1),
                                                                                      C.ASSOC_RPLC))
    assert _check("<HasRPLC/><OneDocDep/><OneDocApp/>", rplc) == []
    assert _check("<HasAPND/>", rplc) == ["HasAPND: no APND Association in the response"]


def test_unclassified_packages_are_named_in_the_message():
    bare = _rim("RegistryPackage", id=_uuid(1), lid=_uuid(1), status=C.STATUS_APPROVED)
    problems = _check("<SubmissionSets count='1'/>", _response(bare))
    assert "lack the SubmissionSet/Folder classification" in problems[0]


def test_document_entries_with_use_id():
    stable, od = _uuid(1), _uuid(2)
    body = _response(_entry(stable), _entry(od, object_type=C.OBJECT_TYPE_ON_DEMAND))
    table = {"A": stable, "B": od}

    def resolve(use: UseId) -> str:
        return table[use.id]

    spec = f"""<DocumentEntries><Include><DocumentEntry><UseId id="B" symbol="$x$"/>
        <DocumentEntryType>{C.OBJECT_TYPE_ON_DEMAND}</DocumentEntryType></DocumentEntry></Include>
        <MustOnlyInclude><DocumentEntry><UseId id="A" symbol="$y$"/></DocumentEntry></MustOnlyInclude>
        </DocumentEntries>"""
    problems = _check(spec, body, resolve)
    assert problems == [f"DocumentEntries MustOnlyInclude: unexpected entries ['{od}']"]


def test_reports_and_assertions_over_the_section_log():
    de = _uuid(7)
    entry = StepLog("q", "StoredQueryTransaction", input=etree.Element("request"),
                    result=_response(_entry(de)), passed=True)
    values, problems = assertions.evaluate_reports(
        [ReportSpec("doc", "Result", "//*[local-name()='ExtrinsicObject']/@id"),
         ReportSpec("none", "InputMetadata", "//nothing"),
         ReportSpec("bad", "Result", "//*[")], entry)
    assert values["doc"] == de and values["none"] == ""
    assert problems and problems[0].startswith("Report bad: XPath")
    log = SectionLog("T", "s", [entry])
    xml = etree.tostring(assertions.assertion_document(log)).decode()
    assert "<TestStep id=\"q\"" in xml and "<StoredQueryTransaction>" in xml and "<Result>" in xml
    asserts = [
        Assertion("by_structure", "count(//TestStep[@id='q']/StoredQueryTransaction/Result//*"
                                  "[local-name()='ExtrinsicObject']) = 1"),
        Assertion("linked", "//*[local-name()='ExtrinsicObject']/@id = 'the_doc'"),
        Assertion("string", "string(//*[local-name()='ExtrinsicObject']/@status) = "
                            "'urn:oasis:names:tc:ebxml-regrep:StatusType:Approved'"),
    ]
    assert assertions.evaluate_asserts(asserts, log, {"the_doc": de}) == []
    failed = assertions.evaluate_asserts([Assertion("no", "1 = 2"), Assertion("broken", "//*[")], log, {})
    assert failed[0] == "Assert no is false: 1 = 2" and failed[1].startswith("Assert broken: XPath error")
    today = date(2024, 2, 29)
    assert assertions.prepare_expression(" '$DATE$' = 'x' ", {}, today) == "'20240229' = 'x'"


def test_query_response_metadata_rules():
    good = _response(_entry(_uuid(1)))
    assert response_checks.check_query_response(good) == []
    bad = _rim("ExtrinsicObject", id="Document01", status="Approved")
    problems = response_checks.check_query_response(_response(bad))
    assert any("lower-case urn:uuid" in p for p in problems)
    assert any("VersionInfo" in p for p in problems) and any("repositoryUniqueId" in p for p in problems)
    assert response_checks.check_repository_id(good, "1.2.3") == []
    assert "repository under test is 9.9" in response_checks.check_repository_id(good, "9.9")[0]


def test_retrieve_checks_against_registry_view_and_submitted_bytes():
    data = b"hello"
    ref = _response(_entry(_uuid(1)))
    eo = ref.find(f".//{C.q(C.NS_RIM, 'ExtrinsicObject')}")
    eo.set("mimeType", "text/plain")
    ei = _rim("ExternalIdentifier", eo, identificationScheme=C.DE_UNIQUE_ID, value="1.9")
    assert ei is not None
    for name, value in (("hash", hashlib.sha1(data).hexdigest()), ("size", "5")):
        _rim("Value", _rim("ValueList", _rim("Slot", eo, name=name))).text = value
    view = retrieve_check.registry_view(ref)
    assert view["1.9"].mime_type == "text/plain" and view["1.9"].size == "5"
    x = C.NS_XDSB
    body = etree.Element(C.q(x, "RetrieveDocumentSetResponse"))
    etree.SubElement(body, C.q(C.NS_RS, "RegistryResponse"), status=C.RESPONSE_SUCCESS)
    dr = etree.SubElement(body, C.q(x, "DocumentResponse"))
    for tag, text in (("RepositoryUniqueId", "1.2.3"), ("DocumentUniqueId", "1.9"), ("mimeType", "text/plain"),
                      ("Document", "aGVsbG8=")):
        etree.SubElement(dr, C.q(x, tag)).text = text
    problems, reports = retrieve_check.check(body, [("1.2.3", "1.9")], view, {"1.9": data}, None)
    assert problems == [] and reports["$size_doc1$"] == "5"
    problems, _ = retrieve_check.check(body, [("1.2.4", "1.9"), ("1.2.3", "2.0")], view, {"1.9": b"other"}, None)
    assert "2 document(s) requested, 1 returned" in problems
    assert any("RepositoryUniqueId 1.2.3, requested 1.2.4" in p for p in problems)
    assert any("bytes differ" in p for p in problems)
