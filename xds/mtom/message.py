"""A parsed MTOM message: its root XML in memory and its other parts spooled to disk."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO


@dataclass
class Attachment:
    cid: str
    content_type: str
    path: str
    size: int
    sha1: str

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    def read_bytes(self) -> bytes:
        with self.open() as f:
            return f.read()


class MtomMessage:
    """The parsed request: the root XML in memory, every other part on disk."""

    def __init__(self, root: bytes, root_content_type: str, parts: dict[str, Attachment],
                 root_cid: str | None = None, content_type: str = ""):
        self.root = root
        self.root_content_type = root_content_type
        self.root_cid = root_cid
        self.parts = parts
        self.content_type = content_type

    def take(self, cid: str) -> Attachment:
        """Hand the spooled file of part cid over to the caller: the message no longer lists it, and
        cleanup() leaves it alone. KeyError when no part (or no longer any part) has that Content-ID."""
        return self.parts.pop(cid)

    def cleanup(self) -> None:
        """Remove the spooled files the message still owns (every part not taken)."""
        for att in self.parts.values():
            try:
                os.unlink(att.path)
            except FileNotFoundError:
                # The caller may already have moved the spooled file into permanent storage.
                pass

    def __enter__(self) -> "MtomMessage":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<MtomMessage root={len(self.root)} bytes parts={list(self.parts)}>"
