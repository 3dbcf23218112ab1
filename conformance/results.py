"""What a run found, test by test, section by section, step by step."""
from __future__ import annotations

from dataclasses import dataclass, field

PASSED, FAILED, SKIPPED, NOT_RUN = "passed", "failed", "skipped", "not run"


@dataclass
class StepResult:
    id: str
    transaction: str                 # ITI-42, ITI-18, …
    expected: str = "Success"
    status: str = NOT_RUN
    problems: list[str] = field(default_factory=list)
    endpoint: str = ""
    request: str = ""
    response: str = ""
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    internal_error: bool = False     # the harness itself broke, not the server


@dataclass
class SectionResult:
    name: str
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(s.status == PASSED for s in self.steps)

    def first_failure(self) -> tuple[StepResult | None, str]:
        if self.error:
            return None, self.error
        for s in self.steps:
            if s.status == FAILED:
                return s, "; ".join(s.problems)
        return None, ""


@dataclass
class TestResult:
    __test__ = False  # not a pytest class, despite the name

    id: str
    title: str = ""
    collections: list[str] = field(default_factory=list)
    role: str = "registry"
    setup: bool = False
    status: str = NOT_RUN
    reason: str = ""                 # skip reason, or the first failure
    sections: list[SectionResult] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def internal_error(self) -> bool:
        return any(s.internal_error for sec in self.sections for s in sec.steps)

    def failure_summary(self) -> str:
        for sec in self.sections:
            step, why = sec.first_failure()
            if why:
                where = f"{sec.name or self.id}/{step.id}" if step else (sec.name or self.id)
                return f"{where}: {why}"
        return ""


@dataclass
class RunResult:
    tests: list[TestResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: str = ""
    elapsed: float = 0.0
    target: dict[str, str] = field(default_factory=dict)

    def count(self, status: str) -> int:
        """Tests and setup steps alike: a failed feed fails the run."""
        return sum(1 for t in self.tests if t.status == status)

    def kit_count(self, status: str, setup: bool = False) -> int:
        return sum(1 for t in self.tests if t.status == status and t.setup == setup)

    def summary_line(self, prefix: str = "conformance") -> str:
        """The kit's tests, then the setup steps (feeds, data loads) apart: they are not tests of the SUT
        a lab could claim as passed."""
        line = (f"{prefix}: {self.kit_count(PASSED)} passed, {self.kit_count(FAILED)} failed, "
                f"{self.kit_count(SKIPPED)} skipped")
        if any(t.setup for t in self.tests):
            parts = [f"{self.kit_count(s, True)} {s}" for s in (PASSED, FAILED, SKIPPED) if self.kit_count(s, True)]
            line += f" (setup: {', '.join(parts) or 'none run'})"
        return line

    @property
    def internal_errors(self) -> list[TestResult]:
        return [t for t in self.tests if t.internal_error]
