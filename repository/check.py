"""`xds repository check`: does this repository hold exactly the documents its registry lists for it?

Compares, in pages so that memory stays bounded, the repository's rows and files with the registry's
DocumentEntries for this repositoryUniqueId (any status, through the settlement lookup), and reports:
  entry-without-bytes   the registry lists a document this repository cannot serve
  bytes-without-entry   a stored document no registry entry describes (e.g. deleted by ITI-62, not yet by ITI-86)
  file-without-row      a file in the store that no row names
  size-mismatch / hash-mismatch   the row, the file or the registry disagree
Repair fixes what can be fixed without guessing: a row is recorded for a file whose bytes match the
registry's hash; a row is corrected to the bytes it names when they match the registry; documents no
entry describes, and files no row names, are moved to the store's quarantine, never deleted, so that a
wrong registry address cannot destroy anything. Bytes that are gone cannot be made again: those stay
reported, and the command exits non-zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .blobs import BlobStore, location_for
from .forward import RegistryLink
from .store import DocumentRow, RepositoryStore

PAGE = 500


@dataclass
class Finding:
    kind: str
    unique_id: str | None
    detail: str
    repaired: str | None = None  # what repair did, when it did something

    def line(self) -> str:
        done = f" -> {self.repaired}" if self.repaired else ""
        return f"{self.kind}\t{self.unique_id or '-'}\t{self.detail}{done}"


@dataclass
class Report:
    documents: int = 0   # rows looked at
    entries: int = 0     # registry entries looked at
    pending: int = 0     # awaiting settlement, not judged
    findings: list[Finding] = field(default_factory=list)

    @property
    def unresolved(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired]


class Check:
    def __init__(self, store: RepositoryStore, blobs: BlobStore, registry: RegistryLink, repository_id: str):
        self.store = store
        self.blobs = blobs
        self.registry = registry
        self.repository_id = repository_id

    def run(self, repair: bool = False, hashes: bool = False) -> Report:
        report = Report()
        pending = {p.unique_id for p in self.store.pending(limit=1_000_000)}
        report.pending = len(pending)
        self._rows_against_registry(report, pending, repair, hashes)
        # What the first pass reported (e.g. a row whose file is gone, removed by repair) is not reported twice.
        self._registry_against_rows(report, pending | {f.unique_id for f in report.findings}, repair)
        self._files_without_rows(report, repair)
        return report

    # Each side is paged by its own ordering and looked up on the other side by uniqueId, so nothing
    # depends on the two databases sorting strings alike.
    def _rows_against_registry(self, report: Report, pending: set[str], repair: bool, hashes: bool) -> None:
        after = None
        while True:
            rows = self.store.page(after, PAGE)
            if not rows:
                return
            after = rows[-1].unique_id
            report.documents += len(rows)
            held = self.registry.registered(self.repository_id, [r.unique_id for r in rows]).documents
            for row in rows:
                if row.unique_id in pending:
                    continue
                entry = held.get(row.unique_id)
                present = self.blobs.exists(row.location)
                if entry is None:
                    f = Finding("bytes-without-entry", row.unique_id, "stored here, not in the registry")
                    if repair:
                        self._quarantine_row(row, present)
                        f.repaired = "row removed, bytes quarantined" if present else "row removed"
                    report.findings.append(f)
                    continue
                if not present:
                    f = Finding("entry-without-bytes", row.unique_id, "the row's file is missing")
                    if repair:
                        self.store.remove([row.unique_id], lambda _: None)
                        # The row only made ITI-43 fail with an internal error; the bytes stay lost.
                    report.findings.append(f)
                    continue
                self._compare(report, row, entry, repair, hashes)

    def _compare(self, report: Report, row: DocumentRow, entry, repair: bool, hashes: bool) -> None:
        sha1, size = (entry[0] or "").lower(), entry[1]
        if row.hash.lower() == sha1 and row.size == size and not hashes:
            return
        actual_size, actual_sha1 = self.blobs.digest(row.location)
        if actual_sha1 == sha1 and actual_size == size:
            if row.hash.lower() != sha1 or row.size != size:
                f = Finding("hash-mismatch" if row.hash.lower() != sha1 else "size-mismatch", row.unique_id,
                            f"row says {row.hash}/{row.size}, registry and bytes say {sha1}/{size}")
                if repair:
                    self.store.fix(DocumentRow(row.unique_id, actual_sha1, actual_size, row.mime_type, row.location,
                                               row.repository_unique_id))
                    f.repaired = "row corrected"
                report.findings.append(f)
            return
        kind = "hash-mismatch" if actual_sha1 != sha1 else "size-mismatch"
        report.findings.append(Finding(kind, row.unique_id, f"registry says {sha1}/{size}, the stored bytes are "
                                       f"{actual_sha1}/{actual_size}"))

    def _registry_against_rows(self, report: Report, pending: set[str], repair: bool) -> None:
        after = None
        while True:
            page = self.registry.registered(self.repository_id, after=after, limit=PAGE)
            report.entries += len(page.documents)
            stored = self.store.get_many(page.documents)
            for uid, (sha1, size, _, mime) in page.documents.items():
                if uid in stored or uid in pending:
                    continue
                f = Finding("entry-without-bytes", uid, "registered, no row here")
                if repair:
                    f.repaired = self._recover(uid, sha1, size, mime)
                report.findings.append(f)
            if page.next is None:
                return
            after = page.next

    def _recover(self, uid: str, sha1: str | None, size: int | None, mime: str | None) -> str | None:
        """A file at the uniqueId's own location whose bytes are the registry's gets its row back."""
        location = location_for(uid)
        try:
            actual_size, actual_sha1 = self.blobs.digest(location)
        except (FileNotFoundError, ValueError):
            return None
        if actual_sha1 != (sha1 or "").lower() or actual_size != size:
            return None
        self.store.add([DocumentRow(uid, actual_sha1, actual_size, mime or "application/octet-stream", location,
                                    self.repository_id)])
        return "row recorded for the stored bytes"

    def _files_without_rows(self, report: Report, repair: bool) -> None:
        known = self.store.locations()
        for location in self.blobs.all_locations():
            if location in known:
                continue
            f = Finding("file-without-row", None, location)
            if repair:
                self.blobs.quarantine(location)
                f.repaired = "quarantined"
            report.findings.append(f)

    def _quarantine_row(self, row: DocumentRow, present: bool) -> None:
        def move(rows: list[DocumentRow]) -> None:
            for r in rows:
                if present:
                    self.blobs.quarantine(r.location)

        self.store.remove([row.unique_id], move)
