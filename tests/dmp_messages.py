"""Messages of the French DMP profile (shared/testkits/dmp/PROFILE.md, Tables A and B), written for the
project's tests from the profile's description: an ITI-41 with one CDA R2 document whose header agrees
with its metadata plus the mandatory signature document, RPLC replacements, the ITI-57 masking and
status changes, and the ITI-18 and ITI-43 requests that read them back.

Every value a test may want to break is a field of `Document` or an argument of `submission`, so a
refusal test changes exactly one rule and leaves the rest conformant.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from node.transfer import provide_and_register, retrieve_request
from xds import builder
from xds import constants as C

Code = tuple[str, str, str]  # code, codingScheme, display name

# --- identifiers (Table C) -------------------------------------------------------------------------

INS_NIR_TEST = "1.2.250.1.213.1.4.10"
LEGACY_INS_C = "1.2.250.1.213.1.4.2"
INS_DATE = "20100907"  # the CX.7 the official examples append to every INS
IDNAT_PS = "1.2.250.1.71.4.2.1"
IDNAT_STRUCT = "1.2.250.1.71.4.2.2"
DMP_REPOSITORY = "1.2.250.1.213.4.1.1.1.2"


def ins(n: int) -> str:
    """A test INS-NIR matricule: 15 characters, as NIR (13) plus key (2)."""
    return f"1{n:014d}"


def patient_id(matricule: str, *, root: str = INS_NIR_TEST, nh: bool = True, date: str | None = None) -> str:
    """The CX of an INS: bare (``INS^^^&OID&ISO``, as an IHE feed writes it), with CX.5 ``NH`` as the DMP
    demands of metadata, and optionally the CX.7 date of the examples (``^NH^^20100907``)."""
    cx = f"{matricule}^^^&{root}&ISO"
    if nh or date:
        cx += "^NH"
    if date:
        cx += f"^^{date}"
    return cx


def xcn(idnat: str = "899900063480", family: str = "MAX", given: str = "LIBRE", *,
        authority: str | None = IDNAT_PS, id_type: str | None = "D", type_code: str | None = "IDNPS") -> str:
    """An authorPerson / legalAuthenticator (B-9): IdNat_PS, names, XCN.9 authority, XCN.10 ``D``,
    XCN.13 ``IDNPS``; None leaves a component empty."""
    parts = [idnat, family, given, "", "", "", "", "", f"&{authority}&ISO" if authority else "",
             id_type or "", "", "", type_code or ""]
    return "^".join(parts)


def xon(name: str = "CABINET DR LIBRE", struct_id: str = "499900063480001") -> str:
    """An authorInstitution (B-11): XON.6 the Struct_IdNat authority, XON.7 ``IDNST``, XON.10 the id."""
    return f"{name}^^^^^&{IDNAT_STRUCT}&ISO^IDNST^^^{struct_id}"


def new_oid() -> str:
    return builder.new_oid("1.2.250.1.999.1.1.7898")


# --- codes (Table D) --------------------------------------------------------------------------------

LOINC = "2.16.840.1.113883.6.1"
HL7_CONFIDENTIALITY = "2.16.840.1.113883.5.25"
TRE_A07 = "1.2.250.1.213.1.1.4.13"

TYPE_CONSULTATION: Code = ("11488-4", LOINC, "Compte rendu de consultation")       # JDV_J07
TYPE_SUMMARY: Code = ("34133-9", LOINC, "Synthèse d'épisode de soins")             # JDV_J07
CLASS_REPORT: Code = ("10", "1.2.250.1.213.1.1.4.1", "Compte rendu")               # TRE_A03 / JDV_J57
FORMAT_PDF: Code = ("urn:ihe:iti:xds-sd:pdf:2008", "1.3.6.1.4.1.19376.1.2.3",      # JDV_J60
                    "Document à corps non structuré en PDF")
CONTENT_DAY_HOSPITAL: Code = ("04", "1.2.250.1.213.2.2", "Hospitalisation de jour")  # TRE_R209 / JDV_J59
PRACTICE_HOSPITAL: Code = ("ETABLISSEMENT", "1.2.250.1.213.1.1.4.9", "Etablissement de santé")  # TRE_A01
FACILITY_PUBLIC: Code = ("SA01", "1.2.250.1.71.4.2.4", "Etablissement public de santé")     # TRE_R02

NORMAL: Code = ("N", HL7_CONFIDENTIALITY, "Normal")
RESTRICTED: Code = ("R", HL7_CONFIDENTIALITY, "Restreint")
MASQUE_PS: Code = ("MASQUE_PS", TRE_A07, "Masqué aux professionnels de santé")
INVISIBLE_PATIENT: Code = ("INVISIBLE_PATIENT", TRE_A07, "Non visible par le patient")

# B-32: the signature document's fixed metadata.
SIGNATURE_CLASS: Code = ("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN", "Digital Signature")
SIGNATURE_TYPE: Code = ("E1762", "ASTM", "Full Document")
SIGNATURE_FORMAT: Code = ("http://www.w3.org/2000/09/xmldsig#", "URN", "Default Signature Style")
SIGNATURE_EVENT: Code = ("1.2.840.10065.1.12.1.14", "1.2.840.10065.1.12", "Source")
SIGNATURE_CONFIDENTIALITY: list[Code] = [NORMAL, MASQUE_PS, INVISIBLE_PATIENT]
SIGNATURE_LANGUAGE = "art"

SPECIALTY = "G15_10/SM26^Médecin - Qualifié en Médecine Générale (SM)^1.2.250.1.213.1.1.4.5"
SOURCE_ID = "1.2.250.1.999.1.1.7898"

NS_CDA = "urn:hl7-org:v3"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_DS = "http://www.w3.org/2000/09/xmldsig#"
NS_XADES = "http://uri.etsi.org/01903/v1.1.1#"
CISIS_HEADER_TEMPLATES = ("2.16.840.1.113883.2.8.2.1", "1.2.250.1.213.1.1.1.1")
XDS_SD_TEMPLATE = "1.3.6.1.4.1.19376.1.2.20"  # the CDA level 1 (scanned) document, formatCode xds-sd:pdf


# --- one document: its metadata and its CDA -----------------------------------------------------------

@dataclass
class Document:
    """A DocumentEntry and its CDA R2 document. The CDA is written from the same values, so the two agree
    unless a `cda_*` field says otherwise (the coherence rules of B-14, B-16, B-24, B-31)."""

    patient: str                                # DE.patientId as written in the metadata
    unique_id: str = field(default_factory=new_oid)
    type_code: Code = TYPE_CONSULTATION
    class_code: Code = CLASS_REPORT
    format_code: Code = FORMAT_PDF
    confidentiality: Sequence[Code] = (NORMAL,)
    practice: Code = PRACTICE_HOSPITAL
    facility: Code = FACILITY_PUBLIC
    events: Sequence[Code] = ()
    title: str = "Compte rendu de consultation"
    author: str = field(default_factory=xcn)
    institution: str | None = field(default_factory=xon)
    legal_authenticator: str = field(default_factory=xcn)
    creation_time: str = "20240102101500"
    service_start: str = "20240102100000"
    service_stop: str = "20240102103000"
    language: str = "fr-FR"
    mime_type: str = "text/xml"
    source_patient_id: str = "0456789999^^^&1.2.250.1.999.1.1.7898.2&ISO^PI"
    replaces: tuple[str, str] | None = None     # (entryUUID, uniqueId) of the entry an RPLC replaces
    set_id: str | None = None                   # the CDA setId, kept by every version (None: uniqueId + ".0")
    # What the CDA header says instead of the metadata (None: the same as the metadata).
    cda_id: str | None = None
    cda_patient: str | None = None              # a matricule
    cda_code: Code | None = None
    cda_confidentiality: str | None = None
    _content: bytes | None = field(default=None, repr=False)

    def but(self, *, same_content: bool = False, **changes) -> "Document":
        """A copy with some attributes changed; its content is written again from them, unless
        same_content: an ITI-57 new version describes the bytes already stored (same hash and size)."""
        return dataclasses.replace(self, _content=self.content if same_content else None, **changes)

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = cda(self)
        return self._content

    @property
    def hash(self) -> str:
        return hashlib.sha1(self.content).hexdigest()

    @property
    def size(self) -> int:
        return len(self.content)

    def entry(self, id: str, *, lid: str | None = None, repository_id: str | None = None,
              registered: bool = False) -> etree._Element:
        """The ExtrinsicObject. registered: with hash, size and repositoryUniqueId, as an ITI-57 new version
        of an entry must carry them."""
        return _entry(self, id, lid=lid, repository_id=repository_id if registered else None,
                      registered=registered)


def _entry(doc: Document, id: str, *, lid: str | None, repository_id: str | None,
           registered: bool) -> etree._Element:
    slot = builder.slot
    eo = etree.Element(builder.rim("ExtrinsicObject"), nsmap={"rim": C.NS_RIM}, id=id, mimeType=doc.mime_type,
                       objectType=C.OBJECT_TYPE_STABLE)
    if lid:
        eo.set("lid", lid)
    slot(eo, "creationTime", [doc.creation_time])
    slot(eo, "languageCode", [doc.language])
    slot(eo, "legalAuthenticator", [doc.legal_authenticator])
    slot(eo, "serviceStartTime", [doc.service_start])
    if doc.service_stop:
        slot(eo, "serviceStopTime", [doc.service_stop])
    slot(eo, "sourcePatientId", [doc.source_patient_id])
    slot(eo, "sourcePatientInfo", ["PID-5|PAT-TROIS^DOMINIQUE^^^^^L", "PID-7|19790328", "PID-8|F"])
    if registered:
        slot(eo, "hash", [doc.hash])
        slot(eo, "size", [str(doc.size)])
        slot(eo, "repositoryUniqueId", [repository_id])
    builder.name(eo, doc.title)
    _author(eo, C.DE_AUTHOR, doc.author, doc.institution)
    builder.classification(eo, C.DE_CLASS_CODE, doc.class_code)
    for code in doc.confidentiality:
        builder.classification(eo, C.DE_CONFIDENTIALITY_CODE, code)
    for code in doc.events:
        builder.classification(eo, C.DE_EVENT_CODE, code)
    builder.classification(eo, C.DE_FORMAT_CODE, doc.format_code)
    builder.classification(eo, C.DE_HEALTHCARE_FACILITY_TYPE_CODE, doc.facility)
    builder.classification(eo, C.DE_PRACTICE_SETTING_CODE, doc.practice)
    builder.classification(eo, C.DE_TYPE_CODE, doc.type_code)
    builder.external_id(eo, C.DE_PATIENT_ID, doc.patient, "XDSDocumentEntry.patientId")
    builder.external_id(eo, C.DE_UNIQUE_ID, doc.unique_id, "XDSDocumentEntry.uniqueId")
    return eo


def _author(parent: etree._Element, scheme: str, person: str, institution: str | None) -> None:
    slots = {"authorPerson": [person], "authorSpecialty": [SPECIALTY]}
    if institution:
        slots["authorInstitution"] = [institution]
    builder.classification(parent, scheme, None, slots=slots)


def _matricule(cx: str) -> tuple[str, str]:
    """(CX.1, CX.4 universal id) of a patient CX."""
    parts = cx.split("^")
    authority = parts[3].split("&") if len(parts) > 3 else []
    return parts[0], authority[1] if len(authority) > 1 else ""


def _cda_id(parent: etree._Element, tag: str, uid: str) -> etree._Element:
    # A uniqueId is root or root^extension (ITI TF-3 4.2.3.2.26).
    root, _, extension = uid.partition("^")
    el = _v3(parent, tag, root=root)
    if extension:
        el.set("extension", extension)
    return el


def _v3(parent: etree._Element | None, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    el = etree.Element(f"{{{NS_CDA}}}{tag}") if parent is None else etree.SubElement(parent, f"{{{NS_CDA}}}{tag}")
    for k, v in attrs.items():
        el.set(k, v)
    if text is not None:
        el.text = text
    return el


def _person(parent: etree._Element, xcn_value: str, tag: str) -> None:
    parts = (xcn_value.split("^") + [""] * 13)[:13]
    authority = parts[8].split("&")
    _v3(parent, "id", root=authority[1] if len(authority) > 1 else "", extension=parts[0])
    person = _v3(parent, tag)
    name = _v3(person, "name")
    _v3(name, "given", parts[2])
    _v3(name, "family", parts[1])


def cda(doc: Document) -> bytes:
    """A CDA R2 level 1 document with the CI-SIS header (B-30) whose header carries the entry's values."""
    code = doc.cda_code or doc.type_code
    matricule, root = _matricule(doc.patient)
    if doc.cda_patient:
        matricule = doc.cda_patient
    cd = etree.Element(f"{{{NS_CDA}}}ClinicalDocument", nsmap={None: NS_CDA, "xsi": NS_XSI})
    _v3(cd, "realmCode", code="FR")
    _v3(cd, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_HD000040")
    for template in (*CISIS_HEADER_TEMPLATES, XDS_SD_TEMPLATE):
        _v3(cd, "templateId", root=template)
    _cda_id(cd, "id", doc.cda_id or doc.unique_id)
    _v3(cd, "code", code=code[0], codeSystem=code[1], displayName=code[2])
    _v3(cd, "title", doc.title)
    _v3(cd, "effectiveTime", value=doc.creation_time + "+0000")
    _v3(cd, "confidentialityCode", code=doc.cda_confidentiality or _hl7_level(doc.confidentiality),
        codeSystem=HL7_CONFIDENTIALITY)
    _v3(cd, "languageCode", code=doc.language)
    _cda_id(cd, "setId", doc.set_id or doc.unique_id + ".0")
    _v3(cd, "versionNumber", value="2" if doc.replaces else "1")
    role = _v3(_v3(cd, "recordTarget"), "patientRole")
    _v3(role, "id", root=root, extension=matricule)
    patient = _v3(role, "patient")
    name = _v3(patient, "name")
    _v3(name, "given", "DOMINIQUE")
    _v3(name, "family", "PAT-TROIS", qualifier="SP")
    _v3(patient, "administrativeGenderCode", code="F", codeSystem="2.16.840.1.113883.5.1")
    _v3(patient, "birthTime", value="19790328")
    author = _v3(cd, "author")
    _v3(author, "time", value=doc.creation_time + "+0000")
    assigned = _v3(author, "assignedAuthor")
    _person(assigned, doc.author, "assignedPerson")
    _organisation(assigned, doc.institution)
    custodian = _v3(_v3(_v3(cd, "custodian"), "assignedCustodian"), "representedCustodianOrganization")
    _v3(custodian, "id", root=IDNAT_STRUCT, extension="499900063480001")
    _v3(custodian, "name", "CABINET DR LIBRE")
    legal = _v3(cd, "legalAuthenticator")
    _v3(legal, "time", value=doc.creation_time + "+0000")
    _v3(legal, "signatureCode", code="S")
    _person(_v3(legal, "assignedEntity"), doc.legal_authenticator, "assignedPerson")
    event = _v3(_v3(cd, "documentationOf"), "serviceEvent")
    period = _v3(event, "effectiveTime")
    _v3(period, "low", value=doc.service_start)
    if doc.service_stop:
        _v3(period, "high", value=doc.service_stop)
    performer = _v3(_v3(event, "performer", typeCode="PRF"), "assignedEntity")
    _person(performer, doc.author, "assignedPerson")
    org = _v3(performer, "representedOrganization")
    _v3(org, "standardIndustryClassCode", code=doc.practice[0], codeSystem=doc.practice[1],
        displayName=doc.practice[2])
    if doc.replaces:
        related = _v3(cd, "relatedDocument", typeCode="RPLC")
        _cda_id(_v3(related, "parentDocument"), "id", doc.replaces[1])
    encounter = _v3(_v3(cd, "componentOf"), "encompassingEncounter")
    _v3(_v3(encounter, "effectiveTime"), "low", value=doc.service_start)
    facility = _v3(_v3(encounter, "location"), "healthCareFacility")
    _v3(facility, "code", code=doc.facility[0], codeSystem=doc.facility[1], displayName=doc.facility[2])
    body = _v3(_v3(cd, "component"), "nonXMLBody")
    pdf = b"%PDF-1.4\n% " + doc.unique_id.encode() + b"\n%%EOF\n"
    _v3(body, "text", base64.b64encode(pdf).decode(), mediaType="application/pdf", representation="B64")
    return etree.tostring(cd, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _organisation(assigned: etree._Element, institution: str | None) -> None:
    if not institution:
        return
    parts = (institution.split("^") + [""] * 10)[:10]
    org = _v3(assigned, "representedOrganization")
    _v3(org, "id", root=IDNAT_STRUCT, extension=parts[9])
    _v3(org, "name", parts[0])


def _hl7_level(codes: Sequence[Code]) -> str:
    return next((c[0] for c in codes if c[1] == HL7_CONFIDENTIALITY), "N")


# --- the signature document (B-32) --------------------------------------------------------------------

_SIGNING_KEY = None


def _key():
    global _SIGNING_KEY
    if _SIGNING_KEY is None:
        _SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _SIGNING_KEY


def _c14n(el: etree._Element) -> bytes:
    return etree.tostring(el, method="c14n", exclusive=True)


def signature_content(ss_unique_id: str, documents: Sequence[Document]) -> bytes:
    """An enveloping XAdES-style signature whose IHE manifest has one reference per SubmissionSet and
    document uniqueId (urn:oid:…) with its SHA-256 digest, signed with a throwaway RSA key."""
    ds = lambda parent, tag, **a: etree.SubElement(parent, f"{{{NS_DS}}}{tag}", **a)  # noqa: E731
    sig = etree.Element(f"{{{NS_DS}}}Signature", nsmap={"ds": NS_DS, "xades": NS_XADES}, Id="IHEManifestSig")
    info = ds(sig, "SignedInfo")
    ds(info, "CanonicalizationMethod", Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#")
    ds(info, "SignatureMethod", Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256")
    ref = ds(info, "Reference", URI="#IHEManifest", Type="http://www.w3.org/2000/09/xmldsig#Manifest")
    ds(ref, "DigestMethod", Algorithm="http://www.w3.org/2001/04/xmlenc#sha256")
    digest = ds(ref, "DigestValue")
    value = ds(sig, "SignatureValue")
    obj = ds(sig, "Object")
    manifest = ds(obj, "Manifest", Id="IHEManifest")
    for uid, data in [(ss_unique_id, None)] + [(d.unique_id, d.content) for d in documents]:
        r = ds(manifest, "Reference", URI=f"urn:oid:{uid}")
        ds(r, "DigestMethod", Algorithm="http://www.w3.org/2001/04/xmlenc#sha256")
        ds(r, "DigestValue").text = base64.b64encode(hashlib.sha256(data or uid.encode()).digest()).decode()
    props = etree.SubElement(ds(sig, "Object"), f"{{{NS_XADES}}}QualifyingProperties", Target="#IHEManifestSig")
    signed = etree.SubElement(etree.SubElement(props, f"{{{NS_XADES}}}SignedProperties"),
                              f"{{{NS_XADES}}}SignedSignatureProperties")
    etree.SubElement(signed, f"{{{NS_XADES}}}SigningTime").text = "2024-01-02T10:15:00Z"
    digest.text = base64.b64encode(hashlib.sha256(_c14n(manifest)).digest()).decode()
    value.text = base64.b64encode(_key().sign(_c14n(info), padding.PKCS1v15(), hashes.SHA256())).decode()
    return etree.tostring(sig, xml_declaration=True, encoding="UTF-8")


def signature_document(patient: str, *, confidentiality: Sequence[Code] = SIGNATURE_CONFIDENTIALITY,
                       **fields) -> Document:
    """The signature DocumentEntry of a submission for patient; its content is set by `submission`."""
    return Document(patient=patient, type_code=SIGNATURE_TYPE, class_code=SIGNATURE_CLASS,
                    format_code=SIGNATURE_FORMAT, confidentiality=tuple(confidentiality), events=(SIGNATURE_EVENT,),
                    title="Signature", language=SIGNATURE_LANGUAGE, **fields)


# --- ITI-41 -------------------------------------------------------------------------------------------

SS = "SubmissionSet01"


@dataclass
class Submission:
    """An ITI-41 ready to send: the request, its attachments, and the documents it carries by symbolic id."""

    request: etree._Element
    attachments: list
    documents: dict[str, Document]
    ss_unique_id: str

    @property
    def unique_ids(self) -> list[str]:
        return [d.unique_id for d in self.documents.values()]


def submission_set(patient: str, *, unique_id: str | None = None, author: str | None = None,
                   institution: str | None = None, content_type: Code = CONTENT_DAY_HOSPITAL,
                   submission_time: str = "20240102101600") -> etree._Element:
    rp = etree.Element(builder.rim("RegistryPackage"), nsmap={"rim": C.NS_RIM}, id=SS)
    rp.set("objectType", C.OBJECT_TYPE_REGISTRY_PACKAGE)
    builder.slot(rp, "submissionTime", [submission_time])
    builder.name(rp, "Compte rendu")
    _author(rp, C.SS_AUTHOR, author or xcn(), institution if institution is not None else xon())
    builder.classification(rp, C.SS_CONTENT_TYPE_CODE, content_type)
    builder.external_id(rp, C.SS_UNIQUE_ID, unique_id or new_oid(), "XDSSubmissionSet.uniqueId")
    builder.external_id(rp, C.SS_SOURCE_ID, SOURCE_ID, "XDSSubmissionSet.sourceId")
    builder.external_id(rp, C.SS_PATIENT_ID, patient, "XDSSubmissionSet.patientId")
    return rp


def submission(patient: str, *documents: Document, signature: str = "signs",
               signature_confidentiality: Sequence[Code] = SIGNATURE_CONFIDENTIALITY,
               content_type: Code = CONTENT_DAY_HOSPITAL, ss_author: str | None = None,
               ss_patient: str | None = None) -> Submission:
    """An ITI-41 of documents (default: one conformant CDA) and the signature document.

    signature: ``signs`` (the signature DE linked to the SubmissionSet by a `signs` association, B-32),
    ``none`` (no signature document), ``unlinked`` (the signature DE without its `signs` association) or
    ``document`` (`signs` aimed at the first document instead of the SubmissionSet)."""
    docs = list(documents) or [Document(patient=patient)]
    ss_uid = new_oid()
    objects = [submission_set(ss_patient or patient, unique_id=ss_uid, author=ss_author, content_type=content_type),
               builder.submission_set_marker(SS)]
    by_id: dict[str, Document] = {}
    for n, doc in enumerate(docs, start=1):
        ident = f"Document{n:02d}"
        by_id[ident] = doc
        objects += [doc.entry(ident), builder.association(SS, ident, id=f"ss-doc{n}")]
        if doc.replaces:
            objects.append(builder.association(ident, doc.replaces[0], C.ASSOC_RPLC, id=f"rplc{n}"))
    if signature != "none":
        sig = signature_document(patient, confidentiality=signature_confidentiality, author=docs[0].author,
                                 institution=docs[0].institution, legal_authenticator=docs[0].legal_authenticator,
                                 practice=docs[0].practice, facility=docs[0].facility)
        sig._content = signature_content(ss_uid, docs)
        by_id["Signature01"] = sig
        objects += [sig.entry("Signature01"), builder.association(SS, "Signature01", id="ss-sig")]
        if signature in ("signs", "document"):
            target = SS if signature == "signs" else "Document01"
            objects.append(builder.association("Signature01", target, C.ASSOC_SIGNS, id="signs"))
    request = builder.submit_objects_request(objects)
    pnr, attachments = provide_and_register(request, {i: d.content for i, d in by_id.items()},
                                            content_types={i: d.mime_type for i, d in by_id.items()})
    return Submission(pnr, attachments, by_id, ss_uid)


def replacement(old: Document, old_entry_uuid: str, **changes) -> Document:
    """The new version an RPLC submits for old (B-33): a new uniqueId, the CDA's relatedDocument naming
    the old one's."""
    changes.setdefault("unique_id", new_oid())
    changes.setdefault("set_id", old.set_id or old.unique_id + ".0")  # one setId for every version (CDA R2)
    return old.but(replaces=(old_entry_uuid, old.unique_id), **changes)


# --- ITI-57 -------------------------------------------------------------------------------------------

def metadata_update(doc: Document, lid: str, previous_version: str, repository_id: str, *,
                    ss_patient: str | None = None) -> etree._Element:
    """TD3.3a/b: a new version of a registered entry (same lid and uniqueId), whose SubmissionSet
    HasMember carries SubmissionSetStatus=Original and PreviousVersion (B-34)."""
    link = builder.association(SS, "Document01", id="ss-v", ss_status="Original")
    builder.slot(link, "PreviousVersion", [previous_version])
    return builder.submit_objects_request([
        submission_set(ss_patient or doc.patient), builder.submission_set_marker(SS),
        doc.entry("Document01", lid=lid, repository_id=repository_id, registered=True), link])


def status_update(patient: str, entry_uuid: str, original: str, new: str) -> etree._Element:
    """TD3.3c/d: UpdateAvailabilityStatus of one entry, OriginalStatus to NewStatus (B-35)."""
    return builder.submit_objects_request([submission_set(patient), builder.submission_set_marker(SS),
                                           builder.status_change(entry_uuid, original, new, submission_set=SS)])


# --- ITI-18 and ITI-43 --------------------------------------------------------------------------------

def find_documents(patient: str, statuses: Sequence[str] = (C.STATUS_APPROVED,),
                   return_type: str = "LeafClass") -> etree._Element:
    return builder.find_documents_request(patient, statuses, return_type)


def _quoted(values: Sequence[str]) -> str:
    return "(" + ",".join(f"'{v}'" for v in values) + ")"


def get_documents(*, uuids: Sequence[str] = (), unique_ids: Sequence[str] = (),
                  return_type: str = "LeafClass") -> etree._Element:
    slots = [("$XDSDocumentEntryEntryUUID", _quoted(uuids))] if uuids else \
        [("$XDSDocumentEntryUniqueId", _quoted(unique_ids))]
    return builder.adhoc_query_request(C.SQ_GET_DOCUMENTS, slots, return_type)


def get_all(patient: str, statuses: Sequence[str], return_type: str = "LeafClass") -> etree._Element:
    return builder.adhoc_query_request(C.SQ_GET_ALL, [
        ("$patientId", f"'{patient}'"), ("$XDSDocumentEntryStatus", _quoted(statuses)),
        ("$XDSSubmissionSetStatus", _quoted(statuses)), ("$XDSFolderStatus", _quoted(statuses))], return_type)


def find_submission_sets(patient: str, statuses: Sequence[str] = (C.STATUS_APPROVED,),
                         return_type: str = "LeafClass") -> etree._Element:
    return builder.adhoc_query_request(C.SQ_FIND_SUBMISSION_SETS, [
        ("$XDSSubmissionSetPatientId", f"'{patient}'"), ("$XDSSubmissionSetStatus", _quoted(statuses))], return_type)


def get_submission_set_and_contents(ss_unique_id: str, return_type: str = "LeafClass") -> etree._Element:
    """The SubmissionSet and everything it holds, whatever their status (ITI TF-2a 3.18.4.1.2.3.7.8)."""
    return builder.adhoc_query_request(C.SQ_GET_SUBMISSION_SET_AND_CONTENTS,
                                       [("$XDSSubmissionSetUniqueId", f"'{ss_unique_id}'")], return_type)


def by_entry_uuid(query_id: str, uuids: Sequence[str], *, return_type: str = "LeafClass",
                  association_types: Sequence[str] = ()) -> etree._Element:
    """The stored queries that name DocumentEntries (or any object) by entryUUID: GetAssociations,
    GetSubmissionSets ($uuid), GetDocumentsAndAssociations, GetFoldersForDocument and GetRelatedDocuments
    ($XDSDocumentEntryEntryUUID; the last two name one entry, and GetRelatedDocuments its association types)."""
    if query_id in (C.SQ_GET_ASSOCIATIONS, C.SQ_GET_SUBMISSION_SETS):
        slots = [("$uuid", _quoted(uuids))]
    elif query_id == C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS:
        slots = [("$XDSDocumentEntryEntryUUID", _quoted(uuids))]
    else:
        (uuid,) = uuids
        slots = [("$XDSDocumentEntryEntryUUID", f"'{uuid}'")]
    if association_types:
        slots.append(("$AssociationTypes", _quoted(association_types)))
    return builder.adhoc_query_request(query_id, slots, return_type)


def retrieve(repository_id: str, *unique_ids: str) -> etree._Element:
    """ITI-43 of documents of one repository (TD3.2)."""
    req = retrieve_request(unique_ids[0], repository_id)
    for uid in unique_ids[1:]:
        req.append(retrieve_request(uid, repository_id)[0])
    return req

