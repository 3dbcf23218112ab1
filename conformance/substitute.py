"""Token replacement in XML trees, and the identifiers the engine makes up.

Replacement works on the parsed tree rather than on raw text so that a value such as
a patient id (which carries '&') never breaks the XML it lands in.
"""
from __future__ import annotations

import itertools
import random
import re
import uuid
from datetime import datetime, timedelta

from lxml import etree

from xds import constants as C

# The engine leaves these alone: they name the tokens being defined, or carry document bytes.
PROTECTED = frozenset({"Report", "UseReport", "UseId", "UseRepositoryUniqueId"})
_XDSB_DOCUMENT = C.q(C.NS_XDSB, "Document")


def replace_text(text: str, mapping: dict[str, str]) -> str:
    # Longest tokens first, so a token that is a prefix of another cannot eat it.
    for key in sorted(mapping, key=len, reverse=True):
        if key and key in text:
            text = text.replace(key, mapping[key])
    return text


def replace_in_tree(root: etree._Element, mapping: dict[str, str], protected=PROTECTED) -> None:
    if not mapping:
        return
    _walk(root, mapping, protected)


def _walk(el: etree._Element, mapping: dict[str, str], protected) -> None:
    if not isinstance(el.tag, str):
        return
    if etree.QName(el).localname in protected or el.tag == _XDSB_DOCUMENT:
        return
    for name, value in el.attrib.items():
        new = replace_text(value, mapping)
        if new != value:
            el.set(name, new)
    if el.text:
        el.text = replace_text(el.text, mapping)
    for child in el:
        _walk(child, mapping, protected)
        if child.tail:
            child.tail = replace_text(child.tail, mapping)


_TOKEN = re.compile(r"\$[A-Za-z_][A-Za-z0-9_.\-]*\$")


def unresolved_tokens(root: etree._Element) -> list[str]:
    """`$name$` tokens still present in attributes or text (for diagnostics and CleanParams)."""
    found: list[str] = []
    for el in root.iter(etree.Element):
        if etree.QName(el).localname in PROTECTED:
            continue
        for value in list(el.attrib.values()) + [el.text or ""]:
            found.extend(_TOKEN.findall(value))
    return sorted(set(found))


def standard_tokens(home_community_id: str | None = None, now: datetime | None = None) -> dict[str, str]:
    now = now or datetime.now()
    tokens = {"$now$": now.strftime("%Y%m%d%H%M%S"),
              "$lastyear$": (now - timedelta(days=365)).strftime("%Y%m%d%H%M%S")}
    if home_community_id:
        tokens["$homeCommunityId$"] = home_community_id
    return tokens


class IdMaker:
    """Fresh patient ids, unique ids and UUIDs, in the shapes the toolkit uses.

    A random run number sits inside every uniqueId and patient id so that two runs
    against the same server, started within the same second, never collide.
    """

    def __init__(self, assigning_authority: str, seed: int | None = None):
        self.assigning_authority = assigning_authority
        rnd = random.Random(seed)
        self.run = rnd.randint(1, 99999)
        self._counter = itertools.count(1)

    def pid(self) -> str:
        stamp = datetime.now().strftime("%m%d%H%M%S")
        return f"P{stamp}.{self.run}.{next(self._counter)}^^^&{self.assigning_authority}&ISO"

    def uid(self) -> str:
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        return f"1.2.42.{stamp}.{self.run}.{next(self._counter)}"

    @staticmethod
    def uuid() -> str:
        return "urn:uuid:" + str(uuid.uuid4())
