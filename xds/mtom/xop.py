"""XOP: the xop:Include elements of a root part and the MIME parts they name (RFC 2392 cid: URLs)."""
from __future__ import annotations

import uuid
from urllib.parse import quote, unquote

from lxml import etree

from .. import constants as C
from .content_type import strip_cid
from .errors import MtomError
from .message import Attachment

_XOP_INCLUDE = C.q(C.NS_XOP, "Include")


def href_to_cid(href: str) -> str:
    """The Content-ID an xop:Include href names (RFC 2392: 'cid:' + URL-encoded id)."""
    href = href.strip()
    if href[:4].lower() != "cid:":
        raise MtomError(f"xop:Include href={href} is not a cid: URL")
    return strip_cid(unquote(href[4:]))


def resolve_xop(root_element: etree._Element, message) -> dict[etree._Element, Attachment]:
    """Map the parent of each xop:Include to the attachment it names.

    message may be an MtomMessage or a plain dict of cid -> Attachment.
    """
    parts = getattr(message, "parts", message)
    found: dict[etree._Element, Attachment] = {}
    for inc in root_element.iter(_XOP_INCLUDE):
        href = inc.get("href")
        if href is None:
            raise MtomError("xop:Include has no href attribute")
        cid = href_to_cid(href)
        att = parts.get(cid)
        if att is None:
            raise MtomError(f"xop:Include href={href.strip()} points to no MIME part")
        parent = inc.getparent()
        if parent is None:
            raise MtomError(f"xop:Include href={href.strip()} has no parent element")
        found[parent] = att
    return found


def new_cid(domain: str = "xds.local") -> str:
    return f"{uuid.uuid4().hex}@{domain}"


def xop_include(parent: etree._Element, cid: str) -> etree._Element:
    """Append <xop:Include href="cid:..."/> to parent and return it."""
    inc = etree.SubElement(parent, _XOP_INCLUDE, nsmap={"xop": C.NS_XOP})
    inc.set("href", "cid:" + quote(cid, safe="@.-_~!$&'()*+,;=:"))
    return inc
