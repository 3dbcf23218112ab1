"""The audit outbox: records written before the answer (a kill -9 loses none of an answered request),
a read not answered when its record cannot be written, the ITI-8 feed and the node's start and stop
recorded, and `xds audit` reading it all back."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lxml import etree

from node import cli
from node.server import Services
from xds import builder
from xds import constants as C
from xds.audit import records as R
from xds.audit.store import AuditStore
from xds.client import SoapClient, TransportError
from xds.db import make_engine
from xds.mllp import mllp_send
from xds.settings import Settings
from tests.helpers import new_pid
from tests.test_feed import adt, msa

ROOT = Path(__file__).resolve().parents[1]


def events(store: AuditStore, after: int = 0) -> list:
    return [R.from_stored(stored, seq) for seq, stored, _, _ in store.records(after, 100000)]


def kind(e) -> str:
    return e.transaction if isinstance(e, R.AuditEvent) else e.kind


@pytest.fixture
def server(tmp_path, db_url):
    services = Services(Settings(port=0, data=str(tmp_path / "data"), db=db_url, mllp_port=0,
                                 settle_interval=0)).start()
    yield services
    services.stop()


def test_start_and_stop_are_recorded(tmp_path):
    services = Services(Settings(port=0, data=str(tmp_path / "data"))).start()
    store = services.auditor.store
    assert [kind(e) for e in events(store)] == ["application-start"]
    services.stop()
    recorded = events(store)
    assert [kind(e) for e in recorded] == ["application-start", "application-stop"]
    for e in recorded:
        rec = etree.fromstring(R.render(e, "test"))
        assert rec.find("EventIdentification/EventID").get("csd-code") == "110100"
        assert rec.find("ActiveParticipant/RoleIDCode").get("csd-code") == "110150"


def test_feed_messages_are_recorded_accepted_and_refused(server):
    store = server.auditor.store
    before = store.records(0, 100000)[-1][0]
    pid = new_pid()
    number, authority = pid.split("^^^")
    ack = mllp_send("127.0.0.1", server.mllp.port, adt("A01", f"{number}^^^{authority}", control="AUD-1"))
    assert msa(ack)[1] == "AA"
    ack = mllp_send("127.0.0.1", server.mllp.port, adt("A01", "", control="AUD-2"))  # no patient id
    assert msa(ack)[1] in ("AE", "AR")
    recorded = [e for e in events(store, before) if kind(e) == "ITI-8"]
    assert [(e.message_control_id, e.outcome) for e in recorded][:1] == [("AUD-1", 0)]
    assert recorded[0].patient_id and recorded[0].patient_id.split("^")[0] == number
    assert recorded[0].action == "C"
    assert recorded[1].message_control_id == "AUD-2" and recorded[1].outcome != 0
    rec = etree.fromstring(R.render(recorded[0], "test"))
    patient = rec.find("ParticipantObjectIdentification[@ParticipantObjectTypeCodeRole='1']")
    assert patient.get("ParticipantObjectID") == recorded[0].patient_id
    msh10 = [d for d in patient.iterfind("ParticipantObjectDetail") if d.get("type") == "MSH-10"]
    assert msh10, "the message control id is in the patient object"


def test_a_read_whose_record_cannot_be_written_is_not_answered(server, monkeypatch):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    assert SoapClient(server.url + "/xds/registry").call(
        C.ACTION_REGISTER, builder.simple_submission(pid)).body.get("status") == C.RESPONSE_SUCCESS

    def broken(*_a, **_k):  # fault injection: the audit database refuses the write
        raise OSError("disk full")

    monkeypatch.setattr(server.auditor.store, "append", broken)
    reply = SoapClient(server.url + "/xds/registry").call(C.ACTION_QUERY, builder.find_documents_request(pid))
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    assert reply.body.find(f".//{{{C.NS_RIM}}}ExtrinsicObject") is None  # nothing disclosed
    assert "could not be recorded" in reply.raw.decode()
    # A change already made keeps its answer.
    pid2 = new_pid()
    server.registry.store.add_patient(pid2)
    reply = SoapClient(server.url + "/xds/registry").call(C.ACTION_REGISTER, builder.simple_submission(pid2))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS
    monkeypatch.undo()
    # And the server keeps serving, and recording.
    before = server.auditor.store.records(0, 100000)[-1][0]
    reply = SoapClient(server.url + "/xds/registry").call(C.ACTION_QUERY, builder.find_documents_request(pid))
    assert reply.body.find(f".//{{{C.NS_RIM}}}ExtrinsicObject") is not None
    assert [kind(e) for e in events(server.auditor.store, before)] == ["ITI-18"]


def run_cli(*args) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(args))
    return code, out.getvalue()


def test_xds_audit_reads_status_log_records_and_notifications(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    SoapClient(server.url + "/xds/registry").call(C.ACTION_REGISTER, builder.simple_submission(pid))
    SoapClient(server.url + "/xds/registry").call(C.ACTION_QUERY, builder.find_documents_request(pid))
    code, out = run_cli("audit", "status", "--url", server.url)
    assert code == 0 and "(none configured: records are kept here)" in out and "pending" in out
    code, out = run_cli("audit", "log", pid, "--url", server.url)
    assert code == 0 and "query" in out and "submit" in out and "administrator" in out
    code, out = run_cli("audit", "records", "--url", server.url, "--limit", "1000")
    assert code == 0 and "ITI-42" in out and "ITI-18" in out and "application-start" in out
    code, out = run_cli("audit", "records", "--url", server.url, "--xml", "--limit", "3")
    assert code == 0 and out.count("<AuditMessage>") == 3
    code, out = run_cli("audit", "notifications", "--url", server.url)
    assert code == 0 and out.strip() == "no notifications"
    code, out = run_cli("audit", "log", "NOBODY^^^&1.2.3&ISO", "--url", server.url, "--json")
    assert code == 0 and '"entries": []' in out


# --- a kill -9 ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kill_9_loses_no_record_of_an_answered_request(tmp_path):
    data, port = str(tmp_path / "data"), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--port", str(port), "--data", data,
                             "--no-patient-check"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "server.log", "wb"))
    try:
        assert "xds:" in proc.stdout.readline().decode()
        url = f"http://127.0.0.1:{port}/xds/registry"
        answered: list[tuple[str, str]] = []   # (transaction, the uid or patient the record must name)
        lock = threading.Lock()
        stop = threading.Event()

        def client(n):
            while not stop.is_set():
                pid = new_pid()
                try:
                    if n % 2:
                        sub = builder.simple_submission(pid)
                        ss_uid = next(e.get("value") for e in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
                                      if e.get("identificationScheme") == C.SS_UNIQUE_ID)
                        reply = SoapClient(url, 5).call(C.ACTION_REGISTER, sub)
                        key = ("ITI-42", ss_uid)
                    else:
                        reply = SoapClient(url, 5).call(C.ACTION_QUERY, builder.find_documents_request(pid))
                        key = ("ITI-18", pid)
                except (TransportError, OSError):
                    return
                if reply.status == 200 and reply.body is not None:
                    with lock:
                        answered.append(key)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(answered) > 20, "the load reached the server"
    store = AuditStore(make_engine(f"sqlite:///{os.path.join(data, 'registry.db')}"))
    named = set()
    for e in events(store):
        if isinstance(e, R.AuditEvent):
            named.add((e.transaction, e.submission_set_uid if e.transaction == "ITI-42" else e.patient_id))
    missing = [k for k in answered if k not in named]
    assert not missing, f"{len(missing)} answered requests have no record, e.g. {missing[:3]}"


def test_the_audit_tree_migrates_to_its_model(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from xds import migrate
    from xds.audit.store import metadata

    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "audit")
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"include_name": migrate.own_tables(metadata),
                                                         "compare_type": True})
            assert compare_metadata(ctx, metadata) == []
        migrate.upgrade(engine, "audit")  # a second run changes nothing
        assert migrate.current(engine, "audit") == "audit_0001"
    finally:
        engine.dispose()


def test_pruning_forgets_only_records_the_repository_has(tmp_path):
    import datetime as dt

    store = AuditStore(make_engine(f"sqlite:///{tmp_path}/p.db"))
    store.migrate()
    events_ = [R.SystemEvent(kind="application-start", node=R.Node(user_id="x"), sequence=0) for _ in range(3)]
    store.append([(e.record_id, R.to_stored(e)) for e in events_])
    (s1, _), (s2, _), _ = store.lease_records(10, 60)
    store.records_done([s1], confirmed=True)
    store.records_done([s2], confirmed=False)
    assert store.prune(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)) == 0   # too young
    assert store.prune(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)) == 2
    left = store.records(0, 10)
    assert len(left) == 1 and not left[0][2] and not left[0][3]   # the pending one stays


def test_a_request_s_rows_are_written_all_or_none(db_url):
    """PostgreSQL writes a request's record, access entries and notifications in one message of several
    INSERTs outside a transaction block; the server runs it as one implicit transaction. An access entry
    the database refuses (here a patient_key too long for its column, which _cut does not shorten) must
    take the record with it, on both backends, and a good request afterwards writes everything."""
    import datetime as dt

    from xds.audit.store import Access, Notification

    store = AuditStore(make_engine(db_url))
    try:
        store.migrate()
        now = dt.datetime.now(dt.timezone.utc)

        def request(patient_key):
            e = R.SystemEvent(kind="application-start", node=R.Node(user_id="x"), sequence=0)
            access = Access(patient_key=patient_key, at=now, action="query", transaction="ITI-18",
                            mode="bris_de_glace", outcome="ok", person="PS1", document_title="CR d'op\u00e9ration")
            note = Notification(patient_key=patient_key, recipient="patient", recipient_id=patient_key,
                                mode="bris_de_glace", at=now, person="PS1")
            return [(e.record_id, R.to_stored(e))], [access], [note]

        with pytest.raises(Exception):
            store.append(*request("P" * 301 if db_url.startswith("postgresql") else None))
        assert store.records(0, 10) == []
        assert store.accesses("P" * 301, include_secret=True) == [] and store.notifications() == []

        store.append(*request("1234^^^&1.2.3&ISO"))
        assert len(store.records(0, 10)) == 1
        [a] = store.accesses("1234^^^&1.2.3&ISO", include_secret=True)
        assert a["document_title"] == "CR d'op\u00e9ration" and a["mode"] == "bris_de_glace"
        [n] = store.notifications()
        assert n["recipient"] == "patient" and n["patient_key"] == "1234^^^&1.2.3&ISO"
        # The server keeps serving on the same pool: a read after the refused write sees a usable connection.
        store.append(*request("5678^^^&1.2.3&ISO"))
        assert len(store.records(0, 10)) == 2
    finally:
        store.engine.dispose()
