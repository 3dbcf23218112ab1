"""Request preparation: substitution, patient ids, uniqueIds, sourceId, UUIDs, UseId/UseReport."""
import os

import pytest
from lxml import etree

from conformance import rewrite, substitute
from conformance.context import EngineError, RunConfig, SectionContext
from conformance.logstore import LogStore, StepLog, resolve_testdir
from conformance.plan import parse_step
from conformance.prepare import prepare
from conformance.testkit import TestKit
from conformance.transactions import Endpoints
from xds import constants as C

KIT = os.path.join(os.path.dirname(__file__), "fixtures", "conformance", "kit")
PID = "P42^^^&1.2.3.4&ISO"
R = C.NS_RIM


def _ctx(test="T100", section="submit", logs=None, params=None):
    kit = TestKit(KIT)
    case = kit.test(test)
    sec = next(s for s in case.sections if s.name == section)
    logs = logs or LogStore()
    params = {"$patientid$": PID} if params is None else params
    return SectionContext(RunConfig(Endpoints(), source_id=kit.source_id), logs, case, sec,
                          logs.open(test, section), params, pid=params.get("$patientid$"))


def _step(xml: str):
    return parse_step(etree.fromstring(xml))


def _ei(root, scheme):
    return [e for e in root.iter(C.q(R, "ExternalIdentifier")) if e.get("identificationScheme") == scheme]


def test_replace_in_tree_longest_token_first_and_protected_elements():
    root = etree.fromstring('<a x="$p$-$p2$"><b>$p$</b><UseReport useAs="$p$"/>tail $p$</a>')
    substitute.replace_in_tree(root, {"$p$": "one&two", "$p2$": "TWO"})
    assert root.get("x") == "one&two-TWO"
    assert root.find("b").text == "one&two"
    assert root.find("UseReport").get("useAs") == "$p$"
    assert root.find("UseReport").tail == "tail one&two"
    assert b"one&amp;two" in etree.tostring(root)
    assert substitute.unresolved_tokens(etree.fromstring("<a v='$x$'><b>$y$</b></a>")) == ["$x$", "$y$"]


def test_register_preparation_in_engine_order():
    ctx = _ctx()
    step = _step("""<TestStep id="register"><RegisterTransaction><AssignUuids/>
        <MetadataFile>entry.xml</MetadataFile></RegisterTransaction></TestStep>""")
    out = prepare(step, ctx)
    body = out.payload
    assert body.tag == C.q(C.NS_LCM, "SubmitObjectsRequest")
    # patient id forced everywhere, sourceId from xdstest/sourceid.txt, fresh uniqueIds
    assert {e.get("value") for e in _ei(body, C.DE_PATIENT_ID) + _ei(body, C.SS_PATIENT_ID)} == {PID}
    assert _ei(body, C.SS_SOURCE_ID)[0].get("value") == "1.2.3.4.5.99"
    assigned = out.assigned
    assert set(assigned["AssignedUids"]) == {"Entry1", "Set1"}
    assert all(v.startswith("1.2.42.") for v in assigned["AssignedUids"].values())
    assert _ei(body, C.DE_UNIQUE_ID)[0].get("value") == assigned["AssignedUids"]["Entry1"]
    assert assigned["AssignedPatientId"] == {"Entry1": PID, "Set1": PID}
    assert assigned["AssignedSourceId"] == {"Set1": "1.2.3.4.5.99"}
    # AssignUuids: every symbolic id replaced and references followed
    uuids = assigned["AssignedUuids"]
    assert uuids["Entry1"].startswith("urn:uuid:") and uuids["Set1"].startswith("urn:uuid:")
    assoc = body.find(f".//{C.q(R, 'Association')}")
    assert assoc.get("sourceObject") == uuids["Set1"] and assoc.get("targetObject") == uuids["Entry1"]
    assert all(e.get("id").startswith("urn:uuid:") for e in body.iter() if isinstance(e.tag, str) and e.get("id"))
    assert "$now$" not in etree.tostring(body).decode()


def test_no_patient_id_no_assign_uids_for_one_object():
    ctx = _ctx()
    step = _step("""<TestStep id="s"><RegisterTransaction><NoPatientId/><NoAssignUids id="Entry1"/>
        <MetadataFile>entry.xml</MetadataFile></RegisterTransaction></TestStep>""")
    out = prepare(step, ctx)
    assert out.assigned["AssignedPatientId"] == {}
    assert _ei(out.payload, C.DE_PATIENT_ID)[0].get("value") == PID  # from the $patientid$ parameter
    assert set(out.assigned["AssignedUids"]) == {"Set1"}
    assert _ei(out.payload, C.DE_UNIQUE_ID)[0].get("value") == "to.be.assigned"
    assert out.assigned["AssignedUuids"] == {}


def test_assign_uuids_gives_repeated_symbols_their_own_uuid_and_refuses_unknown_references():
    root = etree.fromstring(f"""<r xmlns:rim="{R}"><rim:ExtrinsicObject id="D1"><rim:Classification id="c1"
        classifiedObject="D1"/></rim:ExtrinsicObject><rim:ExtrinsicObject id="D2"><rim:Classification id="c1"
        classifiedObject="D2"/></rim:ExtrinsicObject></r>""")
    mapping = rewrite.assign_uuids(root, substitute.IdMaker.uuid)
    ids = [e.get("id") for e in root.iter(C.q(R, "Classification"))]
    assert len(set(ids)) == 2 and ids[0] == mapping["c1"]
    bad = etree.fromstring(f'<r xmlns:rim="{R}"><rim:Association id="a" sourceObject="Nowhere" '
                           f'targetObject="urn:uuid:0"/></r>')
    with pytest.raises(EngineError, match="Nowhere"):
        rewrite.assign_uuids(bad, substitute.IdMaker.uuid)


def test_use_id_and_use_report_read_earlier_logs():
    logs = LogStore()
    earlier = logs.open("T100", "submit")
    earlier.steps.append(StepLog("register", "RegisterTransaction",
                                 assigned={"AssignedUids": {"Entry1": "1.2.3"}, "AssignedUuids": {},
                                           "AssignedPatientId": {}, "AssignedSourceId": {}},
                                 reports={"entry_uuid": "urn:uuid:abc"}, passed=True))
    ctx = _ctx(section="eval", logs=logs)
    step = _step("""<TestStep id="q"><StoredQueryTransaction>
        <UseReport reportName="entry_uuid" section="submit" step="register" useAs="$entry$"/>
        <MetadataFile>get_documents.xml</MetadataFile></StoredQueryTransaction></TestStep>""")
    out = prepare(step, ctx)
    assert "('urn:uuid:abc')" in etree.tostring(out.payload).decode()
    assert out.link_values["$entry$"] == "urn:uuid:abc"
    missing = _step("""<TestStep id="q"><StoredQueryTransaction>
        <UseId testdir="../submit" step="register" section="AssignedUids" id="Nope" symbol="$x$"/>
        <MetadataFile>get_documents.xml</MetadataFile></StoredQueryTransaction></TestStep>""")
    with pytest.raises(EngineError, match="holds Entry1"):
        prepare(missing, ctx)
    no_log = _step("""<TestStep id="q"><StoredQueryTransaction>
        <UseReport test="15817" section="pif" step="step" reportName="$patientid$" useAs="$p$"/>
        <MetadataFile>get_documents.xml</MetadataFile></StoredQueryTransaction></TestStep>""")
    with pytest.raises(EngineError, match="no log for 15817/pif"):
        prepare(no_log, ctx)


def test_testdir_resolution():
    assert resolve_testdir("11990", "eval", "../submit") == ("11990", "submit")
    assert resolve_testdir("11897", "approved", "../../12346/single_doc") == ("12346", "single_doc")
    assert resolve_testdir("11990", "eval", "") == ("11990", "eval")
    assert resolve_testdir("12021", "retrieve", "submit") is None


def test_provide_and_register_wraps_documents_as_mtom_attachments(tmp_path):
    ctx = _ctx()
    doc = tmp_path / "note.txt"
    doc.write_bytes(b"hello there\n")
    step = _step(f"""<TestStep id="p"><ProvideAndRegisterTransaction><AssignUuids/>
        <MetadataFile>entry.xml</MetadataFile><Document id="Entry1">{doc}</Document>
        </ProvideAndRegisterTransaction></TestStep>""")
    out = prepare(step, ctx)
    assert out.payload.tag == C.q(C.NS_XDSB, "ProvideAndRegisterDocumentSetRequest")
    document = out.payload.find(C.q(C.NS_XDSB, "Document"))
    assert document.get("id") == out.assigned["AssignedUuids"]["Entry1"]
    include = document.find(C.q(C.NS_XOP, "Include"))
    cid, ctype, path = out.attachments[0]
    assert include.get("href") == "cid:" + cid and ctype == "text/plain" and path == str(doc)
    assert out.use_mtom
    assert out.submitted_documents == {out.assigned["AssignedUids"]["Entry1"]: str(doc)}


def test_clean_params_and_patient_feed_id():
    ctx = _ctx(section="eval")
    step = _step("""<TestStep id="q"><StoredQueryTransaction><CleanParams/>
        <MetadataFile>get_documents.xml</MetadataFile></StoredQueryTransaction></TestStep>""")
    out = prepare(step, ctx)
    assert out.payload.find(f".//{C.q(R, 'Slot')}") is None  # $entry$ never resolved, so the slot went
    feed = _step("<TestStep id='f'><PatientIdentityFeedTransaction/></TestStep>")
    assert prepare(feed, ctx).patient_id == PID
    fresh = _step("<TestStep id='f'><PatientIdentityFeedTransaction><CreateNewPatientId/>"
                  "</PatientIdentityFeedTransaction></TestStep>")
    new = prepare(fresh, ctx).patient_id
    assert new.startswith("P") and new.endswith("&1.3.6.1.4.1.21367.13.20.1000&ISO") and new != PID


def test_kit_correction_of_50003_names_the_documents_repository():
    """50003 (wrong documentUniqueId) names a hard-coded repository: corrected to the $repuid$ its plan
    reads, and the document's error code expected, so the test checks what its readme says."""
    from types import SimpleNamespace

    from conformance import corrections
    from conformance.plan import Step
    from conformance.prepare import Prepared
    from conformance.transactions import KINDS

    payload = etree.fromstring(
        f'<rmd:RemoveDocumentsRequest xmlns:rmd="urn:ihe:iti:rmd:2017" xmlns:xds="{C.NS_XDSB}"><xds:DocumentRequest>'
        '<xds:RepositoryUniqueId>1.2.1.1.1</xds:RepositoryUniqueId><xds:DocumentUniqueId>1.2.3.4456'
        '</xds:DocumentUniqueId></xds:DocumentRequest></rmd:RemoveDocumentsRequest>')
    prepared = Prepared(KINDS["RdTransaction"], payload=payload, link_values={"$repuid$": "1.2.250.1.999.3.1"})
    step = Step("delete", expected=["Failure"])
    notes = corrections.apply(SimpleNamespace(test_id="50003", section_name="delete"), step, prepared)
    assert payload.findtext(f".//{{{C.NS_XDSB}}}RepositoryUniqueId") == "1.2.250.1.999.3.1"
    assert step.error_codes == ["XDSDocumentUniqueIdError"]
    assert len(notes) == 1 and "1.2.1.1.1 -> 1.2.250.1.999.3.1" in notes[0]
    # Any other test's step goes out as the kit wrote it.
    other = Prepared(KINDS["RdTransaction"], payload=etree.fromstring(etree.tostring(payload)),
                     link_values={"$repuid$": "9.9"})
    assert corrections.apply(SimpleNamespace(test_id="50002", section_name="delete"), Step("delete"), other) == []
    assert other.payload.findtext(f".//{{{C.NS_XDSB}}}RepositoryUniqueId") == "1.2.250.1.999.3.1"
