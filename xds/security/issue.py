"""The issuing side: SAML 2.0 assertions for IHE XUA (ITI TF-2 3.40.4.1, ITI TF-1 39) and the French
VIHF (testkits/dmp PROFILE.md Table F), signed by a local key, for development, tests and conformance
labs that have no Gazelle STS; and the client of a WS-Trust 1.3 STS (request_token).

An assertion is signed once and from then on only serialized as it is. Pretty-printing it, stripping
or re-indenting its whitespace, or parsing it with a parser that drops blank text changes the bytes
the signature covers; moving it into another document is harmless, because exclusive c14n signs the
element without its ancestors' namespace declarations.

The test users of the Gazelle STS (the NIST test kit's XUA tests name them by their suffix:
11897_expired, 11990_secondrole, ...) are the names of VARIANTS below.
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from .. import constants as C
from .. import soap
from ..xmlsafe import parse as safe_parse

NS_SAML2 = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_DS = "http://www.w3.org/2000/09/xmldsig#"
NS_HL7 = "urn:hl7-org:v3"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_XS = "http://www.w3.org/2001/XMLSchema"
NS_WSSE = soap.NS_WSSE
NS_WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
NS_WST = "http://docs.oasis-open.org/ws-sx/ws-trust/200512"
# WS-Trust 1.3's schema imports WS-Policy 1.2 for AppliesTo; clients also send WS-Policy 1.5's.
NS_WSP = "http://schemas.xmlsoap.org/ws/2004/09/policy"
NS_WSP15 = "http://www.w3.org/ns/ws-policy"
# WS-Federation 1.2 authorization claims: how a client asks for a resource-id (the patient).
NS_AUTH = "http://docs.oasis-open.org/wsfed/authorization/200706"

SAML2_TOKEN_TYPE = "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLV2.0"
SAML2_TOKEN_TYPES = {SAML2_TOKEN_TYPE, NS_SAML2}
SAML2_SAMLID = "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLID"
REQUEST_ISSUE = NS_WST + "/Issue"
ACTION_ISSUE = NS_WST + "/RST/Issue"
ACTION_ISSUE_FINAL = NS_WST + "/RSTRC/IssueFinal"
PASSWORD_TEXT = ("http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
                 "#PasswordText")
PASSWORD_DIGEST = ("http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
                   "#PasswordDigest")
DEFAULT_PASSWORD = "connectathon"  # the Gazelle STS's, for every test user

# The audiences of the Connectathon (the Gazelle STS's X-Service Provider, and its unknownaudience one).
DEFAULT_AUDIENCE = "http://ihe.connectathon.XUA/X-ServiceProvider-IHE-Connectathon"
UNKNOWN_AUDIENCE = "http://ihe.unknown.xua/X-ServiceProvider-IHE-Unknown"

NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NAMEID_X509 = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
ATTRNAME_URI = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"

AC_PASSWORD_PROTECTED = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
AC_INTERNET_PROTOCOL = "urn:oasis:names:tc:SAML:2.0:ac:classes:InternetProtocol"
AC_SMARTCARD = "urn:oasis:names:tc:SAML:2.0:ac:classes:SmartcardPKI"
AC_UNSPECIFIED = "urn:oasis:names:tc:SAML:2.0:ac:classes:unspecified"
AC_INVALID = "urn:oasis:names:tc:SAML:2.0:ac:classes:Invalid"  # not a SAML class: Gazelle's bad one

# XUA attribute names (ITI TF-2 3.40.4.1.2) and the Authz-Consent option's (BPPC).
SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
ORGANIZATION = "urn:oasis:names:tc:xspa:1.0:subject:organization"
ORGANIZATION_ID = "urn:oasis:names:tc:xspa:1.0:subject:organization-id"
HOME_COMMUNITY_ID = "urn:ihe:iti:xca:2010:homeCommunityId"
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
PURPOSE_OF_USE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
BPPC_DOCID = "urn:ihe:iti:bppc:2007:docid"
# VIHF attribute names (Table F), spelled as the ANS guide spells them.
VIHF_STRUCTURE = "Identifiant_Structure"
VIHF_SECTOR = "Secteur_Activite"
VIHF_VERSION = "VIHF_Version"
VIHF_AUTH_MODE = "Authentification_Mode"
VIHF_RESOURCE_URN = "Ressource_URN"
VIHF_CONFIDENTIALITY = "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code"
VIHF_LPS_ID = "LPS_ID"
VIHF_LPS_NAME = "LPS_Nom"
VIHF_LPS_VERSION = "LPS_Version"
VIHF_LPS_HOMOLOGATION = "LPS_ID_HOMOLOGATION_DMP"

SNOMED_CT = "2.16.840.1.113883.6.96"
NHIN_PURPOSE = "2.16.840.1.113883.3.18.7.1"
VIHF_PURPOSE_SYSTEM = "1.2.250.1.213.1.1.4.248"

PROFILES = ("xua", "vihf")


@dataclass(frozen=True)
class CE:
    """An HL7 v3 coded value (xsi:type CE), the form of the role and purpose-of-use values."""

    code: str
    system: str | None = None
    system_name: str | None = None
    display: str | None = None


# The Gazelle STS's two levels of role and purpose of use: the first is what the Connectathon's
# services accept, the second ("secondrole", "secondpurposeofuse") what their policy refuses.
ROLE_MEDICAL_DOCTOR = CE("112247003", SNOMED_CT, "SNOMED_CT", "Medical doctor")
ROLE_SOCIAL_WORKER = CE("106328005", SNOMED_CT, "SNOMED_CT", "Social worker")
POU_TREATMENT = CE("TREATMENT", NHIN_PURPOSE, "nhin-purpose", "Treatment")
POU_RESEARCH = CE("RESEARCH", NHIN_PURPOSE, "nhin-purpose", "Research")
XUA_PURPOSES = {"TREATMENT": POU_TREATMENT, "RESEARCH": POU_RESEARCH,
                "EMERGENCY": CE("EMERGENCY", NHIN_PURPOSE, "nhin-purpose", "Emergency Treatment"),
                "PUBLICHEALTH": CE("PUBLICHEALTH", NHIN_PURPOSE, "nhin-purpose", "Public Health")}

# The VIHF's: a general practitioner (profession TRE_G15 then RPPS specialty, as the official samples).
VIHF_PHYSICIAN = CE("10", "1.2.250.1.71.1.2.7", "professions", "Médecin")
VIHF_GENERAL_PRACTICE = CE("SM26", "1.2.250.1.71.4.2.5", "specialites RPPS", "Qualifié en Médecine Générale (SM)")
VIHF_PURPOSES = {
    "normal": CE("normal", VIHF_PURPOSE_SYSTEM, "mode acces VIHF 2.0", "Accès normal"),
    "bris_de_glace": CE("bris_de_glace", VIHF_PURPOSE_SYSTEM, "mode acces VIHF 2.0", "Accès en mode bris de glace"),
    "centre_15": CE("centre_15", VIHF_PURPOSE_SYSTEM, "mode acces VIHF 2.0", "Accès en mode centre de régulation"),
}
VIHF_MODES = ("DIRECTE", "INDIRECTE", "INDIRECTE_RENFORCEE")
# A card (CPS) behind DIRECTE and RENFORCEE; a structure's own login behind plain INDIRECTE, as in the
# ANS automated-sender example.
_VIHF_AUTHN = {"DIRECTE": AC_SMARTCARD, "INDIRECTE": AC_UNSPECIFIED, "INDIRECTE_RENFORCEE": AC_SMARTCARD}

# Defaults: test identities only (the 1.2.250.1.999 arc this project's tests use; the DMP samples'
# test RPPS, structure and sector).
XUA_ORGANIZATION = "XDS test organization"
XUA_ORGANIZATION_ID = "urn:oid:1.2.250.1.999.1"
XUA_HOME_COMMUNITY_ID = "urn:oid:1.2.250.1.999.2"
CONSENT_DOCUMENT_ID = "urn:oid:1.2.250.1.999.3.1"
CONSENT_PATIENT_ID = "IHEXUA-1^^^&1.2.250.1.999.4&ISO"
VIHF_NAME_ID = "899900063480"
VIHF_STRUCTURE_ID = "499900063480001"
VIHF_SECTOR_CODE = "SA07^1.2.250.1.71.4.2.4"
VIHF_SOFTWARE = ("xds-sts", "0.1.0", "TEST-HOMOLOGATION")  # LPS_Nom, LPS_Version, LPS_ID_HOMOLOGATION_DMP

_DEFAULT = object()  # "the issuer's default", where None means "none at all"


def _ce(value) -> CE:
    if isinstance(value, CE):
        return value
    if isinstance(value, str):
        return CE(value)
    return CE(*value)


# --- what an assertion will say, before it is XML ------------------------------------------------------


@dataclass
class Draft:
    """The content of one assertion; a variant changes it before it is built (adjust), the element
    before it is signed (before_signing) or after (after_signing)."""

    profile: str
    now: _dt.datetime
    validity: _dt.timedelta
    id: str | None
    issue_instant: _dt.datetime | str | None
    issuer: str | None
    issuer_format: str | None
    subject: str
    name_id_format: str | None
    bearer: bool
    not_before: _dt.datetime | None
    not_on_or_after: _dt.datetime | None
    audience: str | None
    authn_instant: _dt.datetime | None
    authn_context: str | None
    attributes: list[tuple[str, list]] = field(default_factory=list)  # (Name, [str | CE]) in order
    signed: bool = True

    def set_attribute(self, name: str, values) -> None:
        """Replace the attribute of that name (compared without case, as verifiers do), else add it."""
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        for i, (existing, _) in enumerate(self.attributes):
            if existing.lower() == name.lower():
                self.attributes[i] = (existing, values)
                return
        self.attributes.append((name, values))

    def drop_attribute(self, name: str) -> None:
        self.attributes = [(n, v) for n, v in self.attributes if n.lower() != name.lower()]


@dataclass(frozen=True)
class Variant:
    name: str
    meaning: str
    source: str
    # What a conforming service does with it: "accepted", "refused", or "refused by policy" (a service
    # refuses it only when configured to: allowed roles, purposes of use, authentication contexts).
    outcome: str
    profile: str | None = None                       # the profile the variant implies, if any
    adjust: Callable[[Draft], None] | None = None
    before_signing: Callable[[etree._Element], None] | None = None
    after_signing: Callable[[etree._Element], None] | None = None


def _shift_past(d: Draft) -> None:
    # An hour beyond any verifier's clock skew; the whole lifetime in the past.
    end = d.now - _dt.timedelta(hours=1)
    d.issue_instant = d.authn_instant = d.not_before = end - d.validity
    d.not_on_or_after = end


def _shift_future(d: Draft) -> None:
    d.not_before = d.now + _dt.timedelta(hours=1)
    d.not_on_or_after = d.not_before + d.validity


def _unsigned(d: Draft) -> None:
    d.signed = False


def _authn(ref: str) -> Callable[[Draft], None]:
    def adjust(d: Draft) -> None:
        d.authn_context = ref
    return adjust


def _attribute(name: str, values) -> Callable[[Draft], None]:
    def adjust(d: Draft) -> None:
        d.set_attribute(name, values)
    return adjust


def _consent(d: Draft) -> None:
    d.set_attribute(BPPC_DOCID, CONSENT_DOCUMENT_ID)
    if not any(n.lower() == RESOURCE_ID for n, _ in d.attributes):
        d.set_attribute(RESOURCE_ID, CONSENT_PATIENT_ID)


def _vihf_mode(mode: str) -> Callable[[Draft], None]:
    def adjust(d: Draft) -> None:
        d.set_attribute(VIHF_AUTH_MODE, mode)
    return adjust


def _set(path: str, name: str, value: str | None) -> Callable[[etree._Element], None]:
    """Set (value) or remove (None) an XML attribute of the element at path ("." is the assertion)."""
    def change(el: etree._Element) -> None:
        target = el if path == "." else el.find(path, {"saml2": NS_SAML2, "ds": NS_DS})
        if target is None:
            return
        if value is None:
            target.attrib.pop(name, None)
        else:
            target.set(name, value)
    return change


def _remove(path: str) -> Callable[[etree._Element], None]:
    def change(el: etree._Element) -> None:
        target = el.find(path, {"saml2": NS_SAML2, "ds": NS_DS})
        if target is not None:
            target.getparent().remove(target)
    return change


def _break_signature(el: etree._Element) -> None:
    # The signature stays well-formed base64 of the right length; only its value is wrong.
    value = el.find(f"{{{NS_DS}}}Signature/{{{NS_DS}}}SignatureValue")
    raw = bytearray(base64.b64decode("".join(value.text.split())))
    raw[len(raw) // 2] ^= 0x01
    value.text = base64.b64encode(bytes(raw)).decode()


def _late_issue(d: Draft) -> None:
    d.issue_instant = d.now + _dt.timedelta(days=365 * 100)


def _v(name, meaning, source, outcome, **kw) -> tuple[str, Variant]:
    return name, Variant(name, meaning, source, outcome, **kw)


_GAZELLE = "Gazelle STS (net.ihe.gazelle.sts: AssertionProfile, IHESAML20TokenProvider)"
_GAZELLE_ATTR = "Gazelle STS (IHESAML20TokenAttributeProvider; validation rules in IHESAML20TokenProvider)"
_KIT = "NIST test kit (testkit/tests/*_<name>: ExpectedStatus Fault)"

VARIANTS: dict[str, Variant] = dict([
    # The test kit's XUA users (11897_*, 11966_*, 11990_*).
    _v("valid", "a well-formed, signed, currently valid assertion for the requested audience",
       _GAZELLE, "accepted"),
    _v("expired", "Conditions NotBefore..NotOnOrAfter wholly in the past (NotOnOrAfter an hour ago); "
       "IssueInstant and AuthnInstant at its start", f"{_GAZELLE}; {_KIT}", "refused", adjust=_shift_past),
    _v("notyetvalid", "Conditions/@NotBefore an hour in the future", f"{_GAZELLE}; {_KIT}", "refused",
       adjust=_shift_future),
    _v("unsigned", "no ds:Signature at all", f"{_GAZELLE}; {_KIT}", "refused", adjust=_unsigned),
    _v("unknownaudience", f"AudienceRestriction/Audience is {UNKNOWN_AUDIENCE}, whatever AppliesTo asked for",
       f"{_GAZELLE} (UNKNOWN_AUDIENCE); {_KIT}", "refused", adjust=lambda d: setattr(d, "audience", UNKNOWN_AUDIENCE)),
    _v("invalidauthnstatement", f"AuthnContextClassRef is {AC_INVALID}, which names no SAML authentication "
       "context (Gazelle's 'invalid AuthnStatement parameter'; its current user name is invalidauthncontext)",
       f"{_GAZELLE} (INVALID_AUTHN_CONTEXT_CLASS_REF); {_KIT}", "refused", adjust=_authn(AC_INVALID)),
    _v("secondauthncontext", f"AuthnContextClassRef is {AC_INTERNET_PROTOCOL}, which the Connectathon policy "
       "says is not an acceptable authentication", f"{_GAZELLE} (SECOND_AUTHN_CONTEXT_CLASS_REF); {_KIT}",
       "refused by policy", adjust=_authn(AC_INTERNET_PROTOCOL)),
    _v("secondpurposeofuse", "purpose of use RESEARCH (nhin-purpose), the second level, which gives no access",
       f"{_GAZELLE_ATTR}; {_KIT}", "refused by policy", adjust=_attribute(PURPOSE_OF_USE, [POU_RESEARCH])),
    _v("secondrole", f"one role, Social worker (SNOMED CT {ROLE_SOCIAL_WORKER.code}), the second level, which "
       "gives no access", f"{_GAZELLE_ATTR}; SNOMED CT code as in the XSPA role value set; {_KIT}",
       "refused by policy", adjust=_attribute(ROLE, [ROLE_SOCIAL_WORKER])),
    _v("withauthzconsent", f"XUA Authz-Consent option: adds {BPPC_DOCID} (the consent document, "
       f"{CONSENT_DOCUMENT_ID}) and {RESOURCE_ID} (the patient given, else {CONSENT_PATIENT_ID})",
       f"{_GAZELLE_ATTR} (WITH_AUTHZ_CONSENT); {_KIT} (ExpectedStatus Success)", "accepted", adjust=_consent),
    # Gazelle STS users the kit does not name, for the verifier's own tests.
    _v("invalidauthncontext", "as invalidauthnstatement (Gazelle's current name for it)", _GAZELLE, "refused",
       adjust=_authn(AC_INVALID)),
    _v("invalidsignature", "signed, then one bit of SignatureValue flipped", _GAZELLE, "refused",
       after_signing=_break_signature),
    _v("missingkeyinfo", "signed, then ds:KeyInfo removed (no certificate to check it with)", _GAZELLE, "refused",
       after_signing=_remove("ds:Signature/ds:KeyInfo")),
    _v("invalidversion", "Version 1.9", _GAZELLE, "refused", before_signing=_set(".", "Version", "1.9")),
    _v("missingversion", "no Version", _GAZELLE, "refused", before_signing=_set(".", "Version", None)),
    _v("missingid", "no ID (the signature's Reference URI is then \"\")", _GAZELLE, "refused",
       adjust=lambda d: setattr(d, "id", None)),
    _v("missingissuer", "no saml2:Issuer", _GAZELLE, "refused", before_signing=_remove("saml2:Issuer")),
    _v("missingissuerformat", "saml2:Issuer without Format", _GAZELLE, "refused",
       before_signing=_set("saml2:Issuer", "Format", None)),
    _v("missingissueinstant", "no IssueInstant", _GAZELLE, "refused",
       before_signing=_set(".", "IssueInstant", None)),
    _v("invalidissueinstant", "IssueInstant 'testIssueInstant' (not an xs:dateTime)", _GAZELLE, "refused",
       adjust=lambda d: setattr(d, "issue_instant", "testIssueInstant")),
    _v("lateissueinstant", "IssueInstant a century in the future", _GAZELLE, "refused", adjust=_late_issue),
    _v("missingsubject", "no saml2:Subject", _GAZELLE, "refused", before_signing=_remove("saml2:Subject")),
    _v("missingsubjectnameid", "saml2:Subject without NameID", _GAZELLE, "refused",
       before_signing=_remove("saml2:Subject/saml2:NameID")),
    _v("missingsubjectconfirmation", "saml2:Subject without SubjectConfirmation", _GAZELLE, "refused",
       before_signing=_remove("saml2:Subject/saml2:SubjectConfirmation")),
    _v("missingsubjectconfirmationmethod", "SubjectConfirmation without Method", _GAZELLE, "refused",
       before_signing=_set("saml2:Subject/saml2:SubjectConfirmation", "Method", None)),
    _v("invalidsubjectnameidformat", "NameID Format 'testFormat' (not a URI)", _GAZELLE, "refused",
       adjust=lambda d: setattr(d, "name_id_format", "testFormat")),
    # The VIHF's three authentication modes (Table F; the DMP example pack's Exemples Jeton VIHF).
    _v("directe", "VIHF, Authentification_Mode DIRECTE: the professional's own card (AuthnContext SmartcardPKI); "
       "the official samples carry it signed by the card, or unsigned on the card's TLS session (here: signed "
       "by this issuer's key; signed=False or `xds sts token --unsigned` for the unsigned form)",
       "DMP example pack VIHF_DIRECTE_signe.xml / _non_signe.xml; PROFILE.md Table F", "accepted",
       profile="vihf", adjust=_vihf_mode("DIRECTE")),
    _v("indirecte", "VIHF, Authentification_Mode INDIRECTE: signed by the structure's certificate for a "
       "user it authenticated itself (AuthnContext unspecified)",
       "DMP example pack VIHF_INDIRECTE_signe.xml; ANS automated-sender example; PROFILE.md Table F",
       "accepted", profile="vihf", adjust=_vihf_mode("INDIRECTE")),
    _v("indirecte_renforcee", "VIHF, Authentification_Mode INDIRECTE_RENFORCEE: signed by the structure for a "
       "user authenticated strongly (AuthnContext SmartcardPKI)",
       "DMP example pack VIHF_INDIRECTE_RENFORCEE_signe.xml; PROFILE.md Table F", "accepted",
       profile="vihf", adjust=_vihf_mode("INDIRECTE_RENFORCEE")),
])

# The test kit's own user names (its XUA tests are <test>_<user>).
KIT_VARIANTS = ("valid", "expired", "notyetvalid", "unsigned", "unknownaudience", "invalidauthnstatement",
                "secondauthncontext", "secondpurposeofuse", "secondrole", "withauthzconsent")


def variant(name: str) -> Variant:
    """The variant a user name asks for: exactly, or without case, or before an @domain (as Gazelle
    reads a subject)."""
    key = name.split("@", 1)[0]
    found = VARIANTS.get(key) or VARIANTS.get(key.lower())
    if found is None:
        raise KeyError(name)
    return found


# --- the issuer ----------------------------------------------------------------------------------------


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _xs_time(t: _dt.datetime) -> str:
    t = t.astimezone(_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _read(source) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    with open(os.fspath(source), "rb") as f:
        return f.read()


def _issuer_format(name: str) -> str:
    """Gazelle's rule: an e-mail address, a distinguished name, or else unspecified."""
    if re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", name):
        return NAMEID_EMAIL
    if re.fullmatch(r"\s*[A-Za-z][\w.]*\s*=.*", name):
        return NAMEID_X509
    return NAMEID_UNSPECIFIED


class Issuer:
    """Signs assertions with one key and certificate (PEM paths, PEM bytes, or loaded objects; loaded
    once). name: the Issuer of XUA assertions (default: the certificate's subject DN; a VIHF's Issuer is
    always that DN, Table F). audience: the default AudienceRestriction of XUA assertions (None: none).
    sha1: sign with RSA-SHA1/SHA-1 as the older French tokens do (verifiers must be told to accept it)."""

    def __init__(self, key, cert, *, name: str | None = None, audience: str | None = DEFAULT_AUDIENCE,
                 validity: _dt.timedelta | float = _dt.timedelta(hours=1),
                 clock: Callable[[], _dt.datetime] | None = None, sha1: bool = False):
        self._key_source, self._cert_source = key, cert
        self._key = key if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else None
        self._cert = cert if isinstance(cert, x509.Certificate) else None
        self._lock = threading.Lock()
        self._name = name
        self.audience = audience
        self.validity = validity if isinstance(validity, _dt.timedelta) else _dt.timedelta(seconds=validity)
        self.clock = clock or _utc_now
        self.sha1 = sha1

    @property
    def key(self):
        if self._key is None:
            with self._lock:
                if self._key is None:
                    key = serialization.load_pem_private_key(_read(self._key_source), password=None)
                    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
                        raise ValueError("the signing key must be an RSA or EC private key")
                    self._key = key
        return self._key

    @property
    def certificate(self) -> x509.Certificate:
        if self._cert is None:
            with self._lock:
                if self._cert is None:
                    self._cert = x509.load_pem_x509_certificate(_read(self._cert_source))
        return self._cert

    @property
    def subject_dn(self) -> str:
        """The certificate's subject as an RFC 4514 (RFC 2253) string, most specific part first."""
        return self.certificate.subject.rfc4514_string()

    @property
    def name(self) -> str:
        return self._name or self.subject_dn

    def issue(self, variant_name: str = "valid", *, profile: str | None = None, subject: str | None = None,
              subject_name: str | None = None, roles: Sequence | None = None,
              purpose_of_use=None, organization: str | None = None, organization_id: str | None = None,
              home_community_id: str | None = None, patient_id: str | None = None,
              audience=_DEFAULT, authn_context: str | None = None, signed: bool | None = None,
              structure_id: str | None = None, activity_sector: str | None = None,
              authentication_mode: str | None = None, vihf_version: str = "3.0",
              software: tuple[str, str, str] | None = None, software_id: str | None = None,
              confidentiality_code: str | None = None,
              attributes: Mapping[str, object] | None = None) -> etree._Element:
        """One saml2:Assertion, signed unless the variant (or signed=False) says otherwise.

        profile: "xua" (the default) or "vihf"; the VIHF variants imply vihf. subject: the NameID (XUA:
        the user name, as Gazelle does; VIHF: the professional's IdNat_PS). subject_name: the subject-id
        attribute (default: subject). roles and purpose_of_use: CE values, or (code, system, system name,
        display) tuples, or codes (a purpose-of-use code of the profile's table: TREATMENT, normal,
        bris_de_glace, ...). patient_id: the resource-id (a CX). audience: the AudienceRestriction
        (default: the issuer's for XUA, none for the VIHF; None: none). attributes: more attributes,
        by Name, each a value or a list of them; one with the Name of a built attribute replaces it.
        """
        v = variant(variant_name)
        if profile is None:
            profile = v.profile or "xua"
        if profile not in PROFILES:
            raise ValueError(f"profile must be xua or vihf, not {profile!r}")
        if v.profile and v.profile != profile:
            raise ValueError(f"variant {v.name} is a {v.profile.upper()} variant, not {profile.upper()}")
        draft = self._draft(profile, v.name, subject, subject_name, roles, purpose_of_use, organization,
                            organization_id, home_community_id, patient_id, audience, authn_context,
                            structure_id, activity_sector, authentication_mode, vihf_version, software,
                            software_id, confidentiality_code)
        if v.adjust:
            v.adjust(draft)
        if profile == "vihf":
            mode = next(vals[0] for n, vals in draft.attributes if n == VIHF_AUTH_MODE)
            if authn_context is None and draft.authn_context in _VIHF_AUTHN.values():
                draft.authn_context = _VIHF_AUTHN[mode]
            if mode == "DIRECTE" and subject_name is None:
                draft.drop_attribute(SUBJECT_ID)  # as the DIRECTE samples: the card names the user
        for name, value in (attributes or {}).items():
            draft.set_attribute(name, value)
        if signed is not None:
            draft.signed = signed
        el = build(draft)
        if v.before_signing:
            v.before_signing(el)
        if draft.signed:
            el = self.sign(el)
            if v.after_signing:
                v.after_signing(el)
        return el

    def _draft(self, profile, user, subject, subject_name, roles, purpose_of_use, organization,
               organization_id, home_community_id, patient_id, audience, authn_context, structure_id,
               activity_sector, authentication_mode, vihf_version, software, software_id,
               confidentiality_code) -> Draft:
        now = self.clock()
        xua = profile == "xua"
        if audience is _DEFAULT:
            audience = self.audience if xua else None
        if xua:
            issuer, issuer_format = self.name, _issuer_format(self.name)
            subject = subject or user
        else:
            issuer, issuer_format = self.subject_dn, NAMEID_X509
            subject = subject or VIHF_NAME_ID
        d = Draft(profile=profile, now=now, validity=self.validity, id="_" + uuid.uuid4().hex,
                  issue_instant=now, issuer=issuer, issuer_format=issuer_format, subject=subject,
                  name_id_format=NAMEID_UNSPECIFIED if xua else None, bearer=xua, not_before=now,
                  not_on_or_after=now + self.validity, audience=audience, authn_instant=now,
                  authn_context=authn_context or (AC_PASSWORD_PROTECTED if xua else AC_UNSPECIFIED))
        purposes = _purposes(purpose_of_use, XUA_PURPOSES if xua else VIHF_PURPOSES,
                             [POU_TREATMENT] if xua else [VIHF_PURPOSES["normal"]])
        if isinstance(roles, (CE, str)):
            roles = [roles]
        roles = [_ce(r) for r in roles] if roles is not None else (
            [ROLE_MEDICAL_DOCTOR] if xua else [VIHF_PHYSICIAN, VIHF_GENERAL_PRACTICE])
        if xua:
            d.set_attribute(SUBJECT_ID, subject_name or subject)
            d.set_attribute(ORGANIZATION, organization or XUA_ORGANIZATION)
            d.set_attribute(ORGANIZATION_ID, organization_id or XUA_ORGANIZATION_ID)
            d.set_attribute(HOME_COMMUNITY_ID, home_community_id or XUA_HOME_COMMUNITY_ID)
            d.set_attribute(ROLE, roles)
            d.set_attribute(PURPOSE_OF_USE, purposes)
            if patient_id:
                d.set_attribute(RESOURCE_ID, patient_id)
            return d
        mode = (authentication_mode or "INDIRECTE").upper()
        if mode not in VIHF_MODES:
            raise ValueError(f"Authentification_Mode must be one of {', '.join(VIHF_MODES)}, not {mode!r}")
        name, version, homologation = software or VIHF_SOFTWARE
        d.set_attribute(VIHF_STRUCTURE, structure_id or VIHF_STRUCTURE_ID)
        d.set_attribute(VIHF_SECTOR, activity_sector or VIHF_SECTOR_CODE)
        d.set_attribute(SUBJECT_ID, subject_name or subject)
        d.set_attribute(ROLE, roles)
        d.set_attribute(VIHF_VERSION, vihf_version)
        d.set_attribute(VIHF_AUTH_MODE, mode)
        if patient_id:
            d.set_attribute(RESOURCE_ID, patient_id)
        d.set_attribute(VIHF_RESOURCE_URN, "urn:dmp")
        d.set_attribute(PURPOSE_OF_USE, purposes)
        if confidentiality_code:
            d.set_attribute(VIHF_CONFIDENTIALITY, confidentiality_code)
        if software_id:
            d.set_attribute(VIHF_LPS_ID, software_id)
        d.set_attribute(VIHF_LPS_NAME, name)
        d.set_attribute(VIHF_LPS_VERSION, version)
        d.set_attribute(VIHF_LPS_HOMOLOGATION, homologation)
        return d

    def sign(self, el: etree._Element) -> etree._Element:
        """Enveloped XML-DSig of the assertion: exclusive c14n, RSA-SHA256 (ECDSA-SHA256 for an EC key;
        SHA-1 with sha1), SHA-256 digest, Reference to #ID, the certificate in KeyInfo/X509Data. The
        ds:Signature goes right after saml2:Issuer, where the SAML 2.0 assertion schema puts it.
        Returns a new element."""
        from signxml import DigestAlgorithm, SignatureMethod, XMLSigner
        from signxml.algorithms import CanonicalizationMethod, SignatureConstructionMethod

        rsa_key = isinstance(self.key, rsa.RSAPrivateKey)
        if self.sha1:
            method = SignatureMethod.RSA_SHA1 if rsa_key else SignatureMethod.ECDSA_SHA1
            digest = DigestAlgorithm.SHA1
        else:
            method = SignatureMethod.RSA_SHA256 if rsa_key else SignatureMethod.ECDSA_SHA256
            digest = DigestAlgorithm.SHA256
        signer = (_sha1_signer if self.sha1 else XMLSigner)(
            method=SignatureConstructionMethod.enveloped, signature_algorithm=method, digest_algorithm=digest,
            c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0)
        if el.find(f"{{{NS_DS}}}Signature") is None:
            _placeholder(el)
        return signer.sign(el, key=self.key, cert=[self.certificate], id_attribute="ID")


def _purposes(value, table: dict[str, CE], default: list[CE]) -> list[CE]:
    """A purpose of use, or a list of them: each a code of the profile's table, a CE, or a tuple."""
    if value is None:
        return default
    values = value if isinstance(value, list) else [value]
    return [table.get(v, CE(v)) if isinstance(v, str) else _ce(v) for v in values]


_sha1_signer_class = None


def _sha1_signer(**kwargs):
    global _sha1_signer_class
    if _sha1_signer_class is None:
        from signxml import XMLSigner

        class Sha1Signer(XMLSigner):
            # signxml refuses SHA-1 by default; the older French tokens are signed with it, and a
            # verifier's tests need such tokens.
            def check_deprecated_methods(self):
                return None

        _sha1_signer_class = Sha1Signer
    return _sha1_signer_class(**kwargs)


def _placeholder(el: etree._Element) -> None:
    issuer = el.find(f"{{{NS_SAML2}}}Issuer")
    ph = etree.Element(f"{{{NS_DS}}}Signature", {"Id": "placeholder"}, nsmap={"ds": NS_DS})
    if issuer is not None:
        issuer.addnext(ph)
    else:
        el.insert(0, ph)


# --- the XML ---------------------------------------------------------------------------------------


def _q(local: str) -> str:
    return f"{{{NS_SAML2}}}{local}"


def build(d: Draft) -> etree._Element:
    """The unsigned saml2:Assertion of a draft (a ds:Signature placeholder after the Issuer when it is
    to be signed)."""
    a = etree.Element(_q("Assertion"), nsmap={"saml2": NS_SAML2, "xsi": NS_XSI})
    if d.id:
        a.set("ID", d.id)
    if d.issue_instant is not None:
        a.set("IssueInstant", d.issue_instant if isinstance(d.issue_instant, str) else _xs_time(d.issue_instant))
    a.set("Version", "2.0")
    if d.issuer is not None:
        issuer = etree.SubElement(a, _q("Issuer"))
        if d.issuer_format:
            issuer.set("Format", d.issuer_format)
        issuer.text = d.issuer
    if d.signed:
        _placeholder(a)
    subject = etree.SubElement(a, _q("Subject"))
    name_id = etree.SubElement(subject, _q("NameID"))
    if d.name_id_format:
        name_id.set("Format", d.name_id_format)
    name_id.text = d.subject
    if d.bearer:
        etree.SubElement(subject, _q("SubjectConfirmation"), Method=BEARER)
    if d.not_before or d.not_on_or_after or d.audience:
        conditions = etree.SubElement(a, _q("Conditions"))
        if d.not_before:
            conditions.set("NotBefore", _xs_time(d.not_before))
        if d.not_on_or_after:
            conditions.set("NotOnOrAfter", _xs_time(d.not_on_or_after))
        if d.audience:
            restriction = etree.SubElement(conditions, _q("AudienceRestriction"))
            etree.SubElement(restriction, _q("Audience")).text = d.audience
    statement = etree.SubElement(a, _q("AuthnStatement"))
    if d.authn_instant:
        statement.set("AuthnInstant", _xs_time(d.authn_instant))
    if d.authn_context:
        context = etree.SubElement(statement, _q("AuthnContext"))
        etree.SubElement(context, _q("AuthnContextClassRef")).text = d.authn_context
    if d.attributes:
        attributes = etree.SubElement(a, _q("AttributeStatement"))
        for name, values in d.attributes:
            attr = etree.SubElement(attributes, _q("Attribute"), Name=name)
            if d.profile == "xua":
                attr.set("NameFormat", ATTRNAME_URI)  # XUA's names are URIs; the VIHF's are not
            for value in values:
                _attribute_value(attr, name, value)
    return a


def _attribute_value(attr: etree._Element, name: str, value) -> None:
    if isinstance(value, CE):
        av = etree.SubElement(attr, _q("AttributeValue"))
        local = "PurposeOfUse" if name.lower() == PURPOSE_OF_USE else "Role"
        # The HL7 element in the default namespace, as XUA's examples and the DMP's samples write it:
        # xsi:type="CE" is a QName, and only then does its unprefixed CE resolve to hl7's CE.
        ce = etree.SubElement(av, f"{{{NS_HL7}}}{local}", nsmap={None: NS_HL7})
        ce.set(f"{{{NS_XSI}}}type", "CE")
        ce.set("code", value.code)
        for key, v in (("codeSystem", value.system), ("codeSystemName", value.system_name),
                       ("displayName", value.display)):
            if v:
                ce.set(key, v)
        return
    # xs is declared where xsi:type uses it: exclusive c14n keeps only declarations a signed element
    # uses by name, and a prefix inside an attribute value is not such a use.
    av = etree.SubElement(attr, _q("AttributeValue"), nsmap={"xs": NS_XS})
    av.set(f"{{{NS_XSI}}}type", "xs:string")
    av.text = str(value)


def wsse_security(assertion: etree._Element, version: str = soap.SOAP12) -> etree._Element:
    """The wsse:Security header block carrying the assertion (moved into it), mustUnderstand in the
    SOAP envelope's namespace: pass it to SoapClient.call(..., extra_headers=[...])."""
    env_ns = C.NS_SOAP12 if version == soap.SOAP12 else C.NS_SOAP11
    sec = etree.Element(f"{{{NS_WSSE}}}Security", nsmap={"wsse": NS_WSSE})
    sec.set(f"{{{env_ns}}}mustUnderstand", "true" if version == soap.SOAP12 else "1")
    sec.append(assertion)
    return sec


def serialize(assertion: etree._Element) -> bytes:
    """The assertion's bytes as they are (no declaration, no indentation)."""
    return etree.tostring(assertion)


# --- a signing pair for a local STS ------------------------------------------------------------------------

KEY_FILE = "sts-signing.key"
CERT_FILE = "sts-signing.crt"


def signing_pair(folder: str, common_name: str = "XDS local STS") -> tuple[str, str, bool]:
    """(key path, certificate path, made now): a self-signed RSA-2048 pair in folder, made the first
    time only, so that the servers told to trust the certificate keep trusting it."""
    key_path, cert_path = os.path.join(folder, KEY_FILE), os.path.join(folder, CERT_FILE)
    if os.path.exists(key_path) and os.path.exists(cert_path):
        return key_path, cert_path, False
    os.makedirs(folder, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "XDS test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _utc_now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=3 * 365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_new(key_path, key_pem, 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key_path, cert_path, True


def _write_new(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --- the client of a WS-Trust STS --------------------------------------------------------------------------


class StsError(Exception):
    """The STS refused (a SOAP fault, with its WS-Trust subcode) or gave no token."""

    def __init__(self, reason: str, subcode: str | None = None, status: int | None = None):
        super().__init__(reason if not subcode else f"{subcode}: {reason}")
        self.reason = reason
        self.subcode = subcode
        self.status = status


def username_token(user: str, password: str, digest: bool = False) -> etree._Element:
    """A wsse:Security header with a UsernameToken (WSS UsernameToken Profile 1.0): the password as
    text, or digested with a nonce and a creation time."""
    sec = etree.Element(f"{{{NS_WSSE}}}Security", nsmap={"wsse": NS_WSSE, "wsu": NS_WSU})
    token = etree.SubElement(sec, f"{{{NS_WSSE}}}UsernameToken")
    token.set(f"{{{NS_WSU}}}Id", "UsernameToken-" + uuid.uuid4().hex)
    etree.SubElement(token, f"{{{NS_WSSE}}}Username").text = user
    pw = etree.SubElement(token, f"{{{NS_WSSE}}}Password")
    if digest:
        nonce, created = os.urandom(16), _xs_time(_utc_now())
        pw.set("Type", PASSWORD_DIGEST)
        pw.text = password_digest(nonce, created, password)
        n = etree.SubElement(token, f"{{{NS_WSSE}}}Nonce")
        n.set("EncodingType", "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0"
                              "#Base64Binary")
        n.text = base64.b64encode(nonce).decode()
        etree.SubElement(token, f"{{{NS_WSU}}}Created").text = created
    else:
        pw.set("Type", PASSWORD_TEXT)
        pw.text = password
    return sec


def password_digest(nonce: bytes, created: str, password: str) -> str:
    """Base64(SHA-1(nonce + created + password)), UsernameToken Profile 1.0 section 3.1."""
    return base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest()).decode()


def request_security_token(audience: str | None = None, patient_id: str | None = None) -> etree._Element:
    """A WS-Trust 1.3 RequestSecurityToken for a SAML 2.0 assertion (Issue)."""
    rst = etree.Element(f"{{{NS_WST}}}RequestSecurityToken", nsmap={"wst": NS_WST})
    etree.SubElement(rst, f"{{{NS_WST}}}RequestType").text = REQUEST_ISSUE
    etree.SubElement(rst, f"{{{NS_WST}}}TokenType").text = SAML2_TOKEN_TYPE
    if audience:
        applies = etree.SubElement(rst, f"{{{NS_WSP}}}AppliesTo", nsmap={"wsp": NS_WSP, "wsa": C.NS_WSA})
        epr = etree.SubElement(applies, f"{{{C.NS_WSA}}}EndpointReference")
        etree.SubElement(epr, f"{{{C.NS_WSA}}}Address").text = audience
    if patient_id:
        claims = etree.SubElement(rst, f"{{{NS_WST}}}Claims", nsmap={"auth": NS_AUTH}, Dialect=NS_AUTH + "/authclaims")
        claim = etree.SubElement(claims, f"{{{NS_AUTH}}}ClaimType", Uri=RESOURCE_ID)
        etree.SubElement(claim, f"{{{NS_AUTH}}}Value").text = patient_id
    return rst


def request_token(sts_url: str, user: str, password: str = DEFAULT_PASSWORD, audience: str | None = None,
                  ssl_context=None, *, patient_id: str | None = None, timeout: float = 30.0,
                  version: str = soap.SOAP12, digest: bool = False) -> etree._Element:
    """Ask a WS-Trust 1.3 STS (ours, or the Gazelle STS) for a SAML 2.0 assertion for user, the
    variant's name; returns it detached from the answer, ready for wsse_security. The credentials go
    both in a UsernameToken and as HTTP Basic authentication, which is how the Gazelle STS reads them.
    patient_id is asked for as a resource-id claim (our STS honours it). Raises StsError."""
    from ..client import SoapClient

    client = SoapClient(sts_url, timeout=timeout, ssl_context=ssl_context)
    body = client.envelope(ACTION_ISSUE, request_security_token(audience, patient_id), version,
                           extra_headers=[username_token(user, password, digest)])
    ctype = soap.CONTENT_TYPE[version]
    headers = {"Content-Type": f'{ctype}; charset=UTF-8; action="{ACTION_ISSUE}"' if version == soap.SOAP12
               else f"{ctype}; charset=UTF-8",
               "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    if version == soap.SOAP11:
        headers["SOAPAction"] = f'"{ACTION_ISSUE}"'
    reply = client.send_raw(body, headers)
    if reply.envelope is None:
        raise StsError(f"HTTP {reply.status} without a SOAP envelope", status=reply.status)
    if reply.is_fault:
        reason, subcode = fault_text(reply.body)
        raise StsError(reason, subcode, reply.status)
    found = reply.body.find(f".//{{{NS_WST}}}RequestedSecurityToken/{{{NS_SAML2}}}Assertion")
    if found is None:
        raise StsError("the STS answered without a saml2:Assertion in RequestedSecurityToken", status=reply.status)
    # Serialized and parsed again, so that it carries every namespace it needs and no tie to the answer.
    return safe_parse(etree.tostring(found), "the STS's assertion")


def fault_text(fault: etree._Element) -> tuple[str, str | None]:
    """(reason, subcode) of a SOAP 1.2 or 1.1 fault."""
    ns12 = C.NS_SOAP12
    if fault.find(f"{{{ns12}}}Reason") is not None or fault.find(f"{{{ns12}}}Code") is not None:
        reason = fault.findtext(f"{{{ns12}}}Reason/{{{ns12}}}Text") or ""
        sub = fault.findtext(f"{{{ns12}}}Code/{{{ns12}}}Subcode/{{{ns12}}}Value")
        return reason.strip(), sub.strip() if sub else None
    return (fault.findtext("faultstring") or "").strip(), (fault.findtext("faultcode") or "").strip() or None


__all__ = ["Issuer", "VARIANTS", "KIT_VARIANTS", "Variant", "Draft", "CE", "variant", "build", "wsse_security",
           "serialize", "signing_pair", "request_token", "request_security_token", "username_token",
           "password_digest", "fault_text", "StsError"]
