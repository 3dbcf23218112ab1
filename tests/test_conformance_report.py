"""Reports: the closing line, JUnit XML and the HTML page a lab reads."""
from lxml import etree

from conformance import report, report_html
from conformance.results import FAILED, NOT_RUN, PASSED, SKIPPED, RunResult, SectionResult, StepResult, TestResult


def _run() -> RunResult:
    ok = TestResult("100", "Fine", ["reg"], sections=[SectionResult("s", [StepResult("a", "ITI-42", status=PASSED)])],
                    status=PASSED)
    bad_step = StepResult("q", "ITI-18", "Success", FAILED, ["Documents: expected 1, got 0"],
                          "http://sut/reg", "<req><x>1</x></req>", "<resp a='<&>'/>")
    bad = TestResult("200", "Broken <b>", ["reg"], status=FAILED,
                     sections=[SectionResult("eval", [bad_step, StepResult("later", "none", status=NOT_RUN)]),
                               SectionResult("gone", error="section gone is listed in index.idx but has no "
                                                           "testplan.xml")])
    bad.reason = bad.failure_summary()
    skip = TestResult("300", "STS", ["reg_xua"], status=SKIPPED, reason="XUA: needs the Gazelle STS")
    setup = TestResult("15817", "Feed", [], setup=True, status=PASSED)
    return RunResult([setup, ok, bad, skip], notes=["a note"], started="2024-01-01T00:00:00", elapsed=1.5,
                     target={"registry": "http://sut/reg"})


def test_closing_line_counts_setup_steps_apart_from_tests():
    run = _run()
    assert run.summary_line() == "conformance: 1 passed, 1 failed, 1 skipped (setup: 1 passed)"
    run.tests[0].status = FAILED
    assert run.summary_line("x") == "x: 1 passed, 1 failed, 1 skipped (setup: 1 failed)"
    assert run.count(FAILED) == 2   # a failed feed still fails the run
    assert RunResult([run.tests[1]]).summary_line() == "conformance: 1 passed, 0 failed, 0 skipped"
    assert run.tests[2].reason == "eval/q: Documents: expected 1, got 0"


def test_junit_xml():
    root = report.junit_xml(_run())
    suite, setup = root.findall("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("skipped") == "1"
    cases = suite.findall("testcase")
    assert [c.get("classname") for c in cases] == ["conformance.registry"] * 3
    assert setup.get("name") == "xds-conformance-setup" and setup.get("tests") == "1"
    assert [c.get("classname") for c in setup.findall("testcase")] == ["conformance.setup"]
    cases = [None] + cases
    failure = cases[2].find("failure")
    assert failure.get("message") == "eval/q: Documents: expected 1, got 0"
    assert "[eval/later] none expected Success: not run" in failure.text
    assert "listed in index.idx" in failure.text
    assert cases[3].find("skipped").get("message").startswith("XUA")
    assert suite.find("properties/property").get("value") == "http://sut/reg"


def test_write_reports(tmp_path):
    run = _run()
    report.write_junit(run, str(tmp_path / "out" / "junit.xml"))
    assert etree.parse(str(tmp_path / "out" / "junit.xml")).getroot().tag == "testsuites"
    report_html.write_html(run, str(tmp_path / "out" / "report.html"))
    page = (tmp_path / "out" / "report.html").read_text()
    assert "conformance: 1 passed, 1 failed, 1 skipped (setup: 1 passed)" in page
    # the failed step shows its request, its response and the expectation it missed, escaped
    assert "&lt;req&gt;&lt;x&gt;1&lt;/x&gt;&lt;/req&gt;" in page
    assert "&lt;resp a=&#x27;&lt;&amp;&gt;&#x27;/&gt;" in page
    assert "Documents: expected 1, got 0" in page
    assert "Broken &lt;b&gt;" in page and "<b>Broken" not in page


def test_text_listing_groups_by_outcome():
    text = report.text_listing(_run())
    assert text.index("PASSED (2):") < text.index("FAILED (1):") < text.index("SKIPPED (1):")
    assert "  15817 [setup]" in text and "note: a note" in text
