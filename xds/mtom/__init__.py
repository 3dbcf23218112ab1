"""MTOM/XOP (multipart/related; type="application/xop+xml") reading and writing.

Documents in ITI-41/43 can be hundreds of megabytes, so neither direction ever
holds a whole document in memory: incoming parts other than the SOAP envelope
are spooled to disk while their SHA-1 and size are computed, and outgoing parts
are streamed from files in fixed-size chunks.

content_type  Content-Type parsing, is_mtom
reader        the streaming reader (read_multipart) and its sinks and blocks
message       what it returns: MtomMessage and its Attachments on disk
xop           xop:Include <-> MIME parts (href_to_cid, resolve_xop, new_cid, xop_include)
writer        MtomWriter
errors        MtomError, and MtomLimitError for a size limit exceeded
"""
from __future__ import annotations

from .content_type import SOAP12_TYPE, XOP_TYPE, is_mtom, parse_content_type
from .errors import MtomError, MtomLimitError
from .message import Attachment, MtomMessage
from .reader import (CHUNK, DEFAULT_MAX_PARTS, DEFAULT_MAX_XML_BYTES, MAX_HEADER_BYTES, MAX_PADDING,
                     read_multipart)
from .writer import MtomWriter
from .xop import href_to_cid, new_cid, resolve_xop, xop_include

__all__ = [
    "Attachment", "CHUNK", "DEFAULT_MAX_PARTS", "DEFAULT_MAX_XML_BYTES", "MAX_HEADER_BYTES", "MAX_PADDING",
    "MtomError", "MtomLimitError", "MtomMessage", "MtomWriter", "SOAP12_TYPE", "XOP_TYPE", "href_to_cid",
    "is_mtom", "new_cid", "parse_content_type", "read_multipart", "resolve_xop", "xop_include",
]
