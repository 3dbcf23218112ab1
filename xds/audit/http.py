"""The audit layer over HTTP (JSON), on the one authentication layer of non-SOAP endpoints:

    GET /admin/audit/status                       the outbox: records pending, delivered, sent; notifications
    GET /admin/audit/records?after=SEQ&limit=N    records in sequence order (with their XML: ?xml=1)
    GET /admin/audit/log/<patient>?since=&until=&professional=   a patient's access log, all of it
    GET /admin/audit/notifications?pending=1      break-the-glass / centre 15 notifications
        -> administrators only (xds/security/callers.py)

    GET /patient/log?since=&until=&professional=[&patient=<minor's id>]
        -> the signed-in patient's own access log: a portal session (xds/portal) or a patient's SAML
           bearer assertion; a legal representative names the minor and sees what the minor did not
           keep secret. Anyone else gets 403, and another patient's id gets the same answer as a
           patient with no entries would not: 403, saying nothing of that record.

`xds audit` is the command-line client of the administrators' half.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from urllib.parse import parse_qs, unquote, urlsplit

from xds import http_auth
from xds.http_json import BadRequest, answer as _answer
from xds.security import policy as P
from xds.security.callers import CallerRules, caller_of

from . import records as R
from .store import AuditStore

log = logging.getLogger("xds.audit")

ADMIN_PREFIX = "/admin/audit"
PATIENT_PREFIX = "/patient/log"
MAX_LIMIT = 10000


def _query(environ) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING") or "").items()}


def _time(value: str | None, name: str) -> _dt.datetime | None:
    if not value:
        return None
    try:
        t = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or date-time, not {value[:40]!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _int(value: str | None, name: str, default: int, high: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if not 0 <= n <= high:
        raise BadRequest(f"{name} must be between 0 and {high}")
    return n


def _iso(value) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite gives back naive UTC
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.isoformat()


def log_entries(store: AuditStore, patient: str, q: dict, *, include_secret: bool, for_patient: bool) -> list[dict]:
    """The patient-facing entries, newest first. For the patient (or a representative) a document still
    hidden from them (INVISIBLE_PATIENT, before its month) is named by neither title nor uniqueId."""
    rows = store.accesses(P.patient_key(patient), include_secret=include_secret,
                          since=_time(q.get("since"), "since"), until=_time(q.get("until"), "until"),
                          limit=_int(q.get("limit"), "limit", 1000, MAX_LIMIT))
    who = (q.get("professional") or "").strip().lower()
    now = time.time()
    out = []
    for r in rows:
        if who and who not in (r["person"] or "").lower() and who != (r["person_id"] or "").lower():
            continue
        hidden = for_patient and r["reveal_at"] is not None and r["reveal_at"] > now
        out.append({"at": _iso(r["at"]), "professional": r["person"], "professional_id": r["person_id"],
                    "profession": r["profession"], "organisation": r["organisation"],
                    "organisation_id": r["organisation_id"], "action": r["action"],
                    "transaction": r["transaction"], "mode": r["mode"], "outcome": r["outcome"],
                    "document_title": None if hidden else r["document_title"],
                    "document_unique_id": None if hidden else r["document_uid"]})
    return out


class AuditAdmin:
    def __init__(self, store: AuditStore, authenticator, callers: CallerRules = CallerRules(), source=None,
                 destination: str | None = None):
        self.store = store
        self.authenticator = authenticator
        self.callers = callers
        self.source = source
        self.destination = destination

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return _answer(start_response, 405, {"error": "the audit interface is read-only: GET"})
        try:
            principal = http_auth.authenticate(environ, self.authenticator)
        except http_auth.HttpAuthError as exc:
            return _answer(start_response, exc.status, {"error": exc.message})
        if caller_of(principal, self.callers).kind != P.ADMIN:
            return _answer(start_response, 403, {"error": "access denied: the audit interface is for administrators"})
        target = environ.get("REQUEST_URI") or environ.get("PATH_INFO") or ""
        path = unquote(urlsplit(target).path)[len(ADMIN_PREFIX):].strip("/")
        q = _query(environ)
        try:
            if path == "status":
                return _answer(start_response, 200, {**self.store.status(), "audit_repository": self.destination,
                                                     "audit_source_id": getattr(self.source, "audit_source_id", None)})
            if path == "records":
                return _answer(start_response, 200, {"records": self._records(q)})
            if path == "notifications":
                rows = self.store.notifications(pending_only=q.get("pending") in ("1", "true"),
                                                limit=_int(q.get("limit"), "limit", 1000, MAX_LIMIT))
                return _answer(start_response, 200, {"notifications": [
                    {**{k: (_iso(v) if isinstance(v, _dt.datetime) else v) for k, v in r.items()
                        if k not in ("lease_until",)}} for r in rows]})
            if path.startswith("log/") and path[4:]:
                patient = path[4:]
                return _answer(start_response, 200, {"patient": patient, "entries": log_entries(
                    self.store, patient, q, include_secret=True, for_patient=False)})
        except BadRequest as exc:
            return _answer(start_response, 400, {"error": str(exc)})
        return _answer(start_response, 404, {"error": f"{ADMIN_PREFIX}/status, /records, /notifications or "
                                                      "/log/<patient id, URL-encoded>"})

    def _records(self, q: dict) -> list[dict]:
        out = []
        with_xml = q.get("xml") in ("1", "true")
        for seq, stored, delivered, sent in self.store.records(_int(q.get("after"), "after", 0, 1 << 62),
                                                               _int(q.get("limit"), "limit", 1000, MAX_LIMIT)):
            event = R.from_stored(stored, seq)
            item = {"seq": seq, "record_id": event.record_id, "event_time": _iso(event.event_time),
                    "event": event.transaction if isinstance(event, R.AuditEvent) else event.kind,
                    "actor": getattr(event, "actor", None), "outcome": event.outcome,
                    "delivered": delivered, "sent_unconfirmed": sent}
            if with_xml:
                item["xml"] = R.render(event, getattr(self.source, "audit_source_id", "xds"),
                                       getattr(self.source, "enterprise_site_id", None)).decode("utf-8")
            out.append(item)
        return out


class PatientLog:
    """A patient's own access log. ``signin``: the portal's sign-in layer (its ``session_of(environ)``
    gives the signed-in patient), or None where the portal is not set up; ``state_of(patient)``: the
    patient's access state (legal representatives, minor)."""

    def __init__(self, store: AuditStore, authenticator, callers: CallerRules, state_of, signin=None):
        self.store = store
        self.authenticator = authenticator
        self.callers = callers
        self.state_of = state_of
        self.signin = signin

    def _patient_caller(self, environ) -> str | None:
        """The person asking, as a patient: the portal session's patient, or a patient's assertion."""
        if self.signin is not None and not environ.get("HTTP_AUTHORIZATION"):
            session = self.signin.session_of(environ)
            if session is not None:
                return session.patient_id
        principal = http_auth.authenticate(environ, self.authenticator)
        caller = caller_of(principal, self.callers)
        if caller.kind != P.PATIENT or not caller.person:
            return None
        return caller.patient if caller.patient and P.same_patient(caller.patient, caller.person) else caller.person

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return _answer(start_response, 405, {"error": "the access log is read with GET"})
        try:
            person = self._patient_caller(environ)
        except http_auth.HttpAuthError as exc:
            return _answer(start_response, exc.status, {"error": exc.message})
        if person is None:
            return _answer(start_response, 403, {"error": "access denied: the access log is for the patient, "
                                                          "signed in (portal) or with a patient's assertion"})
        q = _query(environ)
        asked = (q.get("patient") or "").strip() or person
        try:
            if P.same_patient(asked, person):
                entries = log_entries(self.store, asked, q, include_secret=True, for_patient=True)
            else:
                state = self.state_of(asked)
                if not (state.exists and state.minor and person in state.representatives):
                    return _answer(start_response, 403, {"error": "access denied: this is not your record"})
                entries = log_entries(self.store, asked, q, include_secret=False, for_patient=True)
        except BadRequest as exc:
            return _answer(start_response, 400, {"error": str(exc)})
        return _answer(start_response, 200, {"patient": asked, "entries": entries})
