"""State shared by the steps of a run and of a section."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .logstore import LogStore, SectionLog
from .substitute import IdMaker
from .testkit import Section, TestCase
from .transactions import Endpoints

if TYPE_CHECKING:
    from .xua import StsConfig

DEFAULT_ASSIGNING_AUTHORITY = "1.3.6.1.4.1.21367.13.20.1000"


class EngineError(Exception):
    """The step cannot be prepared or judged as the plan says (a missing log, file or report)."""


@dataclass
class RunConfig:
    endpoints: Endpoints
    repository_id: str | None = None
    source_id: str = "1.3.6.1.4.1.21367.4"
    assigning_authority: str = DEFAULT_ASSIGNING_AUTHORITY
    home_community_id: str | None = None
    ids: IdMaker = None  # type: ignore[assignment]
    sts: StsConfig | None = None  # where the XUA tests get their assertions; None: they are skipped

    def __post_init__(self):
        if self.ids is None:
            self.ids = IdMaker(self.assigning_authority)


@dataclass
class SectionContext:
    config: RunConfig
    logs: LogStore
    test: TestCase
    section: Section
    log: SectionLog
    params: dict[str, str] = field(default_factory=dict)
    pid: str | None = None            # the patient id forced into submissions of this section
    pid_override: str | None = None   # special handling: NewPatientId yields this instead of a fresh id

    @property
    def test_id(self) -> str:
        return self.test.id

    @property
    def section_name(self) -> str:
        return self.section.name
