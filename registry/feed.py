"""ITI-8 Patient Identity Feed: HL7 v2.3.1 / v2.5 ADT messages that tell the
registry which patient ids exist in the affinity domain, and which were merged.

Only identifiers whose assigning authority is an ISO OID are usable by XDS, so
PID-3 / MRG-1 repetitions scoped by a bare namespace are ignored. Who may send,
and which authorities' patients each sender may create, update and merge, is
``registry.feed_sources``; every message, accepted or refused, is told to an
audit hook as a ``FeedEvent``.
"""
from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Protocol

from xds.hl7 import CX, is_oid
from xds.mllp import Peer
from .feed_sources import (
    APP_CODE_TEXT, AUTHORITY_NOT_ALLOWED, ERR_TABLE_VALUE_NOT_FOUND, MERGE_NOT_ALLOWED, FeedSources, Refusal, hd_key,
)

log = logging.getLogger(__name__)

ADD_TRIGGERS = frozenset({"A01", "A04", "A05", "A08"})
MERGE_TRIGGER = "A40"
LINK_CHANGE_TRIGGER = "A43"  # ITI-64 Notify XAD-PID Link Change (registry.xadpid)

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
    ERR_TABLE_VALUE_NOT_FOUND: "Table value not found",
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
        location: str = "", trigger: str | None = None, app_code: str = "") -> str:
    """An acknowledgement of ``original``, which may be unparseable or ``None``.

    ``app_code`` (ERR-5, v2.5 and later) names the registry's own rule that refused the
    message when table 0357 has no code precise enough (``registry.feed_sources``).

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
        segments.append(_err_segment(enc, version, error_code or ERR_INTERNAL, text, location, app_code))
    return "\r".join(segments) + "\r"


def _err_segment(enc: Encoding, version: str, error_code: int, text: str, location: str, app_code: str = "") -> str:
    c, s, f = enc.component, enc.subcomponent, enc.field
    label = _ERROR_TEXT.get(error_code, "Error")
    location_parts = location.split("^") if location else []
    if version.startswith("2.3") or version.startswith("2.2"):
        # v2.3.1 has only ERR-1 (ELD): location and code packed together.
        eld = (location_parts + ["", "", ""])[:3] + [f"{error_code}{s}{escape(label, enc)}{s}HL70357"]
        return f.join(["ERR", c.join(eld)])
    erl = c.join(location_parts)
    hl7_code = c.join([str(error_code), escape(label, enc), "HL70357"])
    application = c.join([app_code, escape(APP_CODE_TEXT.get(app_code, ""), enc), "L"]) if app_code else ""
    return f.join(["ERR", "", erl, hl7_code, "E", application, "", "", escape(text, enc)])


def _trim(items: list[str]) -> list[str]:
    end = len(items)
    while end > 1 and not items[end - 1]:
        end -= 1
    return items[:end]


def internal_error_ack(message: str, exc: BaseException) -> str:
    """For ``MllpServer(error_reply=...)``: an AE that does not leak internals."""
    return ack(message, "AE", "internal error while processing the message", error_code=ERR_INTERNAL)


# --- messages we send ---------------------------------------------------------------------------

def adt_message(trigger: str, patient_id: str, *, subsumed_id: str | None = None, application: str = "XDS_CLI",
                facility: str = "XDS", receiving_application: str = "XDS_REGISTRY", receiving_facility: str = "XDS",
                control_id: str | None = None) -> str:
    """An ITI-8 message for one patient id (CX, ``id^^^&OID&ISO``): an A01/A04/A05/A08 that announces it,
    or with ``subsumed_id`` an A40 that merges that id into it. ``application`` and ``facility``
    (MSH-3, MSH-4) must be what the receiver's source list allows the sender to claim."""
    enc = Encoding()
    structure = "ADT_A39" if trigger == MERGE_TRIGGER else "ADT_A01"
    stamp = _timestamp()[:14]
    segments = [
        "|".join(["MSH", enc.msh2, application, facility, receiving_application, receiving_facility, stamp, "",
                  f"ADT^{trigger}^{structure}", control_id or _new_control_id(), "P", "2.5"]),
        "|".join(["EVN", "", stamp]),
        "|".join(["PID", "", "", patient_id]),
    ]
    if trigger == MERGE_TRIGGER:
        if subsumed_id is None:
            raise ValueError("an A40 merge needs the subsumed patient id")
        segments.append("|".join(["MRG", subsumed_id]))
    elif subsumed_id is not None:
        raise ValueError(f"ADT^{trigger} does not merge; use A40")
    return "\r".join(segments) + "\r"


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

@dataclass(frozen=True)
class FeedEvent:
    """What the feed did with one message, for the audit hook (``feed_handler(audit=...)``).

    ``outcome``: ``accepted`` (AA), ``denied`` (a source rule refused it: unknown
    sender, a sending application, facility or assigning authority it may not
    claim, a merge it may not make), ``invalid`` (the message itself is wrong)
    or ``failed`` (the registry could not store it).
    """

    event: str                     # MSH-9 message type and trigger as sent, e.g. "ADT^A01"; "" when unreadable
    control_id: str                # MSH-10
    outcome: str
    ack_code: str                  # MSA-1 of the answer: AA, AE or AR
    subject: str | None = None     # the verified TLS client certificate subject
    address: str | None = None     # the sender's IP address
    source: str | None = None      # the name of the source list entry that matched
    application: str = ""          # MSH-3, MSH-4 as sent
    facility: str = ""
    error_code: int | None = None  # HL7 table 0357
    reason: str = ""
    patients: tuple[str, ...] = ()  # the ISO patient ids the message named (created, updated or merged)
    # ITI-64 (ADT^A43, registry.xadpid): (patientIdentifierType, id) of each id, and the new SubmissionSet.
    links: tuple[tuple[str, str], ...] = ()
    submission_set: str | None = None


FeedAudit = Callable[[FeedEvent], None]


def no_audit(event: FeedEvent) -> None:
    """The default audit hook: the audit layer replaces it."""


class _Refused(Exception):
    def __init__(self, ack_code: str, text: str, error_code: int, location: str = "", app_code: str = "",
                 outcome: str = "invalid"):
        super().__init__(text)
        self.ack_code, self.text, self.error_code = ack_code, text, error_code
        self.location, self.app_code, self.outcome = location, app_code, outcome


def handle_adt(message: str, patients: PatientStore, *, peer: Peer | None = None,
               sources: FeedSources | None = None, audit: FeedAudit | None = None) -> str:
    """Apply one ADT message to ``patients`` and return the ACK to send back.

    ``sources`` decides who may feed what (an open feed when None); ``peer`` is
    the connection the message came on. Never raises: every failure, including
    one of the store, becomes an AE/AR acknowledgement so that the sender can
    tell what went wrong, and a refused message changes nothing.
    """
    reply, event = _process(message, patients, peer, sources if sources is not None else FeedSources.open())
    if audit is not None:
        try:
            audit(event)
        except Exception:
            # The hook records; it does not get to turn a stored identity into a refusal.
            log.exception("patient identity feed: the audit hook failed on %s", event.control_id or "a message")
    return reply


def _process(message: str, patients: PatientStore, peer: Peer | None,
             sources: FeedSources) -> tuple[str, FeedEvent]:
    named: list[str] = []
    who = {"subject": peer.subject if peer else None, "address": peer.address if peer else None}
    try:
        msg = parse_message(message)
    except Hl7ParseError as exc:
        text = f"cannot parse message: {exc}"
        return (ack(None, "AR", text, error_code=ERR_SEGMENT_SEQUENCE),
                FeedEvent("", "", "invalid", "AR", **who, error_code=ERR_SEGMENT_SEQUENCE, reason=text))
    msh = msg.msh
    facts = dict(who, application=field_of(msh, 3), facility=field_of(msh, 4))
    event, control_id = field_of(msh, 9), field_of(msh, 10)
    grant = None
    extra: dict = {}  # what an ITI-64 adds to its FeedEvent
    try:
        grant = sources.identify(peer, _hd(msg, 3), _hd(msg, 4))
        if isinstance(grant, Refusal):
            raise _Refused("AR", grant.text, grant.error_code, grant.location, grant.app_code, "denied")
        message_type = msg.component(field_of(msh, 9), 0)
        trigger = msg.component(field_of(msh, 9), 1)
        if message_type != "ADT":
            raise _Refused("AR", f"unsupported message type '{message_type}', only ADT is accepted",
                           ERR_UNSUPPORTED_MESSAGE_TYPE, "MSH^1^9")
        if trigger in ADD_TRIGGERS:
            ids = _plan_add(msg, grant, named)
            for pid in ids:
                patients.add(pid)
            log.info("patient identity feed: added %s (source %s)", ", ".join(ids), grant.name)
        elif trigger == LINK_CHANGE_TRIGGER:
            _link_change(msg, patients, grant, named, extra)
        elif trigger == MERGE_TRIGGER:
            pairs = _plan_merge(msg, grant, named)
            for subsumed, surviving in pairs:
                patients.add(surviving)
                patients.merge(subsumed, surviving)
                log.info("patient identity feed: merged %s into %s (source %s)", subsumed, surviving, grant.name)
        else:
            raise _Refused("AR", f"unsupported event '{trigger}'", ERR_UNSUPPORTED_EVENT, "MSH^1^9")
    except _Refused as r:
        if r.outcome == "denied":
            log.warning("patient identity feed: refused %s %s from %s: %s", event, control_id,
                        _describe(peer), r.text)
        return (ack(msg, r.ack_code, r.text, error_code=r.error_code, location=r.location, app_code=r.app_code),
                FeedEvent(event, control_id, r.outcome, r.ack_code, **facts, source=_name(grant),
                          error_code=r.error_code, reason=r.text, patients=tuple(named), **extra))
    except Exception:
        log.exception("patient identity feed: store failed on %s", event)
        text = "internal error while storing the patient identity"
        return (ack(msg, "AE", text, error_code=ERR_INTERNAL),
                FeedEvent(event, control_id, "failed", "AE", **facts, source=_name(grant), error_code=ERR_INTERNAL,
                          reason=text, patients=tuple(named), **extra))
    return ack(msg, "AA"), FeedEvent(event, control_id, "accepted", "AA", **facts, source=_name(grant),
                                     patients=tuple(named), **extra)


def _hd(msg: Message, number: int) -> tuple[str, ...]:
    return tuple(msg.unescape(part) for part in hd_key(field_of(msg.msh, number), msg.encoding.component))


def _name(grant) -> str | None:
    return getattr(grant, "name", None) if grant is not None and not isinstance(grant, Refusal) else None


def _describe(peer: Peer | None) -> str:
    return str(peer) if peer is not None else "an unknown peer"


def _refuse_foreign(grant, ids: list[CX], label: str, location: str) -> None:
    for cx in ids:
        if not grant.may_feed(cx.aa_universal_id):
            raise _Refused("AR", f"{label} '{cx.format()}' is in "
                                 f"assigning authority {cx.aa_universal_id}, whose patients source "
                                 f"'{grant.name}' may not feed", ERR_TABLE_VALUE_NOT_FOUND, location,
                           AUTHORITY_NOT_ALLOWED, "denied")


def _plan_add(msg: Message, grant, named: list[str]) -> list[str]:
    pid = msg.first("PID")
    if pid is None:
        raise _Refused("AE", "PID segment is missing", ERR_SEGMENT_SEQUENCE, "PID")
    ids, skipped = _iso_identifiers(msg, field_of(pid, 3), "PID-3")
    named += [cx.format() for cx in ids]
    if not ids:
        raise _Refused("AE", _no_identifier_text("PID-3", skipped), ERR_REQUIRED_FIELD_MISSING, "PID^1^3")
    # All or nothing: a message that names one patient the source may not feed stores none of them.
    _refuse_foreign(grant, ids, "PID-3", "PID^1^3")
    return [cx.format() for cx in ids]


def _link_change(msg: Message, patients: PatientStore, grant, named: list[str], extra: dict) -> None:
    """ITI-64: read the ADT^A43, then have the store re-file the entries (``patients.relink``); ``extra``
    gets what its FeedEvent adds (the ids by role, the new SubmissionSet)."""
    from .xadpid import LinkRefused, read_link_change

    relink = getattr(patients, "relink", None)
    if relink is None:
        raise _Refused("AR", "this feed takes no ADT^A43 (Notify XAD-PID Link Change)", ERR_UNSUPPORTED_EVENT,
                       "MSH^1^9")
    try:
        change = read_link_change(msg, grant, named)
        extra["links"] = change.links()
        applied = relink(change)
    except LinkRefused as r:
        raise _Refused(r.ack_code, r.text, r.error_code, r.location, r.app_code, r.outcome) from None
    extra["submission_set"] = applied.submission_set
    log.info("patient identity feed: local id %s linked from %s to %s%s: %d entries, %d folders re-filed "
             "(source %s)", change.local, change.previous_xad, change.new_xad,
             f", {change.subsumed} merged into it" if change.subsumed else "", applied.entries, applied.folders,
             grant.name)


def _merge_groups(msg: Message) -> list[tuple[list[str], list[str] | None]]:
    """Each PID with the MRG that follows it (A40 may carry several patients)."""
    groups: list[tuple[list[str], list[str] | None]] = []
    for seg in msg.segments:
        if seg[0] == "PID":
            groups.append((seg, None))
        elif seg[0] == "MRG" and groups and groups[-1][1] is None:
            groups[-1] = (groups[-1][0], seg)
    return groups


def _plan_merge(msg: Message, grant, named: list[str]) -> list[tuple[str, str]]:
    """Every (subsumed, surviving) pair of the message, each rule checked on every group before
    anything is stored, so that a refused message changes nothing."""
    groups = _merge_groups(msg)
    if not groups:
        raise _Refused("AE", "PID segment is missing", ERR_SEGMENT_SEQUENCE, "PID")
    read: list[tuple[int, list[CX], list[CX]]] = []
    for number, (pid, mrg) in enumerate(groups, start=1):
        if mrg is None:
            raise _Refused("AE", f"MRG segment is missing after PID {number}", ERR_SEGMENT_SEQUENCE, "MRG")
        surviving, skipped = _iso_identifiers(msg, field_of(pid, 3), "PID-3")
        if not surviving:
            raise _Refused("AE", _no_identifier_text("PID-3", skipped), ERR_REQUIRED_FIELD_MISSING,
                           f"PID^{number}^3")
        subsumed, skipped = _iso_identifiers(msg, field_of(mrg, 1), "MRG-1")
        if not subsumed:
            raise _Refused("AE", _no_identifier_text("MRG-1", skipped), ERR_REQUIRED_FIELD_MISSING,
                           f"MRG^{number}^1")
        named += [cx.format() for cx in surviving + subsumed]
        read.append((number, surviving, subsumed))
    for number, surviving, subsumed in read:
        _refuse_foreign(grant, surviving, "PID-3", f"PID^{number}^3")
        _refuse_foreign(grant, subsumed, "MRG-1", f"MRG^{number}^1")
    for number, _, subsumed in read:
        for old in subsumed:
            if not grant.may_merge(old.aa_universal_id):
                raise _Refused("AR", f"source '{grant.name}' may not merge patients of assigning authority "
                                     f"{old.aa_universal_id} (MRG-1 '{old.format()}')", ERR_INTERNAL,
                               f"MRG^{number}^1", MERGE_NOT_ALLOWED, "denied")
    pairs: list[tuple[str, str]] = []
    for number, surviving, subsumed in read:
        pairs += _merge_pairs(surviving, subsumed, number)
    return pairs


def _merge_pairs(surviving: list[CX], subsumed: list[CX], number: int) -> list[tuple[str, str]]:
    # Ids only merge within one assigning authority; another domain's id is not ours to move.
    by_domain = {cx.aa_universal_id: cx for cx in surviving}
    pairs = []
    same = []
    for old in subsumed:
        new = by_domain.get(old.aa_universal_id)
        if new is None:
            raise _Refused("AE", f"MRG-1 '{old.format()}' has no PID-3 identifier of the same assigning authority; "
                                 "patients do not merge across assigning authorities",
                           ERR_REQUIRED_FIELD_MISSING, f"MRG^{number}^1")
        if new.format() == old.format():
            same.append(f"MRG-1 '{old.format()}' is the same as PID-3, nothing to merge")
        else:
            pairs.append((old.format(), new.format()))
    if not pairs:
        raise _Refused("AE", "; ".join(same), ERR_REQUIRED_FIELD_MISSING, f"MRG^{number}^1")
    return pairs


def feed_handler(patients: PatientStore, sources: FeedSources | None = None, audit: FeedAudit | None = None):
    """The ``handler`` for ``MllpServer``: applies each ITI-8 message to ``patients`` under the rules of
    ``sources`` (an open feed when None), tells ``audit`` what it did, answers its ACK.
    Pair it with ``error_reply=internal_error_ack``."""
    return lambda message, peer=None: handle_adt(message, patients, peer=peer, sources=sources, audit=audit)
