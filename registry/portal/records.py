"""What the portal reads and changes in a patient's record, each as the XDS transaction it is (ITI-18, ITI-43,
ITI-57), run in process through the server's own layers (XdsApp.call): the same policy decides what the
signed-in patient sees and may change, and the same audit records it, as for any SOAP caller.

Nothing here decides who sees what: a document the policy hides is simply not in the ITI-18 answer, and
one that is not there cannot be downloaded or masked through the portal either.
"""
from __future__ import annotations

import base64
import copy
import time
import uuid
from dataclasses import dataclass

from lxml import etree

from xds import builder
from xds import constants as C
from xds.ebrim import read_object
from xds.model import DocumentEntry
from xds.security.principal import Principal

RIM = C.NS_RIM
REGISTRY_PATH = "/xds/registry"

# The DMP's confidentiality code a patient sets to mask a document from professionals (PROFILE.md Table E),
# and its code system (TRE_A07, as the DMP writes it).
MASK_CODE, MASK_SCHEME = "MASQUE_PS", "1.2.250.1.213.1.1.4.13"
MASK_DISPLAY = "Masqué aux professionnels de santé"
# The SubmissionSet of a patient's own update: authored by the patient (XCN.13 NH), with the DMP's content
# type for what the patient produces (JDV_J59: TRE_A00 EXP_PATIENT).
PATIENT_CONTENT_TYPE = ("EXP_PATIENT", "1.2.250.1.213.1.1.4.6", "Expression personnelle du patient")
# The portal's sourceId: a fixed OID of the 2.25 (UUID) arc, so its submissions are told apart.
PORTAL_SOURCE_ID = "2.25." + str(uuid.UUID("6f1d3c52-8a0e-4a8e-9b57-3f0c7c2d9a11").int)


class PortalError(Exception):
    """A transaction the portal ran was refused or failed: codes are the XDS error codes it answered."""

    def __init__(self, message: str, codes: tuple[str, ...] = ()):
        super().__init__(message)
        self.codes = codes


@dataclass(frozen=True)
class Doc:
    entry_uuid: str
    lid: str
    version: str
    unique_id: str
    repository_id: str | None
    home: str | None
    title: str
    type: str
    date: str            # creationTime (YYYYMMDD[hhmm[ss]]), for sorting and display
    author: str
    organisation: str
    mime_type: str
    masked: bool
    patient_id: str          # the entry's patientId as the source wrote it (the DMP's INS with ^NH)
    element: etree._Element  # the ExtrinsicObject as the registry answered it


def _rim(local: str) -> str:
    return f"{{{RIM}}}{local}"


def _xcn_name(value: str | None) -> str:
    """A person for display: given and family name of an XCN, else its id."""
    if not value:
        return ""
    parts = (value.split("^") + [""] * 4)[:4]
    name = " ".join(p for p in (parts[3] if len(parts) > 3 else "", parts[2], parts[1]) if p)
    return name or parts[0]


def _xon_name(value: str | None) -> str:
    return (value or "").split("^", 1)[0]


def _errors(payload: etree._Element) -> tuple[str, ...]:
    return tuple(e.get("errorCode") or "" for e in payload.iter(C.q(C.NS_RS, "RegistryError"))
                 if e.get("severity", "").endswith("Error"))


def _status_ok(payload: etree._Element) -> bool:
    return (payload.get("status") or "").endswith(":Success")


def _doc(el: etree._Element) -> Doc | None:
    obj = read_object(el)
    if not isinstance(obj, DocumentEntry):
        return None
    authors = obj.authors()
    first = authors[0] if authors else None
    type_code = obj.code(C.DE_TYPE_CODE)
    version = el.find(_rim("VersionInfo"))
    masked = any(c.code == MASK_CODE for c in obj.codes(C.DE_CONFIDENTIALITY_CODE))
    return Doc(entry_uuid=obj.id, lid=obj.lid or obj.id, version=version.get("versionName", "1") if version is not None
               else "1", unique_id=obj.unique_id or "", repository_id=obj.slot1("repositoryUniqueId"),
               home=el.get("home"), title=obj.name or "", type=(type_code.display or type_code.code) if type_code
               else "", date=obj.slot1("creationTime") or "", author=_xcn_name(first.person if first else None),
               organisation=_xon_name(first.institutions[0] if first and first.institutions else None),
               mime_type=obj.mime_type or "application/octet-stream", masked=masked,
               patient_id=obj.patient_id or "", element=el)


class Record:
    """One patient's record, as the signed-in person (principal) sees it."""

    def __init__(self, app, principal: Principal, environ: dict, registry_path: str = REGISTRY_PATH):
        self.app = app
        self.principal = principal
        self.environ = environ
        self.path = registry_path

    def _call(self, action: str, body: etree._Element):
        return self.app.call(self.path, action, body, self.principal, self.environ)

    def documents(self, patient: str) -> list[Doc]:
        """The Approved DocumentEntries the policy shows this person, newest first (ITI-18 FindDocuments)."""
        resp = self._call(C.ACTION_QUERY, builder.find_documents_request(patient))
        payload = resp.payload
        if not _status_ok(payload):
            raise PortalError("the registry refused the query", _errors(payload))
        docs = [d for d in (_doc(el) for el in payload.iter(_rim("ExtrinsicObject"))) if d is not None]
        return sorted(docs, key=lambda d: (d.date, d.entry_uuid), reverse=True)

    def retrieve(self, doc: Doc):
        """The document's bytes through the registry's routing path (ITI-43): (mime type, bytes or a file
        path, cleanup)."""
        resp = self._call(C.ACTION_RETRIEVE, builder.retrieve_request(doc.unique_id, doc.repository_id or "", doc.home))
        parts = {cid: (ctype, data) for cid, ctype, data in resp.attachments}
        for response in resp.payload.iter(C.q(C.NS_XDSB, "DocumentResponse")):
            include = response.find(f".//{{{C.NS_XOP}}}Include")
            cid = (include.get("href") or "")[4:] if include is not None else None
            mime = response.findtext(C.q(C.NS_XDSB, "mimeType")) or doc.mime_type
            if cid and cid in parts:
                return mime, parts[cid][1], resp.cleanup
            inline = response.findtext(C.q(C.NS_XDSB, "Document"))
            if inline is not None:
                return mime, base64.b64decode(inline), resp.cleanup
        if resp.cleanup is not None:
            resp.cleanup()
        raise PortalError("the document could not be retrieved", _errors(resp.payload))

    def set_masked(self, patient: str, doc: Doc, masked: bool) -> None:
        """A new version of the entry with MASQUE_PS added or removed and nothing else changed (ITI-57)."""
        if doc.masked == masked:
            return
        resp = self._call(C.ACTION_UPDATE, mask_update(doc, patient, masked))
        if not _status_ok(resp.payload):
            raise PortalError("the registry refused the change", _errors(resp.payload))


def patient_author(patient: str) -> str:
    """The patient as an XCN authorPerson: the INS (CX.1), its authority (CX.4), id type D, XCN.13 NH."""
    cx = (patient.split("^") + [""] * 4)
    authority = cx[3] or ""
    return f"{cx[0]}^^^^^^^^{authority}^D^^^NH"


def mask_update(doc: Doc, patient: str, masked: bool) -> etree._Element:
    """The ITI-57 SubmitObjectsRequest of a confidentiality change made by the patient: a SubmissionSet the
    patient authors, HasMember (SubmissionSetStatus Original, PreviousVersion) to the entry as the registry
    holds it, with MASQUE_PS added or removed. The SubmissionSet names the patient as the entry does (the
    profile may want a form, such as the DMP's INS with CX.5 NH, that the portal's session does not carry)."""
    patient = doc.patient_id or patient
    ss_id, new_id = "SubmissionSet01", "Document01"
    ss = etree.Element(_rim("RegistryPackage"), nsmap={"rim": RIM}, id=ss_id,
                       objectType=C.OBJECT_TYPE_REGISTRY_PACKAGE)
    builder.slot(ss, "submissionTime", [time.strftime("%Y%m%d%H%M%S", time.gmtime())])
    builder.name(ss, "Masquage aux professionnels" if masked else "Fin du masquage aux professionnels")
    builder.author(ss, C.SS_AUTHOR, patient_author(patient))
    builder.classification(ss, C.SS_CONTENT_TYPE_CODE, PATIENT_CONTENT_TYPE)
    builder.external_id(ss, C.SS_UNIQUE_ID, "2.25." + str(uuid.uuid4().int), "XDSSubmissionSet.uniqueId")
    builder.external_id(ss, C.SS_SOURCE_ID, PORTAL_SOURCE_ID, "XDSSubmissionSet.sourceId")
    builder.external_id(ss, C.SS_PATIENT_ID, patient, "XDSSubmissionSet.patientId")

    eo = copy.deepcopy(doc.element)
    eo.set("id", new_id)
    eo.attrib.pop("status", None)
    version_info = eo.find(_rim("VersionInfo"))
    if version_info is not None:
        eo.remove(version_info)
    for n, c in enumerate(eo.findall(_rim("Classification")), start=1):
        c.set("id", f"cl{n:02d}")
        c.set("classifiedObject", new_id)
    for n, e in enumerate(eo.findall(_rim("ExternalIdentifier")), start=1):
        e.set("id", f"ei{n:02d}")
        e.set("registryObject", new_id)
    confidentiality = [c for c in eo.findall(_rim("Classification"))
                       if c.get("classificationScheme") == C.DE_CONFIDENTIALITY_CODE]
    if masked:
        mark = builder.classification(eo, C.DE_CONFIDENTIALITY_CODE, (MASK_CODE, MASK_SCHEME, MASK_DISPLAY))
        mark.set("id", "clmask")
        anchor = confidentiality[-1] if confidentiality else eo.find(_rim("Classification"))
        if anchor is not None:
            anchor.addnext(mark)
        else:
            eo.append(mark)
    else:
        for c in confidentiality:
            if c.get("nodeRepresentation") == MASK_CODE:
                eo.remove(c)

    link = builder.association(ss_id, new_id, id="ss-v", ss_status="Original")
    builder.slot(link, "PreviousVersion", [doc.version])
    return builder.submit_objects_request([ss, builder.submission_set_marker(ss_id), eo, link])
