"""The server on a real PostgreSQL that restarts under it: the next ITI-18 and ITI-41 succeed, with
or without SQLAlchemy's pre-ping; a read whose connection dies under it is run again once; a write
whose connection dies under it gets an error answer and the server keeps serving."""
from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from node.server import Services
from node.transfer import provide_and_register
from xds import builder
from xds import constants as C
from xds import db as xds_db
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.settings import Settings
from tests import pgserver

PID = "PRESTART^^^&1.2.250.1.213.1.4.10&ISO"


@pytest.fixture
def pg():
    if not pgserver.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing; .ci/run installs them")
        pytest.skip("PostgreSQL is not installed here")
    if os.environ.get("XDS_TEST_POSTGRES_URL"):
        pytest.skip("restarts a server of its own; an existing one is not ours to restart")
    server = pgserver.PgServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["pre-ping", "no pre-ping"])
def pre_ping(request, monkeypatch):
    real = xds_db.create_engine
    # The server runs without it (one round trip less per request); with it, reconnecting must work too.
    on = request.param == "pre-ping"
    monkeypatch.setattr(xds_db, "create_engine", lambda url, **kw: real(url, **{**kw, "pool_pre_ping": on}))
    return request.param


@pytest.fixture
def server(pg, pre_ping, tmp_path):
    url = pgserver.create_database(pg.url, "xds_restart")
    s = Settings(role="all", port=0, host="127.0.0.1", data=str(tmp_path / "data"), db=url, check_patients=False)
    services = Services(s).start()
    yield services
    services.stop()


def provide(server, n: int = 1) -> tuple[str, list]:
    sub = builder.simple_submission(PID, n, register=False)
    docs = {f"Document{i:02d}": f"document {i}\r\n".encode() for i in range(1, n + 1)}
    pnr, att = provide_and_register(sub, docs)
    reply = SoapClient(server.url + "/xds/repository", 20).call(C.ACTION_PROVIDE, pnr, attachments=att)
    status, errors = read_response_errors(reply.body)
    return status, errors


def find_documents(server) -> tuple[str, int]:
    req = builder.find_documents_request(PID)
    reply = SoapClient(server.url + "/xds/registry", 20).call(C.ACTION_QUERY, req)
    return reply.body.get("status"), len(reply.body.findall(f".//{{{C.NS_RIM}}}ExtrinsicObject"))


def assert_serving(server, expected_docs: int) -> None:
    assert find_documents(server) == (C.RESPONSE_SUCCESS, expected_docs)


def test_restart_between_requests_is_not_seen(server, pg):
    for _ in range(3):
        assert provide(server)[0] == C.RESPONSE_SUCCESS
    assert_serving(server, 3)
    # fast: what an operator's restart does. (An immediate one is a crash, and this test server runs
    # with synchronous_commit off, so it may lose the last commits.)
    pg.restart("fast")
    assert_serving(server, 3)
    assert provide(server)[0] == C.RESPONSE_SUCCESS
    assert_serving(server, 4)


def test_restart_then_submission_first(server, pg):
    assert provide(server)[0] == C.RESPONSE_SUCCESS
    assert_serving(server, 1)
    pg.restart()
    status, errors = provide(server)
    assert status == C.RESPONSE_SUCCESS, errors
    assert_serving(server, 2)


class BackendKiller:
    """Ends, once and from another session, the database session of the connection about to run a
    matching statement (`on="statement"`) or to begin a write transaction (`on="write"`): the
    connection dies under the work already begun on it."""

    def __init__(self, engine, admin_url: str, on: str, matches=None):
        self.engine = engine
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.matches = matches
        self.killed = 0
        self.on = on
        if on == "statement":
            event.listen(engine, "before_cursor_execute", self._before_statement)
        else:
            event.listen(engine, "begin", self._begin)

    def _before_statement(self, conn, cursor, statement, parameters, context, executemany):
        if not self.killed and self.matches(statement):
            self._kill(conn)

    def _begin(self, conn):
        if not self.killed and not conn.get_execution_options().get("xds_read_only"):
            self._kill(conn)

    def _kill(self, conn):
        self.killed += 1
        pid = conn.connection.dbapi_connection.get_backend_pid()
        with self.admin.connect() as c:
            c.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            # pg_terminate_backend only signals; wait until the session is gone.
            for _ in range(200):
                if not c.execute(sa.text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}).first():
                    break
                c.execute(sa.text("SELECT pg_sleep(0.01)"))

    def close(self):
        if self.on == "statement":
            event.remove(self.engine, "before_cursor_execute", self._before_statement)
        else:
            event.remove(self.engine, "begin", self._begin)
        self.admin.dispose()


def test_read_whose_connection_dies_is_run_again_once(server, pg):
    assert provide(server, 2)[0] == C.RESPONSE_SUCCESS
    engine = server.registry.store.engine
    killer = BackendKiller(engine, pg.url, "statement", lambda sql: "reg_object.xml" in sql and "doc_entry" in sql)
    try:
        assert_serving(server, 2)
    finally:
        killer.close()
    assert killer.killed == 1


def test_write_whose_connection_dies_is_refused_and_the_server_keeps_serving(server, pg):
    assert provide(server)[0] == C.RESPONSE_SUCCESS
    engine = server.registry.store.engine
    # The first write transaction of the ITI-41 loses its connection once begun, before its first statement.
    killer = BackendKiller(engine, pg.url, "write")
    try:
        status, errors = provide(server)
    finally:
        killer.close()
    assert killer.killed == 1
    assert status == C.RESPONSE_FAILURE and errors and all(e.is_error for e in errors)
    # Nothing of the refused submission was registered, and the next one goes through.
    assert_serving(server, 1)
    assert provide(server)[0] == C.RESPONSE_SUCCESS
    assert_serving(server, 2)
