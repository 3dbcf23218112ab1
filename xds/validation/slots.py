"""Slot cardinality and value formats (RULES §3.2-3.4; IPF rules 11-18, 23, 28-29).

Value checkers share the hl7 module's convention: take one value, return a list of problems.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

from .. import constants as C
from .. import errors as E
from .. import hl7
from ..model import RegistryObject
from .context import Context

Checker = Callable[[str], list[str]]

_HASH_RE = re.compile(r"[0-9a-fA-F]{40}")
_SIZE_RE = re.compile(r"[0-9]+")
MAX_SIZE = 2 ** 63 - 1
_PID_RE = re.compile(r"PID-([0-9]+)\|(.*)", re.DOTALL)
_URI_PART_RE = re.compile(r"([0-9]+)\|(.*)", re.DOTALL)
# RFC 3986 characters, or a percent-escape: enough to tell a parseable URI from free text.
_URI_RE = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
# PID fields that identify the patient in other ways than the XDS profile wants (ITI TF-3 4.2.3.2.23).
_FORBIDDEN_PID_FIELDS = {2, 4, 12, 19}
_LAST_PID_FIELD = 39
_AVAILABILITY = (C.AVAILABILITY_ONLINE, C.AVAILABILITY_OFFLINE)


@dataclass(frozen=True)
class SlotRule:
    least: int
    most: int | None
    check: Checker | None = None


def check_slot_table(ctx: Context, obj: RegistryObject, table: dict[str, SlotRule]) -> None:
    for name, rule in table.items():
        values = obj.slot(name)
        count = len(values) if values is not None else 0
        if values is None and rule.least:
            ctx.report(obj, f"slot {name}", "is required")
            continue
        if count < rule.least:
            ctx.report(obj, f"slot {name}", f"needs at least {rule.least} value(s), has {count}")
        if rule.most is not None and count > rule.most:
            if rule.most == 0:
                ctx.report(obj, f"slot {name}", "is not allowed here")
                continue
            ctx.report(obj, f"slot {name}", f"takes at most {rule.most} value(s), has {count}")
        if rule.check is not None:
            for v in values or ():
                for problem in rule.check(v):
                    ctx.report(obj, f"slot {name}", f"value '{v}': {problem}")


def check_slot_names(ctx: Context, obj: RegistryObject, allowed: Iterable[str]) -> None:
    allowed = set(allowed)
    for s in obj.slots:
        if not s.name or s.name in allowed:
            continue
        if s.name.startswith("urn:ihe:"):
            # The urn:ihe: space belongs to IHE; a name there that IHE did not define is not extra metadata.
            ctx.report(obj, f"slot {s.name}", "uses the reserved urn:ihe: prefix but is not an IHE-defined slot",
                       E.REGISTRY_ERROR)
        elif not s.name.startswith("urn:"):
            ctx.report(obj, f"slot {s.name}", f"is not a {obj.kind} attribute; extra metadata slot names "
                                              "must start with 'urn:'")


# --- value checkers -------------------------------------------------------------------

def check_hash(v: str) -> list[str]:
    return [] if _HASH_RE.fullmatch(v) else ["is not a SHA-1 digest of 40 hexadecimal characters"]


def check_size(v: str) -> list[str]:
    if not _SIZE_RE.fullmatch(v):
        return ["is not a non-negative integer"]
    # Stored as a 64-bit signed integer (BIGINT), the widest any backend offers.
    return [] if int(v) <= MAX_SIZE else [f"is larger than {MAX_SIZE}, the largest size a registry can store"]


def check_oid(v: str) -> list[str]:
    return hl7.check_oid(v, "value")


def check_availability(v: str) -> list[str]:
    return [] if v in _AVAILABILITY else [f"must be one of {', '.join(_AVAILABILITY)}"]


def check_source_patient_info(v: str, check_pid3: Checker) -> list[str]:
    """``PID-n|value``; ``check_pid3`` is the sourcePatientId rule, since PID-3 holds the same ids."""
    m = _PID_RE.fullmatch(v)
    if m is None:
        return ["is not of the form 'PID-n|value'"]
    field = int(m.group(1))
    if field in _FORBIDDEN_PID_FIELDS:
        return [f"PID-{field} must not be used in sourcePatientInfo"]
    if not 1 <= field <= _LAST_PID_FIELD:
        return [f"PID-{field} does not exist (PID-1 to PID-{_LAST_PID_FIELD})"]
    if field == 3:
        return check_pid3(m.group(2))
    return []


def check_uri(v: str) -> list[str]:
    return [] if _URI_RE.fullmatch(v) else ["is not a URI (empty, or contains spaces or characters URIs do not allow)"]


def check_recipient(v: str) -> list[str]:
    """intendedRecipient: ``organization|person|telecom``, any part may be empty but not all."""
    parts = v.split("|")
    if len(parts) > 3:
        return [f"has {len(parts)} '|'-separated parts, expected at most 3 (XON|XCN|XTN)"]
    if not any(parts):
        return ["names no organization, person or telecom address"]
    organization, person, telecom = (parts + ["", ""])[:3]
    problems = []
    if organization:
        problems += hl7.check_xon(organization)
    if person:
        problems += hl7.check_xcn(person)
    if telecom:
        problems += hl7.check_xtn(telecom)
    return problems


def check_uri_slot(ctx: Context, obj: RegistryObject) -> None:
    """URI: one value, or several 'n|fragment' values that join, in order of n, into one (ITI TF-3 4.2.3.2.24)."""
    values = obj.slot("URI")
    if not values:
        return
    if len(values) == 1 and not _URI_PART_RE.fullmatch(values[0]):
        uri = values[0]
    else:
        parts: dict[int, str] = {}
        for v in values:
            m = _URI_PART_RE.fullmatch(v)
            if m is None:
                ctx.report(obj, "slot URI", f"value '{v}' is not of the form 'n|fragment' used for split URIs")
                return
            parts[int(m.group(1))] = m.group(2)
        if sorted(parts) != list(range(1, len(values) + 1)):
            ctx.report(obj, "slot URI", "split URI fragments must be numbered 1 to n without gaps or repeats")
            return
        uri = "".join(parts[i] for i in sorted(parts))
    for problem in check_uri(uri):
        ctx.report(obj, "slot URI", f"'{uri}' {problem}")


def check_service_times(ctx: Context, obj: RegistryObject) -> None:
    start, stop = obj.slot1("serviceStartTime"), obj.slot1("serviceStopTime")
    if not start or not stop or hl7.check_dtm(start) or hl7.check_dtm(stop):
        return
    # Padding start low and stop high lets different precisions compare (IPF TIME_WRONG_CHRONOLOGY).
    if hl7.dtm_padded(start) > hl7.dtm_padded(stop, high=True):
        ctx.report(obj, "slot serviceStartTime", f"'{start}' is after serviceStopTime '{stop}'")
