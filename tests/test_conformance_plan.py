"""The conformance harness reading a test kit: layout, collections, testplan.xml."""
import os

import pytest
from lxml import etree

from conformance import orchestration
from conformance.plan import PlanError, load_plan, parse_plan
from conformance.testkit import TestKit

KIT = os.path.join(os.path.dirname(__file__), "fixtures", "conformance", "kit")


def _plan(xml: str):
    return parse_plan(etree.fromstring(xml))


def test_kit_layout_sections_collections_and_title():
    kit = TestKit(KIT)
    assert kit.tests_dir.endswith(os.path.join("testkit", "tests"))
    assert kit.test_ids() == ["T100", "T101", "T102"]
    t100 = kit.test("T100")
    assert t100.title == "Register one entry, then find it"
    assert [s.name for s in t100.sections] == ["feed", "submit", "eval"]  # index.idx order, not alphabetical
    assert kit.collection("reg") == ["T100"]
    assert set(kit.collections()) == {"mini", "reg", "reg_xua"}
    assert kit.source_id == "1.2.3.4.5.99"


def test_kit_accepts_any_level_of_the_layout():
    for root in (KIT, os.path.join(KIT, "testkit"), os.path.join(KIT, "testkit", "tests")):
        assert TestKit(root).test_ids() == ["T100", "T101", "T102"]
    with pytest.raises(FileNotFoundError):
        TestKit(os.path.dirname(KIT) + "/nowhere")


def test_missing_section_and_single_section_test():
    kit = TestKit(KIT)
    sections = kit.test("T101").sections
    assert [(s.name, s.exists) for s in sections] == [("submit", True), ("missing_section", False)]
    single = kit.test("T102").sections
    assert len(single) == 1 and single[0].name == "" and single[0].path == kit.test("T102").path


def test_step_expectations_and_transaction_instructions():
    plan = _plan("""<TestPlan><Test>9/s</Test>
      <TestStep id="a">
        <ExpectedStatus>Failure, PartialSuccess</ExpectedStatus>
        <ExpectedErrorCode>XDSUnknownPatientId</ExpectedErrorCode>
        <ExpectedErrorMessage>unknown</ExpectedErrorMessage>
        <NewPatientId/>
        <Goal>people read this</Goal>
        <ProvideAndRegisterTransaction>
          <XDSb/><NoPatientId/><AssignUuids/>
          <NoAssignUids id="Document01"/>
          <WaitBefore>250</WaitBefore>
          <MetadataFile>m.xml</MetadataFile>
          <Document id="Document01">doc.txt</Document>
          <UseId testdir="../x" step="s" section="AssignedUids" id="Document01" symbol="$u$"/>
          <UseReport test="15817" section="pif" step="step" reportName="$patientid$" useAs="$patientid$"/>
          <Report name="r" section="Result">//x</Report>
          <Assertions><DataRef file="THIS" as="output"/><Assert id="one">1 = 1</Assert></Assertions>
          <InteractionSequence/>
        </ProvideAndRegisterTransaction>
      </TestStep>
      <TestStep id="b"><NullTransaction/></TestStep>
    </TestPlan>""")
    a, b = plan.steps
    assert a.expected == ["Failure", "PartialSuccess"]
    assert a.error_codes == ["XDSUnknownPatientId"] and a.error_messages == ["unknown"]
    assert a.new_patient_id and not a.alt_patient_id
    tx = a.transaction
    assert tx.kind == "ProvideAndRegisterTransaction" and tx.has("NoPatientId") and tx.assign_uuids
    assert tx.assign_uids and tx.no_assign_ids == {"Document01"}
    assert tx.wait_before_ms == 250 and tx.metadata_file == "m.xml" and tx.documents == [("Document01", "doc.txt")]
    assert tx.use_ids[0].symbol == "$u$" and tx.use_ids[0].testdir == "../x"
    assert tx.use_reports[0].test == "15817" and tx.use_reports[0].use_as == "$patientid$"
    assert tx.reports[0].name == "r" and tx.assertions[0].xpath == "1 = 1"
    assert tx.unknown == []
    assert b.expected == ["Success"] and b.transaction.kind == "NullTransaction"


def test_bare_no_assign_uids_and_unknown_instruction():
    plan = _plan("""<TestPlan><TestStep id="s"><RegisterTransaction><NoAssignUids/><UseXPath/>
      </RegisterTransaction></TestStep></TestPlan>""")
    tx = plan.steps[0].transaction
    assert not tx.assign_uids and tx.unknown == ["UseXPath"]


def test_step_without_transaction_and_two_transactions():
    plan = _plan("<TestPlan><TestStep id='p'><NewPatientId/></TestStep></TestPlan>")
    assert plan.steps[0].transaction is None and plan.steps[0].new_patient_id
    with pytest.raises(PlanError):
        _plan("<TestPlan><TestStep id='p'><NullTransaction/><NullTransaction/></TestStep></TestPlan>")
    with pytest.raises(PlanError):
        _plan("<Other/>")


def test_run_parameters_written_into_the_plan_but_not_into_link_definitions(tmp_path):
    path = tmp_path / "testplan.xml"
    path.write_text("""<TestPlan><TestStep id="s"><PatientIdentityFeedTransaction>
        <PatientID>$patientid$</PatientID>
        <UseReport test="1" section="s" step="t" reportName="$patientid$" useAs="$patientid$"/>
      </PatientIdentityFeedTransaction></TestStep></TestPlan>""")
    pid = "P1^^^&1.2.3&ISO"
    tx = load_plan(str(path), {"$patientid$": pid}).steps[0].transaction
    assert tx.patient_id == pid  # the '&' survives because replacement happens in the parsed tree
    assert tx.use_reports[0].name == "$patientid$" and tx.use_reports[0].use_as == "$patientid$"


def test_skip_rules_and_references():
    kit = TestKit(KIT)
    assert "Gazelle STS" in orchestration.skip_reason(kit.test("T102"))
    assert orchestration.skip_reason(kit.test("T100")) is None
    run, skipped = orchestration.order(kit, ["T102", "T100"])
    assert run == ["T102", "T100"] and set(skipped) == {"T102"}
    assert orchestration.role_of(kit.test("T100")) == "registry"


def test_a_collection_run_brings_the_feeds_and_loads_its_tests_rely_on(tmp_path):
    """Registry tests submit for the fed "register" patients and the data loads for their own feed's
    patient, without their plans naming those feeds: a collection run alone still feeds them first."""
    def make(test_id, tags, plan="<TestPlan><TestStep id='s'><NullTransaction/></TestStep></TestPlan>"):
        folder = tmp_path / "testkit" / "tests" / test_id
        folder.mkdir(parents=True)
        (folder / "collections.txt").write_text(tags + "\n")
        (folder / "readme.txt").write_text(test_id + "\n")
        (folder / "testplan.xml").write_text(plan)

    for feed in orchestration.FEEDS:
        make(feed, "setup")
    make("12346", "setup")
    make("12374", "setup")
    make("R1", "reg_isr")
    make("Q1", "SQ.b", "<TestPlan><TestStep id='s'><UseReport test=\"12346\" section='s' step='s' "
                       "reportName='x' useAs='y'/><NullTransaction/></TestStep></TestPlan>")
    make("P1", "rep")
    kit = TestKit(str(tmp_path))
    assert orchestration.order(kit, ["R1"])[0] == ["15817", "15817b", "R1"]
    assert orchestration.order(kit, ["Q1"])[0] == ["15817", "15817b", "15818", "12346", "Q1"]
    assert orchestration.order(kit, ["P1"])[0] == ["P1"]   # a repository test has its own fed patient
