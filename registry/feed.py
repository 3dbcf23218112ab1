"""ITI-8 Patient Identity Feed: HL7 v2.3.1 / v2.5 ADT messages that tell the
registry which patient ids exist in the affinity domain, and which were merged.

Only identifiers whose assigning authority is an ISO OID are usable by XDS, so
PID-3 / MRG-1 repetitions scoped by a bare namespace are ignored.
"""
from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from xds.hl7 import CX, is_oid

log = logging.getLogger(__name__)

ADD_TRIGGERS = frozenset({"A01", "A04", "A05", "A08"})
MERGE_TRIGGER = "A40"

# HL7 table 0357, message error condition codes.
ERR_SEGMENT_SEQUENCE = 100
ERR_REQUIRED_FIELD_MISSING = 101
ERR_DATA_TYPE = 102
ERR_UNSUPPORTED_MESSAGE_TYPE = 200
ERR_UNSUPPORTED_EVENT = 201
ERR_INTERNAL = 207

_ERROR_TEXT = {
    ERR_SEGMENT_SEQUENCE: "Segment sequence error",
    ERR_REQUIRED_FIELD_MISSING: "Required field missing",
    ERR_DATA_TYPE: "Data type error",
    ERR_UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ERR_UNSUPPORTED_EVENT: "Unsupported event code",
    ERR_INTERNAL: "Application internal error",
}

MSA_TEXT_LIMIT = 80  # MSA-3 is an ST of 80 characters in v2.3.1; ERR carries the full text
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")


class PatientStore(Protocol):
    def add(self, patient_id: str) -> None: ...

    def merge(self, subsumed_id: str, surviving_id: str) -> None: ...


class Hl7ParseError(ValueError):
    pass


@dataclass(frozen=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


@dataclass
class Message:
    """Segments as field lists where ``seg[n]`` is field n, MSH included.

    For MSH that means element 1 holds the field separator itself, which is how
    the standard numbers MSH-1.
    """

    encoding: Encoding
    segments: list[list[str]] = field(default_factory=list)

    @property
    def msh(self) -> list[str]:
        return self.segments[0]

    def all(self, name: str) -> list[list[str]]:
        return [seg for seg in self.segments if seg[0] == name]

    def first(self, name: str) -> list[str] | None:
        found = self.all(name)
        return found[0] if found else None

    def component(self, value: str, index: int) -> str:
        parts = value.split(self.encoding.component)
        return self.unescape(parts[index]) if index < len(parts) else ""

    def unescape(self, value: str) -> str:
        return unescape(value, self.encoding)


def field_of(segment: list[str] | None, number: int) -> str:
    if segment is None or number >= len(segment):
        return ""
    return segment[number]


def parse_message(text: str) -> Message:
    text = text.lstrip("\r\n\t \x0b")
    if not text.startswith("MSH"):
        raise Hl7ParseError("message does not start with an MSH segment")
    if len(text) < 8:
        raise Hl7ParseError("MSH segment is too short to hold its encoding characters")
    separator = text[3]
    if separator.isalnum() or separator.isspace():
        raise Hl7ParseError(f"MSH-1 field separator {separator!r} is not usable")
    lines = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
    msh = lines[0].split(separator)
    encoding = _encoding(separator, msh[1])
    segments = [["MSH", separator] + msh[1:]]
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(separator)
        if not _SEGMENT_NAME.fullmatch(fields[0]):
            raise Hl7ParseError(f"segment {number} starts with {fields[0][:10]!r}, not a segment name")
        segments.append(fields)
    return Message(encoding, segments)


def _encoding(separator: str, chars: str) -> Encoding:
    if not chars:
        raise Hl7ParseError("MSH-2 encoding characters are missing")
    default = Encoding()
    picked = (chars + default.msh2[len(chars):])[:4] if len(chars) < 4 else chars[:4]
    if len(set(picked + separator)) != 5:
        raise Hl7ParseError(f"MSH-2 encoding characters {chars!r} are not distinct from each other and MSH-1")
    return Encoding(separator, picked[0], picked[1], picked[2], picked[3])


def unescape(value: str, enc: Encoding) -> str:
    if enc.escape not in value:
        return value
    e = re.escape(enc.escape)
    plain = {"F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition, "E": enc.escape}

    def replace(match: re.Match) -> str:
        code = match.group(1)
        if code in plain:
            return plain[code]
        if code.startswith("X") and len(code) % 2 == 1:
            try:
                return bytes.fromhex(code[1:]).decode("latin-1")
            except ValueError:
                return ""
        # Formatting escapes (.br, H, N, ...) mean nothing to an identifier.
        return ""

    return re.sub(f"{e}([^{e}]*){e}", replace, value)


def escape(value: str, enc: Encoding) -> str:
    e = enc.escape
    out = value.replace(e, f"{e}E{e}")
    for char, code in ((enc.field, "F"), (enc.component, "S"), (enc.subcomponent, "T"), (enc.repetition, "R")):
        out = out.replace(char, f"{e}{code}{e}")
    # A raw line break would end the segment early.
    return re.sub(r"[\r\n]+", " ", out)


# --- ACK ---------------------------------------------------------------------------

def _new_control_id() -> str:
    # MSH-10 is limited to 20 characters in v2.3.1.
    return uuid.uuid4().hex[:20]


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + "+0000"


def ack(original: Message | str | None, code: str = "AA", text: str = "", *, error_code: int | None = None,
        location: str = "", trigger: str | None = None) -> str:
    """An acknowledgement of ``original``, which may be unparseable or ``None``.

    Falls back to default separators, version 2.5 and processing id P when
    there is no usable MSH, so that even garbage gets a well-formed answer.
    """
    if isinstance(original, str):
        try:
            original = parse_message(original)
        except Hl7ParseError:
            original = None
    enc = original.encoding if original is not None else Encoding()
    msh = original.msh if original is not None else []
    if trigger is None:
        trigger = original.component(field_of(msh, 9), 1) if original is not None else ""
    version = field_of(msh, 12) or "2.5"
    c = enc.component
    header = [
        "MSH", enc.msh2 if original is None else field_of(msh, 2),
        field_of(msh, 5), field_of(msh, 6), field_of(msh, 3), field_of(msh, 4),
        _timestamp(), "", f"ACK{c}{escape(trigger, enc)}{c}ACK" if trigger else "ACK",
        _new_control_id(), field_of(msh, 11) or "P", version,
    ]
    segments = [enc.field.join(header)]
    msa_text = escape(text[:MSA_TEXT_LIMIT], enc) if text else ""
    segments.append(enc.field.join(_trim(["MSA", code, field_of(msh, 10), msa_text])))
    if code != "AA":
        segments.append(_err_segment(enc, version, error_code or ERR_INTERNAL, text, location))
    return "\r".join(segments) + "\r"


def _err_segment(enc: Encoding, version: str, error_code: int, text: str, location: str) -> str:
    c, s, f = enc.component, enc.subcomponent, enc.field
    label = _ERROR_TEXT.get(error_code, "Error")
    location_parts = location.split("^") if location else []
    if version.startswith("2.3") or version.startswith("2.2"):
        # v2.3.1 has only ERR-1 (ELD): location and code packed together.
        eld = (location_parts + ["", "", ""])[:3] + [f"{error_code}{s}{escape(label, enc)}{s}HL70357"]
        return f.join(["ERR", c.join(eld)])
    erl = c.join(location_parts)
    hl7_code = c.join([str(error_code), escape(label, enc), "HL70357"])
    return f.join(["ERR", "", erl, hl7_code, "E", "", "", "", escape(text, enc)])


def _trim(items: list[str]) -> list[str]:
    end = len(items)
    while end > 1 and not items[end - 1]:
        end -= 1
    return items[:end]


def internal_error_ack(message: str, exc: BaseException) -> str:
    """For ``MllpServer(error_reply=...)``: an AE that does not leak internals."""
    return ack(message, "AE", "internal error while processing the message", error_code=ERR_INTERNAL)


# --- identifiers -------------------------------------------------------------------------

def _iso_identifiers(msg: Message, value: str, label: str) -> tuple[list[CX], list[str]]:
    """XDS CX ids in an HL7 CX list, and why each skipped repetition was skipped."""
    enc = msg.encoding
    found: list[CX] = []
    skipped: list[str] = []
    for number, rep in enumerate(value.split(enc.repetition), start=1):
        if not rep:
            continue
        comps = rep.split(enc.component)
        ident = msg.unescape(comps[0])
        authority = [msg.unescape(p) for p in (comps[3] if len(comps) > 3 else "").split(enc.subcomponent)]
        namespace, oid, id_type = (authority + ["", "", ""])[:3]
        where = f"{label} repetition {number}"
        if not ident:
            skipped.append(f"{where} has no id")
        elif id_type.upper() != "ISO" or not oid:
            if namespace and not oid:
                skipped.append(f"{where} '{ident}' has only a namespace id '{namespace}', no ISO universal id")
            else:
                skipped.append(f"{where} '{ident}' has universal id type '{id_type}', expected 'ISO'")
        elif not is_oid(oid):
            skipped.append(f"{where} '{ident}' has universal id '{oid}', which is not an OID")
        elif any(ch in ident for ch in "^&~"):
            skipped.append(f"{where} id '{ident}' contains an HL7 separator and cannot be an XDS patient id")
        else:
            cx = CX.iso(ident, oid)
            if all(existing.format() != cx.format() for existing in found):
                found.append(cx)
    return found, skipped


def _no_identifier_text(label: str, skipped: list[str]) -> str:
    reason = "; ".join(skipped) if skipped else f"{label} is empty"
    return f"{label} has no identifier with an ISO assigning authority (id^^^&OID&ISO): {reason}"


# --- message handling ------------------------------------------------------------------------

def handle_adt(message: str, patients: PatientStore) -> str:
    """Apply one ADT message to ``patients`` and return the ACK to send back.

    Never raises: every failure, including one of the store, becomes an AE/AR
    acknowledgement so that the sender can tell what went wrong.
    """
    try:
        msg = parse_message(message)
    except Hl7ParseError as exc:
        return ack(None, "AR", f"cannot parse message: {exc}", error_code=ERR_SEGMENT_SEQUENCE)
    message_type = msg.component(field_of(msg.msh, 9), 0)
    trigger = msg.component(field_of(msg.msh, 9), 1)
    if message_type != "ADT":
        return ack(msg, "AR", f"unsupported message type '{message_type}', only ADT is accepted",
                   error_code=ERR_UNSUPPORTED_MESSAGE_TYPE, location="MSH^1^9")
    try:
        if trigger in ADD_TRIGGERS:
            return _handle_add(msg, patients)
        if trigger == MERGE_TRIGGER:
            return _handle_merge(msg, patients)
    except Exception:
        log.exception("patient identity feed: store failed on %s", trigger)
        return ack(msg, "AE", "internal error while storing the patient identity", error_code=ERR_INTERNAL)
    return ack(msg, "AR", f"unsupported event '{trigger}'", error_code=ERR_UNSUPPORTED_EVENT, location="MSH^1^9")


def _handle_add(msg: Message, patients: PatientStore) -> str:
    pid = msg.first("PID")
    if pid is None:
        return ack(msg, "AE", "PID segment is missing", error_code=ERR_SEGMENT_SEQUENCE, location="PID")
    ids, skipped = _iso_identifiers(msg, field_of(pid, 3), "PID-3")
    if not ids:
        return ack(msg, "AE", _no_identifier_text("PID-3", skipped),
                   error_code=ERR_REQUIRED_FIELD_MISSING, location="PID^1^3")
    for cx in ids:
        patients.add(cx.format())
    log.info("patient identity feed: added %s", ", ".join(cx.format() for cx in ids))
    return ack(msg, "AA")


def _merge_groups(msg: Message) -> list[tuple[list[str], list[str] | None]]:
    """Each PID with the MRG that follows it (A40 may carry several patients)."""
    groups: list[tuple[list[str], list[str] | None]] = []
    for seg in msg.segments:
        if seg[0] == "PID":
            groups.append((seg, None))
        elif seg[0] == "MRG" and groups and groups[-1][1] is None:
            groups[-1] = (groups[-1][0], seg)
    return groups


def _handle_merge(msg: Message, patients: PatientStore) -> str:
    groups = _merge_groups(msg)
    if not groups:
        return ack(msg, "AE", "PID segment is missing", error_code=ERR_SEGMENT_SEQUENCE, location="PID")
    merges: list[tuple[str, str]] = []
    for number, (pid, mrg) in enumerate(groups, start=1):
        if mrg is None:
            return ack(msg, "AE", f"MRG segment is missing after PID {number}",
                       error_code=ERR_SEGMENT_SEQUENCE, location="MRG")
        pair_or_error = _merge_pairs(msg, pid, mrg, number)
        if isinstance(pair_or_error, str):
            return pair_or_error
        merges += pair_or_error
    # Validate every group before touching the store, so a bad message changes nothing.
    for subsumed, surviving in merges:
        patients.add(surviving)
        patients.merge(subsumed, surviving)
        log.info("patient identity feed: merged %s into %s", subsumed, surviving)
    return ack(msg, "AA")


def _merge_pairs(msg: Message, pid: list[str], mrg: list[str], number: int) -> list[tuple[str, str]] | str:
    surviving, skipped = _iso_identifiers(msg, field_of(pid, 3), "PID-3")
    if not surviving:
        return ack(msg, "AE", _no_identifier_text("PID-3", skipped),
                   error_code=ERR_REQUIRED_FIELD_MISSING, location=f"PID^{number}^3")
    subsumed, skipped = _iso_identifiers(msg, field_of(mrg, 1), "MRG-1")
    if not subsumed:
        return ack(msg, "AE", _no_identifier_text("MRG-1", skipped),
                   error_code=ERR_REQUIRED_FIELD_MISSING, location=f"MRG^{number}^1")
    # Ids only merge within one assigning authority; another domain's id is not ours to move.
    by_domain = {cx.aa_universal_id: cx for cx in surviving}
    pairs = []
    problems = []
    for old in subsumed:
        new = by_domain.get(old.aa_universal_id)
        if new is None:
            problems.append(f"MRG-1 '{old.format()}' has no PID-3 identifier of the same assigning authority")
        elif new.format() == old.format():
            problems.append(f"MRG-1 '{old.format()}' is the same as PID-3, nothing to merge")
        else:
            pairs.append((old.format(), new.format()))
    if not pairs:
        return ack(msg, "AE", "; ".join(problems), error_code=ERR_REQUIRED_FIELD_MISSING,
                   location=f"MRG^{number}^1")
    return pairs


def feed_handler(patients: PatientStore):
    """The ``handler`` for ``MllpServer``: applies each ITI-8 message to ``patients``, answers its ACK.
    Pair it with ``error_reply=internal_error_ack``."""
    return lambda message: handle_adt(message, patients)
