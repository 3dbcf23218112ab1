"""The French VIHF token (PROFILE.md Table F; checks C-2 to C-7, C-15, C-16): an XUA assertion with
the DMP's own attributes, signed by the structure (INDIRECTE) or carried unsigned by a CPS card's
TLS session (DIRECTE).

Attribute names are compared without case: the official samples write `Authentification_mode`,
the HL7 v2 guide `Authentification_Mode`.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import replace

from lxml import etree

from .principal import Principal
from .saml import NS_DS, PURPOSE_OF_USE, ROLE, SUBJECT_ID, Assertion, SecurityFault
from .xua import XuaAuthenticator, XuaConfig, find_assertion

F = SecurityFault

STRUCTURE = "identifiant_structure"
SECTOR = "secteur_activite"
VERSION = "vihf_version"
AUTH_MODE = "authentification_mode"
RESOURCE_URN = "ressource_urn"
CONFIDENTIALITY = "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code"
SOFTWARE = ("lps_nom", "lps_version")

VERSIONS = {"3.0", "4.0"}
MODES = {"DIRECTE", "INDIRECTE", "INDIRECTE_RENFORCEE"}
PURPOSES = {"normal", "bris_de_glace", "centre_15"}
# Professions whose first role must be followed by a specialty (Table F; TRE_G15 codes).
NEEDS_SECOND_ROLE = {"10": "physicians", "21": "pharmacists"}
_SECTOR = re.compile(r"^SA\d{2}\^1\.2\.250\.1\.71\.4\.2\.4$")
_X509_NAME = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"


def dn_parts(dn: str | None) -> frozenset[tuple[str, str]]:
    """A distinguished name as a set of (attribute, value) pairs, so that RFC 2253 order and spacing
    (the adapter's peer subject, a token's Issuer) do not decide equality."""
    parts = set()
    for piece in re.split(r"(?<!\\)[,+]", dn or ""):
        key, sep, value = piece.partition("=")
        if sep:
            parts.add((key.strip().upper(), value.strip()))
    return frozenset(parts)


class VihfAuthenticator(XuaAuthenticator):
    """security = vihf."""

    mode = "vihf"
    noun = "VIHF"
    issuer_format_required = False  # the unsigned DIRECTE checks its Format itself; a signed one may omit it
    required = "the DMP requires a VIHF token (saml2:Assertion) in wsse:Security"

    def __init__(self, config: XuaConfig, freshness: float = 600, now=None, proxy_same_subject: bool = False,
                 directory=None, replays=None):
        super().__init__(config, now, replays)
        self.directory = directory  # C-6 (xds/security/directory.py); None: not checked, said at start-up
        self.freshness = freshness
        # API-proxy flows (Table F, Issuer row): the TLS client and the token's signer are one certificate.
        self.proxy_same_subject = proxy_same_subject
        # C-4: a replay cache on Assertion/@ID; a VIHF is made for each request.
        self.config.refuse_replay = True

    def authenticate(self, headers: list[etree._Element], peer_subject: str | None) -> Principal:
        el = find_assertion(headers)
        if el is None:
            return self.without_assertion(peer_subject)
        now = self.now()
        if el.find(f"{{{NS_DS}}}Signature") is None:
            assertion = Assertion.read(el)
            self._unsigned_directe(assertion, peer_subject, relayed=peer_subject in self.config.card_relays)
        else:
            assertion, cert = self.signed(el, now)
            signer = dn_parts(cert.subject.rfc4514_string())
            if assertion.issuer_format == _X509_NAME and dn_parts(assertion.issuer) != signer:
                raise F(F.FAILED_AUTHENTICATION, "the VIHF's Issuer is not the subject of its signing certificate")
            if self.proxy_same_subject and dn_parts(peer_subject) != signer:
                raise F(F.FAILED_AUTHENTICATION, "the TLS client certificate is not the VIHF's signing certificate")
            if (assertion.first(AUTH_MODE) or "").upper() != "DIRECTE" and _authentication_only(cert):
                # C-3: a structure signs with its cachet (signature) certificate, never its authentication one.
                raise F(F.FAILED_AUTHENTICATION, "the VIHF is signed with an authentication certificate, not the "
                        "structure's signature (cachet) certificate")
        self.check_vihf(assertion, now)
        if self.directory is not None:
            self.directory.check(assertion.first(STRUCTURE), assertion.name_id)
        principal = self.principal(assertion)
        expires = assertion.not_on_or_after or _first_time(assertion) + _dt.timedelta(seconds=self.freshness)
        # A hop (a known system passing its caller's token on: the registry routing ITI-43) is not where the
        # token was first used; the replay cache belongs to the first receiver, as for XUA.
        if not (peer_subject and (self.config.is_system(peer_subject) or peer_subject in self.config.card_relays)):
            self.check_replay(principal, expires, now)
        return replace(principal, tls_subject=peer_subject)

    def _unsigned_directe(self, a: Assertion, peer_subject: str | None, relayed: bool = False) -> None:
        """An unsigned token stands only on the CPS card's TLS session: DIRECTE, and the card's
        certificate is the token's Issuer and names the NameID. relayed: passed on by a peer that checked
        that itself (a host's registry, routing ITI-43)."""
        mode = (a.first(AUTH_MODE) or "").upper()
        if mode != "DIRECTE":
            raise F(F.INVALID_TOKEN, "an unsigned VIHF is accepted only in Authentification_Mode DIRECTE")
        if relayed:
            return
        if not peer_subject:
            raise F(F.FAILED_AUTHENTICATION, "an unsigned VIHF needs the CPS card's client certificate on the "
                    "TLS connection")
        peer = dn_parts(peer_subject)
        if a.issuer_format != _X509_NAME or dn_parts(a.issuer) != peer:
            raise F(F.FAILED_AUTHENTICATION, "the unsigned VIHF's Issuer is not the TLS client certificate's subject")
        if ("CN", a.name_id or "") not in peer:
            raise F(F.FAILED_AUTHENTICATION, "the TLS client certificate does not name the VIHF's NameID")

    def check_vihf(self, a: Assertion, now: _dt.datetime) -> None:
        skew = _dt.timedelta(seconds=self.config.clock_skew)
        self.check_named(a)
        # C-4: Conditions when given, else IssueInstant and AuthnInstant within the freshness window.
        if a.has_conditions:
            self.check_window(a, now, skew)
        for when, what in ((a.issue_instant, "IssueInstant"), (a.authn_instant, "AuthnStatement/@AuthnInstant")):
            if when is None:
                raise F(F.INVALID_TOKEN, f"the VIHF has no {what}")
            if when > now + skew:
                raise F(F.FAILED_AUTHENTICATION, f"the VIHF's {what} is in the future")
            if not a.has_conditions and when < now - skew - _dt.timedelta(seconds=self.freshness):
                raise F(F.FAILED_AUTHENTICATION, f"the VIHF's {what} is older than {int(self.freshness)} s")
        if a.audiences is not None and not set(a.audiences) & set(self.config.audiences):
            raise F(F.FAILED_AUTHENTICATION, "the VIHF's AudienceRestriction does not name this service")
        if a.authn_statements != 1 or not a.authn_context:
            raise F(F.INVALID_TOKEN, "the VIHF needs one AuthnStatement with an AuthnContextClassRef")
        self._attributes(a)

    @staticmethod
    def _attributes(a: Assertion) -> None:
        # C-5: the mandatory attributes, and the values this server supports.
        missing = [n for n in (STRUCTURE, SECTOR, VERSION, AUTH_MODE, RESOURCE_URN, *SOFTWARE)
                   if not a.first(n)]
        if not a.codes(ROLE):
            missing.append(ROLE)
        if not a.codes(PURPOSE_OF_USE):
            missing.append(PURPOSE_OF_USE)
        if missing:
            raise F(F.INVALID_TOKEN, f"the VIHF lacks the attributes {', '.join(missing)}")
        mode = a.first(AUTH_MODE).upper()
        if mode not in MODES:
            raise F(F.INVALID_TOKEN, f"Authentification_Mode must be one of {', '.join(sorted(MODES))}")
        if mode != "DIRECTE" and not a.first(SUBJECT_ID):
            raise F(F.INVALID_TOKEN, f"the VIHF lacks {SUBJECT_ID}, required in {mode} mode")
        if a.first(VERSION) not in VERSIONS:
            raise F(F.INVALID_TOKEN, f"VIHF_Version must be one of {', '.join(sorted(VERSIONS))}")
        if a.first(RESOURCE_URN) != "urn:dmp":
            raise F(F.INVALID_TOKEN, "Ressource_URN must be urn:dmp")
        if not _SECTOR.match(a.first(SECTOR)):
            raise F(F.INVALID_TOKEN, "Secteur_Activite must be a code of 1.2.250.1.71.4.2.4 (SAxx^1.2.250.1.71.4.2.4)")
        purposes = {p.code for p in a.codes(PURPOSE_OF_USE)}
        if len(purposes) != 1 or not purposes <= PURPOSES:
            raise F(F.INVALID_TOKEN, f"the purpose of use must be one of {', '.join(sorted(PURPOSES))}")
        if "bris_de_glace" in purposes and mode != "DIRECTE":
            raise F(F.FAILED_AUTHENTICATION, "break-the-glass access (bris_de_glace) is allowed only in DIRECTE mode")
        # C-7: the profession first, then the specialty where the profession needs one.
        roles = a.codes(ROLE)
        need = NEEDS_SECOND_ROLE.get(roles[0].code)
        if need and len(roles) < 2:
            raise F(F.INVALID_TOKEN, f"the VIHF of {need} must carry a second role (the specialty)")
        # C-15: connexion secrète has one value only; the patient's age is the access policy's question.
        secret = a.texts(CONFIDENTIALITY)
        if secret and set(secret) != {"INVISIBLE_REPRESENTANTS_LEGAUX"}:
            raise F(F.INVALID_TOKEN, "the confidentiality-code attribute may only be INVISIBLE_REPRESENTANTS_LEGAUX")
        # resource-id is compared with the body's patient by the access policy (C-9), not here.

    def principal(self, a: Assertion) -> Principal:
        base = super().principal(a)
        mode = (a.first(AUTH_MODE) or "").upper()
        return replace(base, mode=f"vihf:{mode}", organization_id=a.first(STRUCTURE))


def _authentication_only(cert) -> bool:
    """A certificate whose key usage is for authentication (key encipherment) and not for signing
    content (non-repudiation): IGC-Santé's ORG_AUTH kind. Without the extension nothing is known."""
    from cryptography import x509

    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return usage.key_encipherment and not usage.content_commitment


def _first_time(a: Assertion) -> _dt.datetime:
    times = [t for t in (a.issue_instant, a.authn_instant) if t is not None]
    return min(times)
