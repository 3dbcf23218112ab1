"""Named sets of extra rules layered on the IHE ones for an affinity domain.

A profile can add rules and can replace the checker of a few HL7 datatype attributes,
because national profiles (the French DMP among them) put more in a patient CX or an
organization XON than IHE allows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from .. import hl7
from . import dmp
from .context import Context

Rule = Callable[[Context], None]
Checker = Callable[[str], list[str]]


def ihe_patient_id(value: str) -> list[str]:
    return hl7.check_cx(value, require_aa=True, strict=True)


def ihe_source_patient_id(value: str) -> list[str]:
    # A local id may say what kind of id it is (CX.5, e.g. PI), which patientId may not.
    return hl7.check_cx(value, require_aa=True, strict=False)


# The attributes whose datatype check a profile may replace.
IHE_DATATYPES: dict[str, Checker] = {
    "patientId": ihe_patient_id,
    "sourcePatientId": ihe_source_patient_id,
    "authorInstitution": hl7.check_xon,
}


@dataclass(frozen=True)
class Profile:
    name: str
    rules: tuple[Rule, ...] = ()
    datatypes: Mapping[str, Checker] = field(default_factory=dict)
    signs_may_target_submission_set: bool = False

    def checker(self, attribute: str) -> Checker:
        return self.datatypes.get(attribute) or IHE_DATATYPES[attribute]


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
