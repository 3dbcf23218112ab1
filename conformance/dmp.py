"""`python -m conformance.dmp PACK_DIR [--url URL] [--junit FILE]`: replay the official French DMP example
messages (CNAM / GIE SESAM-Vitale pack for DMPi v2.5) against an XDS server in the DMP profile, and judge
each answer against the pack's own answer and the outcome shared/testkits/dmp/PROFILE.md documents.

PACK_DIR is the pack folder or any folder above it (the testkit root). Without --url the replay starts
its own server: ``xds serve --profile dmp --security none --lenient --implied-references`` (the pack's
TD3.3c/d and the C# kit's templates leave out the classifiedObject / registryObject of nested elements,
which ebRIM requires; the live DMP takes them) with the unofficial test
habilitation matrix, on a free 127.0.0.1 port, with a temporary data folder, the DMP's repository id
(1.2.250.1.213.4.1.1.1.2, the one TD3.2 names) and the patient of TD2.1 fed. With --url the server
must know that patient already (``xds patient add``), and the replay makes its uniqueIds fresh, as the
server may hold an earlier run.

The steps, in order (security none: metadata only, every wsse:Security removed):

  TD2.1   ITI-41 of the pack's raw MIME dump, re-framed in CRLF, its Document id case fixed
  TD3.1   the pack's ITI-18 FindDocuments
  TD3.2   the pack's ITI-43, naming the document TD2.1 stored
  TD3.3a  ITI-57 masking (MASQUE_PS added), built from the C# kit's template_masquage.xml
  TD3.3b  ITI-57 unmasking (MASQUE_PS removed), from the same template
  TD3.3d  the pack's archiving (Approved -> Archived), then queries with and without that status
  TD3.3c  the pack's deletion (Archived -> Deleted), then no query returns it and ITI-43 answers
          XDSDocumentUniqueIdError

The target entryUUIDs come from the replay's own feed. One line per step says PASS or FAIL, why, and
the adaptations made; the exit code is 1 when a step fails, 2 when the replay cannot run at all.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

from lxml import etree

from xds import constants as C
from xds import soap
from xds.client import SoapClient, TransportError

from . import dmp_adapt as A
from .dmp_pack import Pack, PackError, read_dump, frame

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HABILITATION_MATRIX = os.path.join(REPO, "tests", "fixtures", "policy", "habilitations-unofficial.toml")
DMP_REPOSITORY = "1.2.250.1.213.4.1.1.1.2"
TEMPLATE = "template_masquage.xml"
TIMEOUT = 60.0

APPROVED = (C.STATUS_APPROVED,)
ARCHIVED = (C.STATUS_ARCHIVED,)
DELETED = (C.STATUS_DELETED,)
APPROVED_ARCHIVED = (C.STATUS_APPROVED, C.STATUS_ARCHIVED)
EVERY_DMP_STATUS = (C.STATUS_APPROVED, C.STATUS_ARCHIVED, C.STATUS_DELETED)
BASELINES = (APPROVED, ARCHIVED, DELETED, APPROVED_ARCHIVED, EVERY_DMP_STATUS)

# What the registry adds to an entry: the pack's answers carry these whatever the source sent.
REGISTRY_SLOTS = {"hash", "size", "repositoryUniqueId"}
REGISTRY_CHILDREN = {"VersionInfo"}
# ebRIM attributes whose absence means their default (isOpaque="false").
DEFAULTED_ATTRIBUTES = {"isOpaque"}


def short(status: str | None) -> str:
    return (status or "none").rsplit(":", 1)[-1]


def statuses_label(statuses) -> str:
    return "+".join(short(s) for s in statuses)


# --- answers ------------------------------------------------------------------------------------------

@dataclass
class Answer:
    """What came back: a SOAP fault or a body, its status, its errors, and the documents of an MTOM
    answer, read at once (cid -> bytes)."""
    fault: str | None = None
    body: etree._Element | None = None
    status: str | None = None
    errors: list[tuple[str, str, str]] = field(default_factory=list)   # (code, severity, codeContext)
    relates_to: str | None = None
    parts: dict[str, bytes] = field(default_factory=dict)

    @property
    def error_codes(self) -> Counter:
        return Counter(code for code, severity, _ in self.errors if severity == "Error")

    @property
    def warnings(self) -> list[tuple[str, str, str]]:
        return [e for e in self.errors if e[1] == "Warning"]

    def objects(self) -> list[etree._Element]:
        """The children of the answer's RegistryObjectList (ITI-18)."""
        if self.body is None:
            return []
        found = self.body.find(A.rim("RegistryObjectList"))
        return [el for el in found if isinstance(el.tag, str)] if found is not None else []

    def documents(self) -> list[etree._Element]:
        """The DocumentResponse elements (ITI-43)."""
        return [] if self.body is None else self.body.findall(C.q(C.NS_XDSB, "DocumentResponse"))

    def document_bytes(self, response: etree._Element) -> bytes | None:
        doc = response.find(C.q(C.NS_XDSB, "Document"))
        if doc is None:
            return None
        include = doc.find(C.q(C.NS_XOP, "Include"))
        if include is None:
            return base64.b64decode("".join(doc.itertext()))
        from xds.mtom import href_to_cid

        return self.parts.get(href_to_cid(include.get("href") or ""))

    def describe(self) -> str:
        if self.fault:
            return f"SOAP fault: {self.fault}"
        errors = ", ".join(code + (f" x{n}" if n > 1 else "") for code, n in self.error_codes.items())
        return short(self.status) + (f" [{errors}]" if errors else "")


def read_body(body: etree._Element, relates_to: str | None = None) -> Answer:
    answer = Answer(body=body, relates_to=relates_to)
    if etree.QName(body).localname == "Fault":
        answer.fault = " ".join(" ".join(body.itertext()).split())[:300] or "(no reason)"
        return answer
    status = body.get("status")
    if status is None:
        nested = body.find(C.q(C.NS_RS, "RegistryResponse"))
        status = nested.get("status") if nested is not None else None
    answer.status = status
    for err in body.iter(C.q(C.NS_RS, "RegistryError")):
        answer.errors.append((err.get("errorCode") or "", short(err.get("severity") or "Error"),
                              " ".join((err.get("codeContext") or "").split())))
    return answer


def read_reply(reply) -> Answer:
    if reply.envelope is None:
        return Answer(fault=f"HTTP {reply.status} without a SOAP envelope: {reply.raw[:200]!r}")
    relates = reply.envelope.header(C.q(C.NS_WSA, "RelatesTo"))
    answer = read_body(reply.envelope.body, (relates.text or "").strip() if relates is not None else None)
    if reply.mtom is not None:
        try:
            answer.parts = {cid: att.read_bytes() for cid, att in reply.mtom.parts.items()}
        finally:
            reply.mtom.cleanup()
    return answer


def pack_answer(data: bytes, what: str) -> Answer:
    env = A.load(data, what)
    return read_body(A.envelope_body(env), A.wsa_header(env, "RelatesTo"))


# --- one step -----------------------------------------------------------------------------------------

@dataclass
class Step:
    td: str
    title: str
    file: str | None = None
    checks: list[str] = field(default_factory=list)        # what held
    problems: list[str] = field(default_factory=list)      # what did not
    adaptations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def check(self, held: bool, fact: str | None, problem: str) -> bool:
        """Record what held (fact; None: nothing worth a word) or the problem."""
        if not held:
            self.problems.append(problem)
        elif fact:
            self.checks.append(fact)
        return held

    def line(self) -> str:
        why = "; ".join(self.problems) if self.problems else "; ".join(self.checks)
        adapted = f" | adapted: {'; '.join(self.adaptations)}" if self.adaptations else ""
        return f"{'PASS' if self.ok else 'FAIL'} {self.td} {self.title}: {why}{adapted}"


class Blocked(Exception):
    """A step cannot run because an earlier one left nothing to work on."""


# --- the replay ---------------------------------------------------------------------------------------

class Replay:
    def __init__(self, pack: Pack, registry_url: str, repository_url: str, *, fresh_ids: bool,
                 log=print, timeout: float = TIMEOUT):
        self.pack = pack
        self.registry = SoapClient(registry_url, timeout)
        self.repository = SoapClient(repository_url, timeout)
        self.fresh_ids = fresh_ids
        self.log = log
        self.steps: list[Step] = []
        self.query_env = A.load(pack.request("TD3.1"), pack.name("TD3.1"))
        A.strip_security(self.query_env)
        self.baseline: dict[tuple, set[str]] = {}
        # What TD2.1 sent: entry symbolic id -> its ExtrinsicObject, uniqueId and document bytes.
        self.sent_entries: dict[str, etree._Element] = {}
        self.sent_unique_ids: dict[str, str] = {}
        self.sent_bytes: dict[str, bytes] = {}
        self.main: str | None = None            # the document entry (not the signature) TD3.x work on
        self.lids: dict[str, str] = {}          # entry symbolic id -> lid, from TD3.1
        self.current: etree._Element | None = None   # the registry's latest version of the main entry
        self.repository_id: str | None = None
        self.td21_request: etree._Element | None = None

    # --- plumbing

    def send(self, client: SoapClient, env: etree._Element) -> Answer:
        action = A.wsa_action(env) or ""
        if A.soap_version(env) == soap.SOAP11:
            headers = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": f'"{action}"'}
        else:
            headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{action}"'}
        return self.post(client, A.dump(env), headers)

    def post(self, client: SoapClient, body: bytes, headers: dict) -> Answer:
        try:
            return read_reply(client.send_raw(body, headers))
        except TransportError as exc:
            return Answer(fault=f"no answer: {exc}")

    def built_envelope(self, action: str, payload: etree._Element) -> etree._Element:
        return A.load(self.registry.envelope(action, payload), "envelope")

    def find(self, statuses) -> Answer:
        return self.send(self.registry, A.with_statuses(self.query_env, list(statuses)))

    def judge(self, step: Step, answer: Answer, expected: Answer, sent: etree._Element | None, what: str) -> bool:
        """The answer against the expected one: no fault, the same status, the same error codes; warnings
        are listed. The WS-Addressing RelatesTo must name the request."""
        if not step.check(answer.fault is None, None, f"{what}: {answer.describe()}"):
            return False
        same = short(answer.status) == short(expected.status) and answer.error_codes == expected.error_codes
        contexts = "; ".join(f"{code}: {ctx[:300]}" for code, severity, ctx in answer.errors[:2] if severity == "Error")
        step.check(same, f"{what}: {answer.describe()} as {expected.describe()} expected",
                   f"{what}: {answer.describe()} where {expected.describe()} was expected"
                   + (f" ({contexts}{'; ...' if len(answer.errors) > 2 else ''})" if contexts else ""))
        if answer.warnings:
            step.checks.append(f"warnings: {'; '.join(f'{c} ({ctx[:300]})' for c, _, ctx in answer.warnings)}")
        message_id = A.wsa_header(sent, "MessageID") if sent is not None else None
        if message_id:
            step.check(answer.relates_to == message_id, None,
                       f"{what}: RelatesTo {answer.relates_to} is not the request's MessageID {message_id}")
        return same

    def ours(self, objects: list[etree._Element]) -> tuple[dict[str, list[etree._Element]], list[etree._Element]]:
        """The objects of this replay's entries, by entry symbolic id (matched on lid once TD3.1 has
        learnt it, on uniqueId before), and the others."""
        mine: dict[str, list[etree._Element]] = {}
        others = []
        by_lid = {lid: ident for ident, lid in self.lids.items()}
        by_uid = {uid: ident for ident, uid in self.sent_unique_ids.items()}
        for obj in objects:
            ident = by_lid.get(obj.get("lid")) if obj.get("lid") in by_lid else \
                by_uid.get(A.external_id(obj, A.DE_UNIQUE_ID) or "")
            if ident is None:
                others.append(obj)
            else:
                mine.setdefault(ident, []).append(obj)
        return mine, others

    def check_query(self, step: Step, statuses, present: set[str], absent: set[str],
                    status_of: dict[str, str] | None = None) -> dict[str, etree._Element]:
        """A FindDocuments for statuses: the entries present are returned once each (in status_of's
        status), the absent ones not at all, and the rest is what was there before the replay."""
        label = f"FindDocuments {statuses_label(statuses)}"
        answer = self.find(statuses)
        if not step.check(answer.fault is None and short(answer.status) == "Success" and not answer.error_codes,
                          None, f"{label}: {answer.describe()}"):
            return {}
        mine, others = self.ours(answer.objects())
        found = {}
        for ident in sorted(present):
            objs = mine.get(ident, [])
            if step.check(len(objs) == 1, None, f"{label}: {self.label(ident)} returned {len(objs)} times, not once"):
                found[ident] = objs[0]
                want = (status_of or {}).get(ident)
                if want:
                    step.check(objs[0].get("status") == want, None,
                               f"{label}: {self.label(ident)} has status {short(objs[0].get('status'))}, "
                               f"not {short(want)}")
        for ident in sorted(absent):
            step.check(ident not in mine, None, f"{label}: {self.label(ident)} is returned "
                                              f"({', '.join(short(o.get('status')) for o in mine.get(ident, []))})")
        before = self.baseline.get(tuple(statuses))
        if before is not None:
            now = {o.get("id") for o in others}
            step.check(now == before, None, f"{label}: {len(now - before)} entries appeared and {len(before - now)} "
                                          "vanished that this replay did not feed")
        step.checks.append(f"{label}: {', '.join(self.label(i) for i in sorted(present)) or 'nothing of ours'}"
                           + (f" (not {', '.join(self.label(i) for i in sorted(absent))})" if absent else ""))
        return found

    def label(self, ident: str) -> str:
        signatures = A.signature_entries(self.td21_request) if self.td21_request is not None else set()
        return "the signature" if ident in signatures else ident

    # --- the run

    def run(self) -> list[Step]:
        for statuses in BASELINES:
            answer = self.find(statuses)
            if answer.fault is None and short(answer.status) == "Success":
                self.baseline[statuses] = {o.get("id") for o in answer.objects()}
        for td, title, run in (("TD2.1", "ITI-41 feed", self.td21), ("TD3.1", "ITI-18 FindDocuments", self.td31),
                               ("TD3.2", "ITI-43 retrieve", self.td32),
                               ("TD3.3a", "ITI-57 masking (MASQUE_PS added)", self.td33a),
                               ("TD3.3b", "ITI-57 unmasking (MASQUE_PS removed)", self.td33b),
                               ("TD3.3d", "ITI-57 archive (Approved -> Archived)", self.td33d),
                               ("TD3.3c", "ITI-57 delete (Archived -> Deleted)", self.td33c)):
            step = Step(td, title)
            started = time.monotonic()
            try:
                run(step)
            except Blocked as exc:
                step.problems.append(f"not run: {exc}")
            except Exception as exc:  # a replay bug: said as such, and the other steps still run
                step.problems.append(f"replay error: {exc.__class__.__name__}: {exc}")
            step.seconds = time.monotonic() - started
            self.steps.append(step)
            self.log(step.line())
        return self.steps

    def td21(self, step: Step) -> None:
        step.file = self.pack.name("TD2.1")
        dump = read_dump(self.pack.request("TD2.1"))
        env = A.load(dump.root, step.file)
        request = A.envelope_body(env)
        self.td21_request = request
        step.adaptations += A.strip_security(env)
        step.adaptations += A.fix_document_ids(request)
        if self.fresh_ids:
            step.adaptations += A.fresh_unique_ids(request)[1]
        if dump.line_end == b"\n":
            step.adaptations.append("MIME framing bare LF -> CRLF")
        step.adaptations.append("re-framed by the MTOM writer (new boundary and root Content-ID; part Content-IDs "
                                "and types kept, Content-Disposition dropped)")
        for eo in request.iter(A.rim("ExtrinsicObject")):
            self.sent_entries[eo.get("id")] = eo
            self.sent_unique_ids[eo.get("id")] = A.external_id(eo, A.DE_UNIQUE_ID)
        from xds.mtom import href_to_cid

        for doc in request.iter(C.q(C.NS_XDSB, "Document")):
            include = doc.find(C.q(C.NS_XOP, "Include"))
            part = dump.part(href_to_cid(include.get("href"))) if include is not None else None
            if part is not None:
                self.sent_bytes[doc.get("id")] = part.data
        signatures = A.signature_entries(request)
        self.main = next((i for i in self.sent_entries if i not in signatures), None)
        body, headers = frame(A.dump(env), dump.parts, dump.soap_type, A.wsa_action(env))
        if A.soap_version(env) == soap.SOAP11:
            step.checks.append(f"SOAP 1.1 envelope sent as the pack declares it (root part type {dump.soap_type})")
        answer = self.post(self.repository, body, headers)
        expected = pack_answer(self.pack.response("TD2.1"), self.pack.name("TD2.1", "response"))
        self.judge(step, answer, expected, env, "ITI-41")
        step.checks.append(f"{len(self.sent_entries)} entries sent ({', '.join(self.label(i) for i in self.sent_entries)})")

    def td31(self, step: Step) -> None:
        step.file = self.pack.name("TD3.1")
        env = A.load(self.pack.request("TD3.1"), step.file)
        step.adaptations += A.strip_security(env)
        if not self.sent_entries:
            raise Blocked("TD2.1 sent no entry")
        answer = self.send(self.registry, env)
        expected = pack_answer(self.pack.response("TD3.1"), self.pack.name("TD3.1", "response"))
        if not self.judge(step, answer, expected, env, "ITI-18"):
            return
        objects = answer.objects()
        expected_objects = expected.objects()
        kinds = {etree.QName(o).localname for o in expected_objects}
        got_kinds = Counter(etree.QName(o).localname for o in objects)
        step.check(set(got_kinds) <= kinds, f"kinds {dict(got_kinds)} as the pack's ({', '.join(sorted(kinds))})",
                   f"kinds {dict(got_kinds)} where the pack returns {', '.join(sorted(kinds))}")
        mine, others = self.ours(objects)
        for ident in self.sent_entries:
            objs = mine.get(ident, [])
            if not step.check(len(objs) == 1, None, f"{self.label(ident)} returned {len(objs)} times, not once"):
                continue
            self.lids[ident] = objs[0].get("lid") or objs[0].get("id")
            self.check_entry(step, ident, objs[0], expected_objects)
        before = self.baseline.get(APPROVED, set())
        step.check({o.get("id") for o in others} == before, None,
                   f"{len(others)} other entries returned where {len(before)} were there before the replay")
        step.checks.append(f"{len(mine)} entries of TD2.1 returned, Approved, with the pack's entry shape "
                           f"(the pack's answer: {len(expected_objects)} entries of the DMP's test patient)")
        if self.main in mine:
            self.current = mine[self.main][0]
            self.repository_id = A.slot_value(self.current, "repositoryUniqueId")

    def check_entry(self, step: Step, ident: str, got: etree._Element, pack_objects: list[etree._Element]) -> None:
        """One returned entry against what TD2.1 sent and the shape every entry of the pack's answer has."""
        name = self.label(ident)
        sent = self.sent_entries[ident]
        step.check(got.get("status") == C.STATUS_APPROVED, None, f"{name}: status {short(got.get('status'))}")
        data = self.sent_bytes.get(ident)
        if data is not None:
            step.check(A.slot_value(got, "hash") == hashlib.sha1(data).hexdigest(), None,
                       f"{name}: hash {A.slot_value(got, 'hash')} is not the SHA-1 of the bytes sent")
            step.check(A.slot_value(got, "size") == str(len(data)), None,
                       f"{name}: size {A.slot_value(got, 'size')} where {len(data)} bytes were sent")
        entries = [o for o in pack_objects if etree.QName(o).localname == "ExtrinsicObject"]
        if not entries:
            return
        pack = [shape(o) for o in entries]
        common = [set.intersection(*(p[k] for p in pack)) for k in range(5)]
        mine, submitted = shape(got), shape(sent)
        wanted = (common[0] & (submitted[0] | REGISTRY_SLOTS), common[1] & (submitted[1] | REGISTRY_CHILDREN),
                  common[2], common[3] & submitted[3], common[4] - DEFAULTED_ATTRIBUTES)
        for what, want, have in zip(("slots", "elements", "identifiers", "classification schemes", "attributes"),
                                    wanted, mine):
            missing = want - have
            step.check(not missing, None, f"{name}: lacks the {what} every entry of the pack's answer has: "
                                        f"{', '.join(sorted(missing))}")

    def td32(self, step: Step) -> None:
        step.file = self.pack.name("TD3.2")
        if self.current is None:
            raise Blocked("TD3.1 did not return the document TD2.1 fed")
        env = A.load(self.pack.request("TD3.2"), step.file)
        step.adaptations += A.strip_security(env)
        uid = self.sent_unique_ids[self.main]
        step.adaptations += A.swap_retrieve(A.envelope_body(env), uid, self.repository_id)
        answer = self.send(self.repository, env)
        expected = pack_answer(self.pack.response("TD3.2"), self.pack.name("TD3.2", "response"))
        if not self.judge(step, answer, expected, env, "ITI-43"):
            return
        got, want = answer.documents(), expected.documents()
        step.check(len(got) == len(want), f"{len(got)} DocumentResponse as the pack's",
                   f"{len(got)} DocumentResponse where the pack has {len(want)}")
        pack_mime = {(d.findtext(C.q(C.NS_XDSB, "mimeType")) or "").strip() for d in want}
        for doc in got:
            mime = (doc.findtext(C.q(C.NS_XDSB, "mimeType")) or "").strip()
            step.check(mime in pack_mime and mime == self.current.get("mimeType"), f"mimeType {mime}",
                       f"mimeType {mime} (the pack's {', '.join(sorted(pack_mime))}, the entry's "
                       f"{self.current.get('mimeType')})")
            step.check((doc.findtext(C.q(C.NS_XDSB, "DocumentUniqueId")) or "").strip() == uid, None,
                       "DocumentUniqueId is not the one asked for")
            data = answer.document_bytes(doc)
            step.check(data == self.sent_bytes.get(self.main), f"the {len(data or b'')} bytes TD2.1 sent",
                       "the document is not the bytes TD2.1 sent" if data is not None else "no document bytes")

    def td33a(self, step: Step) -> None:
        self.metadata_update(step, add=A.MASK_CODE)

    def td33b(self, step: Step) -> None:
        self.metadata_update(step, remove=A.MASK_CODE)

    def metadata_update(self, step: Step, *, add: str | None = None, remove: str | None = None) -> None:
        """PROFILE Table A TD3.3a and B-34: a new version (same lid, PreviousVersion = the current one)
        that changes the confidentiality codes and nothing else. The pack has no such exchange, so the
        answer expected is the plain Success its other ITI-57 answers show."""
        step.file = os.path.basename(self.pack.templates[TEMPLATE])
        if self.current is None:
            raise Blocked("no entry of TD2.1 to update")
        before = self.current
        request, notes = A.build_update(self.pack.template(TEMPLATE), before, add=add, remove=remove)
        step.adaptations += [f"built from {TEMPLATE}: " + "; ".join(notes)]
        env = self.built_envelope(C.ACTION_UPDATE, request)
        answer = self.send(self.registry, env)
        if not self.judge(step, answer, Answer(status="Success"), env, "ITI-57"):
            return
        found = self.check_query(step, APPROVED, present=set(self.lids), absent=set())
        after = found.get(self.main)
        if after is None:
            return
        step.check(after.get("id") != before.get("id") and after.get("lid") == before.get("lid"),
                   f"new version {after.get('id')} of lid {after.get('lid')}",
                   f"the entry returned is {after.get('id')} of lid {after.get('lid')}, not a new version of "
                   f"{before.get('id')}")
        want_version = str(int(A.version(before)) + 1) if A.version(before).isdigit() else None
        step.check(want_version is None or A.version(after) == want_version, f"version {A.version(after)}",
                   f"version {A.version(after)}, not {want_version}")
        conf = A.codes(after, A.CONFIDENTIALITY)
        if add:
            step.check(add in conf, f"confidentialityCode {', '.join(conf)}", f"{add} is not among {conf}")
        if remove:
            step.check(remove not in conf, f"confidentialityCode {', '.join(conf)}", f"{remove} is still there")
        changed = metadata_changes(before, after)
        step.check(not changed, "other metadata unchanged", f"other metadata changed: {'; '.join(changed)}")
        old = self.find_by_uuid(before.get("id"))
        if old is not None:
            step.check(old.get("status") == C.STATUS_DEPRECATED, "previous version Deprecated",
                       f"previous version {short(old.get('status'))}, not Deprecated")
        self.current = after

    def find_by_uuid(self, uuid: str) -> etree._Element | None:
        answer = self.send(self.registry, A.as_get_documents(self.query_env, [uuid]))
        objs = [o for o in answer.objects() if o.get("id") == uuid]
        return objs[0] if objs else None

    def status_update(self, step: Step, td: str, expected_new: str) -> bool:
        """The pack's UpdateAvailabilityStatus aimed at the replay's entry; judged against the pack's answer.
        A refusal that comes from the pack's SubmissionSet leaving out classifiedObject and registryObject
        is a FAIL; the request is then sent again with them filled, so that what follows can be judged."""
        step.file = self.pack.name(td)
        if self.current is None:
            raise Blocked("no entry of TD2.1 to change")
        env = A.load(self.pack.request(td), step.file)
        request = A.envelope_body(env)
        step.adaptations += A.strip_security(env)
        step.adaptations += A.swap_status_targets(request, self.current.get("id"))
        if self.fresh_ids:
            step.adaptations += A.fresh_unique_ids(request)[1]
        original, new = A.status_change(request)
        step.check(original == self.current.get("status") and new == expected_new,
                   f"{short(original)} -> {short(new)}",
                   f"the pack's change {short(original)} -> {short(new)} does not fit the entry's status "
                   f"{short(self.current.get('status'))} (expected -> {short(expected_new)})")
        expected = pack_answer(self.pack.response(td), self.pack.name(td, "response"))
        answer = self.send(self.registry, env)
        if self.judge(step, answer, expected, env, "ITI-57"):
            return True
        missing = A.missing_nested_references(request)
        if answer.fault is not None or not missing:
            return False
        step.problems.append(f"the pack's SubmissionSet leaves out {len(missing)} classifiedObject/registryObject "
                             "attributes ebRIM requires (the DMP accepted it; not a PROVENANCE adaptation)")
        filled = A.fill_nested_references(request)
        answer = self.send(self.registry, env)
        ok = answer.fault is None and short(answer.status) == short(expected.status) and not answer.error_codes
        step.problems.append(f"resent with them filled to go on: {answer.describe()}")
        step.adaptations.append(f"on the second try only: {len(filled)} nested references filled")
        return ok

    def td33d(self, step: Step) -> None:
        if not self.status_update(step, "TD3.3d", C.STATUS_ARCHIVED):
            return
        others = set(self.lids) - {self.main}
        self.check_query(step, APPROVED, present=others, absent={self.main})
        found = self.check_query(step, ARCHIVED, present={self.main}, absent=others,
                                 status_of={self.main: C.STATUS_ARCHIVED})
        self.check_query(step, APPROVED_ARCHIVED, present=set(self.lids),
                         status_of={self.main: C.STATUS_ARCHIVED}, absent=set())
        if self.main in found:
            self.current = found[self.main]

    def td33c(self, step: Step) -> None:
        target = self.current.get("id") if self.current is not None else None
        if not self.status_update(step, "TD3.3c", C.STATUS_DELETED):
            return
        others = set(self.lids) - {self.main}
        for statuses in (APPROVED, ARCHIVED, DELETED, EVERY_DMP_STATUS):
            self.check_query(step, statuses, present=others if C.STATUS_APPROVED in statuses else set(),
                             absent={self.main} | (set() if C.STATUS_APPROVED in statuses else others))
        step.check(self.find_by_uuid(target) is None, "GetDocuments of its entryUUID: nothing",
                   f"GetDocuments of its entryUUID {target} returns it")
        env = A.load(self.pack.request("TD3.2"), self.pack.name("TD3.2"))
        A.strip_security(env)
        A.swap_retrieve(A.envelope_body(env), self.sent_unique_ids[self.main], self.repository_id)
        answer = self.send(self.repository, env)
        gone = answer.fault is None and short(answer.status) == "Failure" and \
            "XDSDocumentUniqueIdError" in answer.error_codes and not answer.documents()
        step.check(gone, "ITI-43 of it: Failure [XDSDocumentUniqueIdError]",
                   f"ITI-43 of the deleted document: {answer.describe()}"
                   + (f" with {len(answer.documents())} document" if answer.documents() else "")
                   + " where Failure [XDSDocumentUniqueIdError] was expected (PROFILE Table E)")
        step.adaptations.append("ITI-43: the pack's TD3.2 request, adapted as in TD3.2")


def shape(obj: etree._Element) -> tuple[set, set, set, set, set]:
    """Slot names, other child elements, identification schemes, classification schemes, attributes."""
    children = {etree.QName(c).localname for c in obj if isinstance(c.tag, str)}
    return ({s.get("name") for s in obj.findall(A.rim("Slot"))},
            children - {"Slot", "Classification", "ExternalIdentifier"},
            {e.get("identificationScheme") for e in obj.findall(A.rim("ExternalIdentifier"))},
            {c.get("classificationScheme") for c in obj.findall(A.rim("Classification")) if c.get("classificationScheme")},
            set(obj.attrib))


def metadata_changes(before: etree._Element, after: etree._Element) -> list[str]:
    """What differs between two versions of an entry, outside the confidentiality codes and what a new
    version changes by nature (id, version, status)."""
    def digest(obj):
        slots = {s.get("name"): tuple(A.slot_values(obj, s.get("name"))) for s in obj.findall(A.rim("Slot"))}
        classes = sorted((c.get("classificationScheme") or "", c.get("nodeRepresentation") or "",
                          A.slot_value(c, "codingScheme") or "") for c in obj.findall(A.rim("Classification"))
                         if c.get("classificationScheme") != A.CONFIDENTIALITY)
        ids = {e.get("identificationScheme"): e.get("value") for e in obj.findall(A.rim("ExternalIdentifier"))}
        name = tuple(ls.get("value") for n in obj.findall(A.rim("Name")) for ls in n)
        description = tuple(ls.get("value") for n in obj.findall(A.rim("Description")) for ls in n)
        return {"slots": slots, "codes": classes, "identifiers": ids, "name": name, "description": description,
                "mimeType": obj.get("mimeType"), "lid": obj.get("lid")}
    a, b = digest(before), digest(after)
    changes = []
    for key in a:
        if key == "slots":
            for name in sorted(set(a[key]) | set(b[key])):
                if a[key].get(name) != b[key].get(name):
                    changes.append(f"slot {name}")
        elif a[key] != b[key]:
            changes.append(key)
    return changes


# --- the server the replay starts ---------------------------------------------------------------------

class OwnServer:
    """``xds serve --profile dmp --security none --lenient --implied-references`` on a free loopback port,
    with a temporary data folder, and the patients fed once it listens. ``implied_references``
    False starts it strict about ebRIM's parent references, as a lab's server may be."""

    def __init__(self, patients: list[str], *, habilitation_matrix: str = HABILITATION_MATRIX,
                 repository_id: str = DMP_REPOSITORY, implied_references: bool = True):
        self.patients = patients
        self.implied_references = implied_references
        self.habilitation_matrix = habilitation_matrix
        self.repository_id = repository_id
        self.dir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "node.cli", *args]

    def flags(self) -> list[str]:
        return ["--host", "127.0.0.1", "--port", "0", "--profile", "dmp", "--security", "none", "--lenient",
                *(["--implied-references"] if self.implied_references else []),
                "--habilitation-matrix", self.habilitation_matrix, "--repository-id", self.repository_id]

    def start(self, timeout: float = 60.0) -> "OwnServer":
        if not os.path.isfile(self.habilitation_matrix):
            raise RuntimeError(f"the habilitation matrix {self.habilitation_matrix} is missing")
        self.dir = tempfile.mkdtemp(prefix="xds-dmp-replay-")
        data = os.path.join(self.dir, "data")
        env = {k: v for k, v in os.environ.items() if not k.startswith("XDS_")}  # only what is said here
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.out = os.path.join(self.dir, "serve.out")
        self.err = os.path.join(self.dir, "serve.err")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(self.command("serve", "--data", data, *self.flags()), cwd=REPO, env=env,
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.out, encoding="utf-8", errors="replace") as f:
                found = re.search(r"^xds: \S+ on (https?://\S+)$", f.read(), re.M)
            if found:
                self.url = found.group(1)
                # Fed through the server's administration endpoint, as an operator would.
                fed = subprocess.run(self.command("patient", "add", *self.patients, "--url", self.url), cwd=REPO,
                                     env=env, capture_output=True, text=True, timeout=timeout)
                if fed.returncode:
                    self.stop()
                    raise RuntimeError(f"xds patient add failed: {(fed.stderr or fed.stdout).strip()}")
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"xds serve did not start: {tail}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.err, encoding="utf-8", errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return ""

    def describe(self) -> str:
        return "xds serve " + " ".join(self.flags()).replace("--port 0", f"(port {self.url.rsplit(':', 1)[-1]})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def fed_patient(pack: Pack) -> str:
    """The patient of TD2.1's SubmissionSet, as a feed announces it: CX.1 and CX.4 (the registry matches
    on those two, PROFILE B-1)."""
    dump = read_dump(pack.request("TD2.1"))
    request = A.envelope_body(A.load(dump.root, pack.name("TD2.1")))
    for ss in request.iter(A.rim("RegistryPackage")):
        value = A.external_id(ss, A.SS_PATIENT_ID)
        if value:
            parts = value.split("^")
            if len(parts) >= 4 and parts[0] and parts[3]:
                return f"{parts[0]}^^^{parts[3]}"
    raise PackError("TD2.1 has no SubmissionSet patientId")


# --- reports ------------------------------------------------------------------------------------------

def write_junit(path: str, steps: list[Step], pack: Pack, target: str) -> None:
    suites = etree.Element("testsuites")
    suite = etree.SubElement(suites, "testsuite", name="dmp-replay", tests=str(len(steps)),
                             failures=str(sum(not s.ok for s in steps)), errors="0", skipped="0",
                             time=f"{sum(s.seconds for s in steps):.3f}")
    props = etree.SubElement(suite, "properties")
    etree.SubElement(props, "property", name="pack", value=pack.folder)
    etree.SubElement(props, "property", name="target", value=target)
    for s in steps:
        case = etree.SubElement(suite, "testcase", classname="conformance.dmp", name=f"{s.td} {s.title}",
                                time=f"{s.seconds:.3f}")
        if not s.ok:
            failure = etree.SubElement(case, "failure", message=s.problems[0][:500])
            failure.text = "\n".join(s.problems)
        out = [f"file: {s.file}"] if s.file else []
        out += [f"held: {c}" for c in s.checks] + [f"adapted: {a}" for a in s.adaptations]
        etree.SubElement(case, "system-out").text = "\n".join(out)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    etree.ElementTree(suites).write(path, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def base_url(url: str) -> str:
    url = url.rstrip("/")
    for tail in ("/xds/registry", "/xds/repository"):
        if url.endswith(tail):
            return url[:-len(tail)]
    return url


def run(pack: Pack, url: str | None = None, log=print) -> tuple[list[Step], str]:
    """Replay the pack against url (None: a server of the replay's own); the steps and the target."""
    patient = fed_patient(pack)
    server = None
    if url:
        url, how = base_url(url), "(the server must know the patient)"
    else:
        server = OwnServer([patient]).start()
        url, how = server.url, f"({server.describe()}; patient {patient} fed)"
    log(f"dmp replay: {pack.folder} against {url} {how}")
    try:
        replay = Replay(pack, url + "/xds/registry", url + "/xds/repository", fresh_ids=server is None, log=log)
        return replay.run(), url
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.dmp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pack", metavar="PACK_DIR", help="the pack folder, or a folder above it (testkit root)")
    parser.add_argument("--url", help="the server (http://host:port); default: start one")
    parser.add_argument("--junit", metavar="FILE", help="also write the steps as a JUnit report")
    args = parser.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        pack = Pack.find(args.pack)
        steps, url = run(pack, args.url, log)
    except (PackError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"dmp replay: {exc}", file=sys.stderr)
        return 2
    if args.junit:
        write_junit(args.junit, steps, pack, url)
    failed = [s.td for s in steps if not s.ok]
    log(f"dmp replay: {len(steps)} steps, {len(steps) - len(failed)} passed, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
