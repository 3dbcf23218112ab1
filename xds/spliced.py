"""Answers whose registry objects are already serialised.

An ITI-18 answer is mostly the registry's stored objects, kept as XML text; parsing them into the answer's
tree only to serialise the tree again cost most of a query's time (docs/scaling.md). Such an answer is a
payload whose rim:RegistryObjectList holds a marker comment, and the objects' bytes: the envelope is
serialised with the marker and the bytes go in its place. A layer that needs the whole answer as a tree (the
portal) gets the objects parsed into the list once (`materialise`); one that only reads them (the audit of a
query by ids) gets them parsed beside it (`parsed`, SoapResponse.registry_objects), and the answer still goes
out spliced.
"""
from __future__ import annotations

from typing import Sequence

from lxml import etree

from . import constants as C
from .xmlsafe import parse_own

_MARK_TEXT = "xds:registry-objects"
_MARK = f"<!--{_MARK_TEXT}-->".encode()
LIST = C.q(C.NS_RIM, "RegistryObjectList")


def mark(payload: etree._Element) -> None:
    """Put the marker in the payload's RegistryObjectList, where the parts will go."""
    holder = payload.find(LIST)
    if holder is None or len(holder):
        raise ValueError("the payload needs an empty rim:RegistryObjectList to splice objects into")
    holder.append(etree.Comment(_MARK_TEXT))


def join(serialised: bytes, parts: Sequence[bytes]) -> bytes:
    """The serialised envelope (or payload) with the parts in the marker's place."""
    at = serialised.find(_MARK)
    if at < 0:
        raise ValueError("the serialised answer lost its marker")
    return b"".join((serialised[:at], *parts, serialised[at + len(_MARK):]))


def parsed(parts: Sequence[bytes]) -> list[etree._Element]:
    """The parts as elements, each its own tree."""
    return [parse_own(part) for part in parts]


def materialise(payload: etree._Element, parts: Sequence[bytes]) -> etree._Element:
    """The payload with the parts parsed into its RegistryObjectList in place of the marker."""
    holder = payload.find(LIST)
    for child in list(holder):
        if isinstance(child, etree._Comment) and child.text == _MARK_TEXT:
            holder.remove(child)
    for el in parsed(parts):
        holder.append(el)
    return payload
