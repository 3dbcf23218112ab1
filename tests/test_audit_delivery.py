"""Records delivered to a real rsyslog (Debian's package, started by the test) over TLS with mutual
authentication, and over UDP: with rsyslog stopped the server keeps serving, and once it is back every
record arrives (none lost; a duplicate, which TLS syslog cannot rule out, is detectable by its key)."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from lxml import etree

from node.server import Services
from xds import builder
from xds import constants as C
from xds.audit import records as R
from xds.client import SoapClient
from xds.settings import Settings
from xds.tls import TlsFiles, client_context
from tests import rsyslog
from tests.certs import Authority
from tests.helpers import new_pid

pytestmark = pytest.mark.skipif(not rsyslog.available(), reason=rsyslog.unavailable_reason() or "")
ATNA_XSD = Path(__file__).resolve().parents[2] / "shared" / "testkits" / "atna" / "dicom2024d.xsd"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(str(folder))
    return {"folder": folder, "ca": ca, "server": ca.issue("xds-server"), "arr": ca.issue("audit-repository")}


@pytest.fixture
def arr(pki):
    cert, key = pki["arr"]
    with rsyslog.Rsyslog(pki["ca"].path, cert, key) as r:
        yield r


def start(tmp_path, pki, destination, **kw) -> Services:
    cert, key = pki["server"]
    return Services(Settings(port=0, data=str(tmp_path / "data"), tls_cert=cert, tls_key=key, tls_ca=pki["ca"].path,
                             audit_repository=destination, audit_interval=0.1, settle_interval=0, **kw)).start()


def query(services, pki, pid) -> str:
    cert, key = pki["server"]
    ctx = client_context(TlsFiles(cert, key, pki["ca"].path))
    reply = SoapClient(services.url + "/xds/registry", 10, ctx).call(C.ACTION_QUERY, builder.find_documents_request(pid))
    return reply.body.get("status")


def outbox_keys(services) -> set[tuple[str, int]]:
    return {(R.from_stored(stored, seq).record_id, seq) for seq, stored, _, _ in services.auditor.store.records(0, 100000)}


def received_keys(arr) -> list[tuple[str, int]]:
    return [R.record_key(m) for m in arr.messages()]


def wait_until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_records_reach_rsyslog_over_tls_and_none_is_lost_while_it_is_down(tmp_path, pki, arr):
    services = start(tmp_path, pki, f"tls://127.0.0.1:{arr.tls_port}")
    try:
        pid = new_pid()
        for _ in range(5):
            assert query(services, pki, pid) == C.RESPONSE_SUCCESS
        wait_until(lambda: set(received_keys(arr)) >= outbox_keys(services))
        status = services.auditor.store.status()
        assert status["pending"] == 0 and status["delivered"] == status["records"] >= 6

        arr.stop()
        for _ in range(10):  # the server keeps serving while the repository is down
            assert query(services, pki, pid) == C.RESPONSE_SUCCESS
        wait_until(lambda: services.auditor.store.status()["last_error"] is not None)
        assert services.auditor.store.status()["pending"] >= 10

        arr.start()
        wait_until(lambda: set(received_keys(arr)) >= outbox_keys(services), timeout=60)
        keys = received_keys(arr)
        assert set(keys) == outbox_keys(services), "every record arrived, and nothing else"
        duplicates = [k for k, n in Counter(keys).items() if n > 1]
        # At least once: a duplicate is possible and detectable by (record id, sequence); a record id
        # never comes with two sequence numbers.
        assert len({rid for rid, _ in keys}) == len(set(keys))
        wait_until(lambda: services.auditor.store.status()["pending"] == 0)
        print(f"{len(keys)} messages, {len(set(keys))} records, {len(duplicates)} duplicated")
        for message in arr.messages():
            rec = etree.fromstring(message)
            assert rec.tag == "AuditMessage"
            if ATNA_XSD.exists():
                schema = etree.XMLSchema(etree.parse(str(ATNA_XSD)))
                assert schema.validate(rec), schema.error_log
        syslog_fields = arr.records()[-1]
        assert syslog_fields["raw"].startswith(b"<85>1 ") or b"IHE+RFC-3881" in syslog_fields["raw"]
    finally:
        services.stop()


def test_a_client_the_repository_does_not_trust_delivers_nothing(tmp_path, pki, arr):
    rogue = Authority(str(tmp_path), cn="rogue CA")
    cert, key = rogue.issue("rogue")
    services = Services(Settings(port=0, data=str(tmp_path / "data"), tls_cert=cert, tls_key=key, tls_ca=rogue.path,
                                 audit_repository=f"tls://127.0.0.1:{arr.tls_port}", audit_tls_ca=pki["ca"].path,
                                 audit_interval=0.1, settle_interval=0)).start()
    try:
        wait_until(lambda: services.auditor.store.status()["last_error"] is not None)
        assert arr.messages() == []
        assert services.auditor.store.status()["pending"] >= 1   # kept, not dropped
    finally:
        services.stop()


def test_udp_sends_once_and_never_clears_the_outbox(tmp_path, pki, arr):
    services = start(tmp_path, pki, f"udp://127.0.0.1:{arr.udp_port}")
    try:
        pid = new_pid()
        for _ in range(3):
            assert query(services, pki, pid) == C.RESPONSE_SUCCESS
        wait_until(lambda: services.auditor.store.status()["pending"] == 0)
        status = services.auditor.store.status()
        assert status["delivered"] == 0 and status["sent_unconfirmed"] == status["records"] >= 4
        wait_until(lambda: set(received_keys(arr)) >= outbox_keys(services))
        assert len(services.auditor.store.records(0, 100000)) == status["records"]  # still there
    finally:
        services.stop()
