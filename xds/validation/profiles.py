"""Named sets of extra rules layered on the IHE ones for an affinity domain.

This module sits above the rules: it imports the rule modules (dmp) to build the profiles
it names; rule modules see a profile only as the Profile of their Context, never this module.

A profile can add rules and can replace the checker of a few HL7 datatype attributes,
because national profiles (the French DMP among them) put more in a patient CX or an
organization XON than IHE allows.
"""
from __future__ import annotations

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


register_profile(Profile("ihe"))
register_profile(Profile(
    "dmp",
    rules=dmp.RULES,
    datatypes={
        "patientId": dmp.check_ins_patient_id,
        "sourcePatientId": dmp.check_source_patient_id,
        "authorInstitution": dmp.check_author_institution,
    },
    signs_may_target_submission_set=True,
))
