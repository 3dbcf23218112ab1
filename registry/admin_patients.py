"""The administration interface of the patient ids the registry accepts: JSON over HTTP at /admin/patients.

    GET  /admin/patients[?after=ID&limit=N]       -> {"patients": [{"id", "active", "merged_into"}, ...],
                                                       "next": ID of the last one when more may follow}
    GET  /admin/patients/<patient id, URL-encoded> -> {"patient": {"id", "active", "merged_into"}}
    POST /admin/patients  {"action": "add", "patients": [ID, ...]}            -> {"added": [...]}
    POST /admin/patients  {"action": "merge", "subsumed": ID, "surviving": ID} -> {"merged": {...}}

`xds patient` is its command-line client: it talks to the server instead of opening the server's files,
so it works in any folder and against a registry on another host. Only an administrator may read or
change this list (the ids of every patient of the registry); callers authenticate through
xds/http_auth.py like those of /admin/access. Every id is checked against the profile's rule for naming a
patient before anything is stored, and a request with one bad id stores none. Each change, and each
refused one, leaves an audit record (a patient record event, as the ITI-8 feed's do).
"""
from __future__ import annotations

import logging
from urllib.parse import parse_qs

from xds import http_auth
from xds.http_json import BadRequest, answer as _answer, path_id, read_json
from xds.security.callers import ADMIN, CallerRules, caller_of
from xds.validation.profiles import get_profile

log = logging.getLogger(__name__)

PREFIX = "/admin/patients"
MAX_BODY = 256 * 1024
MAX_IDS = 1000            # ids in one add: a bulk load belongs to the feed, not to one HTTP request
DEFAULT_PAGE, MAX_PAGE = 1000, 10000


class PatientAdmin:
    def __init__(self, store, authenticator, callers: CallerRules = CallerRules(), profile: str = "ihe",
                 audit=None):
        self.store = store
        self.authenticator = authenticator
        self.callers = callers
        self.check = get_profile(profile).checker("queryPatientId")
        self.profile = profile
        # (environ, principal, patient ids, trigger "A01" | "A40", outcome): the audit layer's record.
        self.audit = audit

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        named = path_id(environ, PREFIX)
        if method not in ("GET", "POST") or (method == "POST" and named):
            return _answer(start_response, 405, {"error": f"GET {PREFIX}[/<patient id>] reads, POST {PREFIX} "
                                                          "adds or merges"})
        try:
            principal = http_auth.authenticate(environ, self.authenticator)
        except http_auth.HttpAuthError as exc:
            return _answer(start_response, exc.status, {"error": exc.message})
        caller = caller_of(principal, self.callers)
        try:
            change = read_json(environ, MAX_BODY, '{"action": "add", "patients": ["..."]}') if method == "POST" else None
            if change is not None:
                action = change.get("action")
                if action not in ("add", "merge"):
                    raise BadRequest("action must be add or merge")
            if caller.kind != ADMIN:
                log.warning("patient ids: %s refused to a %s caller", "a change" if change else "a read",
                            caller.kind)
                if change is not None and self.audit is not None:
                    self.audit(environ, principal, _ids_of(change), _trigger(change), 4)
                return _answer(start_response, 403, {"error": "access denied: only an administrator may read or "
                                                              "change the registry's patient ids"})
            if change is None:
                return self._read(start_response, named, environ)
            return self._change(start_response, change, environ, principal)
        except BadRequest as exc:
            return _answer(start_response, 400, {"error": str(exc)})

    def _read(self, start_response, named: str, environ):
        if named:
            row = self.store.patient_row(named)
            if row is None:
                return _answer(start_response, 404, {"error": "the registry knows no such patient id"})
            return _answer(start_response, 200, {"patient": _row(row)})
        query = parse_qs(environ.get("QUERY_STRING", ""))
        after = (query.get("after") or [None])[0]
        try:
            limit = int((query.get("limit") or [DEFAULT_PAGE])[0])
        except ValueError:
            raise BadRequest("limit must be a number") from None
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
        rows = self.store.list_patients(after=after, limit=limit)
        answer = {"patients": [_row(r) for r in rows]}
        if len(rows) == limit:
            answer["next"] = rows[-1][0]
        return _answer(start_response, 200, answer)

    def _change(self, start_response, change: dict, environ, principal):
        ids = _ids_of(change)
        trigger = _trigger(change)
        if change["action"] == "merge" and (len(ids) != 2 or ids[0] == ids[1]):
            raise BadRequest("merge takes two different ids: subsumed and surviving")
        problems = [f"{pid}: {'; '.join(found)}" for pid in ids for found in [self.check(pid)] if found]
        if problems:
            if self.audit is not None:
                self.audit(environ, principal, ids, trigger, 4)
            raise BadRequest(f"not an XDS patient id under profile {self.profile} (nothing was stored): "
                             + " | ".join(problems))
        if change["action"] == "add":
            with self.store.transaction() as conn:
                for pid in ids:
                    self.store.add_patient(pid, conn)
            answer = {"added": ids}
        else:
            self.store.merge_patient(ids[0], ids[1])
            answer = {"merged": {"subsumed": ids[0], "surviving": ids[1]}}
        if self.audit is not None:
            self.audit(environ, principal, ids, trigger, 0)
        log.info("patient ids: %s of %d id(s) by an administrator", change["action"], len(ids))
        return _answer(start_response, 200, answer)


def _ids_of(change: dict) -> list[str]:
    if change.get("action") == "merge":
        ids = [change.get("subsumed"), change.get("surviving")]
    else:
        ids = change.get("patients")
        if not isinstance(ids, list) or not ids:
            raise BadRequest("add takes patients: a non-empty list of patient ids")
        if len(ids) > MAX_IDS:
            raise BadRequest(f"add takes at most {MAX_IDS} ids per request")
    if not all(isinstance(pid, str) and pid.strip() and len(pid) <= 256 for pid in ids):
        raise BadRequest("each patient id must be a non-empty string of at most 256 characters")
    return [pid.strip() for pid in ids]


def _trigger(change: dict) -> str:
    return "A40" if change.get("action") == "merge" else "A01"


def _row(row) -> dict:
    pid, active, merged = row
    return {"id": pid, "active": bool(active), "merged_into": merged}
