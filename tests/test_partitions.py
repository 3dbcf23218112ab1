"""The registry's tables hash-partitioned by patient (registry/partitions.py, setting registry_partitions) on a
real PostgreSQL: a new database made so serves every transaction over HTTP; a patient's rows stay in one
partition of each table and a patient query reads only those; a merge moves the subsumed patient's rows to
the survivor's partitions; entryUUIDs stay unique across partitions; a registry converts both ways keeping
every row, and a conversion that fails leaves it as it was; a server refuses a layout it was not told of."""
from __future__ import annotations

import json
import re
import urllib.request
import uuid

import psycopg2
import pytest
import sqlalchemy as sa
from lxml import etree
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError

from node import cli
from node.server import Services
from registry import partitions, schema as S
from registry.config import RegistryConfig
from registry.register import register
from registry.store import RegistryStore
from tests.helpers import entry_id, new_pid, replacement, unique_ids
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.hl7 import patient_key as _patient_key
from xds.settings import Settings

N = 4
RIM = C.NS_RIM
DATA_TABLES = partitions.TABLES
REFERENCED = {"reference_ids": ["ref^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:order"]}


def _services(url: str, tmp_path, n: int | None = N) -> Services:
    return Services(Settings(role="all", port=0, host="127.0.0.1", data=str(tmp_path / "data"), db=url,
                             check_patients=False, registry_partitions=n)).start()


@pytest.fixture
def server(pg_url, tmp_path):
    services = _services(pg_url, tmp_path)
    yield services
    services.stop()


def _register(server, request) -> tuple[str, list]:
    reply = SoapClient(server.url + "/xds/registry", 20).call(C.ACTION_REGISTER, request)
    return read_response_errors(reply.body)


def _query(server, request) -> etree._Element:
    return SoapClient(server.url + "/xds/registry", 20).call(C.ACTION_QUERY, request).body


def _entries(server, pid: str) -> set[str]:
    body = _query(server, builder.find_documents_request(pid))
    assert body.get("status") == C.RESPONSE_SUCCESS, body
    return {e.get("id") for e in body.iter(f"{{{RIM}}}ExtrinsicObject")}


def _get_all(server, pid: str) -> tuple[set[str], set[str]]:
    body = _query(server, builder.adhoc_query_request(C.SQ_GET_ALL, [
        ("$patientId", f"'{pid}'"), ("$XDSDocumentEntryStatus", f"('{C.STATUS_APPROVED}')"),
        ("$XDSSubmissionSetStatus", f"('{C.STATUS_APPROVED}')"), ("$XDSFolderStatus", f"('{C.STATUS_APPROVED}')")]))
    assert body.get("status") == C.RESPONSE_SUCCESS, body
    objects = {e.get("id") for tag in ("ExtrinsicObject", "RegistryPackage") for e in body.iter(f"{{{RIM}}}{tag}")}
    return objects, {e.get("id") for e in body.iter(f"{{{RIM}}}Association")}


def _sql(store: RegistryStore, statement: str, **params) -> list:
    with store.engine.connect() as c:
        return c.execute(sa.text(statement), params).all()


def _partitions_holding(store: RegistryStore, table: str, pid: str) -> set[str]:
    return {r[0] for r in _sql(store, f"SELECT DISTINCT tableoid::regclass::text FROM {table} "
                                      "WHERE patient_id = :p", p=pid)}


def _all_rows(store: RegistryStore) -> dict[str, list]:
    """Every row of the registry's data tables, without the side tables' patient (NULL when plain)."""
    out = {}
    for table in DATA_TABLES:
        cols = [c for c in getattr(S, {"reg_object": "registry_object"}.get(table, table)).c.keys()
                if table == "reg_object" or c != "patient_id"]
        out[table] = sorted(tuple(map(str, r)) for r in _sql(store, f"SELECT {', '.join(cols)} FROM {table}"))
    return out


def _two_patients_in_different_partitions(store: RegistryStore) -> tuple[str, str]:
    first = new_pid()
    home = _hash_partition(store, first)
    while True:
        other = new_pid()
        if _hash_partition(store, other) != home:
            return first, other


def _hash_partition(store: RegistryStore, pid: str) -> int:
    return next(i for i in range(N) if _sql(store, "SELECT satisfies_hash_partition('reg_object'::regclass, "
                                                   ":n, :i, CAST(:p AS varchar))", n=N, i=i, p=_patient_key(pid))[0][0])


def test_a_new_database_is_partitioned_and_each_patient_stays_in_one_partition(server):
    store = server.registry.store
    assert store.partitions == N
    for table in DATA_TABLES:
        kind, children = _sql(store, "SELECT c.relkind, (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) "
                                     "FROM pg_class c WHERE c.relname = :t", t=table)[0]
        assert (kind, children) == ("p", N), table
    a, b = _two_patients_in_different_partitions(store)
    for pid in (a, b):
        assert _register(server, builder.simple_submission(pid, 3, folder_too=True, doc_kwargs=REFERENCED)) == \
            (C.RESPONSE_SUCCESS, [])
    assert len(_entries(server, a)) == 3 and len(_entries(server, b)) == 3
    assert _entries(server, a).isdisjoint(_entries(server, b))
    for pid in (a, b):
        for table in DATA_TABLES:
            held = _partitions_holding(store, table, _patient_key(pid))
            assert len(held) == 1, (table, held)
    # Every object and association has its key row with its patient.
    keys = dict(_sql(store, "SELECT id, patient_id FROM registry_key"))
    owned = dict(_sql(store, "SELECT id, patient_id FROM reg_object UNION ALL SELECT id, patient_id FROM association"))
    assert keys == owned and len(keys) == 2 * (1 + 3 + 1 + 1 + 3 + 3 + 3)
    # Every uniqueId with the patient it is filed under.
    assert sorted(_sql(store, "SELECT unique_id, patient_id FROM registry_uid")) == \
        sorted(_sql(store, "SELECT unique_id, patient_id FROM reg_object"))


def test_a_patient_query_reads_one_partition_of_each_table(server):
    store = server.registry.store
    pid = new_pid()
    assert _register(server, builder.simple_submission(pid, 2))[0] == C.RESPONSE_SUCCESS
    seen = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "FROM reg_object JOIN doc_entry" in statement:
            seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        assert len(_entries(server, pid)) == 2
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    assert seen, "the FindDocuments statement was not seen"
    statement, parameters = seen[-1]
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("EXPLAIN (COSTS OFF) " + statement, parameters)
        plan = "\n".join(r[0] for r in cur.fetchall())
    finally:
        raw.close()
    read = {}
    for table, part in re.findall(r"\b(reg_object|doc_entry|object_code)_p(\d+)\b", plan):
        read.setdefault(table, set()).add(part)
    assert set(read) >= {"reg_object", "doc_entry"}, plan
    assert all(len(parts) == 1 for parts in read.values()), plan


def test_update_delete_and_merge_across_partitions(server):
    store = server.registry.store
    a, b = _two_patients_in_different_partitions(store)
    for pid in (a, b):
        assert _register(server, builder.simple_submission(pid, 2, folder_too=True, doc_kwargs=REFERENCED))[0] == \
            C.RESPONSE_SUCCESS
    # A replacement and a deletion in b's partition.
    old = sorted(_entries(server, b))
    assert _register(server, replacement(b, old[0]))[0] == C.RESPONSE_SUCCESS
    reply = SoapClient(server.url + "/xds/registry", 20).call(C.ACTION_DELETE, builder.remove_objects_request(old[1]))
    assert read_response_errors(reply.body)[0] != C.RESPONSE_SUCCESS  # a member of a folder and a submission
    counts = {t: _sql(store, f"SELECT count(*) FROM {t}")[0][0] for t in DATA_TABLES + ("registry_key",)}
    objects_b, links_b = _get_all(server, b)
    objects_a, links_a = _get_all(server, a)
    ka, kb = _patient_key(a), _patient_key(b)
    assert _partitions_holding(store, "reg_object", ka) != _partitions_holding(store, "reg_object", kb)

    body = json.dumps({"action": "merge", "subsumed": b, "surviving": a}).encode()
    req = urllib.request.Request(server.url + "/admin/patients", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.status == 200

    # Nothing lost or doubled; every row of b now in a's partition of its table, and queried as a's.
    assert {t: _sql(store, f"SELECT count(*) FROM {t}")[0][0] for t in counts} == counts
    for table in DATA_TABLES:
        assert not _sql(store, f"SELECT 1 FROM {table} WHERE patient_id = :p", p=kb), table
        assert len(_partitions_holding(store, table, ka)) == 1, table
    assert not _sql(store, "SELECT 1 FROM registry_key WHERE patient_id = :p", p=kb)
    assert not _sql(store, "SELECT 1 FROM registry_uid WHERE patient_id = :p", p=kb)
    assert {r[0] for r in _sql(store, "SELECT unique_id FROM registry_uid WHERE patient_id = :p", p=ka)} == \
        {r[0] for r in _sql(store, "SELECT unique_id FROM reg_object WHERE patient_id = :p", p=ka)}
    merged_objects, merged_links = _get_all(server, a)
    assert merged_objects == objects_a | objects_b and merged_links == links_a | links_b
    assert _entries(server, b) == set()


def test_entry_uuids_stay_unique_across_partitions(server):
    store = server.registry.store
    a, b = _two_patients_in_different_partitions(store)
    de_id, ss_id = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"

    def submission(pid):
        return builder.submit_objects_request([
            builder.submission_set(pid, id=ss_id if pid == a else f"urn:uuid:{uuid.uuid4()}"),
            builder.submission_set_marker(ss_id if pid == a else "SubmissionSet01"),
            builder.document_entry(pid, id=de_id, hash="da39a3ee5e6b4b0d3255bfef95601890afd80709", size=0,
                                   repository_unique_id="1.2.250.1.999.3.1"),
            builder.association(ss_id if pid == a else "SubmissionSet01", de_id, id="as1")])

    assert _register(server, submission(a))[0] == C.RESPONSE_SUCCESS
    before = _all_rows(store)
    status, errors = _register(server, submission(b))
    assert status == C.RESPONSE_FAILURE and errors, errors
    assert _all_rows(store) == before
    # The key table is what holds it when two writers race past the checks: a row for another
    # patient's partition with a taken id is refused by the database itself.
    with pytest.raises((IntegrityError, psycopg2.IntegrityError)):
        with store.transaction() as c:
            store.write(c, [(S.registry_key, [dict(id=de_id, patient_id=_patient_key(b))])])


def test_a_unique_id_is_found_in_another_patients_partition(server):
    """The uniqueId check of every submission reads registry_uid, then only the partitions it names."""
    store = server.registry.store
    a, b = _two_patients_in_different_partitions(store)
    first = builder.simple_submission(a, 1)
    assert _register(server, first)[0] == C.RESPONSE_SUCCESS
    taken = next(iter(unique_ids(first).values()))
    before = _all_rows(store)
    # The same uniqueId with another hash: another document, which the registry must refuse.
    other = builder.simple_submission(b, 1, doc_kwargs={"unique_id": taken, "hash": "0" * 40})
    status, errors = _register(server, other)
    assert status == C.RESPONSE_FAILURE and "XDSNonIdenticalHash" in {e.code for e in errors}, errors
    assert _all_rows(store) == before


def snapshot(engine) -> dict:
    """The registry tables' shape: columns, keys, foreign keys, indexes, and which tables exist."""
    insp = sa.inspect(engine)
    out = {"tables": sorted(insp.get_table_names())}
    for t in DATA_TABLES:
        out[t] = (insp.get_columns(t) and [(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                                           for c in insp.get_columns(t)],
                  insp.get_pk_constraint(t)["constrained_columns"],
                  sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]), f["name"],
                          tuple(sorted((f.get("options") or {}).items()))) for f in insp.get_foreign_keys(t)),
                  sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)))
    return out


def _populate(store: RegistryStore) -> list[str]:
    pids = [new_pid() for _ in range(5)]
    for pid in pids:
        store.add_patient(pid)
        request = builder.simple_submission(pid, 2, folder_too=True, doc_kwargs=REFERENCED)
        register(store, request, RegistryConfig())   # raises XdsException on failure
        first = entry_id(store, next(iter(unique_ids(request).values())))
        register(store, replacement(pid, first), RegistryConfig())
    return pids


def test_conversion_keeps_every_row_both_ways(pg_url):
    store = RegistryStore(pg_url)
    store.migrate()
    assert store.partitions == 0
    plain_schema = snapshot(store.engine)
    _populate(store)
    before = _all_rows(store)
    with store.reading() as c:
        entries = {r[0] for r in c.execute(sa.text("SELECT id FROM reg_object WHERE kind = 'DE'"))}

    assert cli.main(["db", "partition", "--partitions", str(N), "--db", pg_url]) == 0
    store = RegistryStore(pg_url, partitions=N)
    store.migrate()   # agrees with the database now
    assert store.partitions == N
    assert _all_rows(store) == before
    for table, column in partitions.SIDE_TABLES:
        assert not _sql(store, f"SELECT 1 FROM {table} r JOIN reg_object o ON o.id = r.{column} "
                               "WHERE r.patient_id IS DISTINCT FROM o.patient_id"), table
    assert not _sql(store, "SELECT 1 FROM association a JOIN reg_object o ON o.id = a.source "
                           "WHERE a.patient_id IS DISTINCT FROM o.patient_id")
    assert {r[0] for r in _sql(store, "SELECT id FROM registry_key")} == \
        {r[0] for r in _sql(store, "SELECT id FROM reg_object UNION SELECT id FROM association")}
    assert {r[0] for r in _sql(store, "SELECT id FROM reg_object WHERE kind = 'DE'")} == entries
    assert sorted(_sql(store, "SELECT unique_id, patient_id FROM registry_uid")) == \
        sorted(set(_sql(store, "SELECT unique_id, patient_id FROM reg_object")))

    store.repartition(0)
    assert store.partitions == 0
    assert _all_rows(store) == before
    assert not _sql(store, "SELECT 1 FROM doc_entry WHERE patient_id IS NOT NULL")
    assert snapshot(store.engine) == plain_schema   # keys, foreign keys and indexes as a plain database has them
    store.engine.dispose()


def test_a_failed_conversion_leaves_the_tables_as_they_were(pg_url, monkeypatch):
    store = RegistryStore(pg_url)
    store.migrate()
    _populate(store)
    before, schema = _all_rows(store), snapshot(store.engine)

    real = partitions._copy

    def fail_on_associations(conn, table, n):
        if table == partitions.ASSOCIATION_TABLE:
            raise RuntimeError("injected: the conversion dies half-way")
        return real(conn, table, n)

    monkeypatch.setattr(partitions, "_copy", fail_on_associations)
    with pytest.raises(RuntimeError, match="injected"):
        store.repartition(N)
    monkeypatch.undo()
    assert store.partitions == 0 and _all_rows(store) == before and snapshot(store.engine) == schema

    # An object without a patient has no partition: refused before anything is touched.
    with store.transaction() as c:
        c.execute(sa.insert(S.registry_object).values(id="urn:uuid:no-patient", lid="urn:uuid:no-patient", version=1,
                                                      kind="DE", status=C.STATUS_APPROVED, xml="<x/>"))
    before = _all_rows(store)
    with pytest.raises(ValueError, match="1 registry objects have no patient"):
        store.repartition(N)
    assert store.partitions == 0 and _all_rows(store) == before
    store.engine.dispose()


def test_a_server_refuses_a_layout_it_was_not_told_of(pg_url, tmp_path):
    plain = RegistryStore(pg_url)
    plain.migrate()
    plain.engine.dispose()
    with pytest.raises(RuntimeError, match=r"plain \(unpartitioned\), but registry_partitions asks for "
                                           r"hash-partitioned by patient into 4 partitions: `xds db partition`"):
        _services(pg_url, tmp_path, N)
    services = _services(pg_url, tmp_path, None)   # unset: whatever the database has
    services.stop()
    assert cli.main(["db", "partition", "--partitions", str(N), "--db", pg_url]) == 0
    with pytest.raises(RuntimeError, match="hash-partitioned by patient into 4 partitions, but registry_partitions "
                                           "asks for plain"):
        _services(pg_url, tmp_path, 0)
    services = _services(pg_url, tmp_path, N)
    try:
        pid = new_pid()
        assert _register(services, builder.simple_submission(pid, 1))[0] == C.RESPONSE_SUCCESS
        assert len(_entries(services, pid)) == 1
    finally:
        services.stop()


def test_sqlite_has_no_partitions(tmp_path):
    with pytest.raises(ValueError, match="registry_partitions needs PostgreSQL"):
        Settings(data=str(tmp_path), registry_partitions=4).validate()
    store = RegistryStore(f"sqlite:///{tmp_path}/r.db", partitions=4)
    with pytest.raises(ValueError, match="needs PostgreSQL"):
        store.migrate()
    store.engine.dispose()


def test_db_upgrade_makes_the_configured_layout_and_current_names_it(pg_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDS_REGISTRY_PARTITIONS", str(N))
    assert cli.main(["db", "upgrade", "--role", "registry", "--db", pg_url, "--data", str(tmp_path)]) == 0
    assert cli.main(["db", "current", "--role", "registry", "--db", pg_url, "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(f", {N} partitions by patient")
    store = RegistryStore(pg_url)
    assert store.partitions == N
    store.engine.dispose()


def test_downgrading_0006_makes_the_tables_plain_again_keeping_every_row(pg_url):
    from alembic import command

    from xds import migrate

    store = RegistryStore(pg_url, partitions=N)
    store.migrate()
    _populate(store)
    before = _all_rows(store)
    with store.engine.begin() as conn:
        command.downgrade(migrate.config("registry", conn), "registry_0005")
    store._partitions = None
    assert store.partitions == 0 and migrate.current(store.engine, "registry") == "registry_0005"
    assert _all_rows(store) == before   # which reads no side table's patient column
    assert not {"registry_key", "registry_uid"} & set(sa.inspect(store.engine).get_table_names())
    with store.engine.begin() as conn:
        migrate.upgrade(conn, "registry")   # plain again, as the setting is not given
    store._partitions = None
    assert store.partitions == 0 and _all_rows(store) == before
    store.engine.dispose()



def test_bad_partition_settings_are_refused_with_what_is_wrong(tmp_path, capsys):
    with pytest.raises(ValueError, match="between 0 .plain tables. and 1024, not 2000"):
        Settings(data=str(tmp_path), db="postgresql+psycopg2://x@h/db", registry_partitions=2000).validate()
    with pytest.raises(ValueError, match="between 0 .plain tables. and 1024, not -1"):
        partitions.check_count(-1)
    url = f"sqlite:///{tmp_path}/registry.db"
    assert cli.main(["db", "upgrade", "--role", "registry", "--db", url, "--data", str(tmp_path)]) == 0
    capsys.readouterr()
    assert cli.main(["db", "partition", "--partitions", "4", "--db", url, "--data", str(tmp_path)]) == 1
    assert "needs PostgreSQL" in capsys.readouterr().err
    assert cli.main(["db", "partition", "--db", url, "--data", str(tmp_path)]) == 2
    assert "--partitions N" in capsys.readouterr().err
    store = RegistryStore(url)
    assert store.partitions == 0   # nothing changed
    store.engine.dispose()


def test_the_setting_comes_from_the_serve_flag_and_the_environment(monkeypatch):
    import argparse

    pg = "postgresql+psycopg2://xds@db/registry"
    assert cli._settings(argparse.Namespace(config=None, db=pg, registry_partitions=8)).registry_partitions == 8
    monkeypatch.setenv("XDS_REGISTRY_PARTITIONS", "16")
    assert cli._settings(argparse.Namespace(config=None, db=pg)).registry_partitions == 16
    with pytest.raises(ValueError, match="registry_partitions needs PostgreSQL"):
        cli._settings(argparse.Namespace(config=None))   # the SQLite default
    monkeypatch.delenv("XDS_REGISTRY_PARTITIONS")
    assert cli._settings(argparse.Namespace(config=None)).registry_partitions is None
