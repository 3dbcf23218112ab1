"""Rules on each Association by itself (RULES §3.5; IPF rules 36, 37, 40).

How associations tie the submission together is in structure.py.
"""
from __future__ import annotations

from .. import constants as C
from ..model import Association, DocumentEntry
from .context import Context, Mode, is_symbolic

SS_STATUS_VALUES = ("Original", "Reference")
_DOCUMENTED_TYPES = (C.ASSOC_RPLC, C.ASSOC_XFRM, C.ASSOC_APND, C.ASSOC_XFRM_RPLC)
_UPDATE_ONLY_TYPES = (C.ASSOC_UPDATE_AVAILABILITY_STATUS, C.ASSOC_SUBMIT_ASSOCIATION)


def check_associations(ctx: Context) -> None:
    if ctx.mode == Mode.ON_DEMAND:
        allowed = C.ON_DEMAND_ASSOCIATION_TYPES
    else:
        allowed = C.REGISTER_ASSOCIATION_TYPES + (_UPDATE_ONLY_TYPES if ctx.mode == Mode.UPDATE else ())
    for a in ctx.sub.associations:
        _check_type(ctx, a, allowed)
        _check_ends(ctx, a)
        _check_submission_set_status(ctx, a)
        _check_documentation(ctx, a)
        if a.type == C.ASSOC_UPDATE_AVAILABILITY_STATUS:
            _check_update_availability(ctx, a)
        elif a.type == C.ASSOC_SUBMIT_ASSOCIATION:
            _check_submit_association(ctx, a)


def _check_type(ctx: Context, a: Association, allowed: tuple[str, ...]) -> None:
    if not a.type:
        ctx.report(a, "associationType", "is missing")
    elif a.type not in allowed and ctx.mode == Mode.ON_DEMAND:
        ctx.report(a, "associationType", f"'{a.type}' is not allowed in ITI-61, which takes HasMember and RPLC "
                                         "(an On-Demand entry replacing another) only")
    elif a.type not in allowed:
        ctx.report(a, "associationType", f"'{a.type}' is not an association type {ctx.mode} accepts")


def _check_ends(ctx: Context, a: Association) -> None:
    for attribute, value in (("sourceObject", a.source), ("targetObject", a.target)):
        if not value:
            ctx.report(a, attribute, "is missing")
    if a.source and a.source == a.target:
        ctx.report(a, "targetObject", f"'{a.target}' is also the sourceObject; an association cannot link an "
                                      "object to itself")
    if ctx.is_submission_set(a.target) and not _is_signed_submission_set(ctx, a):
        ctx.report(a, "targetObject", f"'{a.target}' is the SubmissionSet; no association may target it")


def _is_signed_submission_set(ctx: Context, a: Association) -> bool:
    # IHE DSG signs a whole submission with a signs association pointing at the SubmissionSet;
    # NIST rejects it, so only profiles that rely on it (the French DMP) let it through.
    return a.type == C.ASSOC_SIGNS and ctx.profile.signs_may_target_submission_set


def _check_submission_set_status(ctx: Context, a: Association) -> None:
    values = a.slot("SubmissionSetStatus")
    if values is None:
        if (a.type == C.ASSOC_HAS_MEMBER and ctx.is_submission_set(a.source)
                and isinstance(ctx.by_id.get(a.target or ""), DocumentEntry)):
            ctx.report(a, "SubmissionSetStatus", f"slot is required on a SubmissionSet to DocumentEntry HasMember "
                                                 f"(target '{a.target}')")
        return
    if len(values) != 1 or values[0] not in SS_STATUS_VALUES:
        ctx.report(a, "SubmissionSetStatus", f"must be exactly one of {', '.join(SS_STATUS_VALUES)}, got {values!r}")
    elif (values[0] == "Original" and a.type == C.ASSOC_HAS_MEMBER and ctx.is_submission_set(a.source)
          and a.target and not is_symbolic(a.target) and not ctx.is_in_submission(a.target)):
        ctx.report(a, "SubmissionSetStatus", f"is Original but target '{a.target}' is not in the submission; "
                                             "an existing entry is linked with Reference")


def _check_documentation(ctx: Context, a: Association) -> None:
    docs = a.classifications_by(C.ASSOCIATION_DOCUMENTATION)
    if not docs:
        return
    if a.type not in _DOCUMENTED_TYPES:
        ctx.report(a, "documentation classification", "is only allowed on RPLC, XFRM, APND and XFRM_RPLC "
                                                       "associations")
    if len(docs) > 1:
        ctx.report(a, "documentation classification", f"appears {len(docs)} times, at most once allowed")


def _check_update_availability(ctx: Context, a: Association) -> None:
    if not ctx.is_submission_set(a.source):
        ctx.report(a, "sourceObject", f"'{a.source}' must be the SubmissionSet for UpdateAvailabilityStatus")
    for name in ("OriginalStatus", "NewStatus"):
        values = a.slot(name)
        if not values or len(values) != 1 or not values[0]:
            ctx.report(a, f"slot {name}", "needs exactly one status value for UpdateAvailabilityStatus")


def _check_submit_association(ctx: Context, a: Association) -> None:
    if not ctx.is_submission_set(a.source):
        ctx.report(a, "sourceObject", f"'{a.source}' must be the SubmissionSet for SubmitAssociation")
    if not isinstance(ctx.by_id.get(a.target or ""), Association):
        ctx.report(a, "targetObject", f"'{a.target}' must be an Association of the submission for SubmitAssociation")
