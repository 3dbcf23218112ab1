"""Author classifications of DocumentEntries and SubmissionSets (RULES §3.1; IPF rule 21)."""
from __future__ import annotations

from .. import hl7
from ..model import Classification, RegistryObject
from .common import describe_classification
from .context import Context

AUTHOR_SLOTS = ("authorPerson", "authorInstitution", "authorRole", "authorSpecialty", "authorTelecommunication")
# The slots that say who the author is; role and specialty only qualify one of these.
_IDENTIFYING = ("authorPerson", "authorInstitution", "authorTelecommunication")


def check_author(ctx: Context, obj: RegistryObject, c: Classification) -> None:
    what = describe_classification(c) + " (author)"
    if c.node_representation:
        ctx.report(obj, f"{what} nodeRepresentation", f"must be empty for an author, got '{c.node_representation}'")
    values = {s.name: s.values for s in c.slots}
    if not any(v for name in _IDENTIFYING for v in values.get(name, ())):
        ctx.report(obj, f"{what} authorPerson", "an author needs at least one of authorPerson, "
                                                "authorInstitution or authorTelecommunication")
    if len(values.get("authorPerson", ())) > 1:
        ctx.report(obj, f"{what} authorPerson", f"takes one value, has {len(values['authorPerson'])}")
    formats = {"authorPerson": hl7.check_xcn, "authorInstitution": ctx.profile.checker("authorInstitution"),
               "authorTelecommunication": hl7.check_xtn}
    for name, check in formats.items():
        for v in values.get(name, ()):
            for problem in check(v):
                ctx.report(obj, f"{what} {name}", f"value '{v}': {problem}")
    for name in values:
        if name and name not in AUTHOR_SLOTS and not name.startswith("urn:"):
            ctx.report(obj, f"{what} slot {name}", f"is not an author attribute ({', '.join(AUTHOR_SLOTS)})")
