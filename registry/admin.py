"""The administration interface of the patients' access states: JSON over HTTP at /admin/access/<patient>.

    GET  /admin/access/<patient id, URL-encoded>   -> the state
    POST /admin/access/<patient id>  {"action": ..., ...} -> the state after the change

Actions: grant {person, since?, until?} · revoke {person} · block {person} · unblock {person} ·
treating-doctor {person | null} · object {objection: break_glass | centre_15} · withdraw {objection} ·
representative {person} · unrepresent {person} · set {flag: closed | minor, value: true | false}.
Times are ISO 8601 (a date, or a date and time; UTC without a zone) or epoch seconds.

Callers authenticate through xds/http_auth.py (mutual TLS or a SAML bearer assertion); what each may
change is the access policy's may_manage. `xds access` is the command-line client of this interface.
"""
from __future__ import annotations

import datetime as _dt
import logging

from xds import http_auth
from xds.http_json import BadRequest, answer as _answer, path_id, read_json
from xds.security import policy as P
from xds.security.callers import CallerRules, caller_of
from .access import AUTHORISED, BLOCKED, REPRESENTATIVE, AccessStore

log = logging.getLogger(__name__)

PREFIX = "/admin/access"
MAX_BODY = 64 * 1024
OBJECTIONS = {"break_glass": "object_break_glass", "centre_15": "object_centre_15"}
FLAGS = ("closed", "minor")
ACTIONS = ("grant", "revoke", "block", "unblock", "treating-doctor", "object", "withdraw", "representative",
           "unrepresent", "set")


class AccessAdmin:
    def __init__(self, access: AccessStore, authenticator, callers: CallerRules = CallerRules(), audit=None):
        self.access = access
        self.authenticator = authenticator
        self.callers = callers
        self.audit = audit  # (environ, principal, patient, action, outcome): each change and refusal recorded

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        patient = path_id(environ, PREFIX)
        if not patient:
            return _answer(start_response, 404, {"error": f"name the patient: {PREFIX}/<patient id, URL-encoded>"})
        if method not in ("GET", "POST"):
            return _answer(start_response, 405, {"error": "GET reads the access state, POST changes it"})
        try:
            principal = http_auth.authenticate(environ, self.authenticator)
        except http_auth.HttpAuthError as exc:
            return _answer(start_response, exc.status, {"error": exc.message})
        caller = caller_of(principal, self.callers)
        state = self.access.state(patient)
        if not state.exists:
            return _answer(start_response, 404, {"error": f"the registry knows no active patient {patient} "
                                                          "(the ITI-8 feed or `xds patient add` announces patients)"})
        try:
            if method == "GET":
                action, change = "show", {}
            else:
                change = read_json(environ, MAX_BODY, '{"action": "grant", "person": "..."}')
                action = change.get("action")
                if action not in ACTIONS:
                    raise BadRequest(f"action must be one of {', '.join(ACTIONS)}")
            person = change.get("person")
            decision = P.may_manage(caller, state, action, person if isinstance(person, str) else None)
            if not decision:
                log.warning("access state of a patient: %s refused to a %s caller", action, caller.kind)
                if self.audit is not None and action != "show":
                    self.audit(environ, principal, patient, action, 4)
                return _answer(start_response, 403, {"error": f"access denied: {decision.reason}"})
            if action != "show":
                apply_change(self.access, patient, action, change)
                if self.audit is not None:
                    self.audit(environ, principal, patient, action, 0)
                log.info("access state of a patient changed: %s by a %s caller", action, caller.kind)
        except BadRequest as exc:
            return _answer(start_response, 400, {"error": str(exc)})
        return _answer(start_response, 200, state_json(self.access.state(patient)))


def apply_change(a: AccessStore, patient: str, action: str, change: dict) -> None:
    """One change of a patient's access state, already allowed by policy.may_manage (the administration
    interface and the patients' portal both make them here)."""
    if action == "grant":
        a.add_person(patient, AUTHORISED, _person(change), _time(change, "since"),
                     _time(change, "until"))
    elif action == "revoke":
        a.remove_person(patient, AUTHORISED, _person(change))
    elif action == "block":
        a.add_person(patient, BLOCKED, _person(change))
    elif action == "unblock":
        a.remove_person(patient, BLOCKED, _person(change))
    elif action == "representative":
        a.add_person(patient, REPRESENTATIVE, _person(change))
    elif action == "unrepresent":
        a.remove_person(patient, REPRESENTATIVE, _person(change))
    elif action == "treating-doctor":
        person = change.get("person")
        if person is not None and not (isinstance(person, str) and person.strip() and len(person) <= 256):
            raise BadRequest("person must be the treating doctor's id (at most 256 characters), or null for none")
        a.set_treating_doctor(patient, person.strip() if person else None)
    elif action in ("object", "withdraw"):
        objection = change.get("objection")
        if objection not in OBJECTIONS:
            raise BadRequest(f"objection must be one of {', '.join(OBJECTIONS)}")
        a.set_flag(patient, OBJECTIONS[objection], action == "object")
    elif action == "set":
        flag, value = change.get("flag"), change.get("value")
        if flag not in FLAGS or not isinstance(value, bool):
            raise BadRequest(f"set takes flag ({' or '.join(FLAGS)}) and value (true or false)")
        a.set_flag(patient, flag, value)


def state_json(state: P.AccessState) -> dict:
    return {
        "patient": state.patient, "closed": state.closed, "minor": state.minor,
        "treating_doctor": state.treating_doctor,
        "authorised": [{"person": g.person, "since": _iso(g.since), "until": _iso(g.until)}
                       for g in sorted(state.authorised, key=lambda g: g.person)],
        "blocked": sorted(state.blocked), "representatives": sorted(state.representatives),
        "objections": sorted(k for k, col in OBJECTIONS.items() if getattr(state, col.replace("object_", "objects_"))),
    }


def _iso(t: float | None) -> str | None:
    return None if t is None else _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _person(change: dict) -> str:
    person = change.get("person")
    if not isinstance(person, str) or not person.strip() or len(person) > 256:
        raise BadRequest("person must be the professional's or representative's id (at most 256 characters)")
    return person.strip()


# The times a state can show again (_iso): 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIME, MAX_TIME = -62135596800, 253402300799


def _time(change: dict, name: str) -> int | None:
    v = change.get(name)
    if v is None:
        return None
    t = None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        t = v
    elif isinstance(v, str):
        try:
            d = _dt.datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"{name} must be an ISO 8601 date or date-time, or epoch seconds") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=_dt.timezone.utc)
        t = d.timestamp()
    # NaN fails both comparisons.
    if t is None or not MIN_TIME <= t <= MAX_TIME:
        raise BadRequest(f"{name} must be an ISO 8601 date or date-time, or epoch seconds, between the years 1 "
                         "and 9999")
    return int(t)
