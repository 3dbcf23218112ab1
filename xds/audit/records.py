"""Build IHE ATNA audit records: the DICOM PS3.15 Annex A.5 ``AuditMessage`` for one transaction.

A pure builder: an :class:`AuditEvent` holds plain values describing one transaction's outcome, and
:func:`to_xml` turns it into the ``AuditMessage`` element that IHE ITI TF-2 specifies for that
transaction in its "Security Considerations / Audit Record Considerations" section:

=========  ==========================  ===============================  ======  =====================
transaction actor (this side)           EventID                          action  participant objects
=========  ==========================  ===============================  ======  =====================
ITI-41     Document Repository         DCM 110107 Import                C       patient, submission set
ITI-42     Document Registry           DCM 110107 Import                C       patient, submission set
ITI-43     Document Repository         DCM 110106 Export                R       documents
ITI-43     Document Consumer (proxy)   DCM 110107 Import                C       patient?, documents
ITI-18     Document Registry           DCM 110112 Query                 E       patient?, query
ITI-51     Document Registry           DCM 110112 Query                 E       one per patient, query
ITI-61     Document Registry           DCM 110107 Import                C       patient, submission set
ITI-57     Document Registry           DCM 110110 Patient Record        U       patient, submission set
ITI-92     Document Registry           DCM 110110 Patient Record        U       patient, submission set
ITI-62     Document Registry           DCM 110110 Patient Record        D       patient?, removed objects
ITI-86     Document Repository         DCM 110110 Patient Record        D       patient?, documents
ITI-8      Document Registry           DCM 110110 Patient Record        C / U   patient (+ MSH-10)
ITI-44     Document Registry           DCM 110110 Patient Record        C / U   patient (+ message id, II)
ITI-64     Document Registry           DCM 110110 Patient Record        U       4 patient ids by role, submission set
=========  ==========================  ===============================  ======  =====================

(TF-2 3.41.5.1, 3.42.5.1, 3.61.5.1, 3.43.6.1, 3.18.5.1, 3.51.5.1, 3.57.6.1, 3.92.5.1, 3.62.6.1, 3.86.6.1, 3.8.5.1.)  The Document
Consumer row of ITI-43 is for the routing path, where the Registry retrieves from a Repository on the
consumer's behalf.  ITI-8 is Create for A01/A04/A05 and Update for A08/A40; ITI-44 (TF-2b 3.44.5.1) is
Create for PRPA_IN201301UV02 and Update for PRPA_IN201302UV02/PRPA_IN201304UV02.

Where the record id and sequence number live
--------------------------------------------
Every record ends with one extra ParticipantObjectIdentification, the same whatever the transaction
(EventTypeCode-independent), describing the record itself::

    <ParticipantObjectIdentification ParticipantObjectID="<record uuid>" ParticipantObjectTypeCode="4">
      <ParticipantObjectIDTypeCode csd-code="audit-record" codeSystemName="urn:xds-server:audit"
                                   originalText="Audit record"/>
      <ParticipantObjectName>audit record</ParticipantObjectName>
      <ParticipantObjectDetail type="RecordId" value="base64(<record uuid>)"/>
      <ParticipantObjectDetail type="SequenceNumber" value="base64(<decimal sequence>)"/>
    </ParticipantObjectIdentification>

so that, with delivery at least once, a receiver (or :func:`record_key`) finds the pair
(record id, sequence) in the same place in every record and drops duplicates.  Type code 4 ("Other")
keeps it apart from the data the transaction touched.

What never goes into a record
-----------------------------
Document content, assertions, their signatures, passwords or keys: the event type has no field for
them.  A query's ``ParticipantObjectQuery`` is the ``AdhocQueryRequest`` element alone (never the SOAP
envelope and its security header); :func:`to_xml` refuses anything else.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from lxml import etree

from xds import xmlsafe
from xds.constants import NS_QUERY, NS_RIM
from xds.security.principal import Code

# --- codes --------------------------------------------------------------------------------------
# A coded value as DICOM PS3.15 A.5 writes it: (csd-code, codeSystemName, originalText).
DCM = "DCM"
IHE_TRANSACTIONS = "IHE Transactions"
RFC3881 = "RFC-3881"

EV_IMPORT = ("110107", DCM, "Import")
EV_EXPORT = ("110106", DCM, "Export")
EV_QUERY = ("110112", DCM, "Query")
EV_PATIENT_RECORD = ("110110", DCM, "Patient Record")

ROLE_SOURCE = ("110153", DCM, "Source Role ID")
ROLE_DESTINATION = ("110152", DCM, "Destination Role ID")

ACCESS_RIGHTS = "access-rights"
PATIENT_IDS = "patient-identity"
OWN_CODES = "urn:xds-server:audit"
TRANSACTION_NAMES = {
    "ITI-8": "Patient Identity Feed",
    "ITI-44": "Patient Identity Feed HL7 V3",
    "ITI-64": "Notify XAD-PID Link Change",
    "ITI-18": "Registry Stored Query",
    "ITI-51": "Multi-Patient Query",
    "ITI-41": "Provide and Register Document Set-b",
    "ITI-42": "Register Document Set-b",
    "ITI-61": "Register On-Demand Document Entry",
    "ITI-43": "Retrieve Document Set",
    "ITI-57": "Update Document Set",
    "ITI-92": "Restricted Update Document Set",
    "ITI-62": "Remove Metadata",
    "ITI-86": "Remove Documents",
    # Not a transaction of the profile: a change of a patient's access rights (block, unblock, authorise,
    # objections) made at the portal or the administration interface; coded in the server's own system.
    ACCESS_RIGHTS: "Patient access rights change",
    # Neither: an administrator adding or merging patient ids through /admin/patients (`xds patient`).
    PATIENT_IDS: "Patient identity administration",
}

REPOSITORY = "Document Repository"
REGISTRY = "Document Registry"
CONSUMER = "Document Consumer"

# (transaction, actor of this side) -> (EventID, EventActionCode); ITI-8's action depends on the trigger.
_EVENTS = {
    ("ITI-41", REPOSITORY): (EV_IMPORT, "C"),
    ("ITI-42", REGISTRY): (EV_IMPORT, "C"),
    ("ITI-42", REPOSITORY): (EV_EXPORT, "R"),   # the repository's own side of the hop it makes
    ("ITI-61", REGISTRY): (EV_IMPORT, "C"),
    ("ITI-43", REPOSITORY): (EV_EXPORT, "R"),
    ("ITI-43", CONSUMER): (EV_IMPORT, "C"),
    ("ITI-18", REGISTRY): (EV_QUERY, "E"),
    ("ITI-51", REGISTRY): (EV_QUERY, "E"),
    ("ITI-57", REGISTRY): (EV_PATIENT_RECORD, "U"),
    ("ITI-92", REGISTRY): (EV_PATIENT_RECORD, "U"),
    ("ITI-62", REGISTRY): (EV_PATIENT_RECORD, "D"),
    ("ITI-86", REPOSITORY): (EV_PATIENT_RECORD, "D"),
    ("ITI-8", REGISTRY): (EV_PATIENT_RECORD, None),
    ("ITI-44", REGISTRY): (EV_PATIENT_RECORD, None),
    ("ITI-64", REGISTRY): (EV_PATIENT_RECORD, "U"),
    (ACCESS_RIGHTS, REGISTRY): (EV_PATIENT_RECORD, "U"),
    (PATIENT_IDS, REGISTRY): (EV_PATIENT_RECORD, None),  # as ITI-8: A01 creates, A40 updates
}
ACTORS = {tx: tuple(a for (t, a) in _EVENTS if t == tx) for tx in TRANSACTION_NAMES}

HL7_TRIGGER_ACTIONS = {"A01": "C", "A04": "C", "A05": "C", "A08": "U", "A40": "U"}
HL7_V3_INTERACTION_ACTIONS = {"PRPA_IN201301UV02": "C", "PRPA_IN201302UV02": "U", "PRPA_IN201304UV02": "U"}
OUTCOMES = (0, 4, 8, 12)  # success, minor failure, serious failure, major failure

ID_PATIENT = ("2", RFC3881, "Patient Number")
ID_SUBMISSION_SET = ("urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd", "IHE XDS Metadata",
                     "submission set classificationNode")
ID_DOCUMENT = ("9", RFC3881, "Report Number")
ID_OBJECT_REF = ("urn:ihe:iti:2017:ObjectRef", "IHE XDS Metadata", "registry object reference")
ID_QUERY = ("ITI-18", IHE_TRANSACTIONS, "Registry Stored Query")
ID_MULTI_PATIENT_QUERY = ("ITI-51", IHE_TRANSACTIONS, "Multi-Patient Query")
# Not TF codes: the requestor's organisation (XUA Subject:Organization[-ID]) and this record's own key.
ID_ORGANIZATION = ("urn:oasis:names:tc:xspa:1.0:subject:organization-id", "urn:oasis:names:tc:xspa:1.0",
                   "Subject Organization ID")
ID_RECORD = ("audit-record", "urn:xds-server:audit", "Audit record")

AUDIT_SOURCE_TYPE = ("4", DCM, "Application Server process or thread")

DETAIL_REPOSITORY = "Repository Unique Id"
DETAIL_HOME_COMMUNITY_DOCUMENT = "ihe:homeCommunityID"
DETAIL_HOME_COMMUNITY_QUERY = "urn:ihe:iti:xca:2010:homeCommunityId"
DETAIL_QUERY_ENCODING = "QueryEncoding"
DETAIL_MSH10 = "MSH-10"
DETAIL_V3_MESSAGE_ID = "II"   # ITI-44: the message's id, root^extension
DETAIL_XPID_ROLE = "urn:ihe:iti:xpid:2017:patientIdentifierType"   # ITI-64: which id of the A43 it is
DETAIL_RECORD_ID = "RecordId"
DETAIL_SEQUENCE = "SequenceNumber"

# Participant object type codes and roles (DICOM PS3.15 A.5.1 / RFC 3881).
_PERSON, _SYSTEM, _ORGANIZATION, _OTHER = "1", "2", "3", "4"
_ROLE_PATIENT, _ROLE_REPORT, _ROLE_JOB, _ROLE_QUERY = "1", "3", "20", "24"
_LIFECYCLE_ERASURE = "15"

_NS_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
_NS_DSIG = "http://www.w3.org/2000/09/xmldsig#"
_NS_WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"


# --- the event ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Node:
    """One side of the exchange as an ActiveParticipant.

    ``user_id``: the requestor's wsa:ReplyTo (or the anonymous address), this side's SOAP endpoint
    URI, or for ITI-8 ``facility|application`` from MSH-4/MSH-3 (resp. MSH-6/MSH-5).
    ``address``: host name or IP address (NetworkAccessPointID; its type code 1 or 2 is derived).
    ``alternative_user_id``: for this side the process id, as the TF asks of the destination.
    """

    user_id: str
    address: str | None = None
    alternative_user_id: str | None = None
    user_name: str | None = None


@dataclass(frozen=True, kw_only=True)
class HumanRequestor:
    """The person on whose behalf the call was made, from a verified XUA assertion.

    ``name_id`` is the assertion's Subject NameID (ActiveParticipant UserID); ``issuer`` the
    assertion's Issuer and ``alias`` its SPProvidedID (or the subject-id name) form the XUA UserName
    ``alias<name_id@issuer>`` (ITI TF-2 3.40.4.2).  Roles become RoleIDCode, purposes of use
    EventIdentification/PurposeOfUse.
    """

    name_id: str
    issuer: str | None = None
    alias: str | None = None
    roles: tuple[Code, ...] = ()
    organization: str | None = None
    organization_id: str | None = None
    purposes_of_use: tuple[Code, ...] = ()

    @property
    def user_name(self) -> str:
        if self.issuer:
            return f"{self.alias or ''}<{self.name_id}@{self.issuer}>"
        return self.alias or self.name_id


@dataclass(frozen=True)
class DocumentRef:
    unique_id: str
    repository_unique_id: str | None = None
    home_community_id: str | None = None


def _new_record_id() -> str:
    return str(uuid.uuid4())


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """One transaction outcome, in plain values.

    ``requestor`` is the calling system (the SOAP client, or the HL7 sender); ``responder`` this
    side -- except for ITI-43 as Document Consumer (the routing path), where the requestor is this
    side (the Registry retrieving on the consumer's behalf) and the responder the Repository.  Which of the two is the Source (DCM 110153) and which the Destination (110152) follows the
    data: the requestor is the Source everywhere except ITI-43, where the documents flow from the
    Repository (the responder) to the requestor.

    ``sequence`` is a counter assigned by whoever emits records (unique per ``audit_source_id``);
    ``record_id`` a fresh UUID unless given.  Both can be read back with :func:`record_key`.
    """

    transaction: str
    actor: str
    requestor: Node
    responder: Node
    sequence: int
    outcome: int = 0
    outcome_description: str | None = None   # an error code, never request content
    event_time: datetime = field(default_factory=_utcnow)
    human: HumanRequestor | None = None
    tls_subject: str | None = None            # the verified client certificate's subject
    patient_id: str | None = None             # HL7 CX, e.g. 123^^^&1.2.3&ISO
    patient_ids: tuple[str, ...] = ()         # ITI-51: every patient of the query, one participant object each
    submission_set_uid: str | None = None
    documents: tuple[DocumentRef, ...] = ()
    object_uuids: tuple[str, ...] = ()        # ITI-62: entryUUIDs of the removed registry objects
    query_id: str | None = None
    query_parameters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    query_request: bytes | etree._Element | None = None   # the AdhocQueryRequest element only
    query_return_type: str | None = None
    home_community_id: str | None = None
    hl7_trigger: str | None = None            # ITI-8: A01, A04, A05, A08, A40; ITI-44: the interaction
    message_control_id: str | None = None     # ITI-8: MSH-10; ITI-44: the message id (root^extension)
    # ITI-64: (patientIdentifierType, CX) of each id of the A43: localPatientId, subsumedPatientId,
    # newPatientId, previousPatientId (TF-2b 3.64.5.1.2); submission_set_uid is then the new SubmissionSet's
    # entryUUID, as that table asks.
    patient_links: tuple[tuple[str, str], ...] = ()
    record_id: str = field(default_factory=_new_record_id)

    def __post_init__(self):
        if self.transaction not in TRANSACTION_NAMES:
            raise ValueError(f"no audit record is defined for transaction {self.transaction!r}")
        if (self.transaction, self.actor) not in _EVENTS:
            raise ValueError(f"{self.transaction} is audited by {', '.join(ACTORS[self.transaction])},"
                             f" not by {self.actor!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {OUTCOMES}")
        if isinstance(self.sequence, bool) or not isinstance(self.sequence, int) or self.sequence < 0:
            raise ValueError(f"sequence {self.sequence!r} is not a non-negative integer")
        if self.event_time.tzinfo is None:
            raise ValueError("event_time must be timezone-aware (UTC)")
        object.__setattr__(self, "record_id", str(uuid.UUID(str(self.record_id))))
        if self.transaction == "ITI-8" and self.hl7_trigger is not None \
                and self.hl7_trigger not in HL7_TRIGGER_ACTIONS:
            raise ValueError(f"ITI-8 trigger {self.hl7_trigger!r} is not one of {sorted(HL7_TRIGGER_ACTIONS)}")

    @property
    def event_id(self) -> tuple[str, str, str]:
        return _EVENTS[(self.transaction, self.actor)][0]

    @property
    def action(self) -> str:
        action = _EVENTS[(self.transaction, self.actor)][1]
        if action is None and self.transaction == "ITI-44":
            action = HL7_V3_INTERACTION_ACTIONS.get(self.hl7_trigger or "", "C")
        elif action is None:  # ITI-8
            action = HL7_TRIGGER_ACTIONS.get(self.hl7_trigger or "A01", "C")
        return action


# --- XML ----------------------------------------------------------------------------------------
def _b64(value: str | bytes) -> str:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return base64.b64encode(data).decode("ascii")


def _coded(parent, tag: str, coded: tuple[str, str, str]):
    code, system, text = coded
    return etree.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": text})


def _code(value: Code) -> tuple[str, str, str]:
    return (value.code, value.system or "unknown", value.display or value.code)


def _access_point(address: str) -> str:
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return "1"  # machine name, including DNS name
    return "2"      # IP address


def _participant(root, node: Node, *, requestor: bool, role, alternative: str | None):
    attrs = {"UserID": node.user_id}
    if alternative:
        attrs["AlternativeUserID"] = alternative
    if node.user_name:
        attrs["UserName"] = node.user_name
    attrs["UserIsRequestor"] = "true" if requestor else "false"
    if node.address:
        attrs["NetworkAccessPointID"] = node.address
        attrs["NetworkAccessPointTypeCode"] = _access_point(node.address)
    el = etree.SubElement(root, "ActiveParticipant", attrs)
    _coded(el, "RoleIDCode", role)
    return el


def _object(root, *, object_id: str | None, type_code: str, role: str | None, id_type,
            name: str | None = None, query: str | None = None,
            details: Iterable[tuple[str, str]] = (), lifecycle: str | None = None):
    attrs = {}
    if object_id is not None:
        attrs["ParticipantObjectID"] = object_id
    attrs["ParticipantObjectTypeCode"] = type_code
    if role is not None:
        attrs["ParticipantObjectTypeCodeRole"] = role
    if lifecycle is not None:
        attrs["ParticipantObjectDataLifeCycle"] = lifecycle
    el = etree.SubElement(root, "ParticipantObjectIdentification", attrs)
    _coded(el, "ParticipantObjectIDTypeCode", id_type)
    # DICOM 2024d (CP-2399): a ParticipantObjectName or a ParticipantObjectQuery is required.
    if query is not None:
        etree.SubElement(el, "ParticipantObjectQuery").text = query
    else:
        etree.SubElement(el, "ParticipantObjectName").text = name if name is not None else (object_id or "")
    for kind, value in details:
        etree.SubElement(el, "ParticipantObjectDetail", {"type": kind, "value": _b64(value)})
    return el


def _link_objects(root, event: AuditEvent) -> None:
    """ITI-64: one patient object per id of the A43, its role and MSH-10 as details; the ids that stop
    naming the patient's documents are logically deleted, those that take them over created."""
    roles = dict(event.patient_links)
    moved = roles.get("newPatientId") != roles.get("previousPatientId")
    lifecycle = {"localPatientId": "1" if "subsumedPatientId" in roles else None, "subsumedPatientId": "14",
                 "newPatientId": "1" if moved else None, "previousPatientId": "14" if moved else None}
    for role, patient in event.patient_links:
        details = ((DETAIL_MSH10, event.message_control_id),) if event.message_control_id else ()
        _object(root, object_id=patient, type_code=_PERSON, role=_ROLE_PATIENT, id_type=ID_PATIENT,
                details=details + ((DETAIL_XPID_ROLE, role),), lifecycle=lifecycle.get(role))


def _query_bytes(event: AuditEvent) -> bytes:
    """The AdhocQueryRequest of an ITI-18 as bytes: the one given, or one rebuilt from id and parameters."""
    request = event.query_request
    if request is None:
        root = etree.Element(f"{{{NS_QUERY}}}AdhocQueryRequest", nsmap={"query": NS_QUERY, "rim": NS_RIM})
        if event.query_return_type:
            etree.SubElement(root, f"{{{NS_QUERY}}}ResponseOption",
                             {"returnType": event.query_return_type, "returnComposedObjects": "true"})
        query = etree.SubElement(root, f"{{{NS_RIM}}}AdhocQuery", {"id": event.query_id or ""})
        for name, values in event.query_parameters:
            slot = etree.SubElement(query, f"{{{NS_RIM}}}Slot", {"name": name})
            value_list = etree.SubElement(slot, f"{{{NS_RIM}}}ValueList")
            for value in values:
                etree.SubElement(value_list, f"{{{NS_RIM}}}Value").text = value
        return etree.tostring(root, encoding="utf-8")
    element = xmlsafe.parse(request, "the audited query") if isinstance(request, bytes) else request
    if element.tag != f"{{{NS_QUERY}}}AdhocQueryRequest":
        raise ValueError(f"an ITI-18 record carries the AdhocQueryRequest only, not {element.tag}")
    for el in element.iter():
        if isinstance(el.tag, str) and el.tag.startswith(("{%s}" % _NS_SAML, "{%s}" % _NS_DSIG, "{%s}" % _NS_WSSE)):
            raise ValueError("the audited query carries security tokens or signatures; they are never recorded")
    return request if isinstance(request, bytes) else etree.tostring(element, encoding="utf-8")


def _event_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def to_xml(event: AuditEvent, audit_source_id: str, enterprise_site_id: str | None = None) -> etree._Element:
    """The DICOM PS3.15 A.5 AuditMessage for ``event``, as an lxml element (no namespace).

    Element order follows the DICOM schema: EventIdentification, ActiveParticipant+,
    AuditSourceIdentification, ParticipantObjectIdentification*.
    """
    tx = event.transaction
    root = etree.Element("AuditMessage")

    ident = etree.SubElement(root, "EventIdentification", {
        "EventActionCode": event.action,
        "EventDateTime": _event_time(event.event_time),
        "EventOutcomeIndicator": str(event.outcome),
    })
    _coded(ident, "EventID", event.event_id)
    _coded(ident, "EventTypeCode", (tx, IHE_TRANSACTIONS if tx.startswith("ITI-") else OWN_CODES,
                                    TRANSACTION_NAMES[tx]))
    if event.outcome_description:
        etree.SubElement(ident, "EventOutcomeDescription").text = event.outcome_description
    if event.human is not None:
        for purpose in event.human.purposes_of_use:
            _coded(ident, "PurposeOfUse", _code(purpose))

    # ActiveParticipants in the TF's order: Source, Human Requestor, Destination.
    requestor_alt = event.tls_subject or event.requestor.alternative_user_id
    requestor_is_source = tx != "ITI-43"
    if requestor_is_source:
        _participant(root, event.requestor, requestor=True, role=ROLE_SOURCE, alternative=requestor_alt)
    else:
        _participant(root, event.responder, requestor=False, role=ROLE_SOURCE,
                     alternative=event.responder.alternative_user_id)
    human = event.human
    if human is not None:
        el = etree.SubElement(root, "ActiveParticipant", {
            "UserID": human.name_id,
            "UserName": human.user_name,
            "UserIsRequestor": "true",
        })
        for role in human.roles:
            _coded(el, "RoleIDCode", _code(role))
    if requestor_is_source:
        _participant(root, event.responder, requestor=False, role=ROLE_DESTINATION,
                     alternative=event.responder.alternative_user_id)
    else:
        _participant(root, event.requestor, requestor=True, role=ROLE_DESTINATION, alternative=requestor_alt)

    source = etree.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": audit_source_id})
    if enterprise_site_id:
        source.set("AuditEnterpriseSiteID", enterprise_site_id)
    _coded(source, "AuditSourceTypeCode", AUDIT_SOURCE_TYPE)

    # Participant objects.
    patient_details = ()
    if tx == "ITI-8" and event.message_control_id:
        patient_details = ((DETAIL_MSH10, event.message_control_id),)
    if tx == "ITI-44" and event.message_control_id:
        patient_details = ((DETAIL_V3_MESSAGE_ID, event.message_control_id),)
    if event.patient_id and not (tx == "ITI-43" and event.actor == REPOSITORY):
        _object(root, object_id=event.patient_id, type_code=_PERSON, role=_ROLE_PATIENT, id_type=ID_PATIENT,
                details=patient_details)
    for patient in event.patient_ids if tx == "ITI-51" else ():
        if patient != event.patient_id:
            _object(root, object_id=patient, type_code=_PERSON, role=_ROLE_PATIENT, id_type=ID_PATIENT)
    if tx == "ITI-64":
        _link_objects(root, event)
    if tx in ("ITI-41", "ITI-42", "ITI-61", "ITI-57", "ITI-92", "ITI-64") and event.submission_set_uid:
        _object(root, object_id=event.submission_set_uid, type_code=_SYSTEM, role=_ROLE_JOB,
                id_type=ID_SUBMISSION_SET)
    if tx in ("ITI-43", "ITI-86"):
        for doc in event.documents:
            details = []
            if doc.repository_unique_id:
                details.append((DETAIL_REPOSITORY, doc.repository_unique_id))
            if doc.home_community_id:
                details.append((DETAIL_HOME_COMMUNITY_DOCUMENT, doc.home_community_id))
            _object(root, object_id=doc.unique_id, type_code=_SYSTEM, role=_ROLE_REPORT, id_type=ID_DOCUMENT,
                    details=details, lifecycle=_LIFECYCLE_ERASURE if tx == "ITI-86" else None)
    if tx == "ITI-62":
        for object_uuid in event.object_uuids:
            _object(root, object_id=object_uuid, type_code=_SYSTEM, role=_ROLE_REPORT, id_type=ID_OBJECT_REF,
                    lifecycle=_LIFECYCLE_ERASURE)
    if tx in ("ITI-18", "ITI-51"):
        details = [(DETAIL_QUERY_ENCODING, "UTF-8")]
        if event.home_community_id:
            details.append((DETAIL_HOME_COMMUNITY_QUERY, event.home_community_id))
        _object(root, object_id=event.query_id, type_code=_SYSTEM, role=_ROLE_QUERY,
                id_type=ID_QUERY if tx == "ITI-18" else ID_MULTI_PATIENT_QUERY,
                query=_b64(_query_bytes(event)), details=details)
    if human is not None and (human.organization or human.organization_id):
        _object(root, object_id=human.organization_id, type_code=_ORGANIZATION, role=None,
                id_type=ID_ORGANIZATION, name=human.organization or human.organization_id)

    _object(root, object_id=event.record_id, type_code=_OTHER, role=None, id_type=ID_RECORD,
            name="audit record",
            details=((DETAIL_RECORD_ID, event.record_id), (DETAIL_SEQUENCE, str(event.sequence))))
    return root


# --- events that are not transactions: node start and stop, authentication failures -------------
EV_APPLICATION_ACTIVITY = ("110100", DCM, "Application Activity")
EV_USER_AUTHENTICATION = ("110114", DCM, "User Authentication")
SYSTEM_KINDS = {
    "application-start": (EV_APPLICATION_ACTIVITY, ("110120", DCM, "Application Start")),
    "application-stop": (EV_APPLICATION_ACTIVITY, ("110121", DCM, "Application Stop")),
    "authentication-failure": (EV_USER_AUTHENTICATION, ("110122", DCM, "Login")),
}
ROLE_APPLICATION = ("110150", DCM, "Application")


@dataclass(frozen=True, kw_only=True)
class SystemEvent:
    """Node start and stop (DICOM A.5.3.1 Application Activity) and a refused authentication (A.5.3.19
    User Authentication, Login, a failure outcome).  ``node`` is this side; ``peer`` the remote party of
    a refused authentication, with ``tls_subject`` and ``claimed_user`` (the NameID of a refused
    assertion: not verified, which the outcome says)."""

    kind: str
    node: Node
    sequence: int
    outcome: int = 0
    outcome_description: str | None = None
    event_time: datetime = field(default_factory=_utcnow)
    peer: Node | None = None
    tls_subject: str | None = None
    claimed_user: str | None = None
    transaction: str | None = None   # the transaction the refused request was for
    record_id: str = field(default_factory=_new_record_id)

    def __post_init__(self):
        if self.kind not in SYSTEM_KINDS:
            raise ValueError(f"system audit event {self.kind!r} is not one of {sorted(SYSTEM_KINDS)}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not one of {OUTCOMES}")
        if self.event_time.tzinfo is None:
            raise ValueError("event_time must be timezone-aware (UTC)")
        object.__setattr__(self, "record_id", str(uuid.UUID(str(self.record_id))))


def system_to_xml(event: SystemEvent, audit_source_id: str, enterprise_site_id: str | None = None):
    event_id, type_code = SYSTEM_KINDS[event.kind]
    root = etree.Element("AuditMessage")
    ident = etree.SubElement(root, "EventIdentification", {
        "EventActionCode": "E", "EventDateTime": _event_time(event.event_time),
        "EventOutcomeIndicator": str(event.outcome)})
    _coded(ident, "EventID", event_id)
    _coded(ident, "EventTypeCode", type_code)
    if event.outcome_description:
        etree.SubElement(ident, "EventOutcomeDescription").text = event.outcome_description
    if event.kind == "authentication-failure":
        peer = event.peer or Node(user_id="unknown")
        user = event.claimed_user or event.tls_subject or peer.user_id
        attrs = {"UserID": user, "UserIsRequestor": "true"}
        if event.tls_subject and event.tls_subject != user:
            attrs["AlternativeUserID"] = event.tls_subject
        if peer.address:
            attrs["NetworkAccessPointID"] = peer.address
            attrs["NetworkAccessPointTypeCode"] = _access_point(peer.address)
        etree.SubElement(root, "ActiveParticipant", attrs)
        _participant(root, event.node, requestor=False, role=ROLE_DESTINATION,
                     alternative=event.node.alternative_user_id)
    else:
        _participant(root, event.node, requestor=False, role=ROLE_APPLICATION,
                     alternative=event.node.alternative_user_id)
    source = etree.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": audit_source_id})
    if enterprise_site_id:
        source.set("AuditEnterpriseSiteID", enterprise_site_id)
    _coded(source, "AuditSourceTypeCode", AUDIT_SOURCE_TYPE)
    if event.transaction in TRANSACTION_NAMES:
        _object(root, object_id=event.transaction, type_code=_SYSTEM, role=None,
                id_type=(event.transaction, IHE_TRANSACTIONS, TRANSACTION_NAMES[event.transaction]),
                name=TRANSACTION_NAMES[event.transaction])
    _object(root, object_id=event.record_id, type_code=_OTHER, role=None, id_type=ID_RECORD,
            name="audit record",
            details=((DETAIL_RECORD_ID, event.record_id), (DETAIL_SEQUENCE, str(event.sequence))))
    return root


def render(event: "AuditEvent | SystemEvent", audit_source_id: str, enterprise_site_id: str | None = None) -> bytes:
    """The record as the one-line UTF-8 bytes a syslog message carries."""
    build = system_to_xml if isinstance(event, SystemEvent) else to_xml
    return etree.tostring(build(event, audit_source_id, enterprise_site_id), encoding="utf-8")


# --- the stored form: events wait in the outbox as JSON, rendered when they are sent -------------
def _plain(value):
    """json.dumps's hook for what JSON has no type for; the encoder's C code does the rest (dicts, lists,
    tuples, strings), which made the stored form a fifth of the cost of an audited query's record."""
    if isinstance(value, datetime):
        return {"$t": value.astimezone(timezone.utc).isoformat()}
    if isinstance(value, bytes):
        return {"$b": _b64(value)}
    if isinstance(value, etree._Element):
        return {"$b": _b64(etree.tostring(value, encoding="utf-8"))}
    if isinstance(value, Code):
        return {"$c": [value.code, value.system, value.display]}
    if isinstance(value, (Node, HumanRequestor, DocumentRef)):
        return {"$" + type(value).__name__: vars(value)}
    raise TypeError(f"an audit event holds a {type(value).__name__}, which the outbox cannot store")


_TYPES = {"Node": Node, "HumanRequestor": HumanRequestor, "DocumentRef": DocumentRef}


def _typed(value):
    if isinstance(value, list):
        return tuple(_typed(v) for v in value)
    if isinstance(value, dict):
        (key, inner), = value.items()
        if key == "$t":
            return datetime.fromisoformat(inner)
        if key == "$b":
            return base64.b64decode(inner)
        if key == "$c":
            return Code(*inner)
        return _TYPES[key[1:]](**{k: _typed(v) for k, v in inner.items()})
    return value


def to_stored(event: "AuditEvent | SystemEvent") -> str:
    kind = "system" if isinstance(event, SystemEvent) else "transaction"
    return json.dumps({"$event": kind, **vars(event)}, default=_plain, separators=(",", ":"), ensure_ascii=False)


def from_stored(text: str, sequence: int | None = None) -> "AuditEvent | SystemEvent":
    data = json.loads(text)
    cls = SystemEvent if data.pop("$event") == "system" else AuditEvent
    values = {k: _typed(v) for k, v in data.items()}
    if sequence is not None:
        values["sequence"] = sequence
    return cls(**values)


def record_key(message: etree._Element | bytes) -> tuple[str, int]:
    """(record id, sequence number) of an AuditMessage built by :func:`to_xml`: the duplicate-detection key."""
    root = xmlsafe.parse(message, "audit record") if isinstance(message, bytes) else message
    for obj in root.iterfind("ParticipantObjectIdentification"):
        type_code = obj.find("ParticipantObjectIDTypeCode")
        if type_code is None or type_code.get("csd-code") != ID_RECORD[0] \
                or type_code.get("codeSystemName") != ID_RECORD[1]:
            continue
        details = {d.get("type"): base64.b64decode(d.get("value", "")).decode("utf-8")
                   for d in obj.iterfind("ParticipantObjectDetail")}
        try:
            return str(uuid.UUID(details[DETAIL_RECORD_ID])), int(details[DETAIL_SEQUENCE])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"the audit record's key is malformed: {exc}") from None
    raise ValueError("the AuditMessage carries no record key")
