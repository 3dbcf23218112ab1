"""Associations that say no more than their columns are stored as the columns alone.

Almost every Association a Document Source sends is its id, type, source, target, the standard objectType
and, on a SubmissionSet's HasMember, the SubmissionSetStatus slot: all of it already in the `association`
row. Keeping its XML as well cost 884 of the 5,791 bytes a DocumentEntry takes in the registry
(docs/scaling.md). Such an association is stored with `xml` NULL and answered from `text()`; one that
carries anything more (a name, another slot, a classification, whitespace-only text aside) keeps its XML.
Whitespace between elements is not content in ebRIM's element-only types, so it is not kept.
"""
from __future__ import annotations

import re

from lxml import etree

from xds import constants as C

RIM = C.NS_RIM
_SLOT, _VALUE_LIST, _VALUE = (f"{{{RIM}}}{n}" for n in ("Slot", "ValueList", "Value"))
_ATTRIBUTES = {"id", "associationType", "sourceObject", "targetObject", "objectType", "lid", "status"}


def is_bare(el: etree._Element, ss_status: str | None) -> bool:
    """Whether the stored element `el` (lid and status set as the registry stores them) is exactly what
    `text()` writes for its columns, `ss_status` being the SubmissionSetStatus column."""
    a = el.attrib
    if set(a.keys()) != _ATTRIBUTES or a["lid"] != a["id"] or a["objectType"] != C.OBJECT_TYPE_ASSOCIATION:
        return False
    if ss_status is None:
        return _blank(el.text) and len(el) == 0
    return (_only_child(el, _SLOT, {"name": "SubmissionSetStatus"})
            and _only_child(el[0], _VALUE_LIST, {})
            and _only_child(el[0][0], _VALUE, {})
            and len(el[0][0][0]) == 0 and el[0][0][0].text == ss_status)


def _only_child(parent: etree._Element, tag: str, attrib: dict) -> bool:
    # Comments and processing instructions are children too, whose tag is not a string.
    if len(parent) != 1 or not _blank(parent.text):
        return False
    child = parent[0]
    return child.tag == tag and dict(child.attrib) == attrib and _blank(child.tail)


def _blank(s: str | None) -> bool:
    return s is None or not s.strip()


def text(id: str, type: str, source: str, target: str, status: str, ss_status: str | None,
         home: str | None = None) -> str:
    """The Association as stored registries answer it: the attributes lxml wrote for it, in that order."""
    out = (f'<rim:Association xmlns:rim="{RIM}" id="{escape(id)}"'
           + (f' home="{escape(home)}"' if home else "")
           + f' associationType="{escape(type)}" sourceObject="{escape(source)}" targetObject="{escape(target)}"'
           f' objectType="{C.OBJECT_TYPE_ASSOCIATION}" lid="{escape(id)}" status="{escape(status)}"')
    if ss_status is None:
        return out + "/>"
    return (out + '><rim:Slot name="SubmissionSetStatus"><rim:ValueList><rim:Value>'
            + escape(ss_status)
            + "</rim:Value></rim:ValueList></rim:Slot></rim:Association>")


_SPECIAL = re.compile('[&<>"\t\n\r]')


def escape(value: str) -> str:
    """An attribute value as lxml writes it between double quotes, whitespace characters kept."""
    # Ids, URNs and codes almost never hold one: a search is a third of the seven replaces.
    if _SPECIAL.search(value) is None:
        return value
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;"))
