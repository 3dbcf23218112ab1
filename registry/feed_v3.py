"""ITI-44 Patient Identity Feed HL7 v3 (ITI TF-2b 3.44) on the registry: PRPA_IN201301UV02 (patient added),
PRPA_IN201302UV02 (revised) and PRPA_IN201304UV02 (duplicates resolved: a merge), over SOAP 1.2 with
WS-Addressing, each answered by an MCCI_IN000002UV01 acknowledgement (AA, AE, AR).

The same patients and the same rules as the ITI-8 feed (registry/feed.py): ids are ``id/@extension`` in
the assigning authority ``id/@root`` (CX.1 + CX.4), stored through the same PatientStore; who may feed
and merge which assigning authority is ``registry.feed_sources``, the sender being the verified TLS
client certificate of the request, unless the caller is an administrator (xds.security.callers; under
``security = none`` on loopback without TLS, the caller is). Anyone else is refused and nothing changes.
Under ``security = xua`` or ``vihf`` a source sends no assertion: its certificate is its identity here, as
over ITI-8 (``Operation.certificate_alone``); an assertion it does send is verified like any other.
A message is applied whole or not at all. The handler writes no audit record: it leaves a
``registry.feed.FeedEvent`` on the request (``req.feed_event``) for the pipeline's audit layer.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from lxml import etree

from xds import constants as C
from xds import xmlsafe
from xds.app import Endpoint, Operation, SoapRequest, SoapResponse
from xds.hl7 import CX, is_oid
from xds.security.callers import CallerRules, caller_of
from xds.security.policy import ADMIN
from .feed import FeedEvent, PatientStore
from .feed_sources import (
    APP_CODE_TEXT, AUTHORITY_NOT_ALLOWED, MERGE_NOT_ALLOWED, UNKNOWN_SOURCE, FeedSources, OpenSource, Refusal,
)

log = logging.getLogger(__name__)

V3 = C.NS_HL7V3
INTERACTION_ROOT = "2.16.840.1.113883.1.6"      # HL7 interaction ids
DETAIL_CODES = "2.16.840.1.113883.5.1100"       # HL7 AcknowledgementDetailCode
ADD, REVISE, MERGE = "PRPA_IN201301UV02", "PRPA_IN201302UV02", "PRPA_IN201304UV02"
ACK = "MCCI_IN000002UV01"
INTERACTIONS = {C.ACTION_PIX_ADD: ADD, C.ACTION_PIX_REVISE: REVISE, C.ACTION_PIX_MERGE: MERGE}

# AcknowledgementDetailCode values used here.
UNKNOWN_SENDER = "NS260"
UNSUPPORTED_INTERACTION = "NS200"
SYNTAX_ERROR = "SYN"
REQUIRED_MISSING = "SYN105"
DATA_TYPE_ERROR = "SYN102"
INTERNAL_ERROR = "INTERR"
# The registry's own rules (ITI-8's ERR-5 codes): named at the start of the detail text; those HL7 has
# no code for are the detail's code themselves (a local code, without codeSystem).
RULE_TEXT = {UNKNOWN_SOURCE: "UNKNOWN_SOURCE", AUTHORITY_NOT_ALLOWED: "AUTHORITY_NOT_ALLOWED",
             MERGE_NOT_ALLOWED: "MERGE_NOT_ALLOWED"}
LOCAL_CODES = (AUTHORITY_NOT_ALLOWED, MERGE_NOT_ALLOWED)

_PRIOR = "v3:replacementOf/v3:priorRegistration/v3:subject1/v3:priorRegisteredRole"
_NS = {"v3": V3}


class _Refused(Exception):
    def __init__(self, ack_code: str, text: str, code: str, location: str = "", outcome: str = "invalid"):
        super().__init__(text)
        self.ack_code, self.text, self.code, self.location, self.outcome = ack_code, text, code, location, outcome


@dataclass(frozen=True)
class Administrator:
    """The grant of an administrator: any authority, merges included."""

    name: str = "administrator"

    def may_feed(self, authority: str) -> bool:
        return True

    def may_merge(self, authority: str) -> bool:
        return True


# --- reading the message ------------------------------------------------------------------------

@dataclass
class Message:
    interaction: str
    message_id: tuple[str, str]              # (root, extension) of the message's own id
    sender: list[etree._Element]            # sender/device/id elements, echoed as the ack's receiver
    receiver: list[etree._Element]
    element: etree._Element

    @property
    def id_text(self) -> str:
        root, ext = self.message_id
        return f"{root}^{ext}" if ext else root

    @property
    def sender_text(self) -> str:
        roots = [f"{i.get('root', '')}{'^' + i.get('extension') if i.get('extension') else ''}" for i in self.sender]
        return roots[0] if roots else ""


def read_message(data: bytes | etree._Element, expected: str | None = None) -> Message:
    """The header of an ITI-44 interaction; raises _Refused when it is not one this registry takes."""
    if isinstance(data, (bytes, bytearray)):
        try:
            root = xmlsafe.parse(bytes(data), "the HL7 v3 message")
        except xmlsafe.UnsafeXml as exc:
            raise _Refused("AE", str(exc), SYNTAX_ERROR) from None
    else:
        root = data
    name = etree.QName(root)
    if name.namespace != V3 or name.localname not in (ADD, REVISE, MERGE):
        raise _Refused("AR", f"<{name.localname}> in namespace {name.namespace or '(none)'} is not an ITI-44 "
                             f"interaction ({ADD}, {REVISE} or {MERGE} in {V3})", UNSUPPORTED_INTERACTION, "/")
    if expected is not None and name.localname != expected:
        raise _Refused("AR", f"the message is a {name.localname} but the SOAP action asks for {expected}",
                       UNSUPPORTED_INTERACTION, "/")
    interaction = root.find("v3:interactionId", _NS)
    if interaction is not None and interaction.get("extension") not in (None, name.localname):
        raise _Refused("AR", f"interactionId {interaction.get('extension')!r} is not {name.localname}",
                       UNSUPPORTED_INTERACTION, "/interactionId")
    mid = root.find("v3:id", _NS)
    message_id = (mid.get("root", ""), mid.get("extension", "")) if mid is not None else ("", "")
    return Message(name.localname, message_id, root.findall("v3:sender/v3:device/v3:id", _NS),
                   root.findall("v3:receiver/v3:device/v3:id", _NS), root)


def _ids(elements: list[etree._Element], where: str) -> tuple[list[CX], list[str]]:
    found: list[CX] = []
    skipped: list[str] = []
    for number, el in enumerate(elements, start=1):
        root, ext = (el.get("root") or "").strip(), (el.get("extension") or "").strip()
        label = f"{where}/id[{number}]"
        if el.get("nullFlavor") or not ext:
            skipped.append(f"{label} has no extension (the patient id)")
        elif not is_oid(root):
            skipped.append(f"{label} '{ext}' has root {root!r}, which is not an OID (the assigning authority)")
        elif any(ch in ext for ch in "^&~|\\"):
            skipped.append(f"{label} extension '{ext}' contains an HL7 separator and cannot be an XDS patient id")
        else:
            cx = CX.iso(ext, root)
            if all(existing.format() != cx.format() for existing in found):
                found.append(cx)
    return found, skipped


def _required_ids(elements: list[etree._Element], where: str) -> list[CX]:
    ids, skipped = _ids(elements, where)
    if not ids:
        reason = "; ".join(skipped) if skipped else "no id element"
        raise _Refused("AE", f"{where} has no patient id with an OID root and an extension: {reason}",
                       REQUIRED_MISSING if not skipped else DATA_TYPE_ERROR, where)
    return ids


def _refuse_foreign(grant, ids: list[CX], where: str) -> None:
    for cx in ids:
        if not grant.may_feed(cx.aa_universal_id):
            raise _Refused("AR", f"{RULE_TEXT[AUTHORITY_NOT_ALLOWED]}: patient id '{cx.format()}' is in assigning "
                                 f"authority {cx.aa_universal_id}, whose patients source '{grant.name}' may not "
                                 "feed", AUTHORITY_NOT_ALLOWED, where, "denied")


def plan(msg: Message, grant, named: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """What the message asks: the ids to add, and the (subsumed, surviving) pairs to merge. Every rule is
    checked on every part before anything is stored."""
    events = msg.element.findall("v3:controlActProcess/v3:subject/v3:registrationEvent", _NS)
    if not events:
        raise _Refused("AE", "controlActProcess/subject/registrationEvent is missing", REQUIRED_MISSING,
                       "/controlActProcess/subject")
    adds: list[CX] = []
    merges: list[tuple[int, list[CX], list[CX]]] = []
    for number, event in enumerate(events, start=1):
        where = f"/controlActProcess/subject[{number}]/registrationEvent/subject1/patient"
        patient = event.find("v3:subject1/v3:patient", _NS)
        if patient is None:
            raise _Refused("AE", f"{where} is missing", REQUIRED_MISSING, where)
        surviving = _required_ids(patient.findall("v3:id", _NS), where)
        named += [cx.format() for cx in surviving]
        if msg.interaction != MERGE:
            adds += surviving
            continue
        prior_where = f"/controlActProcess/subject[{number}]/registrationEvent/replacementOf/priorRegistration/" \
                      "subject1/priorRegisteredRole"
        priors = event.findall(_PRIOR, _NS)
        if not priors:
            raise _Refused("AE", f"{prior_where} is missing: a {MERGE} names the subsumed patient id there",
                           REQUIRED_MISSING, prior_where)
        subsumed = _required_ids([i for p in priors for i in p.findall("v3:id", _NS)], prior_where)
        named += [cx.format() for cx in subsumed]
        merges.append((number, surviving, subsumed))
    # All or nothing: one id of an authority the source may not feed refuses the whole message.
    _refuse_foreign(grant, adds, "/controlActProcess/subject/registrationEvent/subject1/patient/id")
    for number, surviving, subsumed in merges:
        _refuse_foreign(grant, surviving, f"/controlActProcess/subject[{number}]/registrationEvent/subject1/patient")
        _refuse_foreign(grant, subsumed, f"/controlActProcess/subject[{number}]/registrationEvent/replacementOf")
    for number, _, subsumed in merges:
        for old in subsumed:
            if not grant.may_merge(old.aa_universal_id):
                raise _Refused("AR", f"{RULE_TEXT[MERGE_NOT_ALLOWED]}: source '{grant.name}' may not merge patients "
                                     f"of assigning authority {old.aa_universal_id} ('{old.format()}')",
                               MERGE_NOT_ALLOWED,
                               f"/controlActProcess/subject[{number}]/registrationEvent/replacementOf",
                               "denied")
    pairs: list[tuple[str, str]] = []
    for number, surviving, subsumed in merges:
        by_domain = {cx.aa_universal_id: cx for cx in surviving}
        for old in subsumed:
            new = by_domain.get(old.aa_universal_id)
            where = f"/controlActProcess/subject[{number}]/registrationEvent/replacementOf"
            if new is None:
                raise _Refused("AE", f"subsumed id '{old.format()}' has no surviving patient id of the same assigning "
                                     "authority; patients do not merge across assigning authorities",
                               REQUIRED_MISSING, where)
            if new.format() == old.format():
                raise _Refused("AE", f"subsumed id '{old.format()}' is the surviving id, nothing to merge",
                               REQUIRED_MISSING, where)
            pairs.append((old.format(), new.format()))
    return [cx.format() for cx in adds], pairs


# --- the acknowledgement --------------------------------------------------------------------------

def _el(parent, local: str, **attrs) -> etree._Element:
    return etree.SubElement(parent, f"{{{V3}}}{local}", {k: v for k, v in attrs.items() if v is not None})


def acknowledgement(type_code: str, msg: Message | None = None, text: str = "", code: str | None = None,
                    location: str = "", device_root: str | None = None) -> etree._Element:
    """An MCCI_IN000002UV01 answering ``msg`` (which may be None when it could not be read)."""
    ack = etree.Element(f"{{{V3}}}{ACK}", {"ITSVersion": "XML_1.0"}, nsmap={None: V3})
    _el(ack, "id", root=str(uuid.uuid4()))
    _el(ack, "creationTime", value=datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"))
    _el(ack, "interactionId", root=INTERACTION_ROOT, extension=ACK)
    processing = msg.element.find("v3:processingCode", _NS) if msg is not None else None
    _el(ack, "processingCode", code=processing.get("code") if processing is not None and processing.get("code")
        else "P")
    _el(ack, "processingModeCode", code="T")
    _el(ack, "acceptAckCode", code="NE")
    receiver = _el(_el(ack, "receiver", typeCode="RCV"), "device", classCode="DEV", determinerCode="INSTANCE")
    for device_id in (msg.sender if msg is not None else []) or [None]:
        _el(receiver, "id", **({"root": device_id.get("root"), "extension": device_id.get("extension")}
                               if device_id is not None else {"nullFlavor": "UNK"}))
    sender = _el(_el(ack, "sender", typeCode="SND"), "device", classCode="DEV", determinerCode="INSTANCE")
    ours = (msg.receiver if msg is not None else []) or []
    if ours:
        for device_id in ours:
            _el(sender, "id", root=device_id.get("root"), extension=device_id.get("extension"))
    else:
        _el(sender, "id", **({"root": device_root} if device_root else {"nullFlavor": "UNK"}))
    acknowledgement_el = _el(ack, "acknowledgement")
    _el(acknowledgement_el, "typeCode", code=type_code)
    target = _el(acknowledgement_el, "targetMessage")
    if msg is not None and msg.message_id[0]:
        _el(target, "id", root=msg.message_id[0], extension=msg.message_id[1] or None)
    else:
        _el(target, "id", nullFlavor="UNK")
    if type_code != "AA":
        detail = _el(acknowledgement_el, "acknowledgementDetail", typeCode="E")
        if code in LOCAL_CODES:  # the registry's own rule: a local code, no HL7 code system
            _el(detail, "code", code=code, displayName=APP_CODE_TEXT[code])
        else:
            _el(detail, "code", code=code or INTERNAL_ERROR, codeSystem=DETAIL_CODES)
        _el(detail, "text").text = text
        if location:
            _el(detail, "location").text = location
    return ack


def error_acknowledgement(errors) -> etree._Element:
    """For ``Operation(error_payload=...)``: the layers' XdsException answered as an AE."""
    text = "; ".join(getattr(e, "message", str(e)) for e in errors) or "the request could not be processed"
    return acknowledgement("AE", None, text, INTERNAL_ERROR)


# --- the transaction -------------------------------------------------------------------------------

def handle(body: bytes | etree._Element, patients: PatientStore, *, action: str | None = None,
           admin: bool = False, subject: str | None = None, address: str | None = None,
           sources: FeedSources | None = None) -> tuple[etree._Element, FeedEvent]:
    """Apply one ITI-44 message and return its acknowledgement and what the audit layer records.

    ``admin``: the caller is an administrator (any authority). Otherwise ``subject``, the verified TLS
    client certificate, must be a source of ``sources`` allowed for every id. Never raises: every
    failure, the store's included, is an AE/AR, and a refused message changes nothing."""
    named: list[str] = []
    msg: Message | None = None
    grant = None
    expected = INTERACTIONS.get(action) if action is not None else None
    who = {"subject": subject, "address": address}
    try:
        if admin:
            grant = Administrator()
        elif sources is None or sources.is_open:
            raise _Refused("AR", f"{RULE_TEXT[UNKNOWN_SOURCE]}: this registry has no list of patient identity "
                                 "sources (feed_sources), so only an administrator may feed it over HL7 v3",
                           UNKNOWN_SENDER, "", "denied")
        else:
            found = sources.identify_certificate(subject, address or "")
            if isinstance(found, Refusal):
                raise _Refused("AR", f"{RULE_TEXT[UNKNOWN_SOURCE]}: {found.text}", UNKNOWN_SENDER, "", "denied")
            grant = found
        msg = read_message(body, expected)
        adds, pairs = plan(msg, grant, named)
        _apply(patients, adds, pairs)
    except _Refused as r:
        if msg is None and r.outcome == "denied":
            msg = _header_or_none(body)  # refused before it was read: its header still names it in the ack
        if r.outcome == "denied":
            log.warning("patient identity feed (HL7 v3): refused %s %s from %s: %s",
                        msg.interaction if msg else expected or "a message", msg.id_text if msg else "",
                        subject or address or "an unknown caller", r.text)
        return (acknowledgement(r.ack_code, msg, r.text, r.code, r.location),
                _event(msg, expected, r.outcome, r.ack_code, who, grant, r.text, named))
    except Exception:
        log.exception("patient identity feed (HL7 v3): store failed on %s", msg.interaction if msg else "a message")
        text = "internal error while storing the patient identity"
        return (acknowledgement("AE", msg, text, INTERNAL_ERROR),
                _event(msg, expected, "failed", "AE", who, grant, text, named))
    log.info("patient identity feed (HL7 v3): %s %s applied (source %s)", msg.interaction,
             ", ".join(named), grant.name)
    return acknowledgement("AA", msg), _event(msg, expected, "accepted", "AA", who, grant, "", named)


def _header_or_none(body) -> Message | None:
    try:
        return read_message(body)
    except _Refused:
        return None


def _apply(patients: PatientStore, adds: list[str], pairs: list[tuple[str, str]]) -> None:
    transaction = getattr(patients, "transaction", None)
    if transaction is None:
        for pid in adds:
            patients.add(pid)
        for subsumed, surviving in pairs:
            patients.add(surviving)
            patients.merge(subsumed, surviving)
        return
    with transaction() as conn:  # one database transaction: all the message's ids, or none
        for pid in adds:
            patients.add(pid, conn)
        for subsumed, surviving in pairs:
            patients.add(surviving, conn)
            patients.merge(subsumed, surviving, conn)


def _event(msg: Message | None, expected: str | None, outcome: str, ack_code: str, who: dict, grant,
           reason: str, named: list[str]) -> FeedEvent:
    name = getattr(grant, "name", None) if grant is not None and not isinstance(grant, (Refusal, OpenSource)) \
        else None
    return FeedEvent(msg.interaction if msg else (expected or ""), msg.id_text if msg else "", outcome, ack_code,
                     **who, source=name, application=msg.sender_text if msg else "", reason=reason,
                     patients=tuple(named))


class StorePatients:
    """The registry store as the v3 feed uses it: the ITI-8 PatientStore, within one transaction."""

    def __init__(self, store):
        self.store = store
        self.transaction = store.transaction

    def add(self, patient_id: str, conn=None) -> None:
        self.store.add_patient(patient_id, conn)

    def merge(self, subsumed_id: str, surviving_id: str, conn=None) -> None:
        self.store.merge_patient(subsumed_id, surviving_id, conn)


def operations(actor) -> dict[str, Operation]:
    """The ITI-44 operations of a RegistryActor: its store, its callers' rules, and ``actor.feed_sources``
    (read at each request; set by the composition from the ``feed_sources`` setting)."""
    patients = StorePatients(actor.store)

    def serve(req: SoapRequest) -> SoapResponse:
        rules = getattr(actor.config, "callers", None) or CallerRules()
        principal = req.principal
        admin = caller_of(principal, rules).kind == ADMIN
        subject = principal.tls_subject or req.peer_subject
        payload, event = handle(req.body, patients, action=req.action, admin=admin, subject=subject,
                                address=req.environ.get("REMOTE_ADDR"), sources=getattr(actor, "feed_sources", None))
        req.feed_event = event
        return SoapResponse(payload)

    return {action: Operation(serve, C.ACTION_PIX_ACK, error_payload=error_acknowledgement, certificate_alone=True)
            for action in INTERACTIONS}


def pix_endpoint(actor, path: str = "/xds/pix") -> Endpoint:
    """The same operations on their own path, with the registry's access policy and audit."""
    return Endpoint(path, operations(actor), wsdl="pix.wsdl", policy_for=actor.guard_for, actor="Document Registry")
