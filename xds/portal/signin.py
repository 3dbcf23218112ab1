"""The patients' sign-in over HTTP, mounted at /portal, and the helpers the rest of the server asks.

    GET  /portal/login?next=/local/path   302 to the identity provider (a new state, nonce, PKCE verifier)
    GET  /portal/callback?code=&state=    the provider's answer: the code exchanged, the id_token verified,
                                          a session made; 303 to next (a local path only) or /portal/
    POST /portal/logout                   CSRF-checked (form field csrf, or header X-CSRF-Token); the
                                          session deleted, its cookie cleared; 303 to /portal/

Any other path under the prefix goes to `pages` (the portal's own pages), 404 without it.

Cookies. xds_session carries the session token (32 random bytes): HttpOnly, Secure (unless
secure_cookies is off, allowed only for a plain-http base URL on a loopback address), SameSite=Lax,
Path=/, no Max-Age (it ends with the browser; the server ends it after session_ttl in any case).
Lax, not Strict: the sign-in ends with a chain of top-level navigations that starts at the provider's
site (provider -> /portal/callback -> 303 -> next), and browsers treat every request of a chain a
cross-site page started as cross-site, so a Strict cookie, though stored, would not be sent on the 303's
landing page nor on the first link the patient follows from elsewhere: the patient would look signed
out. Lax still withholds the cookie from cross-site POSTs, subresources and frames; state-changing
requests also need the session's CSRF token and, when the browser sends one, a same-origin Origin or
Referer (check_csrf). xds_login binds a sign-in to the browser that began it (a second random token,
SameSite=Lax so that it comes back on the provider's redirect, Path=/portal, 10 minutes): a callback
URL made in one browser does nothing in another (login CSRF, session fixation).

Nothing here logs a token, a code, a cookie or an id_token; a log line names a session by its id (the
SHA-256 of its token), never the patient.
"""
from __future__ import annotations

import hmac
import html
import json
import logging
import time
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.engine import Engine

from xds.app import MalformedBody, request_input

from .oidc import (AuthRequest, OidcConfig, OidcError, PatientIdError, ProviderError, RelyingParty, check_url,
                   loopback_host, random_token)
from .sessions import LOGIN_TTL, Session, SessionStore, digest, well_formed

log = logging.getLogger("xds.portal")

PREFIX = "/portal"
SESSION_COOKIE = "xds_session"
LOGIN_COOKIE = "xds_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "HTTP_X_CSRF_TOKEN"
MAX_FORM_BYTES = 16 * 1024
MAX_NEXT = 1024
_ENVIRON_KEY = "xds.portal.session"     # the request's session, once looked up
_COOKIES_TRIED = 4                       # xds_session cookies of one request looked up at most

_HEADERS = [("Cache-Control", "no-store"), ("Pragma", "no-cache"), ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
                                        "form-action 'self'")]
_REASONS = {200: "OK", 302: "Found", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large",
            415: "Unsupported Media Type", 502: "Bad Gateway"}


class _Refusal(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def local_path(value: object) -> bool:
    """A path on this server (/..., nothing else): never an absolute URL, a scheme-relative //host or
    /\\host (which browsers read as //host), nor anything with spaces or control characters."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_NEXT:
        return False
    if value.startswith("//") or "\\" in value or any(not 0x21 <= ord(ch) <= 0x7e for ch in value):
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc and not parts.fragment


def origin_of(url: str) -> str | None:
    """scheme://host[:port], lower case, the default port left out; None when url has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def cookies(environ: dict, name: str) -> list[str]:
    """Every value the request's Cookie header gives name (a browser may send several, most specific
    path first)."""
    out = []
    for item in (environ.get("HTTP_COOKIE") or "").split(";"):
        key, sep, value = item.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out.append(value)
    return out


class SignIn:
    """The WSGI application under prefix, and the sign-in helpers of the server's other pages.

    config: the relying party's registration; engine: the database of the sessions (every process of
    the server shares it; SignIn.migrate() makes the tables); base_url: the server's public base URL
    (https://host[:port], plain http only on a loopback address), from which the redirect_uri
    (<base_url>/portal/callback) and the origin check come. pages: the WSGI application of the other
    paths under prefix (404 without it). on_event(kind, environ, session, reason), kind "signed_in",
    "refused" or "logged_out": told of each (the audit layer's hook); what it raises is not caught.
    """

    def __init__(self, config: OidcConfig, engine: Engine, base_url: str, *, secure_cookies: bool = True,
                 prefix: str = PREFIX, pages: Callable | None = None, after_logout: str | None = None,
                 on_event: Callable[[str, dict, Session | None, str | None], None] | None = None,
                 fetch=None, clock: Callable[[], float] = time.time):
        base_url = (base_url or "").rstrip("/")
        check_url(base_url, "the portal's base_url")
        base = urlsplit(base_url)
        if base.query:
            raise ValueError("the portal's base_url may not have a query")
        if not secure_cookies and not (base.scheme == "http" and loopback_host(base.hostname)):
            raise ValueError("secure_cookies may be off only for a plain-http base URL on a loopback address "
                             f"(development), not for {origin_of(base_url)}")
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"the portal's prefix must start with / and not end with one, not {prefix!r}")
        redirect_uri = f"{base_url}{prefix}/callback"
        if config.redirect_uri is not None and config.redirect_uri != redirect_uri:
            raise ValueError(f"the OIDC redirect_uri {config.redirect_uri!r} is not this server's callback "
                             f"{redirect_uri!r} (base_url + {prefix}/callback)")
        self.config = config
        self.base_url = base_url
        self.origin = origin_of(base_url)
        self.prefix = prefix
        self.secure_cookies = secure_cookies
        self.pages = pages
        self.after_logout = after_logout or prefix + "/"
        if not local_path(self.after_logout):
            raise ValueError(f"after_logout must be a local path, not {self.after_logout!r}")
        self.on_event = on_event
        self.rp = RelyingParty(config, redirect_uri, fetch=fetch, clock=clock)
        self.sessions = SessionStore(engine, clock=clock)

    def migrate(self) -> None:
        self.sessions.migrate()

    def purge(self) -> int:
        return self.sessions.purge()

    # --- the helpers of the other pages -------------------------------------------------------------
    def session_of(self, environ: dict) -> Session | None:
        """The signed-in patient's session of this request (its xds_session cookie); None when the
        request has none, or it has ended or expired."""
        if _ENVIRON_KEY in environ:
            return environ[_ENVIRON_KEY]
        found = None
        for token in cookies(environ, SESSION_COOKIE)[:_COOKIES_TRIED]:
            found = self.sessions.get(token)
            if found is not None:
                break
        environ[_ENVIRON_KEY] = found
        return found

    def check_csrf(self, environ: dict, session: Session | None, token: object) -> bool:
        """A state-changing request of session is the patient's own: token is the session's CSRF token
        (Session.csrf_token, compared in constant time), and the Origin header, or else the Referer, when
        the browser sends one, is this server's origin."""
        if session is None or not isinstance(token, str) or not token or len(token) > 256:
            return False
        if not hmac.compare_digest(digest(token), session.csrf_hash):
            return False
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None:
            return origin_of(origin.strip()) == self.origin  # "null" (a sandboxed or opaque origin) fails
        referer = environ.get("HTTP_REFERER")
        if referer is not None:
            return origin_of(referer.strip()) == self.origin
        return True

    # --- WSGI -----------------------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        handlers = {f"{self.prefix}/login": ("GET", self._login), f"{self.prefix}/callback": ("GET", self._callback),
                    f"{self.prefix}/logout": ("POST", self._logout)}
        handled = handlers.get(path)
        if handled is None:
            if self.pages is not None and (path == self.prefix or path.startswith(self.prefix + "/")):
                return self.pages(environ, start_response)
            return self._page(start_response, 404, "Not found", "There is no page here.")
        allowed, handler = handled
        if method != allowed:
            return self._page(start_response, 405, "Method not allowed", f"This address takes {allowed}.",
                              [("Allow", allowed)])
        return handler(environ, start_response)

    def _login(self, environ, start_response):
        try:
            query = _query(environ, ("next",))
        except _Refusal as exc:
            return self._refused(environ, start_response, exc)
        next_path = query.get("next") or self.prefix + "/"
        if not local_path(next_path):
            return self._refused(environ, start_response, _Refusal(
                400, "the page to return to (next) must be a path on this server; another site's address is "
                     "refused"))
        try:
            request: AuthRequest = self.rp.authorization_request()
        except OidcError as exc:
            return self._refused(environ, start_response, _Refusal(502, str(exc)))
        browser = next((v for v in cookies(environ, LOGIN_COOKIE) if well_formed(v)), None) or random_token()
        self.sessions.add_login(request.state, browser, request.nonce, request.verifier, next_path)
        log.info(json.dumps({"event": "portal_login", "outcome": "redirected"}))
        return self._redirect(start_response, 302, request.url,
                              [self._cookie(LOGIN_COOKIE, browser, self.prefix, LOGIN_TTL)])

    def _callback(self, environ, start_response):
        try:
            session, token, next_path = self._sign_in(environ)
        except _Refusal as exc:
            return self._refused(environ, start_response, exc, clear_login=True)
        log.info(json.dumps({"event": "portal_login", "outcome": "signed_in", "session": session.id[:16]}))
        if self.on_event is not None:
            self.on_event("signed_in", environ, session, None)
        return self._redirect(start_response, 303, self.base_url + next_path, [
            self._cookie(SESSION_COOKIE, token, "/"), self._cookie(LOGIN_COOKIE, "", self.prefix, 0)])

    def _sign_in(self, environ) -> tuple[Session, str, str]:
        query = _query(environ, ("state", "code", "error"))
        state = query.get("state")
        if not state:
            raise _Refusal(400, "the identity provider's answer has no state; start the sign-in again")
        # Taken, hence deleted, whatever follows: a state serves one callback.
        pending = self.sessions.take_login(state)
        if pending is None:
            raise _Refusal(400, "this sign-in is unknown, was already used, or has expired; start it again")
        if not any(hmac.compare_digest(digest(v), pending.browser_hash) for v in cookies(environ, LOGIN_COOKIE)
                   if well_formed(v)):
            raise _Refusal(400, "this sign-in was not begun in this browser (or its cookies are off); start "
                                "it again here")
        error = query.get("error")
        if error is not None:
            shown = error if error.isascii() and error.replace("_", "").isalnum() and len(error) <= 64 \
                else "an unreadable error"
            raise _Refusal(401, f"the identity provider did not sign you in ({shown})")
        code = query.get("code")
        if not code:
            raise _Refusal(400, "the identity provider's answer has no authorization code")
        try:
            id_token = self.rp.exchange_code(code, pending.verifier)
            identity = self.rp.verify_id_token(id_token, pending.nonce)
        except PatientIdError as exc:
            raise _Refusal(403, str(exc)) from None
        except ProviderError as exc:
            raise _Refusal(502, str(exc)) from None
        except OidcError as exc:
            raise _Refusal(401, str(exc)) from None
        # A session the browser had before is ended: a sign-in always gets a new token.
        old = self.session_of(environ)
        if old is not None:
            self.sessions.delete(old.id)
        token = random_token()
        session = self.sessions.create(token, identity.patient_id, identity.subject, identity.issuer,
                                       self.config.session_ttl)
        environ[_ENVIRON_KEY] = session
        return session, token, pending.next_path

    def _logout(self, environ, start_response):
        session = self.session_of(environ)
        try:
            form = _form(environ)
        except _Refusal as exc:
            return self._refused(environ, start_response, exc)
        clear = [self._cookie(SESSION_COOKIE, "", "/", 0)]
        if session is None:  # nothing to end: the cookie is cleared all the same
            return self._redirect(start_response, 303, self.base_url + self.after_logout, clear)
        token = form.get(CSRF_FIELD) or environ.get(CSRF_HEADER)
        if not self.check_csrf(environ, session, token):
            return self._refused(environ, start_response, _Refusal(
                403, "this sign-out did not come from this site's own page (CSRF check); you are still signed "
                     "in"))
        self.sessions.delete(session.id)
        environ[_ENVIRON_KEY] = None
        log.info(json.dumps({"event": "portal_logout", "session": session.id[:16]}))
        if self.on_event is not None:
            self.on_event("logged_out", environ, session, None)
        return self._redirect(start_response, 303, self.base_url + self.after_logout, clear)

    # --- answers ------------------------------------------------------------------------------------
    def _cookie(self, name: str, value: str, path: str, max_age: int | None = None) -> tuple[str, str]:
        parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Lax"]
        if self.secure_cookies:
            parts.append("Secure")
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        return ("Set-Cookie", "; ".join(parts))

    def _redirect(self, start_response, status: int, location: str, extra: list):
        body = b""
        start_response(f"{status} {_REASONS[status]}", [("Location", location), ("Content-Length", "0"),
                                                        *_HEADERS, *extra])
        return [body]

    def _refused(self, environ, start_response, exc: _Refusal, clear_login: bool = False):
        log.warning(json.dumps({"event": "portal_login", "outcome": "refused", "status": exc.status,
                                "reason": exc.message, "path": environ.get("PATH_INFO")}))
        if self.on_event is not None:
            self.on_event("refused", environ, None, exc.message)
        extra = [self._cookie(LOGIN_COOKIE, "", self.prefix, 0)] if clear_login else []
        title = {502: "The identity service cannot be used", 403: "Access refused"}.get(exc.status,
                                                                                          "Sign-in refused")
        return self._page(start_response, exc.status, title, exc.message, extra, retry=exc.status != 403)

    def _page(self, start_response, status: int, title: str, message: str, extra: list | None = None,
              retry: bool = False):
        link = f'<p><a href="{html.escape(self.prefix)}/login">Sign in again</a></p>' if retry else ""
        body = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f'</head><body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{link}</body></html>\n'
                ).encode("utf-8")
        start_response(f"{status} {_REASONS.get(status, 'Error')}", [
            ("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))), *_HEADERS,
            *(extra or [])])
        return [body]


def _query(environ, names: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters among names; one value each (a repeated one is refused)."""
    raw = environ.get("QUERY_STRING") or ""
    if len(raw) > 8192:
        raise _Refusal(400, "the query string is too long")
    try:
        values = parse_qs(raw, keep_blank_values=True, strict_parsing=False, max_num_fields=32)
    except ValueError:
        raise _Refusal(400, "the query string has too many parameters") from None
    out = {}
    for name in names:
        given = values.get(name)
        if given is None:
            continue
        if len(given) != 1:
            raise _Refusal(400, f"the parameter {name} is given {len(given)} times")
        out[name] = given[0]
    return out


def _form(environ) -> dict[str, str]:
    """An application/x-www-form-urlencoded body of at most MAX_FORM_BYTES (an empty one is fine)."""
    raw_length = environ.get("CONTENT_LENGTH") or "0"
    try:
        length = int(raw_length)
    except ValueError:
        raise _Refusal(400, "Content-Length is not a number") from None
    if length < 0 or length > MAX_FORM_BYTES:
        raise _Refusal(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    if length == 0:
        return {}
    mime = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
    if mime != "application/x-www-form-urlencoded":
        raise _Refusal(415, "the form must be application/x-www-form-urlencoded")
    stream = request_input(environ)
    data = b""
    try:
        while len(data) < length:
            chunk = stream.read(length - len(data))
            if not chunk:
                break
            data += chunk
    except MalformedBody:
        raise _Refusal(400, "the request body's HTTP framing is malformed") from None
    try:
        values = parse_qs(data.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise _Refusal(400, "the form is not UTF-8 application/x-www-form-urlencoded") from None
    return {k: v[0] for k, v in values.items() if len(v) == 1}


# For the portal's own pages (registry/portal): forms and query strings read, and refused, as here.
FormError = _Refusal


def read_form(environ) -> dict[str, str]:
    return _form(environ)


def read_query(environ, names: tuple[str, ...]) -> dict[str, str]:
    return _query(environ, names)
