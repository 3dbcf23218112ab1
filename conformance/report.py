"""Run results as JUnit XML (for CI dashboards), a text listing and the closing line."""
from __future__ import annotations

import os

from lxml import etree

from .results import FAILED, PASSED, SKIPPED, RunResult, TestResult


def _case_name(t: TestResult) -> str:
    return f"{t.id} {t.title}".strip()


def _step_details(t: TestResult) -> str:
    lines = []
    for sec in t.sections:
        if sec.error:
            lines.append(f"[{sec.name}] {sec.error}")
        for s in sec.steps:
            lines.append(f"[{sec.name or t.id}/{s.id}] {s.transaction} expected {s.expected}: {s.status}")
            lines.extend(f"    - {p}" for p in s.problems)
    return "\n".join(lines)


def junit_xml(run: RunResult, suite: str = "xds-conformance") -> etree._Element:
    """The kit's tests in one testsuite, the setup steps (feeds, data loads) in a second one, so that a CI
    dashboard counts only tests of the SUT."""
    root = etree.Element("testsuites")
    for setup, name in ((False, suite), (True, f"{suite}-setup")):
        tests = [t for t in run.tests if t.setup == setup]
        if setup and not tests:
            continue
        _junit_suite(root, run, tests, name, setup)
    return root


def _junit_suite(root: etree._Element, run: RunResult, tests: list[TestResult], name: str, setup: bool) -> None:
    ts = etree.SubElement(root, "testsuite", name=name, tests=str(len(tests)),
                          failures=str(run.kit_count(FAILED, setup)), errors="0",
                          skipped=str(run.kit_count(SKIPPED, setup)),
                          time=f"{sum(t.elapsed for t in tests):.3f}", timestamp=run.started)
    props = etree.SubElement(ts, "properties")
    for prop, value in run.target.items():
        etree.SubElement(props, "property", name=prop, value=value)
    for t in tests:
        group = "setup" if t.setup else t.role
        case = etree.SubElement(ts, "testcase", classname=f"conformance.{group}", name=_case_name(t),
                                time=f"{t.elapsed:.3f}")
        if t.status == FAILED:
            fail = etree.SubElement(case, "failure", message=t.reason[:1000] or "failed", type="ConformanceFailure")
            fail.text = _step_details(t)
        elif t.status == SKIPPED:
            etree.SubElement(case, "skipped", message=t.reason)
        elif t.status == PASSED:
            out = etree.SubElement(case, "system-out")
            out.text = _step_details(t)


def write_junit(run: RunResult, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    etree.ElementTree(junit_xml(run)).write(path, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def text_listing(run: RunResult) -> str:
    """One line per test, failures grouped under their first problem."""
    lines = []
    for status in (PASSED, FAILED, SKIPPED):
        tests = [t for t in run.tests if t.status == status]
        if not tests:
            continue
        lines.append(f"{status.upper()} ({len(tests)}):")
        for t in tests:
            tag = " [setup]" if t.setup else ""
            why = f" — {t.reason[:240]}" if t.reason else ""
            lines.append(f"  {t.id}{tag}{why}")
    for note in run.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
