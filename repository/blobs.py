"""Where document bytes live: an abstract store and the file-system implementation.

A document goes through two steps so that nothing becomes visible before the registry has
accepted its metadata: stage() puts the bytes aside under a private name, commit() makes
them retrievable under their uniqueId, discard() forgets them.
"""
from __future__ import annotations

import abc
import errno
import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Iterable

CHUNK = 1024 * 1024


@dataclass
class Staged:
    """A staged document: private to the request that staged it until commit or discard."""

    key: str  # meaning is up to the store (a file path for FileSystemBlobStore)
    size: int
    sha1: str


class BlobStore(abc.ABC):
    @abc.abstractmethod
    def stage(self, source, *, sha1: str | None = None, size: int | None = None,
              move: bool = True) -> Staged:
        """Put bytes aside. source: a file path, a binary file object or an iterable of bytes.

        For a path with sha1 and size already known (an MTOM part spooled by the reader), the
        store may take the file over (move=True) instead of reading it again.
        """

    @abc.abstractmethod
    def commit(self, staged: Staged, unique_id: str) -> str:
        """Make a staged document permanent; returns its location (an opaque string)."""

    @abc.abstractmethod
    def discard(self, staged: Staged) -> None:
        """Drop a staged document; never fails for one already gone."""

    @abc.abstractmethod
    def open(self, location: str) -> BinaryIO:
        ...

    @abc.abstractmethod
    def delete(self, location: str) -> None:
        ...

    def local_path(self, location: str) -> str | None:
        """A file path the HTTP layer can stream from, when the store has one."""
        return None

    def exists(self, location: str) -> bool:
        try:
            self.open(location).close()
            return True
        except FileNotFoundError:
            return False

    def digest(self, location: str) -> tuple[int, str]:
        """Size and SHA-1 of a stored document, read back from the store."""
        digest = hashlib.sha1()
        size = 0
        with self.open(location) as f:
            for block in _read_chunks(f):
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()

    def all_locations(self) -> Iterable[str]:
        """Every stored document's location (the consistency check looks for files without rows)."""
        return ()

    def quarantine(self, location: str) -> None:
        """Take a document out of service without destroying it (the consistency check's repair)."""
        raise NotImplementedError


def location_for(unique_id: str) -> str:
    # uniqueIds are OIDs or arbitrary strings: hashing gives a safe file name, and its first
    # bytes spread the files over 65536 folders so that no single folder grows huge.
    digest = hashlib.sha256(unique_id.encode("utf-8")).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}/{digest}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSystemBlobStore(BlobStore):
    """Files under root/objects, staged in root/staging on the same file system.

    Commit is one os.replace, so a reader sees either nothing or the whole document.
    With durable=True every file and folder entry is fsynced before it counts as stored.
    """

    def __init__(self, root: str, durable: bool = True):
        self.root = os.path.abspath(root)
        self.staging = os.path.join(self.root, "staging")
        self.objects = os.path.join(self.root, "objects")
        self.durable = durable
        os.makedirs(self.staging, exist_ok=True)
        os.makedirs(self.objects, exist_ok=True)

    # --- staging ------------------------------------------------------------------------
    def stage(self, source, *, sha1: str | None = None, size: int | None = None,
              move: bool = True) -> Staged:
        if isinstance(source, (str, os.PathLike)) and move and sha1 is not None and size is not None:
            moved = self._take_over(os.fspath(source))
            if moved is not None:
                return Staged(moved, size, sha1)
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                return self._copy_in(_read_chunks(f))
        if hasattr(source, "read"):
            return self._copy_in(_read_chunks(source))
        return self._copy_in(source)

    def _new_staging_name(self) -> str:
        fd, path = tempfile.mkstemp(prefix="doc-", suffix=".staged", dir=self.staging)
        os.close(fd)
        return path

    def _take_over(self, path: str) -> str | None:
        target = self._new_staging_name()
        try:
            os.replace(path, target)
        except OSError as exc:
            os.unlink(target)
            if exc.errno == errno.EXDEV:
                return None  # another file system: the caller copies instead
            raise
        if self.durable:
            # The spool writer never fsyncs; durability is our business once we own the file.
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return target

    def _copy_in(self, chunks: Iterable[bytes]) -> Staged:
        target = self._new_staging_name()
        digest = hashlib.sha1()
        size = 0
        try:
            with open(target, "wb") as out:
                for block in chunks:
                    if not block:
                        continue
                    digest.update(block)
                    size += len(block)
                    out.write(block)
                out.flush()
                if self.durable:
                    os.fsync(out.fileno())
        except BaseException:
            _unlink(target)
            raise
        return Staged(target, size, digest.hexdigest())

    # --- commit and discard ---------------------------------------------------------------
    def commit(self, staged: Staged, unique_id: str) -> str:
        location = location_for(unique_id)
        final = self._path(location)
        folder = os.path.dirname(final)
        os.makedirs(folder, exist_ok=True)
        os.replace(staged.key, final)
        if self.durable:
            _fsync_dir(folder)
        return location

    def discard(self, staged: Staged) -> None:
        _unlink(staged.key)

    # --- reading and deleting ---------------------------------------------------------------
    def _path(self, location: str) -> str:
        path = os.path.normpath(os.path.join(self.objects, location))
        # A location comes from our own database, but a corrupted row must not reach outside.
        if not path.startswith(self.objects + os.sep):
            raise ValueError(f"document location {location!r} is outside the document store")
        return path

    def open(self, location: str) -> BinaryIO:
        return open(self._path(location), "rb")

    def local_path(self, location: str) -> str | None:
        return self._path(location)

    def exists(self, location: str) -> bool:
        return os.path.isfile(self._path(location))

    def delete(self, location: str) -> None:
        _unlink(self._path(location))

    def all_locations(self) -> Iterable[str]:
        for folder, _, names in os.walk(self.objects):
            for name in names:
                yield os.path.relpath(os.path.join(folder, name), self.objects).replace(os.sep, "/")

    def quarantine(self, location: str) -> None:
        target = os.path.join(self.root, "quarantine", *location.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(self._path(location), target)

    def staged_names(self) -> list[str]:
        """What is sitting in staging (tests check that failed requests leave nothing)."""
        return sorted(os.listdir(self.staging))

    def clean_staging(self, keep: set[str] = frozenset()) -> int:
        """Remove leftovers of requests interrupted by a crash, except the staged documents still
        pending (keep: their staging keys), which settlement commits or discards; start-up only."""
        n = 0
        for name in os.listdir(self.staging):
            path = os.path.join(self.staging, name)
            if path not in keep:
                _unlink(path)
                n += 1
        return n


def _read_chunks(f) -> Iterable[bytes]:
    while True:
        block = f.read(CHUNK)
        if not block:
            return
        yield block


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

