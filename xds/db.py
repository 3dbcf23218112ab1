"""Database engines for SQLite (embedded default) and PostgreSQL (production).

A PostgreSQL restart (or anything that ends the server's sessions) leaves the pool holding dead
connections. Two things keep that from reaching a request, without the pre-ping's round trip:
a connection is checked for the server's close when it leaves the pool, and a read-only unit of
work whose connection dies under it is run once more (`retry_read`). Writes are not run again.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import select
from typing import Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event, insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError

log = logging.getLogger(__name__)
T = TypeVar("T")


def writer_lock(engine: Engine) -> "threading.RLock | None":
    """SQLite's one writer, as a lock shared by every store on the engine (registry, repository, audit):
    writers queue on it instead of colliding in BEGIN IMMEDIATE and polling. None on PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return None
    lock = engine.__dict__.get("_xds_writer_lock")
    if lock is None:
        lock = engine.__dict__.setdefault("_xds_writer_lock", threading.RLock())
    return lock


def make_engine(url: str, **kwargs) -> Engine:
    if url.startswith("postgresql://"):
        # SQLAlchemy 2.1 defaults to psycopg 3; the project ships psycopg2.
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            # Per connection, as SQLite forgets them: WAL lets readers run beside the writer,
            # and foreign keys are off unless asked for.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            # BEGIN IMMEDIATE takes the write lock up front, so two submissions cannot both
            # read-check-then-write the same uniqueId; pysqlite's deferred BEGIN would let them.
            # Readers (marked read_only) use a deferred BEGIN so that queries do not queue behind writers.
            if conn.get_execution_options().get("xds_read_only"):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        _disable_pysqlite_begin(engine)
        return engine
    # No pre-ping: it costs every checkout a round trip (SELECT 1), and the checkout check below and
    # retry_read already keep a dead connection from a request (tests/test_pg_restart.py).
    kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "postgresql":
        event.listen(engine, "checkout", _closed_by_server)
    return engine


def _closed_by_server(dbapi_conn, _record, _proxy) -> None:
    """Refuse a pooled connection that the server has closed.

    Between transactions PostgreSQL sends an idle session nothing (no LISTEN is used here), so a
    socket with something to read holds the server's goodbye: the FATAL notice of a shutdown or an
    administrator's termination, then EOF. Unlike pre-ping this costs no round trip; it cannot see
    a peer that vanished without a word (network cut), which retry_read and the pool's invalidation
    after the first failure cover. DisconnectionError makes the pool discard it and connect anew."""
    if getattr(dbapi_conn, "closed", 0):
        raise DisconnectionError("the connection is closed")
    try:
        fd = dbapi_conn.fileno()
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLPRI)
            readable = bool(poller.poll(0))
        else:
            readable = bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError) as exc:
        raise DisconnectionError(f"the connection's socket is unusable: {exc}") from None
    if readable:
        raise DisconnectionError("the database server closed this connection while it was idle")


@contextlib.contextmanager
def autocommit(conn: Connection) -> Iterator[Connection]:
    """A PostgreSQL connection whose statements run outside any transaction block (each one, or each
    message of several, is its own implicit transaction), for the time of the block. It is psycopg2's
    own switch, which costs no round trip; SQLAlchemy's isolation_level="AUTOCOMMIT" sends
    `SET default_transaction_isolation` when the connection goes back to the pool."""
    dbapi = conn.connection.dbapi_connection
    dbapi.autocommit = True
    try:
        yield conn
    finally:
        if not dbapi.closed:   # a lost connection is discarded by the pool anyway
            dbapi.autocommit = False


def read_only(conn: Connection):
    """For a unit of work that only reads: on PostgreSQL outside a transaction block (READ COMMITTED gives
    each statement its own snapshot in a transaction or not, so a block would only add the BEGIN and
    ROLLBACK round trips); elsewhere the connection as it is (SQLite's transaction is a snapshot)."""
    return autocommit(conn) if conn.dialect.name == "postgresql" else contextlib.nullcontext(conn)


_SQLITE_INSERTS: dict = {}


def insert_rows(conn: Connection, table, rows: list[dict]) -> None:
    """INSERT rows (dicts with the same keys): on SQLite through sqlite3's executemany (sqlite_insert),
    elsewhere through SQLAlchemy."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        return sqlite_insert(conn, table, rows)
    conn.execute(insert(table), rows[0] if len(rows) == 1 else rows)


def sqlite_insert(conn: Connection, table, rows: list[dict]) -> None:
    """The rows through sqlite3's own executemany, in conn's transaction, the values converted by the
    columns' own SQLAlchemy bind processors (datetimes stored as SQLAlchemy stores them) and the statement
    made once per table and set of columns: a registration's or an audit record's INSERTs otherwise each pay
    SQLAlchemy's statement compilation and parameter handling, most of their cost on SQLite. Rows that
    leave out a column with a Python-side default (which only SQLAlchemy fills in), or whose keys differ,
    take SQLAlchemy's path."""
    cols = tuple(rows[0])
    plan = _SQLITE_INSERTS.get((table, cols), False)
    if plan is False:
        plan = _SQLITE_INSERTS[(table, cols)] = _sqlite_plan(conn.dialect, table, cols)
    if plan is None or any(tuple(r) != cols for r in rows):
        conn.execute(insert(table), rows[0] if len(rows) == 1 else rows)
        return
    sql, procs = plan
    if any(procs):
        params = [tuple(p(v) if p is not None and v is not None else v for p, v in zip(procs, r.values()))
                  for r in rows]
    else:
        params = [tuple(r.values()) for r in rows]
    cur = conn.connection.dbapi_connection.cursor()
    try:
        cur.executemany(sql, params)
    except conn.dialect.loaded_dbapi.Error as exc:
        # As SQLAlchemy would raise it (IntegrityError, OperationalError, ...), for the callers that catch those.
        raise DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect,
                                  ismulti=True) from exc
    finally:
        cur.close()


def _sqlite_plan(dialect, table, cols: tuple[str, ...]):
    if any(c not in table.c for c in cols) or any(c.default is not None for c in table.c if c.name not in cols):
        return None
    quote = dialect.identifier_preparer.quote
    sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in cols)}) "
           f"VALUES ({', '.join('?' * len(cols))})")
    return sql, [table.c[c].type._cached_bind_processor(dialect) for c in cols]


def pg_insert(cur, table, rows: list[dict], drawn: dict[str, str] | None = None) -> bytes:
    """A multi-row INSERT with its values bound by psycopg2 itself (mogrify quotes them), so that several
    tables can be written with one execute of the joined statements. drawn: columns whose value an SQL
    expression gives inside the INSERT (a sequence's nextval), added after the rows' own."""
    cols = list(rows[0])
    drawn = drawn or {}
    template = "(" + ",".join(["%s"] * len(cols) + list(drawn.values())) + ")"
    names = ",".join(cols + list(drawn))
    values = b",".join(cur.mogrify(template, [r[c] for c in cols]) for r in rows)
    return f"INSERT INTO {table.name} ({names}) VALUES ".encode() + values


def lost_connection(exc: BaseException) -> bool:
    """The error is the database connection's loss (SQLAlchemy has then invalidated it)."""
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_read(work: Callable[[], T], what: str = "read") -> T:
    """Run a read-only unit of work, and once more on a new connection if its connection was lost.

    Safe because the work changes nothing: a second run sees the database as a first one would
    have. Only read-only work may be passed here; a write that lost its connection may or may not
    have committed, and is for its caller to answer."""
    try:
        return work()
    except DBAPIError as exc:
        if not lost_connection(exc):
            raise
        log.warning("%s: the database connection was lost (%s); running it again on a new connection",
                    what, exc.orig.__class__.__name__ if exc.orig is not None else exc.__class__.__name__)
    return work()


def _disable_pysqlite_begin(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _no_autobegin(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
