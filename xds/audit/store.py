"""The audit layer's tables, in whichever database the process has (shared by every process on it):

- ``audit_record``: the outbox of ATNA records. A record is written before the answer it describes
  is sent, and stays until the audit repository has confirmed it (TLS: the peer read it all); over UDP
  it is marked sent, never confirmed, and stays. Its ``seq`` is the record's sequence number.
- ``audit_access``: the patient-facing subset (when, who, profession, organisation, action, mode,
  document title), read by the patient's access log; ``secret`` marks what legal representatives
  must not see (connexion secrète, or a document hidden from them).
- ``audit_notification``: break-the-glass and centre 15 accesses to tell the patient and the médecin
  traitant about, until the webhook took them.

Records, access entries and notifications of one request are written in one transaction (on PostgreSQL one
message, which the server runs as one). Senders
lease rows (``lease_until``) so that several processes do not send the same rows at once; a lease that
ran out (a process died while sending) makes the rows pending again: at least once, never lost.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
from dataclasses import dataclass

from sqlalchemy import (BigInteger, Boolean, Column, DateTime, Index, Integer, MetaData, String, Table, Text,
                        and_, func, or_, select, update)
from sqlalchemy.engine import Engine

from xds import migrate
from xds.db import autocommit, insert_rows, pg_insert, writer_lock

metadata = MetaData()
_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite's rowid alias must be INTEGER

audit_record = Table(
    "audit_record", metadata,
    Column("seq", _ID, primary_key=True, autoincrement=True),
    Column("record_id", String(36), nullable=False, unique=True),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("event", Text, nullable=False),
    Column("delivered", DateTime(timezone=True)),
    Column("sent", DateTime(timezone=True)),        # UDP: sent once, never confirmed
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_until", DateTime(timezone=True)),
    Column("last_error", String(300)),
    Index("ix_audit_record_pending", "delivered", "sent", "seq"),
)

audit_access = Table(
    "audit_access", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("record_id", String(36), nullable=False),
    Column("patient_key", String(300), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("person", String(256)),
    Column("person_id", String(256)),
    Column("profession", String(128)),
    Column("organisation", String(256)),
    Column("organisation_id", String(256)),
    Column("action", String(16), nullable=False),
    Column("transaction", String(16), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("document_uid", String(128)),
    Column("document_title", String(256)),
    Column("reveal_at", BigInteger),      # the document is hidden from the patient until then (epoch s)
    Column("secret", Boolean, nullable=False, default=False),
    Index("ix_audit_access_patient", "patient_key", "at"),
)

audit_notification = Table(
    "audit_notification", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("patient_key", String(300), nullable=False),
    Column("recipient", String(16), nullable=False),      # patient | treating_doctor
    Column("recipient_id", String(256)),
    Column("mode", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("person", String(256)),
    Column("organisation", String(256)),
    Column("document_title", String(256)),
    Column("delivered", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_until", DateTime(timezone=True)),
    Column("last_error", String(300)),
    Index("ix_audit_notification_pending", "delivered", "id"),
)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True)
class Access:
    """One patient-facing access entry (the columns of audit_access but the ids)."""

    patient_key: str
    at: _dt.datetime
    action: str
    transaction: str
    mode: str
    outcome: str
    person: str | None = None
    person_id: str | None = None
    profession: str | None = None
    organisation: str | None = None
    organisation_id: str | None = None
    document_uid: str | None = None
    document_title: str | None = None
    reveal_at: int | None = None
    secret: bool = False


@dataclass(frozen=True)
class Notification:
    patient_key: str
    recipient: str
    recipient_id: str | None
    mode: str
    at: _dt.datetime
    person: str | None = None
    organisation: str | None = None
    document_title: str | None = None


_ACCESS_LENGTHS = {c.name: c.type.length for c in audit_access.columns if isinstance(c.type, String)}


def _cut(value, n):
    return value[:n] if isinstance(value, str) else value


class AuditStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._writers = writer_lock(engine)
        self.is_postgres = engine.dialect.name == "postgresql"

    def migrate(self) -> None:
        migrate.upgrade(self.engine, "audit")

    # --- the request's side: one transaction, before the answer ------------------------------
    def append(self, records: list[tuple[str, str]], accesses: list[Access] = (),
               notifications: list[Notification] = (), access_records: list[str] | None = None) -> None:
        """records: (record_id, stored event) pairs. access_records: the record each access is logged under
        (by default the first: one exchange's records)."""
        now = _now()
        rows = [{"record_id": rid, "created": now, "event": text, "attempts": 0} for rid, text in records]
        rid = records[0][0] if records else ""
        under = access_records or [rid] * len(accesses)
        access_rows = [{"record_id": r, **{k: _cut(v, _ACCESS_LENGTHS.get(k)) for k, v in vars(a).items()}}
                       for r, a in zip(under, accesses)]
        note_rows = [{"created": now, "attempts": 0,
                      **{k: _cut(v, 256) if k not in ("patient_key",) else v for k, v in vars(n).items()}}
                     for n in notifications]
        if self.is_postgres:
            return self._append_at_once([(audit_record, rows), (audit_access, access_rows),
                                         (audit_notification, note_rows)])
        with self._writing(), self.engine.begin() as conn:
            insert_rows(conn, audit_record, rows)
            insert_rows(conn, audit_access, access_rows)
            insert_rows(conn, audit_notification, note_rows)

    def _append_at_once(self, tables: list[tuple[Table, list[dict]]]) -> None:
        """PostgreSQL: every row of the request in one message of INSERTs (xds.db.pg_insert, as the registry
        writes a submission), outside any transaction block. The server runs such a message as one implicit
        transaction (all or nothing), so the record costs one round trip instead of BEGIN, an INSERT per
        table and COMMIT (docs/scaling.md)."""
        tables = [(table, rows) for table, rows in tables if rows]
        if not tables:
            return
        with self.engine.connect() as conn, autocommit(conn):
            cur = conn.connection.dbapi_connection.cursor()
            try:
                cur.execute(b";".join(pg_insert(cur, table, rows) for table, rows in tables))
            finally:
                cur.close()

    def _writing(self):
        return self._writers if self._writers is not None else contextlib.nullcontext()

    # --- the sender's side -------------------------------------------------------------------
    def lease_records(self, limit: int, lease_seconds: float) -> list[tuple[int, str]]:
        """Up to ``limit`` pending records, oldest first, leased to the caller: (seq, stored event)."""
        return self._lease(audit_record, audit_record.c.seq,
                           and_(audit_record.c.delivered.is_(None), audit_record.c.sent.is_(None)),
                           [audit_record.c.seq, audit_record.c.event], limit, lease_seconds)

    def _lease(self, table, key, pending, columns, limit, lease_seconds):
        now = _now()
        with self._writing(), self.engine.begin() as conn:
            rows = conn.execute(select(*columns).where(
                pending, or_(table.c.lease_until.is_(None), table.c.lease_until < now))
                .order_by(key).limit(limit)).all()
            if not rows:
                return []
            keys = [r[0] for r in rows]
            # Only the rows still unleased: another process may have taken some since the select.
            taken = conn.execute(update(table).where(
                key.in_(keys), or_(table.c.lease_until.is_(None), table.c.lease_until < now))
                .values(lease_until=now + _dt.timedelta(seconds=lease_seconds),
                        attempts=table.c.attempts + 1).returning(key)).scalars().all()
        taken = set(taken)
        return [tuple(r) for r in rows if r[0] in taken]

    def records_done(self, seqs: list[int], *, confirmed: bool) -> None:
        column = "delivered" if confirmed else "sent"
        with self._writing(), self.engine.begin() as conn:
            conn.execute(update(audit_record).where(audit_record.c.seq.in_(seqs))
                         .values({column: _now(), "lease_until": None, "last_error": None}))

    def records_failed(self, seqs: list[int], error: str, retry_in: float) -> None:
        with self._writing(), self.engine.begin() as conn:
            conn.execute(update(audit_record).where(audit_record.c.seq.in_(seqs)).values(
                lease_until=_now() + _dt.timedelta(seconds=retry_in), last_error=error[:300]))

    def lease_notifications(self, limit: int, lease_seconds: float) -> list[dict]:
        n = audit_notification
        rows = self._lease(n, n.c.id, n.c.delivered.is_(None),
                           [n.c.id, n.c.patient_key, n.c.recipient, n.c.recipient_id, n.c.mode, n.c.at,
                            n.c.person, n.c.organisation, n.c.document_title], limit, lease_seconds)
        names = ("id", "patient", "recipient", "recipient_id", "mode", "at", "person", "organisation",
                 "document_title")
        return [dict(zip(names, r)) for r in rows]

    def notification_done(self, ident: int) -> None:
        with self._writing(), self.engine.begin() as conn:
            conn.execute(update(audit_notification).where(audit_notification.c.id == ident)
                         .values(delivered=_now(), lease_until=None, last_error=None))

    def notification_failed(self, ident: int, error: str, retry_in: float) -> None:
        with self._writing(), self.engine.begin() as conn:
            conn.execute(update(audit_notification).where(audit_notification.c.id == ident).values(
                lease_until=_now() + _dt.timedelta(seconds=retry_in), last_error=error[:300]))

    def prune(self, before: _dt.datetime) -> int:
        """Forget the records the repository confirmed (or that went over UDP) before a time; pending
        records stay whatever their age. The patients' access log is never pruned here."""
        r = audit_record
        with self._writing(), self.engine.begin() as conn:
            return conn.execute(r.delete().where(
                r.c.created < before, or_(r.c.delivered.is_not(None), r.c.sent.is_not(None)))).rowcount

    # --- reading ----------------------------------------------------------------------------------
    def status(self) -> dict:
        r = audit_record
        with self.engine.connect() as conn:
            total, delivered, sent = conn.execute(select(
                func.count(), func.count(r.c.delivered), func.count(r.c.sent))).one()
            oldest = conn.execute(select(func.min(r.c.created)).where(
                r.c.delivered.is_(None), r.c.sent.is_(None))).scalar()
            error = conn.execute(select(r.c.last_error).where(
                r.c.delivered.is_(None), r.c.sent.is_(None), r.c.last_error.is_not(None))
                .order_by(r.c.seq.desc()).limit(1)).scalar()
            n = audit_notification
            n_total, n_delivered = conn.execute(select(func.count(), func.count(n.c.delivered))).one()
        return {"records": total, "delivered": delivered, "sent_unconfirmed": sent,
                "pending": total - delivered - sent,
                "oldest_pending": oldest.isoformat() if oldest else None, "last_error": error,
                "notifications": n_total, "notifications_pending": n_total - n_delivered}

    def records(self, after: int = 0, limit: int = 1000) -> list[tuple[int, str, bool, bool]]:
        r = audit_record
        with self.engine.connect() as conn:
            return [(s, e, d is not None, u is not None) for s, e, d, u in conn.execute(
                select(r.c.seq, r.c.event, r.c.delivered, r.c.sent).where(r.c.seq > after)
                .order_by(r.c.seq).limit(limit))]

    def accesses(self, patient_key: str, *, include_secret: bool, since: _dt.datetime | None = None,
                 until: _dt.datetime | None = None, limit: int = 1000) -> list[dict]:
        a = audit_access
        q = select(a).where(a.c.patient_key == patient_key)
        if not include_secret:
            q = q.where(a.c.secret.is_(False))
        if since is not None:
            q = q.where(a.c.at >= since)
        if until is not None:
            q = q.where(a.c.at < until)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(a.c.at.desc(), a.c.id.desc()).limit(limit)).mappings().all()
        return [dict(row) for row in rows]

    def notifications(self, pending_only: bool = False, limit: int = 1000) -> list[dict]:
        n = audit_notification
        q = select(n)
        if pending_only:
            q = q.where(n.c.delivered.is_(None))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(n.c.id.desc()).limit(limit)).mappings().all()]
