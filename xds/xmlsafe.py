"""Hardened XML parsing: no DTDs, no entities, no network, bounded size and depth."""
from __future__ import annotations

import threading

from lxml import etree

MAX_DEPTH = 64
MAX_BYTES = 64 * 1024 * 1024


class UnsafeXml(ValueError):
    """The document is not well-formed or breaks one of the safety limits."""


def _parser() -> etree.XMLParser:
    # A parser is not thread-safe across concurrent parses, so each call gets its own.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        collect_ids=False,
    )


def parse(data: bytes, what: str = "XML", max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> etree._Element:
    """Parse bytes into an element, refusing anything that a hostile sender could abuse."""
    if len(data) > max_bytes:
        raise UnsafeXml(f"{what} is {len(data)} bytes, above the limit of {max_bytes}")
    if not data.strip():
        raise UnsafeXml(f"{what} is empty")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise UnsafeXml(f"{what} is not well-formed XML: {exc}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise UnsafeXml(f"{what} carries a DOCTYPE declaration; DTDs are not accepted")
    _check_depth(root, what, max_depth)
    _check_entities(root, what)
    return root


_trusted = threading.local()


def parse_own(data: bytes) -> etree._Element:
    """Parse XML this server wrote itself (the registry's stored objects, serialised by lxml from metadata
    that passed every check above on its way in): the same parser settings, without the walks over the
    tree that only a hostile sender's document needs; they were half the cost of answering a query
    (docs/scaling.md). One parser per thread, since a parser serves one parse at a time."""
    parser = getattr(_trusted, "parser", None)
    if parser is None:
        parser = _trusted.parser = _parser()
    return etree.fromstring(data, parser)


def _check_depth(root: etree._Element, what: str, max_depth: int) -> None:
    depth = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        if event == "start":
            depth += 1
            if depth > max_depth:
                raise UnsafeXml(f"{what} nests elements deeper than {max_depth} levels")
        else:
            depth -= 1


def _check_entities(root: etree._Element, what: str) -> None:
    # With resolve_entities=False an undefined entity survives as an Entity node; refuse it.
    for node in root.iter(etree.Entity):
        raise UnsafeXml(f"{what} uses the entity reference &{node.name}; entities are not accepted")


def tostring(el: etree._Element) -> bytes:
    return etree.tostring(el, encoding="utf-8")
