"""The replay cache in the database: an Assertion/@ID is used once, by any process or host that shares
the database, until the assertion expires. The insert is the check: the primary key refuses a second
use atomically, with no read-then-write race between processes."""
from __future__ import annotations

import datetime as _dt
import threading

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, delete, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

metadata = MetaData()

replay = Table(
    "sec_replay", metadata,
    Column("assertion_id", String(256), primary_key=True),
    Column("expires", DateTime(timezone=True), nullable=False),
    Index("ix_sec_replay_expires", "expires"),
)

_PURGE_EVERY = 1000  # first uses between deletions of expired entries


class DatabaseReplayCache:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._uses = 0
        self._lock = threading.Lock()

    def first_use(self, assertion_id: str, until: _dt.datetime, now: _dt.datetime) -> bool:
        with self._lock:
            self._uses += 1
            purge = self._uses % _PURGE_EVERY == 1
        with self.engine.begin() as conn:
            if purge:
                conn.execute(delete(replay).where(replay.c.expires < now))
            # An expired entry of the same id (a clock gone back, or not purged yet) no longer counts.
            conn.execute(delete(replay).where(replay.c.assertion_id == assertion_id, replay.c.expires < now))
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(replay).values(assertion_id=assertion_id[:256], expires=until))
        except IntegrityError:
            return False
        return True
