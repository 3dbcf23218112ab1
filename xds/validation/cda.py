"""Header-only coherence of a CDA R2 document with its DocumentEntry (PROFILE.md B-14, B-16, B-24, B-30, B-31).

A repository runs these checks on the documents of an ITI-41 under the DMP profile, before it stores
anything. Only the header is checked (no schematron, nothing of the body): the CI-SIS header templates and
realm, and the four attributes the metadata must repeat (uniqueId, patient, typeCode, confidentiality). The
document is parsed whole, with the hardened parser (xds.xmlsafe) and its size limit.

Every problem has its own error code and names the DocumentEntry and the attribute; `report` adds them
to an ErrorList as errors, or as warnings when the repository is lenient.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from .. import constants as C
from .. import hl7, xmlsafe
from ..errors import ErrorList
from ..model import DocumentEntry
from .context import Context
from .dmp import HL7_CONFIDENTIALITY, is_signature

CDA_UNIQUE_ID = "DMPCdaUniqueId"            # B-24: uniqueId = ClinicalDocument/id
CDA_PATIENT = "DMPCdaPatient"               # B-31: patientId = recordTarget/patientRole/id
CDA_TYPE_CODE = "DMPCdaTypeCode"            # B-14: typeCode = ClinicalDocument/code
CDA_CONFIDENTIALITY = "DMPCdaConfidentiality"  # B-16: HL7 confidentialityCode = the CDA's
CDA_HEADER = "DMPCdaHeader"                 # B-30: realmCode FR, CI-SIS templateIds; a readable CDA

NS_CDA = "urn:hl7-org:v3"
ROOT_TAG = f"{{{NS_CDA}}}ClinicalDocument"
REALM = "FR"
HEADER_TEMPLATES = ("2.16.840.1.113883.2.8.2.1", "1.2.250.1.213.1.1.1.1")
XML_MIME_TYPES = ("text/xml", "application/xml")

# How much of a document is looked at to decide whether it is a CDA, and the most that is parsed.
HEAD_BYTES = 4096
MAX_BYTES = xmlsafe.MAX_BYTES

# A UTF-8 byte order mark, an XML declaration, comments and processing instructions, then the root.
_CDA_START = re.compile(rb"(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*\?>\s*)?(?:(?:<!--.*?-->|<\?.*?\?>)\s*)*"
                        rb"<(?:[A-Za-z_][\w.-]*:)?ClinicalDocument[\s>/]", re.S)


@dataclass(frozen=True)
class Problem:
    code: str
    attribute: str
    message: str


def wants_check(de: DocumentEntry, head: bytes) -> bool:
    """Whether the document of ``de`` is to be read as a CDA: an XML media type (the signature document
    excepted: it is a XAdES signature), or bytes that open on a ClinicalDocument root element.

    head: the first bytes of the document (HEAD_BYTES of them suffice)."""
    if is_signature(de):
        return False
    mime = (de.mime_type or "").split(";")[0].strip().lower()
    return mime in XML_MIME_TYPES or starts_as_cda(head)


def starts_as_cda(head: bytes) -> bool:
    return _CDA_START.match(head) is not None


def too_large(size: int) -> list[Problem]:
    return [Problem(CDA_HEADER, "document", f"is {size} bytes; a CDA is read for its header only up to "
                                            f"{MAX_BYTES} bytes")]


def check(de: DocumentEntry, data: bytes) -> list[Problem]:
    """Every problem of the CDA ``data`` against the metadata of ``de``."""
    try:
        root = xmlsafe.parse(data, "the CDA document", max_bytes=MAX_BYTES)
    except xmlsafe.UnsafeXml as exc:
        return [Problem(CDA_HEADER, "document", f"is not a readable CDA R2 document: {exc}")]
    if root.tag != ROOT_TAG:
        return [Problem(CDA_HEADER, "document", f"has root element {_name(root)}, not a CDA R2 ClinicalDocument "
                                                f"({{{NS_CDA}}})")]
    return _header(root) + _unique_id(de, root) + _patient(de, root) + _type_code(de, root) \
        + _confidentiality(de, root)


def report(errors: ErrorList, de: DocumentEntry, problems: list[Problem], lenient: bool = False) -> None:
    """Add the problems of ``de``'s document to ``errors``; warnings instead of errors when lenient."""
    for p in problems:
        message = f"{Context.label(de)} {p.attribute}: {p.message}"
        if lenient:
            errors.warn(message, de.id, p.code)
        else:
            errors.add(message, de.id, p.code)


# --- the checks -------------------------------------------------------------------------------------

def _v3(root: etree._Element, path: str) -> list[etree._Element]:
    return root.findall(path, {"v3": NS_CDA})


def _name(el: etree._Element) -> str:
    q = etree.QName(el)
    return f"{{{q.namespace}}}{q.localname}" if q.namespace else q.localname


def _header(root: etree._Element) -> list[Problem]:
    problems = []
    realms = [r.get("code") for r in _v3(root, "v3:realmCode")]
    if REALM not in realms:
        problems.append(Problem(CDA_HEADER, "CDA realmCode", f"is {', '.join(repr(r) for r in realms) or 'absent'}; "
                                                              f"the CI-SIS header has realmCode {REALM}"))
    templates = {(t.get("root") or "").strip() for t in _v3(root, "v3:templateId")}
    missing = [t for t in HEADER_TEMPLATES if t not in templates]
    if missing:
        problems.append(Problem(CDA_HEADER, "CDA templateId", f"lacks {', '.join(missing)}; the CI-SIS header has "
                                                               f"templateIds {', '.join(HEADER_TEMPLATES)}"))
    return problems


def _instance_id(el: etree._Element) -> str:
    """An II as an XDS uniqueId: root, or root^extension."""
    root, extension = (el.get("root") or "").strip(), (el.get("extension") or "").strip()
    return f"{root}^{extension}" if extension else root


def _unique_id(de: DocumentEntry, root: etree._Element) -> list[Problem]:
    ids = _v3(root, "v3:id")
    cda_id = _instance_id(ids[0]) if ids else ""
    if not cda_id:
        return [Problem(CDA_UNIQUE_ID, "uniqueId", "the CDA has no ClinicalDocument/id to compare it with")]
    if (de.unique_id or "") != cda_id:
        return [Problem(CDA_UNIQUE_ID, "uniqueId", f"'{de.unique_id}' differs from the CDA's ClinicalDocument/id "
                                                   f"'{cda_id}' (root[^extension])")]
    return []


def _patient(de: DocumentEntry, root: etree._Element) -> list[Problem]:
    if not de.patient_id:
        return []
    cx = hl7.parse_cx(de.patient_id)
    found = [((i.get("extension") or "").strip(), (i.get("root") or "").strip())
             for i in _v3(root, "v3:recordTarget/v3:patientRole/v3:id")]
    if (cx.id, cx.aa_universal_id) in found:
        return []
    listed = ", ".join(f"{ext} ({oid})" for ext, oid in found) or "none"
    return [Problem(CDA_PATIENT, "patientId", f"'{cx.id}' of {cx.aa_universal_id} is not an id of the CDA's "
                                              f"recordTarget/patientRole (extension, root: {listed})")]


def _type_code(de: DocumentEntry, root: etree._Element) -> list[Problem]:
    code = de.code(C.DE_TYPE_CODE)
    if code is None:
        return []
    found = _v3(root, "v3:code")
    cda = ((found[0].get("code") or "").strip(), (found[0].get("codeSystem") or "").strip()) if found else None
    if cda == (code.code, code.scheme):
        return []
    shown = f"'{cda[0]}' from '{cda[1]}'" if cda else "absent"
    return [Problem(CDA_TYPE_CODE, "typeCode", f"'{code.code}' from '{code.scheme}' differs from the CDA's "
                                               f"ClinicalDocument/code, {shown}")]


def _confidentiality(de: DocumentEntry, root: etree._Element) -> list[Problem]:
    level = next((c for c in de.codes(C.DE_CONFIDENTIALITY_CODE) if c.scheme == HL7_CONFIDENTIALITY), None)
    if level is None:
        return []
    found = _v3(root, "v3:confidentialityCode")
    cda_code = (found[0].get("code") or "").strip() if found else ""
    cda_system = (found[0].get("codeSystem") or HL7_CONFIDENTIALITY).strip() if found else ""
    if found and cda_code == level.code and cda_system == HL7_CONFIDENTIALITY:
        return []
    shown = f"'{cda_code}' from '{cda_system}'" if found else "absent"
    return [Problem(CDA_CONFIDENTIALITY, "confidentialityCode", f"HL7 level '{level.code}' differs from the "
                                                                f"CDA's confidentialityCode, {shown}")]
