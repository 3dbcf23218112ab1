"""Known defects of the NIST test kit, corrected so that a test checks what its readme says it checks.

Each correction names the test, section and step it applies to, and says what it changed; the runner
puts that in the test's notes, so a report never hides that the kit's bytes were not sent as written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from xds import constants as C

from .context import SectionContext
from .plan import Step
from .prepare import Prepared


@dataclass(frozen=True)
class Correction:
    test: str
    section: str
    step: str
    why: str
    apply: Callable[[Step, Prepared], str]


def _repository_of_the_document(step: Step, prepared: Prepared) -> str:
    # 50003 is "wrong documentUniqueId", but its file also names repository 1.2.1.1.1 instead of the
    # $repuid$ its plan reads (as 50000 and 50001 do): any repository refuses it as an unknown
    # repository, and the test passes without testing the document check.
    repository = prepared.link_values.get("$repuid$")
    if not repository or prepared.payload is None:
        return ""
    changed = []
    for el in prepared.payload.iter(C.q(C.NS_XDSB, "RepositoryUniqueId")):
        if (el.text or "").strip() != repository:
            changed.append((el.text or "").strip())
            el.text = repository
    step.error_codes = list(dict.fromkeys([*step.error_codes, "XDSDocumentUniqueIdError"]))
    return (f"RepositoryUniqueId {', '.join(changed) or '(none)'} -> {repository} (the $repuid$ its plan reads); "
            "expects XDSDocumentUniqueIdError")


CORRECTIONS = (
    Correction("50003", "delete", "delete", "the kit's request names a hard-coded repository",
               _repository_of_the_document),
)


def apply(ctx: SectionContext, step: Step, prepared: Prepared) -> list[str]:
    notes = []
    for c in CORRECTIONS:
        if (c.test, c.section, c.step) == (ctx.test_id, ctx.section_name, step.id):
            done = c.apply(step, prepared)
            if done:
                notes.append(f"test kit correction ({c.why}): {done}")
    return notes
