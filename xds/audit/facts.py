"""What an audit record says about a SOAP exchange, read from the request and the answer.

Read from the XML the caller sent and the answer this side built, not from the handlers, so that no
transaction's logic has to remember to tell the audit layer anything. Only identifiers and names go in
(patient id, uniqueIds, entryUUIDs, query id and parameters, titles for the patient's log): never
document content, never the security header.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from xds import constants as C

_RIM, _XDSB, _QUERY, _LCM = C.NS_RIM, C.NS_XDSB, C.NS_QUERY, C.NS_LCM
_PATIENT_SLOTS = ("$XDSDocumentEntryPatientId", "$XDSFolderPatientId", "$XDSSubmissionSetPatientId", "$patientId")


def _r(local: str) -> str:
    return f"{{{_RIM}}}{local}"


def _x(local: str) -> str:
    return f"{{{_XDSB}}}{local}"


@dataclass
class Document:
    unique_id: str
    repository_unique_id: str | None = None
    home_community_id: str | None = None
    title: str | None = None
    patient_id: str | None = None


@dataclass
class Facts:
    patient_id: str | None = None
    patient_ids: list[str] = field(default_factory=list)   # ITI-18 and ITI-51: every patient the query names
    submission_set_uid: str | None = None
    documents: list[Document] = field(default_factory=list)
    object_uuids: list[str] = field(default_factory=list)
    query_id: str | None = None
    query_parameters: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    query_request: etree._Element | None = None
    query_return_type: str | None = None
    home_community_id: str | None = None


def _external_id(obj: etree._Element, scheme: str) -> str | None:
    for ext in obj.iterchildren(_r("ExternalIdentifier")):
        if ext.get("identificationScheme") == scheme:
            return (ext.get("value") or "").strip() or None
    return None


def _title(obj: etree._Element) -> str | None:
    name = obj.find(_r("Name"))
    if name is None:
        return None
    for ls in name.iterchildren(_r("LocalizedString")):
        if ls.get("value"):
            return ls.get("value")
    return None


def _submission(body: etree._Element, facts: Facts) -> None:
    """ITI-41, ITI-42, ITI-61, ITI-57, ITI-92: the SubmissionSet's uniqueId and patient, the DocumentEntries'."""
    registry_list = body.find(f".//{_r('RegistryObjectList')}")
    if registry_list is None:
        return
    for package in registry_list.iterchildren(_r("RegistryPackage")):
        uid = _external_id(package, C.SS_UNIQUE_ID)
        if uid is not None:
            facts.submission_set_uid = uid
            facts.patient_id = _external_id(package, C.SS_PATIENT_ID) or facts.patient_id
    for eo in registry_list.iterchildren(_r("ExtrinsicObject")):
        uid = _external_id(eo, C.DE_UNIQUE_ID)
        if uid is None:
            continue
        repo = None
        for slot in eo.iterchildren(_r("Slot")):
            if slot.get("name") == "repositoryUniqueId":
                repo = (slot.findtext(f"{_r('ValueList')}/{_r('Value')}") or "").strip() or None
        patient = _external_id(eo, C.DE_PATIENT_ID)
        facts.documents.append(Document(uid, repo, title=_title(eo), patient_id=patient))
        facts.patient_id = facts.patient_id or patient


def _document_requests(body: etree._Element, facts: Facts) -> None:
    """ITI-43, ITI-86: the DocumentRequests."""
    for dr in body.iter(_x("DocumentRequest")):
        uid = (dr.findtext(_x("DocumentUniqueId")) or "").strip()
        if uid:
            facts.documents.append(Document(uid, (dr.findtext(_x("RepositoryUniqueId")) or "").strip() or None,
                                            (dr.findtext(_x("HomeCommunityId")) or "").strip() or None))


def _unquote(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("(") and value.endswith(")"):
        return [v.strip().strip("'") for v in value[1:-1].split(",") if v.strip()]
    return [value.strip("'")]


def _query(body: etree._Element, facts: Facts) -> None:
    request = body if body.tag == f"{{{_QUERY}}}AdhocQueryRequest" else body.find(f".//{{{_QUERY}}}AdhocQueryRequest")
    if request is None:
        return
    facts.query_request = request
    option = request.find(f"{{{_QUERY}}}ResponseOption")
    facts.query_return_type = option.get("returnType") if option is not None else None
    query = request.find(_r("AdhocQuery"))
    if query is None:
        return
    facts.query_id = query.get("id")
    facts.home_community_id = query.get("home")
    for slot in query.iterchildren(_r("Slot")):
        values = tuple(v.text or "" for v in slot.iter(_r("Value")))
        facts.query_parameters.append((slot.get("name") or "", values))
        if slot.get("name") in _PATIENT_SLOTS and values and facts.patient_id is None:
            patients = [p for v in values for p in _unquote(v) if p]
            facts.patient_id = patients[0] if patients else None
            facts.patient_ids = list(dict.fromkeys(patients))


def _removals(body: etree._Element, facts: Facts) -> None:
    for ref in body.iter(_r("ObjectRef")):
        if ref.get("id"):
            facts.object_uuids.append(ref.get("id"))


_READERS = {
    "ITI-41": _submission, "ITI-42": _submission, "ITI-61": _submission, "ITI-57": _submission, "ITI-92": _submission,
    "ITI-43": _document_requests, "ITI-86": _document_requests,
    "ITI-18": _query, "ITI-51": _query, "ITI-62": _removals,
}


def of_request(transaction: str, body: etree._Element | None) -> Facts:
    facts = Facts()
    reader = _READERS.get(transaction)
    if reader is not None and body is not None:
        reader(body, facts)
    return facts


def retrieved(payload: etree._Element | None) -> list[str]:
    """The uniqueIds an ITI-43 answer carries (the documents actually handed out)."""
    if payload is None:
        return []
    return [(dr.findtext(_x("DocumentUniqueId")) or "").strip() for dr in payload.iter(_x("DocumentResponse"))]


def patients_of(objects) -> set[str]:
    """The patients of these registry objects (DocumentEntries, Folders, SubmissionSets; others have none)."""
    out: set[str] = set()
    for obj in objects:
        if not isinstance(obj.tag, str):
            continue
        for scheme in (C.DE_PATIENT_ID, C.SS_PATIENT_ID, C.FOLDER_PATIENT_ID):
            value = _external_id(obj, scheme)
            if value:
                out.add(value)
    return out


def answered_documents(payload: etree._Element | None) -> list[Document]:
    out: list[Document] = []
    if payload is None:
        return out
    object_list = payload.find(_r("RegistryObjectList"))
    if object_list is None:
        return out
    for eo in object_list.iterchildren(_r("ExtrinsicObject")):
        uid = _external_id(eo, C.DE_UNIQUE_ID)
        if uid:
            out.append(Document(uid, title=_title(eo), patient_id=_external_id(eo, C.DE_PATIENT_ID)))
    return out


def outcome(payload: etree._Element | None) -> tuple[int, str | None]:
    """DICOM outcome and description (the error codes only) of an answer."""
    if payload is None:
        return 12, None
    holder = payload if payload.get("status") is not None else payload.find(C.q(C.NS_RS, "RegistryResponse"))
    status = holder.get("status") if holder is not None else None
    codes = sorted({e.get("errorCode") or "" for e in (holder.iter(C.q(C.NS_RS, "RegistryError"))
                                                       if holder is not None else ())
                    if e.get("severity") != C.SEVERITY_WARNING})
    description = " ".join(c for c in codes if c)[:200] or None
    if status == C.RESPONSE_SUCCESS:
        return 0, description
    if status is not None and status.endswith("PartialSuccess"):
        return 4, description
    return 8, description
