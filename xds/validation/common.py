"""Rules that hold for every object of a submission whatever its type.

Ids, slot hygiene, nested Classifications and ExternalIdentifiers, and Name/Description
structure (RULES §3.1; IPF rules 2, 7, 20, 22, 41).
"""
from __future__ import annotations

from typing import Callable

from lxml import etree

from ..hl7 import is_oid, is_uuid_urn
from ..model import Classification, ExternalIdentifier, LocalizedString, RegistryObject, Slot
from .context import Context

# ebRIM 3.0 types a slot Value as LongName (256 characters) and IPF rejects anything longer.
# XDS itself has no such limit on e.g. URI, which is why it defines the "n|fragment" split:
# the limit is kept because a sender following that convention never exceeds it.
MAX_SLOT_VALUE = 256
# ebRIM 3.0's string types for the attributes the registry stores in columns (registry/schema.py is
# as wide): LongName for nodeRepresentation, ExternalIdentifier value and mimeType; FreeFormText for
# a LocalizedString. Checked here so that SQLite and PostgreSQL refuse the same values, as metadata.
LONG_NAME = 256
FREE_FORM_TEXT = 1024

Report = Callable[..., None]


def check_every_object(ctx: Context) -> None:
    owners: dict[str, str] = {}
    lids: dict[str, str] = {}
    for obj in ctx.sub.objects:
        report = _reporter(ctx, obj)
        _claim_id(report, obj.id, "id", ctx.label(obj), owners)
        _claim_lid(ctx, obj, lids)
        _check_home(ctx, obj)
        check_slot_hygiene(report, obj.slots, "")
        _check_localized(report, obj.names, obj.descriptions, "")
        _check_length(report, "mimeType", getattr(obj, "mime_type", None), LONG_NAME)
        for c in obj.classifications:
            _nested_classification(ctx, obj, c, owners)
        for e in obj.external_ids:
            _nested_external_id(ctx, obj, e, owners)
    for c in ctx.sub.loose_classifications:
        _stray(ctx, "Classification", describe_classification(c), c.id, "classifiedObject", c.classified_object,
               owners)
    for el in ctx.sub.unknown_elements:
        local = etree.QName(el).localname
        ctx.report_at(el.get("id") or local, "rim:RegistryObjectList", "content",
                      f"holds an element {local}, which a submission may not hold (ExtrinsicObject, RegistryPackage, "
                      f"Association, Classification and ExternalIdentifier may)")
    for e in ctx.sub.loose_external_ids:
        what = f"ExternalIdentifier '{e.id}'" if e.id else f"ExternalIdentifier (no id, scheme {e.scheme})"
        _stray(ctx, "ExternalIdentifier", what, e.id, "registryObject", e.registry_object, owners)


def _reporter(ctx: Context, obj: RegistryObject) -> Report:
    return lambda attribute, problem, code=None: ctx.report(obj, attribute, problem, code)


def describe_classification(c: Classification) -> str:
    if c.id:
        return f"Classification '{c.id}'"
    return f"Classification (no id, scheme {c.scheme or c.classification_node})"


def _claim_id(report: Report, ident: str, attribute: str, owner: str, owners: dict[str, str]) -> None:
    if not ident:
        report(attribute, "is missing")
    elif ident.startswith("urn:uuid:") and not is_uuid_urn(ident):
        report(attribute, f"'{ident}' starts with urn:uuid: but is not a lower-case UUID")
    elif ident in owners:
        report(attribute, f"'{ident}' is also the id of {owners[ident]}; ids must be unique in a submission")
    else:
        owners[ident] = owner


def _claim_lid(ctx: Context, obj: RegistryObject, lids: dict[str, str]) -> None:
    # Two new objects cannot start the same version chain (IPF LOGICAL_ID_SAME).
    lid = obj.lid
    if not lid:
        return
    if lid in lids:
        ctx.report(obj, "lid", f"'{lid}' is also the lid of {lids[lid]}")
    else:
        lids[lid] = ctx.label(obj)


def _check_home(ctx: Context, obj: RegistryObject) -> None:
    home = obj.home
    if home is not None and not (home.startswith("urn:oid:") and is_oid(home[len("urn:oid:"):])):
        ctx.report(obj, "home", f"'{home}' is not a homeCommunityId (urn:oid: followed by an OID)")


def check_slot_hygiene(report: Report, slots: list[Slot], where: str) -> None:
    seen: set[str] = set()
    for s in slots:
        if not s.name:
            report(f"{where}slot", "has an empty name")
            continue
        if s.name in seen:
            report(f"{where}slot {s.name}", "is defined more than once")
        seen.add(s.name)
        for v in s.values:
            if len(v) > MAX_SLOT_VALUE:
                report(f"{where}slot {s.name}",
                       f"a value is {len(v)} characters long, at most {MAX_SLOT_VALUE} allowed")


def _check_length(report: Report, attribute: str, value: str | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        report(attribute, f"is {len(value)} characters long, at most {limit} allowed")


def _check_localized(report: Report, names: list[LocalizedString], descriptions: list[LocalizedString],
                     where: str) -> None:
    for tag, strings in (("Name", names), ("Description", descriptions)):
        # ebRIM's InternationalStringType allows zero LocalizedStrings: an empty Name or
        # Description is valid (the NIST test metadata sends <rim:Description/>).
        for ls in strings:
            if ls.value is None:
                report(f"{where}{tag}", "has a LocalizedString without a value attribute")
            else:
                _check_length(report, f"{where}{tag}", ls.value, FREE_FORM_TEXT)


def _implied(ctx: Context, obj: RegistryObject, attribute: str) -> None:
    ctx.errors.warn(f"{ctx.label(obj)} {attribute}: is missing; taken as the enclosing object's id '{obj.id}' "
                    "(implied_references setting)", obj.id)


def _nested_classification(ctx: Context, obj: RegistryObject, c: Classification, owners: dict[str, str]) -> None:
    report = _reporter(ctx, obj)
    what = describe_classification(c)
    _claim_id(report, c.id, f"{what} id", f"{what} of {ctx.label(obj)}", owners)
    if c.classified_object is None and ctx.implied_references:
        _implied(ctx, obj, f"{what} classifiedObject")
        c.classified_object = obj.id
    if c.classified_object != obj.id:
        found = f"'{c.classified_object}'" if c.classified_object else "missing"
        report(f"{what} classifiedObject", f"is {found}, expected the enclosing object's id '{obj.id}'")
    if not c.scheme and not c.classification_node:
        report(f"{what} classificationScheme", "is missing (and there is no classificationNode either)")
    elif c.scheme and not is_uuid_urn(c.scheme):
        report(f"{what} classificationScheme", f"'{c.scheme}' is not a urn:uuid: identifier")
    _check_length(report, f"{what} nodeRepresentation", c.node_representation, LONG_NAME)
    check_slot_hygiene(report, c.slots, f"{what} ")
    _check_localized(report, c.names, c.descriptions, f"{what} ")


def _nested_external_id(ctx: Context, obj: RegistryObject, e: ExternalIdentifier, owners: dict[str, str]) -> None:
    report = _reporter(ctx, obj)
    what = f"ExternalIdentifier '{e.id}'" if e.id else f"ExternalIdentifier (no id, scheme {e.scheme})"
    _claim_id(report, e.id, f"{what} id", f"{what} of {ctx.label(obj)}", owners)
    if e.registry_object is None and ctx.implied_references:
        _implied(ctx, obj, f"{what} registryObject")
        e.registry_object = obj.id
    if e.registry_object != obj.id:
        found = f"'{e.registry_object}'" if e.registry_object else "missing"
        report(f"{what} registryObject", f"is {found}, expected the enclosing object's id '{obj.id}'")
    if not e.scheme:
        report(f"{what} identificationScheme", "is missing")
    elif not is_uuid_urn(e.scheme):
        report(f"{what} identificationScheme", f"'{e.scheme}' is not a urn:uuid: identifier")
    if not e.value or not e.value.strip():
        report(f"{what} value", "is empty")
    _check_length(report, f"{what} value", e.value, LONG_NAME)
    if not e.name:
        report(f"{what} Name", "is missing")
    _check_localized(report, e.names, e.descriptions, f"{what} ")


def _stray(ctx: Context, kind: str, what: str, ident: str, attribute: str, target: str | None,
           owners: dict[str, str]) -> None:
    """A top-level Classification or ExternalIdentifier that names no object of the submission
    (ebrim.nest_top_level nested every other one in its object)."""
    def report(attr: str, problem: str, code: str | None = None) -> None:
        ctx.report_at(ident or target or "RegistryObjectList", what, attr, problem, code)

    _claim_id(report, ident, "id", what, owners)
    if not target:
        report(attribute, "is missing: at the top of the RegistryObjectList it must name the object it belongs to")
    else:
        report(attribute, f"'{target}' is no ExtrinsicObject, RegistryPackage or Association of this submission, "
                          f"so nothing holds this {kind}")
