"""IHE XUA: the SAML 2.0 assertion in wsse:Security, verified, and turned into a Principal.

Order of the checks (each refusal names its check and never echoes the token): one Security
header, one assertion; signature (XML-DSig, exclusive c14n, RSA-SHA256, or RSA-SHA1 where a
profile allows it) by a certificate the trust store holds or has issued; Issuer; NameID; validity
(NotBefore/NotOnOrAfter with the clock skew); AudienceRestriction when present; one AuthnStatement;
the allowed authentication contexts, roles and purposes of use; replay (when asked for).

A verified assertion is remembered by its bytes until it expires: XUA lets a client reuse an STS's
assertion (ITI TF-1 39), and signature verification is the costly part.
"""
from __future__ import annotations

import base64
import binascii
import datetime as _dt
import functools
import hashlib
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from lxml import etree

from .principal import Principal
from .saml import (ASSERTION, HOME_COMMUNITY_ID, NS_DS, ORGANIZATION, ORGANIZATION_ID, PURPOSE_OF_USE,
                   RESOURCE_ID, ROLE, SECURITY, SUBJECT_ID, Assertion, SecurityFault)

F = SecurityFault
_CACHE_MAX = 10_000

# SAML 2.0 Authentication Context classes (saml-authn-context-2.0-os, section 3.4): a class named in
# that namespace but not defined there is not an authentication anyone performed.
_AC = "urn:oasis:names:tc:SAML:2.0:ac:classes:"
AC_CLASSES = {_AC + n for n in (
    "InternetProtocol", "InternetProtocolPassword", "Kerberos", "MobileOneFactorUnregistered",
    "MobileTwoFactorUnregistered", "MobileOneFactorContract", "MobileTwoFactorContract", "Password",
    "PasswordProtectedTransport", "PreviousSession", "X509", "PGP", "SPKI", "XMLDSig", "Smartcard", "SmartcardPKI",
    "SoftwarePKI", "Telephony", "NomadTelephony", "PersonalTelephony", "AuthenticatedTelephony",
    "SecureRemotePassword", "TLSClient", "TimeSyncToken", "unspecified")}


@dataclass
class XuaConfig:
    trust: "TrustStore"
    audiences: tuple[str, ...] = ()
    clock_skew: float = 60.0                         # seconds, both ways
    roles: frozenset[str] | None = None              # allowed role codes; None: any
    purposes: frozenset[str] | None = None           # allowed purpose-of-use codes; None: any
    authn_contexts: frozenset[str] | None = None     # allowed AuthnContextClassRefs; None: any
    refuse_replay: bool = False                      # refuse a second use of one Assertion/@ID
    allow_sha1: bool = False                         # RSA-SHA1 / SHA-1 (older French tokens)
    # TLS subjects of systems that may call without an assertion (a repository sending ITI-42).
    is_system: Callable[[str], bool] = field(default=lambda subject: False)
    # TLS subjects that may call as themselves without an assertion but pass on no one's (admin_subjects,
    # and a host's registry_subjects).
    alone: frozenset[str] = frozenset()
    # TLS subjects trusted to have checked an unsigned DIRECTE token against the card's own TLS session
    # before passing it on (a host's registry_subjects: the registry routing ITI-43).
    card_relays: frozenset[str] = frozenset()


class TrustStore:
    """The issuers whose assertions are accepted: certificates pinned as they are, and CAs whose
    direct issuance is accepted (an STS certificate, or a structure certificate's CA for the VIHF)."""

    def __init__(self, pem_files: Iterable[str] = ()):
        self.certs: list[x509.Certificate] = []
        for path in pem_files:
            with open(path, "rb") as f:
                self.certs += x509.load_pem_x509_certificates(f.read())
        self._pinned = {c.fingerprint(hashes.SHA256()) for c in self.certs}
        self._decided: dict[bytes, bool] = {}  # fingerprint -> pinned or issued by an anchor (not time-bound)

    def trusts(self, cert: x509.Certificate, now: _dt.datetime) -> bool:
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            return False
        fingerprint = cert.fingerprint(hashes.SHA256())
        decided = self._decided.get(fingerprint)
        if decided is None:
            decided = fingerprint in self._pinned or any(
                issuer.subject == cert.issuer and _signed_by(cert, issuer) for issuer in self.certs)
            if len(self._decided) < _CACHE_MAX:
                self._decided[fingerprint] = decided
        return decided


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


class ReplayCache:
    """Assertion IDs seen, until they expire, in memory: for one process without a database (tests, tools)."""

    def __init__(self):
        self._seen: dict[str, _dt.datetime] = {}
        self._lock = threading.Lock()

    def first_use(self, assertion_id: str, until: _dt.datetime, now: _dt.datetime) -> bool:
        with self._lock:
            if len(self._seen) > _CACHE_MAX:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
            known = self._seen.get(assertion_id)
            if known is not None and known > now:
                return False
            self._seen[assertion_id] = until
            return True


def find_assertion(headers: list[etree._Element]) -> etree._Element | None:
    """The one saml2:Assertion of the one wsse:Security header; None when there is no Security header."""
    security = [h for h in headers if h.tag == SECURITY]
    if len(security) > 1:
        raise F(F.INVALID_SECURITY, f"{len(security)} wsse:Security headers; one is expected")
    if not security:
        return None
    assertions = security[0].findall(ASSERTION)
    if len(assertions) != 1:
        raise F(F.INVALID_SECURITY, f"wsse:Security holds {len(assertions)} saml2:Assertion elements; "
                "exactly one is expected")
    return assertions[0]


def signer_certificate(el: etree._Element) -> x509.Certificate:
    found = el.findall(f"{{{NS_DS}}}Signature/{{{NS_DS}}}KeyInfo/{{{NS_DS}}}X509Data/{{{NS_DS}}}X509Certificate")
    if len(found) != 1:
        raise F(F.INVALID_TOKEN, "the assertion's signature must carry exactly one KeyInfo/X509Certificate")
    try:
        return _certificate("".join((found[0].text or "").split()))
    except (ValueError, binascii.Error):
        raise F(F.INVALID_TOKEN, "the assertion's KeyInfo certificate cannot be read") from None


@functools.lru_cache(maxsize=256)
def _certificate(b64: str) -> x509.Certificate:
    # An STS signs every assertion with the same few certificates: parse each once.
    return x509.load_der_x509_certificate(base64.b64decode(b64, validate=True))


def verify_signature(el: etree._Element, cert: x509.Certificate, allow_sha1: bool) -> etree._Element:
    """XML-DSig of the assertion by cert; returns the element the signature covers."""
    from signxml import DigestAlgorithm, SignatureMethod, XMLVerifier
    from signxml.exceptions import InvalidInput, InvalidSignature as DsigInvalid
    from signxml.verifier import SignatureConfiguration

    methods = {SignatureMethod.RSA_SHA256, SignatureMethod.RSA_SHA384, SignatureMethod.RSA_SHA512,
               SignatureMethod.ECDSA_SHA256}
    digests = {DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512}
    if allow_sha1:
        methods.add(SignatureMethod.RSA_SHA1)
        digests.add(DigestAlgorithm.SHA1)
    config = SignatureConfiguration(signature_methods=frozenset(methods), digest_algorithms=frozenset(digests),
                                    expect_references=1, location="./")
    try:
        # No XSD validation of the Signature element: it costs as much as the rest of the check, and the
        # structure that matters (one reference, to this assertion, with the allowed algorithms) is
        # enforced by the expected configuration and the checks below.
        result = XMLVerifier().verify(etree.tostring(el), x509_cert=cert, expect_config=config, id_attribute="ID",
                                      validate_schema=False)
    except (DsigInvalid, InvalidInput) as exc:
        raise F(F.FAILED_CHECK, f"the assertion's signature does not verify ({type(exc).__name__})") from None
    except Exception:  # any other refusal inside the verifier is a failed check too, never a pass
        raise F(F.FAILED_CHECK, "the assertion's signature could not be verified") from None
    signed = result.signed_xml
    # Only the assertion itself may be what is signed: a signature over some other element would
    # let unsigned claims ride along (XML signature wrapping).
    if signed is None or signed.tag != ASSERTION or signed.get("ID") != el.get("ID"):
        raise F(F.FAILED_CHECK, "the signature does not cover the assertion itself")
    return signed


class XuaAuthenticator:
    """security = xua."""

    mode = "xua"

    def __init__(self, config: XuaConfig, now: Callable[[], _dt.datetime] | None = None, replays=None):
        self.config = config
        self.now = now or (lambda: _dt.datetime.now(_dt.timezone.utc))
        self._verified: dict[bytes, tuple[Principal, _dt.datetime | None]] = {}
        self._lock = threading.Lock()
        # The composition gives the database's (xds/security/replay.py), shared by every process.
        self.replays = replays or ReplayCache()

    def authenticate(self, headers: list[etree._Element], peer_subject: str | None) -> Principal:
        el = find_assertion(headers)
        if el is None:
            return self.without_assertion(peer_subject)
        now = self.now()
        # A hop (a known system passing its caller's assertion on) was not the assertion's audience
        # and may pass it on many times: signature and validity only.
        hop = bool(peer_subject and self.config.is_system(peer_subject))
        key = hashlib.sha256(etree.tostring(el) + (b"hop" if hop else b"")).digest()
        with self._lock:
            cached = self._verified.get(key)
        if cached is not None:
            principal, expires = cached
            if expires is not None and now >= expires + _dt.timedelta(seconds=self.config.clock_skew):
                raise F(F.FAILED_AUTHENTICATION, "the assertion has expired (Conditions/@NotOnOrAfter)")
        else:
            assertion = self.verify(el, now, hop)
            principal = self.principal(assertion)
            expires = assertion.not_on_or_after
            with self._lock:
                if len(self._verified) > _CACHE_MAX:
                    self._verified.clear()
                self._verified[key] = (principal, expires)
        if not hop:
            self.check_replay(principal, expires, now)
        return replace(principal, tls_subject=peer_subject)

    required = "this endpoint requires a SAML 2.0 assertion in wsse:Security (IHE XUA)"

    def without_assertion(self, peer_subject: str | None) -> Principal:
        """Only a system known by its TLS certificate may call without an assertion, as itself."""
        if peer_subject and (self.config.is_system(peer_subject) or peer_subject in self.config.alone):
            return Principal(mode="tls", subject=peer_subject, tls_subject=peer_subject)
        raise F(F.TOKEN_UNAVAILABLE, self.required)

    def check_replay(self, principal: Principal, expires: _dt.datetime | None, now: _dt.datetime) -> None:
        if self.config.refuse_replay and principal.assertion_id:
            until = expires or now + _dt.timedelta(hours=1)
            if not self.replays.first_use(principal.assertion_id, until, now):
                raise F(F.FAILED_AUTHENTICATION, "this assertion was used before (Assertion/@ID) and replays "
                        "are refused here")

    # --- the checks -----------------------------------------------------------------------------
    noun = "assertion"  # how refusals name the token
    issuer_format_required = True

    def verify(self, el: etree._Element, now: _dt.datetime, hop: bool = False) -> Assertion:
        if el.find(f"{{{NS_DS}}}Signature") is None:
            raise F(F.INVALID_TOKEN, "the assertion is not signed")
        assertion, _ = self.signed(el, now)
        self.check_claims(assertion, now, hop)
        return assertion

    def signed(self, el: etree._Element, now: _dt.datetime) -> tuple[Assertion, x509.Certificate]:
        """The assertion as its signature covers it, and the certificate that signed it."""
        cert = signer_certificate(el)
        if not self.config.trust.trusts(cert, now):
            raise F(F.FAILED_AUTHENTICATION, f"the {self.noun} is signed by a certificate that is not in the trust "
                    "store, nor issued by one in it, or is outside its validity")
        return Assertion.read(verify_signature(el, cert, self.config.allow_sha1)), cert

    def check_named(self, a: Assertion) -> None:
        """ID, Issuer (and its Format where the profile asks), NameID."""
        if not a.id:
            raise F(F.INVALID_TOKEN, f"the {self.noun} has no ID")
        if not a.issuer:
            raise F(F.INVALID_TOKEN, f"the {self.noun} has no Issuer")
        if self.issuer_format_required and not a.issuer_format:
            # XUA's Issuer names the X-Assertion Provider in a stated form (X509SubjectName, emailAddress, ...).
            raise F(F.INVALID_TOKEN, "the assertion's Issuer has no Format")
        if not a.name_id:
            raise F(F.INVALID_TOKEN, f"the {self.noun} has no Subject/NameID")

    def check_window(self, a: Assertion, now: _dt.datetime, skew: _dt.timedelta) -> None:
        if a.not_before is not None and now + skew < a.not_before:
            raise F(F.FAILED_AUTHENTICATION, f"the {self.noun} is not valid yet (Conditions/@NotBefore)")
        if a.not_on_or_after is not None and now >= a.not_on_or_after + skew:
            raise F(F.FAILED_AUTHENTICATION, f"the {self.noun} has expired (Conditions/@NotOnOrAfter)")

    def check_claims(self, a: Assertion, now: _dt.datetime, hop: bool = False) -> None:
        c = self.config
        skew = _dt.timedelta(seconds=c.clock_skew)
        self.check_named(a)
        if a.name_id_format is not None and ":" not in a.name_id_format:
            raise F(F.INVALID_TOKEN, "the NameID's Format is not a URI")
        # XUA (ITI TF-2 3.40.4.1.2) confirms the subject: bearer, holder-of-key or sender-vouches.
        if not a.confirmation_methods or not all(m.startswith("urn:oasis:names:tc:SAML:2.0:cm:")
                                                 for m in a.confirmation_methods):
            raise F(F.INVALID_TOKEN, "the assertion's Subject has no SubjectConfirmation with a SAML 2.0 Method")
        if a.issue_instant is None:
            raise F(F.INVALID_TOKEN, "the assertion has no IssueInstant")
        if a.issue_instant > now + skew:
            raise F(F.FAILED_AUTHENTICATION, "the assertion's IssueInstant is in the future")
        self.check_window(a, now, skew)
        if a.audiences is not None and not hop:
            if not c.audiences:
                raise F(F.FAILED_AUTHENTICATION, "the assertion restricts its audience and this server has no "
                        "audience configured (xua_audiences)")
            if not set(a.audiences) & set(c.audiences):
                raise F(F.FAILED_AUTHENTICATION, "the assertion's AudienceRestriction does not name this service")
        self.check_authn(a, now, skew)
        if c.roles is not None and any(r.code not in c.roles for r in a.codes(ROLE)):
            raise F(F.FAILED_AUTHENTICATION, "the assertion carries a role this service does not accept")
        if c.purposes is not None and any(p.code not in c.purposes for p in a.codes(PURPOSE_OF_USE)):
            raise F(F.FAILED_AUTHENTICATION, "the assertion's purpose of use is not accepted by this service")

    def check_authn(self, a: Assertion, now: _dt.datetime, skew: _dt.timedelta) -> None:
        if a.authn_statements != 1:
            raise F(F.INVALID_TOKEN, f"the assertion has {a.authn_statements} AuthnStatements; one is expected")
        if a.authn_instant is None:
            raise F(F.INVALID_TOKEN, "the AuthnStatement has no AuthnInstant")
        if a.authn_instant > now + skew:
            raise F(F.FAILED_AUTHENTICATION, "the AuthnStatement's AuthnInstant is in the future")
        if not a.authn_context:
            raise F(F.INVALID_TOKEN, "the AuthnStatement has no AuthnContext/AuthnContextClassRef")
        if a.authn_context.startswith(_AC) and a.authn_context not in AC_CLASSES:
            raise F(F.INVALID_TOKEN, "the AuthnContextClassRef names no SAML 2.0 authentication context class")
        if self.config.authn_contexts is not None and a.authn_context not in self.config.authn_contexts:
            raise F(F.FAILED_AUTHENTICATION, "the assertion's authentication context is not accepted by this service")

    def principal(self, a: Assertion) -> Principal:
        return Principal(
            mode=self.mode, subject=a.first(SUBJECT_ID) or a.name_id, name_id=a.name_id, roles=a.codes(ROLE),
            organization=a.first(ORGANIZATION), organization_id=a.first(ORGANIZATION_ID),
            home_community_id=a.first(HOME_COMMUNITY_ID), purposes_of_use=a.codes(PURPOSE_OF_USE),
            patient_id=a.first(RESOURCE_ID), assertion_id=a.id, issuer=a.issuer, authn_context=a.authn_context,
            attributes=a.all_texts())


class NoSecurity:
    """security = none: who the caller is, as far as TLS says; wsse:Security is not processed here,
    so a mustUnderstand one is refused by the SOAP layer."""

    mode = "none"

    def authenticate(self, headers: list[etree._Element], peer_subject: str | None) -> Principal:
        if peer_subject:
            return Principal(mode="tls", subject=peer_subject, tls_subject=peer_subject)
        return Principal(mode="none")
