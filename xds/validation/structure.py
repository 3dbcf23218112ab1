"""How the objects of one submission fit together (RULES §3.6; IPF rules 1, 4, 6, 37-39).

Only what the message itself shows is checked here: whether an urn:uuid: reference that
leaves the submission names a real, approved, same-patient registry object is the
registry's business.
"""
from __future__ import annotations

from .. import constants as C
from .. import errors as E
from .. import hl7
from ..hl7 import is_uuid_urn
from ..model import Association, DocumentEntry, Folder, RegistryObject, SubmissionSet
from .context import Context, Mode, is_symbolic

# Endpoint kinds beyond the model's object kinds.
EXTERNAL = "registry object"  # a urn:uuid: not in the submission
UNRESOLVED = "unresolved"
MISSING = "missing"

_FOLDER_SIDE = ("Folder", EXTERNAL)
_ENTRY_SIDE = ("DocumentEntry", EXTERNAL)


def check_structure(ctx: Context) -> None:
    _one_submission_set(ctx)
    _references(ctx)
    _membership(ctx)
    _has_member_patterns(ctx)
    _relationships(ctx)
    _single_patient(ctx)
    _unique_ids(ctx)


def _kind(ctx: Context, ident: str | None) -> str:
    if not ident:
        return MISSING
    obj = ctx.by_id.get(ident)
    if obj is None:
        return UNRESOLVED if is_symbolic(ident) else EXTERNAL
    return obj.kind


def _one_submission_set(ctx: Context) -> None:
    sets = ctx.sub.submission_sets
    if not sets:
        ctx.report_at("RegistryObjectList", "Submission", "SubmissionSet", "is missing; exactly one is required")
    for extra in sets[1:]:
        ctx.report(extra, "SubmissionSet", f"is one of {len(sets)} SubmissionSets; exactly one is allowed "
                                           f"(the first is '{sets[0].id}')")


def _references(ctx: Context) -> None:
    for a in ctx.sub.associations:
        for attribute, ident in (("sourceObject", a.source), ("targetObject", a.target)):
            if not ident:
                continue
            if is_symbolic(ident):
                if ident not in ctx.by_id:
                    ctx.report(a, attribute, f"symbolic id '{ident}' does not name an object of the submission")
            elif not is_uuid_urn(ident):
                ctx.report(a, attribute, f"'{ident}' starts with urn:uuid: but is not a lower-case UUID")


def _submission_set_links(ctx: Context, target: str) -> list[Association]:
    return [a for a in ctx.assocs_by_target.get(target, ())
            if a.type == C.ASSOC_HAS_MEMBER and ctx.is_submission_set(a.source)]


def _membership(ctx: Context) -> None:
    for de in ctx.sub.document_entries:
        links = _submission_set_links(ctx, de.id)
        if not links:
            ctx.report(de, "SubmissionSet membership", "no HasMember association links the SubmissionSet to it")
            continue
        statuses = [a.submission_set_status for a in links]
        if "Original" not in statuses:
            # A missing slot is reported with the association; here only a wrong value is.
            for a in links:
                if a.submission_set_status is not None:
                    ctx.report(a, "SubmissionSetStatus", f"is '{a.submission_set_status}' but DocumentEntry "
                                                         f"'{de.id}' is submitted here, so it must be Original")
    for folder in ctx.sub.folders:
        if not _submission_set_links(ctx, folder.id):
            ctx.report(folder, "SubmissionSet membership", "no HasMember association links the SubmissionSet to it")


def _submitted_by_association(ctx: Context) -> set[str]:
    """Associations that ITI-57 adds between registered objects (SubmissionSet -SubmitAssociation->)."""
    if ctx.mode != Mode.UPDATE:
        return set()
    return {a.target for a in ctx.sub.associations
            if a.type == C.ASSOC_SUBMIT_ASSOCIATION and a.target and ctx.is_submission_set(a.source)}


def _has_member_patterns(ctx: Context) -> None:
    held_by_set = {a.target for a in ctx.sub.associations
                   if a.type == C.ASSOC_HAS_MEMBER and ctx.is_submission_set(a.source)}
    held_by_set |= _submitted_by_association(ctx)
    for a in ctx.sub.associations:
        if a.type != C.ASSOC_HAS_MEMBER:
            continue
        source, target = _kind(ctx, a.source), _kind(ctx, a.target)
        if MISSING in (source, target) or UNRESOLVED in (source, target) or target == "SubmissionSet":
            continue  # reported by the reference and association rules
        if source == "SubmissionSet":
            _set_member(ctx, a, target)
        elif source in _FOLDER_SIDE:
            if target not in _ENTRY_SIDE:
                ctx.report(a, "targetObject", f"a Folder can only hold DocumentEntries, not a {target}")
            elif a.id not in held_by_set:
                ctx.report(a, "SubmissionSet membership",
                           "a Folder to DocumentEntry HasMember must itself be held by the SubmissionSet "
                           "(SubmissionSet to Association HasMember)")
        else:
            ctx.report(a, "sourceObject", f"a HasMember must start at the SubmissionSet or a Folder, not at a {source}")


def _set_member(ctx: Context, a: Association, target: str) -> None:
    if target in ("DocumentEntry", "Folder", EXTERNAL):
        return
    if target == "Association":
        inner = ctx.by_id[a.target or ""]
        # A broken end of the inner association is reported on that association already.
        broken = (MISSING, UNRESOLVED)
        if not (isinstance(inner, Association) and inner.type == C.ASSOC_HAS_MEMBER
                and _kind(ctx, inner.source) in _FOLDER_SIDE + broken
                and _kind(ctx, inner.target) in _ENTRY_SIDE + broken):
            ctx.report(a, "targetObject", f"association '{a.target}' is not a Folder to DocumentEntry HasMember, "
                                          "the only association a SubmissionSet may hold")
        return
    ctx.report(a, "targetObject", f"a SubmissionSet cannot hold a {target}")


def _relationships(ctx: Context) -> None:
    # A relationship submitted on its own links two registered entries, so its source is not new.
    between_registered = _submitted_by_association(ctx)
    for a in ctx.sub.associations:
        if a.type not in C.RELATIONSHIP_TYPES:
            continue
        name = C.last_segment(a.type)
        source = ctx.by_id.get(a.source or "")
        if not isinstance(source, DocumentEntry):
            if _kind(ctx, a.source) not in (MISSING, UNRESOLVED) and a.id not in between_registered:
                ctx.report(a, "sourceObject", f"'{a.source}' must be a DocumentEntry of the submission for {name}")
        elif a.type == C.ASSOC_IS_SNAPSHOT_OF and source.is_on_demand:
            ctx.report(a, "sourceObject", f"'{a.source}' is on-demand; an IsSnapshotOf source must be stable")
        if ctx.is_in_submission(a.target) and not ctx.is_submission_set(a.target):
            ctx.report(a, "targetObject", f"'{a.target}' is in the submission; {name} must target an entry "
                                          "already in the registry (its urn:uuid:)")


def _subjects(ctx: Context) -> list[RegistryObject]:
    return [o for o in ctx.sub.objects if isinstance(o, (SubmissionSet, DocumentEntry, Folder))]


def _single_patient(ctx: Context) -> None:
    subjects = _subjects(ctx)
    # The SubmissionSet states whom the submission is about; entries are compared with it.
    ordered = ctx.sub.submission_sets[:1] + subjects
    reference = next((o for o in ordered if o.patient_id), None)
    if reference is None:
        return
    for o in subjects:
        # One identity (CX.1 + CX.4): a profile's CX.5/CX.7 may be written on some objects only.
        if o.patient_id and not hl7.same_patient(o.patient_id, reference.patient_id):
            ctx.report(o, "patientId", f"'{o.patient_id}' differs from patientId '{reference.patient_id}' of "
                                       f"{ctx.label(reference)}; a submission is about one patient",
                       E.PATIENT_ID_DOES_NOT_MATCH)


def _unique_ids(ctx: Context) -> None:
    seen: dict[str, RegistryObject] = {}
    for o in _subjects(ctx):
        uid = o.unique_id
        if not uid:
            continue
        if uid in seen:
            ctx.report(o, "uniqueId", f"'{uid}' is also the uniqueId of {ctx.label(seen[uid])}",
                       ctx.duplicate_unique_id_code)
        else:
            seen[uid] = o
