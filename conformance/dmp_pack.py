"""The DMP example-message pack on disk: which file is which exchange, the C# kit's templates, and the
raw MIME dump of TD2.1.

The pack's own file names went through a cp437 round trip (``requˆte``, ``r‚ponse``); the copy under
shared/ has them renamed (``requete``, ``reponse``, spaces as ``_``). Both spellings are recognised, so
the replay can be pointed at either copy: at the pack folder itself, or at any folder above it (the
testkit root). The C# templates live beside the pack in the official layout
(``DMP-LPS-Code-Exemple_C#dotNET-…/TLSiKitEditeur/Resources/``); when the folder given holds the pack
but not the templates, they are looked for under the pack folder's parent.
"""
from __future__ import annotations

import io
import os
import tempfile
import unicodedata
from dataclasses import dataclass, field

from xds import mtom

# The exchanges the replay uses, by the TD number that starts each file name.
EXCHANGES = ("TD2.1", "TD3.1", "TD3.2", "TD3.3c", "TD3.3d")
TEMPLATES = ("template_masquage.xml",)


class PackError(Exception):
    """The folder does not hold a usable pack."""


def folded(name: str) -> str:
    """A file name with its mojibake and accents folded to lower-case ASCII: cp437's é and ê read as
    cp1252 are ‚ (U+201A) and ˆ (U+02C6); NFKD then ASCII drops the accents of a correct name."""
    name = name.replace("\u201a", "e").replace("\u02c6", "e")
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()


def td_of(name: str) -> str | None:
    """The exchange a file name starts with. "TD2.1-DocumentME2.xml" is a loose copy of an attachment,
    not an exchange: the TD number must be followed by a space or an underscore."""
    name = folded(name)
    for td in sorted(EXCHANGES, key=len, reverse=True):
        if name.startswith(td.lower()) and name[len(td):len(td) + 1] in (" ", "_"):
            return td
    return None


def side_of(name: str) -> str | None:
    stem = folded(os.path.splitext(name)[0])
    if stem.endswith("reponse"):
        return "response"
    if stem.endswith("requete"):
        return "request"
    return None


@dataclass
class Pack:
    root: str                                   # the folder the pack was looked for in
    requests: dict[str, str] = field(default_factory=dict)
    responses: dict[str, str] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)

    @classmethod
    def find(cls, path: str) -> "Pack":
        if not os.path.isdir(path):
            raise PackError(f"{path} is not a folder")
        pack = cls(os.path.abspath(path))
        pack._scan(pack.root)
        if pack.requests and any(t not in pack.templates for t in TEMPLATES):
            # The folder given is the pack itself: the templates are beside it.
            pack._scan(os.path.dirname(pack.folder), templates_only=True)
        missing = [f"{td} {side}" for td in EXCHANGES
                   for side, found in (("request", pack.requests), ("response", pack.responses)) if td not in found]
        missing += [t for t in TEMPLATES if t not in pack.templates]
        if missing:
            raise PackError(f"{path}: no DMP example-message pack here, or an incomplete one (missing: "
                            f"{', '.join(missing)})")
        folders = {os.path.dirname(p) for p in list(pack.requests.values()) + list(pack.responses.values())}
        if len(folders) > 1:
            raise PackError(f"{path}: the exchanges are spread over several folders ({', '.join(sorted(folders))}); "
                            "point at one pack")
        return pack

    def _scan(self, top: str, templates_only: bool = False) -> None:
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(folder, name)
                if name in TEMPLATES:
                    self.templates.setdefault(name, full)
                    continue
                if templates_only:
                    continue
                td, side = td_of(name), side_of(name)
                if td and side:
                    found = self.requests if side == "request" else self.responses
                    if td in found and os.path.dirname(found[td]) != folder:
                        raise PackError(f"{top}: two copies of the {td} {side}: {found[td]} and {full}; "
                                        "point at one pack")
                    found.setdefault(td, full)

    @property
    def folder(self) -> str:
        """The folder that holds the exchanges."""
        return os.path.dirname(next(iter(self.requests.values())))

    def request(self, td: str) -> bytes:
        return _read(self.requests[td])

    def response(self, td: str) -> bytes:
        return _read(self.responses[td])

    def template(self, name: str) -> bytes:
        return _read(self.templates[name])

    def name(self, td: str, side: str = "request") -> str:
        return os.path.basename((self.requests if side == "request" else self.responses)[td])


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@dataclass
class Part:
    cid: str
    content_type: str
    data: bytes


@dataclass
class Dump:
    """A multipart body as a capture tool saved it: no HTTP headers, framing in CRLF or bare LF."""
    root_content_type: str
    root: bytes
    parts: list[Part]
    line_end: bytes

    @property
    def soap_type(self) -> str:
        """The envelope type the root part declares (its type parameter)."""
        _, params = mtom.parse_content_type(self.root_content_type)
        return params.get("type") or mtom.SOAP12_TYPE

    def part(self, cid: str) -> Part | None:
        return next((p for p in self.parts if p.cid == cid), None)


def read_dump(raw: bytes) -> Dump:
    """Parse a saved MTOM body with the project's MIME reader, whatever its line ends.

    Nothing but the first delimiter line names the boundary (the HTTP Content-Type was not saved),
    and without a start parameter the first part is the root (RFC 2387)."""
    text = raw.lstrip(b"\r\n")
    first = text.split(b"\n", 1)[0]
    if not first.startswith(b"--") or len(first.rstrip(b"\r")) < 3:
        raise PackError("the MIME dump does not start with a boundary line")
    line_end = b"\r\n" if first.endswith(b"\r") else b"\n"
    boundary = first.rstrip(b"\r")[2:].decode("ascii", "replace")
    content_type = f'multipart/related; boundary="{boundary}"; type="{mtom.XOP_TYPE}"'
    with tempfile.TemporaryDirectory(prefix="dmp-dump-") as spool:
        try:
            message = mtom.read_multipart(io.BytesIO(text), content_type, spool, max_part_bytes=1 << 30,
                                          max_total_bytes=1 << 31, bare_lf=True)
        except mtom.MtomError as exc:
            raise PackError(f"the MIME dump cannot be read: {exc}") from None
        try:
            parts = [Part(cid, att.content_type, att.read_bytes()) for cid, att in message.parts.items()]
        finally:
            message.cleanup()
    return Dump(message.root_content_type, message.root, parts, line_end)


def frame(root: bytes, parts: list[Part], soap_type: str, action: str | None) -> tuple[bytes, dict[str, str]]:
    """The body and HTTP headers of an MTOM request written by the project's MTOM writer: CRLF framing,
    a fresh boundary, a new root Content-ID; the parts keep their Content-IDs (the envelope's
    xop:Include elements name them) and their content types."""
    writer = mtom.MtomWriter()
    for part in parts:
        writer.add_bytes(part.data, part.content_type, part.cid)
    writer.set_root(root, soap_type)
    body = b"".join(writer.chunks())
    return body, {"Content-Type": writer.content_type(action), "Content-Length": str(len(body))}
