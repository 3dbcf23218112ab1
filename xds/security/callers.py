"""From the authentication layer's Principal to the access policy's Caller (xds/security/policy.py).

Kept apart from the decisions: this is where deployment settings say who is an administrator, a
patient or a system; the decisions themselves only see the Caller.
"""
from __future__ import annotations

from dataclasses import dataclass

from .policy import ADMIN, NORMAL, PATIENT, PROFESSIONAL, SYSTEM, Caller
from .principal import Principal

PORTAL = "portal"   # Principal.mode of a patient signed in at the portal (xds/portal, registry/portal)
VIHF_SECRET = "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code"


@dataclass(frozen=True)
class CallerRules:
    admin_roles: frozenset[str] = frozenset()     # code, or code^system
    admin_subjects: frozenset[str] = frozenset()  # TLS subjects
    patient_roles: frozenset[str] = frozenset({"116154003"})

    @classmethod
    def from_settings(cls, settings) -> "CallerRules":
        return cls(frozenset(settings.admin_roles), frozenset(settings.admin_subjects),
                   frozenset(settings.patient_roles))


def _has_role(principal: Principal, wanted: frozenset[str]) -> bool:
    return any(r.code in wanted or str(r) in wanted for r in principal.roles)


def caller_of(principal: Principal | None, rules: CallerRules = CallerRules()) -> Caller:
    """A portal session is the patient it signed in; security = none without a TLS identity is the
    administrator (loopback only, see Settings.validate); a TLS identity without assertion is a system, an
    administrator only when listed; an assertion makes a professional, a patient by a patient role, an
    administrator by an administrator role."""
    if principal is None or principal.mode == "none":
        return Caller(ADMIN)
    subjects = frozenset(s for s in (principal.tls_subject,) if s)
    if principal.mode == PORTAL:
        # Signed in at the patients' portal: the identity provider vouched for the person's own patient id
        # (name_id); patient_id is the record the request is about (theirs, or a minor's they represent).
        # The session carries nothing else: no role, structure or purpose of use a patient could claim.
        return Caller(PATIENT, person=principal.name_id, patient=principal.patient_id)
    if principal.mode == "tls":
        kind = ADMIN if principal.tls_subject in rules.admin_subjects else SYSTEM
        return Caller(kind, person=principal.tls_subject, organisation=principal.tls_subject, subjects=subjects)
    person = principal.name_id or principal.subject
    if _has_role(principal, rules.admin_roles):
        kind = ADMIN
    elif _has_role(principal, rules.patient_roles):
        kind = PATIENT
    else:
        kind = PROFESSIONAL
    auth_mode = principal.mode.split(":", 1)[1] or None if principal.mode.startswith("vihf:") else None
    purpose = principal.purposes_of_use[0].code if principal.purposes_of_use else NORMAL
    return Caller(kind, person=person, organisation=principal.organization_id,
                  profession=principal.roles[0].code if principal.roles else None,
                  auth_mode=auth_mode, purpose=purpose, patient=principal.patient_id,
                  secret=bool(principal.attributes.get(VIHF_SECRET.lower())), subjects=subjects)
