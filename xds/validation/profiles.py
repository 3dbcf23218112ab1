"""Named sets of extra rules layered on the IHE ones for an affinity domain.

This module sits above the rules: it imports the rule modules (dmp) to build the profiles
it names; rule modules see a profile only as the Profile of their Context, never this module.

A profile can add rules and can replace the checker of a few HL7 datatype attributes,
because national profiles (the French DMP among them) put more in a patient CX or an
organization XON than IHE allows.
"""
from __future__ import annotations

from .. import constants as C
from .. import hl7
from . import dmp
from .context import IHE_DATATYPES, Checker, Profile, Rule, ihe_patient_id, ihe_source_patient_id

__all__ = ["Checker", "IHE_DATATYPES", "Profile", "Rule", "get_profile", "ihe_patient_id", "ihe_source_patient_id",
           "profile_names", "register_profile"]


_PROFILES: dict[str, Profile] = {}


def register_profile(profile: Profile) -> None:
    _PROFILES[profile.name] = profile


def get_profile(name: str) -> Profile:
    try:
        return _PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown validation profile {name!r}; known: {', '.join(sorted(_PROFILES))}") from None


def profile_names() -> list[str]:
    return sorted(_PROFILES)


def dmp_query_patient_id(value: str) -> list[str]:
    """A query names the INS with or without what follows CX.4 (``^NH``, the CX.7 date): it is matched
    on CX.1 + CX.4 (PROFILE.md B-37)."""
    comps = value.split("^")
    problems = hl7.check_cx("^".join(comps[:4]), require_aa=True, strict=True)
    cx = hl7.parse_cx(value)
    if cx.type_code not in ("", dmp.INS_TYPE_CODE):
        problems.append(f"CX.5 must be '{dmp.INS_TYPE_CODE}' or empty, got '{cx.type_code}'")
    for number, part in enumerate(cx.other, start=6):
        if part and number == 7:
            problems += [f"CX.7 {p}" for p in hl7.check_dtm(part)]
        elif part:
            problems.append(f"CX.{number} must be empty, got '{part}'")
    return problems


# PROFILE.md B-35: archiving and back, and deletion from either; IHE's deprecation and back stay.
DMP_TRANSITIONS = (
    (C.STATUS_APPROVED, C.STATUS_DEPRECATED), (C.STATUS_DEPRECATED, C.STATUS_APPROVED),
    (C.STATUS_APPROVED, C.STATUS_ARCHIVED), (C.STATUS_ARCHIVED, C.STATUS_APPROVED),
    (C.STATUS_APPROVED, C.STATUS_DELETED), (C.STATUS_ARCHIVED, C.STATUS_DELETED),
)

register_profile(Profile("ihe"))
register_profile(Profile(
    "dmp",
    rules=dmp.RULES,
    datatypes={
        "patientId": dmp.check_ins_patient_id,
        "sourcePatientId": dmp.check_source_patient_id,
        "authorInstitution": dmp.check_author_institution,
        "queryPatientId": dmp_query_patient_id,
    },
    signs_may_target_submission_set=True,
    statuses=(C.STATUS_ARCHIVED, C.STATUS_DELETED),
    hidden_statuses=(C.STATUS_DELETED,),
    # B-34: masking and making visible are the only metadata updates of the DMP (TD3.3a/b).
    updatable=("confidentialityCode",),
    transitions=DMP_TRANSITIONS,
))
