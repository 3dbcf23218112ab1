"""The engine's rewrites of submitted metadata (ebRIM 3.0): forced patient ids, fresh
uniqueIds, the toolkit's sourceId and fresh UUIDs in place of symbolic ids.

Each returns what it assigned, object id → value, which the step log keeps for
UseId and the `<object>_uid` / `<object>_uuid` reports.
"""
from __future__ import annotations

from typing import Callable

from lxml import etree

from xds import constants as C

from .context import EngineError

PATIENT_ID_SCHEMES = (C.DE_PATIENT_ID, C.SS_PATIENT_ID, C.FOLDER_PATIENT_ID)
UNIQUE_ID_SCHEMES = (C.DE_UNIQUE_ID, C.SS_UNIQUE_ID, C.FOLDER_UNIQUE_ID)
_REF_ATTRS = ("classifiedObject", "sourceObject", "targetObject", "registryObject")
_RIM_EI = C.q(C.NS_RIM, "ExternalIdentifier")


def _owner(ei: etree._Element) -> str:
    parent = ei.getparent()
    if parent is not None and parent.get("id"):
        return parent.get("id")
    return ei.get("registryObject") or ""


def _identifiers(root: etree._Element, schemes) -> list[etree._Element]:
    return [ei for ei in root.iter(_RIM_EI) if ei.get("identificationScheme") in schemes]


def force_patient_id(root: etree._Element, pid: str) -> dict[str, str]:
    assigned = {}
    for ei in _identifiers(root, PATIENT_ID_SCHEMES):
        ei.set("value", pid)
        assigned[_owner(ei)] = pid
    return assigned


def assign_unique_ids(root: etree._Element, new_uid: Callable[[], str], spare: set[str],
                      excluded_schemes: set[str] = frozenset()) -> dict[str, str]:
    assigned = {}
    for ei in _identifiers(root, UNIQUE_ID_SCHEMES):
        owner = _owner(ei)
        if owner in spare or ei.get("identificationScheme") in excluded_schemes:
            continue
        uid = new_uid()
        ei.set("value", uid)
        assigned[owner] = uid
    return assigned


def set_source_id(root: etree._Element, source_id: str) -> dict[str, str]:
    assigned = {}
    for ei in _identifiers(root, (C.SS_SOURCE_ID,)):
        ei.set("value", source_id)
        assigned[_owner(ei)] = source_id
    return assigned


def assign_uuids(root: etree._Element, new_uuid: Callable[[], str]) -> dict[str, str]:
    """Give every non-UUID id a fresh urn:uuid and follow the references to it; lid stays.

    Each element gets its own UUID even when a file repeats a symbolic id (some kit files
    reuse Classification ids across entries); references follow the first holder.
    """
    mapping: dict[str, str] = {}
    for el in root.iter(etree.Element):
        ident = el.get("id")
        if ident is None or ident.startswith("urn:uuid:") or etree.QName(el).namespace != C.NS_RIM:
            continue
        fresh = new_uuid()
        mapping.setdefault(ident, fresh)
        el.set("id", fresh)
    for el in root.iter(etree.Element):
        if etree.QName(el).namespace != C.NS_RIM:
            continue
        for attr in _REF_ATTRS:
            ref = el.get(attr)
            if ref is None or ref.startswith("urn:uuid:"):
                continue
            if ref not in mapping:
                raise EngineError(f"AssignUuids: {etree.QName(el).localname} {attr}={ref!r} names no object "
                                  "of this submission")
            el.set(attr, mapping[ref])
    return mapping
