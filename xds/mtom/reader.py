"""The streaming reader of multipart/related bodies: parts other than the root are spooled to disk
while their SHA-1 and size are computed, so a document of hundreds of megabytes is never in memory."""
from __future__ import annotations

import binascii
import hashlib
import os
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from .content_type import parse_content_type, strip_cid
from .errors import MtomError, MtomLimitError
from .message import Attachment, MtomMessage

CHUNK = 256 * 1024
# Binary parts are read into blocks of this size, in turn, so that the copy from the socket,
# the boundary search, the hash and the write all find the bytes in the CPU's cache.
# Measured: 256 KiB blocks are slower (more hand-overs to the hashing thread); 1 to 4 MiB
# are alike, so the smallest.
BLOCK = 1024 * 1024
# What read() asks a stream with readinto for; the block path does not use it.
SCRATCH = 64 * 1024
DEFAULT_MAX_XML_BYTES = 64 * 1024 * 1024
# A part's header block is a handful of short lines; anything larger is an attack or garbage.
MAX_HEADER_BYTES = 16 * 1024
# RFC 2046 allows whitespace after a boundary; a bound stops a sender from making us buffer it forever.
MAX_PADDING = 1024
DEFAULT_MAX_PARTS = 10_000

_CRLF = b"\r\n"
_LF = b"\n"
_BARE_LF_MESSAGE = ("the MIME boundary lines of this body end in bare LF; RFC 2046 5.1.1 requires CRLF "
                    "(the mime_bare_lf setting accepts such framing)")
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _Source:
    """Bounded reads from the WSGI input, honouring Content-Length and the total limit."""

    def __init__(self, stream, content_length: int | None, max_total: int):
        self.stream = stream
        self.content_length = content_length
        self.remaining = content_length
        self.max_total = max_total
        self.consumed = 0
        self.eof = False
        self._readinto = getattr(stream, "readinto", None)
        # What a stream without readinto is asked for at a time. Asking it for less at the end
        # of a block would change where reads stop: a server's chunked input may consume the end
        # of the body only when a read asks past it (the HTTP server adapter's does).
        self.unit = 1 if self._readinto is not None else CHUNK
        self._scratch: memoryview | None = None

    def _want(self, n: int) -> int:
        if self.eof:
            return 0
        if self.remaining is not None:
            n = min(n, self.remaining)
        if n <= 0:
            self.eof = True
        return n

    def _account(self, got: int) -> None:
        if not got:
            self.eof = True
            if self.remaining:
                raise MtomError(
                    f"body truncated: the stream ended after {self.consumed} of the "
                    f"{self.content_length} bytes announced by Content-Length")
            return
        self.consumed += got
        if self.remaining is not None:
            self.remaining -= got
        if self.consumed > self.max_total:
            raise MtomLimitError(f"the multipart body exceeds the total limit of {self.max_total} bytes")

    def read(self) -> bytes:
        n = self._want(CHUNK)
        if n <= 0:
            return b""
        if self._readinto is not None:
            # Through readinto too, so that a stream's slow read() is never used (the server adapter's).
            if self._scratch is None:
                self._scratch = memoryview(bytearray(SCRATCH))
            n = min(n, SCRATCH)
            got = min(self._readinto(self._scratch[:n]) or 0, n)
            self._account(got)
            return bytes(self._scratch[:got])
        data = self.stream.read(n)
        if data and len(data) > n:
            # A misbehaving stream must not push us past Content-Length.
            data = data[:n]
        self._account(len(data) if data else 0)
        return bytes(data) if data else b""

    def readinto(self, view: memoryview) -> int:
        """Fill the start of view with at most one read of the stream; 0 at the end."""
        n = self._want(len(view))
        if n <= 0:
            return 0
        if self._readinto is not None:
            got = self._readinto(view[:n]) or 0
            got = min(got, n)
        else:
            # Streams without readinto still get bounded reads, as read() does them.
            data = self.stream.read(min(n, CHUNK))
            got = min(len(data), n) if data else 0
            view[:got] = data[:got] if got < len(data) else data
        self._account(got)
        return got


class _MemorySink:
    def __init__(self, limit: int, what: str):
        self.buf = bytearray()
        self.limit = limit
        self.what = what

    def write(self, data) -> None:
        if len(self.buf) + len(data) > self.limit:
            raise MtomLimitError(f"{self.what} exceeds the limit of {self.limit} bytes")
        self.buf += data

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


def _write_all(fd: int, view) -> None:
    while len(view):
        n = os.write(fd, view)
        view = view[n:]


class _FileSink:
    """A part spooled to disk, with its size and SHA-1 computed on the way.

    hashlib and os.write both release the GIL, so large blocks are hashed on a helper thread
    while this thread writes them and reads the next ones: on two cores the hash, the single
    largest cost of an upload, then costs little wall time. The helper is one thread, so the
    blocks reach the hash in the order they were submitted.
    """

    streams_blocks = True

    def __init__(self, spool_dir: str, limit: int, what: str, helper):
        self.fd, self.path = tempfile.mkstemp(prefix="xop-", suffix=".part", dir=spool_dir)
        self.hash = hashlib.sha1()
        self.size = 0
        self.limit = limit
        self.what = what
        # The reader's executor, created on first use: a part that fits in one block never needs it.
        self.helper = helper
        # One helper thread works in submission order, so waiting for the latest block covers all.
        self.last: Future | None = None

    def _count(self, n: int) -> None:
        self.size += n
        if self.size > self.limit:
            raise MtomLimitError(f"{self.what} exceeds the per-part limit of {self.limit} bytes")

    def _wait(self) -> None:
        last, self.last = self.last, None
        if last is not None:
            last.result()

    def write(self, data) -> None:
        """Hash and write data before returning, so the caller may reuse its buffer at once."""
        self._count(len(data))
        self._write_now(data)

    def submit(self, view: memoryview) -> Future:
        """Like write, but view's memory must stay unchanged until the returned future is done."""
        self._count(len(view))
        # Writing stays on this thread: measured, a helper that also writes leaves this thread idle
        # and is slower than one that only hashes.
        self.last = self.helper().submit(self.hash.update, view)
        _write_all(self.fd, view)
        return self.last

    def _write_now(self, view) -> None:
        self._wait()
        self.hash.update(view)
        _write_all(self.fd, view)

    def finish(self) -> None:
        self._wait()
        fd, self.fd = self.fd, -1
        os.close(fd)

    def close(self) -> None:
        # The helper may still be reading a block, and using the fd: let it finish first.
        try:
            self._wait()
        except Exception:
            pass  # the error that brought us here is the one to report
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


NBLOCKS = 3  # one being read into, two for the helper to hash meanwhile
# Blocks outlive requests: allocating megabytes per request leaves each server thread's malloc
# arena holding freed blocks (measured: peak RSS 70 -> 90 MB in bench/provide.py), and fresh
# pages cost page faults.
_spare_blocks: list[bytearray] = []
_spare_lock = threading.Lock()
MAX_SPARE_BLOCKS = 2 * NBLOCKS


def _take_block() -> bytearray:
    with _spare_lock:
        while _spare_blocks:
            block = _spare_blocks.pop()
            if len(block) == BLOCK:  # BLOCK may have been changed (tests, tuning)
                return block
    return bytearray(BLOCK)


def _give_back(block: bytearray) -> None:
    with _spare_lock:
        if len(_spare_blocks) < MAX_SPARE_BLOCKS and len(block) == BLOCK:
            _spare_blocks.append(block)


class _Base64Sink:
    """Decodes base64 as it streams, so a base64 part is bounded in memory like a binary one."""

    _WS = b" \t\r\n"

    def __init__(self, inner, what: str):
        self.inner = inner
        self.pending = b""
        self.what = what

    def write(self, data) -> None:
        data = self.pending + bytes(data).translate(None, self._WS)
        cut = len(data) - len(data) % 4
        self.pending = data[cut:]
        if cut:
            self._decode(data[:cut])

    def _decode(self, data: bytes) -> None:
        try:
            self.inner.write(binascii.a2b_base64(data, strict_mode=True))
        except binascii.Error as exc:
            raise MtomError(f"{self.what} is not valid base64: {exc}") from None

    def finish(self) -> None:
        if self.pending:
            raise MtomError(f"{self.what} is not valid base64: its length is not a multiple of 4")
        self.inner.finish()

    def close(self) -> None:
        self.inner.close()


def _parse_headers(block: bytes, label: str, eol: bytes = _CRLF) -> dict[str, str]:
    # Header values are ASCII by RFC 2045; latin-1 never fails, so a stray byte is kept, not fatal.
    # eol is the body's line ending (CRLF, or LF when bare-LF framing is accepted).
    lines = block.decode("latin-1").split(eol.decode("latin-1"))
    headers: dict[str, str] = {}
    current: str | None = None
    for line in lines:
        if not line:
            continue
        if line[0] in " \t":
            if current is None:
                raise MtomError(f"malformed headers in {label}: continuation line {line.strip()!r} with no header")
            headers[current] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name or any(ch not in _TOKEN_CHARS for ch in name):
            raise MtomError(f"malformed headers in {label}: {line[:80]!r} is not a 'Name: value' line")
        current = name.lower()
        if current in headers:
            headers[current] += ", " + value.strip()
        else:
            headers[current] = value.strip()
    return headers


class _Reader:
    def __init__(self, stream, content_type: str, spool_dir: str, max_part_bytes: int,
                 max_total_bytes: int, max_xml_bytes: int, content_length: int | None, max_parts: int,
                 bare_lf: bool = False):
        mime, params = parse_content_type(content_type)
        if mime != "multipart/related":
            raise MtomError(f"Content-Type {mime or '(none)'!r} is not multipart/related")
        boundary = params.get("boundary")
        if not boundary:
            raise MtomError("the multipart Content-Type has no boundary parameter")
        self.content_type = content_type
        self.boundary = boundary
        # The body's line ending: CRLF (RFC 2046), or LF when bare_lf accepts it and the first
        # boundary line ends so (_skip_preamble decides). The delimiter, the end of a header block
        # and the header lines all use it; content is never altered.
        self.bare_lf = bare_lf
        self.eol = _CRLF
        self.delim = b"\r\n--" + boundary.encode("latin-1")
        self.headers_end = _CRLF + _CRLF
        # Enough of the previous chunk survives to match a delimiter split across two reads.
        self.keep = len(self.delim)
        # Strict mode: a boundary line seen ending in, or following, a bare LF, named if no CRLF one comes.
        self.saw_bare_lf = False
        self.start = strip_cid(params["start"]) if params.get("start") else None
        self.src = _Source(stream, content_length, max_total_bytes)
        self.spool_dir = spool_dir
        self.max_part = max_part_bytes
        self.max_xml = max_xml_bytes
        self.max_parts = max_parts
        # Pretending the body starts with CRLF lets one search pattern find the first
        # boundary too, which may legally sit at byte 0 with nothing before it.
        self.buf = bytearray(_CRLF)
        self.sinks: list = []
        self.paths: list[str] = []
        # Blocks are used in turn: one is read into while the helper hashes the others.
        self.blocks: list[list] = []  # [bytearray, memoryview, Future | None]
        self.turn = -1
        self.executor: ThreadPoolExecutor | None = None

    # ---- buffer helpers

    def _more(self) -> bool:
        data = self.src.read()
        if not data:
            return False
        self.buf += data
        return True

    def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            if not self._more():
                return False
        return True

    # ---- phases

    def run(self) -> MtomMessage:
        try:
            return self._run()
        except BaseException:
            for s in self.sinks:
                s.close()
            for p in self.paths:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            raise
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=True)
            # Only now is no hash reading them: the sinks waited, and so did the shutdown.
            blocks, self.blocks = self.blocks, []
            for block, view, _ in blocks:
                try:
                    view.release()
                except BufferError:
                    continue  # something still holds a view of it: let it be freed with that
                _give_back(block)

    def _run(self) -> MtomMessage:
        self._skip_preamble()
        parts: dict[str, Attachment] = {}
        root: bytes | None = None
        root_ct = ""
        root_cid = None
        index = 0
        while True:
            index += 1
            if index > self.max_parts:
                raise MtomError(f"the multipart body has more than {self.max_parts} parts")
            headers = self._read_headers(index)
            cid = strip_cid(headers["content-id"]) if headers.get("content-id") else None
            ctype = headers.get("content-type", "")
            cte = headers.get("content-transfer-encoding", "binary").strip().lower()
            label = f"MIME part #{index}" + (f" <{cid}>" if cid else "")
            if cte not in ("binary", "8bit", "7bit", "base64"):
                raise MtomError(f"{label} uses Content-Transfer-Encoding {cte!r}; only binary, 8bit, 7bit "
                                "and base64 are supported")
            is_root = root is None and (cid == self.start if self.start else index == 1)
            if is_root:
                sink = _MemorySink(self.max_xml, f"the root XML part ({label})")
            else:
                if not cid:
                    raise MtomError(f"malformed headers in {label}: a non-root part has no Content-ID, "
                                    "so nothing can refer to it")
                if cid in parts or cid == root_cid:
                    raise MtomError(f"malformed headers in {label}: Content-ID <{cid}> is used by two parts")
                sink = _FileSink(self.spool_dir, self.max_part, label, self._helper)
                self.paths.append(sink.path)
            self.sinks.append(sink)
            outer = _Base64Sink(sink, label) if cte == "base64" else sink
            last = self._read_body(outer, label)
            outer.finish()
            if is_root:
                root, root_ct, root_cid = bytes(sink.buf), ctype, cid
            else:
                parts[cid] = Attachment(cid=cid, content_type=ctype or "application/octet-stream",
                                        path=sink.path, size=sink.size, sha1=sink.hash.hexdigest())
            if last:
                break
        if root is None:
            raise MtomError(f"the root part <{self.start}> named by the start parameter is missing")
        return MtomMessage(root, root_ct, parts, root_cid, self.content_type)

    def _skip_preamble(self) -> None:
        # Accepting bare LF, the first boundary is looked for after any LF (CRLF ends in one too).
        pattern = self.delim[1:] if self.bare_lf else self.delim
        while True:
            i = self.buf.find(pattern)
            if i >= 0:
                kind = self._first_delimiter(i)
                if kind == "part":
                    return
                if kind == "close":
                    if self.saw_bare_lf:  # a CR ending a part's content made its LF delimiter a CRLF one
                        raise MtomError(_BARE_LF_MESSAGE)
                    raise MtomError("the multipart body closes before its first part; the root part is missing")
                # A delimiter followed by other text is not a boundary line; keep looking past it.
                del self.buf[:1]
                continue
            if not self.bare_lf:
                self._note_bare_lf(final=False)
            if len(self.buf) > self.keep:
                del self.buf[:len(self.buf) - self.keep]
            if not self._more():
                if not self.bare_lf:
                    self._note_bare_lf(final=True)
                if self.saw_bare_lf:
                    raise MtomError(_BARE_LF_MESSAGE)
                raise MtomError(f"the MIME boundary {self.boundary!r} never occurs in the body "
                                "(wrong boundary?)")

    def _first_delimiter(self, i: int) -> str | None:
        """Classify the first-delimiter candidate found at buf[i] as _after_delimiter does.

        Strict, the candidate is a CRLF delimiter. Accepting bare LF, it is the LF of one: a CR
        before it and a CRLF ending the line make the body CRLF-framed, as strict would read it;
        a line ending in bare LF makes it LF-framed from here on (a CR before belongs to the preamble).
        """
        if not self.bare_lf:
            # What comes before the candidate is dropped unseen by the trimming's check: check it now.
            self._note_bare_lf(final=False, end=i + len(self.delim) - 2)
            del self.buf[:i]
            kind = self._after_delimiter()
            if kind == "lf":
                self.saw_bare_lf = True
            return kind
        if i and self.buf[i - 1] == 0x0D:
            del self.buf[:i - 1]
            kind = self._after_delimiter()
            if kind != "lf":
                return kind
            del self.buf[:1]  # the CR: buf starts at the LF again
        else:
            del self.buf[:i]
        self._use_eol(_LF)
        kind = self._after_delimiter()
        if kind not in ("part", "close"):
            self._use_eol(_CRLF)
        return kind

    def _use_eol(self, eol: bytes) -> None:
        self.eol = eol
        self.delim = eol + b"--" + self.boundary.encode("latin-1")
        self.headers_end = eol + eol
        self.keep = len(self.delim)

    def _note_bare_lf(self, final: bool, end: int | None = None) -> None:
        """Strict mode: remember a boundary after a bare LF (an LF with no CR before it).

        Runs on the preamble buffer before it is trimmed to its last `keep` bytes; an occurrence
        at buf[0] was seen, with the byte before it, in the previous round. One whose next byte has
        not arrived yet is left to the next round, which still holds it, or counted at the end.
        With end, only occurrences starting before end - len(pattern) + 1 are looked at.
        """
        if self.saw_bare_lf:
            return
        pattern = self.delim[1:]
        n = len(pattern)
        end = len(self.buf) if end is None else end
        i = self.buf.find(pattern, 1, end)
        while i >= 0:
            if self.buf[i - 1] != 0x0D:
                nxt = self.buf[i + n:i + n + 1]
                if nxt in (b" ", b"\t", b"\r", b"\n", b"-") or (not nxt and final):
                    self.saw_bare_lf = True
                    return
            i = self.buf.find(pattern, i + 1, end)

    def _after_delimiter(self) -> str | None:
        """Classify the delimiter at buf[0]: 'part' (consumed up to the line's end), 'close', or
        None; 'lf' is None's variant for a line that ends in a bare LF where a CRLF was expected.

        On 'part' the buffer is left starting with the line end (self.eol) of the boundary line,
        so that an empty header block and a normal one are found by the same search.
        """
        d = len(self.delim)
        if not self._need(d + 2):
            raise MtomError(self._eof_message("after a boundary line"))
        if self.buf[d:d + 2] == b"--":
            return "close"
        j = d
        while True:
            if j >= len(self.buf) and not self._more():
                raise MtomError(self._eof_message("after a boundary line"))
            ch = self.buf[j]
            if ch in (0x20, 0x09) and j - d < MAX_PADDING:
                j += 1
                continue
            break
        eol = self.eol
        if not self._need(j + len(eol)):
            raise MtomError(self._eof_message("after a boundary line"))
        if self.buf[j:j + len(eol)] != eol:
            return "lf" if self.buf[j] == 0x0A else None
        del self.buf[:j]
        return "part"

    def _read_headers(self, index: int) -> dict[str, str]:
        while True:
            i = self.buf.find(self.headers_end)
            if i > MAX_HEADER_BYTES:
                raise MtomError(f"malformed headers in MIME part #{index}: no blank line within "
                                f"{MAX_HEADER_BYTES} bytes")
            if i >= 0:
                e = len(self.eol)
                block = bytes(self.buf[e:i])
                del self.buf[:i + 2 * e]
                return _parse_headers(block, f"MIME part #{index}", self.eol)
            if len(self.buf) > MAX_HEADER_BYTES:
                raise MtomError(f"malformed headers in MIME part #{index}: no blank line within "
                                f"{MAX_HEADER_BYTES} bytes")
            if not self._more():
                raise MtomError(self._eof_message(f"inside the headers of MIME part #{index}"))

    def _read_body(self, sink, label: str) -> bool:
        """Stream one part's content into sink; True when the closing delimiter ended it."""
        # A boundary as long as a block would leave no room for content; such a body takes the slow path.
        fast = getattr(sink, "streams_blocks", False) and self.keep * 4 <= BLOCK
        while True:
            i = self.buf.find(self.delim)
            if i >= 0:
                if i:
                    with memoryview(self.buf) as mv:
                        sink.write(mv[:i])
                    del self.buf[:i]
                kind = self._after_delimiter()
                if kind == "close":
                    return True
                if kind == "part":
                    return False
                # Not a real boundary line: its first byte is content, search again after it.
                with memoryview(self.buf) as mv:
                    sink.write(mv[:1])
                del self.buf[:1]
                continue
            safe = len(self.buf) - self.keep
            if safe > 0:
                with memoryview(self.buf) as mv:
                    sink.write(mv[:safe])
                del self.buf[:safe]
            if fast and self._stream_blocks(sink):
                continue
            if not self._more():
                raise MtomError(self._eof_message(f"inside {label} before its closing boundary"))

    def _helper(self) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtom-sha1")
        return self.executor

    def _block(self) -> tuple[bytearray, memoryview, int]:
        self.turn = (self.turn + 1) % NBLOCKS
        if len(self.blocks) <= self.turn:
            block = _take_block()
            self.blocks.append([block, memoryview(block), None])
        entry = self.blocks[self.turn]
        if entry[2] is not None:
            pending, entry[2] = entry[2], None
            pending.result()
        return entry[0], entry[1], self.turn

    def _stream_blocks(self, sink) -> bool:
        """Read a binary part's content straight into blocks and hand them to sink uncopied.

        Entered with at most `keep` bytes in self.buf, none of them starting a delimiter that
        fits. Returns True when a delimiter candidate has been read (self.buf then starts with
        it, followed by whatever came after it), False when the stream ended first (self.buf
        then holds the undelivered tail, and the caller reports the truncation).
        """
        d = len(self.delim)
        carry = self.buf
        while True:
            block, mv, turn = self._block()
            filled = len(carry)
            mv[:filled] = carry
            scan = 0
            while True:
                got = self.src.readinto(mv[filled:])
                if not got:
                    self.buf = bytearray(mv[:filled])
                    return False
                # Only a delimiter ending in the new bytes can be new.
                scan = max(scan, filled - d + 1)
                filled += got
                i = block.find(self.delim, scan, filled)
                if i >= 0:
                    # The part's last piece: nothing left to overlap its hash with, so no helper,
                    # and a part that fits in one block never starts a thread.
                    if i:
                        sink.write(mv[:i])
                    self.buf = bytearray(mv[i:filled])
                    return True
                room = len(mv) - filled
                if not room or (room < self.src.unit and filled > self.keep):
                    break
            safe = filled - self.keep
            self.blocks[turn][2] = sink.submit(mv[:safe])
            carry = mv[safe:filled]

    def _eof_message(self, where: str) -> str:
        if self.src.content_length is not None and self.src.remaining == 0:
            return (f"body truncated: the {self.src.content_length} bytes announced by Content-Length "
                    f"end {where}")
        return f"body truncated: the stream ended {where}"


def read_multipart(stream, content_type: str, spool_dir: str, max_part_bytes: int, max_total_bytes: int,
                   max_xml_bytes: int = DEFAULT_MAX_XML_BYTES, content_length: int | None = None,
                   max_parts: int = DEFAULT_MAX_PARTS, bare_lf: bool = False) -> MtomMessage:
    """Parse an MTOM body from a file-like stream, spooling non-root parts into spool_dir.

    max_total_bytes bounds the bytes read from the wire (framing included); max_part_bytes
    bounds each decoded attachment; max_xml_bytes bounds the root part. On any error every
    file already spooled is removed before MtomError is raised.

    Boundary lines and part headers end in CRLF (RFC 2046 5.1.1); a body framed with bare LF is
    refused with a message saying so, unless bare_lf: then the first boundary line's ending (CRLF
    or LF) is the body's, used for every delimiter and header line, and the content stays exact.
    """
    if content_length is not None and content_length < 0:
        raise MtomError(f"Content-Length {content_length} is negative")
    reader = _Reader(stream, content_type, spool_dir, max_part_bytes, max_total_bytes, max_xml_bytes,
                     content_length, max_parts, bare_lf)
    return reader.run()

