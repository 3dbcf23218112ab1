"""Section logs: what each step sent, received, assigned and reported.

Later steps, sections and tests read them (UseId, UseReport, ReferenceMetadata), and
Assertions run XPath over their XML form, which mirrors the toolkit's log.xml
(TestResults/TestStep[@id]/<Transaction>/{InputMetadata, Result, ...}) because some
test plans address that structure directly.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lxml import etree

ASSIGNED_SECTIONS = ("AssignedUids", "AssignedUuids", "AssignedPatientId", "AssignedSourceId")


@dataclass
class StepLog:
    step_id: str
    transaction: str
    input: etree._Element | None = None    # the request body exactly as sent
    result: etree._Element | None = None   # the response body
    assigned: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in ASSIGNED_SECTIONS})
    reports: dict[str, str] = field(default_factory=dict)
    passed: bool = False

    def element(self, name: str) -> etree._Element | None:
        """The wrapper a Report's `section` names, holding a copy of that part of the log."""
        source = {"InputMetadata": self.input, "Result": self.result}.get(name)
        if source is None:
            return None
        wrapper = etree.Element(name)
        wrapper.append(copy.deepcopy(source))
        return wrapper


@dataclass
class SectionLog:
    test: str
    section: str
    steps: list[StepLog] = field(default_factory=list)

    def step(self, step_id: str) -> StepLog | None:
        for s in reversed(self.steps):
            if s.step_id == step_id:
                return s
        return None

    def to_xml(self) -> etree._Element:
        root = etree.Element("TestResults", test=self.test, section=self.section)
        for s in self.steps:
            st = etree.SubElement(root, "TestStep", id=s.step_id, status="Pass" if s.passed else "Fail")
            tx = etree.SubElement(st, s.transaction or "NullTransaction")
            for name in ("InputMetadata", "Result"):
                el = s.element(name)
                if el is not None:
                    tx.append(el)
            for name, values in s.assigned.items():
                if values:
                    block = etree.SubElement(tx, name)
                    for symbol, value in values.items():
                        etree.SubElement(block, "Assign", symbol=symbol, id=value)
            for name, value in s.reports.items():
                etree.SubElement(tx, "Report", name=name).text = value
        return root


class LogStore:
    """Every section log of a run, keyed by (test id, section name)."""

    def __init__(self):
        self._logs: dict[tuple[str, str], SectionLog] = {}

    def open(self, test: str, section: str) -> SectionLog:
        log = SectionLog(test, section)
        self._logs[(test, section)] = log
        return log

    def get(self, test: str, section: str) -> SectionLog | None:
        return self._logs.get((test, section))


def resolve_testdir(test: str, section: str, testdir: str) -> tuple[str, str] | None:
    """A UseId testdir is a path relative to the current section's log folder <test>/<section>."""
    parts = [test] + ([section] if section else [])
    for piece in testdir.replace("\\", "/").split("/"):
        if piece in ("", "."):
            continue
        if piece == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(piece)
    if len(parts) == 2:
        return parts[0], parts[1]
    if len(parts) == 1:
        return parts[0], ""
    return None
