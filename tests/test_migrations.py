"""Alembic migrations of the registry and repository tables, on SQLite and a real PostgreSQL."""
import logging
import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from registry import schema as RS
from registry.config import RegistryConfig
from registry.register import register
from registry.store import RegistryStore
from repository import schema as PS
from repository.store import DocumentRow, RepositoryStore
from tests import pgserver
from tests.helpers import new_pid
from xds import builder, migrate
from xds import constants as C
from xds.db import make_engine

TREES = {"registry": RS.metadata, "repository": PS.metadata}
ALL_TABLES = set(RS.metadata.tables) | set(PS.metadata.tables)
VERSION_TABLES = {"alembic_version_registry", "alembic_version_repository"}


@pytest.fixture
def engine(db_url):
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def other_engine(db_url, tmp_path):
    """A second empty database on the same backend, to hold the create_all version of the schema."""
    if db_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path}/other.db"
    else:
        url = pgserver.create_database(db_url, f"xds_other_{uuid.uuid4().hex[:12]}")
    eng = make_engine(url)
    yield eng
    eng.dispose()


def upgrade_both(bind):
    for tree in TREES:
        migrate.upgrade(bind, tree)


def differences(engine, tree: str) -> list:
    metadata = TREES[tree]
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={
            "include_name": migrate.own_tables(metadata), "compare_type": True,
            "compare_server_default": True})
        # No type-affinity filtering is needed: SQLite reflects the declared types verbatim
        # (VARCHAR(64), BIGINT, DATETIME, BOOLEAN), which compare equal to the metadata's.
        return compare_metadata(ctx, metadata)


def snapshot(engine) -> dict:
    """Everything about the tables that a migration could get wrong, as plain comparable values."""
    insp = sa.inspect(engine)
    out = {"tables": sorted(insp.get_table_names())}
    for t in sorted(ALL_TABLES):
        out[t] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                        for c in insp.get_columns(t)],
            "pk": insp.get_pk_constraint(t)["constrained_columns"],
            "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]),
                           f["name"], tuple(sorted((f.get("options") or {}).items())))
                          for f in insp.get_foreign_keys(t)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in insp.get_indexes(t)),
            "uniques": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t)),
        }
    if engine.dialect.supports_sequences:
        out["sequences"] = sorted(insp.get_sequence_names())
        with engine.connect() as c:
            out["reg_seq"] = c.execute(sa.text(
                "SELECT data_type, start_value, increment_by, cycle, cache_size FROM pg_sequences "
                "WHERE sequencename = 'reg_seq'")).all()
    return out


def test_empty_database_gets_both_trees_matching_the_metadata(engine):
    upgrade_both(engine)
    assert set(sa.inspect(engine).get_table_names()) == ALL_TABLES | VERSION_TABLES
    for tree in TREES:
        assert migrate.current(engine, tree) == migrate.heads(tree)[0]
        assert differences(engine, tree) == [], tree
    if engine.dialect.name == "postgresql":
        # Autogenerate does not compare sequences.
        assert sa.inspect(engine).get_sequence_names() == ["reg_seq"]


def test_migrated_schema_is_what_create_all_makes(engine, other_engine):
    upgrade_both(engine)
    RS.metadata.create_all(other_engine)
    PS.metadata.create_all(other_engine)
    migrated, created = snapshot(engine), snapshot(other_engine)
    assert set(migrated.pop("tables")) == set(created.pop("tables")) | VERSION_TABLES
    assert migrated == created


def test_upgrade_is_idempotent(engine):
    upgrade_both(engine)
    before = snapshot(engine)
    upgrade_both(engine)
    with engine.connect() as conn:
        # Through a caller's connection too, which must leave the commit to the caller.
        with conn.begin():
            upgrade_both(conn)
        for table in VERSION_TABLES:
            assert len(conn.execute(sa.text(f"SELECT version_num FROM {table}")).all()) == 1
    assert snapshot(engine) == before
    assert [migrate.current(engine, t) for t in TREES] == ["registry_0006", "repository_0003"]


def test_create_all_database_is_stamped_then_upgraded(engine, caplog):
    RS.metadata.create_all(engine)
    PS.metadata.create_all(engine)
    with engine.begin() as c:
        c.execute(sa.insert(RS.patient).values(patient_id="P1^^^&1.2.3&ISO", active=True))
    assert migrate.current(engine, "registry") is None

    with caplog.at_level(logging.INFO, logger="xds.migrate"):
        upgrade_both(engine)

    stamped = [r.getMessage() for r in caplog.records if r.name == "xds.migrate"]
    assert len(stamped) == 2 and all("stamping" in m for m in stamped), stamped
    for tree in TREES:
        assert migrate.current(engine, tree) == migrate.heads(tree)[0]
        assert differences(engine, tree) == []
    with engine.connect() as c:
        assert c.execute(sa.select(RS.patient.c.patient_id)).scalars().all() == ["P1^^^&1.2.3&ISO"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xds.migrate"):
        upgrade_both(engine)
    assert not [r for r in caplog.records if r.name == "xds.migrate"]


def test_half_made_database_is_refused_and_left_alone(engine):
    RS.registry_object.create(engine)
    RS.patient.create(engine)
    with pytest.raises(RuntimeError, match="repository_directory"):
        migrate.upgrade(engine, "registry")
    assert set(sa.inspect(engine).get_table_names()) == {"reg_object", "patient"}
    # The repository tree does not care about the registry's state.
    migrate.upgrade(engine, "repository")
    assert migrate.current(engine, "repository") == "repository_0003"


def test_downgrade_removes_only_its_own_tree(engine):
    upgrade_both(engine)
    with engine.begin() as conn:
        command.downgrade(migrate.config("registry", conn), "base")
    assert set(sa.inspect(engine).get_table_names()) == set(PS.metadata.tables) | VERSION_TABLES
    if engine.dialect.name == "postgresql":
        assert sa.inspect(engine).get_sequence_names() == []
    assert migrate.current(engine, "registry") is None
    migrate.upgrade(engine, "registry")
    assert differences(engine, "registry") == []


def test_unknown_tree():
    with pytest.raises(ValueError, match="unknown migration tree"):
        migrate.heads("registery")


def test_registration_works_on_a_migrated_database(db_url):
    store = RegistryStore(db_url)
    store.migrate()
    repo = RepositoryStore(store.engine)
    repo.migrate()
    pid = new_pid()
    store.add_patient(pid)

    register(store, builder.simple_submission(pid, 2, folder_too=True), RegistryConfig())
    register(store, builder.simple_submission(pid), RegistryConfig())

    with store.reading() as c:
        kinds = c.execute(sa.select(RS.registry_object.c.kind, sa.func.count())
                          .group_by(RS.registry_object.c.kind)).all()
        seqs = c.execute(sa.select(RS.registry_object.c.seq).union_all(sa.select(RS.association.c.seq))).scalars()
        seqs = list(seqs)
    assert dict(kinds) == {"DE": 3, "SS": 2, "FD": 1}
    # Registration order comes from reg_seq on PostgreSQL and reg_counter on SQLite: both must work.
    assert len(set(seqs)) == len(seqs) and min(seqs) >= 1

    assert repo.add([DocumentRow("1.2.3.4", "da39a3ee5e6b4b0d3255bfef95601890afd80709", 0, "text/plain",
                                 "da/39/x", "1.2.250.1.999.3.1")]) == []
    assert repo.count() == 1
    store.engine.dispose()


def test_0002_widens_a_database_made_by_0001(engine):
    """A registry made at revision 0001 (codes of 300, mimeType of 128) takes the ebRIM lengths in place."""
    migrate.upgrade(engine, "registry", "registry_0001")
    migrate.upgrade(engine, "repository", "repository_0001")
    upgrade_both(engine)
    assert differences(engine, "registry") == [] and differences(engine, "repository") == []
    widths = {c["name"]: getattr(c["type"], "length", None) for c in sa.inspect(engine).get_columns("object_code")}
    assert widths["code"] == 514
    widths = {c["name"]: getattr(c["type"], "length", None) for c in sa.inspect(engine).get_columns("repo_document")}
    assert widths["mime_type"] == 256


def test_0004_indexes_patients_by_their_key(engine):
    """Spellings of one patient that differ only after CX.4 (the DMP's ``^NH`` and CX.7 date) become one
    patient, one access state and one authorisation, indexed by CX.1 + CX.4."""
    migrate.upgrade(engine, "registry", "registry_0003")
    bare, nh, dated = "1234^^^&1.2.250.1.213.1.4.10&ISO", "1234^^^&1.2.250.1.213.1.4.10&ISO^NH", \
        "1234^^^&1.2.250.1.213.1.4.10&ISO^NH^^20100907"
    other = "99^^^&1.2.3&ISO"
    with engine.begin() as c:
        c.execute(sa.insert(RS.patient), [dict(patient_id=bare, active=False, merged_into=None),
                                           dict(patient_id=nh, active=True, merged_into=None),
                                           dict(patient_id="77^^^&1.2.3&ISO", active=False, merged_into=dated),
                                           dict(patient_id=other, active=True, merged_into=None)])
        for n, pid in enumerate((dated, nh, other)):
            c.execute(sa.insert(RS.registry_object).values(
                id=f"urn:uuid:0000000{n}-0000-4000-8000-000000000000", lid=f"urn:uuid:0000000{n}-0000-4000-8000-000000000000",
                version=1, kind="DE", status=C.STATUS_APPROVED, patient_id=pid, seq=n + 1, xml="<x/>"))
        c.execute(sa.insert(RS.access_state), [
            dict(patient_id=nh, closed=False, minor=False, object_break_glass=False, object_centre_15=False, updated=1),
            dict(patient_id=dated, closed=True, minor=False, object_break_glass=False, object_centre_15=False,
                 updated=2)])
        c.execute(sa.insert(RS.access_person), [
            dict(patient_id=bare, person="p1", relation="blocked", updated=5),
            dict(patient_id=dated, person="p1", relation="blocked", updated=3),
            dict(patient_id=dated, person="p2", relation="authorised", updated=4)])

    upgrade_both(engine)

    assert differences(engine, "registry") == []
    with engine.connect() as c:
        patients = {r.patient_id: (r.active, r.merged_into) for r in c.execute(sa.select(RS.patient))}
        assert patients == {bare: (True, None), "77^^^&1.2.3&ISO": (False, bare), other: (True, None)}
        assert sorted(c.execute(sa.select(RS.registry_object.c.patient_id)).scalars()) == sorted([bare, bare, other])
        states = c.execute(sa.select(RS.access_state.c.patient_id, RS.access_state.c.closed)).all()
        assert [tuple(s) for s in states] == [(bare, True)]
        people = {(r.person, r.relation): r.updated for r in c.execute(sa.select(RS.access_person))
                  if r.patient_id == bare}
        assert people == {("p1", "blocked"): 5, ("p2", "authorised"): 4}


def test_0005_indexes_codes_by_object_alone(engine):
    """A registry made at 0004 keeps its codes, and finds them by an index on object_id alone."""
    migrate.upgrade(engine, "registry", "registry_0004")

    def code_index():
        return {i["name"]: i["column_names"] for i in sa.inspect(engine).get_indexes("object_code")}

    assert code_index()["ix_object_code_object"] == ["object_id", "scheme"]
    oid = "urn:uuid:00000001-0000-4000-8000-000000000005"
    with engine.begin() as c:
        c.execute(sa.insert(RS.registry_object).values(id=oid, lid=oid, version=1, kind="DE", status=C.STATUS_APPROVED,
                                                       patient_id="5^^^&1.2.3&ISO", seq=1, xml="<x/>"))
        c.execute(sa.insert(RS.object_code).values(object_id=oid, scheme=C.DE_EVENT_CODE, code="T-D4909^^SNM3"))
    upgrade_both(engine)
    assert code_index()["ix_object_code_object"] == ["object_id"]
    assert differences(engine, "registry") == []
    with engine.connect() as c:
        assert c.execute(sa.select(RS.object_code.c.code).where(RS.object_code.c.object_id == oid)).scalars().all() \
            == ["T-D4909^^SNM3"]


def test_a_populated_registry_from_0001_keeps_every_row_through_every_migration(engine):
    """On SQLite a batch migration rebuilds a table by copying it where SQLite cannot alter in place (0002's
    column types: doc_entry, submission_set, object_code), and the engine has foreign keys on, under which
    dropping the old copy of reg_object would delete every row referencing it (ON DELETE CASCADE); 0003 and
    0005 add reg_object's columns in place for that reason. A registration made at 0001 and upgraded to the
    head comes out whole on both backends."""
    migrate.upgrade(engine, "registry", "registry_0001")
    migrate.upgrade(engine, "repository", "repository_0001")
    tables = ("reg_object", "doc_entry", "submission_set", "object_code", "object_author", "association")
    oid, sid = "urn:uuid:00000001-0000-4000-8000-00000000000a", "urn:uuid:00000002-0000-4000-8000-00000000000a"
    pid = "5^^^&1.2.3&ISO"
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO patient (patient_id, active) VALUES (:p, :t)"), {"p": pid, "t": True})
        for n, (i, kind) in enumerate(((oid, "DE"), (sid, "SS"))):
            c.execute(sa.text("INSERT INTO reg_object (id, lid, version, kind, status, patient_id, seq, xml) "
                              "VALUES (:i, :i, 1, :k, :s, :p, :n, '<x/>')"),
                      {"i": i, "k": kind, "s": C.STATUS_APPROVED, "p": pid, "n": n + 1})
        cols = {col["name"] for col in sa.inspect(c).get_columns("doc_entry")}
        de = {"id": oid, "entry_type": C.OBJECT_TYPE_STABLE, "mime_type": "text/plain", "class_code": "c^^s"}
        de = {k: v for k, v in de.items() if k in cols}
        c.execute(sa.text(f"INSERT INTO doc_entry ({', '.join(de)}) VALUES ({', '.join(':' + k for k in de)})"), de)
        c.execute(sa.text("INSERT INTO submission_set (id) VALUES (:i)"), {"i": sid})
        c.execute(sa.text("INSERT INTO object_code (object_id, scheme, code) VALUES (:i, :s, 'c^^s')"),
                  {"i": oid, "s": C.DE_CLASS_CODE})
        c.execute(sa.text("INSERT INTO object_author (object_id, person) VALUES (:i, 'Dr A')"), {"i": oid})
        acols = {col["name"] for col in sa.inspect(c).get_columns("association")}
        assoc = {"id": "urn:uuid:00000003-0000-4000-8000-00000000000a", "type": C.ASSOC_HAS_MEMBER, "source": sid,
                 "target": oid, "status": C.STATUS_APPROVED, "seq": 3, "xml": "<a/>", "ss_status": "Original"}
        assoc = {k: v for k, v in assoc.items() if k in acols}
        c.execute(sa.text(f"INSERT INTO association ({', '.join(assoc)}) VALUES ({', '.join(':' + k for k in assoc)})"),
                  assoc)
        before = {t: c.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}
    assert all(before.values()), before

    upgrade_both(engine)

    assert differences(engine, "registry") == []
    with engine.connect() as c:
        after = {t: c.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}
        assert after == before
        assert c.execute(sa.text("SELECT class_code FROM doc_entry WHERE id = :i"), {"i": oid}).scalar() == "c^^s"
