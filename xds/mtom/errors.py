"""The errors of the MTOM codec."""
from __future__ import annotations


class MtomError(ValueError):
    """The multipart body is unusable; the message says exactly why."""


class MtomLimitError(MtomError):
    """The body, the root XML or one part is larger than its limit (HTTP 413 rather than 400)."""
