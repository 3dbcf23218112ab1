"""ebRIM 3.0 XML <-> model, and the response messages built from results.

Reading turns elements into the dataclasses of xds.model; writing turns them back. An object
read from XML is written back onto the element it came from (its ``origin``), changing only
what differs from what was read: ids and references, lid and status, slots whose values were
set, added or dropped, classifications moved in. Everything else of the element (attributes
and children the model does not describe, formatting) stays exactly as submitted. An object
built in code gets a new element. Nothing else in the project reads or changes ``origin``.
"""
from __future__ import annotations

import re
import uuid
from typing import Iterable

from lxml import etree

from . import constants as C
from .errors import XdsError, XdsException, REGISTRY_METADATA_ERROR
from .model import (
    Association, Classification, DocumentEntry, ExternalIdentifier, Folder, LocalizedString, RegistryObject, Slot,
    SubmissionSet, Submission, UnknownPackage,
)

RIM = C.NS_RIM


def rim(local: str) -> str:
    return C.q(RIM, local)


_SLOT, _VALUE_LIST, _VALUE = rim("Slot"), rim("ValueList"), rim("Value")
_NAME, _DESCRIPTION, _LOCALIZED = rim("Name"), rim("Description"), rim("LocalizedString")
_CLASSIFICATION, _EXTERNAL_ID = rim("Classification"), rim("ExternalIdentifier")
_EXTRINSIC_OBJECT, _PACKAGE, _ASSOCIATION = rim("ExtrinsicObject"), rim("RegistryPackage"), rim("Association")
_CONTENT_VERSION_INFO, _OBJECT_LIST = rim("ContentVersionInfo"), rim("RegistryObjectList")
_VALUES = f"{_VALUE_LIST}/{_VALUE}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


# --- what the writer remembers of a read element ------------------------------------------

class _SlotRecord:
    """A Slot as read (or last written): its element and the values it then had."""

    __slots__ = ("slot", "element", "name", "values", "copy")

    def __init__(self, slot: Slot, element: etree._Element):
        self.slot, self.element = slot, element
        self.name, self.values, self.copy = slot.name, slot.values, list(slot.values)

    def changed(self) -> bool:
        # A values list that was replaced (set_slot) is written even when equal: the slot was set.
        s = self.slot
        return s.values is not self.values or s.name != self.name or s.values != self.copy


class _Origin:
    """The element an object was read from and what was read of its children (model ``origin``)."""

    __slots__ = ("element", "slots", "names", "descriptions", "classifications", "external_ids")

    def __init__(self, element: etree._Element, slots: list[_SlotRecord], names, descriptions,
                 classifications=(), external_ids=()):
        self.element = element
        self.slots = slots
        self.names, self.descriptions = list(names), list(descriptions)
        self.classifications, self.external_ids = list(classifications), list(external_ids)


# --- reading ---------------------------------------------------------------------------------

def _strings(holder: etree._Element) -> list[LocalizedString]:
    return [LocalizedString(ls.get("value"), ls.get(_XML_LANG), ls.get("charset"))
            for ls in holder.iterchildren(_LOCALIZED)]


def _read_children(el: etree._Element, nested: bool):
    """Slots, Name, Description and (for top-level objects) Classifications and ExternalIdentifiers."""
    slots: list[Slot] = []
    records: list[_SlotRecord] = []
    names = descriptions = None
    classifications: list[Classification] = []
    external_ids: list[ExternalIdentifier] = []
    for child in el:
        tag = child.tag
        if tag == _SLOT:
            s = Slot(child.get("name") or "", [(v.text or "") for v in child.iterfind(_VALUES)])
            slots.append(s)
            records.append(_SlotRecord(s, child))
        elif tag == _NAME:
            if names is None:
                names = _strings(child)
        elif tag == _DESCRIPTION:
            if descriptions is None:
                descriptions = _strings(child)
        elif nested and tag == _CLASSIFICATION:
            classifications.append(read_classification(child))
        elif nested and tag == _EXTERNAL_ID:
            external_ids.append(read_external_id(child))
    return slots, records, names or [], descriptions or [], classifications, external_ids


def read_classification(el: etree._Element) -> Classification:
    slots, records, names, descriptions, _, _ = _read_children(el, nested=False)
    return Classification(
        id=el.get("id") or "", scheme=el.get("classificationScheme"), classified_object=el.get("classifiedObject"),
        node_representation=el.get("nodeRepresentation"), classification_node=el.get("classificationNode"),
        object_type=el.get("objectType"), slots=slots, names=names, descriptions=descriptions,
        origin=_Origin(el, records, names, descriptions))


def read_external_id(el: etree._Element) -> ExternalIdentifier:
    # An ExternalIdentifier's own slots are not modelled; they stay in its element.
    _, _, names, descriptions, _, _ = _read_children(el, nested=False)
    return ExternalIdentifier(
        id=el.get("id") or "", scheme=el.get("identificationScheme"), registry_object=el.get("registryObject"),
        value=el.get("value"), object_type=el.get("objectType"), names=names, descriptions=descriptions,
        origin=_Origin(el, [], names, descriptions))


_CLASSES = {_EXTRINSIC_OBJECT: DocumentEntry, _ASSOCIATION: Association}


def read_object(el: etree._Element) -> RegistryObject:
    """The model object of one ExtrinsicObject, RegistryPackage or Association element. A package
    is a SubmissionSet or Folder by its markers (nested by then, see nest_top_level)."""
    slots, records, names, descriptions, classifications, external_ids = _read_children(el, nested=True)
    cls = _CLASSES.get(el.tag)
    if cls is None:
        if el.tag != _PACKAGE:
            raise ValueError(f"{etree.QName(el).localname} is not a registry object the model knows")
        nodes = {c.classification_node for c in classifications}
        cls = (SubmissionSet if C.SS_CLASSIFICATION_NODE in nodes
               else Folder if C.FOLDER_CLASSIFICATION_NODE in nodes else UnknownPackage)
    obj = cls(
        id=el.get("id") or "", lid=el.get("lid"), status=el.get("status"), object_type=el.get("objectType"),
        home=el.get("home"), slots=slots, names=names, descriptions=descriptions, classifications=classifications,
        external_ids=external_ids, origin=_Origin(el, records, names, descriptions, classifications, external_ids))
    if cls is DocumentEntry:
        obj.mime_type = el.get("mimeType")
    elif cls is Association:
        obj.type, obj.source, obj.target = el.get("associationType"), el.get("sourceObject"), el.get("targetObject")
    return obj


def registry_object_list(request: etree._Element) -> etree._Element:
    rol = request.find(rim("RegistryObjectList"))
    if rol is None:
        raise XdsException(REGISTRY_METADATA_ERROR,
                           f"{etree.QName(request).localname} has no rim:RegistryObjectList", "RegistryObjectList")
    return rol


def parse_submission(request: etree._Element) -> Submission:
    """Read the objects of a SubmitObjectsRequest (the lcm element, or a ProvideAndRegister wrapper).

    Every submission is normalised here first (nest_top_level), so that the transactions, the
    validator and the store only ever see Classifications and ExternalIdentifiers in their object.
    """
    if request.tag == C.q(C.NS_XDSB, "ProvideAndRegisterDocumentSetRequest"):
        inner = request.find(C.q(C.NS_LCM, "SubmitObjectsRequest"))
        if inner is None:
            raise XdsException(REGISTRY_METADATA_ERROR, "ProvideAndRegisterDocumentSetRequest has no SubmitObjectsRequest")
        request = inner
    rol = registry_object_list(request)
    stray_classifications, stray_external_ids = nest_top_level(rol)
    sub = Submission(request=request, objects=[],
                     loose_classifications=[read_classification(c) for c in stray_classifications],
                     loose_external_ids=[read_external_id(e) for e in stray_external_ids])
    for el in rol:
        tag = el.tag
        if not isinstance(tag, str):
            continue
        if tag == _EXTRINSIC_OBJECT or tag == _PACKAGE or tag == _ASSOCIATION:
            sub.objects.append(read_object(el))
        elif tag == rim("ObjectRef"):
            sub.object_refs.append(el.get("id") or "")
        elif tag == _CLASSIFICATION or tag == _EXTERNAL_ID:
            continue
        else:
            sub.unknown_elements.append(el)
    return sub


def nest_top_level(rol: etree._Element) -> tuple[list[etree._Element], list[etree._Element]]:
    """Move each Classification and ExternalIdentifier standing at the top of the RegistryObjectList
    into the object of the submission it names (classifiedObject, registryObject).

    ebRIM 3.0 makes both RegistryObjects of their own, so a Document Source may send them either
    way; once moved they are indistinguishable from nested ones (validated, stored, returned and
    queried alike). Returns those that name no object of the submission, left where they were for
    the validator to report.
    """
    owners: dict[str, etree._Element] = {}
    for el in rol:
        if el.tag in (_EXTRINSIC_OBJECT, _PACKAGE, _ASSOCIATION) and el.get("id"):
            owners.setdefault(el.get("id"), el)
    stray: dict[str, list[etree._Element]] = {_CLASSIFICATION: [], _EXTERNAL_ID: []}
    for el in list(rol):
        how = _NESTING.get(el.tag)
        if how is None:
            continue
        attribute, place = how
        owner = owners.get(el.get(attribute) or "")
        if owner is None:
            stray[el.tag].append(el)
        else:
            place(owner, el)
    return stray[_CLASSIFICATION], stray[_EXTERNAL_ID]


# --- writing ---------------------------------------------------------------------------------

def to_element(obj: RegistryObject) -> etree._Element:
    """The element of ``obj``, up to date: the one it was read from with the object's changes
    applied, or a new one for an object built in code (which is then written to from now on)."""
    origin = obj.origin
    if origin is None:
        return _build_object(obj)
    el = origin.element
    _write_attributes(el, _object_attributes(obj))
    _write_common(el, obj, origin)
    _write_classifications(el, obj.classifications, origin)
    _write_external_ids(el, obj.external_ids, origin)
    return el


def to_xml(obj: RegistryObject) -> str:
    """``obj`` as ebRIM XML text, as it is stored."""
    return etree.tostring(to_element(obj), encoding="unicode")


def to_request(sub: Submission) -> etree._Element:
    """The SubmitObjectsRequest the submission was read from, with every object's changes applied
    (objects built in code are appended to its RegistryObjectList)."""
    rol = registry_object_list(sub.request)
    for obj in sub.objects:
        el = to_element(obj)
        if el.getparent() is None:
            rol.append(el)
    return sub.request


# Attributes are written in this order; lid and status come last, as the registry adds them.
def _object_attributes(obj: RegistryObject) -> list[tuple[str, str | None]]:
    attrs = [("id", obj.id or None), ("home", obj.home), ("objectType", obj.object_type)]
    if isinstance(obj, DocumentEntry):
        attrs.append(("mimeType", obj.mime_type))
    elif isinstance(obj, Association):
        attrs += [("associationType", obj.type), ("sourceObject", obj.source), ("targetObject", obj.target)]
    attrs += [("lid", obj.lid), ("status", obj.status)]
    return attrs


def _classification_attributes(c: Classification) -> list[tuple[str, str | None]]:
    return [("id", c.id or None), ("classificationScheme", c.scheme), ("classifiedObject", c.classified_object),
            ("classificationNode", c.classification_node), ("nodeRepresentation", c.node_representation),
            ("objectType", c.object_type)]


def _external_id_attributes(e: ExternalIdentifier) -> list[tuple[str, str | None]]:
    return [("id", e.id or None), ("identificationScheme", e.scheme), ("value", e.value),
            ("registryObject", e.registry_object), ("objectType", e.object_type)]


def _write_attributes(el: etree._Element, attrs: list[tuple[str, str | None]]) -> None:
    get = el.get
    for name, value in attrs:
        current = get(name)
        if current == value:
            continue
        if value is not None:
            el.set(name, value)
        elif name != "id" or current:  # the model reads a missing or empty id as ""
            del el.attrib[name]


def _write_common(el: etree._Element, obj, origin: _Origin, slots: bool = True) -> None:
    if slots:
        origin.slots = _write_slots(el, obj.slots, origin.slots)
    if obj.names != origin.names:
        _write_strings(el, _NAME, obj.names)
        origin.names = list(obj.names)
    if obj.descriptions != origin.descriptions:
        _write_strings(el, _DESCRIPTION, obj.descriptions)
        origin.descriptions = list(obj.descriptions)


def _fill_values(slot_el: etree._Element, values: list[str]) -> None:
    vl = etree.SubElement(slot_el, _VALUE_LIST)
    for v in values:
        etree.SubElement(vl, _VALUE).text = v


def _write_slots(el: etree._Element, slots: list[Slot], records: list[_SlotRecord]) -> list[_SlotRecord]:
    if len(slots) == len(records) and all(s is r.slot and not r.changed() for s, r in zip(slots, records)):
        return records
    known = {id(r.slot): r for r in records}
    wanted = {id(s) for s in slots}
    for r in records:
        if id(r.slot) not in wanted and r.element.getparent() is el:
            el.remove(r.element)
    out: list[_SlotRecord] = []
    prev = None
    for s in slots:
        r = known.get(id(s))
        if r is None:
            # A new slot goes after the one before it in the model: after the last slot when added.
            slot_el = etree.Element(_SLOT, name=s.name)
            el.insert(el.index(prev) + 1 if prev is not None else 0, slot_el)
            _fill_values(slot_el, s.values)
            r = _SlotRecord(s, slot_el)
        elif r.changed():
            slot_el = r.element
            if s.name != r.name:
                slot_el.set("name", s.name)
            if s.values is not r.values or s.values != r.copy:
                for vl in slot_el.findall(_VALUE_LIST):
                    slot_el.remove(vl)
                _fill_values(slot_el, s.values)
            r = _SlotRecord(s, slot_el)
        prev = r.element
        out.append(r)
    return out


def _write_strings(el: etree._Element, tag: str, strings: list[LocalizedString]) -> None:
    holder = el.find(tag)
    if not strings:
        if holder is not None:
            el.remove(holder)
        return
    if holder is None:
        holder = etree.Element(tag)
        # After the slots, and a Description after the Name.
        after = [i for i, c in enumerate(el) if c.tag == _SLOT or (tag == _DESCRIPTION and c.tag == _NAME)]
        el.insert(after[-1] + 1 if after else 0, holder)
    for ls in holder.findall(_LOCALIZED):
        holder.remove(ls)
    for s in strings:
        _localized(holder, s)


def _localized(holder: etree._Element, s: LocalizedString) -> None:
    ls = etree.SubElement(holder, _LOCALIZED)
    if s.lang is not None:
        ls.set(_XML_LANG, s.lang)
    if s.charset is not None:
        ls.set("charset", s.charset)
    if s.value is not None:
        ls.set("value", s.value)


def _write_classification(c: Classification) -> etree._Element:
    el = c.origin.element
    _write_attributes(el, _classification_attributes(c))
    _write_common(el, c, c.origin)
    return el


def _write_external_id(e: ExternalIdentifier) -> etree._Element:
    el = e.origin.element
    _write_attributes(el, _external_id_attributes(e))
    _write_common(el, e, e.origin, slots=False)
    return el


# ebRIM's order of a RegistryObject's children: Slot*, Name, Description, VersionInfo, Classification*,
# ExternalIdentifier*, then the subtype's own (ContentVersionInfo, a package's RegistryObjectList).
_AFTER_CLASSIFICATIONS = (_EXTERNAL_ID, _CONTENT_VERSION_INFO, _OBJECT_LIST)
_AFTER_EXTERNAL_IDS = (_CONTENT_VERSION_INFO, _OBJECT_LIST)


def _place(el: etree._Element, child: etree._Element, before: tuple[str, ...]) -> None:
    pos = next((i for i, c in enumerate(el) if c.tag in before and c is not child), None)
    if pos is None:
        el.append(child)  # lxml moves a read element out of wherever it was (the RegistryObjectList)
    else:
        el.insert(pos, child)


def _place_classification(el: etree._Element, child: etree._Element) -> None:
    _place(el, child, _AFTER_CLASSIFICATIONS)


def _place_external_id(el: etree._Element, child: etree._Element) -> None:
    _place(el, child, _AFTER_EXTERNAL_IDS)


# What names a top-level child's object, and where the child goes in it (nest_top_level).
_NESTING = {_CLASSIFICATION: ("classifiedObject", _place_classification),
            _EXTERNAL_ID: ("registryObject", _place_external_id)}


def _write_nested(el, items, read, write, build, place) -> None:
    same = len(items) == len(read) and all(a is b for a, b in zip(items, read))
    if not same:
        wanted = {id(i) for i in items}
        for i in read:
            if id(i) not in wanted and i.origin is not None and i.origin.element.getparent() is el:
                el.remove(i.origin.element)
    for i in items:
        if i.origin is None:
            place(el, build(i))
        else:
            child = write(i)
            if not same and child.getparent() is not el:
                place(el, child)


def _write_classifications(el: etree._Element, items: list[Classification], origin: _Origin) -> None:
    _write_nested(el, items, origin.classifications, _write_classification, _build_classification,
                  _place_classification)
    origin.classifications = list(items)


def _write_external_ids(el: etree._Element, items: list[ExternalIdentifier], origin: _Origin) -> None:
    _write_nested(el, items, origin.external_ids, _write_external_id, _build_external_id, _place_external_id)
    origin.external_ids = list(items)


# --- building elements for objects made in code -----------------------------------------------

def _build(tag: str, attrs: list[tuple[str, str | None]], nsmap=None) -> etree._Element:
    el = etree.Element(tag, nsmap=nsmap) if nsmap else etree.Element(tag)
    for name, value in attrs:
        if value is not None:
            el.set(name, value)
    return el


def _build_common(el: etree._Element, obj, slots: bool = True) -> list[_SlotRecord]:
    records = []
    for s in obj.slots if slots else ():
        slot_el = etree.SubElement(el, _SLOT, name=s.name)
        _fill_values(slot_el, s.values)
        records.append(_SlotRecord(s, slot_el))
    for tag, strings in ((_NAME, obj.names), (_DESCRIPTION, obj.descriptions)):
        if strings:
            holder = etree.SubElement(el, tag)
            for ls in strings:
                _localized(holder, ls)
    return records


def _build_classification(c: Classification) -> etree._Element:
    el = _build(_CLASSIFICATION, _classification_attributes(c), {"rim": RIM})
    c.origin = _Origin(el, _build_common(el, c), c.names, c.descriptions)
    return el


def _build_external_id(e: ExternalIdentifier) -> etree._Element:
    el = _build(_EXTERNAL_ID, _external_id_attributes(e), {"rim": RIM})
    e.origin = _Origin(el, _build_common(el, e, slots=False), e.names, e.descriptions)
    return el


def _build_object(obj: RegistryObject) -> etree._Element:
    el = _build(rim(obj.ebrim_class), _object_attributes(obj), {"rim": RIM})
    records = _build_common(el, obj)
    for c in obj.classifications:
        el.append(c.origin.element if c.origin is not None else _build_classification(c))
        if c.origin is not None:
            _write_classification(c)
    for e in obj.external_ids:
        el.append(e.origin.element if e.origin is not None else _build_external_id(e))
        if e.origin is not None:
            _write_external_id(e)
    obj.origin = _Origin(el, records, obj.names, obj.descriptions, obj.classifications, obj.external_ids)
    return el


# --- changes the registry makes before storing ------------------------------------------------

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
    repository needs it to match Documents to entries after the fact). Changes the model only;
    the elements follow when written (to_element, to_request).
    """
    mapping: dict[str, str] = {}

    def claim(ident: str) -> None:
        if ident and not ident.startswith("urn:uuid:") and ident not in mapping:
            mapping[ident] = new_uuid()

    for obj in sub.objects:
        claim(obj.id)
        for c in obj.classifications:
            claim(c.id)
        for e in obj.external_ids:
            claim(e.id)
    sub.sent_ids = {assigned: sent for sent, assigned in mapping.items()}
    if not mapping:
        return mapping
    m = mapping.get
    for obj in sub.objects:
        obj.id = m(obj.id, obj.id)
        obj.lid = m(obj.lid, obj.lid)
        if isinstance(obj, Association):
            obj.source, obj.target = m(obj.source, obj.source), m(obj.target, obj.target)
        for c in obj.classifications:
            c.id, c.classified_object = m(c.id, c.id), m(c.classified_object, c.classified_object)
        for e in obj.external_ids:
            e.id, e.registry_object = m(e.id, e.id), m(e.registry_object, e.registry_object)
    return mapping


_UUID_URN = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def named_as_sent(sub: Submission, errors: list[XdsError]) -> list[XdsError]:
    """The errors with every id the server assigned (assign_uuids) put back as the source sent it,
    so that a Document Source can tell which of its objects each message is about."""
    if not sub.sent_ids:
        return errors

    def sent(text: str) -> str:
        return _UUID_URN.sub(lambda m: sub.sent_ids.get(m.group(0), m.group(0)), text) if text else text

    return [XdsError(e.code, sent(e.message), sent(e.location), e.severity) for e in errors]


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
