"""Known defects of the NIST test kit, corrected so that a test checks what its readme says it checks.

Each correction names the test, section and step it applies to, and says what it changed; the runner
puts that in the test's notes, so a report never hides that the kit's bytes were not sent as written.
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from typing import Callable

from lxml import etree

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


def _folder_in_submission_set(step: Step, prepared: Prepared) -> str:
    # 16102c and 16103c submit a new Folder and its two memberships without the HasMember associations
    # that put them in the SubmissionSet (ITI TF-3 4.1.4, 4.2.2): every registry refuses the submission.
    if prepared.payload is None:
        return ""
    def rim(local: str) -> str:
        return C.q(C.NS_RIM, local)

    rol = next(prepared.payload.iter(rim("RegistryObjectList")), None)
    if rol is None:
        return ""
    marked = {c.get("classificationNode"): c.get("classifiedObject") for c in rol.iter(rim("Classification"))}
    ss, folder = marked.get(C.SS_CLASSIFICATION_NODE), marked.get(C.FOLDER_CLASSIFICATION_NODE)
    if not ss or not folder:
        return ""
    links = [a for a in rol.iter(rim("Association")) if a.get("associationType") == C.ASSOC_HAS_MEMBER]
    held = {a.get("targetObject") for a in links if a.get("sourceObject") == ss}
    missing = [t for t in [folder] + [a.get("id") for a in links if a.get("sourceObject") == folder]
               if t not in held]
    for target in missing:
        etree.SubElement(rol, rim("Association"), {
            "id": f"urn:uuid:{uuid.uuid4()}", "objectType": C.OBJECT_TYPE_ASSOCIATION,
            "associationType": C.ASSOC_HAS_MEMBER, "sourceObject": ss, "targetObject": target})
    return f"added the SubmissionSet's HasMember to {', '.join(missing)}" if missing else ""


def _history_query(step: Step, prepared: Prepared) -> str:
    # The XPID tests (2011) count the versions a link change superseded with $MetadataLevel 1, which since
    # XDS Metadata Update answers the latest versions only and no Deprecated Folder (ITI TF-2a 3.18.4.1.2.3.5);
    # asking for Deprecated entries is asking for that history, which level 2 returns.
    if prepared.payload is None:
        return ""
    slots = {s.get("name"): s for s in prepared.payload.iter(C.q(C.NS_RIM, "Slot"))}
    status = slots.get("$XDSDocumentEntryStatus", slots.get("$XDSFolderStatus"))
    level = slots.get("$MetadataLevel")
    if status is None or level is None or "Deprecated" not in "".join(status.itertext()):
        return ""
    value = next(level.iter(C.q(C.NS_RIM, "Value")), None)
    if value is None or (value.text or "").strip() != "1":
        return ""
    value.text = "2"
    return "$MetadataLevel 1 -> 2 (the query asks for the Deprecated versions the link change superseded)"


def _submission_set_of_the_wire_sample(step: Step, prepared: Prepared) -> str:
    # PnrNoXop's eval reads the AssignedUids of its submit step, written for 11966's ProvideAndRegister
    # (which assigns them), but its submit is an HttpTransaction that sends recorded bytes and assigns none:
    # the SubmissionSet uniqueId those bytes carry is the one it means.
    found = re.search(rb'identificationScheme="' + C.SS_UNIQUE_ID.encode() + rb'"[^>]*?value="([^"]+)"'
                      rb'|value="([^"]+)"[^>]*?identificationScheme="' + C.SS_UNIQUE_ID.encode() + rb'"',
                      prepared.http_body or b"")
    if found is None:
        return ""
    value = (found.group(1) or found.group(2)).decode("ascii", "replace")
    prepared.assigned.setdefault("AssignedUids", {})["SubmissionSet01"] = value
    return f"AssignedUids SubmissionSet01 = {value}, the SubmissionSet uniqueId of the bytes it sends"


CORRECTIONS = (
    Correction("PnrNoXop", "submit", "submit", "the kit's eval reads ids an HttpTransaction does not assign",
               _submission_set_of_the_wire_sample),
    Correction("50003", "delete", "delete", "the kit's request names a hard-coded repository",
               _repository_of_the_document),
    Correction("16102c", "submit", "load_two_de_fd", "the kit's submission leaves its Folder out of the "
               "SubmissionSet", _folder_in_submission_set),
    Correction("16103c", "submit", "load_two_de_fd", "the kit's submission leaves its Folder out of the "
               "SubmissionSet", _folder_in_submission_set),
) + tuple(Correction(test, section, step, "a query for superseded versions at $MetadataLevel 1", _history_query)
          for test, section, steps in (
              ("16101b", "verify_move", ("initial_XAD-PID", "new_XAD-PID")),
              ("16101b", "verify_created_docs", ("query",)),
              ("16102b", "verify_merge", ("initial_XAD-PID", "new_XAD-PID")),
              ("16102c", "verify_move", ("DE_for_Initial_XAD-PID", "FD_for_Initial_XAD-PID", "DE_for_New_XAD-PID",
                                         "FD_for_New_XAD-PID")),
              ("16103b", "verify_merge", ("new_XAD-PID",)),
              ("16103c", "verify_merge", ("verify_doc", "verify_folder")))
          for step in steps)


# UseId/UseRepositoryUniqueId/ReferenceMetadata testdirs of the ASync tests, written as if their plans sat
# in the test folder (they sit one level down, in a section) and, for 12331, naming 11890, the Stored Query
# data load of older kits, which this kit ships as 12346 (single_doc's submit_doc step, as 11897 reads it;
# the 5 ObjectRefs 12331 expects are that load's Approved entries). 12344's rplc section reads the document of
# its own submit_doc_for_rplc section with no testdir at all, which names the rplc section itself.
TESTDIRS = {
    "12331": (("../11890", "../../12346/single_doc"),),
    "12335": (("../12029/", "../../12029/"),),
    "12344": (("", "../submit_doc_for_rplc"),),
}


def corrected_testdir(test: str, testdir: str) -> str:
    for old, new in TESTDIRS.get(test, ()):
        if testdir == old or (old.endswith("/") and testdir.startswith(old)):
            return new + testdir[len(old):]
    return testdir


def fix_testdirs(ctx: SectionContext, step: Step) -> list[str]:
    """Rewrite this step's testdirs by TESTDIRS, before it is prepared; one note per change."""
    tx = step.transaction
    if tx is None or ctx.test_id not in TESTDIRS:
        return []
    notes = []
    for use in tx.use_ids + tx.use_repository_ids:
        fixed = corrected_testdir(ctx.test_id, use.testdir)
        if fixed != use.testdir:
            notes.append(f"test kit correction (a testdir this kit cannot resolve as written): "
                         f"{use.symbol} testdir {use.testdir} -> {fixed}")
            use.testdir = fixed
    if tx.reference_metadata:
        testdir, ref_step = tx.reference_metadata
        fixed = corrected_testdir(ctx.test_id, testdir)
        if fixed != testdir:
            notes.append(f"test kit correction: ReferenceMetadata testdir {testdir} -> {fixed}")
            tx.reference_metadata = (fixed, ref_step)
    return notes


# (test, section, step) -> (test its UseReport elements name, the test they mean, why): plans that read the
# patient of another test than their own, corrected before the step is prepared.
REPORT_SOURCES = {
    ("16102c", "submit", "load_two_de_fd"): (
        "IBM16102c", "16102c", "the kit's plan reads test IBM16102c, which the kit does not have; its own "
                               "add_initial_XADPID section feeds the patient it means"),
    ("16103c", "submit", "load_two_de_fd"): (
        "16101", "16103c", "the kit's plan submits for test 16101's patient instead of the one its own "
                           "add_initial_XADPID feeds (otherwise unused), so that 16101's Deprecated entry would "
                           "be counted by verify_merge"),
}


def fix_report_sources(ctx: SectionContext, step: Step) -> list[str]:
    """Rewrite this step's UseReport tests by REPORT_SOURCES, before it is prepared."""
    found = REPORT_SOURCES.get((ctx.test_id, ctx.section_name, step.id))
    if found is None or step.transaction is None:
        return []
    wrong, right, why = found
    changed = [u for u in step.transaction.use_reports if u.test == wrong]
    for use in changed:
        use.test = right
    if not changed:
        return []
    return [f"test kit correction ({why}): UseReport test={wrong} -> test={right} for "
            f"{', '.join(u.use_as for u in changed)}"]


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
