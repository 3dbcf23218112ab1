"""The part of the toolkit's response metadata validation that applies to any query
result, whatever the codes: ids, lids, status and version of each returned object."""
from __future__ import annotations

import re

from lxml import etree

from xds import constants as C

_UUID = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_VERSIONED = ("ExtrinsicObject", "RegistryPackage")


def check_query_response(body: etree._Element) -> list[str]:
    rol = body.find(C.q(C.NS_RIM, "RegistryObjectList"))
    if rol is None:
        if body.tag == C.q(C.NS_QUERY, "AdhocQueryResponse"):
            return ["AdhocQueryResponse has no RegistryObjectList"]
        return []
    problems: list[str] = []
    for obj in rol:
        if not isinstance(obj.tag, str):
            continue
        local = etree.QName(obj).localname
        if local not in _VERSIONED + ("Association",):
            continue
        ident = obj.get("id") or ""
        label = f"{local} {ident or '(no id)'}"
        if not _UUID.match(ident):
            problems.append(f"{label}: id must be a lower-case urn:uuid")
        status = obj.get("status")
        if status not in C.STATUSES:
            problems.append(f"{label}: status {status!r} is not an ebRIM StatusType URN")
        if local in _VERSIONED:
            lid = obj.get("lid")
            if not lid or not _UUID.match(lid):
                problems.append(f"{label}: lid {lid!r} must be a lower-case urn:uuid")
            if obj.find(C.q(C.NS_RIM, "VersionInfo")) is None:
                problems.append(f"{label}: no rim:VersionInfo")
        if local == "ExtrinsicObject":
            names = {s.get("name") for s in obj.findall(C.q(C.NS_RIM, "Slot"))}
            if "repositoryUniqueId" not in names:
                problems.append(f"{label}: no repositoryUniqueId slot")
    return problems[:20]


def check_repository_id(body: etree._Element, repository_id: str) -> list[str]:
    """In a repository test every entry came through the repository under test, which must have
    written its own repositoryUniqueId into the metadata it registered."""
    problems = []
    for eo in body.iter(C.q(C.NS_RIM, "ExtrinsicObject")):
        for slot in eo.findall(C.q(C.NS_RIM, "Slot")):
            if slot.get("name") != "repositoryUniqueId":
                continue
            values = [(v.text or "").strip() for v in slot.iter(C.q(C.NS_RIM, "Value"))]
            if values != [repository_id]:
                problems.append(f"DocumentEntry {eo.get('id')}: repositoryUniqueId {', '.join(values)}, but the "
                                f"repository under test is {repository_id} (--repository-id)")
    return problems
