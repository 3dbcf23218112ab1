"""The patients' sign-in (xds/portal) against the development OpenID Provider (node/dev_idp.py), over
real sockets on 127.0.0.1, driven as a browser would be (no browser: http.client, cookies by hand):
/portal/login -> the provider's form -> its POST -> /portal/callback -> the session cookie -> session_of.
Every refusal is checked to leave no session behind."""
from __future__ import annotations

import hashlib
import html
import http.client
import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from node import dev_idp
from node.dev_idp import DevIdp, check_password, hash_password
from xds import migrate
from xds.cheroot_adapter import HttpServer
from xds.db import make_engine
from xds.portal import jwt
from xds.portal.oidc import HttpAnswer, OidcConfig, OidcError, PatientIdError, RelyingParty
from xds.portal.sessions import metadata as portal_metadata, portal_login, portal_session
from xds.portal.signin import SignIn, local_path

PASSWORD = "correct horse battery staple"
PATIENT = "1234567890123^^^&1.2.250.1.213.1.4.10&ISO"
CLIENT_ID, CLIENT_SECRET = "xds-portal", "s3cret/with:odd+chars"
HASH = hash_password(PASSWORD)


class TestIdp(DevIdp):
    """The development provider, with the two places a test changes what it issues."""

    __test__ = False
    mutate = None   # claims -> claims
    signer = None   # claims -> compact token

    def id_token_claims(self, user, client_id, nonce, auth_time):
        claims = super().id_token_claims(user, client_id, nonce, auth_time)
        return self.mutate(claims) if self.mutate else claims

    def sign_id_token(self, claims):
        return self.signer(claims) if self.signer else super().sign_id_token(claims)


class Dispatch:
    """The relying party's server: its application is set by each test."""

    def __init__(self):
        self.app = None

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    users = tmp_path_factory.mktemp("idp") / "users.toml"
    users.write_text(f'[[user]]\nlogin = "marie"\npassword = "{HASH}"\nname = "Marie Dupont"\n'
                     f'patient_id = "{PATIENT}"\n\n'
                     f'[[user]]\nlogin = "paul"\npassword = "{HASH}"\nname = "Paul <b>&amp;"\npatient_id = "bad id"\n')
    idp = TestIdp(str(users), None, {})
    idp_server = idp.serve("127.0.0.1", 0)
    dispatch = Dispatch()
    rp_server = HttpServer(dispatch, "127.0.0.1", 0, threads=4).start()
    base = f"http://127.0.0.1:{rp_server.port}"
    idp.clients[CLIENT_ID] = (CLIENT_SECRET, [base + "/portal/callback"])
    yield idp, dispatch, base
    rp_server.stop()
    idp_server.stop()


class Clock:
    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Env:
    idp: TestIdp
    signin: SignIn
    engine: sa.engine.Engine
    base: str
    clock: Clock
    db_files: list = field(default_factory=list)

    def sessions(self) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(sa.select(portal_session)).mappings()]

    def logins(self) -> int:
        with self.engine.connect() as c:
            return len(c.execute(sa.select(portal_login)).all())


@pytest.fixture
def make_env(servers, tmp_path):
    idp, dispatch, base = servers
    made = []

    def make(secure_cookies=False, **config) -> Env:
        idp.mutate = idp.signer = None
        engine = make_engine(f"sqlite:///{tmp_path}/portal{len(made)}.db")
        migrate.upgrade(engine, "portal")
        clock = Clock()
        cfg = OidcConfig(**{"issuer": idp.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **config})
        signin = SignIn(cfg, engine, base, secure_cookies=secure_cookies, clock=clock)
        dispatch.app = signin
        env = Env(idp, signin, engine, base, clock, [f"{tmp_path}/portal{len(made)}.db"])
        made.append(env)
        return env

    yield make
    for env in made:
        env.engine.dispose()


@pytest.fixture
def env(make_env):
    return make_env()


# --- a browser, by hand ------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set_cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]

    @property
    def location(self) -> str | None:
        return self.header("Location")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class Browser:
    """Cookies per host:port (attributes are read by the tests, not here); no redirects followed."""

    def __init__(self):
        self.jars: dict[str, dict[str, str]] = {}

    def request(self, method: str, url: str, form: dict | None = None, headers: dict | None = None) -> Answer:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        jar = self.jars.setdefault(parts.netloc, {})
        sent = dict(headers or {})
        if jar:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=sent)
            r = conn.getresponse()
            answer = Answer(r.status, r.getheaders(), r.read())
        finally:
            conn.close()
        for line in answer.set_cookies():
            name, _, rest = line.partition("=")
            value = rest.split(";")[0]
            if "Max-Age=0" in line:
                jar.pop(name, None)
            else:
                jar[name] = value
        return answer

    def get(self, url, **kw):
        return self.request("GET", url, **kw)

    def post(self, url, form=None, **kw):
        return self.request("POST", url, form=form or {}, **kw)

    def cookie(self, url: str, name: str) -> str | None:
        return self.jars.get(urlsplit(url).netloc, {}).get(name)


def hidden_fields(page: str) -> dict[str, str]:
    return {html.unescape(n): html.unescape(v)
            for n, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page)}


@dataclass
class Flow:
    browser: Browser
    login: Answer = None
    form: Answer = None
    posted: Answer = None
    callback: Answer = None

    @property
    def callback_url(self) -> str:
        return self.posted.location


def begin(env: Env, browser: Browser | None = None, next_path: str | None = None, login="marie",
          password=PASSWORD) -> Flow:
    """Up to the provider's redirect back (not followed)."""
    flow = Flow(browser or Browser())
    url = env.base + "/portal/login" + (f"?next={quote(next_path, safe='')}" if next_path else "")
    flow.login = flow.browser.get(url)
    assert flow.login.status == 302, flow.login.text
    flow.form = flow.browser.get(flow.login.location)
    assert flow.form.status == 200, flow.form.text
    fields = hidden_fields(flow.form.text)
    flow.posted = flow.browser.post(env.idp.issuer + "/authorize",
                                    {**fields, "login": login, "password": password, "action": "signin"})
    return flow


def sign_in(env: Env, browser: Browser | None = None, next_path: str | None = None) -> Flow:
    flow = begin(env, browser, next_path)
    assert flow.posted.status == 302, flow.posted.text
    flow.callback = flow.browser.get(flow.callback_url)
    return flow


def session_cookie(flow: Flow, env: Env) -> str | None:
    return flow.browser.cookie(env.base, "xds_session")


def environ_with(token: str | None) -> dict:
    return {"HTTP_COOKIE": f"xds_session={token}"} if token else {}


# --- the flow ---------------------------------------------------------------------------------------------

def test_sign_in_gives_the_patients_session(env):
    flow = sign_in(env)
    assert flow.callback.status == 303, flow.callback.text
    assert flow.callback.location == env.base + "/portal/"
    # The authorization request: code flow, PKCE S256, state and nonce.
    q = parse_qs(urlsplit(flow.login.location).query)
    assert q["response_type"] == ["code"] and q["code_challenge_method"] == ["S256"]
    assert q["client_id"] == [CLIENT_ID] and q["redirect_uri"] == [env.base + "/portal/callback"]
    assert len(q["state"][0]) >= 43 and len(q["nonce"][0]) >= 43 and len(q["code_challenge"][0]) == 43
    token = session_cookie(flow, env)
    session = env.signin.session_of(environ_with(token))
    assert session is not None
    assert session.patient_id == PATIENT
    assert session.issuer == env.idp.issuer and session.subject.startswith("dev-")
    assert session.csrf_token and session.csrf_token not in repr(session) and token not in repr(session)
    assert (session.expires - session.created).total_seconds() == 1800
    assert len(env.sessions()) == 1 and env.logins() == 0  # the pending sign-in is used up
    assert flow.browser.cookie(env.base, "xds_login") is None  # cleared on success


def test_next_path_is_kept(env):
    flow = sign_in(env, next_path="/patient/log?since=2024-01-01&professional=x")
    assert flow.callback.status == 303
    assert flow.callback.location == env.base + "/patient/log?since=2024-01-01&professional=x"


@pytest.mark.parametrize("next_path", ["https://evil.example/", "//evil.example/x", "/\\evil.example",
                                       "javascript:alert(1)", "/ok\r\nSet-Cookie: a=b", "evil.example", "/a b",
                                       "/" + "a" * 2000])
def test_open_redirect_in_next_is_refused(env, next_path):
    answer = Browser().get(env.base + "/portal/login?next=" + quote(next_path, safe=""))
    assert answer.status == 400
    assert answer.location is None and "next" in answer.text
    assert env.logins() == 0 and env.sessions() == []
    assert not local_path(next_path)


def test_cookie_attributes(make_env):
    env = make_env(secure_cookies=True)
    flow = sign_in(env)
    assert flow.callback.status == 303
    (session_line,) = [c for c in flow.callback.set_cookies() if c.startswith("xds_session=")]
    attrs = [a.strip() for a in session_line.split(";")]
    assert {"HttpOnly", "Secure", "SameSite=Lax", "Path=/"} <= set(attrs)
    assert not any(a.startswith(("Max-Age", "Expires", "Domain")) for a in attrs)  # ends with the browser
    (login_line,) = [c for c in flow.login.set_cookies() if c.startswith("xds_login=")]
    assert {"HttpOnly", "Secure", "SameSite=Lax", "Path=/portal", "Max-Age=600"} <= \
        {a.strip() for a in login_line.split(";")}
    for answer in (flow.login, flow.callback):
        assert answer.header("Cache-Control") == "no-store"
        assert answer.header("Referrer-Policy") == "no-referrer"


def test_secure_cookies_may_be_off_only_on_loopback_http(servers, tmp_path):
    idp, _, _ = servers
    cfg = OidcConfig(issuer=idp.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    engine = make_engine(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(ValueError, match="secure_cookies"):
        SignIn(cfg, engine, "https://portal.example", secure_cookies=False)
    with pytest.raises(ValueError, match="https"):
        SignIn(cfg, engine, "http://portal.example")
    with pytest.raises(ValueError, match="redirect_uri"):
        SignIn(OidcConfig(issuer=idp.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                          redirect_uri="https://elsewhere.example/cb"), engine, "https://portal.example")
    engine.dispose()


def test_session_table_stores_only_the_token_hash(env):
    flow = sign_in(env)
    token = session_cookie(flow, env)
    session = env.signin.session_of(environ_with(token))
    (row,) = env.sessions()
    assert row["id"] == hashlib.sha256(token.encode()).hexdigest()
    assert row["csrf_hash"] == hashlib.sha256(session.csrf_token.encode()).hexdigest()
    for value in row.values():
        assert token not in str(value) and session.csrf_token not in str(value)
    env.engine.dispose()  # everything onto the files, then look at their bytes
    raw = b"".join(open(p, "rb").read() for f in env.db_files for p in (f, f + "-wal") if _exists(p))
    assert token.encode() not in raw and session.csrf_token.encode() not in raw
    assert PATIENT.encode() in raw  # (the search does see the table's contents)


def _exists(path: str) -> bool:
    try:
        open(path, "rb").close()
        return True
    except FileNotFoundError:
        return False


def test_nothing_secret_is_logged(env, caplog):
    caplog.set_level(logging.DEBUG)
    flow = sign_in(env)
    token = session_cookie(flow, env)
    callback = parse_qs(urlsplit(flow.callback_url).query)
    secrets_seen = [token, callback["code"][0], callback["state"][0],
                    parse_qs(urlsplit(flow.login.location).query)["nonce"][0]]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert '"signed_in"' in text
    for s in secrets_seen:
        assert s not in text


# --- refusals: none leaves a session ----------------------------------------------------------------------

def test_wrong_password_shows_the_form_again(env):
    for login, password in (("marie", "wrong"), ("nobody", PASSWORD), ("marie", "")):
        flow = begin(env, login=login, password=password)
        assert flow.posted.status == 200 and flow.posted.location is None
        assert "Wrong login or password" in flow.posted.text
        assert "code=" not in flow.posted.text
    assert env.idp._codes == {}
    assert env.sessions() == []


def test_tampered_state_is_refused(env):
    flow = begin(env)
    url = flow.callback_url
    state = parse_qs(urlsplit(url).query)["state"][0]
    tampered = url.replace(state, state[:-2] + ("AA" if not state.endswith("AA") else "BB"))
    answer = flow.browser.get(tampered)
    assert answer.status == 400 and "start it again" in answer.text
    missing = flow.browser.get(url.replace(f"state={state}", "state="))
    assert missing.status == 400
    assert env.sessions() == []


def test_callback_in_another_browser_is_refused(env):
    flow = begin(env)
    answer = Browser().get(flow.callback_url)  # the victim's browser, given the attacker's callback URL
    assert answer.status == 400 and "browser" in answer.text
    assert env.sessions() == []
    # The state was used up by that attempt: the first browser cannot use it either.
    assert flow.browser.get(flow.callback_url).status == 400
    assert env.sessions() == []


def test_replayed_callback_and_code_are_refused(env):
    flow = sign_in(env)
    assert flow.callback.status == 303
    assert len(env.sessions()) == 1
    again = flow.browser.get(flow.callback_url)
    assert again.status == 400
    # The same code under a fresh sign-in of the same browser: the provider refuses its second use.
    second = begin(env, flow.browser)
    fresh_state = parse_qs(urlsplit(second.callback_url).query)["state"][0]
    old_code = parse_qs(urlsplit(flow.callback_url).query)["code"][0]
    replay = flow.browser.get(f"{env.base}/portal/callback?code={quote(old_code)}&state={quote(fresh_state)}")
    assert replay.status == 401 and "invalid_grant" in replay.text
    assert len(env.sessions()) == 1


def test_provider_error_answer_is_refused(env):
    flow = Flow(Browser())
    flow.login = flow.browser.get(env.base + "/portal/login")
    form = flow.browser.get(flow.login.location)
    cancelled = flow.browser.post(env.idp.issuer + "/authorize", {**hidden_fields(form.text), "action": "cancel"})
    assert cancelled.status == 302 and "error=access_denied" in cancelled.location
    answer = flow.browser.get(cancelled.location)
    assert answer.status == 401 and "access_denied" in answer.text
    assert env.sessions() == []


def _other_rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _alg_none(claims):
    head = jwt.b64url_encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{head}.{jwt.b64url_encode(json.dumps(claims).encode())}."


def _hs256(claims):
    import hmac as _hmac

    head = jwt.b64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = f"{head}.{jwt.b64url_encode(json.dumps(claims).encode())}"
    sig = _hmac.new(CLIENT_SECRET.encode(), body.encode(), hashlib.sha256).digest()
    return f"{body}.{jwt.b64url_encode(sig)}"


BAD_TOKENS = {
    "bad_signature": (None, lambda idp: lambda c: jwt.sign(c, _other_rsa(), idp.key[0]), "signature does not verify"),
    "tampered_payload": (None, lambda idp: lambda c: _swap_payload(jwt.sign(c, idp.key[1], idp.key[0]),
                                                                   {**c, "patient_id": "999^^^&1.2.3&ISO"}),
                         "signature does not verify"),
    "unknown_kid": (None, lambda idp: lambda c: jwt.sign(c, _other_rsa(), "not-a-kid"), "no RS256 key"),
    "alg_none": (None, lambda idp: _alg_none, "'none' is not accepted"),
    "alg_hs256": (None, lambda idp: _hs256, "'HS256' is not accepted"),
    "wrong_aud": (lambda c: {**c, "aud": "someone-else"}, None, "audience"),
    "several_aud_no_azp": (lambda c: {**c, "aud": [CLIENT_ID, "other"]}, None, "azp"),
    "wrong_iss": (lambda c: {**c, "iss": "https://evil.example"}, None, "issuer"),
    "expired": (lambda c: {**c, "exp": int(time.time()) - 61, "iat": int(time.time()) - 400}, None, "expired"),
    "future_iat": (lambda c: {**c, "iat": int(time.time()) + 600, "exp": int(time.time()) + 900}, None, "future"),
    "not_yet": (lambda c: {**c, "nbf": int(time.time()) + 600}, None, "nbf"),
    "nonce_mismatch": (lambda c: {**c, "nonce": "another-nonce"}, None, "nonce"),
    "no_nonce": (lambda c: {k: v for k, v in c.items() if k != "nonce"}, None, "nonce"),
    "no_exp": (lambda c: {k: v for k, v in c.items() if k != "exp"}, None, "exp"),
    "bool_exp": (lambda c: {**c, "exp": True}, None, "exp"),
    "no_sub": (lambda c: {k: v for k, v in c.items() if k != "sub"}, None, "sub"),
}


def _swap_payload(token: str, claims: dict) -> str:
    head, _, sig = token.split(".")
    return f"{head}.{jwt.b64url_encode(json.dumps(claims).encode())}.{sig}"


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_id_token_makes_no_session(env, case):
    mutate, signer, message = BAD_TOKENS[case]
    env.idp.mutate = mutate
    env.idp.signer = signer(env.idp) if signer else None
    flow = sign_in(env)
    assert flow.callback.status == 401, flow.callback.text
    assert message in html.unescape(flow.callback.text)
    assert flow.callback.set_cookies() and not any(c.startswith("xds_session=") for c in flow.callback.set_cookies())
    assert session_cookie(flow, env) is None
    assert env.sessions() == []


def test_patient_claim_is_required_and_checked(env):
    env.idp.mutate = lambda c: {k: v for k, v in c.items() if k != "patient_id"}
    flow = sign_in(env)
    assert flow.callback.status == 403 and "no patient identifier" in html.unescape(flow.callback.text)
    env.idp.mutate = lambda c: {**c, "patient_id": "12345"}  # not a CX
    flow = sign_in(env)
    assert flow.callback.status == 403 and "not a CX" in flow.callback.text
    assert env.sessions() == []


def test_patient_id_format(make_env):
    env = make_env(patient_id_format="{}^^^&1.2.250.1.213.1.4.10&ISO")
    env.idp.mutate = lambda c: {**c, "patient_id": "2070585756270"}
    flow = sign_in(env)
    assert flow.callback.status == 303
    assert env.signin.session_of(environ_with(session_cookie(flow, env))).patient_id == \
        "2070585756270^^^&1.2.250.1.213.1.4.10&ISO"
    env.idp.mutate = lambda c: {**c, "patient_id": "1^^^&6.6.6&ISO"}  # delimiters forging the authority
    flow = sign_in(env)
    assert flow.callback.status == 403 and "delimiters" in flow.callback.text
    assert len(env.sessions()) == 1


def test_rotated_key_is_fetched_once(env):
    assert sign_in(env).callback.status == 303  # the relying party has the JWKS cached now
    env.idp.rotate_key(keep_old=False)
    flow = sign_in(env)
    assert flow.callback.status == 303, flow.callback.text
    assert len(env.sessions()) == 2


def test_discovery_naming_another_issuer_is_refused(make_env, servers):
    idp = servers[0]
    env = make_env(issuer=idp.issuer + "/")  # the same documents, but not the issuer they name
    answer = Browser().get(env.base + "/portal/login")
    assert answer.status == 502 and "issuer" in answer.text
    assert answer.location is None and env.logins() == 0


# --- sessions: logout, CSRF, expiry -------------------------------------------------------------------------

def test_logout_needs_the_csrf_token(env):
    flow = sign_in(env)
    token = session_cookie(flow, env)
    session = env.signin.session_of(environ_with(token))
    logout = env.base + "/portal/logout"
    assert flow.browser.post(logout, {}).status == 403
    assert flow.browser.post(logout, {"csrf": "x" * 43}).status == 403
    assert flow.browser.post(logout, {"csrf": session.csrf_token},
                             headers={"Origin": "https://evil.example"}).status == 403
    assert flow.browser.post(logout, {"csrf": session.csrf_token},
                             headers={"Referer": "http://evil.example/" + env.base}).status == 403
    assert flow.browser.get(logout).status == 405
    assert env.signin.session_of(environ_with(token)) is not None  # still signed in
    answer = flow.browser.post(logout, {"csrf": session.csrf_token}, headers={"Origin": env.base})
    assert answer.status == 303 and answer.location == env.base + "/portal/"
    (cleared,) = answer.set_cookies()
    assert cleared.startswith("xds_session=;") and "Max-Age=0" in cleared
    assert env.signin.session_of(environ_with(token)) is None
    assert env.sessions() == []


def test_csrf_header_and_origin_rules(env):
    flow = sign_in(env)
    session = env.signin.session_of(environ_with(session_cookie(flow, env)))
    check = env.signin.check_csrf
    assert check({}, session, session.csrf_token)
    assert check({"HTTP_ORIGIN": env.base}, session, session.csrf_token)
    assert check({"HTTP_REFERER": env.base + "/portal/x?y"}, session, session.csrf_token)
    assert not check({"HTTP_ORIGIN": "null"}, session, session.csrf_token)
    assert not check({"HTTP_ORIGIN": env.base.replace("127.0.0.1", "localhost")}, session, session.csrf_token)
    assert not check({}, session, session.csrf_token[:-1] + "A" if session.csrf_token[-1] != "A" else "B")
    assert not check({}, None, session.csrf_token)
    assert not check({}, session, None)
    answer = flow.browser.post(env.base + "/portal/logout", {}, headers={"X-CSRF-Token": session.csrf_token})
    assert answer.status == 303 and env.sessions() == []


def test_expired_session_is_refused_and_deleted(env):
    flow = sign_in(env)
    token = session_cookie(flow, env)
    assert env.signin.session_of(environ_with(token)) is not None
    env.clock.offset = 1801
    assert env.signin.session_of(environ_with(token)) is None
    assert env.sessions() == []  # deleted as it was found expired


def test_purge_removes_expired_sessions_and_sign_ins(env):
    sign_in(env)
    begin(env)  # a sign-in left pending
    assert len(env.sessions()) == 1 and env.logins() == 1
    env.clock.offset = 1801
    assert env.signin.purge() == 2
    assert env.sessions() == [] and env.logins() == 0


def test_session_of_ignores_what_it_did_not_make(env):
    sign_in(env)
    for cookie in ("", "xds_session=", "xds_session=abc", "xds_session=" + "A" * 43, "other=1",
                   "xds_session=" + "A" * 43 + "; xds_session=" + "B" * 43):
        assert env.signin.session_of({"HTTP_COOKIE": cookie}) is None


def test_sign_in_replaces_the_browsers_old_session(env):
    flow = sign_in(env)
    first = session_cookie(flow, env)
    sign_in(env, flow.browser)
    assert session_cookie(flow, env) != first
    assert env.signin.session_of(environ_with(first)) is None
    assert len(env.sessions()) == 1


def test_other_paths_under_portal(servers, env):
    b = Browser()
    assert b.get(env.base + "/portal/").status == 404
    assert b.get(env.base + "/portal/anything").status == 404
    assert b.post(env.base + "/portal/login").status == 405
    env.signin.pages = lambda environ, start_response: (start_response("200 OK", []), [b"page"])[1]
    assert b.get(env.base + "/portal/").body == b"page"


# --- the relying party alone: ES256, audiences, configuration ---------------------------------------------

class FakeProvider:
    """Discovery and JWKS without sockets, for the relying party's checks."""

    issuer = "https://idp.example"

    def __init__(self, keys: list[dict]):
        self.keys = keys
        self.calls = []

    def __call__(self, method, url, body, headers):
        self.calls.append(url)
        if url.endswith("/.well-known/openid-configuration"):
            doc = {"issuer": self.issuer, "authorization_endpoint": self.issuer + "/auth",
                   "token_endpoint": self.issuer + "/token", "jwks_uri": self.issuer + "/jwks"}
            return HttpAnswer(200, json.dumps(doc).encode())
        if url.endswith("/jwks"):
            return HttpAnswer(200, json.dumps({"keys": self.keys}).encode())
        return HttpAnswer(404, b"{}")


def _rp(provider, **config):
    cfg = OidcConfig(**{"issuer": provider.issuer, "client_id": "c", "client_secret": "s",
                        "redirect_uri": "https://portal.example/portal/callback", **config})
    return RelyingParty(cfg, fetch=provider)


def _claims(**over):
    now = int(time.time())
    return {"iss": "https://idp.example", "aud": "c", "sub": "s1", "exp": now + 300, "iat": now, "nonce": "n",
            "patient_id": PATIENT, **over}


def test_es256_id_token_verifies():
    key = ec.generate_private_key(ec.SECP256R1())
    provider = FakeProvider([jwt.public_jwk(key.public_key(), "ec1")])
    rp = _rp(provider)
    identity = rp.verify_id_token(jwt.sign(_claims(), key, "ec1"), "n")
    assert identity.patient_id == PATIENT and identity.subject == "s1"
    bad = jwt.sign(_claims(), ec.generate_private_key(ec.SECP256R1()), "ec1")
    with pytest.raises(OidcError, match="signature"):
        rp.verify_id_token(bad, "n")
    # An RS256 header over the EC key's kid: the key is not for that algorithm.
    with pytest.raises(OidcError, match="no RS256 key"):
        rp.verify_id_token(jwt.sign(_claims(), _other_rsa(), "ec1"), "n")


def test_audiences_and_azp():
    key = ec.generate_private_key(ec.SECP256R1())
    rp = _rp(FakeProvider([jwt.public_jwk(key.public_key(), "k")]))
    assert rp.verify_id_token(jwt.sign(_claims(aud=["c", "x"], azp="c"), key, "k"), "n").subject == "s1"
    with pytest.raises(OidcError, match="azp"):
        rp.verify_id_token(jwt.sign(_claims(aud=["x", "c"], azp="x"), key, "k"), "n")
    with pytest.raises(OidcError, match="azp"):
        rp.verify_id_token(jwt.sign(_claims(aud="c", azp="x"), key, "k"), "n")
    with pytest.raises(OidcError, match="audience"):
        rp.verify_id_token(jwt.sign(_claims(aud=[]), key, "k"), "n")
    # Within the clock skew either way.
    now = int(time.time())
    assert rp.verify_id_token(jwt.sign(_claims(exp=now - 30), key, "k"), "n")
    assert rp.verify_id_token(jwt.sign(_claims(iat=now + 30, nbf=now + 30), key, "k"), "n")


def test_unknown_kid_refetches_the_jwks_once():
    key = ec.generate_private_key(ec.SECP256R1())
    provider = FakeProvider([jwt.public_jwk(key.public_key(), "k1")])
    rp = _rp(provider)
    rp.verify_id_token(jwt.sign(_claims(), key, "k1"), "n")
    assert sum(u.endswith("/jwks") for u in provider.calls) == 1
    rp.verify_id_token(jwt.sign(_claims(), key, "k1"), "n")
    assert sum(u.endswith("/jwks") for u in provider.calls) == 1  # cached
    with pytest.raises(OidcError, match="kid 'k2'"):
        rp.verify_id_token(jwt.sign(_claims(), key, "k2"), "n")
    assert sum(u.endswith("/jwks") for u in provider.calls) == 2  # read again, once
    new = ec.generate_private_key(ec.SECP256R1())
    provider.keys.append(jwt.public_jwk(new.public_key(), "k3"))
    assert rp.verify_id_token(jwt.sign(_claims(), new, "k3"), "n")
    assert sum(u.endswith("/jwks") for u in provider.calls) == 3


def test_malformed_tokens_are_refused():
    key = ec.generate_private_key(ec.SECP256R1())
    rp = _rp(FakeProvider([jwt.public_jwk(key.public_key(), "k")]))
    good = jwt.sign(_claims(), key, "k")
    head, body, sig = good.split(".")
    dup = jwt.b64url_encode(b'{"iss":"https://idp.example","iss":"https://evil.example"}')
    for token in ("", "a.b", good + ".x", f"{head}.{body}.{sig}=", f"{head}.{dup}.{sig}",
                  f"{jwt.b64url_encode(b'[]')}.{body}.{sig}",
                  jwt.sign(_claims(), key, "k", header={"crit": ["exp"]})):
        with pytest.raises(OidcError):
            rp.verify_id_token(token, "n")


def test_patient_ids():
    rp = _rp(FakeProvider([]), patient_claim="ins", patient_id_format="{}^^^&1.2.250.1.213.1.4.10&ISO")
    assert rp.patient_id({"ins": "123"}) == "123^^^&1.2.250.1.213.1.4.10&ISO"
    for bad in ({}, {"ins": ""}, {"ins": 123}, {"ins": "1&2"}, {"ins": "1\n2"}, {"ins": "1^2"}):
        with pytest.raises(PatientIdError):
            rp.patient_id(bad)


def test_config_is_checked():
    base = {"issuer": "https://idp.example", "client_id": "c", "client_secret": "s"}
    OidcConfig(**base)
    for over, match in (({"issuer": "http://idp.example"}, "https"), ({"scopes": "profile"}, "openid"),
                        ({"client_secret": ""}, "client_secret"), ({"patient_id_format": "{}"}, "CX"),
                        ({"patient_id_format": "{}^^^&{}&ISO"}, "one"), ({"algorithms": ("HS256",)}, "algorithms"),
                        ({"issuer": "https://u:p@idp.example"}, "user info")):
        with pytest.raises(ValueError, match=match):
            OidcConfig(**{**base, **over})
    assert "verysecret" not in repr(OidcConfig(**{**base, "client_secret": "verysecret"}))


def test_jwt_roundtrip_and_thumbprint():
    key = _other_rsa()
    jwk = jwt.public_jwk(key.public_key())
    assert jwk["kid"] == jwt.thumbprint(jwk) and jwk["alg"] == "RS256"
    (parsed,) = jwt.keys_from_jwks({"keys": [jwk, {"kty": "oct", "k": "AAAA"}, {**jwk, "use": "enc"}]})
    token = jwt.sign({"a": 1}, key, jwk["kid"])
    jws = jwt.parse(token)
    jwt.verify_signature(jws, parsed)
    assert jws.claims == {"a": 1}
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert jwt.keys_from_jwks({"keys": [jwt.public_jwk(small.public_key())]}) == []


# --- the development provider ---------------------------------------------------------------------------

def test_passwords():
    assert HASH.startswith("scrypt$") and len(HASH.split("$")) == 3
    assert check_password(PASSWORD, HASH) and not check_password(PASSWORD + " ", HASH)
    assert hash_password(PASSWORD) != HASH  # salted


def test_hash_password_command(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("hunter2\n"))
    assert dev_idp.main(["hash-password", "--stdin"]) == 0
    assert check_password("hunter2", capsys.readouterr().out.strip())


def test_dev_idp_serves_plain_http_only_on_loopback(servers, tmp_path):
    users = tmp_path / "u.toml"
    users.write_text("")
    with pytest.raises(ValueError, match="loopback"):
        DevIdp(str(users), "http://0.0.0.0:1", {}).serve("0.0.0.0", 0)
    users.write_text('[[user]]\nlogin = "x"\npassword = "plain"\nname = "X"\npatient_id = "1"\n')
    with pytest.raises(ValueError, match="scrypt"):
        DevIdp(str(users), None, {})


def test_dev_idp_form_escapes_and_checks_the_request(env):
    b = Browser()
    idp = env.idp
    auth = idp.issuer + "/authorize"
    redirect = env.base + "/portal/callback"
    good = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": redirect, "scope": "openid",
            "state": '"><script>alert(1)</script>', "nonce": "n" * 20, "code_challenge": "A" * 43,
            "code_challenge_method": "S256"}
    page = b.get(auth + "?" + urlencode(good))
    assert page.status == 200 and "<script>" not in page.text and "&lt;script&gt;" in page.text
    assert '<label for="login">' in page.text and '<label for="password">' in page.text
    # An unregistered return address is never redirected to.
    assert b.get(auth + "?" + urlencode({**good, "redirect_uri": "https://evil.example/cb"})).status == 400
    assert b.get(auth + "?" + urlencode({**good, "client_id": "nobody"})).status == 400
    no_pkce = b.get(auth + "?" + urlencode({**good, "code_challenge_method": "plain"}))
    assert no_pkce.status == 302 and "error=invalid_request" in no_pkce.location


def test_dev_idp_token_endpoint(env):
    import base64

    def exchange(code, verifier, secret=CLIENT_SECRET, redirect=env.base + "/portal/callback"):
        basic = base64.b64encode(f"{quote(CLIENT_ID, safe='')}:{quote(secret, safe='')}".encode()).decode()
        answer = Browser().post(env.idp.issuer + "/token",
                                {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                                 "code_verifier": verifier}, headers={"Authorization": "Basic " + basic})
        return answer.status, json.loads(answer.body)

    def a_code():
        import secrets as _s

        from xds.portal.oidc import pkce_challenge

        verifier = _s.token_urlsafe(32)
        b = Browser()
        q = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": env.base + "/portal/callback",
             "scope": "openid", "state": "st", "nonce": "nn", "code_challenge": pkce_challenge(verifier),
             "code_challenge_method": "S256", "login": "marie", "password": PASSWORD}
        r = b.post(env.idp.issuer + "/authorize", q)
        return parse_qs(urlsplit(r.location).query)["code"][0], verifier

    code, verifier = a_code()
    assert exchange(code, verifier, secret="wrong") == (401, {"error": "invalid_client",
                                                              "error_description": "unknown client or wrong secret"})
    # Refused for its client authentication, the code was not consumed; wrong verifier: consumed.
    status, answer = exchange(code, "x" * 43)
    assert (status, answer["error"]) == (400, "invalid_grant")
    assert exchange(code, verifier)[1]["error"] == "invalid_grant"  # single use
    code, verifier = a_code()
    assert exchange(code, verifier, redirect=env.base + "/other")[1]["error"] == "invalid_grant"
    code, verifier = a_code()
    status, answer = exchange(code, verifier)
    assert status == 200 and answer["token_type"] == "Bearer"
    claims = jwt.parse(answer["id_token"]).claims
    assert claims["nonce"] == "nn" and claims["aud"] == CLIENT_ID and claims["patient_id"] == PATIENT
    assert claims["iss"] == env.idp.issuer and claims["exp"] - claims["iat"] == 300
    assert exchange(code, verifier)[1]["error"] == "invalid_grant"
    code, verifier = a_code()
    env.idp._codes = {h: g.__class__(**{**g.__dict__, "expires": time.time() - 1}) for h, g in env.idp._codes.items()}
    assert exchange(code, verifier)[1]["error"] == "invalid_grant"  # past its 60 s


# --- the migration ------------------------------------------------------------------------------------------

def test_migration_matches_the_tables(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/m.db")
    migrate.upgrade(engine, "portal")
    assert migrate.current(engine, "portal") == "portal_0001"
    assert {"portal_session", "portal_login"} <= set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_name": migrate.own_tables(portal_metadata),
                                                     "compare_type": True, "compare_server_default": True})
        assert compare_metadata(ctx, portal_metadata) == []
    migrate.upgrade(engine, "portal")  # idempotent
    engine.dispose()
