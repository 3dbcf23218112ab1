"""A development OpenID Provider, and the `xds dev-idp` command (serve, hash-password).

A stand-in, on a developer's machine, in a lab or in the tests, for the national patient identity
service that a deployment's portal signs patients in with (a FranceConnect-like provider): it speaks
the same OpenID Connect as the portal's relying party expects (discovery, the authorization code flow
with PKCE S256, client_secret_basic, RS256 id_tokens carrying the patient's identifier), with users
from a TOML file. It is not an identity service: no second factor, no account recovery, no brute-force
bound, its signing key is made at start and lost at exit. Do not put it in front of real patients.

Users file (TOML):

    [[user]]
    login = "marie"
    password = "scrypt$<salt hex>$<hash hex>"     # xds dev-idp hash-password
    name = "Marie Dupont"
    patient_id = "1234567890123^^^&1.2.250.1.213.1.4.10&ISO"

    [[client]]                                    # or --client ID SECRET REDIRECT_URI
    id = "xds-portal"
    secret = "..."
    redirect_uris = ["http://127.0.0.1:8080/portal/callback"]

Endpoints, under the issuer URL: /.well-known/openid-configuration, /authorize (GET: the sign-in form;
POST: its answer), /token, /jwks.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
import signal
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from xds.portal import jwt
from xds.portal.oidc import loopback_host, pkce_challenge

log = logging.getLogger("xds.dev_idp")

SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2 ** 14, 8, 1, 32
CODE_TTL = 60            # seconds an authorization code may wait for its exchange
TOKEN_TTL = 300          # seconds an id_token is valid
MAX_FORM_BYTES = 16 * 1024
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_HEADERS = [("Cache-Control", "no-store"), ("Pragma", "no-cache"), ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'; form-action 'self'")]
_REASONS = {200: "OK", 302: "Found", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 413: "Content Too Large"}


# --- passwords -----------------------------------------------------------------------------------------

def hash_password(password: str, salt: bytes | None = None) -> str:
    """scrypt$<salt hex>$<hash hex>, scrypt with N=2^14, r=8, p=1 and a 16-byte random salt."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=SCRYPT_LEN)
    return f"scrypt${salt.hex()}${digest.hex()}"


def _parse_hash(stored: str) -> tuple[bytes, bytes]:
    scheme, _, rest = stored.partition("$")
    salt_hex, _, hash_hex = rest.partition("$")
    try:
        salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(hash_hex)
    except ValueError:
        salt = digest = b""
    if scheme != "scrypt" or not salt or len(digest) != SCRYPT_LEN:
        raise ValueError("a password must be scrypt$<salt hex>$<hash hex> (xds dev-idp hash-password)")
    return salt, digest


def check_password(password: str, stored: str) -> bool:
    salt, digest = _parse_hash(stored)
    given = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                           dklen=SCRYPT_LEN)
    return hmac.compare_digest(given, digest)


# An unknown login costs one scrypt too, so that the answer's timing does not say which logins exist.
_NOBODY = hash_password(secrets.token_urlsafe(16))


# --- users and clients ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class User:
    login: str
    password: str = field(repr=False)
    name: str
    patient_id: str


@dataclass(frozen=True)
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    login: str
    expires: float
    auth_time: int


def load_users(path: str) -> tuple[dict[str, User], dict[str, tuple[str, list[str]]]]:
    """The [[user]] and [[client]] tables of a TOML file."""
    with open(path, "rb") as f:
        try:
            doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: {exc}") from None
    users: dict[str, User] = {}
    for i, entry in enumerate(doc.get("user", []), start=1):
        where = f"{path}: [[user]] {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a table")
        values = {k: entry.get(k) for k in ("login", "password", "name", "patient_id")}
        for k, v in values.items():
            if not isinstance(v, str) or not v:
                raise ValueError(f"{where}: {k} is missing (login, password, name, patient_id)")
        try:
            _parse_hash(values["password"])
        except ValueError as exc:
            raise ValueError(f"{where} ({values['login']}): {exc}") from None
        if values["login"] in users:
            raise ValueError(f"{where}: login {values['login']!r} is given twice")
        users[values["login"]] = User(**values)
    clients: dict[str, tuple[str, list[str]]] = {}
    for i, entry in enumerate(doc.get("client", []), start=1):
        where = f"{path}: [[client]] {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a table")
        cid, secret, uris = entry.get("id"), entry.get("secret"), entry.get("redirect_uris")
        if not (isinstance(cid, str) and cid and isinstance(secret, str) and secret and isinstance(uris, list)
                and uris and all(isinstance(u, str) and u for u in uris)):
            raise ValueError(f"{where}: id, secret and redirect_uris (a list) are needed")
        clients[cid] = (secret, list(uris))
    return users, clients


# --- the provider --------------------------------------------------------------------------------------

class _Refused(Exception):
    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


class DevIdp:
    """The provider, a WSGI application. clients: client_id -> (secret, [redirect_uris]). issuer: its
    URL (None: http(s)://host:port of the address serve() binds). id_token_claims and sign_id_token are
    the places a test's variant of the provider changes what it issues."""

    def __init__(self, users_file: str, issuer: str | None, clients: dict[str, tuple[str, list[str]]] | None = None,
                 *, patient_claim: str = "patient_id", code_ttl: float = CODE_TTL, token_ttl: int = TOKEN_TTL,
                 clock: Callable[[], float] = time.time):
        self.users, listed = load_users(users_file)
        self.clients = {**listed, **(clients or {})}
        self.issuer = issuer.rstrip("/") if issuer else None
        self.patient_claim = patient_claim
        self.code_ttl = code_ttl
        self.token_ttl = token_ttl
        self.clock = clock
        self._codes: dict[str, _Grant] = {}      # SHA-256 of the code -> what it grants
        self._lock = threading.Lock()
        self._keys: list[tuple[str, rsa.RSAPrivateKey]] = []   # (kid, key), the signing one first
        self.rotate_key()

    # -- keys
    def rotate_key(self, keep_old: bool = True) -> str:
        """A new RS256 signing key (its kid is returned); the old ones stay in the JWKS unless keep_old
        is false."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = jwt.public_jwk(key.public_key())["kid"]
        with self._lock:
            self._keys = [(kid, key)] + (self._keys if keep_old else [])
        return kid

    @property
    def key(self) -> tuple[str, rsa.RSAPrivateKey]:
        """(kid, private key) of the signing key."""
        return self._keys[0]

    def jwks(self) -> dict:
        return {"keys": [jwt.public_jwk(k.public_key(), kid) for kid, k in self._keys]}

    # -- what it issues
    def id_token_claims(self, user: User, client_id: str, nonce: str, auth_time: int) -> dict:
        now = int(self.clock())
        return {"iss": self.issuer, "sub": _subject(user.login), "aud": client_id, "exp": now + self.token_ttl,
                "iat": now, "auth_time": auth_time, "nonce": nonce, "name": user.name,
                self.patient_claim: user.patient_id}

    def sign_id_token(self, claims: dict) -> str:
        kid, key = self.key
        return jwt.sign(claims, key, kid)

    def discovery(self) -> dict:
        i = self._need_issuer()
        return {"issuer": i, "authorization_endpoint": i + "/authorize", "token_endpoint": i + "/token",
                "jwks_uri": i + "/jwks", "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "scopes_supported": ["openid", "profile"],
                "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "name",
                                     self.patient_claim]}

    def _need_issuer(self) -> str:
        if not self.issuer:
            raise RuntimeError("the provider's issuer is not known yet: give one, or serve() it first")
        return self.issuer

    # -- serving
    def serve(self, host: str = "127.0.0.1", port: int = 0, *, tls=None, threads: int = 4):
        """Serve in a background thread with xds.cheroot_adapter.HttpServer; the started server is
        returned (stop() ends it). tls: an xds.tls.TlsFiles (certificate and key; no client
        certificates are asked for); without it, only a loopback address is served."""
        from xds.cheroot_adapter import HttpServer
        from xds.tls import TlsFiles

        if tls is None and not loopback_host(host):
            raise ValueError(f"the development provider serves plain HTTP only on a loopback address, not on "
                             f"{host}; give a TLS certificate and key")
        if tls is not None and tls.ca:
            tls = TlsFiles(tls.cert, tls.key)  # browsers have no client certificate to show it
        server = HttpServer(self, host, port, threads=threads, tls=tls, server_name="xds-dev-idp").start()
        if not self.issuer:
            shown = f"[{host}]" if ":" in host else host
            self.issuer = f"{'https' if tls else 'http'}://{shown}:{server.port}"
        return server

    # -- WSGI
    def __call__(self, environ, start_response):
        base = urlsplit(self._need_issuer()).path.rstrip("/")
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        routes = {"/.well-known/openid-configuration": ("GET", lambda: self._json(start_response, 200, self.discovery())),
                  "/jwks": ("GET", lambda: self._json(start_response, 200, self.jwks())),
                  "/authorize": ("GET POST", lambda: self._authorize(environ, start_response, method)),
                  "/token": ("POST", lambda: self._token(environ, start_response))}
        route = routes.get(path[len(base):]) if path.startswith(base) else None
        if route is None:
            return self._page(start_response, 404, "Not found", "<p>There is no page here.</p>")
        if method not in route[0].split():
            return self._page(start_response, 405, "Method not allowed", "", [("Allow", route[0].replace(" ", ", "))])
        return route[1]()

    def _authorize(self, environ, start_response, method: str):
        params = _query(environ) if method == "GET" else _form(environ)
        if params is None:
            return self._page(start_response, 413, "Too large", "<p>The form is too large.</p>")
        client_id, redirect_uri = params.get("client_id", ""), params.get("redirect_uri", "")
        client = self.clients.get(client_id)
        if client is None or redirect_uri not in client[1]:
            # Never redirect to an address not registered for the client (RFC 6749 4.1.2.1).
            return self._page(start_response, 400, "Unknown application",
                              "<p>This sign-in request names an unknown application or return address.</p>")
        state = params.get("state")
        problem = _request_problem(params)
        if problem:
            return self._back(start_response, redirect_uri, {"error": "invalid_request", "error_description": problem},
                              state)
        if method == "GET":
            return self._form_page(start_response, params, None)
        if params.get("action") == "cancel":
            return self._back(start_response, redirect_uri, {"error": "access_denied"}, state)
        login, password = params.get("login", ""), params.get("password", "")
        user = self.users.get(login)
        ok = check_password(password, user.password if user is not None else _NOBODY)
        if user is None or not ok:
            log.info(json.dumps({"event": "dev_idp_signin", "outcome": "wrong_credentials"}))
            return self._form_page(start_response, params, "Wrong login or password.")
        code = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            for h in [h for h, g in self._codes.items() if g.expires <= now]:
                del self._codes[h]
            self._codes[_digest(code)] = _Grant(client_id, redirect_uri, params["code_challenge"], params["nonce"],
                                                user.login, now + self.code_ttl, int(now))
        log.info(json.dumps({"event": "dev_idp_signin", "outcome": "code_issued", "client": client_id}))
        return self._back(start_response, redirect_uri, {"code": code}, state)

    def _token(self, environ, start_response):
        try:
            answer = self._exchange(environ)
        except _Refused as exc:
            extra = [("WWW-Authenticate", 'Basic realm="dev-idp"')] if exc.status == 401 else []
            log.info(json.dumps({"event": "dev_idp_token", "outcome": exc.error}))
            return self._json(start_response, exc.status, {"error": exc.error, "error_description": exc.description},
                              extra)
        return self._json(start_response, 200, answer)

    def _exchange(self, environ) -> dict:
        form = _form(environ)
        if form is None:
            raise _Refused("invalid_request", "the request is too large")
        client_id = self._client(environ, form)
        if form.get("grant_type") != "authorization_code":
            raise _Refused("unsupported_grant_type", "only authorization_code is served")
        code = form.get("code") or ""
        with self._lock:
            grant = self._codes.pop(_digest(code), None)  # single use, whatever follows
        if grant is None or grant.expires <= self.clock():
            raise _Refused("invalid_grant", "the code is unknown, used or expired")
        if grant.client_id != client_id or form.get("redirect_uri") != grant.redirect_uri:
            raise _Refused("invalid_grant", "the code was issued to another client or redirect_uri")
        verifier = form.get("code_verifier") or ""
        if not _VERIFIER.fullmatch(verifier) or not hmac.compare_digest(pkce_challenge(verifier), grant.challenge):
            raise _Refused("invalid_grant", "the code_verifier does not match the code_challenge")
        user = self.users.get(grant.login)
        if user is None:
            raise _Refused("invalid_grant", "the user is gone")
        id_token = self.sign_id_token(self.id_token_claims(user, client_id, grant.nonce, grant.auth_time))
        return {"access_token": secrets.token_urlsafe(32), "token_type": "Bearer", "expires_in": self.token_ttl,
                "id_token": id_token}

    def _client(self, environ, form: dict) -> str:
        """The authenticated client: client_secret_basic (RFC 6749 2.3.1), or client_secret_post."""
        header = environ.get("HTTP_AUTHORIZATION") or ""
        if header:
            scheme, _, encoded = header.partition(" ")
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise _Refused("invalid_client", "the Basic credentials are malformed", 401) from None
            cid, sep, secret = decoded.partition(":")
            if scheme.lower() != "basic" or not sep:
                raise _Refused("invalid_client", "client authentication is HTTP Basic", 401)
            cid, secret = unquote(cid.replace("+", " ")), unquote(secret.replace("+", " "))
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = self.clients.get(cid)
        expected = client[0] if client is not None else secrets.token_urlsafe(16)
        if not hmac.compare_digest(secret.encode("utf-8"), expected.encode("utf-8")) or client is None:
            raise _Refused("invalid_client", "unknown client or wrong secret", 401)
        return cid

    # -- answers
    def _back(self, start_response, redirect_uri: str, params: dict, state: str | None):
        if state is not None:
            params = {**params, "state": state}
        parts = urlsplit(redirect_uri)
        query = (parts.query + "&" if parts.query else "") + urlencode(params, quote_via=quote)
        start_response("302 Found", [("Location", urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))),
                                     ("Content-Length", "0"), *_HEADERS])
        return [b""]

    def _form_page(self, start_response, params: dict, error: str | None):
        def e(value) -> str:
            return html.escape(str(value), quote=True)

        hidden = "".join(f'<input type="hidden" name="{e(k)}" value="{e(params[k])}">'
                         for k in ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                                   "code_challenge", "code_challenge_method") if k in params)
        alert = f'<p role="alert">{e(error)}</p>' if error else ""
        body = (f"<p>Development identity provider: a stand-in for the patients' identity service, "
                f"not a real one.</p><p>Sign in to <strong>{e(params.get('client_id', ''))}</strong>.</p>{alert}"
                f'<form method="post" action="{e(self.issuer + "/authorize")}">{hidden}'
                f'<p><label for="login">Login</label> <input id="login" name="login" autocomplete="username" '
                f'value="{e(params.get("login", ""))}" required></p>'
                f'<p><label for="password">Password</label> <input id="password" name="password" type="password" '
                f'autocomplete="current-password" required></p>'
                f'<p><button type="submit" name="action" value="signin">Sign in</button> '
                f'<button type="submit" name="action" value="cancel" formnovalidate>Cancel</button></p></form>')
        # The form's answer is a 302 to the client's redirect_uri (registered: _authorize checked it), and
        # browsers apply form-action to a form's redirects too: with 'self' alone Chromium blocks the way
        # back to the portal (another origin), and the sign-in never ends.
        back = urlsplit(params.get("redirect_uri", ""))
        targets = "'self'" + (f" {back.scheme}://{back.netloc}" if back.scheme in ("http", "https") and back.netloc
                              and not any(c in back.netloc for c in " ;,'\"") else "")
        return self._page(start_response, 200, "Sign in", body, form_action=targets)

    def _page(self, start_response, status: int, title: str, body_html: str, extra: list | None = None,
              form_action: str = "'self'"):
        body = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<title>{html.escape(title)}</title>'
                f"</head><body><h1>{html.escape(title)}</h1>{body_html}</body></html>\n").encode("utf-8")
        headers = [(k, v.replace("form-action 'self'", f"form-action {form_action}") if k == "Content-Security-Policy"
                    else v) for k, v in _HEADERS]
        start_response(f"{status} {_REASONS.get(status, 'Error')}", [
            ("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))), *headers,
            *(extra or [])])
        return [body]

    def _json(self, start_response, status: int, data: dict, extra: list | None = None):
        body = json.dumps(data).encode("utf-8")
        start_response(f"{status} {_REASONS.get(status, 'Error')}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))), *_HEADERS, *(extra or [])])
        return [body]


def _request_problem(params: dict) -> str | None:
    if params.get("response_type") != "code":
        return "response_type must be code"
    if "openid" not in (params.get("scope") or "").split():
        return "scope must include openid"
    if params.get("code_challenge_method") != "S256" or not _CHALLENGE.fullmatch(params.get("code_challenge") or ""):
        return "PKCE is required: code_challenge (S256) and code_challenge_method=S256"
    if not params.get("nonce") or len(params["nonce"]) > 128:
        return "a nonce of at most 128 characters is required"
    if params.get("state") is not None and len(params["state"]) > 512:
        return "the state is longer than 512 characters"
    return None


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def _subject(login: str) -> str:
    """A stable, opaque sub for a login (the provider's pseudonymous identifier of the person)."""
    return "dev-" + hashlib.sha256(b"xds dev-idp sub\0" + login.encode("utf-8")).hexdigest()[:32]


def _single(values: dict[str, list[str]]) -> dict[str, str]:
    # A repeated parameter is dropped, so that the request reads as missing it.
    return {k: v[0] for k, v in values.items() if len(v) == 1}


def _query(environ) -> dict[str, str]:
    return _single(parse_qs((environ.get("QUERY_STRING") or "")[:8192], keep_blank_values=True, max_num_fields=32))


def _form(environ) -> dict[str, str] | None:
    """The urlencoded body, or None when it is larger than MAX_FORM_BYTES."""
    from xds.app import request_input

    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length < 0 or length > MAX_FORM_BYTES:
        return None
    stream, data = request_input(environ), b""
    while len(data) < length:
        chunk = stream.read(length - len(data))
        if not chunk:
            break
        data += chunk
    try:
        return _single(parse_qs(data.decode("utf-8"), keep_blank_values=True, max_num_fields=32))
    except (UnicodeDecodeError, ValueError):
        return {}


# --- the command ---------------------------------------------------------------------------------------

def add_arguments(p) -> None:
    """The `xds dev-idp` subcommands, on its parser."""
    sub = p.add_subparsers(dest="idp_command", required=True)
    s = sub.add_parser("serve", help="serve the development OpenID Provider")
    s.add_argument("--users", required=True, metavar="TOML", help="the [[user]] (and [[client]]) tables")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; another "
                                                       "needs --tls-cert)")
    s.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    s.add_argument("--issuer", metavar="URL", help="the issuer URL (default http(s)://HOST:PORT)")
    s.add_argument("--client", nargs=3, action="append", default=[], metavar=("ID", "SECRET", "REDIRECT_URI"),
                   help="a client (repeatable; its secret is then visible to ps, so prefer [[client]] in the file)")
    s.add_argument("--patient-claim", default="patient_id", help="the id_token claim of the patient id "
                                                                 "(default patient_id)")
    s.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (PEM)")
    s.add_argument("--tls-key", metavar="PEM", help="its private key (PEM)")
    h = sub.add_parser("hash-password", help="print the scrypt$salt$hash of a password, for the users file")
    h.add_argument("--stdin", action="store_true", help="read the password from the first line of stdin "
                                                        "(default: ask on the terminal)")


def command(args) -> int:
    try:
        if args.idp_command == "hash-password":
            return _hash_command(args)
        return _serve(args)
    except (ValueError, OSError) as exc:
        print(f"xds dev-idp: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="xds dev-idp", description="a development OpenID Provider for the "
                                                                     "patients' portal (not for production)")
    add_arguments(parser)
    return command(parser.parse_args(argv))


def _hash_command(args) -> int:
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("xds dev-idp: the two passwords differ", file=sys.stderr)
            return 2
    if not password:
        print("xds dev-idp: the password is empty", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def _serve(args) -> int:
    from xds import logs
    from xds.tls import TlsFiles

    logs.setup("INFO", "json")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = TlsFiles(args.tls_cert, args.tls_key) if args.tls_cert else None
    clients = {cid: (secret, [uri]) for cid, secret, uri in args.client}
    scheme = "https" if tls else "http"
    shown = f"[{args.host}]" if ":" in args.host else args.host
    issuer = args.issuer or (f"{scheme}://{shown}:{args.port}" if args.port else None)
    idp = DevIdp(args.users, issuer, clients, patient_claim=args.patient_claim)
    server = idp.serve(args.host, args.port, tls=tls)
    print(f"xds dev-idp: development OpenID Provider (not for production) at {idp.issuer}\n"
          f"users: {', '.join(sorted(idp.users)) or '(none)'}; clients: {', '.join(sorted(idp.clients)) or '(none)'}",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0
