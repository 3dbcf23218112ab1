"""The registry's storage: RegistryStore, and the stored queries' SQL.

The storage layer is this module with registry.query.filters, registry.query.queries and
registry.query.scope (the ITI-18 SQL, which runs on a reading connection opened here), and
registry.access (the patients' access states), and registry.partitions (the tables' layout: plain, or
partitioned by patient); it alone reads and writes the registry tables
(registry.schema). The transactions (register, update, delete, route, the
patient feed, and the ITI-18 handler in registry.query) reach the database through
RegistryStore, or, for ITI-18, through the query functions; they take nothing else from
registry.schema than its KIND_* constants. tests/test_registry_layout.py checks this.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

from lxml import etree
from sqlalchemy import Table, and_, delete, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_upsert
from sqlalchemy.engine import Connection, Engine

from xds import constants as C
from xds.db import make_engine, pg_insert, read_only, sqlite_insert, writer_lock
from xds.ebrim import to_element
from xds.hl7 import patient_key
from xds.model import Association, DocumentEntry, Folder, RegistryObject, SubmissionSet
from xds.xmlsafe import parse as safe_parse, parse_own
from . import bare_association, partitions as partitioning, schema as S, splice

RIM = C.NS_RIM
_CHUNK = 500  # bound IN-lists so large submissions stay within driver limits


def _key(patient_id: str | None) -> str | None:
    return patient_key(patient_id) if patient_id else patient_id


def chunks(seq: Sequence, n: int = _CHUNK) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _sqlite_writer_lock(engine: Engine) -> threading.RLock:
    # One lock per engine, shared by every store built on it (the repository and the audit outbox too).
    return writer_lock(engine)


@dataclass
class ObjectRow:
    id: str
    lid: str
    version: int
    kind: str
    status: str
    patient_id: str | None
    unique_id: str | None


@dataclass
class AssociationRow:
    id: str
    type: str
    source: str
    target: str
    status: str
    ss_status: str | None


class RegistryStore:
    def __init__(self, engine: Engine | str, partitions: int | None = None):
        self.engine = make_engine(engine) if isinstance(engine, str) else engine
        self.is_postgres = self.engine.dialect.name == "postgresql"
        # The setting registry_partitions (registry/partitions.py): the layout migrate() makes in a new
        # database and expects in an existing one; None: whatever the database has.
        self.partitions_setting = partitions
        self._partitions: int | None = None
        # SQLite has one writer at a time and makes the others poll with growing sleeps; queueing this
        # process's writers on a lock hands the database over at once instead.
        self._writers = None if self.is_postgres else _sqlite_writer_lock(self.engine)

    def create_schema(self) -> None:
        S.metadata.create_all(self.engine)

    def migrate(self) -> None:
        """Create or upgrade the registry tables to the newest revision (see xds.migrate)."""
        # Imported here so that only startup pays for loading Alembic.
        from xds import migrate

        wanted = self.partitions_setting
        if wanted:
            partitioning.check_count(wanted)
            if not self.is_postgres:
                raise ValueError("registry_partitions needs PostgreSQL: SQLite has no partitioned tables")
        migrate.upgrade(self.engine, "registry", attributes={"registry_partitions": wanted or 0})
        self._partitions = None
        found = self.partitions
        if wanted is not None and found != wanted:
            raise RuntimeError(
                f"the registry database's tables are {_layout_name(found)}, but registry_partitions asks for "
                f"{_layout_name(wanted)}: `xds db partition` rebuilds them so (every row rewritten, the tables "
                f"locked meanwhile), or set registry_partitions = {found}")

    @property
    def partitions(self) -> int:
        """The hash partitions of the registry's tables in the database (0: plain), read once."""
        if self._partitions is None:
            with self.engine.connect().execution_options(xds_read_only=True) as c:
                self._partitions = partitioning.layout(c)
        return self._partitions

    @property
    def partitioned(self) -> bool:
        return self.partitions > 0

    def repartition(self, n: int) -> None:
        """Rebuild the registry's tables with n partitions (0: plain), in one transaction."""
        with self.transaction() as c:
            partitioning.convert(c, n)
        self._partitions = None

    def _same_patient(self, side: Table, obj: Table) -> list:
        return partitioning.same_patient(side, obj.c.patient_id if self.partitioned else None)

    # Partitioned: where rows named by id, uniqueId or logical id are (registry/partitions.py).
    key_patients = staticmethod(partitioning.key_patients)
    uid_patients = staticmethod(partitioning.uid_patients)
    lid_patients = staticmethod(partitioning.lid_patients)

    def _pin(self, conn: Connection, table: Table, ids: Sequence[str], patients: Iterable[str] | None = None) -> list:
        """Partitioned: the condition that keeps a statement about these ids (or rows linked to them) in their
        patients' partitions, instead of probing every partition; the patients are read from registry_key
        unless given. [] in the plain layout."""
        if not self.partitioned:
            return []
        if patients is None:
            patients = self.key_patients(conn, ids)
        return partitioning.pinned(table.c.patient_id, patients)

    def _by_ids(self, conn: Connection, table: Table, ids: Sequence[str], patients: Iterable[str] | None = None,
                col=None) -> list:
        return [(table.c.id if col is None else col).in_(list(ids)), *self._pin(conn, table, ids, patients)]

    def _by_refs(self, conn: Connection, table: Table, refs: Sequence[str], uids: bool = True) -> list:
        """Partitioned: the pin of a statement about objects named by id, logical id or (uids) uniqueId."""
        if not self.partitioned:
            return []
        found = self.lid_patients(conn, refs) | (self.uid_patients(conn, refs) if uids else set())
        return self._pin(conn, table, (), found)

    def _by_uids(self, conn: Connection, table: Table, uids: Sequence[str]) -> list:
        return [table.c.unique_id.in_(list(uids)),
                *(self._pin(conn, table, (), self.uid_patients(conn, uids)) if self.partitioned else [])]

    def _by_lids(self, conn: Connection, table: Table, lids: Sequence[str]) -> list:
        return [table.c.lid.in_(list(lids)),
                *(self._pin(conn, table, (), self.lid_patients(conn, lids)) if self.partitioned else [])]

    def joined(self, side: Table, key, obj: Table = S.registry_object):
        """The join condition of a side table's key column to its object: in the partitioned layout with the
        patient too, so that the join stays in the object's partition instead of probing every one."""
        return and_(key == obj.c.id, *self._same_patient(side, obj))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        if self._writers is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._writers, self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        # SQLite: a deferred BEGIN, one snapshot for every statement of the read.
        with self.engine.connect().execution_options(xds_read_only=True) as conn, read_only(conn):
            yield conn

    # --- serialisation of writers -----------------------------------------------------
    def lock_unique_ids(self, conn: Connection, unique_ids: Iterable[str]) -> None:
        """Serialise concurrent registrations of the same uniqueIds until commit.

        SQLite already holds its write lock (BEGIN IMMEDIATE); PostgreSQL takes a transaction
        advisory lock per uniqueId, in a fixed order so that two submissions cannot deadlock.
        """
        uids = sorted(set(unique_ids))
        if not self.is_postgres or not uids:
            return
        conn.execute(text("SELECT count(pg_advisory_xact_lock(hashtext(u))) FROM "
                          "(SELECT unnest(CAST(:uids AS text[])) AS u ORDER BY 1) AS ordered"), {"uids": uids})

    def next_seq(self, conn: Connection, n: int) -> int | None:
        """First of n consecutive registration-order numbers; None where the database draws them itself."""
        if self.is_postgres:
            return None
        if _SQLITE_RETURNING:
            got = _driver_rows(conn, "UPDATE reg_counter SET value = value + ? WHERE name = 'seq' RETURNING value",
                               (n,))
            if got:
                return got[0][0] - n + 1
            conn.execute(insert(S.counter).values(name="seq", value=n))
            return 1
        cur = conn.execute(select(S.counter.c.value).where(S.counter.c.name == "seq")).scalar()
        if cur is None:
            conn.execute(insert(S.counter).values(name="seq", value=n))
            return 1
        conn.execute(update(S.counter).where(S.counter.c.name == "seq").values(value=cur + n))
        return cur + 1

    # --- patients ------------------------------------------------------------------------
    def add_patient(self, patient_id: str, conn: Connection | None = None) -> None:
        patient_id = patient_key(patient_id)
        with self._conn(conn) as c:
            row = c.execute(select(S.patient).where(S.patient.c.patient_id == patient_id)).first()
            if row is None:
                c.execute(insert(S.patient).values(patient_id=patient_id, active=True))
            elif not row.active and row.merged_into is None:
                c.execute(update(S.patient).where(S.patient.c.patient_id == patient_id).values(active=True))

    def merge_patient(self, subsumed: str, surviving: str, conn: Connection | None = None) -> None:
        """ITI-8 A40: the subsumed id stops being accepted; its records move to the survivor.

        The stored metadata takes the survivor's CX as the feed sent it; the index, its key."""
        shown, subsumed, surviving = surviving, patient_key(subsumed), patient_key(surviving)
        with self._conn(conn) as c:
            self.add_patient(surviving, c)
            row = c.execute(select(S.patient).where(S.patient.c.patient_id == subsumed)).first()
            if row is None:
                c.execute(insert(S.patient).values(patient_id=subsumed, active=False, merged_into=surviving))
            else:
                c.execute(update(S.patient).where(S.patient.c.patient_id == subsumed)
                          .values(active=False, merged_into=surviving))
            # Re-point the registry's index, and the patientId in the kept XML, to the survivor.
            rows = c.execute(select(S.registry_object.c.id, S.registry_object.c.lid, S.registry_object.c.version,
                                    S.registry_object.c.xml, S.registry_object.c.unique_id)
                             .where(S.registry_object.c.patient_id == subsumed)).all()
            for r in rows:
                el = safe_parse(r.xml.encode(), "stored object")
                for ei in el.findall(f"{{{RIM}}}ExternalIdentifier"):
                    if ei.get("identificationScheme") in (C.DE_PATIENT_ID, C.SS_PATIENT_ID, C.FOLDER_PATIENT_ID):
                        ei.set("value", shown)
                xml, ready = splice.prepare(etree.tostring(el, encoding="unicode"), r.lid, r.version)
                c.execute(update(S.registry_object).where(S.registry_object.c.patient_id == subsumed,
                                                          S.registry_object.c.id == r.id)
                          .values(patient_id=surviving, xml=xml, ready=ready))
            if self.partitioned and rows:
                self._move_rows(c, [r.id for r in rows], {r.unique_id for r in rows if r.unique_id}, subsumed,
                                surviving)

    def _move_rows(self, conn: Connection, ids: list[str], uids: set[str], subsumed: str, surviving: str) -> None:
        """The partitioned layout: the index rows and associations of moved objects follow them to the
        survivor's partition (an UPDATE of the partition key moves a row between partitions)."""
        a = S.association
        moved_links = []
        for part in chunks(sorted(ids)):
            for table, col in ((S.doc_entry, S.doc_entry.c.id), (S.submission_set, S.submission_set.c.id),
                               (S.folder, S.folder.c.id), (S.object_code, S.object_code.c.object_id),
                               (S.object_author, S.object_author.c.object_id),
                               (S.reference_id, S.reference_id.c.object_id)):
                conn.execute(update(table).where(table.c.patient_id == subsumed, col.in_(part))
                             .values(patient_id=surviving))
            for end in (a.c.source, a.c.target):
                moved_links += conn.execute(update(a).where(a.c.patient_id == subsumed, end.in_(part))
                                            .values(patient_id=surviving).returning(a.c.id)).scalars().all()
        k = S.registry_key
        for part in chunks(sorted(set(ids) | set(moved_links))):
            conn.execute(update(k).where(k.c.id.in_(part)).values(patient_id=surviving))
        u = S.registry_uid
        for part in chunks(sorted(uids)):
            conn.execute(pg_upsert(u).values([dict(unique_id=x, patient_id=surviving) for x in part])
                         .on_conflict_do_nothing())
            conn.execute(delete(u).where(u.c.patient_id == subsumed, u.c.unique_id.in_(part)))

    def patient_known(self, conn: Connection, patient_id: str) -> bool:
        row = conn.execute(select(S.patient.c.active).where(S.patient.c.patient_id == patient_key(patient_id))).first()
        return bool(row and row.active)

    def merged_into(self, conn: Connection, patient_id: str) -> str | None:
        return conn.execute(select(S.patient.c.merged_into)
                            .where(S.patient.c.patient_id == patient_key(patient_id))).scalar()

    def filed_under(self, conn: Connection, patient_id: str, kind: str) -> list[tuple[ObjectRow, str]]:
        """ITI-64: the Approved objects of one kind filed under a patient, each with its stored XML, in
        registration order; on PostgreSQL locked until commit, so that no writer changes them meanwhile."""
        t = S.registry_object
        q = (select(t.c.id, t.c.lid, t.c.version, t.c.kind, t.c.status, t.c.patient_id, t.c.unique_id, t.c.xml)
             .where(t.c.patient_id == patient_key(patient_id), t.c.kind == kind, t.c.status == C.STATUS_APPROVED)
             .order_by(t.c.seq))
        if self.is_postgres:
            q = q.with_for_update()
        return [(ObjectRow(*r[:7]), r.xml) for r in conn.execute(q)]

    def list_patients(self, after: str | None = None, limit: int | None = None) -> list[tuple[str, bool, str | None]]:
        """(id, active, merged into) in id order; a page of them after an id, for registries too large to
        list at once."""
        t = S.patient
        q = select(t.c.patient_id, t.c.active, t.c.merged_into).order_by(t.c.patient_id)
        if after is not None:
            q = q.where(t.c.patient_id > after)
        if limit is not None:
            q = q.limit(limit)
        with self.reading() as c:
            return [tuple(r) for r in c.execute(q)]

    def patient_row(self, patient_id: str, conn: Connection | None = None) -> tuple[str, bool, str | None] | None:
        """(id, active, merged into) of one patient by its key, or None when the registry never heard of it;
        in conn's transaction when given."""
        t = S.patient
        q = select(t.c.patient_id, t.c.active, t.c.merged_into).where(t.c.patient_id == patient_key(patient_id))
        if conn is not None:
            row = conn.execute(q).first()
        else:
            with self.reading() as c:
                row = c.execute(q).first()
        return tuple(row) if row is not None else None

    @contextlib.contextmanager
    def _conn(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
        else:
            with self.transaction() as c:
                yield c

    # --- repository directory ----------------------------------------------------------------
    def add_repository(self, unique_id: str, retrieve_url: str, cert_subject: str | None = None) -> None:
        t = S.repository_directory
        with self.transaction() as c:
            c.execute(delete(t).where(t.c.repository_unique_id == unique_id))
            c.execute(insert(t).values(repository_unique_id=unique_id, retrieve_url=retrieve_url,
                                       cert_subject=cert_subject))

    def remove_repository(self, unique_id: str) -> bool:
        t = S.repository_directory
        with self.transaction() as c:
            return c.execute(delete(t).where(t.c.repository_unique_id == unique_id)).rowcount > 0

    def repositories(self) -> dict[str, tuple[str, str | None]]:
        """repositoryUniqueId -> (retrieve URL, certificate subject)."""
        t = S.repository_directory
        with self.reading() as c:
            return {r.repository_unique_id: (r.retrieve_url, r.cert_subject)
                    for r in c.execute(select(t).order_by(t.c.repository_unique_id))}

    # --- what the repositories settle against ---------------------------------------------
    def registered_documents(self, conn: Connection, repository_id: str, unique_ids: Sequence[str] | None = None,
                             after: str | None = None, limit: int | None = None) -> list[tuple]:
        """(uniqueId, hash, size, status, mimeType) of the DocumentEntries held by one repository, every version
        and every status, in uniqueId order: either those of unique_ids, or a page after `after`."""
        t, d = S.registry_object, S.doc_entry
        q = (select(t.c.unique_id, d.c.hash, d.c.size, t.c.status, d.c.mime_type).select_from(t.join(d, self.joined(d, d.c.id)))
             .where(d.c.repository_unique_id == repository_id).order_by(t.c.unique_id, t.c.version))
        if unique_ids is not None:
            out = []
            for part in chunks(sorted(set(unique_ids))):
                out += [tuple(r) for r in conn.execute(q.where(*self._by_uids(conn, t, part)))]
            return sorted(out, key=lambda r: r[0])
        if after is not None:
            q = q.where(t.c.unique_id > after)
        if limit is not None:
            q = q.limit(limit)
        return [tuple(r) for r in conn.execute(q)]

    # --- lookups used by registration ------------------------------------------------------
    def objects(self, conn: Connection, ids: Iterable[str], share_lock: bool = False) -> dict[str, ObjectRow]:
        """Registry objects by id. share_lock keeps them from being removed (ITI-62, which takes
        FOR UPDATE) until this transaction ends, for a submission that links to them."""
        ids = sorted(set(ids))
        out: dict[str, ObjectRow] = {}
        t = S.registry_object
        for part in chunks(ids):
            q = select(t.c.id, t.c.lid, t.c.version, t.c.kind, t.c.status, t.c.patient_id,
                       t.c.unique_id).where(*self._by_ids(conn, t, part))
            if share_lock and self.is_postgres:
                q = q.order_by(t.c.id).with_for_update(read=True)
            for r in conn.execute(q):
                out[r.id] = ObjectRow(*r)
        return out

    def associations(self, conn: Connection, ids: Iterable[str], share_lock: bool = False
                     ) -> dict[str, AssociationRow]:
        ids = sorted(set(ids))
        out: dict[str, AssociationRow] = {}
        t = S.association
        for part in chunks(ids):
            q = select(t.c.id, t.c.type, t.c.source, t.c.target, t.c.status, t.c.ss_status).where(
                *self._by_ids(conn, t, part))
            if share_lock and self.is_postgres:
                q = q.order_by(t.c.id).with_for_update(read=True)
            for r in conn.execute(q):
                out[r.id] = AssociationRow(*r)
        return out

    def lock_and_prefetch(self, conn: Connection, unique_ids: Iterable[str], patient_id: str | None,
                          ids: Iterable[str]) -> tuple[list[tuple[ObjectRow, str | None]], tuple[bool, str | None] | None,
                                                       set[str]]:
        """What ITI-42's checks read first: the holders of the uniqueIds, locked (lock_unique_ids, then
        by_unique_ids), the patient's (active, merged into) or None when unknown, and which of ids an object or
        association already has. On PostgreSQL in one round trip (two statements, each with its own snapshot,
        so the lookup sees whatever a transaction we waited for committed)."""
        uids, ids = sorted(set(unique_ids)), sorted(set(ids))
        key = patient_key(patient_id) if patient_id else None
        if not self.is_postgres and len(uids) + len(ids) <= _CHUNK:
            return self._prefetch_sqlite(conn, uids, key, ids)
        if not self.is_postgres or not uids:
            self.lock_unique_ids(conn, uids)
            holders = self.by_unique_ids(conn, uids)
            taken = set(self.objects(conn, ids)) | set(self.associations(conn, ids)) if ids else set()
            row = self.patient_row(key, conn) if key else None
            return holders, (bool(row[1]), row[2]) if row else None, taken
        if self.partitioned:
            return self._lock_and_prefetch_partitioned(conn, uids, key, ids)
        # psycopg2 answers the last statement only: the three lookups are one SELECT, told apart by their
        # first column; the second statement's snapshot is taken after the locks are held.
        rows = _driver_rows(
            conn, "SELECT count(pg_advisory_xact_lock(hashtext(u))) FROM "
                  "(SELECT unnest(%(u)s::text[]) AS u ORDER BY 1) AS ordered; "
                  "SELECT 'u', o.id, o.lid, o.version, o.kind, o.status, o.patient_id, o.unique_id, d.hash "
                  "FROM reg_object o LEFT JOIN doc_entry d ON d.id = o.id WHERE o.unique_id = ANY(%(u)s) "
                  "UNION ALL SELECT 'p', NULL, p.merged_into, CASE WHEN p.active THEN 1 ELSE 0 END, NULL, "
                  "NULL, NULL, NULL, NULL FROM patient p WHERE p.patient_id = %(p)s "
                  "UNION ALL SELECT 'i', o.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM reg_object o "
                  "WHERE o.id = ANY(%(i)s) "
                  "UNION ALL SELECT 'i', a.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM association a "
                  "WHERE a.id = ANY(%(i)s)", {"u": uids, "p": key, "i": ids})
        holders = [(ObjectRow(*r[1:8]), r[8]) for r in rows if r[0] == "u"]
        patient = next(((bool(r[3]), r[2]) for r in rows if r[0] == "p"), None)
        return holders, patient, {r[1] for r in rows if r[0] == "i"}

    @staticmethod
    def _prefetch_sqlite(conn: Connection, uids: list[str], key: str | None, ids: list[str]):
        """lock_and_prefetch on SQLite, whose write lock the transaction already holds (BEGIN IMMEDIATE): the
        three lookups in one statement on sqlite3's own cursor, where the portable path runs four through
        SQLAlchemy."""
        marks = lambda n: ", ".join("?" * n) or "NULL"  # noqa: E731 - IN (NULL) matches nothing
        sql = _SQLITE_PREFETCH.format(u=marks(len(uids)), i=marks(len(ids)))
        rows = _driver_rows(conn, sql, (*uids, key or "", *ids, *ids))
        holders = [(ObjectRow(*r[1:8]), r[8]) for r in rows if r[0] == "u"]
        patient = next(((bool(r[3]), r[2]) for r in rows if r[0] == "p"), None) if key else None
        return holders, patient, {r[1] for r in rows if r[0] == "i"}

    def _lock_and_prefetch_partitioned(self, conn: Connection, uids: list[str], key: str | None, ids: list[str]):
        """lock_and_prefetch on partitioned tables: the locks, then the patient, the taken ids (registry_key)
        and the patients holding the uniqueIds (registry_uid) in one round trip; the holders themselves, read
        in those patients' partitions, only when there are any (a new document has none)."""
        rows = _driver_rows(
            conn, "SELECT count(pg_advisory_xact_lock(hashtext(u))) FROM "
                  "(SELECT unnest(%(u)s::text[]) AS u ORDER BY 1) AS ordered; "
                  "SELECT 'p', p.merged_into, CASE WHEN p.active THEN 1 ELSE 0 END FROM patient p "
                  "WHERE p.patient_id = %(p)s "
                  "UNION ALL SELECT 'i', k.id, NULL::int FROM registry_key k WHERE k.id = ANY(%(i)s) "
                  "UNION ALL SELECT DISTINCT 'h', r.patient_id, NULL::int FROM registry_uid r "
                  "WHERE r.unique_id = ANY(%(u)s)", {"u": uids, "p": key, "i": ids})
        patient = next(((bool(r[2]), r[1]) for r in rows if r[0] == "p"), None)
        holding = {r[1] for r in rows if r[0] == "h"}
        holders = self._holders(conn, uids, holding) if holding else []
        return holders, patient, {r[1] for r in rows if r[0] == "i"}

    def _holders(self, conn: Connection, uids: Sequence[str], patients: Iterable[str] | None = None
                 ) -> list[tuple[ObjectRow, str | None]]:
        t, d = S.registry_object, S.doc_entry
        out = []
        for part in chunks(list(uids)):
            where = ([t.c.unique_id.in_(list(part)), *self._pin(conn, t, (), patients)] if patients is not None
                     else self._by_uids(conn, t, part))
            q = (select(t.c.id, t.c.lid, t.c.version, t.c.kind, t.c.status, t.c.patient_id, t.c.unique_id, d.c.hash)
                 .select_from(t.outerjoin(d, self.joined(d, d.c.id))).where(*where))
            for r in conn.execute(q):
                out.append((ObjectRow(*r[:7]), r.hash))
        return out

    def by_unique_ids(self, conn: Connection, unique_ids: Iterable[str]) -> list[tuple[ObjectRow, str | None]]:
        """Objects holding any of these uniqueIds, with the DocumentEntry hash where there is one."""
        return self._holders(conn, sorted(set(unique_ids)))

    def entry_size(self, conn: Connection, entry_id: str) -> int | None:
        """The size recorded for a DocumentEntry (None when it has none)."""
        return conn.execute(select(S.doc_entry.c.size).where(*self._by_ids(conn, S.doc_entry, [entry_id]))).scalar()

    def target_associations(self, conn: Connection, targets: Iterable[str], types: Sequence[str],
                            status: str | None = C.STATUS_APPROVED) -> list[AssociationRow]:
        t = S.association
        out = []
        for part in chunks(list(set(targets))):
            # An association belongs to its ends' patient (the registry refuses links across patients).
            q = select(t.c.id, t.c.type, t.c.source, t.c.target, t.c.status, t.c.ss_status).where(
                t.c.target.in_(part), t.c.type.in_(types), *self._pin(conn, t, part))
            if status:
                q = q.where(t.c.status == status)
            out += [AssociationRow(*r) for r in conn.execute(q)]
        return out

    def entry_type(self, conn: Connection, entry_id: str) -> str | None:
        """The objectType (stable or On-Demand) of a registered DocumentEntry."""
        return conn.execute(select(S.doc_entry.c.entry_type)
                            .where(*self._by_ids(conn, S.doc_entry, [entry_id]))).scalar()

    def folders_holding(self, conn: Connection, doc_ids: Iterable[str]) -> list[AssociationRow]:
        """Approved Folder->DocumentEntry HasMember associations for these entries."""
        t, o = S.association, S.registry_object
        out = []
        for part in chunks(list(set(doc_ids))):
            q = (select(t.c.id, t.c.type, t.c.source, t.c.target, t.c.status, t.c.ss_status)
                 .select_from(t.join(o, and_(o.c.id == t.c.source, *self._same_patient(t, o))))
                 .where(t.c.target.in_(part), t.c.type == C.ASSOC_HAS_MEMBER, t.c.status == C.STATUS_APPROVED,
                        o.c.kind == S.KIND_FOLDER, *self._pin(conn, t, part)))
            out += [AssociationRow(*r) for r in conn.execute(q)]
        return out

    # --- what the access policy reads (registry/guard.py) -------------------------------------
    def policy_facts(self, conn: Connection, ids: Iterable[str]) -> dict:
        """The access policy's view of registry objects (xds.security.policy.Document), by id."""
        from xds.security.policy import Document

        t, d, oc = S.registry_object, S.doc_entry, S.object_code
        out: dict = {}
        codes: dict[str, set[str]] = {}
        for part in chunks(sorted(set(ids))):
            q = (select(t.c.id, t.c.kind, t.c.patient_id, t.c.origin_org, t.c.origin_person, t.c.reveal_at,
                        d.c.type_code).select_from(t.outerjoin(d, self.joined(d, d.c.id)))
                 .where(*self._by_ids(conn, t, part)))
            rows = conn.execute(q).all()
            for r in conn.execute(select(oc.c.object_id, oc.c.code).where(
                    oc.c.object_id.in_(part), oc.c.scheme == C.DE_CONFIDENTIALITY_CODE,
                    *self._pin(conn, oc, (), {r.patient_id for r in rows}))):
                codes.setdefault(r.object_id, set()).add(r.code)
            for r in rows:
                out[r.id] = Document(r.patient_id, r.kind, r.type_code, frozenset(codes.get(r.id, ())),
                                     r.origin_org, r.origin_person, r.reveal_at)
        return out

    def audit_facts(self, conn: Connection, refs: Iterable[str]) -> dict[str, tuple]:
        """What the patient's access log says of the newest DocumentEntry whose id or uniqueId is among
        refs: ref -> (patient, uniqueId, title, confidentiality codes, reveal_at)."""
        t, oc = S.registry_object, S.object_code
        found: dict[str, tuple] = {}
        for part in chunks(sorted(set(refs))):
            rows = conn.execute(select(t.c.id, t.c.unique_id, t.c.version, t.c.patient_id, t.c.reveal_at, t.c.xml)
                                .where(or_(t.c.id.in_(part), t.c.unique_id.in_(part)),
                                       t.c.kind == S.KIND_DOCUMENT_ENTRY, *self._by_refs(conn, t, part))).all()
            ids = [r.id for r in rows]
            codes: dict[str, set[str]] = {}
            for r in conn.execute(select(oc.c.object_id, oc.c.code).where(
                    oc.c.object_id.in_(ids), oc.c.scheme == C.DE_CONFIDENTIALITY_CODE,
                    *self._pin(conn, oc, (), {r.patient_id for r in rows}))):
                codes.setdefault(r.object_id, set()).add(r.code)
            for r in rows:
                for ref in (r.id, r.unique_id):
                    if ref in part and (ref not in found or found[ref][0] < r.version):
                        found[ref] = (r.version, (r.patient_id, r.unique_id, _title(r.xml),
                                                  frozenset(codes.get(r.id, ())), r.reveal_at))
        return {ref: facts for ref, (_, facts) in found.items()}

    def ids_and_lids(self, conn: Connection, ids: Iterable[str]) -> dict[str, str]:
        """Objects whose id or logical id is among ids: id -> lid."""
        t = S.registry_object
        out = {}
        for part in chunks(sorted(set(ids))):
            for r in conn.execute(select(t.c.id, t.c.lid).where(or_(t.c.id.in_(part), t.c.lid.in_(part)),
                                                                *self._by_refs(conn, t, part, uids=False))):
                out[r.id] = r.lid
        return out

    def association_ends(self, conn: Connection, ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        t = S.association
        out = {}
        for part in chunks(sorted(set(ids))):
            for r in conn.execute(select(t.c.id, t.c.source, t.c.target).where(*self._by_ids(conn, t, part))):
                out[r.id] = (r.source, r.target)
        return out

    def newest_documents(self, conn: Connection, unique_ids: Iterable[str]) -> dict[str, str]:
        """uniqueId -> the id of its newest DocumentEntry version."""
        return {u: i for u, (i, _) in self._newest(conn, unique_ids).items()}

    def documents_in_status(self, conn: Connection, unique_ids: Iterable[str], statuses: Sequence[str]) -> set[str]:
        """The uniqueIds whose newest DocumentEntry version has one of these statuses."""
        return {u for u, (_, status) in self._newest(conn, unique_ids).items() if status in statuses}

    def _newest(self, conn: Connection, unique_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        t = S.registry_object
        out: dict[str, tuple[int, str, str]] = {}
        for part in chunks(sorted(set(unique_ids))):
            for r in conn.execute(select(t.c.id, t.c.unique_id, t.c.version, t.c.status).where(
                    *self._by_uids(conn, t, part), t.c.kind == S.KIND_DOCUMENT_ENTRY)):
                if r.unique_id not in out or out[r.unique_id][0] < r.version:
                    out[r.unique_id] = (r.version, r.id, r.status)
        return {u: (i, status) for u, (_, i, status) in out.items()}

    def patients_of(self, conn: Connection, refs: Iterable[str]) -> set[str]:
        """The patients of the objects whose id, uniqueId or logical id is among refs."""
        t = S.registry_object
        out: set[str] = set()
        for part in chunks(sorted(set(refs))):
            q = select(t.c.patient_id).where(or_(t.c.id.in_(part), t.c.unique_id.in_(part),
                                                 t.c.lid.in_(part)), *self._by_refs(conn, t, part)).distinct()
            out |= {r.patient_id for r in conn.execute(q) if r.patient_id}
        return out

    # --- writes ------------------------------------------------------------------------------
    def insert_submission(self, conn: Connection, objects: Sequence[RegistryObject],
                          associations: Sequence[Association], now: str,
                          versions: Mapping[str, int] | None = None,
                          origin: tuple[str | None, str | None] = (None, None),
                          inherits: Mapping[str, str] | None = None) -> dict[str, dict]:
        """Insert Approved registry objects (DocumentEntries, SubmissionSets, Folders) and associations
        with their index rows, numbered in registration order, objects first, in one batch.

        now: the lastUpdateTime of new Folders. versions: the version number of each object that is
        a new version of a registered logical id (ITI-57), by id; every other object is version 1.
        origin: the submitter (organisation, person) recorded with new objects, now; inherits: new version id
        -> the version it follows, whose origin it keeps (the access policy's submitter and author).
        Returns each object's origin as stored (origin_org, origin_person, origin_time, reveal_at), by id.
        """
        seq = self.next_seq(conn, len(objects) + len(associations))
        origins = self._origins(conn, objects, origin, inherits or {})
        batches = self._object_rows(objects, seq, now, versions or {}, origins) + self._association_rows(
            associations, None if seq is None else seq + len(objects))
        if self.partitioned:
            batches = self._with_partition_keys(conn, batches, objects, associations)
        self.write(conn, batches)
        return origins

    def _with_partition_keys(self, conn: Connection, batches: list[tuple[Table, list[dict]]],
                             objects: Sequence[RegistryObject], associations: Sequence[Association]
                             ) -> list[tuple[Table, list[dict]]]:
        """The partitioned layout's rows: each side row with its object's patient, each association with its
        source's (else its target's), and every new id in registry_key."""
        patients = {o.id: _key(o.patient_id) for o in objects}
        ends = {e for a in associations for e in (a.source, a.target) if e not in patients}
        if ends:
            patients.update((i, r.patient_id) for i, r in self.objects(conn, ends).items())
        keys = [dict(id=o.id, patient_id=patients[o.id], unique_id=o.unique_id) for o in objects]
        for table, rows in batches:
            if table is S.association:
                for r in rows:
                    r["patient_id"] = patients.get(r["source"]) or patients.get(r["target"])
                    if r["patient_id"] is None:
                        # The checks before refuse an association to unknown objects; this is their last line.
                        raise ValueError(f"association {r['id']} links no object with a patient")
                    keys.append(dict(id=r["id"], patient_id=r["patient_id"], unique_id=None))
            elif table is not S.registry_object:
                for r in rows:
                    r["patient_id"] = patients[r["id"] if "id" in r else r["object_id"]]
        uids = sorted({(o.unique_id, patients[o.id]) for o in objects if o.unique_id})
        return batches + [(S.registry_key, keys)] + ([(S.registry_uid, [dict(unique_id=u, patient_id=p)
                                                                          for u, p in uids])] if uids else [])

    def _origins(self, conn: Connection, objects: Sequence[RegistryObject], origin: tuple[str | None, str | None],
                 inherits: Mapping[str, str]) -> dict[str, dict]:
        from xds.security.policy import one_month_after

        t = S.registry_object
        at = int(time.time())
        fresh = dict(origin_org=origin[0], origin_person=origin[1], origin_time=at,
                     reveal_at=int(one_month_after(at)))
        out = {o.id: fresh for o in objects if o.id not in inherits}
        previous = sorted(set(inherits.values()))
        found = {}
        for part in chunks(previous):
            for r in conn.execute(select(t.c.id, t.c.origin_org, t.c.origin_person, t.c.origin_time, t.c.reveal_at)
                                  .where(*self._by_ids(conn, t, part))):
                found[r.id] = dict(origin_org=r.origin_org, origin_person=r.origin_person,
                                   origin_time=r.origin_time, reveal_at=r.reveal_at)
        for new, old in inherits.items():
            out[new] = found.get(old, dict(origin_org=None, origin_person=None, origin_time=None, reveal_at=None))
        return out

    @staticmethod
    def _object_rows(objs: Sequence[RegistryObject], seq0: int | None, now: str,
                     versions: Mapping[str, int], origins: Mapping[str, dict]) -> list[tuple[Table, list[dict]]]:
        obj_rows, de_rows, ss_rows, fd_rows, code_rows, author_rows, ref_rows = [], [], [], [], [], [], []
        for i, o in enumerate(objs):
            kind = {DocumentEntry: S.KIND_DOCUMENT_ENTRY, SubmissionSet: S.KIND_SUBMISSION_SET,
                    Folder: S.KIND_FOLDER}[type(o)]
            version = versions.get(o.id, 1)
            xml, ready = stored_object(o, version)
            obj_rows.append(dict(id=o.id, lid=o.lid or o.id, version=version, kind=kind,
                                 status=C.STATUS_APPROVED, patient_id=_key(o.patient_id), unique_id=o.unique_id,
                                 xml=xml, ready=ready, **origins[o.id]))
            if seq0 is not None:
                obj_rows[-1]["seq"] = seq0 + i
            if isinstance(o, DocumentEntry):
                de_rows.append(_doc_entry_row(o))
                for scheme in (C.DE_EVENT_CODE, C.DE_CONFIDENTIALITY_CODE):
                    code_rows += [dict(object_id=o.id, scheme=scheme, code=c.key) for c in o.codes(scheme)]
                author_rows += [dict(object_id=o.id, person=a.person) for a in o.authors() if a.person]
                ref_rows += [dict(object_id=o.id, value=v) for v in (o.slot(C.REFERENCE_ID_LIST_SLOT) or [])]
            elif isinstance(o, SubmissionSet):
                ct = o.code(C.SS_CONTENT_TYPE_CODE)
                ss_rows.append(dict(id=o.id, submission_time=o.slot1("submissionTime"), source_id=o.source_id,
                                    content_type_code=ct.key if ct else None))
                author_rows += [dict(object_id=o.id, person=a.person) for a in o.authors() if a.person]
            else:
                fd_rows.append(dict(id=o.id, last_update_time=now))
                code_rows += [dict(object_id=o.id, scheme=C.FOLDER_CODE_LIST, code=c.key)
                              for c in o.codes(C.FOLDER_CODE_LIST)]
        return [(t, r) for t, r in ((S.registry_object, obj_rows), (S.doc_entry, de_rows),
                                    (S.submission_set, ss_rows), (S.folder, fd_rows), (S.object_code, code_rows),
                                    (S.object_author, author_rows), (S.reference_id, ref_rows)) if r]

    @staticmethod
    def _association_rows(assocs: Sequence[Association], seq0: int | None) -> list[tuple[Table, list[dict]]]:
        rows = [dict(id=a.id, type=a.type, source=a.source, target=a.target, status=C.STATUS_APPROVED,
                     ss_status=a.submission_set_status, xml=stored_association(a))
                for a in assocs]
        if seq0 is not None:
            for i, r in enumerate(rows):
                r["seq"] = seq0 + i
        return [(S.association, rows)] if rows else []

    def write(self, conn: Connection, batches: list[tuple[Table, list[dict]]]) -> None:
        """Insert rows into several tables. On PostgreSQL all of them go in one round trip."""
        if not batches:
            return
        if not self.is_postgres:
            for table, rows in batches:
                sqlite_insert(conn, table, rows)
            return
        cur = conn.connection.dbapi_connection.cursor()
        try:
            parts, size = [], 0
            for table, rows in batches:
                stmt = _pg_insert(cur, table, rows)
                parts.append(stmt)
                size += len(stmt)
                if size > _PG_BATCH_BYTES:
                    cur.execute(b";".join(parts))
                    parts, size = [], 0
            if parts:
                cur.execute(b";".join(parts))
        finally:
            cur.close()

    def set_status(self, conn: Connection, ids: Iterable[str], status: str) -> None:
        for part in chunks(list(set(ids))):
            conn.execute(update(S.registry_object).where(*self._by_ids(conn, S.registry_object, part))
                         .values(status=status))

    def touch_folders(self, conn: Connection, folder_ids: Iterable[str], now: str) -> None:
        for part in chunks(list(set(folder_ids))):
            conn.execute(update(S.folder).where(*self._by_ids(conn, S.folder, part)).values(last_update_time=now))

    # --- ITI-62 removal -------------------------------------------------------------------------
    def lock_for_removal(self, conn: Connection, ids: Iterable[str]
                         ) -> tuple[dict[str, ObjectRow], dict[str, AssociationRow]]:
        """The registry objects and associations among ids, locked until commit.

        On PostgreSQL the rows are locked in id order, so two removals of overlapping sets run one
        after the other instead of deadlocking; SQLite's write lock (BEGIN IMMEDIATE) does this already.
        """
        ids = sorted(set(ids))
        objs: dict[str, ObjectRow] = {}
        assocs: dict[str, AssociationRow] = {}
        t, a = S.registry_object, S.association
        for part in chunks(ids):
            q = (select(t.c.id, t.c.lid, t.c.version, t.c.kind, t.c.status, t.c.patient_id, t.c.unique_id)
                 .where(*self._by_ids(conn, t, part)).order_by(t.c.id).with_for_update())
            objs.update((r.id, ObjectRow(*r)) for r in conn.execute(q))
            q = (select(a.c.id, a.c.type, a.c.source, a.c.target, a.c.status, a.c.ss_status)
                 .where(*self._by_ids(conn, a, part)).order_by(a.c.id).with_for_update())
            assocs.update((r.id, AssociationRow(*r)) for r in conn.execute(q))
        return objs, assocs

    def associations_touching(self, conn: Connection, ids: Iterable[str]) -> list[AssociationRow]:
        """Every association, of any type and status, with one of ids as source or target (for the
        transactions' checks; the stored queries filter and order theirs: filters.associations_in_seq_order)."""
        t = S.association
        found: dict[str, AssociationRow] = {}
        for part in chunks(sorted(set(ids))):
            # An association belongs to its ends' patient (the registry refuses links across patients).
            q = select(t.c.id, t.c.type, t.c.source, t.c.target, t.c.status, t.c.ss_status).where(
                or_(t.c.source.in_(part), t.c.target.in_(part)), *self._pin(conn, t, part))
            found.update((r.id, AssociationRow(*r)) for r in conn.execute(q))
        return list(found.values())

    def remove(self, conn: Connection, object_ids: Iterable[str], association_ids: Iterable[str]) -> None:
        """Delete associations, and registry objects with every index row they own."""
        a = S.association
        object_ids, association_ids = sorted(set(object_ids)), sorted(set(association_ids))
        # Read before their keys go.
        patients = self.key_patients(conn, object_ids + association_ids) if self.partitioned else None
        for part in chunks(association_ids):
            conn.execute(delete(a).where(*self._by_ids(conn, a, part, patients)))
        owned = ((S.doc_entry, S.doc_entry.c.id), (S.submission_set, S.submission_set.c.id),
                 (S.folder, S.folder.c.id), (S.object_code, S.object_code.c.object_id),
                 (S.object_author, S.object_author.c.object_id), (S.reference_id, S.reference_id.c.object_id))
        for part in chunks(object_ids):
            # The foreign keys cascade as well, but only where the connection enforces them (SQLite needs
            # a pragma); deleting the index rows here makes the outcome independent of that.
            for table, col in owned:
                conn.execute(delete(table).where(*self._by_ids(conn, table, part, patients, col)))
            conn.execute(delete(S.registry_object).where(*self._by_ids(conn, S.registry_object, part, patients)))
        if self.partitioned:
            k = S.registry_key
            for part in chunks(object_ids + association_ids):
                conn.execute(delete(k).where(k.c.id.in_(part)))

    # --- ITI-57 metadata update ------------------------------------------------------------------
    def latest_versions(self, conn: Connection, lids: Iterable[str]) -> dict[str, tuple[ObjectRow, str | None]]:
        """The newest version of each logical id, with its objectType where it is a DocumentEntry."""
        t, d = S.registry_object, S.doc_entry
        out: dict[str, tuple[ObjectRow, str | None]] = {}
        for part in chunks(sorted(set(lids))):
            # Version chains are short, so every version is read and the newest kept here.
            q = (select(t.c.id, t.c.lid, t.c.version, t.c.kind, t.c.status, t.c.patient_id, t.c.unique_id,
                        d.c.entry_type).select_from(t.outerjoin(d, self.joined(d, d.c.id)))
                 .where(*self._by_lids(conn, t, part)))
            for r in conn.execute(q):
                row = ObjectRow(*r[:7])
                if row.lid not in out or out[row.lid][0].version < row.version:
                    out[row.lid] = (row, r.entry_type)
        return out

    def set_association_status(self, conn: Connection, ids: Iterable[str], status: str) -> None:
        for part in chunks(list(set(ids))):
            conn.execute(update(S.association).where(*self._by_ids(conn, S.association, part)).values(status=status))

    # --- reading objects back ------------------------------------------------------------------
    def load_objects(self, conn: Connection, ids: Sequence[str]) -> list[etree._Element]:
        """Registered objects as answered by queries: current status, version and lastUpdateTime."""
        found = self.object_rows(conn, ids)
        return [render(r.xml, r.status, r.lid, r.version, r.last_update_time) for r in
                (found[i] for i in ids if i in found)]

    def object_rows(self, conn: Connection, ids: Sequence[str], patients: Iterable[str] | None = None) -> dict:
        """Rows (id, lid, version, status, xml, ready, last_update_time) of registered objects, by id; patients:
        theirs, when the caller knows them (the partitioned layout then reads no registry_key)."""
        t, f = S.registry_object, S.folder
        found = {}
        for part in chunks(list(dict.fromkeys(ids))):
            q = (select(t.c.id, t.c.lid, t.c.version, t.c.status, t.c.xml, t.c.ready, f.c.last_update_time)
                 .select_from(t.outerjoin(f, self.joined(f, f.c.id))).where(*self._by_ids(conn, t, part, patients)))
            for r in conn.execute(q):
                found[r.id] = r
        return found

    def association_rows(self, conn: Connection, ids: Sequence[str], patients: Iterable[str] | None = None) -> dict:
        """Rows (id, type, source, target, status, ss_status, xml) of associations, by id; xml is None for
        a bare association (registry.bare_association). patients: as object_rows."""
        t = S.association
        found = {}
        for part in chunks(list(dict.fromkeys(ids))):
            for r in conn.execute(select(t.c.id, t.c.type, t.c.source, t.c.target, t.c.status, t.c.ss_status,
                                         t.c.xml).where(*self._by_ids(conn, t, part, patients))):
                found[r.id] = r
        return found


_PG_BATCH_BYTES = 4 * 1024 * 1024

_SQLITE_RETURNING = sqlite3.sqlite_version_info >= (3, 35)
_SQLITE_PREFETCH = (
    "SELECT 'u', o.id, o.lid, o.version, o.kind, o.status, o.patient_id, o.unique_id, d.hash "
    "FROM reg_object o LEFT JOIN doc_entry d ON d.id = o.id WHERE o.unique_id IN ({u}) "
    "UNION ALL SELECT 'p', NULL, p.merged_into, p.active, NULL, NULL, NULL, NULL, NULL FROM patient p "
    "WHERE p.patient_id = ? "
    "UNION ALL SELECT 'i', o.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM reg_object o WHERE o.id IN ({i}) "
    "UNION ALL SELECT 'i', a.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM association a WHERE a.id IN ({i})")


def _driver_rows(conn: Connection, sql: str, params: dict | tuple) -> list[tuple]:
    """The driver's own cursor, in conn's transaction: on psycopg2 several statements in one round trip (the
    rows of the last), on SQLite one statement without SQLAlchemy's handling."""
    cur = conn.connection.dbapi_connection.cursor()
    try:
        cur.execute(sql, params)
        return cur.fetchall()
    finally:
        cur.close()


def _pg_insert(cur, table: Table, rows: list[dict]) -> bytes:
    """xds.db.pg_insert; the registration order comes from the sequence."""
    draw_seq = "seq" in table.c and "seq" not in rows[0]
    stmt = pg_insert(cur, table, rows, {"seq": "nextval('reg_seq')"} if draw_seq else None)
    # A new version files its uniqueId under the patient again.
    return stmt + b" ON CONFLICT DO NOTHING" if table is S.registry_uid else stmt


def _layout_name(n: int) -> str:
    return f"hash-partitioned by patient into {n} partitions" if n else "plain (unpartitioned)"


def _doc_entry_row(o: DocumentEntry) -> dict:
    def key(scheme):
        c = o.code(scheme)
        return c.key if c else None

    size = o.slot1("size")
    return dict(
        id=o.id, entry_type=o.object_type or C.OBJECT_TYPE_STABLE,
        class_code=key(C.DE_CLASS_CODE), type_code=key(C.DE_TYPE_CODE), format_code=key(C.DE_FORMAT_CODE),
        practice_setting_code=key(C.DE_PRACTICE_SETTING_CODE), hcft_code=key(C.DE_HEALTHCARE_FACILITY_TYPE_CODE),
        creation_time=o.slot1("creationTime"), service_start_time=o.slot1("serviceStartTime"),
        service_stop_time=o.slot1("serviceStopTime"), hash=(o.slot1("hash") or None),
        size=int(size) if size and size.isdigit() else None, repository_unique_id=o.slot1("repositoryUniqueId"),
        mime_type=o.mime_type, availability=o.slot1("documentAvailability") or C.AVAILABILITY_ONLINE,
    )


def stored_xml(o: RegistryObject) -> str:
    return etree.tostring(_stored_element(o), encoding="unicode")


def stored_object(o: RegistryObject, version: int) -> tuple[str, bool]:
    """(xml, ready) as a DocumentEntry, SubmissionSet or Folder row keeps them (registry/splice.py prepare)."""
    return splice.prepare(stored_xml(o), o.lid or o.id, version)


def stored_association(a: Association) -> str | None:
    """The XML kept for an association: None when its columns say all of it (registry.bare_association)."""
    el = _stored_element(a)
    return None if bare_association.is_bare(el, a.submission_set_status) else etree.tostring(el, encoding="unicode")


def association_xml(row) -> str:
    """An association row's XML: the stored text, or the text its columns give."""
    if row.xml is not None:
        return row.xml
    return bare_association.text(row.id, row.type, row.source, row.target, C.STATUS_APPROVED, row.ss_status)


def _stored_element(o: RegistryObject) -> etree._Element:
    # The `home` attribute belongs to the community answering a query, not to stored metadata.
    o.home = None
    o.lid = o.lid or o.id
    o.status = C.STATUS_APPROVED
    return to_element(o)


_AFTER_VERSION_INFO = {f"{{{RIM}}}{n}" for n in ("Classification", "ExternalIdentifier", "ContentVersionInfo")}


def render(xml: str, status: str, lid: str | None = None, version: int | None = None,
           last_update_time: str | None = None) -> etree._Element:
    el = parse_own(xml.encode())
    el.set("status", status)
    if lid:
        el.set("lid", lid)
    if version is not None:
        vi = el.find(f"{{{RIM}}}VersionInfo")
        if vi is None:
            vi = etree.Element(f"{{{RIM}}}VersionInfo")
            pos = next((i for i, c in enumerate(el) if c.tag in _AFTER_VERSION_INFO), len(el))
            el.insert(pos, vi)
        vi.set("versionName", str(version))
    if last_update_time:
        _set_slot(el, "lastUpdateTime", last_update_time)
    return el


def _set_slot(el: etree._Element, name: str, value: str) -> None:
    for s in el.findall(f"{{{RIM}}}Slot"):
        if s.get("name") == name:
            el.remove(s)
    s = etree.Element(f"{{{RIM}}}Slot", name=name)
    vl = etree.SubElement(s, f"{{{RIM}}}ValueList")
    etree.SubElement(vl, f"{{{RIM}}}Value").text = value
    pos = sum(1 for c in el if c.tag == f"{{{RIM}}}Slot")
    el.insert(pos, s)


def _title(xml: str) -> str | None:
    """The first LocalizedString of an object's Name, as stored."""
    try:
        root = safe_parse(xml.encode("utf-8"), "stored object")
    except Exception:
        return None
    name = root.find(C.q(C.NS_RIM, "Name"))
    if name is None:
        return None
    for ls in name.iterchildren(C.q(C.NS_RIM, "LocalizedString")):
        if ls.get("value"):
            return ls.get("value")
    return None
