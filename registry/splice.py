"""A stored object's XML made ready for an answer without parsing it.

A query answer used to parse each stored object, set its status, lid and versionName, and serialise it
again: with ~100 DocumentEntries per record that was half of the time an ITI-18 took (docs/scaling.md).
The registry wrote that text itself, with lxml, so its shape is known: attribute values never hold a
double quote (lxml writes &quot;), and a RegistryObject's children come in ebRIM's order (Slot, Name,
Description, VersionInfo, Classification, ExternalIdentifier, ContentVersionInfo), none of the first three
holding any of the others. `patched()` edits the root's start tag and the VersionInfo child in the text;
when the text has any shape it is not certain about (comments, CDATA, processing instructions, two
VersionInfo elements, an unusual prefix) it answers None and the caller renders the parsed element
(registry.store.render), which gives the same infoset: tests/test_splice.py checks the two agree.
"""
from __future__ import annotations

import re

from lxml import etree

from xds import constants as C
from . import bare_association
from .bare_association import escape as _escape
from .store import render

_TAG = re.compile(r"<([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)")
_ATTR = re.compile(r'\s+([^\s=/>"]+)="([^"]*)"')
_END_OF_TAG = re.compile(r"\s*(/?)>")
# Comments, CDATA, processing instructions, DOCTYPE: text whose '<' is not a tag.
_UNSURE = re.compile(r"<[!?]")
_VERSION_INFO = re.compile(r"<([\w.-]+:)?VersionInfo(?=[\s/>])")
# The first of the children a VersionInfo goes before, under any prefix.
_FOLLOWING = re.compile(r"<([\w.-]+:)?(?:Classification|ExternalIdentifier|ContentVersionInfo)(?=[\s/>])")
# A tag other than those ebRIM puts before a VersionInfo (Slot, Name, Description) and what they hold.
_NOT_BEFORE_VERSION = re.compile(
    r"<(?>(?:[\w.-]+:)?)(?!(?:Slot|ValueList|Value|Name|Description|LocalizedString)(?=[\s/>]))[\w.-]")


def answer_part(xml: str, status: str, lid: str | None = None, version: int | None = None,
                last_update_time: str | None = None, home: str | None = None) -> bytes:
    """A stored object as a query answers it, serialised: patched in its text where that is certain,
    else parsed and rendered. A Folder's lastUpdateTime is a Slot to replace: always rendered."""
    if last_update_time is None:
        fast = patched(xml, status, lid, version, home)
        if fast is not None:
            return fast
    el = render(xml, status, lid, version, last_update_time)
    if home:
        el.set("home", home)
    return etree.tostring(el)


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
    if _UNSURE.search(xml):
        return None
    xml = xml.rstrip()
    tag = _TAG.match(xml)
    if tag is None:
        return None
    prefix = tag.group(1) or ""
    declaration = "xmlns:" + prefix[:-1] if prefix else "xmlns"
    if xml.count(declaration + "=") != 1:
        return None   # the prefix declared again below the root might name another namespace
    attrs, pos = _attributes(xml, tag.end())
    end = _END_OF_TAG.match(xml, pos)
    if end is None or dict(attrs).get(declaration) != C.NS_RIM:
        return None   # lxml declares the root's own prefix on the root
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
    infos = list(_VERSION_INFO.finditer(rest))
    following = _FOLLOWING.search(rest)
    if len(infos) > 1 or any((m.group(1) or "") != prefix for m in infos) or \
            (following is not None and (following.group(1) or "") != prefix):
        return None   # two of them, or another prefix: not certain which is the object's own
    first = infos[0] if infos else following
    if first is not None and _NOT_BEFORE_VERSION.search(rest, 0, first.start()):
        return None   # something else comes first: the match may not be a child of the object
    if infos:
        info = infos[0]
        if following is not None and following.start() < info.start():
            return None   # after a Classification: a Classification's own
        attrs, pos = _attributes(rest, info.end())
        m = _END_OF_TAG.match(rest, pos)
        if m is None or not m.group(1):
            return None   # a VersionInfo with content is not something this server writes
        _put(attrs, "versionName", str(version))
        return rest[:info.start()] + f"<{prefix}VersionInfo" + _write(attrs) + "/>" + rest[m.end():]
    new = f'<{prefix}VersionInfo versionName="{version}"/>'
    if following is not None:
        # The first of them in the text is a child of the object: Slot, Name and Description hold none.
        return rest[:following.start()] + new + rest[following.start():]
    close = rest.rfind("</")
    if close < 0:
        return None
    return rest[:close] + new + rest[close:]
