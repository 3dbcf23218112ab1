"""HL7 v2 datatypes as XDS metadata carries them (ITI TF-3 4.2.3.1.7).

Every ``check_*`` function returns a list of human-readable problems, empty
when the value is acceptable, and never raises: a metadata validator runs all
of them over a submission and reports every problem at once.

Values arrive as text after the XML parser has already turned ``&amp;`` into
``&``, so ``&`` is the HL7 subcomponent separator here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

COMPONENT_SEP = "^"
SUBCOMPONENT_SEP = "&"
REPETITION_SEP = "~"

OID_MAX_LENGTH = 64
ISO = "ISO"

# No leading zeros in any arc; the first arc is not limited to 0-2 because the
# XDS grammar is written per arc and real affinity domains only ever use 1 or 2.
_OID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
_UUID_URN_RE = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LANGUAGE_RE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_DIGITS_RE = re.compile(r"[0-9]+")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")

DTM_LENGTHS = (4, 6, 8, 10, 12, 14)

# HL7 table 0202 (telecommunication equipment type) and 0201 (use code).
XTN_EQUIPMENT_TYPES = ("PH", "FX", "MD", "CP", "SAT", "BP", "Internet", "X.400", "TDD", "TTY")
XTN_USE_CODES = ("PRN", "ORN", "WPN", "VHN", "ASN", "EMR", "NET", "BPN", "PRS")


# --- identifiers -----------------------------------------------------------------

def is_oid(s: object) -> bool:
    return isinstance(s, str) and len(s) <= OID_MAX_LENGTH and _OID_RE.fullmatch(s) is not None


def check_oid(s: object, label: str = "OID") -> list[str]:
    if not isinstance(s, str) or not s:
        return [f"{label} is empty"]
    if len(s) > OID_MAX_LENGTH:
        return [f"{label} '{s}' is {len(s)} characters long, at most {OID_MAX_LENGTH} allowed"]
    if _OID_RE.fullmatch(s) is None:
        return [f"{label} '{s}' is not an OID (digits and dots, at least two arcs, no leading zeros)"]
    return []


def is_uuid_urn(s: object) -> bool:
    return isinstance(s, str) and _UUID_URN_RE.fullmatch(s) is not None


# --- splitting ----------------------------------------------------------------------

def _unamp(s: str) -> str:
    # A literal "&amp;" can only be a double-escaped separator: "amp;" is never a
    # meaningful subcomponent, so reading it as "&" loses nothing.
    return s.replace("&amp;", SUBCOMPONENT_SEP)


def _components(s: str) -> list[str]:
    return _unamp(s).split(COMPONENT_SEP)


def _at(items: list[str], index: int) -> str:
    return items[index] if index < len(items) else ""


def _check_iso_hd(hd: str, label: str, required: bool = True) -> list[str]:
    """An HD (assigning authority) in the only form XDS allows: ``&OID&ISO``."""
    if not hd:
        return [f"{label} assigning authority is missing, expected '&OID&ISO'"] if required else []
    parts = hd.split(SUBCOMPONENT_SEP)
    namespace, universal_id, id_type = _at(parts, 0), _at(parts, 1), _at(parts, 2)
    problems = []
    if namespace:
        problems.append(f"{label} namespace id must be empty, got '{namespace}'")
    if not universal_id:
        problems.append(f"{label} universal id is empty, expected an OID")
    elif not is_oid(universal_id):
        problems.append(f"{label} universal id '{universal_id}' is not a valid OID")
    if id_type != ISO:
        problems.append(f"{label} universal id type is '{id_type}', expected 'ISO'")
    if len(parts) > 3:
        problems.append(f"{label} has {len(parts)} subcomponents, at most 3 allowed")
    return problems


def _check_no_whitespace_edges(s: str, kind: str) -> list[str]:
    return [f"{kind} value has leading or trailing whitespace"] if s != s.strip() else []


# --- CX -------------------------------------------------------------------------------

@dataclass
class CX:
    """An extended composite id; XDS uses CX.1 and CX.4 (plus CX.5 in a few places)."""

    id: str = ""
    aa_namespace: str = ""
    aa_universal_id: str = ""
    aa_universal_id_type: str = ""
    check_digit: str = ""  # CX.2
    check_digit_scheme: str = ""  # CX.3
    type_code: str = ""  # CX.5
    other: list[str] = field(default_factory=list)  # CX.6 onwards, kept verbatim
    aa_extra: list[str] = field(default_factory=list)  # CX.4.4 onwards, which HD does not define

    @classmethod
    def iso(cls, id: str, oid: str) -> "CX":
        """The XDS patient id form ``id^^^&OID&ISO``."""
        return cls(id=id, aa_universal_id=oid, aa_universal_id_type=ISO)

    @property
    def assigning_authority(self) -> str:
        parts = [self.aa_namespace, self.aa_universal_id, self.aa_universal_id_type, *self.aa_extra]
        return SUBCOMPONENT_SEP.join(_trim(parts))

    def format(self) -> str:
        comps = [self.id, self.check_digit, self.check_digit_scheme, self.assigning_authority,
                 self.type_code, *self.other]
        return COMPONENT_SEP.join(_trim(comps))

    def __str__(self) -> str:
        return self.format()


def _trim(items: list[str]) -> list[str]:
    # HL7 omits trailing empty components, so the canonical text does too.
    end = len(items)
    while end > 0 and not items[end - 1]:
        end -= 1
    return items[:end]


def parse_cx(s: str) -> CX:
    comps = _components(s)
    aa = _at(comps, 3).split(SUBCOMPONENT_SEP)
    return CX(
        id=_at(comps, 0),
        check_digit=_at(comps, 1),
        check_digit_scheme=_at(comps, 2),
        aa_namespace=_at(aa, 0),
        aa_universal_id=_at(aa, 1),
        aa_universal_id_type=_at(aa, 2),
        aa_extra=aa[3:],
        type_code=_at(comps, 4),
        other=comps[5:],
    )


def patient_key(s: str) -> str:
    """The identity a patient id names: CX.1 and CX.4, as ``id^^^&OID&ISO``.

    National profiles put more in a patient CX (the DMP's INS carries CX.5 ``NH`` and a CX.7 date),
    and a feed, a query and a submission need not agree on those: the registry indexes, looks up and
    compares patients by this key, and keeps the CX as sent in the stored metadata. An authority
    known by its universal id drops the namespace, which is only its local alias.
    """
    cx = parse_cx(s.strip())
    if cx.aa_universal_id:
        authority = f"{SUBCOMPONENT_SEP}{cx.aa_universal_id}{SUBCOMPONENT_SEP}{cx.aa_universal_id_type or ISO}"
    else:
        authority = cx.aa_namespace
    return f"{cx.id}{COMPONENT_SEP * 3}{authority}" if authority else cx.id


def same_patient(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and patient_key(a) == patient_key(b)


def check_cx(s: object, require_aa: bool = True, strict: bool = True) -> list[str]:
    """XDS patient id rule ``id^^^&OID&ISO``.

    ``strict`` is for patientId, where nothing may follow CX.4; sourcePatientId
    passes ``strict=False`` so that an identifier type code in CX.5 is allowed.
    """
    if not isinstance(s, str) or not s:
        return ["CX value is empty"]
    problems = _check_no_whitespace_edges(s, "CX")
    if REPETITION_SEP in s:
        problems.append("CX value contains the repetition separator '~'; only one identifier is allowed")
    comps = _components(s)
    cx = parse_cx(s)
    if not cx.id:
        problems.append("CX.1 id is empty")
    elif SUBCOMPONENT_SEP in cx.id:
        problems.append(f"CX.1 id '{cx.id}' contains the subcomponent separator '&'")
    if cx.check_digit:
        problems.append(f"CX.2 check digit must be empty, got '{cx.check_digit}'")
    if cx.check_digit_scheme:
        problems.append(f"CX.3 check digit scheme must be empty, got '{cx.check_digit_scheme}'")
    problems += _check_iso_hd(_at(comps, 3), "CX.4", required=require_aa)
    if strict and cx.type_code:
        problems.append(f"CX.5 identifier type code must be empty, got '{cx.type_code}'")
    for number, value in enumerate(cx.other, start=6):
        if value:
            problems.append(f"CX.{number} must be empty, got '{value}'")
    return problems


def check_cxi(s: object) -> list[str]:
    """A referenceIdList value: id, assigning authority and identifier type code."""
    if not isinstance(s, str) or not s:
        return ["CXi value is empty"]
    problems = _check_no_whitespace_edges(s, "CXi")
    cx = parse_cx(s)
    if not cx.id:
        problems.append("CX.1 id is empty")
    if cx.check_digit:
        problems.append(f"CX.2 check digit must be empty, got '{cx.check_digit}'")
    if cx.check_digit_scheme:
        problems.append(f"CX.3 check digit scheme must be empty, got '{cx.check_digit_scheme}'")
    problems += _check_cxi_authority(cx)
    if not cx.type_code:
        problems.append("CX.5 identifier type code is required")
    return problems


def globally_unique_id(value: str) -> bool:
    """A urn:uuid: or urn:oid: id, well-formed: unique without an assigning authority."""
    lowered = value.lower()
    if lowered.startswith("urn:uuid:"):
        return bool(_UUID.fullmatch(lowered[len("urn:uuid:"):]))
    return lowered.startswith("urn:oid:") and is_oid(value[len("urn:oid:"):])


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _check_cxi_authority(cx: CX) -> list[str]:
    # Unlike a patient id, a reference id may be scoped by a local namespace alone; and ITI TF-3 4.2.3.1.7
    # (CXi) lets a globally unique id (a UUID or OID as a URN) go without an assigning authority at all.
    uid, id_type = cx.aa_universal_id, cx.aa_universal_id_type
    if not (cx.aa_namespace or uid or id_type):
        if globally_unique_id(cx.id):
            return []
        return ["CX.4 assigning authority is required (a namespace id, or a universal id and its type) unless "
                "CX.1 is a globally unique urn:uuid: or urn:oid: id"]
    problems = []
    if id_type and not uid:
        problems.append(f"CX.4 universal id type is '{id_type}' but the universal id is empty")
    if uid and not id_type:
        problems.append(f"CX.4 universal id '{uid}' has no universal id type")
    if uid and id_type == ISO and not is_oid(uid):
        problems.append(f"CX.4 universal id '{uid}' is not a valid OID although its type is 'ISO'")
    return problems


# --- XCN, XON, XTN ------------------------------------------------------------------------

def check_xcn(s: object) -> list[str]:
    """A person (author, legal authenticator): needs an id or a family name."""
    if not isinstance(s, str) or not s:
        return ["XCN value is empty"]
    comps = _components(s)
    person_id = _at(comps, 0)
    family_name = _at(comps, 1).split(SUBCOMPONENT_SEP)[0]
    problems = []
    if not person_id and not family_name:
        problems.append("XCN.1 id or XCN.2 family name is required")
    if SUBCOMPONENT_SEP in person_id:
        problems.append(f"XCN.1 id '{person_id}' contains the subcomponent separator '&'")
    authority = _at(comps, 8)
    if authority:
        problems += _check_iso_hd(authority, "XCN.9")
        if not person_id:
            problems.append("XCN.9 assigning authority is given but XCN.1 id is empty")
    return problems


def check_xon(s: object) -> list[str]:
    """An organization (author institution): name, optionally an id and its authority."""
    if not isinstance(s, str) or not s:
        return ["XON value is empty"]
    comps = _components(s)
    problems = []
    if len(comps) > 10:
        problems.append(f"XON has {len(comps)} components, at most 10 allowed")
    if not _at(comps, 0):
        problems.append("XON.1 organization name is required")
    for index in (1, 2, 3, 4, 6, 7, 8):
        value = _at(comps, index)
        if value:
            problems.append(f"XON.{index + 1} must be empty, got '{value}'")
    authority = _at(comps, 5)
    if authority:
        problems += _check_iso_hd(authority, "XON.6")
    return problems


def check_xtn(s: object) -> list[str]:
    """A telecom address: an e-mail (``^^Internet^a@b``) or a phone number."""
    if not isinstance(s, str) or not s:
        return ["XTN value is empty"]
    comps = s.split(COMPONENT_SEP)
    problems = []
    use = _at(comps, 1)
    if use and use not in XTN_USE_CODES:
        problems.append(f"XTN.2 use code '{use}' is not one of {', '.join(XTN_USE_CODES)}")
    equipment = _at(comps, 2)
    if not equipment:
        problems.append("XTN.3 equipment type is required")
        return problems
    if equipment not in XTN_EQUIPMENT_TYPES:
        problems.append(f"XTN.3 equipment type '{equipment}' is not one of {', '.join(XTN_EQUIPMENT_TYPES)}")
        return problems
    if equipment in ("Internet", "X.400"):
        address = _at(comps, 3)
        if not address:
            problems.append(f"XTN.4 communication address is required when XTN.3 is '{equipment}'")
        elif equipment == "Internet" and _EMAIL_RE.fullmatch(address) is None:
            problems.append(f"XTN.4 '{address}' is not an e-mail address")
        return problems
    if not (_at(comps, 0) or _at(comps, 6) or _at(comps, 11)):
        problems.append(f"XTN.1, XTN.7 or XTN.12 telephone number is required when XTN.3 is '{equipment}'")
    for index, name in ((4, "country code"), (5, "area code"), (6, "local number"), (7, "extension")):
        value = _at(comps, index)
        if value and _DIGITS_RE.fullmatch(value) is None:
            problems.append(f"XTN.{index + 1} {name} '{value}' must be numeric")
    return problems


# --- DTM ---------------------------------------------------------------------------------

_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(year: int, month: int) -> int:
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return 29 if month == 2 and leap else _DAYS_IN_MONTH[month - 1]


def check_dtm(s: object) -> list[str]:
    """XDS times: UTC, ``YYYY[MM[DD[hh[mm[ss]]]]]``, no zone and no fraction."""
    if not isinstance(s, str) or not s:
        return ["DTM value is empty"]
    if _DIGITS_RE.fullmatch(s) is None:
        return [f"DTM '{s}' must contain digits only (YYYY[MM[DD[hh[mm[ss]]]]], no time zone or fraction)"]
    if len(s) not in DTM_LENGTHS:
        return [f"DTM '{s}' has {len(s)} digits, expected 4, 6, 8, 10, 12 or 14"]
    problems = []
    year = int(s[0:4])
    month = int(s[4:6]) if len(s) >= 6 else None
    if month is not None and not 1 <= month <= 12:
        problems.append(f"DTM '{s}' month {s[4:6]} is out of range 01-12")
        month = None
    if len(s) >= 8:
        day = int(s[6:8])
        last = _days_in_month(year, month) if month else 31
        if not 1 <= day <= last:
            problems.append(f"DTM '{s}' day {s[6:8]} is out of range 01-{last:02d}")
    for start, name, limit in ((8, "hour", 24), (10, "minute", 60), (12, "second", 60)):
        if len(s) > start and int(s[start:start + 2]) >= limit:
            problems.append(f"DTM '{s}' {name} {s[start:start + 2]} is out of range 00-{limit - 1}")
    return problems


def normalize_dtm(s: str) -> str:
    return s.strip()


def dtm_padded(s: str, high: bool = False) -> str:
    """14 digits for comparing times of different precision.

    The low bound pads with '0', the high bound with '9': the result is only
    ever compared as a string, so it need not be a real calendar value.
    """
    value = normalize_dtm(s)[:14]
    return value.ljust(14, "9" if high else "0")


# --- language -------------------------------------------------------------------------------

def check_language_code(s: object) -> list[str]:
    if not isinstance(s, str) or not s:
        return ["language code is empty"]
    if _LANGUAGE_RE.fullmatch(s) is None:
        return [f"language code '{s}' is not an RFC 3066 tag such as 'en-US'"]
    return []
