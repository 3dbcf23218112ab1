"""Who is calling: what the authentication layer hands every handler (xds/pipeline.py).

Handlers read the Principal; they never parse security headers themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Code:
    """A coded attribute value (XUA role and purpose of use are HL7 CE values)."""

    code: str
    system: str | None = None
    display: str | None = None

    def __str__(self) -> str:
        return f"{self.code}^{self.system}" if self.system else self.code


@dataclass(frozen=True)
class Principal:
    # How the caller was authenticated: "none" (security = none), "tls" (a system known by its client
    # certificate, no assertion), "xua" (a verified SAML assertion), "vihf:<Authentification_Mode>", or
    # "portal" (a patient signed in at the portal by OpenID Connect; patient_id is that patient).
    mode: str
    subject: str | None = None               # the person or system: subject-id, else the NameID, else the TLS subject
    name_id: str | None = None
    roles: tuple[Code, ...] = ()
    organization: str | None = None
    organization_id: str | None = None
    home_community_id: str | None = None
    purposes_of_use: tuple[Code, ...] = ()
    patient_id: str | None = None            # resource-id: the patient the assertion is about
    tls_subject: str | None = None           # the verified client certificate's subject
    assertion_id: str | None = None
    issuer: str | None = None
    authn_context: str | None = None
    # Every attribute of the assertion by lower-cased name, for the profile rules (VIHF) and audit.
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)

    @property
    def authenticated(self) -> bool:
        return self.mode != "none"


ANONYMOUS = Principal(mode="none")
