"""The registry tables' layout on PostgreSQL: plain, or hash-partitioned by patient (docs/scaling.md,
"Partitions"; the setting registry_partitions).

Partitioned, every table that holds a patient's objects is split by ``HASH (patient_id)`` into N
partitions, the side tables included (their patient_id is their object's), so that a query that names
the patient reads one partition of each table and joins inside it. What a partitioned table cannot keep
moves here:

- primary keys become (id, patient_id): PostgreSQL keeps a key unique only together with the partition
  key. The entryUUIDs stay unique across the registry through ``registry_key`` (id, patient_id, unique_id), an
  unpartitioned table the store writes in the same transaction as the rows, which is also where a lookup by
  id finds its patients' partitions; ``registry_uid`` (unique_id, patient_id) does the same for uniqueIds;
- foreign keys from the side tables to reg_object go: they would have to name (id, patient_id), and
  before PostgreSQL 15 a merge that moves an object to another partition runs a foreign key's ON DELETE
  action, which would delete the moved object's index rows. The store deletes an object's index rows
  itself (RegistryStore.remove) and moves them with it (merge_patient).

SQLite has no partitioning: its layout is always plain.
"""
from __future__ import annotations

from typing import Iterable

from sqlalchemy import text
from sqlalchemy.engine import Connection

# Every table of a patient's objects, and how a row finds its object: (table, the object's id column).
OBJECT_TABLE = "reg_object"
SIDE_TABLES = (("doc_entry", "id"), ("submission_set", "id"), ("folder", "id"), ("object_code", "object_id"),
               ("object_author", "object_id"), ("reference_id", "object_id"))
ASSOCIATION_TABLE = "association"
TABLES = (OBJECT_TABLE,) + tuple(t for t, _ in SIDE_TABLES) + (ASSOCIATION_TABLE,)
# Tables with a primary key on id (plain) or (id, patient_id) (partitioned).
KEYED = (OBJECT_TABLE, "doc_entry", "submission_set", "folder", ASSOCIATION_TABLE)
KEY_TABLE = "registry_key"
UID_TABLE = "registry_uid"
MAX_PARTITIONS = 1024


def pinned(column, patients: Iterable[str]) -> list:
    """The condition that keeps a statement in these patients' partitions: an equality for one patient, which
    PostgreSQL also carries over to the tables joined on the patient."""
    found = sorted(set(patients))
    return [column == found[0]] if len(found) == 1 else [column.in_(found)]


def same_patient(side, patient_col) -> list:
    """A side table's rows of the object whose patient is patient_col; None (the plain layout): no condition."""
    return [] if patient_col is None else [side.c.patient_id == patient_col]


def key_patients(conn: Connection, ids: Iterable[str], versions: bool = False) -> set[str]:
    """The patients of these objects' and associations' entryUUIDs (registry_key, one probe each); with
    versions, also every patient another version of those objects is filed under (their uniqueId's, in
    registry_uid: an ITI-64 change files the new versions under another patient)."""
    if versions:
        return _patients(conn, "SELECT patient_id FROM registry_key WHERE id = ANY(:v) UNION "
                               "SELECT r.patient_id FROM registry_key k JOIN registry_uid r ON r.unique_id = k.unique_id "
                               "WHERE k.id = ANY(:v)", ids)
    return _patients(conn, "SELECT DISTINCT patient_id FROM registry_key WHERE id = ANY(:v)", ids)


def uid_patients(conn: Connection, unique_ids: Iterable[str]) -> set[str]:
    """The patients these uniqueIds are filed under (registry_uid: a superset, see registry.schema)."""
    return _patients(conn, "SELECT DISTINCT patient_id FROM registry_uid WHERE unique_id = ANY(:v)", unique_ids)


def lid_patients(conn: Connection, lids: Iterable[str]) -> set[str]:
    """The patients whose partitions hold versions of these logical ids: a logical id is its first
    version's entryUUID, and the versions share its uniqueId."""
    return key_patients(conn, lids, versions=True)


def _patients(conn: Connection, sql: str, values: Iterable[str]) -> set[str]:
    values = sorted(set(values))
    return set(conn.execute(text(sql), {"v": values}).scalars()) if values else set()


def layout(conn: Connection) -> int:
    """The number of hash partitions of the registry's tables; 0: plain (always on SQLite)."""
    if conn.dialect.name != "postgresql":
        return 0
    row = conn.execute(text(
        "SELECT c.relkind, (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) "
        "FROM pg_class c WHERE c.oid = to_regclass(:t)"), {"t": OBJECT_TABLE}).first()
    if row is None or row[0] != "p":
        return 0
    return int(row[1])


def check_count(n: int) -> None:
    if not 0 <= n <= MAX_PARTITIONS:
        raise ValueError(f"registry_partitions must be between 0 (plain tables) and {MAX_PARTITIONS}, not {n}")


def convert(conn: Connection, n: int) -> None:
    """Rebuild the registry's tables with n hash partitions (0: plain), keeping every row, in the
    caller's transaction: a failure leaves the tables as they were. The tables are locked meanwhile
    (their old copies are renamed first), so servers on the database wait for the end."""
    check_count(n)
    if conn.dialect.name != "postgresql":
        if n:
            raise ValueError("registry_partitions needs PostgreSQL: SQLite has no partitioned tables")
        return
    if layout(conn) == n:
        return
    if n:
        _refuse_rows_without_patient(conn)
    x = conn.exec_driver_sql
    indexes = _indexes(conn)
    # The registration-order sequence is used by the tables' defaults, never owned by one of them.
    x("ALTER SEQUENCE reg_seq OWNED BY NONE")
    for table in TABLES:
        for child in _children(conn, table):
            x(f'ALTER TABLE "{child}" RENAME TO "{child}__old"')
        x(f"ALTER TABLE {table} RENAME TO {table}__old")
        by = " PARTITION BY HASH (patient_id)" if n else ""
        x(f"CREATE TABLE {table} (LIKE {table}__old INCLUDING ALL EXCLUDING INDEXES){by}")
        x(f"ALTER TABLE {table} ALTER COLUMN patient_id {'SET' if n else 'DROP'} NOT NULL")
        for i in range(n):
            x(f"CREATE TABLE {table}_p{i} PARTITION OF {table} FOR VALUES WITH (MODULUS {n}, REMAINDER {i})")
    for table in TABLES:
        x(_copy(conn, table, n))
    for table in TABLES:
        x(f"DROP TABLE {table}__old CASCADE")
    for table in KEYED:
        # id first: the transactions and the by-id queries look rows up by id alone, one probe per partition.
        x(f"ALTER TABLE {table} ADD PRIMARY KEY (id{', patient_id' if n else ''})")
    for definition in indexes:
        x(definition)
    x(f"DROP TABLE IF EXISTS {KEY_TABLE}")
    x(f"DROP TABLE IF EXISTS {UID_TABLE}")
    if n:
        x(f"CREATE TABLE {KEY_TABLE} (id varchar(64) PRIMARY KEY, patient_id varchar(256) NOT NULL, "
          "unique_id varchar(300))")
        x(f"INSERT INTO {KEY_TABLE} (id, patient_id, unique_id) SELECT id, patient_id, unique_id FROM {OBJECT_TABLE} "
          f"UNION SELECT id, patient_id, NULL FROM {ASSOCIATION_TABLE} ON CONFLICT (id) DO NOTHING")
        x(f"CREATE TABLE {UID_TABLE} (unique_id varchar(300), patient_id varchar(256), "
          "PRIMARY KEY (unique_id, patient_id))")
        x(f"INSERT INTO {UID_TABLE} (unique_id, patient_id) SELECT DISTINCT unique_id, patient_id "
          f"FROM {OBJECT_TABLE} WHERE unique_id IS NOT NULL")
    else:
        for table, column in SIDE_TABLES:
            x(f"ALTER TABLE {table} ADD FOREIGN KEY ({column}) REFERENCES {OBJECT_TABLE} (id) ON DELETE CASCADE")
    for table in TABLES + ((KEY_TABLE, UID_TABLE) if n else ()):
        x(f"ANALYZE {table}")


def _refuse_rows_without_patient(conn: Connection) -> None:
    objects = conn.exec_driver_sql(f"SELECT count(*) FROM {OBJECT_TABLE} WHERE patient_id IS NULL").scalar()
    links = conn.exec_driver_sql(
        f"SELECT count(*) FROM {ASSOCIATION_TABLE} a LEFT JOIN {OBJECT_TABLE} s ON s.id = a.source "
        f"LEFT JOIN {OBJECT_TABLE} t ON t.id = a.target "
        "WHERE COALESCE(s.patient_id, t.patient_id) IS NULL").scalar()
    if objects or links:
        raise ValueError(f"cannot partition the registry by patient: {objects} registry objects have no "
                         f"patient, and {links} associations link no object that has one")


def _children(conn: Connection, table: str) -> list[str]:
    return list(conn.execute(text("SELECT i.inhrelid::regclass::text FROM pg_inherits i "
                                  "WHERE i.inhparent = to_regclass(:t)"), {"t": table}).scalars())


def _indexes(conn: Connection) -> list[str]:
    """The tables' indexes other than their primary keys, as statements that build them again."""
    rows = conn.execute(text(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
        "JOIN pg_namespace s ON s.oid = t.relnamespace "
        "WHERE t.relname = ANY(:tables) AND s.nspname = current_schema() AND NOT i.indisprimary "
        "ORDER BY 1"), {"tables": list(TABLES)}).scalars()
    # A partitioned table's index reads "ON ONLY t": built that way it would have no partition's index.
    return [d.replace(" ON ONLY ", " ON ", 1) for d in rows]


def _copy(conn: Connection, table: str, n: int) -> str:
    columns = list(conn.execute(text(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = :t ORDER BY ordinal_position"), {"t": table}).scalars())
    names = ", ".join(columns)
    if table == OBJECT_TABLE:
        return f"INSERT INTO {table} ({names}) SELECT {names} FROM {table}__old"
    if not n:
        # The plain layout keeps no patient on the side tables.
        picked = ", ".join("NULL" if c == "patient_id" else f"r.{c}" for c in columns)
        return f"INSERT INTO {table} ({names}) SELECT {picked} FROM {table}__old r"
    if table == ASSOCIATION_TABLE:
        picked = ", ".join("COALESCE(s.patient_id, t.patient_id)" if c == "patient_id" else f"r.{c}"
                           for c in columns)
        return (f"INSERT INTO {table} ({names}) SELECT {picked} FROM {table}__old r "
                f"LEFT JOIN {OBJECT_TABLE}__old s ON s.id = r.source LEFT JOIN {OBJECT_TABLE}__old t ON t.id = r.target")
    key = dict(SIDE_TABLES)[table]
    picked = ", ".join("o.patient_id" if c == "patient_id" else f"r.{c}" for c in columns)
    return (f"INSERT INTO {table} ({names}) SELECT {picked} FROM {table}__old r "
            f"JOIN {OBJECT_TABLE}__old o ON o.id = r.{key}")
