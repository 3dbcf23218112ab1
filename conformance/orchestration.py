"""What the NIST Conformance Tool arranges before the actor tests, and which tests
cannot run offline.

Registry: five fresh patient ids, fed by tests 15817/15817b/15818/15819/15820, then the
data loads 12346 (query data), 12374 (a second patient) and 12361 (multi-patient), and
every registry test with $patientid$ = the "register" id. Repository: one fresh id.
XUA tests run only when an STS gives them their assertions (conformance/xua.py).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .substitute import IdMaker
from .testkit import TestCase, TestKit

FEEDS = ("15817", "15817b", "15818", "15819", "15820")
LOADS = ("12346", "12374", "12361")
SETUP = FEEDS + LOADS
# What tests rely on without naming it in their plans: every registry test submits for the "register"
# patients (params_for), and each data load for the patient its own feed announces.
REGISTRY_FEEDS = ("15817", "15817b")
LOAD_FEEDS = {"12346": ("15818",), "12374": ("15817b",), "12361": ("15819", "15820")}

_XUA_SUFFIXES = ("_expired", "_invalidauthnstatement", "_notyetvalid", "_secondauthncontext",
                 "_secondpurposeofuse", "_secondrole", "_unknownaudience", "_unsigned", "_withauthzconsent")
_REF_TEST = re.compile(r'\btest\s*=\s*"([^"]+)"')
_REF_DIR = re.compile(r'\btestdir\s*=\s*"\.\./\.\./([^"/]+)/')
_TESTDIR = re.compile(r'\btestdir\s*=\s*"([^"]*)"')
# Sections that the toolkit's readme says must run with the second patient id (INVENTORY §6.10).
ALT_PATIENT_SECTIONS = {("11998", "rplc")}


@dataclass
class Patients:
    register: str
    register_alt: str
    sq: str
    mpq1: str
    mpq2: str
    repository: str

    @classmethod
    def allocate(cls, ids: IdMaker) -> "Patients":
        return cls(ids.pid(), ids.pid(), ids.pid(), ids.pid(), ids.pid(), ids.pid())

    def feed_pid(self, test_id: str) -> str:
        return {"15817": self.register, "15817b": self.register_alt, "15818": self.sq,
                "15819": self.mpq1, "15820": self.mpq2}[test_id]


def role_of(case: TestCase) -> str:
    tags = case.collections
    if any(t.startswith("rep") or t in ("PR.b", "Ret.b", "repositoryb") for t in tags):
        return "repository"
    return "registry"


def params_for(case: TestCase, patients: Patients) -> dict[str, str]:
    if case.id in FEEDS:
        return {"$patientid$": patients.feed_pid(case.id)}
    if case.id == "12346":
        return {"$patientid$": patients.sq}
    if case.id == "12374":
        return {"$patientid$": patients.register_alt}
    if case.id == "12361":
        return {"$patientid$": patients.mpq1, "$patient_id1$": patients.mpq1, "$patient_id2$": patients.mpq2}
    if role_of(case) == "repository":
        return {"$patientid$": patients.repository}
    return {"$patientid$": patients.register, "$altpatientid$": patients.register_alt}


def section_override(case: TestCase, section: str, patients: Patients) -> str | None:
    if (case.id, section) in ALT_PATIENT_SECTIONS:
        return patients.register_alt
    return None


def _plan_texts(case: TestCase) -> list[str]:
    texts = []
    for sec in case.sections:
        path = case.plan_path(sec)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as fh:
                texts.append(fh.read())
    return texts


def references(case: TestCase) -> set[str]:
    """Other tests whose logs this test reads (UseReport test=, UseId testdir=../../<test>/…)."""
    from .corrections import corrected_testdir

    refs: set[str] = set()
    for text in _plan_texts(case):
        refs.update(_REF_TEST.findall(text))
        refs.update(_REF_DIR.findall(text))
        for testdir in _TESTDIR.findall(text):
            refs.update(_REF_DIR.findall(f'testdir="{corrected_testdir(case.id, testdir)}'))
    refs.discard(case.id)
    return refs


def is_xua(case: TestCase) -> bool:
    return any(t.endswith("_xua") for t in case.collections) or case.id.endswith(_XUA_SUFFIXES)


TLS_TESTS = ("12028",)


def skip_reason(case: TestCase, sts: bool = False, tls: bool = False, async_replies: bool = False) -> str | None:
    if is_xua(case) and not sts:
        return ("XUA: needs SAML assertions from an STS: give --sts URL (the Gazelle STS, or a local "
                "`xds sts serve`)")
    texts = _plan_texts(case)
    if (any("<ASync" in t for t in texts) or "ASync" in case.collections) and not async_replies:
        return ("asynchronous WS-Addressing: needs a ReplyTo listener and a SUT that may answer it "
                "(python -m conformance.ci --collection ASync runs both)")
    if case.id in TLS_TESTS and not tls:
        return ("needs TLS: give https --registry/--repository endpoints and --tls-cert/--tls-key/--tls-ca "
                "(python -m conformance.ci runs it against a TLS server of its own)")
    if not case.sections:
        return "no test plan (instructions only)"
    return None


def order(kit: TestKit, selected: list[str], sts: bool = False, tls: bool = False,
          async_replies: bool = False) -> tuple[list[str], dict[str, str]]:
    """The tests to run, setup first, then the selection with referenced tests before their readers,
    and the tests to skip because something they read is skipped. sts: an STS gives the XUA tests
    their assertions."""
    wanted = [t for t in dict.fromkeys(selected) if kit.has(t)]
    needed: set[str] = set()
    todo = list(wanted)
    while todo:
        t = todo.pop()
        implied = LOAD_FEEDS.get(t, ())
        if t not in SETUP and role_of(kit.test(t)) == "registry":
            implied += REGISTRY_FEEDS
        for ref in references(kit.test(t)) | set(implied):
            if ref in SETUP and ref not in needed and kit.has(ref):
                needed.add(ref)
                todo.append(ref)
    setup = [t for t in SETUP if t in needed or t in wanted]
    rest = [t for t in wanted if t not in setup]
    ordered: list[str] = []
    placed: set[str] = set(setup)

    def place(t: str, stack: tuple[str, ...] = ()) -> None:
        if t in placed or t in stack:
            return
        for ref in sorted(references(kit.test(t))):
            if ref in rest:
                place(ref, stack + (t,))
        placed.add(t)
        ordered.append(t)

    for t in rest:
        place(t)
    run = setup + ordered
    skipped: dict[str, str] = {}
    for t in run:
        reason = skip_reason(kit.test(t), sts, tls, async_replies)
        if reason is None:
            blocked = sorted(r for r in references(kit.test(t))
                             if r in skipped or (kit.has(r) and skip_reason(kit.test(r), sts, tls, async_replies)))
            if blocked:
                reason = f"reads the logs of skipped test(s) {', '.join(blocked)}"
        if reason:
            skipped[t] = reason
    return run, skipped
