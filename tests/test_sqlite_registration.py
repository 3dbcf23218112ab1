"""The SQLite registration path's own statements (registry/store.py): the lock-and-find lookups in one
statement, the registration order from one UPDATE ... RETURNING, and the rows through sqlite3's
executemany (xds.db.sqlite_insert); each answers what the portable statements they replace answered."""
from __future__ import annotations

from sqlalchemy import select

from registry import schema as S
from registry import store as store_module
from registry.register import register
from registry.service import RegistryConfig
from registry.store import RegistryStore
from tests.helpers import new_pid
from xds import builder
from xds.db import sqlite_insert
from xds import constants as C
from xds.errors import XdsException


def fresh(tmp_path) -> RegistryStore:
    store = RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}")
    store.migrate()
    return store


def submit(store, pid, n=1):
    req = builder.simple_submission(pid, n)
    register(store, req, RegistryConfig())
    return req


def test_the_lookups_answer_as_the_portable_statements(tmp_path):
    store = fresh(tmp_path)
    pid, merged, unknown = new_pid(), new_pid(), new_pid()
    store.add_patient(pid)
    store.add_patient(merged)
    store.merge_patient(merged, pid)
    submit(store, pid)
    with store.transaction() as conn:
        rows = conn.execute(select(S.registry_object.c.id, S.registry_object.c.unique_id, S.registry_object.c.kind)
                            ).all()
        assoc = conn.execute(select(S.association.c.id)).scalar()
        entry = next(r for r in rows if r.kind == S.KIND_DOCUMENT_ENTRY)
        uids = [entry.unique_id, "1.2.3.4.5.unheld"]
        ids = [entry.id, assoc, "urn:uuid:00000000-0000-4000-8000-000000000000"]
        for key in (pid, merged, unknown):
            fast = store.lock_and_prefetch(conn, uids, key, ids)
            holders = store.by_unique_ids(conn, uids)
            row = store.patient_row(key, conn)
            portable = (holders, (bool(row[1]), row[2]) if row else None,
                        set(store.objects(conn, ids)) | set(store.associations(conn, ids)))
            assert fast == portable
        holders, patient, taken = store.lock_and_prefetch(conn, uids, merged, ids)
        assert [(h.unique_id, bool(hash_)) for h, hash_ in holders] == [(entry.unique_id, True)]
        assert patient == (False, store_module.patient_key(pid))  # merged: inactive, pointing at the survivor
        assert taken == {entry.id, assoc}
        assert store.lock_and_prefetch(conn, [], None, []) == ([], None, set())


def test_registration_order_is_consecutive_from_one(tmp_path):
    store = fresh(tmp_path)
    pid = new_pid()
    store.add_patient(pid)
    submit(store, pid, 2)   # a SubmissionSet, two DocumentEntries, two HasMember associations
    submit(store, pid, 1)
    with store.transaction() as conn:
        seqs = sorted([*conn.execute(select(S.registry_object.c.seq)).scalars(),
                       *conn.execute(select(S.association.c.seq)).scalars()])
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 5 + 3


def test_a_submission_past_one_statement_takes_the_portable_path(tmp_path):
    store = fresh(tmp_path)
    pid = new_pid()
    store.add_patient(pid)
    submit(store, pid, 260)   # 261 objects and 260 associations: more ids than one statement binds
    with store.transaction() as conn:
        ids = conn.execute(select(S.registry_object.c.id).where(
            S.registry_object.c.kind == S.KIND_DOCUMENT_ENTRY)).scalars().all()
    assert len(ids) == 260
    # An entryUUID already taken is refused on that path too, and nothing of the submission is kept.
    many = builder.simple_submission(pid, 260)
    first = next(many.iter(f"{{{C.NS_RIM}}}ExtrinsicObject"))
    for a in many.iter(f"{{{C.NS_RIM}}}Association"):
        if a.get("targetObject") == first.get("id"):
            a.set("targetObject", ids[0])
    first.set("id", ids[0])
    try:
        register(store, many, RegistryConfig())
        raise AssertionError("a taken entryUUID was registered")
    except XdsException as exc:
        assert any(ids[0] in e.message for e in exc.errors)
    with store.transaction() as conn:
        assert len(conn.execute(select(S.registry_object.c.id)).all()) == 261


def test_rows_keep_sqlalchemys_defaults(tmp_path):
    store = fresh(tmp_path)
    pid = store_module.patient_key(new_pid())
    with store.transaction() as conn:
        # patient.active has a Python-side default only SQLAlchemy fills in: that table keeps its path.
        sqlite_insert(conn, S.patient, [{"patient_id": pid}])
        # Rows of one batch whose columns come in another order keep it too (values bound by name).
        sqlite_insert(conn, S.patient, [{"patient_id": pid + "a", "active": False},
                                                      {"active": True, "patient_id": pid + "b"}])
        got = dict(conn.execute(select(S.patient.c.patient_id, S.patient.c.active)
                                .where(S.patient.c.patient_id.like(pid + "%"))).all())
    assert got == {pid: True, pid + "a": False, pid + "b": True}


def test_values_are_stored_as_sqlalchemy_stores_them(tmp_path):
    """Datetimes and booleans through their columns' bind processors: read back equal, and stored with the
    same text as SQLAlchemy's own INSERT (the audit outbox and the repository's pending rows use this)."""
    import datetime as dt

    from sqlalchemy import insert, text

    from xds.audit.store import AuditStore, audit_record

    store = AuditStore(fresh(tmp_path).engine)
    store.migrate()
    at = dt.datetime(2026, 12, 7, 18, 30, 1, 123456, tzinfo=dt.timezone.utc)
    with store.engine.begin() as conn:
        sqlite_insert(conn, audit_record, [{"record_id": "a" * 36, "created": at, "event": "e", "attempts": 0}])
        conn.execute(insert(audit_record), {"record_id": "b" * 36, "created": at, "event": "e", "attempts": 0})
        stored = conn.execute(text("SELECT record_id, created FROM audit_record ORDER BY record_id")).all()
        read = conn.execute(select(audit_record.c.created).order_by(audit_record.c.record_id)).scalars().all()
    assert stored[0][1] == stored[1][1]
    assert read[0] == read[1] and read[0].replace(tzinfo=dt.timezone.utc) == at


def test_a_refused_row_raises_as_sqlalchemy_would(tmp_path):
    from sqlalchemy.exc import IntegrityError

    store = fresh(tmp_path)
    pid = store_module.patient_key(new_pid())
    with store.transaction() as conn:
        sqlite_insert(conn, S.patient, [{"patient_id": pid, "active": True, "merged_into": None}])
    try:
        with store.transaction() as conn:
            sqlite_insert(conn, S.patient, [{"patient_id": pid, "active": True, "merged_into": None}])
        raise AssertionError("a second row with the same key was stored")
    except IntegrityError:
        pass
    with store.transaction() as conn:   # the failed transaction was rolled back, the store still writes
        assert conn.execute(select(S.patient.c.patient_id).where(S.patient.c.patient_id == pid)).scalar() == pid
