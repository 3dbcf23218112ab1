"""A stored object's XML made ready for an answer without parsing it.

A query answer used to parse each stored object, set its status, lid and versionName, and serialise it
again: with ~100 DocumentEntries per record that was half of the time an ITI-18 took (docs/scaling.md).
The registry wrote that text itself, with lxml, so its shape is known: attribute values never hold a
double quote (lxml writes &quot;), and a RegistryObject's children come in ebRIM's order (Slot, Name,
Description, VersionInfo, Classification, ExternalIdentifier, ContentVersionInfo), none of the first three
holding any of the others. `patched()` edits the root's start tag and the VersionInfo child in the text;
when the text has any shape it is not certain about (comments, CDATA, processing instructions, two
VersionInfo elements, a namespace declared below the root, ebRIM under a second prefix) it answers None
and the caller renders the parsed element (registry.store.render), which gives the same infoset:
tests/test_splice.py checks the two agree.

Since an object's lid and version never change, the registry stores what patched() makes of its text
(`prepare`, the `ready` column): an answer then only sets the status, and home, in the root's start tag
(`with_status`), without reading the rest of the text.
"""
from __future__ import annotations

import re

from lxml import etree

from xds import constants as C
from . import bare_association
from .bare_association import escape as _escape
from . import store as _store   # a module: the store imports this one to prepare what it writes

_TAG = re.compile(r"<([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)")
_ATTR = re.compile(r'\s+([^\s=/>"]+)="([^"]*)"')
_END_OF_TAG = re.compile(r"\s*(/?)>")


def prepare(xml: str, lid: str, version: int) -> tuple[str, bool]:
    """What the registry stores for an object whose text is `xml`: (text, ready). Ready text already holds
    the row's lid and versionName (an object's version and lid never change; its status does), so an answer
    only sets its status and home in the root's start tag (`answer_part`), without reading the rest. Text
    patched() is not certain of is stored as it is."""
    ready = patched(xml, C.STATUS_APPROVED, lid, version)
    return (xml, False) if ready is None else (ready.decode(), True)


def answer_part(xml: str, status: str, lid: str | None = None, version: int | None = None,
                last_update_time: str | None = None, home: str | None = None, ready: bool = False) -> bytes:
    """A stored object as a query answers it, serialised: ready text with its status (and home) set,
    other text patched where that is certain, else parsed and rendered. A Folder's lastUpdateTime is a Slot
    to replace: always rendered."""
    if last_update_time is None:
        fast = with_status(xml, status, home) if ready else patched(xml, status, lid, version, home)
        if fast is not None:
            return fast
    el = _store.render(xml, status, lid, version, last_update_time)
    if home:
        el.set("home", home)
    return etree.tostring(el)


def with_status(xml: str, status: str, home: str | None = None) -> bytes:
    """Ready text (prepare) with its status and home. Its first '>' ends the root's start tag (lxml writes
    '>' in attribute values as &gt;), where patched() put the status attribute; a value never holds '"'."""
    if status == C.STATUS_APPROVED and not home:
        return xml.encode()   # prepare() wrote it Approved: most of a record's answer is sent as stored
    end = xml.index(">")
    if xml[end - 1] == "/":
        end -= 1
    at = xml.rindex(' status="', 0, end) + 9
    value_end = xml.index('"', at)
    head = xml[:at] + _escape(status) + xml[value_end:end]
    if home:
        head += f' home="{_escape(home)}"'
    return (head + xml[end:]).encode()


def association_part(row, home: str | None = None) -> bytes:
    """An association row (RegistryStore.association_rows) as a query answers it, serialised."""
    if row.xml is None:
        return bare_association.text(row.id, row.type, row.source, row.target, row.status, row.ss_status,
                                     home).encode()
    return answer_part(row.xml, row.status, home=home)


def patched(xml: str, status: str, lid: str | None = None, version: int | None = None,
            home: str | None = None) -> bytes | None:
    """`xml` with the given status (and lid, versionName and home, when given) as UTF-8, or None when
    not certain of its shape."""
    if "<!" in xml or "<?" in xml:
        return None   # comments, CDATA, processing instructions, DOCTYPE: text whose '<' is not a tag
    xml = xml.rstrip()
    tag = _TAG.match(xml)
    if tag is None:
        return None
    prefix = tag.group(1) or ""
    declaration = "xmlns:" + prefix[:-1] if prefix else "xmlns"
    attrs, pos = _attributes(xml, tag.end())
    end = _END_OF_TAG.match(xml, pos)
    if end is None or xml.find("xmlns", end.end()) >= 0:
        return None   # a namespace declared below the root: a prefix there may name another namespace
    declared = {n: v for n, v in attrs if n == "xmlns" or n.startswith("xmlns:")}
    if declared.get(declaration) != C.NS_RIM or list(declared.values()).count(C.NS_RIM) != 1:
        return None   # every ebRIM element of the text is then spelt with this one prefix
    _put(attrs, "lid", lid)
    _put(attrs, "status", status)
    _put(attrs, "home", home)
    head = "<" + prefix + tag.group(2) + _write(attrs)
    rest = xml[end.end():]
    if end.group(1):   # a childless element: only associations are, and they carry no version
        return None if version is not None else (head + "/>").encode()
    if version is not None:
        rest = _with_version(rest, prefix, version)
        if rest is None:
            return None
    return (head + ">" + rest).encode()


def _attributes(text: str, pos: int) -> tuple[list[list[str]], int]:
    """The attributes from pos on, as written (values still escaped), and where they end."""
    out = []
    while (m := _ATTR.match(text, pos)) is not None:
        out.append([m.group(1), m.group(2)])
        pos = m.end()
    return out, pos


def _write(attrs: list[list[str]]) -> str:
    return "".join(f' {n}="{v}"' for n, v in attrs)


def _put(attrs: list[list[str]], name: str, value: str | None) -> None:
    if value is None:
        return
    for a in attrs:
        if a[0] == name:
            a[1] = _escape(value)
            return
    attrs.append([name, _escape(value)])


def _with_version(rest: str, prefix: str, version: int) -> str | None:
    infos = _tags(rest, prefix, "VersionInfo")
    following = min((i for name in ("Classification", "ExternalIdentifier", "ContentVersionInfo")
                     for i in _tags(rest, prefix, name)[:1]), default=-1)
    if len(infos) > 1:
        return None   # two of them: not certain which is the object's own
    first = infos[0] if infos else following
    if first >= 0 and _not_before_version(prefix).search(rest, 0, first):
        return None   # something else comes first: the match may not be a child of the object
    if infos:
        info = infos[0]
        if 0 <= following < info:
            return None   # after a Classification: a Classification's own
        attrs, pos = _attributes(rest, info + len(prefix) + len("<VersionInfo"))
        m = _END_OF_TAG.match(rest, pos)
        if m is None or not m.group(1):
            return None   # a VersionInfo with content is not something this server writes
        _put(attrs, "versionName", str(version))
        return rest[:info] + f"<{prefix}VersionInfo" + _write(attrs) + "/>" + rest[m.end():]
    new = f'<{prefix}VersionInfo versionName="{version}"/>'
    if following >= 0:
        # The first of them in the text is a child of the object: Slot, Name and Description hold none.
        return rest[:following] + new + rest[following:]
    close = rest.rfind("</")
    if close < 0:
        return None
    return rest[:close] + new + rest[close:]


def _tags(text: str, prefix: str, name: str) -> list[int]:
    """Where the start tags <prefix:name ...> are in text (every '<' of the text starts a tag, patched()
    made sure of it)."""
    needle = "<" + prefix + name
    out, i = [], text.find(needle)
    while i >= 0:
        after = text[i + len(needle):i + len(needle) + 1]
        if after in _AFTER_NAME:
            out.append(i)
        i = text.find(needle, i + 1)
    return out


_AFTER_NAME = (" ", "\t", "\n", "\r", "/", ">")
_NOT_BEFORE: dict[str, re.Pattern] = {}


def _not_before_version(prefix: str) -> re.Pattern:
    """A start tag other than those ebRIM puts before a VersionInfo (Slot, Name, Description and what they
    hold) under the object's prefix."""
    pattern = _NOT_BEFORE.get(prefix)
    if pattern is None:
        p = re.escape(prefix)
        pattern = _NOT_BEFORE[prefix] = re.compile(
            rf"<(?!/)(?!{p}(?:Slot|ValueList|Value|Name|Description|LocalizedString)[\s/>])")
    return pattern
