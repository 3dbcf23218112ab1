"""Builds ebRIM 3.0 submission metadata from plain values.

Used by the CLI (`xds submit`), the benchmarks and the tests; a Document Source can use it too.
"""
from __future__ import annotations

import datetime as _dt
import uuid as _uuid
from typing import Iterable, Sequence

from lxml import etree

from . import constants as C

RIM = C.NS_RIM
NSMAP = {"rim": C.NS_RIM, "lcm": C.NS_LCM, "rs": C.NS_RS}

CodeT = tuple[str, str, str]  # code, codingScheme, display name


def rim(local: str) -> str:
    return C.q(RIM, local)


def new_oid(root: str = "1.2.250.1.999.1") -> str:
    """A unique OID under a test root, from a UUID's integer form (the 2.25 arc would also do)."""
    return f"{root}.{_uuid.uuid4().int % 10**20}"


def now_dtm() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d%H%M%S")


def slot(parent: etree._Element, name: str, values: Sequence[str]) -> etree._Element:
    s = etree.SubElement(parent, rim("Slot"), name=name)
    vl = etree.SubElement(s, rim("ValueList"))
    for v in values:
        etree.SubElement(vl, rim("Value")).text = v
    return s


def name(parent: etree._Element, text: str, tag: str = "Name") -> None:
    n = etree.SubElement(parent, rim(tag))
    etree.SubElement(n, rim("LocalizedString"), value=text)


_counter = iter(range(1, 10**9))


def _local_id(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"


def classification(parent: etree._Element, scheme: str, code: CodeT | None, *, slots: dict | None = None) -> etree._Element:
    c = etree.SubElement(parent, rim("Classification"), classificationScheme=scheme,
                         classifiedObject=parent.get("id"), id=_local_id("cl"),
                         nodeRepresentation=code[0] if code else "")
    c.set("objectType", C.OBJECT_TYPE_CLASSIFICATION)
    if code:
        slot(c, "codingScheme", [code[1]])
        name(c, code[2])
    for k, v in (slots or {}).items():
        slot(c, k, v)
    return c


def external_id(parent: etree._Element, scheme: str, value: str, label: str) -> etree._Element:
    e = etree.SubElement(parent, rim("ExternalIdentifier"), identificationScheme=scheme, value=value,
                         registryObject=parent.get("id"), id=_local_id("ei"))
    e.set("objectType", C.OBJECT_TYPE_EXTERNAL_IDENTIFIER)
    name(e, label)
    return e


def author(parent: etree._Element, scheme: str, person: str | None = None, institutions: Iterable[str] = (),
           roles: Iterable[str] = (), specialties: Iterable[str] = ()) -> None:
    slots: dict[str, list[str]] = {}
    if person:
        slots["authorPerson"] = [person]
    if institutions:
        slots["authorInstitution"] = list(institutions)
    if roles:
        slots["authorRole"] = list(roles)
    if specialties:
        slots["authorSpecialty"] = list(specialties)
    classification(parent, scheme, None, slots=slots)


DEFAULT_CODES = {
    "class": ("11488-4", "2.16.840.1.113883.6.1", "Consult note"),
    "type": ("34133-9", "2.16.840.1.113883.6.1", "Summary of episode note"),
    "format": ("urn:ihe:pcc:xphr:2007", "1.3.6.1.4.1.19376.1.2.3", "PHR Extract"),
    "confidentiality": [("N", "2.16.840.1.113883.5.25", "Normal")],
    "hcft": ("SA", "1.2.250.1.213.1.1.4.9", "Secteur ambulatoire"),
    "practice": ("ETABLISSEMENT", "1.2.250.1.213.1.1.4.9", "Etablissement de sante"),
    "event": [],
    "content_type": ("04", "1.2.250.1.213.1.1.4.12", "Hospitalisation"),
    "folder": [("Referrals", "1.3.6.1.4.1.21367.100.1", "Referrals")],
}


def document_entry(patient_id: str, *, id: str = "Document01", unique_id: str | None = None,
                   mime_type: str = "text/plain", title: str = "Document", creation_time: str = "20240101120000",
                   language: str = "fr-FR", codes: dict | None = None, hash: str | None = None,
                   size: int | None = None, repository_unique_id: str | None = None,
                   service_start: str | None = None, service_stop: str | None = None,
                   author_person: str | None = "123^Martin^Paul^^^^^^&1.2.250.1.71.4.2.1&ISO",
                   author_institution: str | None = "Hopital^^^^^^^^^1.2.3.4",
                   reference_ids: Sequence[str] = (), extra_slots: dict | None = None,
                   object_type: str = C.OBJECT_TYPE_STABLE, source_patient_id: str | None = None,
                   legal_authenticator: str | None = None,
                   author_roles: Sequence[str] = ("Medecin",),
                   author_specialties: Sequence[str] = ("G15_10/SM26^Medecine generale^1.2.250.1.213.1.1.4.5",),
                   author_institutions: Sequence[str] | None = None) -> etree._Element:
    """author_institutions, when given, replaces the single author_institution."""
    codes = {**DEFAULT_CODES, **(codes or {})}
    eo = etree.Element(rim("ExtrinsicObject"), nsmap={"rim": RIM}, id=id, mimeType=mime_type, objectType=object_type)
    slot(eo, "creationTime", [creation_time])
    slot(eo, "languageCode", [language])
    slot(eo, "sourcePatientId", [source_patient_id or patient_id])
    slot(eo, "sourcePatientInfo", ["PID-3|" + (source_patient_id or patient_id), "PID-5|DOE^JOHN^^^", "PID-8|M"])
    if legal_authenticator:
        slot(eo, "legalAuthenticator", [legal_authenticator])
    if service_start:
        slot(eo, "serviceStartTime", [service_start])
    if service_stop:
        slot(eo, "serviceStopTime", [service_stop])
    if hash is not None:
        slot(eo, "hash", [hash])
    if size is not None:
        slot(eo, "size", [str(size)])
    if repository_unique_id:
        slot(eo, "repositoryUniqueId", [repository_unique_id])
    if reference_ids:
        slot(eo, C.REFERENCE_ID_LIST_SLOT, list(reference_ids))
    for k, v in (extra_slots or {}).items():
        slot(eo, k, v)
    name(eo, title)
    institutions = list(author_institutions) if author_institutions is not None else \
        [author_institution] if author_institution else []
    if author_person or institutions:
        author(eo, C.DE_AUTHOR, author_person, institutions, roles=author_roles, specialties=author_specialties)
    classification(eo, C.DE_CLASS_CODE, codes["class"])
    for c in codes["confidentiality"]:
        classification(eo, C.DE_CONFIDENTIALITY_CODE, c)
    for c in codes["event"]:
        classification(eo, C.DE_EVENT_CODE, c)
    classification(eo, C.DE_FORMAT_CODE, codes["format"])
    classification(eo, C.DE_HEALTHCARE_FACILITY_TYPE_CODE, codes["hcft"])
    classification(eo, C.DE_PRACTICE_SETTING_CODE, codes["practice"])
    classification(eo, C.DE_TYPE_CODE, codes["type"])
    external_id(eo, C.DE_PATIENT_ID, patient_id, "XDSDocumentEntry.patientId")
    external_id(eo, C.DE_UNIQUE_ID, unique_id or new_oid(), "XDSDocumentEntry.uniqueId")
    return eo


def submission_set(patient_id: str, *, id: str = "SubmissionSet01", unique_id: str | None = None,
                   source_id: str = "1.2.250.1.999.7", submission_time: str | None = None,
                   content_type: CodeT | None = None, author_person: str | None = "123^Martin^Paul",
                   extra_slots: dict | None = None, title: str = "Submission",
                   author_institutions: Sequence[str] = ("Hopital^^^^^^^^^1.2.3.4",)) -> etree._Element:
    rp = etree.Element(rim("RegistryPackage"), nsmap={"rim": RIM}, id=id)
    rp.set("objectType", C.OBJECT_TYPE_REGISTRY_PACKAGE)
    slot(rp, "submissionTime", [submission_time or now_dtm()])
    for k, v in (extra_slots or {}).items():
        slot(rp, k, v)
    name(rp, title)
    if author_person:
        author(rp, C.SS_AUTHOR, author_person, list(author_institutions))
    classification(rp, C.SS_CONTENT_TYPE_CODE, content_type or DEFAULT_CODES["content_type"])
    external_id(rp, C.SS_UNIQUE_ID, unique_id or new_oid(), "XDSSubmissionSet.uniqueId")
    external_id(rp, C.SS_SOURCE_ID, source_id, "XDSSubmissionSet.sourceId")
    external_id(rp, C.SS_PATIENT_ID, patient_id, "XDSSubmissionSet.patientId")
    return rp


def _marker(package_id: str, node: str) -> etree._Element:
    c = etree.Element(rim("Classification"), nsmap={"rim": RIM}, classifiedObject=package_id,
                      classificationNode=node, id=_local_id("cl"))
    c.set("objectType", C.OBJECT_TYPE_CLASSIFICATION)
    return c


def submission_set_marker(ss_id: str = "SubmissionSet01") -> etree._Element:
    return _marker(ss_id, C.SS_CLASSIFICATION_NODE)


def folder(patient_id: str, *, id: str = "Folder01", unique_id: str | None = None,
           codes: Sequence[CodeT] | None = None, title: str = "Folder") -> etree._Element:
    rp = etree.Element(rim("RegistryPackage"), nsmap={"rim": RIM}, id=id)
    rp.set("objectType", C.OBJECT_TYPE_REGISTRY_PACKAGE)
    name(rp, title)
    for c in codes if codes is not None else DEFAULT_CODES["folder"]:
        classification(rp, C.FOLDER_CODE_LIST, c)
    external_id(rp, C.FOLDER_PATIENT_ID, patient_id, "XDSFolder.patientId")
    external_id(rp, C.FOLDER_UNIQUE_ID, unique_id or new_oid(), "XDSFolder.uniqueId")
    return rp


def folder_marker(folder_id: str = "Folder01") -> etree._Element:
    return _marker(folder_id, C.FOLDER_CLASSIFICATION_NODE)


def association(source: str, target: str, type: str = C.ASSOC_HAS_MEMBER, *, id: str | None = None,
                ss_status: str | None = "Original") -> etree._Element:
    a = etree.Element(rim("Association"), nsmap={"rim": RIM}, id=id or _local_id("as"), associationType=type,
                      sourceObject=source, targetObject=target)
    a.set("objectType", C.OBJECT_TYPE_ASSOCIATION)
    if ss_status and type == C.ASSOC_HAS_MEMBER:
        slot(a, "SubmissionSetStatus", [ss_status])
    return a


def submit_objects_request(objects: Iterable[etree._Element]) -> etree._Element:
    req = etree.Element(C.q(C.NS_LCM, "SubmitObjectsRequest"), nsmap=NSMAP)
    rol = etree.SubElement(req, rim("RegistryObjectList"))
    for o in objects:
        rol.append(o)
    return req


def simple_submission(patient_id: str, n_docs: int = 1, *, folder_too: bool = False, register: bool = True,
                      repository_unique_id: str = "1.2.250.1.999.3.1", doc_kwargs: dict | None = None,
                      ss_kwargs: dict | None = None) -> etree._Element:
    """One SubmissionSet with n DocumentEntries (and optionally a Folder holding them), ready for ITI-42.

    With register=True, hash, size and repositoryUniqueId are filled in as a repository would.
    """
    objs: list[etree._Element] = [submission_set(patient_id, **(ss_kwargs or {})), submission_set_marker()]
    for i in range(1, n_docs + 1):
        kw = dict(doc_kwargs or {})
        if register:
            kw.setdefault("hash", "da39a3ee5e6b4b0d3255bfef95601890afd80709")
            kw.setdefault("size", 0)
            kw.setdefault("repository_unique_id", repository_unique_id)
        objs.append(document_entry(patient_id, id=f"Document{i:02d}", **kw))
        objs.append(association("SubmissionSet01", f"Document{i:02d}", id=f"ssde{i}"))
    if folder_too:
        objs += [folder(patient_id), folder_marker(), association("SubmissionSet01", "Folder01", id="ssfd")]
        for i in range(1, n_docs + 1):
            objs.append(association("Folder01", f"Document{i:02d}", id=f"fdde{i}", ss_status=None))
            objs.append(association("SubmissionSet01", f"fdde{i}", id=f"ssfdde{i}"))
    return submit_objects_request(objs)


# --- stored queries (ITI-18) --------------------------------------------------------------------
def adhoc_query_request(query_id: str, slots: list[tuple[str, str]], return_type: str = "LeafClass",
                        home: str | None = None) -> etree._Element:
    req = etree.Element(C.q(C.NS_QUERY, "AdhocQueryRequest"), nsmap={"query": C.NS_QUERY, "rim": C.NS_RIM})
    etree.SubElement(req, C.q(C.NS_QUERY, "ResponseOption"), returnType=return_type, returnComposedObjects="true")
    query = etree.SubElement(req, C.q(C.NS_RIM, "AdhocQuery"), id=query_id)
    if home:
        query.set("home", home)
    for name, text in slots:
        slot = etree.SubElement(query, C.q(C.NS_RIM, "Slot"), name=name)
        etree.SubElement(etree.SubElement(slot, C.q(C.NS_RIM, "ValueList")), C.q(C.NS_RIM, "Value")).text = text
    return req


def find_documents_request(patient_id: str, statuses: Sequence[str] = (C.STATUS_APPROVED,),
                           return_type: str = "LeafClass") -> etree._Element:
    """FindDocuments for one patient and statuses: the query that opens a record."""
    quoted = ",".join(f"'{s}'" for s in statuses)
    return adhoc_query_request(C.SQ_FIND_DOCUMENTS, [("$XDSDocumentEntryPatientId", f"'{patient_id}'"),
                                                     ("$XDSDocumentEntryStatus", f"({quoted})")], return_type)


def status_change(target: str, original: str, new: str, id: str = "uas",
                  submission_set: str = "SubmissionSet01") -> etree._Element:
    """ITI-57: an UpdateAvailabilityStatus association from the submission set to a registered object."""
    a = association(submission_set, target, C.ASSOC_UPDATE_AVAILABILITY_STATUS, id=id)
    slot(a, "OriginalStatus", [original])
    slot(a, "NewStatus", [new])
    return a


def remove_objects_request(*ids: str, home: str | None = None) -> etree._Element:
    """ITI-62: a RemoveObjectsRequest naming registry objects by entryUUID."""
    req = etree.Element(C.q(C.NS_LCM, "RemoveObjectsRequest"), nsmap={"lcm": C.NS_LCM, "rim": C.NS_RIM})
    refs = etree.SubElement(req, rim("ObjectRefList"))
    for i in ids:
        ref = etree.SubElement(refs, rim("ObjectRef"), id=i)
        if home:
            ref.set("home", home)
    return req


def remove_documents_request(*items: tuple[str, str]) -> etree._Element:
    """ITI-86: a RemoveDocumentsRequest; items are (repositoryUniqueId, documentUniqueId)."""
    req = etree.Element(C.q(C.NS_RMD, "RemoveDocumentsRequest"), nsmap={"rmd": C.NS_RMD, "xdsb": C.NS_XDSB})
    for repo, uid in items:
        dr = etree.SubElement(req, C.q(C.NS_XDSB, "DocumentRequest"))
        etree.SubElement(dr, C.q(C.NS_XDSB, "RepositoryUniqueId")).text = repo
        etree.SubElement(dr, C.q(C.NS_XDSB, "DocumentUniqueId")).text = uid
    return req


def retrieve_request(unique_id: str, repository_id: str, home: str | None = None) -> etree._Element:
    """ITI-43 RetrieveDocumentSetRequest for one document."""
    req = etree.Element(C.q(C.NS_XDSB, "RetrieveDocumentSetRequest"), nsmap={"xdsb": C.NS_XDSB})
    dr = etree.SubElement(req, C.q(C.NS_XDSB, "DocumentRequest"))
    if home:
        etree.SubElement(dr, C.q(C.NS_XDSB, "HomeCommunityId")).text = home
    etree.SubElement(dr, C.q(C.NS_XDSB, "RepositoryUniqueId")).text = repository_id
    etree.SubElement(dr, C.q(C.NS_XDSB, "DocumentUniqueId")).text = unique_id
    return req
