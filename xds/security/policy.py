"""The access policy: who may see and change what. Pure decisions, no I/O.

Inputs are plain values: the Caller (what the authentication layer established, see callers.py),
the patient's AccessState (kept by the registry), a Document's facts (from its registry row), the
Operation and the time. Every transaction asks these functions, through the request-scoped policy
object of its actor (registry/guard.py, repository/guard.py); storage turns a Visibility into SQL.

Two rule sets:
- generic (every deployment): everyone authenticated may read; a change (ITI-57, ITI-62, RPLC /
  APND / XFRM, ITI-86) is allowed only to the target's submitter (the organisation recorded at
  registration) or an administrator;
- dmp (profile = dmp with security = vihf): PROFILE.md Table E and checks C-8 to C-15 on top.
The reasons returned are for the caller and the log: they name the rule, never a hidden document.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Iterable

from xds import hl7

# --- callers -------------------------------------------------------------------------------------
ADMIN = "admin"                # an administrator role, or security = none on loopback
SYSTEM = "system"              # a host or software known by its TLS certificate, no assertion
PROFESSIONAL = "professional"  # a person (PS, staff) or software acting for one, by assertion
PATIENT = "patient"            # the patient, or someone acting as their legal representative

DIRECTE, INDIRECTE, AIR = "DIRECTE", "INDIRECTE", "INDIRECTE_RENFORCEE"
NORMAL, BREAK_GLASS, CENTRE_15 = "normal", "bris_de_glace", "centre_15"

# DMP confidentiality codes (TRE_A07, scheme 1.2.250.1.213.1.1.4.13), as the registry stores codes.
DMP_CONFIDENTIALITY_SCHEME = "1.2.250.1.213.1.1.4.13"
MASQUE_PS = f"MASQUE_PS^^{DMP_CONFIDENTIALITY_SCHEME}"
INVISIBLE_PATIENT = f"INVISIBLE_PATIENT^^{DMP_CONFIDENTIALITY_SCHEME}"
INVISIBLE_RL = f"INVISIBLE_REPRESENTANTS_LEGAUX^^{DMP_CONFIDENTIALITY_SCHEME}"

# --- operations ----------------------------------------------------------------------------------
READ = "read"            # consult: ITI-18 answering metadata (LeafClass), ITI-43
LOCATE = "locate"        # find references: ITI-18 answering ObjectRef (DMP TD3.1b)
REPLACE = "replace"      # RPLC, APND, XFRM and their variants aimed at a registered document
UPDATE = "update"        # ITI-57: a new version of metadata, archiving and back, an association added
DELETE = "delete"        # ITI-57 out of Approved (Deprecated, the DMP's Deleted), ITI-62

# Kinds of refusal, which each transaction answers with its own code (PROFILE.md's list).
DENIED = "denied"                # XDSRegistryError, access denied
UNKNOWN_PATIENT = "unknown_patient"      # XDSUnknownPatientId (C-10)
PATIENT_MISMATCH = "patient_mismatch"    # XDSPatientIdDoesNotMatch (C-9)
HIDDEN = "hidden"                # answered exactly as an unknown target


@dataclass(frozen=True)
class Caller:
    kind: str
    person: str | None = None        # PS national id, patient / representative id, or a system's subject
    organisation: str | None = None  # what is recorded as submitter: organization-id, Identifiant_Structure,
    #                                  or the TLS subject of a caller without assertion
    profession: str | None = None    # the first role's code (VIHF: the profession, J65)
    auth_mode: str | None = None     # VIHF Authentification_Mode, None outside vihf
    purpose: str = NORMAL            # VIHF purpose of use
    patient: str | None = None       # the patient the assertion names (resource-id)
    secret: bool = False             # connexion secrète (confidentiality-code INVISIBLE_REPRESENTANTS_LEGAUX)
    subjects: frozenset[str] = frozenset()  # TLS subject(s) the caller presented, for system checks


@dataclass(frozen=True)
class Grant:
    """A professional authorised by the patient, from `since` until `until` (epoch seconds, open ends)."""

    person: str
    since: float | None = None
    until: float | None = None

    def valid(self, now: float) -> bool:
        return (self.since is None or self.since <= now) and (self.until is None or now < self.until)


@dataclass(frozen=True)
class AccessState:
    patient: str
    exists: bool = True              # the registry knows the patient and the id is active (not merged away)
    closed: bool = False
    minor: bool = False
    treating_doctor: str | None = None
    authorised: tuple[Grant, ...] = ()
    blocked: frozenset[str] = frozenset()
    representatives: frozenset[str] = frozenset()
    objects_break_glass: bool = False
    objects_centre_15: bool = False

    def authorises(self, person: str | None, now: float) -> bool:
        return person is not None and any(g.person == person and g.valid(now) for g in self.authorised)


@dataclass(frozen=True)
class Document:
    """What the policy needs of a registered DocumentEntry (or, kind != 'DE', a SubmissionSet or Folder)."""

    patient: str | None
    kind: str = "DE"
    type_code: str | None = None                 # code^^scheme
    confidentiality: frozenset[str] = frozenset()  # code^^scheme keys
    origin_org: str | None = None                # the submitter recorded at the first version's registration
    origin_person: str | None = None
    reveal_at: float | None = None               # when INVISIBLE_PATIENT lapses (first version + one month)


@dataclass(frozen=True)
class Matrix:
    """The habilitation matrix: profession code -> the typeCodes (code^^scheme) it may consult; None: all.
    A profession that is not listed cannot consult (it may still feed and find references)."""

    rows: dict[str, frozenset[str] | None] = field(default_factory=dict)
    official: bool = False

    def types_for(self, profession: str | None) -> frozenset[str] | None | bool:
        """The allowed types, None for every type, False when the profession is not in the matrix."""
        if profession is None or profession not in self.rows:
            return False
        return self.rows[profession]


@dataclass(frozen=True)
class Rules:
    dmp: bool = False                 # profile = dmp with security = vihf
    matrix: Matrix = field(default_factory=Matrix)
    check_resource_id: bool = False   # security = vihf: resource-id must be the body's patient (C-9)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    refusal: str = ""                 # one of DENIED, UNKNOWN_PATIENT, PATIENT_MISMATCH, HIDDEN

    def __bool__(self) -> bool:
        return self.allowed


ALLOW = Decision(True)


def deny(reason: str, refusal: str = DENIED) -> Decision:
    return Decision(False, reason, refusal)


@dataclass(frozen=True)
class Visibility:
    """Which of one patient's objects a caller sees. `everything` needs no filter; `nothing` sees none;
    otherwise a DocumentEntry is seen when every condition holds, and SubmissionSets and Folders always
    (with own_only: when the caller's organisation submitted them)."""

    everything: bool = False
    nothing: bool = False
    own_only: bool = False            # only what the caller's organisation submitted (finding references)
    hide_masked: bool = False         # MASQUE_PS, unless the caller's organisation or person submitted it
    hide_patient_invisible: bool = False  # INVISIBLE_PATIENT until reveal_at
    hide_rl_invisible: bool = False   # INVISIBLE_REPRESENTANTS_LEGAUX
    types: frozenset[str] | None = None   # allowed typeCodes; None: all
    organisation: str | None = None   # the caller's, for own_only and the author exception
    person: str | None = None
    reason: str = ""                  # why nothing, when nothing

    def admits(self, doc: Document, now: float) -> bool:
        if self.everything:
            return True
        if self.nothing:
            return False
        own = _submitted_by(doc, self.organisation, self.person)
        if self.own_only:
            return self.organisation is not None and doc.origin_org == self.organisation
        if doc.kind != "DE":
            return True
        if self.hide_masked and MASQUE_PS in doc.confidentiality and not own:
            return False
        if self.hide_patient_invisible and INVISIBLE_PATIENT in doc.confidentiality and not (
                doc.reveal_at is not None and doc.reveal_at <= now):
            return False
        if self.hide_rl_invisible and INVISIBLE_RL in doc.confidentiality:
            return False
        if self.types is not None and doc.type_code not in self.types:
            return False
        return True


EVERYTHING = Visibility(everything=True)


def nothing(reason: str) -> Visibility:
    return Visibility(nothing=True, reason=reason)


def _submitted_by(doc: Document, organisation: str | None, person: str | None) -> bool:
    return ((organisation is not None and doc.origin_org == organisation)
            or (person is not None and doc.origin_person == person))


# --- one month ------------------------------------------------------------------------------------

def one_month_after(t: float) -> float:
    """The same time of day, the same day of the next month (the month's last day when it is shorter):
    when INVISIBLE_PATIENT lapses (R1111-53). Recorded at registration, so that SQL compares a column."""
    d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    last = (_dt.date(year + (month == 12), month % 12 + 1, 1) - _dt.timedelta(days=1)).day
    return d.replace(year=year, month=month, day=min(d.day, last)).timestamp()


# --- the decisions ----------------------------------------------------------------------------------

def same_patient(a: str | None, b: str | None) -> bool:
    """Patients compare on CX.1 and CX.4 (the INS and its OID): xds.hl7.patient_key."""
    return hl7.same_patient(a, b)


def patient_key(cx: str) -> str:
    """The canonical CX of a patient's identity, for lookups by patient."""
    return hl7.patient_key(cx)


def is_patient_self(caller: Caller, state: AccessState) -> bool:
    return caller.kind == PATIENT and same_patient(caller.person, state.patient)


def is_representative(caller: Caller, state: AccessState) -> bool:
    return caller.kind == PATIENT and caller.person is not None and caller.person in state.representatives


def _consults(rules: Rules, caller: Caller) -> bool:
    """C-8: consultation needs direct or reinforced-indirect authentication and a row of the matrix."""
    return caller.auth_mode in (DIRECTE, AIR) and rules.matrix.types_for(caller.profession) is not False


def _dmp_gate(rules: Rules, caller: Caller, state: AccessState) -> Decision:
    """What every DMP operation on a patient checks first: C-9, C-10, C-11, C-15."""
    if not state.exists or state.closed:
        return deny(f"the patient {state.patient} has no open record here", UNKNOWN_PATIENT)
    if caller.kind == PROFESSIONAL:
        if rules.check_resource_id and not same_patient(caller.patient, state.patient):
            named = caller.patient or "no patient"
            return deny(f"the token's resource-id names {named}, not the patient of the request ({state.patient})",
                        PATIENT_MISMATCH)
        if caller.person is not None and caller.person in state.blocked:
            return deny("the patient has blocked this professional's access")
        if caller.secret and not state.minor:
            return deny("connexion secrète (INVISIBLE_REPRESENTANTS_LEGAUX) is only for a minor patient")
    return ALLOW


def _consultation_basis(caller: Caller, state: AccessState, now: float) -> str | None:
    """C-12: why a professional may consult this record, or None."""
    if caller.person is not None and caller.person == state.treating_doctor:
        return "treating doctor"
    if state.authorises(caller.person, now):
        return "authorised"
    if caller.purpose == BREAK_GLASS and caller.auth_mode == DIRECTE and not state.objects_break_glass:
        return "break-the-glass"
    if caller.purpose == CENTRE_15 and not state.objects_centre_15:
        return "centre 15"
    return None


def visibility(rules: Rules, caller: Caller, state: AccessState, op: str, now: float) -> Visibility:
    """Which of this patient's objects the caller may see when reading (READ) or finding references (LOCATE).
    A caller who may not read at all gets `nothing`; checks that refuse the request outright are in
    may_query."""
    if caller.kind == ADMIN or not rules.dmp:
        return EVERYTHING
    gate = _dmp_gate(rules, caller, state)
    if not gate:
        return nothing(gate.reason)
    if caller.kind == SYSTEM:
        return nothing("a system without a token does not consult a DMP")
    if caller.kind == PATIENT:
        if is_patient_self(caller, state):
            return Visibility(hide_patient_invisible=True)
        if is_representative(caller, state):
            return Visibility(hide_patient_invisible=True, hide_rl_invisible=True)
        return nothing("this person is neither the patient nor a legal representative")
    if op == LOCATE and not _consults(rules, caller):
        # Finding references without consultation (TD3.1b): one's own submissions only.
        if caller.organisation is None:
            return nothing("no structure to find own submissions for")
        return Visibility(own_only=True, organisation=caller.organisation)
    if not _consults(rules, caller):
        return nothing("this authentication mode or profession may not consult")
    if _consultation_basis(caller, state, now) is None:
        return nothing("no authorisation, not the treating doctor, and no emergency access")
    types = rules.matrix.types_for(caller.profession)
    mt = caller.person is not None and caller.person == state.treating_doctor
    return Visibility(hide_masked=not mt, types=types if types is not False else frozenset(),
                      organisation=caller.organisation, person=caller.person)


def sees_at_all(rules: Rules, caller: Caller, state: AccessState, doc: Document, now: float) -> bool:
    """Whether the caller sees the object by consulting or by finding references: a change aimed at an
    object it does not is answered as one aimed at an unknown object."""
    return any(visibility(rules, caller, state, op, now).admits(doc, now) for op in (READ, LOCATE))


def may_query(rules: Rules, caller: Caller, state: AccessState, leaf_class: bool) -> Decision:
    """Refusals of a whole ITI-18 about this patient (not filters): C-8, C-9, C-10."""
    if caller.kind == ADMIN or not rules.dmp:
        return ALLOW
    gate = _dmp_gate(rules, caller, state)
    if gate.refusal in (UNKNOWN_PATIENT, PATIENT_MISMATCH):
        return gate
    if caller.kind == PROFESSIONAL and caller.secret and not state.minor:
        return deny("connexion secrète (INVISIBLE_REPRESENTANTS_LEGAUX) is only for a minor patient")  # C-15
    if leaf_class and caller.kind == PROFESSIONAL and not _consults(rules, caller):
        return deny("this authentication mode or profession may find references (ObjectRef) but not consult")
    return ALLOW


def may_retrieve(rules: Rules, caller: Caller, state: AccessState, doc: Document, now: float) -> Decision:
    """ITI-43 of one document: a document the caller cannot see is answered as an unknown one."""
    if caller.kind == ADMIN or not rules.dmp:
        return ALLOW
    gate = _dmp_gate(rules, caller, state)
    if gate.refusal == PATIENT_MISMATCH:
        return gate
    if caller.kind == PROFESSIONAL and gate and not _consults(rules, caller):
        return deny("this authentication mode or profession may not consult documents")
    if not visibility(rules, caller, state, READ, now).admits(doc, now):
        return deny("not visible to this caller", HIDDEN)
    return ALLOW


def may_feed(rules: Rules, caller: Caller, state: AccessState) -> Decision:
    """ITI-41/42 for this patient. Generic: anyone authenticated. DMP: C-9, C-10, C-11, C-13 (no authorisation
    needed), and only a professional or the patient feeds."""
    if caller.kind == ADMIN or not rules.dmp:
        return ALLOW
    gate = _dmp_gate(rules, caller, state)
    if not gate:
        return gate
    if caller.kind == PROFESSIONAL or is_patient_self(caller, state):
        return ALLOW
    return deny("only a professional with a token or the patient feeds a DMP")


def may_change(rules: Rules, caller: Caller, state: AccessState, doc: Document, op: str, now: float,
               ) -> Decision:
    """REPLACE, UPDATE, DELETE of a registered object. A target the caller cannot see is HIDDEN (answered as
    unknown). Generic: the submitter or an administrator. DMP (Table E, B-33 to B-36): deletion and
    replacement by the author's structure; other updates (confidentiality, archiving) also by the patient,
    the treating doctor, or an authorised professional in direct or reinforced mode."""
    if caller.kind == ADMIN:
        return ALLOW
    own = caller.organisation is not None and doc.origin_org == caller.organisation
    if not rules.dmp:
        return ALLOW if own else deny("only the submitter of the target or an administrator may change it")
    # A target the caller cannot see is answered as unknown, whatever else would refuse the change.
    if not sees_at_all(rules, caller, state, doc, now):
        return deny("not visible to this caller", HIDDEN)
    gate = _dmp_gate(rules, caller, state)
    if not gate:
        return gate
    if caller.kind == SYSTEM:
        return deny("a system without a token does not change a DMP")
    if op in (DELETE, REPLACE):
        if own or (is_patient_self(caller, state) and doc.origin_person is not None
                   and same_patient(doc.origin_person, state.patient)):
            return ALLOW
        return deny("only the author's structure deletes or replaces a document")
    if own or is_patient_self(caller, state):
        return ALLOW
    if caller.kind == PROFESSIONAL and caller.person is not None:
        if caller.person == state.treating_doctor:
            return ALLOW
        if caller.auth_mode in (DIRECTE, AIR) and state.authorises(caller.person, now):
            return ALLOW
    return deny("only the patient, the treating doctor, an authorised professional or the author's structure "
                "changes this document")


def may_remove_documents(caller: Caller, registry_subjects: Iterable[str]) -> Decision:
    """ITI-86 on a host: from its registry or an administrator (every deployment)."""
    if caller.kind == ADMIN:
        return ALLOW
    if caller.subjects & set(registry_subjects):
        return ALLOW
    return deny("ITI-86 on this host is accepted only from its registry or an administrator")


def may_manage(caller: Caller, state: AccessState, action: str, person: str | None = None) -> Decision:
    """The administration interface. Administrators manage every record; the patient their own (a legal
    representative too, while the patient is a minor); a professional may record or withdraw their own
    authorisation (TD0.3), unless blocked; reading the whole state ("show") is for the first two."""
    if caller.kind == ADMIN:
        return ALLOW
    if is_patient_self(caller, state) or (is_representative(caller, state) and state.minor):
        return ALLOW
    if (caller.kind == PROFESSIONAL and action in ("grant", "revoke") and person is not None
            and person == caller.person and person not in state.blocked and state.exists and not state.closed):
        return ALLOW
    return deny("this caller may not manage this patient's access")
