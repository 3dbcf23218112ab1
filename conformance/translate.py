"""ebRIM 2.1 metadata (most test kit files) → ebRIM 3.0, which XDS.b transactions carry.

The rules follow what the toolkit does before sending: v3 namespaces and element
names, ObjectRefs dropped, children reordered the way the 3.0 schema wants them,
missing ids made up, short association types and statuses expanded to URNs.
"""
from __future__ import annotations

import itertools

from lxml import etree

from xds import constants as C

NS_RIM21 = "urn:oasis:names:tc:ebxml-regrep:rim:xsd:2.1"
NS_RS21 = "urn:oasis:names:tc:ebxml-regrep:registry:xsd:2.1"
V2_NAMESPACES = (NS_RIM21, NS_RS21)
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

_IHE_ASSOCIATION_TYPES = ("RPLC", "XFRM", "APND", "XFRM_RPLC", "signs")
_FORCED_OBJECT_TYPES = {
    "RegistryPackage": C.OBJECT_TYPE_REGISTRY_PACKAGE,
    "Association": C.OBJECT_TYPE_ASSOCIATION,
    "Classification": C.OBJECT_TYPE_CLASSIFICATION,
    "ExternalIdentifier": C.OBJECT_TYPE_EXTERNAL_IDENTIFIER,
}
_OBJECTS = ("ExtrinsicObject", "RegistryPackage", "Association", "Classification", "ExternalIdentifier")
# The 3.0 schema's order for a RegistryObject's own children; anything else follows.
_CHILD_ORDER = ("Slot", "Name", "Description", "VersionInfo", "Classification", "ExternalIdentifier")
_NSMAP = {"lcm": C.NS_LCM, "rim": C.NS_RIM}


def is_v2(root: etree._Element) -> bool:
    return any(isinstance(el.tag, str) and etree.QName(el).namespace in V2_NAMESPACES for el in root.iter())


def association_type(value: str) -> str:
    if ":" in value:
        return value
    if value == "HasMember":
        return C.ASSOC_HAS_MEMBER
    if value in _IHE_ASSOCIATION_TYPES:
        return "urn:ihe:iti:2007:AssociationType:" + value
    return value


def status(value: str) -> str:
    return value if ":" in value else C.STATUS_PREFIX + value


class _Translator:
    def __init__(self):
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        return f"id_{next(self._ids)}"

    def document(self, root: etree._Element) -> etree._Element:
        local = etree.QName(root).localname
        if local == "SubmitObjectsRequest":
            out = etree.Element(C.q(C.NS_LCM, "SubmitObjectsRequest"), nsmap=_NSMAP)
            for name, value in root.attrib.items():
                out.set(name, value)
            for child in root:
                if isinstance(child.tag, str) and etree.QName(child).localname in ("LeafRegistryObjectList",
                                                                                    "RegistryObjectList"):
                    out.append(self.object_list(child))
                elif isinstance(child.tag, str):
                    out.append(self.generic(child))
            return out
        if local in ("LeafRegistryObjectList", "RegistryObjectList"):
            return self.object_list(root)
        return self.generic(root)

    def object_list(self, el: etree._Element) -> etree._Element:
        out = etree.Element(C.q(C.NS_RIM, "RegistryObjectList"), nsmap={"rim": C.NS_RIM})
        for child in el:
            if not isinstance(child.tag, str):
                continue
            local = etree.QName(child).localname
            if local == "ObjectRef":
                continue
            out.append(self.registry_object(child, None) if local in _OBJECTS else self.generic(child))
        return out

    def registry_object(self, el: etree._Element, parent_id: str | None) -> etree._Element:
        local = etree.QName(el).localname
        out = etree.Element(C.q(C.NS_RIM, local))
        for name, value in el.attrib.items():
            if name in ("majorVersion", "minorVersion"):
                continue
            if name == "status":
                value = status(value)
            elif name == "associationType":
                value = association_type(value)
            out.set(name, value)
        if local in _FORCED_OBJECT_TYPES:
            out.set("objectType", _FORCED_OBJECT_TYPES[local])
        if local in ("Association", "Classification", "ExternalIdentifier") and not out.get("id"):
            out.set("id", self.new_id())
        if local == "Classification" and not out.get("classifiedObject") and parent_id:
            out.set("classifiedObject", parent_id)
        if local == "ExternalIdentifier" and not out.get("registryObject") and parent_id:
            out.set("registryObject", parent_id)
        children = []
        for child in el:
            if not isinstance(child.tag, str):
                continue
            child_local = etree.QName(child).localname
            if child_local in ("Classification", "ExternalIdentifier"):
                children.append(self.registry_object(child, out.get("id")))
            else:
                children.append(self.generic(child))
        rank = {name: i for i, name in enumerate(_CHILD_ORDER)}
        children.sort(key=lambda c: rank.get(etree.QName(c).localname, len(_CHILD_ORDER)))
        out.extend(children)
        return out

    def generic(self, el: etree._Element) -> etree._Element:
        qn = etree.QName(el)
        if qn.namespace == NS_RIM21:
            tag = C.q(C.NS_RIM, qn.localname)
        elif qn.namespace == NS_RS21:
            tag = C.q(C.NS_RS, qn.localname)
        else:
            tag = el.tag
        out = etree.Element(tag)
        for name, value in el.attrib.items():
            out.set(XML_LANG if name == "lang" else name, value)
        out.text = el.text
        for child in el:
            if isinstance(child.tag, str):
                converted = self.generic(child)
                converted.tail = child.tail
                out.append(converted)
        return out


def to_v3(root: etree._Element) -> etree._Element:
    """A new ebRIM 3.0 tree for a v2.1 SubmitObjectsRequest (or object list); v3 input comes back as is."""
    if not is_v2(root):
        return root
    return _Translator().document(root)
