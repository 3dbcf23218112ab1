"""SAML 2.0 assertions as carried by IHE XUA and the French VIHF: names, and a read-only view.

The view is built from the element the signature covers (xds/security/xua.py passes the signed
element signxml returns), so nothing outside the signed bytes can reach a Principal.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from lxml import etree

from xds.errors import SoapFault
from xds.soap import NS_WSSE
from .principal import Code

NS_SAML2 = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_DS = "http://www.w3.org/2000/09/xmldsig#"
NS_HL7 = "urn:hl7-org:v3"

ASSERTION = f"{{{NS_SAML2}}}Assertion"
SECURITY = f"{{{NS_WSSE}}}Security"

# XUA attribute names (IHE ITI TF-2 3.40.4.1.2), compared lower-cased like every attribute name here:
# the French samples spell them with varying case.
SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
ORGANIZATION = "urn:oasis:names:tc:xspa:1.0:subject:organization"
ORGANIZATION_ID = "urn:oasis:names:tc:xspa:1.0:subject:organization-id"
HOME_COMMUNITY_ID = "urn:ihe:iti:xca:2010:homecommunityid"
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
PURPOSE_OF_USE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"


class SecurityFault(SoapFault):
    """A refused WS-Security header: a Sender fault with one of WS-Security 1.1's codes (section 12)."""

    INVALID_SECURITY = "wsse:InvalidSecurity"          # an error processing the header
    INVALID_TOKEN = "wsse:InvalidSecurityToken"        # a token of a kind or form we do not accept
    FAILED_AUTHENTICATION = "wsse:FailedAuthentication"  # the token's claims are not accepted
    FAILED_CHECK = "wsse:FailedCheck"                  # the signature does not verify
    TOKEN_UNAVAILABLE = "wsse:SecurityTokenUnavailable"  # no token where one is required

    def __init__(self, subcode: str, reason: str):
        super().__init__(reason, code="Sender", subcode=subcode)


def _local(el) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def parse_time(text: str | None, where: str) -> _dt.datetime | None:
    if text is None:
        return None
    value = text.strip()
    try:
        t = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SecurityFault(SecurityFault.INVALID_TOKEN, f"assertion {where} is not an xs:dateTime") from None
    # SAML 2.0 core 1.3.3: times are UTC; a value without a zone is read as UTC.
    return t.replace(tzinfo=_dt.timezone.utc) if t.tzinfo is None else t.astimezone(_dt.timezone.utc)


@dataclass
class Assertion:
    element: etree._Element
    id: str | None = None
    issue_instant: _dt.datetime | None = None
    issuer: str | None = None
    issuer_format: str | None = None
    name_id: str | None = None
    name_id_format: str | None = None
    not_before: _dt.datetime | None = None
    not_on_or_after: _dt.datetime | None = None
    has_conditions: bool = False
    audiences: list[str] | None = None   # None: no AudienceRestriction at all
    authn_statements: int = 0
    authn_instant: _dt.datetime | None = None
    authn_context: str | None = None
    signed: bool = False
    confirmation_methods: list[str] = field(default_factory=list)  # Subject/SubjectConfirmation/@Method
    attributes: dict[str, list[etree._Element]] = field(default_factory=dict)  # lower-cased name -> values

    @classmethod
    def read(cls, el: etree._Element) -> "Assertion":
        a = cls(el, id=el.get("ID"), signed=el.find(f"{{{NS_DS}}}Signature") is not None)
        if el.get("Version") != "2.0":
            raise SecurityFault(SecurityFault.INVALID_TOKEN, "the assertion is not SAML 2.0 (Version is "
                                f"{(el.get('Version') or '(none)')[:16]!r})")
        a.issue_instant = parse_time(el.get("IssueInstant"), "IssueInstant")
        issuer = el.find(f"{{{NS_SAML2}}}Issuer")
        if issuer is not None:
            a.issuer, a.issuer_format = (issuer.text or "").strip(), issuer.get("Format")
        a.confirmation_methods = [(c.get("Method") or "").strip() for c in
                                  el.iterfind(f"{{{NS_SAML2}}}Subject/{{{NS_SAML2}}}SubjectConfirmation")]
        name_id = el.find(f"{{{NS_SAML2}}}Subject/{{{NS_SAML2}}}NameID")
        if name_id is not None:
            a.name_id, a.name_id_format = (name_id.text or "").strip(), name_id.get("Format")
        conditions = el.find(f"{{{NS_SAML2}}}Conditions")
        if conditions is not None:
            a.has_conditions = True
            a.not_before = parse_time(conditions.get("NotBefore"), "Conditions/@NotBefore")
            a.not_on_or_after = parse_time(conditions.get("NotOnOrAfter"), "Conditions/@NotOnOrAfter")
            restrictions = conditions.findall(f"{{{NS_SAML2}}}AudienceRestriction")
            if restrictions:
                a.audiences = [(x.text or "").strip() for r in restrictions for x in r.findall(f"{{{NS_SAML2}}}Audience")]
        statements = el.findall(f"{{{NS_SAML2}}}AuthnStatement")
        a.authn_statements = len(statements)
        if statements:
            st = statements[0]
            a.authn_instant = parse_time(st.get("AuthnInstant"), "AuthnStatement/@AuthnInstant")
            ref = st.find(f"{{{NS_SAML2}}}AuthnContext/{{{NS_SAML2}}}AuthnContextClassRef")
            a.authn_context = (ref.text or "").strip() if ref is not None else None
        for attr in el.iterfind(f"{{{NS_SAML2}}}AttributeStatement/{{{NS_SAML2}}}Attribute"):
            name = (attr.get("Name") or "").strip().lower()
            a.attributes.setdefault(name, []).extend(attr.findall(f"{{{NS_SAML2}}}AttributeValue"))
        return a

    def texts(self, name: str) -> tuple[str, ...]:
        """The values of an attribute as text; a coded value (hl7 CE) gives its code."""
        out = []
        for v in self.attributes.get(name.lower(), ()):
            coded = [c for c in v if isinstance(c.tag, str)]
            out.append((coded[0].get("code") or "").strip() if coded else (v.text or "").strip())
        return tuple(x for x in out if x)

    def first(self, name: str) -> str | None:
        values = self.texts(name)
        return values[0] if values else None

    def codes(self, name: str) -> tuple[Code, ...]:
        """Coded values (hl7:Role, hl7:PurposeOfUse as CE); a plain text value is a code without a system."""
        out = []
        for v in self.attributes.get(name.lower(), ()):
            coded = [c for c in v if isinstance(c.tag, str)]
            if coded:
                c = coded[0]
                if c.get("code"):
                    out.append(Code(c.get("code").strip(), c.get("codeSystem"), c.get("displayName")))
            elif (v.text or "").strip():
                out.append(Code(v.text.strip()))
        return tuple(out)

    def all_texts(self) -> dict[str, tuple[str, ...]]:
        return {name: self.texts(name) for name in self.attributes}
