"""Schema migrations for the registry and repository tables, run from code (no alembic.ini).

Each actor has its own Alembic tree and its own version table, so that an all-in-one process can
keep both in one database while split deployments migrate each database on its own.

A new revision goes in <actor>/migrations/versions/ with down_revision set to the current head,
written out with explicit op.* calls rather than imported from the schema module: the schema
module only describes the newest shape, and an old revision must keep doing what it did.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

# Any constant will do as long as every process uses the same one.
_PG_LOCK_KEY = 0x58445331


@dataclass(frozen=True)
class Tree:
    name: str
    script_location: str
    version_table: str
    initial: str
    # The tables metadata.create_all made before migrations existed, frozen here because the schema
    # module will move on while those databases stay as they were.
    baseline: frozenset[str]


TREES = {
    "registry": Tree(
        "registry", "registry:migrations", "alembic_version_registry", "registry_0001",
        frozenset({"reg_object", "doc_entry", "submission_set", "folder", "object_code", "object_author",
                   "reference_id", "association", "patient", "repository_directory", "reg_counter"})),
    "repository": Tree(
        "repository", "repository:migrations", "alembic_version_repository", "repository_0001",
        frozenset({"repo_document"})),
    # The replay cache of the authentication layer (xds/security/replay.py), in whichever database
    # the process has; never made by create_all, so its baseline is its own first table.
    "security": Tree(
        "security", "xds.security:migrations", "alembic_version_security", "security_0001",
        frozenset({"sec_replay"})),
    # The audit layer (xds/audit/store.py): the outbox of ATNA records, the patients' access log and the
    # notifications, in whichever database the process has.
    "audit": Tree(
        "audit", "xds.audit:migrations", "alembic_version_audit", "audit_0001",
        frozenset({"audit_record"})),
    # The patients' sign-in sessions (xds/portal/sessions.py), in the registry's database.
    "portal": Tree(
        "portal", "xds.portal:migrations", "alembic_version_portal", "portal_0001",
        frozenset({"portal_session", "portal_login"})),
}


def _tree(name: str) -> Tree:
    try:
        return TREES[name]
    except KeyError:
        raise ValueError(f"unknown migration tree {name!r}; expected one of {sorted(TREES)}") from None


def config(tree: str, connection: Connection | None = None) -> Config:
    """An Alembic Config for one tree, usable with alembic.command (e.g. command.revision)."""
    t = _tree(tree)
    cfg = Config()
    cfg.set_main_option("script_location", t.script_location)
    cfg.attributes["connection"] = connection
    cfg.attributes["tree"] = t
    return cfg


def own_tables(metadata: sa.MetaData) -> Callable[[str | None, str, dict], bool]:
    """An autogenerate include_name filter that sees only this tree's tables.

    The other actor's tables and version table may share the database; without this,
    autogenerate would propose dropping them.
    """
    def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
        return type_ != "table" or name in metadata.tables
    return include_name


def run_env(context, metadata: sa.MetaData) -> None:
    """The body of each tree's env.py: Alembic runs it with the connection xds.migrate passed in."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        # There is no alembic.ini with a URL, and offline SQL scripts are not supported.
        raise RuntimeError("run migrations through xds.migrate, which passes a connection")
    context.configure(connection=connection, target_metadata=metadata,
                      version_table=context.config.attributes["tree"].version_table,
                      include_name=own_tables(metadata))
    with context.begin_transaction():
        context.run_migrations()


def heads(tree: str) -> list[str]:
    return list(ScriptDirectory.from_config(config(tree)).get_heads())


def current(bind: Engine | Connection, tree: str) -> str | None:
    """The revision the database is at for this tree; None if the tree was never applied or stamped."""
    t = _tree(tree)
    if isinstance(bind, Connection):
        return _current(bind, t)
    # Read-only, so that on SQLite this does not queue for the write lock (see xds.db).
    with bind.connect().execution_options(xds_read_only=True) as conn:
        return _current(conn, t)


def _current(conn: Connection, t: Tree) -> str | None:
    return MigrationContext.configure(conn, opts={"version_table": t.version_table}).get_current_revision()


def upgrade(bind: Engine | Connection, tree: str, revision: str = "head", attributes: dict | None = None) -> None:
    """Bring one tree up to `revision`, creating its tables in an empty database. attributes: settings a
    revision reads (op.get_context().config.attributes), e.g. the registry's registry_partitions.

    A database whose tables were made by metadata.create_all before migrations existed is stamped
    at the initial revision first, then upgraded from there.
    """
    t = _tree(tree)
    with _transaction(bind) as conn:
        if conn.dialect.name == "postgresql":
            # Several processes may start against one fresh database (workers, or registry and
            # repository deployed apart); without this they would all try to create the same tables.
            # SQLite needs nothing: xds.db begins every write transaction with BEGIN IMMEDIATE.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        cfg = config(tree, conn)
        cfg.attributes.update(attributes or {})
        if _current(conn, t) is None:
            found = t.baseline & set(sa.inspect(conn).get_table_names())
            if found == t.baseline:
                log.info("%s tables were created without migrations; stamping them as revision %s",
                         t.name, t.initial)
                command.stamp(cfg, t.initial)
            elif found:
                # Guessing which revision a half-made schema matches could drop or skip tables.
                raise RuntimeError(
                    f"the database has some {t.name} tables ({', '.join(sorted(found))}) but not "
                    f"{', '.join(sorted(t.baseline - found))}, and no {t.version_table} table; "
                    f"it was not made by this program's create_schema or migrations")
        command.upgrade(cfg, revision)


@contextlib.contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    # One transaction around the lock, the check and the upgrade: PostgreSQL, and SQLite through
    # xds.db's explicit BEGIN, roll DDL back, so a failed migration leaves the database as it was.
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            yield conn
    elif bind.in_transaction():
        # The caller's transaction: they commit it.
        yield bind
    else:
        with bind.begin():
            yield bind
