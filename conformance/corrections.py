"""Known defects of the NIST test kit, corrected so that a test checks what its readme says it checks.

Each correction names the test, section and step it applies to, and says what it changed; the runner
puts that in the test's notes, so a report never hides that the kit's bytes were not sent as written.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

from xds import constants as C

from .context import SectionContext
from .plan import PlanError, Step, load_plan
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


_SS_PATIENT = re.compile(r'identificationScheme="urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"[^>]*?value="([^"]+)"'
                         r'|value="([^"]+)"[^>]*?identificationScheme="urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"')


def wire_sample_patients(ctx: SectionContext) -> list[str]:
    """The patients named by the wire samples of this test's HttpTransactions (PnrXop, PnrNoXop).

    Those bytes go out as the kit recorded them, hard-coded patient ids included, so a feed step of the
    same test announces those patients too, as the toolkit's own run against a simulator without patient
    checks never needed."""
    found: list[str] = []
    for section in ctx.test.sections:
        path = ctx.test.plan_path(section)
        if not os.path.isfile(path):
            continue
        try:
            plan = load_plan(path)
        except PlanError:
            continue
        for step in plan.steps:
            tx = step.transaction
            if tx is None or tx.kind != "HttpTransaction" or not tx.body_file:
                continue
            body = os.path.join(os.path.dirname(path), tx.body_file)
            if not os.path.isfile(body):
                continue
            with open(body, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            for a, b in _SS_PATIENT.findall(text):
                pid = (a or b).replace("&amp;", "&")
                if pid not in found:
                    found.append(pid)
    return found
