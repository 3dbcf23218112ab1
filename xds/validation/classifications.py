"""Which classifications an object may carry, how many, and the shape of a coded one.

RULES §3.1-3.4; IPF rules 9, 19, 20.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..model import Classification, RegistryObject
from .authors import check_author
from .common import describe_classification
from .context import Context


@dataclass(frozen=True)
class CodeRule:
    attribute: str
    least: int
    most: int | None


@dataclass(frozen=True)
class ClassificationRules:
    coded: dict[str, CodeRule]
    author_scheme: str | None
    limited_metadata_scheme: str
    # classificationNode values that mark what the object is (SubmissionSet or Folder).
    markers: tuple[str, ...] = ()


def check_classifications(ctx: Context, obj: RegistryObject, rules: ClassificationRules) -> None:
    counts: Counter[str] = Counter()
    for c in obj.classifications:
        what = describe_classification(c)
        if c.scheme in rules.coded:
            counts[c.scheme] += 1
            check_coded(ctx, obj, c, rules.coded[c.scheme].attribute)
        elif c.scheme and c.scheme == rules.author_scheme:
            check_author(ctx, obj, c)
        elif c.scheme and c.scheme == rules.limited_metadata_scheme:
            ctx.report(obj, f"{what} limitedMetadata", "limited metadata is only allowed in XDR and XDM, not XDS")
        elif c.scheme:
            ctx.report(obj, f"{what} classificationScheme", f"'{c.scheme}' is not a {obj.kind} classification")
        elif c.classification_node and c.classification_node not in rules.markers:
            ctx.report(obj, f"{what} classificationNode", f"'{c.classification_node}' does not apply to a {obj.kind}")
    for scheme, rule in rules.coded.items():
        n = counts[scheme]
        if n < rule.least:
            ctx.report(obj, rule.attribute, "is required" if n == 0 else f"needs at least {rule.least}, has {n}")
        if rule.most is not None and n > rule.most:
            ctx.report(obj, rule.attribute, f"appears {n} times, at most {rule.most} allowed")


def check_coded(ctx: Context, obj: RegistryObject, c: Classification, attribute: str) -> None:
    where = f"{attribute} {describe_classification(c)}"
    if not c.node_representation:
        ctx.report(obj, f"{where} nodeRepresentation", "is missing; it carries the code")
    schemes = c.slot("codingScheme")
    if schemes is None:
        ctx.report(obj, f"{where} codingScheme", "slot is missing")
    elif len(schemes) != 1 or not schemes[0].strip():
        ctx.report(obj, f"{where} codingScheme", f"slot needs exactly one non-empty value, has {schemes!r}")
    if not c.name:
        ctx.report(obj, f"{where} Name", "is missing; it carries the code's display name")
