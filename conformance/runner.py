"""Running tests: sections in index.idx order, steps in order, the first failing step
ending its section, and every section's log kept for the sections and tests after it."""
from __future__ import annotations

import os
import time
import traceback
from datetime import datetime
from typing import Callable

from xds import constants as C

from . import assertions, async_listener, contents, corrections, evaluate, linkage, orchestration, response_checks, retrieve_check, xua
from . import patient_move
from .context import EngineError, RunConfig, SectionContext
from .logstore import LogStore, StepLog
from .plan import PlanError, Step, load_plan
from .prepare import Prepared, find_file, prepare
from .render import pretty
from .results import FAILED, NOT_RUN, PASSED, SKIPPED, RunResult, SectionResult, StepResult, TestResult
from .substitute import replace_text
from .testkit import TestCase, TestKit
from .transactions import KINDS, Exchange, send_http, send_pif, send_soap

_QUERIES = ("StoredQueryTransaction", "MPQTransaction")


class Runner:
    def __init__(self, kit: TestKit, config: RunConfig, progress: Callable[[str], None] | None = None):
        self.kit = kit
        self.config = config
        self.logs = LogStore()
        self.patients = orchestration.Patients.allocate(config.ids)
        # uniqueId → file, for every document a PnR step got accepted: what Retrieve must give back.
        self.submitted: dict[str, str] = {}
        self.progress = progress or (lambda line: None)
        self.assertions = xua.Assertions(config.sts) if config.sts is not None else None  # the current test's

    # --- a whole run ------------------------------------------------------------------------------

    def run(self, test_ids: list[str]) -> RunResult:
        started = time.monotonic()
        result = RunResult(started=datetime.now().isoformat(timespec="seconds"))
        ep = self.config.endpoints
        result.target = {"registry": ep.registry or "", "repository": ep.repository or "",
                         "repository id": self.config.repository_id or "",
                         "patient feed (MLLP)": f"{ep.mllp[0]}:{ep.mllp[1]}" if ep.mllp else "none (bypassed)"}
        sts = self.config.sts
        if sts is not None:
            result.target["STS"] = f"{sts.url} (default user {sts.user})"
        unknown = [t for t in test_ids if not self.kit.has(t)]
        for t in unknown:
            result.notes.append(f"test {t} is not in the test kit")
            result.tests.append(TestResult(t, status=SKIPPED, reason="not in the test kit"))
        run, skipped = orchestration.order(self.kit, test_ids, sts=self.config.sts is not None,
                                           tls=self.config.endpoints.tls,
                                           async_replies=self.config.endpoints.reply_listener is not None)
        self._announce_patients(run, result)
        in_setup = False
        for test_id in run:
            case = self.kit.test(test_id)
            setup = test_id in orchestration.SETUP and test_id not in test_ids
            is_setup = test_id in orchestration.SETUP
            if in_setup and not is_setup:
                _next_second()
            in_setup = is_setup
            if test_id in skipped:
                tr = TestResult(case.id, case.title, case.collections, orchestration.role_of(case), setup,
                                SKIPPED, skipped[test_id])
            else:
                tr = self.run_test(case, setup=setup)
            result.tests.append(tr)
            self.progress(_progress_line(tr))
        result.elapsed = time.monotonic() - started
        return result

    def _announce_patients(self, run: list[str], result: RunResult) -> None:
        p = self.patients
        roles = {orchestration.role_of(self.kit.test(t)) for t in run}
        if self.config.endpoints.mllp is None:
            needed = [p.register, p.register_alt, p.sq, p.mpq1, p.mpq2] if "registry" in roles else []
            if "repository" in roles:
                needed.append(p.repository)
            if needed:
                result.notes.append("no --mllp given: the patient identity feed steps are bypassed; the SUT must "
                                    "already know these patient ids: " + ", ".join(needed))
            return
        if "repository" in roles:
            host, port = self.config.endpoints.mllp
            ex = send_pif(host, port, p.repository, self.config.endpoints.timeout)
            state = ex.transport_error or f"acknowledged {ex.ack_code}"
            result.notes.append(f"repository tests use patient id {p.repository}, fed over MLLP: {state}")

    # --- one test -------------------------------------------------------------------------------------

    def run_test(self, case: TestCase, setup: bool = False) -> TestResult:
        started = time.monotonic()
        tr = TestResult(case.id, case.title, case.collections, orchestration.role_of(case), setup)
        params = orchestration.params_for(case, self.patients)
        # Fresh assertions for each test: the variants are relative to the time they are issued.
        self.assertions = xua.Assertions(self.config.sts) if self.config.sts is not None else None
        for section in case.sections:
            override = orchestration.section_override(case, section.name, self.patients)
            tr.sections.append(self.run_section(case, section, params, override))
        tr.status = PASSED if tr.sections and all(s.passed for s in tr.sections) else FAILED
        tr.reason = tr.failure_summary() if tr.status == FAILED else ""
        tr.elapsed = time.monotonic() - started
        return tr

    def run_section(self, case: TestCase, section, params: dict[str, str],
                    pid_override: str | None = None) -> SectionResult:
        sr = SectionResult(section.name)
        log = self.logs.open(case.id, section.name)
        params = dict(params)
        if pid_override:
            params["$patientid$"] = pid_override
        if not section.exists:
            sr.error = f"section {section.name} is listed in index.idx but has no testplan.xml"
            return sr
        try:
            plan = load_plan(case.plan_path(section), params)
        except (PlanError, OSError) as exc:
            sr.error = f"test plan unreadable: {exc}"
            return sr
        ctx = SectionContext(self.config, self.logs, case, section, log, params,
                             pid=params.get("$patientid$") or plan.patient_id, pid_override=pid_override)
        failed = False
        for step in plan.steps:
            if failed:
                sr.steps.append(StepResult(step.id, _label(step), "/".join(step.expected), NOT_RUN))
                continue
            result = self.run_step(step, ctx)
            sr.steps.append(result)
            failed = result.status == FAILED
        return sr

    # --- one step ---------------------------------------------------------------------------------------

    def run_step(self, step: Step, ctx: SectionContext) -> StepResult:
        result = StepResult(step.id, _label(step), "/".join(step.expected))
        tx = step.transaction
        entry = StepLog(step.id, tx.kind if tx is not None else "NullTransaction")
        ctx.log.steps.append(entry)
        started = time.monotonic()
        try:
            self._run_step(step, ctx, entry, result)
        except EngineError as exc:
            result.problems.append(str(exc))
        except Exception as exc:  # a harness bug must not hide the rest of the run
            result.internal_error = True
            result.problems.append(f"harness error: {exc.__class__.__name__}: {exc}")
            result.notes.append(traceback.format_exc())
        result.elapsed = time.monotonic() - started
        entry.passed = not result.problems
        result.status = PASSED if entry.passed else FAILED
        return result

    def _run_step(self, step: Step, ctx: SectionContext, entry: StepLog, result: StepResult) -> None:
        if step.new_patient_id or step.alt_patient_id:
            ctx.pid = ctx.pid_override or self.config.ids.pid()
            result.notes.append(f"patient id for this section is now {ctx.pid}")
        tx = step.transaction
        if tx is None:
            return
        if tx.unknown:
            raise EngineError(f"{tx.kind}: instruction(s) {', '.join(tx.unknown)} not supported by this harness")
        kind = KINDS[tx.kind]
        result.notes.extend(corrections.fix_testdirs(ctx, step))
        result.notes.extend(corrections.fix_report_sources(ctx, step))
        prepared = prepare(step, ctx)
        result.notes.extend(corrections.apply(ctx, step, prepared))
        entry.input = prepared.payload
        entry.assigned.update(prepared.assigned)
        if tx.wait_before_ms:
            time.sleep(tx.wait_before_ms / 1000.0)
        reports: dict[str, str] = {}
        if tx.kind == "PatientIdentityFeedTransaction":
            self._feed(step, ctx, prepared, result)
            reports["$patientid$"] = prepared.patient_id or ""
        elif tx.kind == "PatientMoveTransaction":
            self._move(step, prepared, result)
        elif tx.kind == "NullTransaction":
            pass
        else:
            ex = self._send(tx, kind, prepared, result, ctx)
            body = ex.body
            if ex.reply is not None and not ex.reply.is_fault:
                entry.result = body
            if tx.kind == "HttpTransaction":
                use_mtom = "multipart/related" in " ".join(prepared.http_headers.values()).lower()
            else:
                use_mtom = prepared.use_mtom
            result.problems.extend(evaluate.judge_soap(step, kind, ex, use_mtom))
            if not result.problems and entry.result is not None:
                reports.update(self._judge_content(step, ctx, prepared, ex, result))
        if result.problems:
            return
        if step.expected == ["Success"]:
            self.submitted.update(prepared.submitted_documents)
        if "Fault" not in step.expected:
            for name in ("AssignedUids", "AssignedUuids"):
                suffix = "_uid" if name == "AssignedUids" else "_uuid"
                reports.update({f"{obj}{suffix}": value for obj, value in entry.assigned.get(name, {}).items()})
            reports.update(ctx.params)
            if tx.kind == "PatientIdentityFeedTransaction":
                reports["$patientid$"] = prepared.patient_id or ""
            if tx.kind == "PatientMoveTransaction":  # the toolkit's step patient: the new XAD-PID
                reports["$patientid$"] = prepared.link_values.get(patient_move.NEW_XAD, "")
            entry.reports.update(reports)
            values, problems = assertions.evaluate_reports(tx.reports, entry)
            entry.reports.update(values)
            result.problems.extend(problems)
        if not result.problems and tx.assertions:
            result.problems.extend(assertions.evaluate_asserts(tx.assertions, ctx.log, prepared.link_values))

    def _feed(self, step: Step, ctx: SectionContext, prepared: Prepared, result: StepResult) -> None:
        pid = prepared.patient_id or ""
        ctx.pid = pid
        ctx.params["$patientid$"] = pid
        mllp = self.config.endpoints.mllp
        if mllp is None:
            result.notes.append(f"ITI-8 bypassed (no --mllp): the SUT must already know {pid}")
            return
        ex = send_pif(mllp[0], mllp[1], pid, self.config.endpoints.timeout)
        result.endpoint = ex.endpoint
        result.request = ex.request.decode("utf-8", "replace").replace("\r", "\n")
        result.response = ex.response_text
        result.problems.extend(evaluate.judge_feed(step, ex))
        for other in corrections.wire_sample_patients(ctx):
            if other == pid:
                continue
            extra = send_pif(mllp[0], mllp[1], other, self.config.endpoints.timeout)
            result.notes.append(f"test kit correction (its wire samples name patient {other}): fed it too, "
                                f"{extra.transport_error or 'acknowledged ' + str(extra.ack_code)}")
            result.problems.extend(evaluate.judge_feed(step, extra))

    def _move(self, step: Step, prepared: Prepared, result: StepResult) -> None:
        """ITI-64: the ADT^A43 goes to the patient feed, where the toolkit sends it (its PIF host and port)."""
        mllp = self.config.endpoints.mllp
        if mllp is None:
            raise EngineError("ITI-64 (PatientMoveTransaction) is an ADT^A43 sent to the patient feed: give --mllp")
        ex = patient_move.send_move(mllp[0], mllp[1], prepared.link_values, self.config.endpoints.timeout)
        result.endpoint = ex.endpoint
        result.request = ex.request.decode("utf-8", "replace").replace("\r", "\n")
        result.response = ex.transport_error or ex.response_text
        result.elapsed = ex.elapsed
        result.problems.extend(evaluate.judge_feed(step, ex, "ITI-64"))

    def _send(self, tx, kind, prepared: Prepared, result: StepResult, ctx: SectionContext) -> Exchange:
        ep = self.config.endpoints
        url = ep.url_for(kind)
        if not url:
            raise EngineError(f"{kind.label} needs the {kind.endpoint} endpoint, which was not given")
        supporting = orchestration.role_of(ctx.test) == "repository" and kind.endpoint == "registry"
        user = xua.user_for(ctx.test, self.config.sts, supporting)
        if tx.kind == "HttpTransaction":
            if user:
                result.notes.append("no wsse:Security: an HttpTransaction sends the kit's bytes as they are")
            ex = send_http(url, prepared.http_headers, prepared.http_body or b"", ep.timeout, ep.ssl_context)
        else:
            if kind.action is None:
                raise EngineError(f"{tx.kind} ({kind.label}) is not sent by this harness")
            assertion = None
            if user:
                assertion = self.assertions.get(user)
                whose = (" (the default user's: this registry supports the repository under test)"
                         if supporting else "")
                result.notes.append(f"wsse:Security: the SAML assertion of STS user {user} "
                                    f"(ID {assertion.get('ID')}){whose}")
            if tx.has("ASync"):
                if ep.reply_listener is None:
                    raise EngineError("an <ASync/> step needs a ReplyTo listener (python -m conformance.ci "
                                      "--collection ASync runs one)")
                ex = async_listener.exchange(kind, url, prepared.payload, prepared.attachments, ep.timeout,
                                             ep.reply_listener, soap11=tx.has("SOAP11"), use_mtom=prepared.use_mtom,
                                             assertion=assertion, ssl_context=ep.ssl_context)
            else:
                ex = send_soap(kind, url, prepared.payload, prepared.attachments, ep.timeout,
                               soap11=tx.has("SOAP11"), use_mtom=prepared.use_mtom, assertion=assertion,
                               ssl_context=ep.ssl_context)
        result.endpoint = ex.endpoint
        result.request = pretty(ex.request)
        if ex.attachments:
            result.request += "\n\nMTOM attachments:\n" + "\n".join(
                f"  cid:{cid} ({ctype}) ← {path}" for cid, ctype, path in ex.attachments)
        result.response = ex.transport_error or pretty(ex.response_text)
        result.elapsed = ex.elapsed
        return ex

    def _judge_content(self, step: Step, ctx: SectionContext, prepared: Prepared, ex: Exchange,
                       result: StepResult) -> dict[str, str]:
        tx = step.transaction
        body = ex.body
        status, _ = evaluate.response_status(body)
        success = status == C.RESPONSE_SUCCESS and "Success" in step.expected
        if tx.kind in _QUERIES:
            if tx.expected_contents is not None:
                result.problems.extend(contents.check(tx.expected_contents, body,
                                                      lambda use: linkage.use_id_value(ctx, use)))
            if success:
                result.problems.extend(f"response metadata: {p}"
                                       for p in response_checks.check_query_response(body))
            if success and self.config.repository_id and orchestration.role_of(ctx.test) == "repository":
                result.problems.extend(response_checks.check_repository_id(body, self.config.repository_id))
        if tx.kind == "RetrieveTransaction" and success:
            reference = {}
            if tx.reference_metadata:
                reference = retrieve_check.registry_view(linkage.reference_metadata(ctx, *tx.reference_metadata))
            documents = self._expected_documents(tx, ctx, prepared, result)
            problems, reports = retrieve_check.check(body, prepared.requested_documents, reference, documents,
                                                     ex.reply.mtom, tx.expected_mime_type)
            result.problems.extend(problems)
            return reports
        return {}


    def _expected_documents(self, tx, ctx: SectionContext, prepared: Prepared, result: StepResult
                            ) -> dict[str, bytes]:
        """The bytes each requested document must have: the file this run submitted under that uniqueId,
        else the ReferenceDocument. Some kit plans name a ReferenceDocument other than the file they
        submitted (12029, 50000-50003); the submitted file is the truth and the mismatch is noted."""
        documents: dict[str, bytes] = {}
        for uid, name in tx.reference_documents:
            uid = _fill(uid, ctx, prepared)
            path = find_file(ctx, name)
            submitted = self.submitted.get(uid)
            if submitted and os.path.realpath(submitted) != os.path.realpath(path):
                if _read(submitted) != _read(path):
                    result.notes.append(f"test kit quirk: ReferenceDocument {name} is not the file submitted as "
                                        f"{uid} ({os.path.basename(submitted)}); compared with the submitted file")
                path = submitted
            documents[uid] = _read(path)
        for _, uid in prepared.requested_documents:
            if uid not in documents and uid in self.submitted:
                documents[uid] = _read(self.submitted[uid])
        return documents


def _next_second() -> None:
    """Queries with time ranges ending at $now$ (11899) must not land in the second the data loads
    finished in; under the NIST tool a person's pause guarantees that."""
    time.sleep(1.05 - (time.time() % 1.0))


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _fill(text: str, ctx: SectionContext, prepared: Prepared) -> str:
    return replace_text(replace_text(text, ctx.params), prepared.link_values)


def _label(step: Step) -> str:
    if step.transaction is None:
        return "none"
    return KINDS[step.transaction.kind].label


def _progress_line(tr: TestResult) -> str:
    tag = " (setup)" if tr.setup else ""
    line = f"{tr.status.upper():7} {tr.id}{tag} {tr.title}"
    if tr.status in (FAILED, SKIPPED) and tr.reason:
        line += f"\n        {tr.reason[:300]}"
    return line
