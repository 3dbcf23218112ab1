"""The MTOM writer: a message as an iterator of byte chunks, its parts streamed from bytes, files or streams."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator

from .content_type import SOAP12_TYPE, XOP_TYPE
from .errors import MtomError
from .xop import new_cid

# Outgoing parts are sent in chunks of this size.
CHUNK = 256 * 1024
_BCHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")



def _header_value(value: str) -> str:
    # A CR or LF in a header value would let content inject its own headers or boundaries.
    if "\r" in value or "\n" in value:
        raise ValueError(f"header value {value!r} contains a line break")
    return value


@dataclass
class _OutPart:
    cid: str
    content_type: str
    data: bytes | None = None
    path: str | None = None
    stream: object = None
    size: int | None = None


class MtomWriter:
    """Builds an MTOM response as an iterator of byte chunks, suitable as a WSGI body.

    Attachments are added first (their cids go into the envelope via xop_include),
    then the envelope is set; iterating streams everything without loading files.
    """

    def __init__(self, boundary: str | None = None):
        if boundary is None:
            boundary = "MIMEBoundary_" + uuid.uuid4().hex
        if not 1 <= len(boundary) <= 70 or any(ch not in _BCHARS for ch in boundary) or boundary.endswith(" "):
            raise ValueError(f"{boundary!r} is not a valid MIME boundary (RFC 2046 bchars, 1-70 characters)")
        self.boundary = boundary
        self.root_cid = new_cid()
        self.root: bytes | None = None
        self.soap_type = SOAP12_TYPE
        self.parts: list[_OutPart] = []

    def set_root(self, envelope: bytes, soap_type: str = SOAP12_TYPE) -> None:
        self.root = envelope
        self.soap_type = soap_type

    def _add(self, part: _OutPart) -> str:
        _header_value(part.cid)
        _header_value(part.content_type)
        if any(p.cid == part.cid for p in self.parts) or part.cid == self.root_cid:
            raise ValueError(f"Content-ID <{part.cid}> is already used in this message")
        self.parts.append(part)
        return part.cid

    def add_bytes(self, data: bytes, content_type: str = "application/octet-stream", cid: str | None = None) -> str:
        return self._add(_OutPart(cid or new_cid(), content_type, data=bytes(data), size=len(data)))

    def add_file(self, path: str, content_type: str = "application/octet-stream", cid: str | None = None) -> str:
        # The size is fixed now so that content_length() and the streamed bytes agree.
        return self._add(_OutPart(cid or new_cid(), content_type, path=path, size=os.path.getsize(path)))

    def add_stream(self, source, content_type: str = "application/octet-stream", cid: str | None = None,
                   size: int | None = None) -> str:
        """A file-like object (read(n)) or an iterable of bytes; size may be unknown."""
        return self._add(_OutPart(cid or new_cid(), content_type, stream=source, size=size))

    def content_type(self, action: str | None = None) -> str:
        value = (f'multipart/related; boundary="{self.boundary}"; type="{XOP_TYPE}"; '
                 f'start="<{self.root_cid}>"; start-info="{self.soap_type}"')
        if action:
            value += f'; action="{_header_value(action)}"'
        return value

    def _root_head(self) -> bytes:
        return (f"--{self.boundary}\r\n"
                f'Content-Type: {XOP_TYPE}; charset=UTF-8; type="{self.soap_type}"\r\n'
                f"Content-Transfer-Encoding: binary\r\n"
                f"Content-ID: <{self.root_cid}>\r\n\r\n").encode("latin-1")

    def _part_head(self, part: _OutPart) -> bytes:
        # "Binary", capitalised, on purpose (the root above keeps "binary": nothing strips it).
        # zeep 4.x (zeep/wsdl/attachments.py, Attachment.content) compares the header with the exact
        # string "binary" and then calls content.strip(b"\r\n"), so a document that begins or ends
        # with CR or LF bytes loses them (an ITI-43 PDF came back 583 of 584 bytes); requests_toolbelt,
        # which splits the body for it, already hands over the exact octets. RFC 2045 6.1 says the
        # values of this header are not case sensitive, so "Binary" means the same to every MIME
        # reader (ours lower-cases it; node-soap ignores it) and zeep takes the bytes as they are.
        # Dropping the header (7bit by default, RFC 2045 6.1) or sending 8bit would also pass zeep,
        # but both mislabel arbitrary octets, and .NET's XmlMtomReader (WCF) refuses either on an
        # XOP part: it requires the header, with the value binary (after lower-casing it).
        # Only the header changes: the part's bytes are written as they are, never re-encoded.
        return (f"\r\n--{self.boundary}\r\n"
                f"Content-Type: {part.content_type}\r\n"
                f"Content-Transfer-Encoding: Binary\r\n"
                f"Content-ID: <{part.cid}>\r\n\r\n").encode("latin-1")

    def _tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode("latin-1")

    def content_length(self) -> int | None:
        """Exact body length, or None if some part's size is unknown."""
        if self.root is None:
            raise ValueError("the root envelope has not been set")
        total = len(self._root_head()) + len(self.root) + len(self._tail())
        for p in self.parts:
            if p.size is None:
                return None
            total += len(self._part_head(p)) + p.size
        return total

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks()

    def chunks(self, file_region=None) -> Iterator:
        """The body as byte chunks. file_region(path, offset, length): the HTTP server's marker for
        bytes it sends straight from a file (FILE_REGION_KEY in xds/app.py); with it, each part added
        with add_file comes as one such marker instead of being read here, every other chunk still
        being bytes. Only the server that offered the callable may be handed its markers."""
        if self.root is None:
            raise ValueError("the root envelope has not been set")
        if file_region is None:
            yield self._root_head() + self.root
            for p in self.parts:
                yield self._part_head(p)
                yield from self._part_body(p)
            yield self._tail()
            return
        # The framing between two files is joined into one chunk: each chunk costs the server a write.
        pending = self._root_head() + self.root
        for p in self.parts:
            pending += self._part_head(p)
            if p.path is None:
                yield pending
                pending = b""
                yield from self._part_body(p)
            elif p.size:
                yield pending
                pending = b""
                yield file_region(p.path, 0, p.size)
        yield pending + self._tail()

    def _part_body(self, p: _OutPart) -> Iterable[bytes]:
        if p.data is not None:
            for i in range(0, len(p.data), CHUNK):
                yield p.data[i:i + CHUNK]
        elif p.path is not None:
            left = p.size
            with open(p.path, "rb") as f:
                while left:
                    block = f.read(min(CHUNK, left))
                    if not block:
                        raise MtomError(f"{p.path} shrank while being sent: {left} bytes of {p.size} missing")
                    left -= len(block)
                    yield block
        elif hasattr(p.stream, "read"):
            sent = 0
            while True:
                block = p.stream.read(CHUNK)
                if not block:
                    break
                sent += len(block)
                yield block
            if p.size is not None and sent != p.size:
                raise MtomError(f"attachment <{p.cid}> produced {sent} bytes, not the announced {p.size}")
        else:
            for block in p.stream:
                if block:
                    yield bytes(block)
