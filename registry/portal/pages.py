"""The patients' portal pages, under /portal (the sign-in's `pages`, xds/portal/signin.py):

    GET  /portal/                                   the signed-in person's record (or the list of records:
                                                    theirs and the minors they legally represent)
    GET  /portal/record/<pid>/documents             the documents they may see, newest first
    GET  /portal/record/<pid>/documents/<uuid>/file one document's bytes (ITI-43), as an attachment
    POST /portal/record/<pid>/documents/<uuid>/mask masked=on|off: MASQUE_PS added or removed (ITI-57)
    GET  /portal/record/<pid>/log                   the access log, ?from=&to= (dates), ?professional=
    GET  /portal/record/<pid>/access                authorised and blocked professionals, treating doctor,
                                                    objections to emergency access
    POST /portal/record/<pid>/access                action=block|unblock, person=<id>
    POST /portal/record/<pid>/objections            break_glass=on|off or centre_15=on|off
    GET  /portal/lang?to=fr|en&next=<local path>    the language, in a cookie
    GET  /portal/style.css

Who sees a record: its patient, and a legal representative while the patient is a minor (the access
policy's own rule, policy.may_manage). Any other pid, or one the registry does not know, gets the same
404 page. Documents are read, downloaded and masked through the registry's own transactions
(registry/portal/records.py), so the policy and the audit apply to them as to any SOAP caller; access
changes go through policy.may_manage and admin.apply_change, as the administration interface's do, and
leave an audit record. Every POST needs the session's CSRF token and a same-origin browser.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
from urllib.parse import quote

from xds.portal.signin import FormError, local_path, read_form, read_query
from xds.security import policy as P
from xds.security.callers import PORTAL, caller_of
from xds.security.principal import Principal

from ..admin import BadRequest, apply_change
from .records import Doc, PortalError, Record
from .render import CSS, e, hidden, page, record_url
from .text import DEFAULT, LANGUAGES, text

log = logging.getLogger("xds.portal.pages")

PREFIX = "/portal"
LANG_COOKIE = "xds_lang"
SIGNED_OUT = PREFIX + "/signed-out"
_PERSON = re.compile(r"[^\s<>\"'&]{1,64}")
_HEADERS = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"),
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; "
                                        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")]
_ACTION_TEXT = {"query": "action_query", "retrieve": "action_retrieve", "submit": "action_submit",
                "update": "action_update", "delete": "action_delete"}


class _Answer(Exception):
    """A page other than the one asked for: status and its (title key, text key) in the caller's language."""

    def __init__(self, status: int, title: str, body: str):
        super().__init__(title)
        self.status, self.title, self.body = status, title, body


def _not_found() -> _Answer:
    return _Answer(404, "not_found", "not_found_text")


class Portal:
    """app: the server's XdsApp (XdsApp.call runs the transactions); signin: the sign-in layer; access: the
    registry's AccessStore; audit_store: the audit outbox (the access log), or None; auditor: records the
    access changes, or None."""

    def __init__(self, app, signin, access, audit_store=None, auditor=None, secure_cookies: bool = True,
                 masking: bool = False):
        self.app = app
        self.signin = signin
        self.access = access
        self.audit_store = audit_store
        self.auditor = auditor
        self.secure_cookies = secure_cookies
        # Masking from professionals is the DMP's (MASQUE_PS, Table E): offered only where its rules apply;
        # under the generic rules a patient may not change a document's metadata at all.
        self.masking = masking

    # --- WSGI ---------------------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        lang = _lang(environ)
        if path == PREFIX + "/style.css":
            data = CSS.encode("utf-8")
            start_response("200 OK", [("Content-Type", "text/css; charset=utf-8"), ("Content-Length", str(len(data))),
                                      ("Cache-Control", "max-age=3600"), ("X-Content-Type-Options", "nosniff")])
            return [data]
        if path == PREFIX + "/lang":
            return self._switch_language(environ, start_response)
        if path == SIGNED_OUT:
            # Where logout ends (SignIn.after_logout): a page of this origin, because browsers apply the
            # form's form-action to its redirects, and /portal/ would go on to the identity provider.
            body = f'<p><a href="{PREFIX}/login?next={PREFIX}/">{e(text(lang, "sign_in_again"))}</a></p>'
            return _html(start_response, 200, page(lang, text(lang, "signed_out"), body, self_path=SIGNED_OUT))
        session = self.signin.session_of(environ)
        if session is None:
            target = quote(path, safe="/") + (("?" + environ["QUERY_STRING"]) if environ.get("QUERY_STRING") else "")
            nxt = target if local_path(target) else PREFIX + "/"
            return _redirect(start_response, f"{PREFIX}/login?next={quote(nxt, safe='/')}")
        try:
            if path in (PREFIX, PREFIX + "/"):
                return self._home(environ, start_response, session, lang)
            if not path.startswith(PREFIX + "/record/"):
                raise _not_found()
            parts = path[len(PREFIX + "/record/"):].split("/")
            patient, rest = parts[0], parts[1:]
            state = self.access.state(patient) if patient else None
            if state is None or not self._may_open(session, state):
                raise _not_found()
            ctx = _Context(self, environ, session, lang, patient, state)
            if len(rest) == 3 and rest[0] == "documents":
                route, args = (method, ("documents", "*", rest[2])), [rest[1]]
            else:
                route, args = (method, tuple(rest)), []
            handler = {("GET", ("documents",)): ctx.documents, ("GET", ("documents", "*", "file")): ctx.download,
                       ("POST", ("documents", "*", "mask")): ctx.mask, ("GET", ("log",)): ctx.log,
                       ("GET", ("access",)): ctx.access_page, ("POST", ("access",)): ctx.change_access,
                       ("POST", ("objections",)): ctx.objections}.get(route)
            if handler is None:
                raise _not_found()
            return handler(start_response, *args)
        except _Answer as a:
            return _html(start_response, a.status, page(lang, text(lang, a.title), f"<p>{e(text(lang, a.body))}</p>"
                                                        f'<p><a href="{PREFIX}/">{e(text(lang, "back"))}</a></p>',
                                                        csrf=session.csrf_token, self_path=PREFIX + "/"))
        except FormError as exc:
            return _html(start_response, exc.status, page(lang, text(lang, "forbidden"), f"<p>{e(exc.message)}</p>",
                                                          csrf=session.csrf_token, self_path=path))

    def _may_open(self, session, state: P.AccessState) -> bool:
        """Whoever may read the whole access state (the patient, a minor's legal representative: the
        policy's own "show") may open the record."""
        caller = caller_of(_principal(session, state.patient))
        return state.exists and bool(P.may_manage(caller, state, "show"))

    def _home(self, environ, start_response, session, lang):
        own = session.patient_id
        minors = [p for p in self.access.represented_by(own) if self._may_open(session, self.access.state(p))]
        mine = self.access.state(own)
        if not minors:
            if not mine.exists:
                raise _not_found()
            return _redirect(start_response, record_url(own))
        items = []
        if mine.exists:
            items.append(f'<li><a href="{e(record_url(own))}">{e(text(lang, "own_record"))}</a></li>')
        for p in minors:
            items.append(f'<li><a href="{e(record_url(p))}">{e(text(lang, "represented", p.split("^")[0]))}</a></li>')
        body = f'<ul id="records">{"".join(items)}</ul>'
        return _html(start_response, 200, page(lang, text(lang, "choose_record"), body, csrf=session.csrf_token,
                                               who=own.split("^")[0], self_path=PREFIX + "/"))

    def _switch_language(self, environ, start_response):
        try:
            q = read_query(environ, ("to", "next"))
        except FormError:
            q = {}
        to = q.get("to") if q.get("to") in LANGUAGES else DEFAULT
        nxt = q.get("next") if local_path(q.get("next")) and q["next"].startswith(PREFIX) else PREFIX + "/"
        cookie = f"{LANG_COOKIE}={to}; Path={PREFIX}; SameSite=Lax; Max-Age=31536000" + (
            "; Secure" if self.secure_cookies else "")
        return _redirect(start_response, nxt, [("Set-Cookie", cookie)])


class _Context:
    """One request on one record."""

    def __init__(self, portal: Portal, environ, session, lang: str, patient: str, state: P.AccessState):
        self.portal, self.environ, self.session, self.lang = portal, environ, session, lang
        self.patient, self.state = patient, state
        self.principal = _principal(session, patient)
        self.record = Record(portal.app, self.principal, environ)

    def t(self, key: str, *args: str) -> str:
        return text(self.lang, key, *args)

    def _page(self, start_response, title: str, body: str, current: str, *, status: int = 200,
              message: str | None = None, error: bool = False):
        path = quote(self.environ.get("PATH_INFO") or PREFIX + "/", safe="/")
        query = self.environ.get("QUERY_STRING")
        return _html(start_response, status, page(
            self.lang, title, body, csrf=self.session.csrf_token, who=self.session.patient_id.split("^")[0],
            patient=self.patient, current=current, self_path=path + (f"?{query}" if query else ""),
            message=message, error=error))

    def _form(self) -> dict[str, str]:
        form = read_form(self.environ)
        if not self.portal.signin.check_csrf(self.environ, self.session, form.get("csrf")):
            log.warning(json.dumps({"event": "portal_change", "outcome": "refused", "reason": "csrf",
                                    "session": self.session.id}))
            raise _Answer(403, "forbidden", "forbidden_text")
        return form

    def _back(self, start_response, page_name: str, message_key: str, *args: str):
        msg = quote(self.t(message_key, *args))
        return _redirect(start_response, f"{record_url(self.patient, page_name)}?done={msg}")

    def _done(self) -> str | None:
        try:
            value = read_query(self.environ, ("done", "from", "to", "professional")).get("done")
        except FormError:
            return None
        return value[:300] if value else None

    def _documents(self) -> list[Doc]:
        try:
            return self.record.documents(self.patient)
        except PortalError as exc:
            log.warning(json.dumps({"event": "portal_read", "outcome": "refused", "codes": list(exc.codes)}))
            if any(c in ("XDSUnknownPatientId", "XDSPatientIdDoesNotMatch") for c in exc.codes):
                raise _not_found() from None
            raise _Answer(503, "unavailable", "unavailable_text") from None

    # --- documents --------------------------------------------------------------------------------
    def documents(self, start_response):
        docs = self._documents()
        csrf = self.session.csrf_token
        if not docs:
            body = f'<p>{e(self.t("documents_intro"))}</p><p id="no-documents">{e(self.t("no_documents"))}</p>'
        else:
            rows = []
            for d in docs:
                base = f"{record_url(self.patient, 'documents')}/{quote(d.entry_uuid, safe='')}"
                value, label = ("off", "unmask") if d.masked else ("on", "mask")
                badge = f' <span class="badge">{e(self.t("masked"))}</span>' if d.masked else ""
                masked_class = ' class="masked"' if d.masked else ""
                rows.append(
                    f'<tr data-entry="{e(d.entry_uuid)}"{masked_class}>'
                    f'<td class="title" data-label="{e(self.t("col_title"))}">{e(d.title)}{badge}</td>'
                    f'<td class="type" data-label="{e(self.t("col_type"))}">{e(d.type)}</td>'
                    f'<td class="date" data-label="{e(self.t("col_date"))}">{_date_html(d.date)}</td>'
                    f'<td class="author" data-label="{e(self.t("col_author"))}">{e(d.author)}</td>'
                    f'<td class="organisation" data-label="{e(self.t("col_organisation"))}">{e(d.organisation)}</td>'
                    f'<td data-label="{e(self.t("col_actions"))}"><a class="download" href="{e(base)}/file" '
                    f'aria-label="{e(self.t("download_label", d.title))}">{e(self.t("download"))}</a> '
                    + (f'<form class="mask inline" method="post" action="{e(base)}/mask">{hidden("csrf", csrf)}'
                       f'<button type="submit" name="masked" value="{value}" class="secondary" '
                       f'aria-label="{e(self.t(label + "_label", d.title))}">{e(self.t(label))}</button></form>'
                       if self.portal.masking else "") + '</td></tr>')
            head = "".join(f'<th scope="col">{e(self.t(k))}</th>' for k in
                           ("col_title", "col_type", "col_date", "col_author", "col_organisation", "col_actions"))
            body = (f'<p>{e(self.t("documents_intro"))}</p><table id="documents" class="cards">'
                    f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
        return self._page(start_response, self.t("documents_title"), body, "documents", message=self._done())

    def _doc(self, entry_uuid: str) -> Doc:
        found = next((d for d in self._documents() if d.entry_uuid == entry_uuid), None)
        if found is None:
            raise _not_found()
        return found

    def download(self, start_response, entry_uuid: str):
        doc = self._doc(entry_uuid)
        try:
            mime, data, cleanup = self.record.retrieve(doc)
        except PortalError as exc:
            log.warning(json.dumps({"event": "portal_retrieve", "outcome": "refused", "codes": list(exc.codes)}))
            raise _not_found() from None
        if isinstance(data, str):   # a spooled file: streamed, not read into memory
            size, body = os.path.getsize(data), _chunks(data, cleanup)
        else:
            if cleanup is not None:
                cleanup()
            size, body = len(data), [data]
        name = _file_name(doc)
        start_response("200 OK", [("Content-Type", _safe_mime(mime)), ("Content-Length", str(size)),
                                  ("Content-Disposition", f"attachment; filename=\"{name}\""), *_HEADERS])
        return body

    def mask(self, start_response, entry_uuid: str):
        form = self._form()
        wanted = form.get("masked")
        if wanted not in ("on", "off") or not self.portal.masking:
            raise _not_found()
        doc = self._doc(entry_uuid)
        try:
            self.record.set_masked(self.patient, doc, wanted == "on")
        except PortalError as exc:
            log.warning(json.dumps({"event": "portal_mask", "outcome": "refused", "codes": list(exc.codes)}))
            return self._page(start_response, self.t("forbidden"), "", "documents", status=409,
                              message=self.t("refused_text", ", ".join(exc.codes) or "?"), error=True)
        return self._back(start_response, "documents", "masked_done" if wanted == "on" else "unmasked_done")

    # --- the access log ---------------------------------------------------------------------------
    def log(self, start_response):
        from xds.audit.http import log_entries

        q = read_query(self.environ, ("from", "to", "professional", "done"))
        error = None
        since = until = None
        try:
            since = _day(q.get("from"))
            until = _day(q.get("to"), end=True)
        except ValueError:
            error = self.t("bad_date")
        entries = []
        if self.portal.audit_store is not None and error is None:
            params = {"since": since, "until": until, "professional": (q.get("professional") or "")[:64]}
            entries = log_entries(self.portal.audit_store, self.patient, {k: v for k, v in params.items() if v},
                                  include_secret=True, for_patient=True)
        rows = []
        for r in entries:
            classes = ["access"] + (["break-glass"] if r["mode"] == "bris_de_glace" else []) + (
                ["centre-15"] if r["mode"] == "centre_15" else [])
            mark = ""
            if "break-glass" in classes:
                mark = f' <span class="badge">{e(self.t("break_glass"))}</span>'
            elif "centre-15" in classes:
                mark = f' <span class="badge">{e(self.t("centre_15"))}</span>'
            action = self.t(_ACTION_TEXT[r["action"]]) if r["action"] in _ACTION_TEXT else r["action"]
            if r["outcome"] == "refused":
                action += f" ({self.t('refused')})"
            who = r["professional"] or ""
            if P.same_patient(r["professional_id"], self.session.patient_id):
                who = self.t("you")  # the patient's own reading, at the portal
            elif r["professional_id"] and r["professional_id"] != who:
                who = f"{who} ({r['professional_id']})"
            rows.append(f'<tr class="{" ".join(classes)}">'
                        f'<td class="at" data-label="{e(self.t("col_at"))}">{_time_html(r["at"])}</td>'
                        f'<td class="professional" data-label="{e(self.t("col_professional"))}">{e(who)}'
                        f'{(" – " + e(r["profession"])) if r["profession"] else ""}</td>'
                        f'<td class="organisation" data-label="{e(self.t("col_organisation"))}">'
                        f'{e(r["organisation"] or r["organisation_id"] or "")}</td>'
                        f'<td class="action" data-label="{e(self.t("col_action"))}">{e(action)}{mark}</td>'
                        f'<td class="document" data-label="{e(self.t("col_document"))}">'
                        f'{e(r["document_title"] or "")}</td></tr>')
        head = "".join(f'<th scope="col">{e(self.t(k))}</th>' for k in
                       ("col_at", "col_professional", "col_organisation", "col_action", "col_document"))
        table = (f'<table id="access-log" class="cards"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
                 f'</table>') if rows else f'<p id="no-log">{e(self.t("no_log"))}</p>'
        form = (f'<form id="log-filter" method="get" action="{e(record_url(self.patient, "log"))}" class="filters">'
                f'<div class="field"><label for="log-from">{e(self.t("from"))}</label>'
                f'<input type="date" id="log-from" name="from" value="{e(q.get("from") or "")}"></div>'
                f'<div class="field"><label for="log-to">{e(self.t("to"))}</label>'
                f'<input type="date" id="log-to" name="to" value="{e(q.get("to") or "")}"></div>'
                f'<div class="field"><label for="log-professional">{e(self.t("professional"))}</label>'
                f'<input type="text" id="log-professional" name="professional" '
                f'value="{e(q.get("professional") or "")}"></div>'
                f'<div class="field"><button type="submit">{e(self.t("filter"))}</button></div></form>')
        body = f'<p>{e(self.t("log_intro"))}</p>{form}{table}'
        return self._page(start_response, self.t("log_title"), body, "log", message=error, error=error is not None,
                          status=400 if error else 200)

    # --- professionals' access --------------------------------------------------------------------
    def access_page(self, start_response, *, status: int = 200, message: str | None = None, error: bool = False):
        s = self.portal.access.state(self.patient)
        csrf = self.session.csrf_token
        base = record_url(self.patient, "access")

        def person_form(person: str, action: str) -> str:
            return (f'<form class="inline" method="post" action="{e(base)}">{hidden("csrf", csrf)}'
                    f'{hidden("person", person)}<button type="submit" name="action" value="{action}" '
                    f'class="secondary" aria-label="{e(self.t(action + "_label", person))}">'
                    f'{e(self.t(action))}</button></form>')

        now = _dt.datetime.now(_dt.timezone.utc).timestamp()
        grants = [g for g in s.authorised if g.valid(now)]
        if grants:
            rows = "".join(
                f'<tr data-person="{e(g.person)}"><td data-label="{e(self.t("col_person"))}">{e(g.person)}</td>'
                f'<td data-label="{e(self.t("col_until"))}">'
                f'{e(_day_text(g.until) if g.until else self.t("no_end"))}</td>'
                f'<td data-label="{e(self.t("col_actions"))}">{person_form(g.person, "block")}</td></tr>' for g in grants)
            authorised = (f'<table id="authorised" class="cards"><thead><tr><th scope="col">{e(self.t("col_person"))}'
                          f'</th><th scope="col">{e(self.t("col_until"))}</th><th scope="col">'
                          f'{e(self.t("col_actions"))}</th></tr></thead><tbody>{rows}</tbody></table>')
        else:
            authorised = f'<table id="authorised" hidden></table><p>{e(self.t("none_authorised"))}</p>'
        if s.blocked:
            rows = "".join(
                f'<tr data-person="{e(p)}"><td data-label="{e(self.t("col_person"))}">{e(p)}</td>'
                f'<td data-label="{e(self.t("col_actions"))}">{person_form(p, "unblock")}</td></tr>'
                for p in sorted(s.blocked))
            blocked = (f'<table id="blocked" class="cards"><thead><tr><th scope="col">{e(self.t("col_person"))}</th>'
                       f'<th scope="col">{e(self.t("col_actions"))}</th></tr></thead><tbody>{rows}</tbody></table>')
        else:
            blocked = f'<table id="blocked" hidden></table><p>{e(self.t("none_blocked"))}</p>'
        doctor = (self.t("treating_doctor", s.treating_doctor) if s.treating_doctor
                  else self.t("no_treating_doctor"))
        block_form = (f'<form id="block-form" method="post" action="{e(base)}">{hidden("csrf", csrf)}'
                      f'{hidden("action", "block")}<div class="field"><label for="block-person">'
                      f'{e(self.t("col_person"))}</label><p class="help" id="block-help">{e(self.t("block_help"))}</p>'
                      f'<input type="text" id="block-person" name="person" required maxlength="64" '
                      f'aria-describedby="block-help" autocomplete="off"></div>'
                      f'<button type="submit">{e(self.t("block"))}</button></form>')

        def objection(key: str, field: str, on: bool) -> str:
            span = "objection-" + field.replace("_", "-")
            button = "withdraw" if on else "object"
            return (f'<p>{e(self.t("object_" + field))}<span id="{span}">{e(self.t("yes" if on else "no"))}</span> '
                    f'<button type="submit" name="{field}" value="{"off" if on else "on"}" class="secondary">'
                    f'{e(self.t(button))}</button></p>')

        objections = (f'<form id="objections" method="post" action="{e(record_url(self.patient, "objections"))}">'
                      f'{hidden("csrf", csrf)}<p class="help">{e(self.t("objections_help"))}</p>'
                      f'{objection("break_glass", "break_glass", s.objects_break_glass)}'
                      f'{objection("centre_15", "centre_15", s.objects_centre_15)}</form>')
        body = (f'<p id="treating-doctor">{e(doctor)}</p>'
                f'<h2>{e(self.t("authorised_title"))}</h2>{authorised}'
                f'<h2>{e(self.t("blocked_title"))}</h2>{blocked}'
                f'<h2>{e(self.t("block_title"))}</h2>{block_form}'
                f'<h2>{e(self.t("objections_title"))}</h2>{objections}')
        return self._page(start_response, self.t("access_title"), body, "access", status=status,
                          message=message or self._done(), error=error)

    def _change(self, action: str, change: dict) -> bool:
        """One access change, decided by the policy as at the administration interface, and audited."""
        caller = caller_of(self.principal)
        decision = P.may_manage(caller, self.portal.access.state(self.patient), action, change.get("person"))
        auditor = self.portal.auditor
        if not decision:
            if auditor is not None:
                auditor.access_rights(self.environ, self.principal, self.patient, action, 4)
            return False
        apply_change(self.portal.access, self.patient, action, change)
        if auditor is not None:
            auditor.access_rights(self.environ, self.principal, self.patient, action, 0)
        log.info(json.dumps({"event": "portal_change", "outcome": "done", "action": action,
                             "session": self.session.id}))
        return True

    def change_access(self, start_response):
        form = self._form()
        action, person = form.get("action"), (form.get("person") or "").strip()
        if action not in ("block", "unblock"):
            raise _not_found()
        if not _PERSON.fullmatch(person):
            return self.access_page(start_response, status=400, message=self.t("bad_person"), error=True)
        try:
            if not self._change(action, {"person": person}):
                raise _Answer(403, "forbidden", "forbidden_text")
        except BadRequest:
            return self.access_page(start_response, status=400, message=self.t("bad_person"), error=True)
        return self._back(start_response, "access", "blocked_done" if action == "block" else "unblocked_done", person)

    def objections(self, start_response):
        form = self._form()
        chosen = [(k, form[k]) for k in ("break_glass", "centre_15") if form.get(k) in ("on", "off")]
        if len(chosen) != 1:
            raise _not_found()
        objection, value = chosen[0]
        if not self._change("object" if value == "on" else "withdraw", {"objection": objection}):
            raise _Answer(403, "forbidden", "forbidden_text")
        return self._back(start_response, "access", "objection_done")


# --- helpers ------------------------------------------------------------------------------------------
def _principal(session, patient: str) -> Principal:
    """The signed-in person, about this patient's record: what every transaction and decision is asked with."""
    return Principal(mode=PORTAL, subject=session.patient_id, name_id=session.patient_id, patient_id=patient,
                     issuer=session.issuer)


def _lang(environ) -> str:
    try:
        asked = read_query(environ, ("lang",)).get("lang")
    except FormError:
        asked = None
    if asked in LANGUAGES:
        return asked
    for part in (environ.get("HTTP_COOKIE") or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == LANG_COOKIE and value in LANGUAGES:
            return value
    return DEFAULT


def _redirect(start_response, location: str, extra: list | None = None):
    start_response("303 See Other", [("Location", location), ("Content-Length", "0"), *_HEADERS, *(extra or [])])
    return [b""]


def _html(start_response, status: int, body: bytes):
    reasons = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 413:
               "Content Too Large", 415: "Unsupported Media Type", 503: "Service Unavailable"}
    start_response(f"{status} {reasons.get(status, 'Error')}", [
        ("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))), *_HEADERS])
    return [body]


def _chunks(path: str, cleanup, size: int = 1 << 20):
    """A spooled document's bytes, then its cleanup (also when the client goes away: the server closes us)."""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(size):
                yield chunk
    finally:
        if cleanup is not None:
            cleanup()


def _date_html(dtm: str) -> str:
    """An HL7 DTM (YYYYMMDD[hhmm[ss]]) as a <time> element."""
    if len(dtm) >= 8 and dtm[:8].isdigit():
        iso = f"{dtm[:4]}-{dtm[4:6]}-{dtm[6:8]}"
        return f'<time datetime="{iso}">{dtm[6:8]}/{dtm[4:6]}/{dtm[:4]}</time>'
    return e(dtm)


def _time_html(iso: str | None) -> str:
    if not iso:
        return ""
    try:
        t = _dt.datetime.fromisoformat(iso)
    except ValueError:
        return e(iso)
    return f'<time datetime="{e(iso)}">{t.strftime("%d/%m/%Y %H:%M")} UTC</time>'


def _day(value: str | None, end: bool = False) -> str | None:
    """A YYYY-MM-DD filter as the access log's ISO bound (the whole day for the upper one)."""
    if not value:
        return None
    day = _dt.date.fromisoformat(value)
    t = _dt.datetime.combine(day, _dt.time.max if end else _dt.time.min, tzinfo=_dt.timezone.utc)
    return t.isoformat()


def _day_text(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%d/%m/%Y")


_MIME = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")
_EXTENSIONS = {"application/pdf": ".pdf", "text/plain": ".txt", "text/xml": ".xml", "application/xml": ".xml",
               "image/png": ".png", "image/jpeg": ".jpg"}


def _safe_mime(mime: str | None) -> str:
    return mime if mime and _MIME.fullmatch(mime) else "application/octet-stream"


def _file_name(doc: Doc) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", doc.title or "document").strip("_")[:60] or "document"
    ext = _EXTENSIONS.get(doc.mime_type, "")
    return stem + ("" if os.path.splitext(stem)[1] else ext)
