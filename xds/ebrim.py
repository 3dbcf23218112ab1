"""ebRIM 3.0 XML <-> model, and the response messages built from results."""
from __future__ import annotations

import uuid
from typing import Iterable

from lxml import etree

from . import constants as C
from .errors import XdsError, XdsException, REGISTRY_METADATA_ERROR
from .model import (
    Association, Classification, DocumentEntry, Folder, RegistryObject, SubmissionSet, Submission,
    UnknownPackage, _classification,
)

RIM = C.NS_RIM
_REF_ATTRS = ("classifiedObject", "registryObject", "sourceObject", "targetObject")


def rim(local: str) -> str:
    return C.q(RIM, local)


def package_kind(pkg: etree._Element, loose: list[Classification]) -> type[RegistryObject]:
    pid = pkg.get("id")
    nodes = {c.get("classificationNode") for c in pkg.findall(rim("Classification"))}
    nodes |= {c.classification_node for c in loose if c.classified_object == pid}
    if C.SS_CLASSIFICATION_NODE in nodes:
        return SubmissionSet
    if C.FOLDER_CLASSIFICATION_NODE in nodes:
        return Folder
    return UnknownPackage


def registry_object_list(request: etree._Element) -> etree._Element:
    rol = request.find(rim("RegistryObjectList"))
    if rol is None:
        raise XdsException(REGISTRY_METADATA_ERROR,
                           f"{etree.QName(request).localname} has no rim:RegistryObjectList", "RegistryObjectList")
    return rol


def parse_submission(request: etree._Element) -> Submission:
    """Read the objects of a SubmitObjectsRequest (the lcm element, or a ProvideAndRegister wrapper)."""
    if request.tag == C.q(C.NS_XDSB, "ProvideAndRegisterDocumentSetRequest"):
        inner = request.find(C.q(C.NS_LCM, "SubmitObjectsRequest"))
        if inner is None:
            raise XdsException(REGISTRY_METADATA_ERROR, "ProvideAndRegisterDocumentSetRequest has no SubmitObjectsRequest")
        request = inner
    rol = registry_object_list(request)
    children = [c for c in rol if isinstance(c.tag, str)]
    loose = [_classification(c) for c in children if c.tag == rim("Classification")]
    sub = Submission(request=request, objects=[], loose_classifications=loose)
    for el in children:
        tag = el.tag
        if tag == rim("ExtrinsicObject"):
            sub.objects.append(DocumentEntry(el))
        elif tag == rim("RegistryPackage"):
            sub.objects.append(package_kind(el, loose)(el))
        elif tag == rim("Association"):
            sub.objects.append(Association(el))
        elif tag == rim("ObjectRef"):
            sub.object_refs.append(el.get("id") or "")
        elif tag == rim("Classification"):
            continue
        else:
            sub.unknown_elements.append(el)
    return sub


def is_uuid_urn(value: str | None) -> bool:
    if not value or not value.startswith("urn:uuid:"):
        return False
    try:
        return str(uuid.UUID(value[9:])) == value[9:]
    except ValueError:
        return False


def new_uuid() -> str:
    return "urn:uuid:" + str(uuid.uuid4())


def assign_uuids(sub: Submission) -> dict[str, str]:
    """Replace symbolic ids (anything not urn:uuid:) with fresh UUIDs and rewrite references.

    Returns the symbolic -> assigned mapping (the registry reports nothing of it, but the
    repository needs it to match Documents to entries after the fact).
    """
    rol = registry_object_list(sub.request)
    mapping: dict[str, str] = {}
    for el in rol.iter(rim("ExtrinsicObject"), rim("RegistryPackage"), rim("Association"),
                       rim("Classification"), rim("ExternalIdentifier")):
        ident = el.get("id")
        if ident and not ident.startswith("urn:uuid:") and ident not in mapping:
            mapping[ident] = new_uuid()
    if not mapping:
        return mapping
    for el in rol.iter(etree.Element):
        for attr in ("id", "lid") + _REF_ATTRS:
            v = el.get(attr)
            if v in mapping:
                el.set(attr, mapping[v])
    # The nested objects' dataclasses copied the old ids; bring them up to date.
    for obj in sub.objects:
        for c in obj.classifications:
            c.id, c.classified_object = c.element.get("id") or "", c.element.get("classifiedObject")
        for e in obj.external_ids:
            e.id, e.registry_object = e.element.get("id") or "", e.element.get("registryObject")
    for c in sub.loose_classifications:
        c.id, c.classified_object = c.element.get("id") or "", c.element.get("classifiedObject")
    return mapping


def nest_loose_classifications(sub: Submission) -> None:
    """Move top-level Classifications (the SubmissionSet and Folder markers) into the package they
    classify, so that the stored object carries them and a query answer says what each package is."""
    by_id = {o.id: o for o in sub.objects if isinstance(o, (SubmissionSet, Folder))}
    kept = []
    for c in sub.loose_classifications:
        owner = by_id.get(c.classified_object or "")
        if owner is None:
            kept.append(c)
            continue
        el = owner.element
        pos = next((i for i, child in enumerate(el) if child.tag == rim("ExternalIdentifier")), len(el))
        el.insert(pos, c.element)  # lxml moves the element out of the RegistryObjectList
        owner.classifications.append(c)
    sub.loose_classifications = kept


# --- responses ------------------------------------------------------------------------

def _error_list(parent: etree._Element, errors: Iterable[XdsError]) -> None:
    errors = list(errors)
    if not errors:
        return
    lst = etree.SubElement(parent, C.q(C.NS_RS, "RegistryErrorList"))
    worst = C.SEVERITY_ERROR if any(e.is_error for e in errors) else C.SEVERITY_WARNING
    lst.set("highestSeverity", worst)
    for e in errors:
        r = etree.SubElement(lst, C.q(C.NS_RS, "RegistryError"))
        r.set("errorCode", e.code)
        r.set("codeContext", e.message)
        r.set("location", e.location or "")
        r.set("severity", e.severity)


def status_for(errors: Iterable[XdsError], partial: bool = False) -> str:
    if any(e.is_error for e in errors):
        return C.RESPONSE_PARTIAL_SUCCESS if partial else C.RESPONSE_FAILURE
    return C.RESPONSE_SUCCESS


def registry_response(errors: Iterable[XdsError] = (), status: str | None = None) -> etree._Element:
    errors = list(errors)
    el = etree.Element(C.q(C.NS_RS, "RegistryResponse"), nsmap={"rs": C.NS_RS})
    el.set("status", status or status_for(errors))
    _error_list(el, errors)
    return el


def adhoc_query_response(objects: Iterable[etree._Element] = (), errors: Iterable[XdsError] = (),
                         status: str | None = None) -> etree._Element:
    errors = list(errors)
    el = etree.Element(C.q(C.NS_QUERY, "AdhocQueryResponse"),
                       nsmap={"query": C.NS_QUERY, "rs": C.NS_RS, "rim": C.NS_RIM})
    el.set("status", status or status_for(errors))
    _error_list(el, errors)
    rol = etree.SubElement(el, rim("RegistryObjectList"))
    for o in objects:
        rol.append(o)
    return el


def object_ref(ident: str, home: str | None = None) -> etree._Element:
    el = etree.Element(rim("ObjectRef"), nsmap={"rim": RIM})
    el.set("id", ident)
    if home:
        el.set("home", home)
    return el


def read_response_errors(resp: etree._Element) -> tuple[str, list[XdsError]]:
    """Status and errors of a RegistryResponse (or anything carrying an rs:RegistryErrorList)."""
    errors = []
    for r in resp.iter(C.q(C.NS_RS, "RegistryError")):
        errors.append(XdsError(r.get("errorCode") or "", r.get("codeContext") or "", r.get("location") or "",
                               r.get("severity") or C.SEVERITY_ERROR))
    return resp.get("status") or "", errors
