"""Stateless validation of an ITI-41/42/57 submission's metadata.

Every problem is collected rather than stopping at the first, so that a submitter can fix
a message in one round trip. Checks that need the registry's contents live in the registry.
"""
from __future__ import annotations

from .. import errors as E
from ..errors import ErrorList
from ..model import Submission
from .associations import check_associations
from .common import check_every_object
from .context import MODES, Context, Mode
from .objects import check_objects
from .profiles import Profile, get_profile, profile_names, register_profile
from .structure import check_structure

__all__ = ["validate_submission", "Mode", "MODES", "Profile", "get_profile", "profile_names", "register_profile"]


def validate_submission(sub: Submission, mode: Mode, profile: str | None = None, *,
                        implied_references: bool = False) -> ErrorList:
    """All metadata problems of ``sub`` for ``mode`` (Mode.REGISTER, PROVIDE or UPDATE; their
    string values are accepted too).

    ``profile`` names extra rules (see profiles.py); None means plain IHE. ``implied_references``: a nested
    Classification or ExternalIdentifier without classifiedObject / registryObject belongs to its enclosing
    object, with a warning (the DMP's official examples and C# kit leave them out).
    """
    if mode not in MODES:
        raise ValueError(f"unknown validation mode {mode!r}; expected one of {', '.join(MODES)}")
    mode = Mode(mode)
    chosen = get_profile(profile or "ihe")
    errors = ErrorList(E.REGISTRY_METADATA_ERROR)
    ctx = Context.build(sub, mode, chosen, errors)
    ctx.implied_references = implied_references
    check_every_object(ctx)
    check_objects(ctx)
    check_associations(ctx)
    check_structure(ctx)
    for rule in chosen.rules:
        rule(ctx)
    return errors
