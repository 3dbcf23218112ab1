"""The repository's document rows: the only module that reads and writes the repo_ tables."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Callable, Iterable

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from xds.db import insert_rows, make_engine, read_only
from . import schema as S

_CHUNK = 500  # bound IN-lists so that long retrieve requests stay within driver limits
# Most requests name one document; a plain equality skips the IN-list expansion on every call.
_ONE = select(S.document).where(S.document.c.unique_id == bindparam("uid"))


@dataclass
class PendingRow:
    """A staged document of an ITI-41 whose ITI-42 is not settled (repository/settle.py)."""

    id: str
    unique_id: str
    hash: str
    size: int
    mime_type: str
    staged: str
    repository_unique_id: str
    deadline: _dt.datetime
    created: _dt.datetime | None = None


@dataclass
class DocumentRow:
    unique_id: str
    hash: str
    size: int
    mime_type: str
    location: str
    repository_unique_id: str
    created: _dt.datetime | None = None


class RepositoryStore:
    def __init__(self, engine: Engine | str):
        self.engine = make_engine(engine) if isinstance(engine, str) else engine

    def create_schema(self) -> None:
        S.metadata.create_all(self.engine)

    def migrate(self) -> None:
        """Create or upgrade the repository tables to the newest revision (see xds.migrate)."""
        # Imported here so that only startup pays for loading Alembic.
        from xds import migrate

        migrate.upgrade(self.engine, "repository")

    def get_many(self, unique_ids: Iterable[str]) -> dict[str, DocumentRow]:
        ids = sorted(set(unique_ids))
        found: dict[str, DocumentRow] = {}
        if not ids:
            return found
        t = S.document
        # One short read, closed before anything slow happens: with SQLite every transaction
        # holds the write lock, and the in-process registry needs it during ITI-41.
        with self.engine.connect() as conn, read_only(conn):
            if len(ids) == 1:
                results = [conn.execute(_ONE, {"uid": ids[0]})]
            else:
                results = (conn.execute(select(t).where(t.c.unique_id.in_(ids[i:i + _CHUNK])))
                           for i in range(0, len(ids), _CHUNK))
            for result in results:
                for r in result:
                    found[r.unique_id] = DocumentRow(r.unique_id, r.hash, r.size, r.mime_type, r.location,
                                                     r.repository_unique_id, r.created)
        return found

    def get(self, unique_id: str) -> DocumentRow | None:
        return self.get_many([unique_id]).get(unique_id)

    def add(self, rows: list[DocumentRow]) -> list[DocumentRow]:
        """Insert rows in one transaction; returns those whose uniqueId was already stored.

        A uniqueId can be stored twice only with the same hash (checked before the registry was
        called), so an existing row already describes the same bytes and is kept as it is.
        """
        if not rows:
            return []
        now = _dt.datetime.now(_dt.timezone.utc)
        try:
            # The caller has filtered out known uniqueIds, so one multi-row insert is the usual case.
            with self.engine.begin() as conn:
                conn.execute(insert(S.document), [_values(r, now) for r in rows])
            return []
        except IntegrityError:
            return self._add_one_by_one(rows, now)

    def _add_one_by_one(self, rows: list[DocumentRow], now: _dt.datetime) -> list[DocumentRow]:
        skipped = []
        for r in rows:
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(S.document).values(**_values(r, now)))
            except IntegrityError:
                skipped.append(r)
        return skipped

    def remove(self, unique_ids: Iterable[str],
               before_commit: Callable[[list[DocumentRow]], None]) -> list[DocumentRow]:
        """Delete the rows of these uniqueIds in one transaction; returns the rows that were there.

        before_commit gets those rows inside the transaction, for the caller to delete their files:
        if it fails the rows stay, and if the commit fails after it the rows stay too. Either way a
        retry finds every row still there and deletes what is left, so no document is kept by mistake.
        """
        ids = sorted(set(unique_ids))
        if not ids:
            return []
        t = S.document
        with self.engine.begin() as conn:
            rows = []
            for i in range(0, len(ids), _CHUNK):
                part = ids[i:i + _CHUNK]
                # Locked in uniqueId order: two removals of the same documents queue instead of deadlocking.
                q = select(t).where(t.c.unique_id.in_(part)).order_by(t.c.unique_id).with_for_update()
                rows += [DocumentRow(r.unique_id, r.hash, r.size, r.mime_type, r.location, r.repository_unique_id,
                                     r.created) for r in conn.execute(q)]
                conn.execute(delete(t).where(t.c.unique_id.in_(part)))
            before_commit(rows)
        return rows

    # --- documents awaiting the registry's outcome --------------------------------------------
    def add_pending(self, rows: list[PendingRow]) -> None:
        if not rows:
            return
        now = _dt.datetime.now(_dt.timezone.utc)
        with self.engine.begin() as conn:
            insert_rows(conn, S.pending, [{**vars(r), "created": r.created or now} for r in rows])

    def pending(self, due_before: _dt.datetime | None = None, limit: int = _CHUNK) -> list[PendingRow]:
        """Pending documents, oldest deadline first; due_before: only those whose deadline is earlier."""
        t = S.pending
        q = select(t).order_by(t.c.deadline, t.c.id).limit(limit)
        if due_before is not None:
            q = q.where(t.c.deadline < due_before)
        with self.engine.connect() as conn:
            return [PendingRow(r.id, r.unique_id, r.hash, r.size, r.mime_type, r.staged, r.repository_unique_id,
                               _utc(r.deadline), _utc(r.created)) for r in conn.execute(q)]

    def pending_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(S.pending)).scalar_one()

    def settle(self, done: list[PendingRow], rows: list[DocumentRow],
               before_commit: Callable[[], None] = lambda: None) -> list[PendingRow]:
        """In one transaction: forget the pending rows `done` and record the document rows of those that
        were still pending. Returns the pending rows this call removed: a row already gone was settled by
        someone else (the request itself, or the periodic job), who also recorded its document."""
        if not done:
            return []
        t = S.pending
        by_uid = {r.unique_id: r for r in rows}
        now = _dt.datetime.now(_dt.timezone.utc)
        mine: list[PendingRow] = []
        with self.engine.begin() as conn:
            for p in done:
                if conn.execute(delete(t).where(t.c.id == p.id)).rowcount == 1:
                    mine.append(p)
            wanted = [by_uid[p.unique_id] for p in mine if p.unique_id in by_uid]
            known = set()
            for i in range(0, len(wanted), _CHUNK):
                part = [r.unique_id for r in wanted[i:i + _CHUNK]]
                known |= set(conn.execute(select(S.document.c.unique_id).where(S.document.c.unique_id.in_(part)))
                             .scalars())
            fresh = list({r.unique_id: r for r in wanted if r.unique_id not in known}.values())
            if fresh:
                insert_rows(conn, S.document, [_values(r, now) for r in fresh])
            before_commit()
        return mine

    # --- for the consistency check -------------------------------------------------------------
    def page(self, after: str | None, limit: int) -> list[DocumentRow]:
        """Document rows in uniqueId order, after a given uniqueId."""
        t = S.document
        q = select(t).order_by(t.c.unique_id).limit(limit)
        if after is not None:
            q = q.where(t.c.unique_id > after)
        with self.engine.connect() as conn:
            return [DocumentRow(r.unique_id, r.hash, r.size, r.mime_type, r.location, r.repository_unique_id,
                                r.created) for r in conn.execute(q)]

    def locations(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(S.document.c.location)).scalars())

    def staged_keys(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(S.pending.c.staged)).scalars())

    def fix(self, row: DocumentRow) -> None:
        """Record what a repair found a document to be (its hash and size as stored)."""
        with self.engine.begin() as conn:
            conn.execute(update(S.document).where(S.document.c.unique_id == row.unique_id)
                         .values(hash=row.hash, size=row.size))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(S.document)).scalar_one()


def _utc(when: _dt.datetime | None) -> _dt.datetime | None:
    # SQLite gives back what it stored without its zone; everything stored here is UTC.
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=_dt.timezone.utc)
    return when


def _values(r: DocumentRow, now: _dt.datetime) -> dict:
    return {"unique_id": r.unique_id, "hash": r.hash, "size": r.size, "mime_type": r.mime_type,
            "location": r.location, "repository_unique_id": r.repository_unique_id, "created": r.created or now}
