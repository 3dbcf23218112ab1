"""The repository's document rows: the only module that reads and writes the repo_ tables."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Callable, Iterable

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from xds.db import make_engine
from . import schema as S

_CHUNK = 500  # bound IN-lists so that long retrieve requests stay within driver limits
# Most requests name one document; a plain equality skips the IN-list expansion on every call.
_ONE = select(S.document).where(S.document.c.unique_id == bindparam("uid"))


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
        with self.engine.connect() as conn:
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

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(S.document)).scalar_one()


def _values(r: DocumentRow, now: _dt.datetime) -> dict:
    return {"unique_id": r.unique_id, "hash": r.hash, "size": r.size, "mime_type": r.mime_type,
            "location": r.location, "repository_unique_id": r.repository_unique_id, "created": r.created or now}
