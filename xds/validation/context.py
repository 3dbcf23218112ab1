"""What every rule of one validation run shares: the submission, lookup tables and the error sink.

The tables are built once so that rules stay linear in the number of objects.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Callable, Mapping

from .. import constants as C
from .. import errors as E
from .. import hl7
from ..errors import ErrorList
from ..model import Association, RegistryObject, Submission


class Mode(StrEnum):
    """The transaction a submission arrives by; some rules differ between them."""

    REGISTER = "register"  # ITI-42
    PROVIDE = "provide"    # ITI-41: the repository fills hash, size and repositoryUniqueId
    UPDATE = "update"      # ITI-57
    ON_DEMAND = "on-demand"  # ITI-61: On-Demand DocumentEntries only


MODES = tuple(m.value for m in Mode)

Checker = Callable[[str], list[str]]


def ihe_patient_id(value: str) -> list[str]:
    return hl7.check_cx(value, require_aa=True, strict=True)


def ihe_source_patient_id(value: str) -> list[str]:
    # A local id may say what kind of id it is (CX.5, e.g. PI), which patientId may not.
    return hl7.check_cx(value, require_aa=True, strict=False)


def ihe_query_patient_id(value: str) -> list[str]:
    return hl7.check_cx(value, require_aa=True, strict=False)


# The attributes whose datatype check a profile may replace (queryPatientId: the patient parameters of
# ITI-18, which name a patient rather than describe one).
IHE_DATATYPES: dict[str, Checker] = {
    "patientId": ihe_patient_id,
    "queryPatientId": ihe_query_patient_id,
    "sourcePatientId": ihe_source_patient_id,
    "authorInstitution": hl7.check_xon,
}


@dataclass(frozen=True)
class Profile:
    """What the rules see of the profile in force (profiles.py names and selects them): its extra
    rules, the datatype checkers it replaces, and the IHE rules it relaxes."""

    name: str
    rules: tuple["Rule", ...] = ()
    datatypes: Mapping[str, Checker] = field(default_factory=dict)
    signs_may_target_submission_set: bool = False
    # Availability statuses beyond IHE's that ITI-57 may set and ITI-18 may ask for.
    statuses: tuple[str, ...] = ()
    # Statuses whose objects the registry keeps but answers as absent to every query and retrieve.
    hidden_statuses: tuple[str, ...] = ()
    # What an ITI-57 new version may change (model attribute names, registry/changes.py); None: anything.
    updatable: tuple[str, ...] | None = None
    # Status changes ITI-57 allows, as (from, to); None: IHE's (Approved <-> Deprecated).
    transitions: tuple[tuple[str, str], ...] | None = None

    def checker(self, attribute: str) -> Checker:
        return self.datatypes.get(attribute) or IHE_DATATYPES[attribute]


@dataclass
class Context:
    sub: Submission
    mode: Mode
    profile: Profile
    errors: ErrorList
    implied_references: bool = False
    # First top-level object holding each id; a repeated id is an error reported elsewhere.
    by_id: dict[str, RegistryObject] = field(default_factory=dict)
    ss_ids: set[str] = field(default_factory=set)
    assocs_by_target: dict[str, list[Association]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def build(cls, sub: Submission, mode: Mode, profile: Profile, errors: ErrorList) -> "Context":
        ctx = cls(sub, mode, profile, errors)
        for obj in sub.objects:
            ctx.by_id.setdefault(obj.id, obj)
        ctx.ss_ids = {ss.id for ss in sub.submission_sets}
        for a in sub.associations:
            if a.target:
                ctx.assocs_by_target[a.target].append(a)
        return ctx

    @property
    def requires_repository_attributes(self) -> bool:
        # A repository computes hash/size and knows its own id, so only ITI-41 may omit them.
        return self.mode != Mode.PROVIDE

    @property
    def duplicate_unique_id_code(self) -> str:
        if self.mode == Mode.PROVIDE:
            return E.REPOSITORY_DUPLICATE_UNIQUE_ID_IN_MESSAGE
        return E.DUPLICATE_UNIQUE_ID_IN_MESSAGE

    @staticmethod
    def label(obj: RegistryObject) -> str:
        text = f"{obj.kind} '{obj.id}'"
        uid = obj.unique_id if obj.unique_scheme else None
        return f"{text} (uniqueId {uid})" if uid else text

    def report(self, obj: RegistryObject, attribute: str, problem: str, code: str | None = None) -> None:
        self.errors.add(f"{self.label(obj)} {attribute}: {problem}", obj.id, code)

    def report_at(self, location: str, what: str, attribute: str, problem: str, code: str | None = None) -> None:
        """For things that are not model objects (a top-level Classification, the submission itself)."""
        self.errors.add(f"{what} {attribute}: {problem}", location, code)

    def is_in_submission(self, ident: str | None) -> bool:
        return bool(ident) and ident in self.by_id

    def is_submission_set(self, ident: str | None) -> bool:
        return bool(ident) and ident in self.ss_ids


Rule = Callable[[Context], None]


def is_symbolic(ident: str) -> bool:
    return not ident.startswith("urn:uuid:")


SS_MARKER = C.SS_CLASSIFICATION_NODE
FOLDER_MARKER = C.FOLDER_CLASSIFICATION_NODE
