"""Readable text of the messages a step exchanged, bounded so reports stay openable."""
from __future__ import annotations

from lxml import etree

LIMIT = 200_000


def _cut(text: str, limit: int = LIMIT) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… ({len(text) - limit} more characters cut)"


def pretty(data: bytes | str | etree._Element | None, limit: int = LIMIT) -> str:
    if data is None:
        return ""
    if isinstance(data, etree._Element):
        return _cut(etree.tostring(data, pretty_print=True, encoding="unicode"), limit)
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
    try:
        parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True, load_dtd=False,
                                 huge_tree=False)
        el = etree.fromstring(raw.strip(), parser)
        return _cut(etree.tostring(el, pretty_print=True, encoding="unicode"), limit)
    except (etree.XMLSyntaxError, ValueError):
        return _cut(raw.decode("utf-8", "replace"), limit)
