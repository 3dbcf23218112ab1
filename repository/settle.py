"""ITI-41's bytes between the repository and the registry: recorded as pending before the ITI-42,
committed once the registry holds the submission, discarded once it never will.

Every step leaves the database saying what is left to do, so that a crash at any point is finished
by settlement: at start-up, periodically, and at once for a request whose ITI-42 went unanswered.
The protocol and its failure cases are in docs/decisions.md ("ITI-41 as a recoverable protocol").
"""
from __future__ import annotations

import datetime as _dt
import enum
import logging
import threading
import time
import uuid
from typing import Iterable, Sequence

from xds import errors as E
from xds import faults
from xds.errors import XdsException
from xds.registered import Registered
from .blobs import BlobStore, Staged, location_for
from .forward import RegistryLink
from .store import DocumentRow, PendingRow, RepositoryStore

log = logging.getLogger(__name__)

_RETRY = 0.5  # seconds between lookups while the registry cannot be asked, or its answer is not final yet


class Outcome(enum.Enum):
    REGISTERED = "registered"
    NOT_REGISTERED = "not registered"
    UNKNOWN = "unknown"


class Ledger:
    def __init__(self, store: RepositoryStore, blobs: BlobStore, registry: RegistryLink, repository_id: str,
                 registry_timeout: float):
        self.store = store
        self.blobs = blobs
        self.registry = registry
        self.repository_id = repository_id
        self.registry_timeout = registry_timeout

    # --- one request -------------------------------------------------------------------------
    def deadline(self) -> _dt.datetime:
        """The CommitDeadline for an ITI-42 sent now: the registry commits before it or not at all."""
        return _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=self.registry_timeout)

    def record(self, documents: Iterable[tuple[str, Staged, str]], deadline: _dt.datetime) -> list[PendingRow]:
        """documents: (uniqueId, staged bytes, mimeType). Durable before the registry is called."""
        rows = [PendingRow(str(uuid.uuid4()), uid, staged.sha1, staged.size, mime, staged.key, self.repository_id,
                           deadline) for uid, staged, mime in documents]
        self.store.add_pending(rows)
        return rows

    def commit(self, pending: Sequence[PendingRow]) -> None:
        """The registry holds these documents: make them retrievable."""
        rows = []
        for p in pending:
            location = self._move_in(p)
            if location is not None:
                rows.append(DocumentRow(p.unique_id, p.hash, p.size, p.mime_type, location, p.repository_unique_id))
        faults.point("moved")
        self.store.settle(list(pending), rows, before_commit=lambda: faults.point("rows"))

    def discard(self, pending: Sequence[PendingRow]) -> None:
        """The registry does not hold these documents and never will: forget their bytes."""
        # Rows first: a crash between the two leaves a staged file no row names, which start-up removes.
        self.store.settle(list(pending), [])
        for p in pending:
            self.blobs.discard(_staged(p))

    def refused(self, pending: Sequence[PendingRow], exc: XdsException) -> None:
        """The registry answered Failure. That leaves nothing registered, except when the failure is a
        uniqueId it already holds: an ITI-42 sent again after its first copy was committed (a connection
        retried by the client) or a submission it registered before. Then the bytes it lists are needed."""
        if not pending:
            return
        if not any(e.code == E.DUPLICATE_UNIQUE_ID_IN_REGISTRY for e in exc.errors):
            self.discard(pending)
            return
        try:
            answer = self.registry.registered(self.repository_id, [p.unique_id for p in pending])
        except XdsException as lookup_failed:
            log.warning("settlement lookup failed, %d documents stay pending: %s", len(pending), lookup_failed)
            return
        # The answer to a refusal is final: nothing of this ITI-42 can still be committed.
        if self._apply(pending, answer, final=True) is Outcome.REGISTERED:
            log.warning("the registry refused an ITI-42 but holds its documents: committed")

    def settle_unanswered(self, pending: Sequence[PendingRow], deadline: _dt.datetime, ended: bool = False) -> Outcome:
        """An ITI-42 got no answer: ask the registry until its answer is final, within a bound.

        ended: the registration is known to be over (it raised in this process, or its response came
        back unreadable), so the registry's first answer is final whatever its clock says.
        """
        # The source has waited one registry_timeout already; it waits one more at most.
        give_up = time.monotonic() + max(self.registry_timeout, 5)
        while True:
            try:
                answer = self.registry.registered(self.repository_id, [p.unique_id for p in pending])
            except XdsException as exc:
                if time.monotonic() > give_up:
                    log.warning("settlement lookup failed, %d documents stay pending: %s", len(pending), exc)
                    return Outcome.UNKNOWN
                time.sleep(_RETRY)
                continue
            outcome = self._apply(pending, answer, final=ended)
            if outcome is not Outcome.UNKNOWN or time.monotonic() > give_up:
                return outcome
            wait = (deadline - answer.registry_time).total_seconds()
            time.sleep(min(max(wait, 0.05), _RETRY))

    # --- everything left pending ----------------------------------------------------------------
    def settle_due(self) -> dict[str, int]:
        """Settle every pending document whose deadline has passed; what cannot be decided stays."""
        counts = {o.value: 0 for o in Outcome}
        seen: set[str] = set()
        while True:
            batch = [p for p in self.store.pending(due_before=_dt.datetime.now(_dt.timezone.utc)) if p.id not in seen]
            if not batch:
                return counts
            seen |= {p.id for p in batch}
            try:
                answer = self.registry.registered(self.repository_id, [p.unique_id for p in batch])
            except XdsException as exc:
                log.warning("settlement lookup failed, %d documents stay pending: %s", len(batch), exc)
                counts[Outcome.UNKNOWN.value] += len(batch)
                return counts
            for p in batch:
                counts[self._apply([p], answer).value] += 1

    def _apply(self, pending: Sequence[PendingRow], answer: Registered, final: bool = False) -> Outcome:
        held = [p for p in pending if answer.holds(p.unique_id, p.hash)]
        if held:
            self.commit(held)
        gone = [p for p in pending if p not in held and (final or answer.final_for(p.deadline))]
        if gone:
            self.discard(gone)
        if len(held) == len(pending):
            return Outcome.REGISTERED
        if len(gone) == len(pending):
            return Outcome.NOT_REGISTERED
        return Outcome.UNKNOWN if not held else Outcome.REGISTERED

    def _move_in(self, p: PendingRow) -> str | None:
        staged = _staged(p)
        try:
            return self.blobs.commit(staged, p.unique_id)
        except FileNotFoundError:
            pass
        # Already moved: by an earlier attempt that crashed before its rows, or by a concurrent settlement.
        location = location_for(p.unique_id)
        try:
            size, sha1 = self.blobs.digest(location)
        except FileNotFoundError:
            size, sha1 = -1, ""
        if size == p.size and sha1 == p.hash.lower():
            return location
        log.error("registered document %s has lost its bytes: neither staged nor stored", p.unique_id)
        return None


def _staged(p: PendingRow) -> Staged:
    return Staged(p.staged, p.size, p.hash)


class SettlementJob:
    """Runs Ledger.settle_due every `interval` seconds on a daemon thread until stopped, and a
    report-only consistency check (repository/check.py) every `check_interval` seconds when set."""

    def __init__(self, ledger: Ledger, interval: float, check=None, check_interval: float = 0):
        self.ledger = ledger
        self.interval = interval
        self.check = check
        self.check_interval = check_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "SettlementJob":
        self._thread = threading.Thread(target=self._run, name="xds-settle", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_check = time.monotonic() + self.check_interval
        while not self._stop.wait(self.interval):
            try:
                counts = self.ledger.settle_due()
                if counts["registered"] or counts["not registered"]:
                    log.info("settled pending documents: %s", counts)
                if self.check is not None and self.check_interval > 0 and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.check_interval
                    self._report(self.check())
            except Exception:
                # The job must outlive a database or registry outage; the next round tries again.
                log.exception("settlement round failed")

    @staticmethod
    def _report(report) -> None:
        kinds: dict[str, int] = {}
        for f in report.findings:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        level = logging.ERROR if report.findings else logging.INFO
        log.log(level, "consistency check: %d stored documents, %d registry entries, problems %s "
                "(details and repair: xds repository check)", report.documents, report.entries, kinds or "none")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
