"""The OpenID Connect relying party of the patients' sign-in (OpenID Connect Core 1.0, the authorization
code flow; RFC 7636 PKCE with S256; OpenID Connect Discovery 1.0).

Everything the provider says is checked, and any doubt refuses (fail closed): the discovery document
must name the configured issuer and give https endpoints (plain http only on a loopback address); the
code is exchanged at the token endpoint with client_secret_basic and the PKCE verifier; the id_token's
signature must verify with a key of the provider's JWKS (cached by kid, fetched again once when a token
names a kid not in the cache), under RS256 or ES256 (never "none" or HMAC); iss must be the issuer, aud
must contain our client_id (azp must be our client_id when aud names several), exp, iat and nbf must
hold within the clock skew, and the nonce must be the one this sign-in sent. Redirects are not followed
for any of these requests, and no error message quotes a token, a code or a secret.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from xds import hl7

from . import jwt

DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_RESPONSE = 1024 * 1024      # bytes of a discovery document, a JWKS or a token response
METADATA_TTL = 3600.0           # seconds the discovery document and the JWKS are taken as read
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")   # RFC 7636 4.1


class OidcError(Exception):
    """A sign-in refused: the message says why, for the patient and the log, and quotes no secret."""


class ProviderError(OidcError):
    """The provider cannot be reached, or its discovery document or JWKS is unusable: nobody can sign
    in until that is fixed (answered 502)."""


class PatientIdError(OidcError):
    """The id_token verified, but carries no patient identifier the server can use (answered 403)."""


def loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> None:
    """An absolute https URL (http only on a loopback address), without user info or fragment."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or not parts.netloc or parts.scheme not in ("https", "http"):
        raise ValueError(f"{what} must be an absolute https URL, not {str(url)[:100]!r}")
    if parts.scheme == "http" and not loopback_host(parts.hostname):
        raise ValueError(f"{what} must use https (plain http only on a loopback address): {url[:100]}")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise ValueError(f"{what} may not carry user info or a fragment: {parts.scheme}://{parts.hostname}...")


@dataclass
class OidcConfig:
    """The relying party's registration at the patients' identity provider."""

    issuer: str                     # exactly as the provider's discovery document and id_tokens say it
    client_id: str
    client_secret: str = field(repr=False)
    redirect_uri: str | None = None  # <base_url>/portal/callback; None: derived from the server's base URL
    scopes: str = "openid"          # space-separated; must include openid
    patient_claim: str = "patient_id"  # the id_token claim carrying the patient's identifier
    # A format string with one {} that turns the claim into the HL7 CX patient id, for a provider whose
    # claim is the bare identifier: "{}^^^&1.2.250.1.213.1.4.10&ISO". None: the claim is a CX already.
    patient_id_format: str | None = None
    ca_file: str | None = None      # CA bundle for the provider's TLS; None: the system's trust store
    clock_skew: int = 60            # seconds allowed either way on exp, iat and nbf
    session_ttl: int = 1800         # seconds a portal session lasts from sign-in
    timeout: float = 10.0           # seconds for each request to the provider
    algorithms: tuple[str, ...] = jwt.ALGORITHMS  # accepted id_token algorithms, within RS256 and ES256

    def __post_init__(self):
        self.issuer = (self.issuer or "").strip()
        check_url(self.issuer, "the OIDC issuer")
        if urlsplit(self.issuer).query:
            raise ValueError("the OIDC issuer may not have a query")
        if not self.client_id:
            raise ValueError("the OIDC client_id is missing")
        if not self.client_secret:
            raise ValueError("the OIDC client_secret is missing (client_secret_basic)")
        if self.redirect_uri is not None:
            check_url(self.redirect_uri, "the OIDC redirect_uri")
        if "openid" not in self.scopes.split():
            raise ValueError(f"the OIDC scopes must include openid, not {self.scopes!r}")
        if not self.patient_claim:
            raise ValueError("patient_claim names no claim")
        if self.patient_id_format is not None:
            try:
                sample = self.patient_id_format.format("0")
            except (IndexError, KeyError, ValueError):
                raise ValueError(f"patient_id_format {self.patient_id_format!r} must have exactly one {{}}") \
                    from None
            if self.patient_id_format.count("{}") != 1 or hl7.check_cx(sample):
                raise ValueError(f"patient_id_format {self.patient_id_format!r} must make a CX "
                                 f"id^^^&OID&ISO from one {{}}, e.g. {{}}^^^&1.2.250.1.213.1.4.10&ISO")
        self.algorithms = tuple(self.algorithms)
        bad = [a for a in self.algorithms if a not in jwt.ALGORITHMS]
        if bad or not self.algorithms:
            raise ValueError(f"id_token algorithms must be among {', '.join(jwt.ALGORITHMS)}, not {bad}")
        if self.clock_skew < 0 or self.clock_skew > 600:
            raise ValueError("clock_skew must be between 0 and 600 seconds")
        if self.session_ttl < 60:
            raise ValueError("session_ttl must be at least 60 seconds")


@dataclass(frozen=True)
class Provider:
    """What the provider's discovery document says, once checked."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True)
class AuthRequest:
    """One sign-in's authorization request: the URL to send the browser to, and what the callback
    needs (kept server-side; never in the URL or a cookie but for state)."""

    url: str
    state: str
    nonce: str = field(repr=False)
    verifier: str = field(repr=False)


@dataclass(frozen=True)
class Identity:
    """The verified id_token, as the session needs it."""

    issuer: str
    subject: str
    patient_id: str
    name: str | None
    expires: float


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 4.2, S256: base64url(SHA-256(ASCII(verifier)))."""
    return jwt.b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())


def random_token(nbytes: int = 32) -> str:
    return jwt.b64url_encode(secrets.token_bytes(nbytes))


# --- HTTP to the provider --------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx status


@dataclass
class HttpAnswer:
    status: int
    body: bytes = field(repr=False)


Fetch = Callable[[str, str, bytes | None, dict], HttpAnswer]


class Http:
    """urllib, without redirects, with the configured CA, a timeout and a size bound."""

    def __init__(self, ca_file: str | None, timeout: float):
        context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.timeout = timeout
        self._proxied = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=context))
        # A provider on the loopback (development) is never reached through a proxy of the environment.
        self._direct = urllib.request.build_opener(_NoRedirect(), urllib.request.ProxyHandler({}),
                                                   urllib.request.HTTPSHandler(context=context))

    def __call__(self, method: str, url: str, body: bytes | None, headers: dict) -> HttpAnswer:
        opener = self._direct if loopback_host(urlsplit(url).hostname) else self._proxied
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with opener.open(request, timeout=self.timeout) as answer:
                return HttpAnswer(answer.status, _read(answer))
        except urllib.error.HTTPError as exc:
            try:
                return HttpAnswer(exc.code, _read(exc))
            finally:
                exc.close()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ProviderError(f"the identity provider cannot be reached at {_where(url)}: {reason}") from None


def _read(stream) -> bytes:
    data = stream.read(MAX_RESPONSE + 1)
    if len(data) > MAX_RESPONSE:
        raise ProviderError(f"the identity provider's answer is larger than {MAX_RESPONSE} bytes")
    return data or b""


def _where(url: str) -> str:
    """A URL as error messages show it: without its query (which may hold a code or a state)."""
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, p.path, "", ""))


def _json(answer: HttpAnswer, what: str, error: type[OidcError] = ProviderError) -> dict:
    try:
        return jwt.loads(answer.body, what)
    except jwt.JwtError as exc:
        raise error(f"the identity provider's {what} is unusable: {exc}") from None


# --- the relying party -----------------------------------------------------------------------------

class RelyingParty:
    """The relying party: thread-safe, one per process (it caches the provider's metadata and keys)."""

    def __init__(self, config: OidcConfig, redirect_uri: str | None = None, *, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.redirect_uri = redirect_uri or config.redirect_uri
        if not self.redirect_uri:
            raise ValueError("the relying party needs its redirect_uri (<base_url>/portal/callback)")
        check_url(self.redirect_uri, "the OIDC redirect_uri")
        self.fetch = fetch or Http(config.ca_file, config.timeout)
        self.clock = clock
        self._lock = threading.Lock()
        self._provider: tuple[float, Provider] | None = None     # (read again after, metadata)
        self._keys: tuple[float, list[jwt.Jwk]] | None = None     # (read again after, keys)

    # -- discovery and keys
    def provider(self) -> Provider:
        now = self.clock()
        with self._lock:
            if self._provider is not None and now < self._provider[0]:
                return self._provider[1]
        provider = self._discover()
        with self._lock:
            self._provider = (now + METADATA_TTL, provider)
        return provider

    def _discover(self) -> Provider:
        issuer = self.config.issuer
        url = issuer.rstrip("/") + DISCOVERY_PATH
        answer = self.fetch("GET", url, None, {"Accept": "application/json"})
        if answer.status != 200:
            raise ProviderError(f"the identity provider's discovery document ({_where(url)}) answered HTTP "
                                f"{answer.status}")
        doc = _json(answer, "discovery document")
        # OpenID Connect Discovery 4.3: the issuer must be exactly the one configured.
        if doc.get("issuer") != issuer:
            raise ProviderError(f"the discovery document names the issuer {str(doc.get('issuer'))[:100]!r}, "
                                f"not the configured {issuer!r}")
        endpoints = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            try:
                check_url(value, f"the provider's {name}")
            except ValueError as exc:
                raise ProviderError(str(exc)) from None
            endpoints[name] = value
        for name, needed in (("response_types_supported", "code"), ("code_challenge_methods_supported", "S256")):
            listed = doc.get(name)
            if isinstance(listed, list) and needed not in listed:
                raise ProviderError(f"the identity provider does not support {needed} ({name})")
        methods = doc.get("token_endpoint_auth_methods_supported")
        if isinstance(methods, list) and "client_secret_basic" not in methods:
            raise ProviderError("the identity provider does not accept client_secret_basic at its token endpoint")
        return Provider(issuer=issuer, **endpoints)

    def _fetch_keys(self) -> list[jwt.Jwk]:
        url = self.provider().jwks_uri
        answer = self.fetch("GET", url, None, {"Accept": "application/jwk-set+json, application/json"})
        if answer.status != 200:
            raise ProviderError(f"the identity provider's JWKS ({_where(url)}) answered HTTP {answer.status}")
        try:
            keys = jwt.keys_from_jwks(_json(answer, "JWKS"))
        except jwt.JwtError as exc:
            raise ProviderError(f"the identity provider's JWKS is unusable: {exc}") from None
        with self._lock:
            self._keys = (self.clock() + METADATA_TTL, keys)
        return keys

    def _key_for(self, token: jwt.Jws, alg: str) -> jwt.Jwk:
        """The provider's key the token names; the JWKS is read again once if the cache has none."""
        now = self.clock()
        with self._lock:
            cached = self._keys[1] if self._keys is not None and now < self._keys[0] else None
        refetched = False
        if cached is None:
            cached, refetched = self._fetch_keys(), True
        key = _pick(cached, token.kid, alg)
        if key is None and not refetched:
            key = _pick(self._fetch_keys(), token.kid, alg)  # a key rotated in since the last read
        if key is None:
            named = f"kid {token.kid!r}" if token.kid is not None else "no kid"
            raise OidcError(f"the id_token names {named[:120]}, and the identity provider's JWKS has no "
                            f"{alg} key for it")
        return key

    # -- the flow
    def authorization_request(self) -> AuthRequest:
        """A new sign-in: state, nonce and PKCE verifier, and the provider's URL carrying them."""
        provider = self.provider()
        state, nonce, verifier = random_token(), random_token(), random_token()
        params = {"response_type": "code", "client_id": self.config.client_id, "redirect_uri": self.redirect_uri,
                  "scope": self.config.scopes, "state": state, "nonce": nonce,
                  "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"}
        parts = urlsplit(provider.authorization_endpoint)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query + list(params.items()),
                                                                             quote_via=quote), ""))
        return AuthRequest(url=url, state=state, nonce=nonce, verifier=verifier)

    def exchange_code(self, code: str, verifier: str) -> str:
        """The id_token the token endpoint gives for this code (client_secret_basic, RFC 6749 2.3.1)."""
        if not isinstance(code, str) or not code or len(code) > 2048:
            raise OidcError("the callback carries no usable authorization code")
        if not _VERIFIER.fullmatch(verifier or ""):
            raise OidcError("the sign-in's PKCE verifier is malformed")
        c = self.config
        credentials = f"{quote(c.client_id, safe='')}:{quote(c.client_secret, safe='')}".encode("utf-8")
        body = urlencode({"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                          "code_verifier": verifier}).encode("ascii")
        url = self.provider().token_endpoint
        answer = self.fetch("POST", url, body, {
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
            "Authorization": "Basic " + base64.b64encode(credentials).decode("ascii")})
        if answer.status != 200:
            try:
                error = jwt.loads(answer.body, "token error").get("error")
            except jwt.JwtError:
                error = None
            shown = error if isinstance(error, str) and re.fullmatch(r"[\x20-\x7e]{1,64}", error) else "no error code"
            raise OidcError(f"the identity provider's token endpoint refused the code: HTTP {answer.status} "
                            f"({shown})")
        tokens = _json(answer, "token response", OidcError)
        token_type = tokens.get("token_type")
        if token_type is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
            raise OidcError("the token response's token_type is not Bearer")
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise OidcError("the token response has no id_token")
        return id_token

    def verify_id_token(self, id_token: str, nonce: str) -> Identity:
        """The identity an id_token asserts, once everything about it holds (OIDC Core 3.1.3.7)."""
        c = self.config
        try:
            token = jwt.parse(id_token)
            alg = jwt.check_header(token, c.algorithms)
            jwt.verify_signature(token, self._key_for(token, alg), c.algorithms)
        except jwt.JwtError as exc:
            raise OidcError(f"the id_token is refused: {exc}") from None
        claims = token.claims
        if claims.get("iss") != c.issuer:
            raise OidcError(f"the id_token's issuer {str(claims.get('iss'))[:100]!r} is not {c.issuer!r}")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) for a in audiences):
            raise OidcError("the id_token has no audience (aud)")
        if c.client_id not in audiences:
            raise OidcError("the id_token's audience does not include this server's client_id")
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != c.client_id:
            raise OidcError("the id_token names several audiences, and its azp is not this server's client_id")
        now, skew = self.clock(), c.clock_skew
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not jwt.is_number(exp):
            raise OidcError("the id_token has no expiry (exp)")
        if now >= exp + skew:
            raise OidcError("the id_token has expired")
        if not jwt.is_number(iat):
            raise OidcError("the id_token has no issue time (iat)")
        if iat > now + skew:
            raise OidcError("the id_token is issued in the future (iat); check the clocks")
        if nbf is not None and (not jwt.is_number(nbf) or nbf > now + skew):
            raise OidcError("the id_token is not valid yet (nbf)")
        sent = claims.get("nonce")
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode("utf-8"), nonce.encode("utf-8")):
            raise OidcError("the id_token's nonce is not this sign-in's")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise OidcError("the id_token has no subject (sub) of at most 255 characters")
        name = claims.get("name")
        return Identity(issuer=c.issuer, subject=sub, patient_id=self.patient_id(claims),
                        name=name if isinstance(name, str) else None, expires=float(exp))

    def patient_id(self, claims: dict) -> str:
        """The HL7 CX patient id of the claims (patient_claim, through patient_id_format); raises
        OidcError when there is none that the registry could accept."""
        c = self.config
        value = claims.get(c.patient_claim)
        if not isinstance(value, str) or not value.strip():
            raise PatientIdError(f"the identity provider gave no patient identifier (claim {c.patient_claim!r})")
        if any(ord(ch) < 0x20 or ch == "\x7f" for ch in value) or len(value) > 200:
            raise PatientIdError(f"the patient identifier (claim {c.patient_claim!r}) is malformed")
        if c.patient_id_format is not None:
            # The bare identifier goes into CX.1: HL7 delimiters in it would forge other components.
            if any(ch in value for ch in "^&~\\|"):
                raise PatientIdError(f"the patient identifier (claim {c.patient_claim!r}) holds HL7 delimiters")
            value = c.patient_id_format.format(value)
        problems = hl7.check_cx(value)
        if problems:
            raise PatientIdError(f"the patient identifier (claim {c.patient_claim!r}) is not a CX "
                                 f"id^^^&OID&ISO: {problems[0]}")
        return value


def _pick(keys: list[jwt.Jwk], kid: object, alg: str) -> jwt.Jwk | None:
    fitting = [k for k in keys if k.fits(alg)]
    if kid is not None:
        named = [k for k in fitting if k.kid == kid]
        return named[0] if len(named) == 1 else None
    # Without a kid, only a JWKS with a single key for the algorithm says which key it is.
    return fitting[0] if len(fitting) == 1 else None
