"""GET /metrics over real HTTP: the transactions counted once each with their outcome, the XDS error codes,
latency histograms, in-flight requests, the database pools, the audit outbox and the ITI-8 feed, in the
Prometheus text format, without a patient id, a uniqueId or a caller's name anywhere on the page; and
404 when the setting turns it off."""
from __future__ import annotations

import http.client
import os
import time

import pytest
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from node.server import Services
from node.transfer import provide_and_register, retrieve_request
from xds import builder
from xds import constants as C
from xds import soap
from xds.client import SoapClient
from xds.mllp import mllp_send
from xds.security import issue
from xds.security.issue import DEFAULT_AUDIENCE, Issuer
from xds.settings import Settings
from tests.helpers import new_pid

REPO = "1.2.250.1.999.3.88"
DOCUMENT = b"a document the metrics never name"
DOCTOR = ("112247003", "2.16.840.1.113883.6.96", "SNOMED CT", "Medical doctor")


def get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        conn.close()


def post(port: int, path: str, body: bytes, content_type: str = "application/soap+xml") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class Scrape:
    """One /metrics page: its text, and its samples by name and labels."""

    def __init__(self, port: int):
        status, ctype, body = get(port, "/metrics")
        assert status == 200, body[:300]
        assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
        self.text = body.decode("utf-8")
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels) -> float | None:
        found = [s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

    def total(self, name: str, **labels) -> float:
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def labelled(self, name: str) -> list[dict]:
        return [s.labels for s in self.samples if s.name == name]


def submission(pid: str):
    sub = builder.simple_submission(pid, 1, register=False)
    uid = next(ei.get("value") for ei in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
               if ei.get("identificationScheme") == C.DE_UNIQUE_ID)
    return sub, uid


def provide(services, pid: str) -> str:
    sub, uid = submission(pid)
    pnr, att = provide_and_register(sub, {"Document01": DOCUMENT})
    reply = SoapClient(services.url + "/xds/repository").call(C.ACTION_PROVIDE, pnr, attachments=att)
    assert reply.body.get("status") == C.RESPONSE_SUCCESS, reply.raw[:500]
    return uid


def feed_message(control_id: str, pid_number: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|PAT_IDENTITY_X_REF_MGR|IHE|REGISTRY|IHE|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5",
        "EVN||20240101120000",
        f"PID|||{pid_number}^^^&1.2.250.1.213.1.4.10&ISO||MESURE^HENRIETTE||19700101|F",
        "PV1||I",
    ])


def soap_with_xop_but_not_mtom() -> bytes:
    """An ITI-18 whose envelope names an attachment while the request is plain SOAP: a fault raised after
    the action is known, before the request reaches the pipeline."""
    body = builder.find_documents_request("X^^^&1.2.3&ISO")
    etree.SubElement(body, f"{{{C.NS_XOP}}}Include", href="cid:nothing")
    return soap.build_envelope(soap.SOAP12, C.ACTION_QUERY, None, body)


@pytest.fixture
def server(tmp_path):
    services = Services(Settings(port=0, data=str(tmp_path / "data"), repository_id=REPO, settle_interval=0,
                                 mllp_port=0)).start()
    yield services
    services.stop()


def test_each_transaction_is_counted_once_with_its_outcome_and_error_codes(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    uid = provide(server, pid)                                                      # ITI-41 success
    found = SoapClient(server.url + "/xds/registry").call(C.ACTION_QUERY, builder.find_documents_request(pid))
    assert found.body.get("status") == C.RESPONSE_SUCCESS                           # ITI-18 success
    got = SoapClient(server.url + "/xds/repository").call(C.ACTION_RETRIEVE, retrieve_request(uid, REPO),
                                                          use_mtom=True)
    assert got.body.find(f"{{{C.NS_RS}}}RegistryResponse").get("status") == C.RESPONSE_SUCCESS  # ITI-43 success
    unknown = new_pid()
    refused = SoapClient(server.url + "/xds/registry").call(C.ACTION_REGISTER, builder.simple_submission(unknown))
    assert refused.body.get("status") == C.RESPONSE_FAILURE                         # ITI-42 XDSUnknownPatientId
    status, body = post(server.port, "/xds/registry", b"<not a SOAP envelope")      # fault, no action read
    assert status == 400 and b"Fault" in body
    status, body = post(server.port, "/xds/registry", soap_with_xop_but_not_mtom())  # ITI-18 fault
    assert status == 400 and b"xop:Include" in body
    fed = f"M{os.getpid()}"
    assert "MSA|AA|MX1" in mllp_send("127.0.0.1", server.mllp.port, feed_message("MX1", fed))
    assert "MSA|A" in mllp_send("127.0.0.1", server.mllp.port, "MSH|^~\\&|broken")

    m = Scrape(server.port)
    requests = {(s["transaction"], s["outcome"]): m.value("xds_requests_total", **s)
                for s in m.labelled("xds_requests_total")}
    assert {k: v for k, v in requests.items() if v} == {
        ("ITI-41", "success"): 1, ("ITI-18", "success"): 1, ("ITI-43", "success"): 1, ("ITI-42", "failure"): 1,
        ("other", "soap_fault"): 1, ("ITI-18", "soap_fault"): 1}
    # The served transactions are there at zero before their first request.
    assert requests[("ITI-57", "success")] == 0 and requests[("ITI-62", "failure")] == 0
    assert m.value("xds_registry_errors_total", transaction="ITI-42", error_code="XDSUnknownPatientId",
                   severity="error") == 1
    assert m.total("xds_registry_errors_total") == 1
    for transaction, n in (("ITI-41", 1), ("ITI-18", 2), ("ITI-43", 1), ("ITI-42", 1), ("other", 1)):
        assert m.value("xds_request_duration_seconds_count", transaction=transaction) == n, transaction
        assert m.value("xds_request_duration_seconds_bucket", transaction=transaction, le="+Inf") == n
        assert 0 < m.value("xds_request_duration_seconds_sum", transaction=transaction) < 60
    assert m.value("xds_request_duration_seconds_bucket", transaction="ITI-41", le="0.001") is not None
    assert m.value("xds_request_duration_seconds_bucket", transaction="ITI-41", le="60.0") == 1
    assert {s["transaction"] for s in m.labelled("xds_requests_in_flight")} >= {"ITI-41", "ITI-18", "ITI-43"}
    assert m.total("xds_requests_in_flight") == 0
    assert m.value("xds_feed_messages_total", outcome="accepted") == 1
    assert m.value("xds_feed_messages_total", outcome="invalid") == 1

    # Registry and repository share one SQLite file, hence one pool, a QueuePool.
    assert m.labelled("xds_db_pool_info") == [{"store": "registry", "pool_class": "QueuePool"}]
    assert m.value("xds_db_pool_size", store="registry") >= 1
    assert m.value("xds_db_pool_checked_out", store="registry") == 0
    assert m.value("xds_db_pool_overflow", store="registry") >= 0
    # Audit on, no audit repository: every record waits in the outbox, and nothing is sending it.
    assert m.value("xds_audit_outbox_pending", kind="record") >= 5
    assert m.value("xds_audit_outbox_pending", kind="notification") == 0
    assert m.value("xds_audit_outbox_oldest_pending_seconds") >= 0
    assert m.value("xds_audit_delivery_enabled") == 0
    # prometheus_client's own collectors, on this application's registry.
    assert m.value("process_resident_memory_bytes") > 0
    assert m.value("python_info") == 1

    for secret in (pid, pid.split("^")[0], unknown.split("^")[0], uid, fed, "MESURE", "HENRIETTE", REPO,
                   "1.2.250.1.213.1.4.10", "127.0.0.1"):
        assert secret not in m.text, secret


def test_a_fault_inside_the_pipeline_is_counted_once_and_no_caller_name_shows(tmp_path):
    key, cert, _ = issue.signing_pair(str(tmp_path / "sts"))
    sts = Issuer(key, cert)
    services = Services(Settings(port=0, data=str(tmp_path / "data"), settle_interval=0, security="xua",
                                 xua_trust=[cert], xua_audiences=[DEFAULT_AUDIENCE])).start()
    try:
        pid = new_pid()
        services.registry.store.add_patient(pid)
        client = SoapClient(services.url + "/xds/registry")
        # No assertion: the authentication layer refuses with a WS-Security fault, inside the pipeline.
        denied = client.call(C.ACTION_QUERY, builder.find_documents_request(pid))
        assert denied.status in (400, 500) and denied.body.tag == f"{{{C.NS_SOAP12}}}Fault"
        assertion = sts.issue(subject="dr-zorglub-metrics", subject_name="Dr Zorglub Metrics", roles=[DOCTOR],
                              organization="Clinique Secrète", organization_id="urn:oid:1.2.250.1.71.4.2.2.77")
        ok = client.call(C.ACTION_QUERY, builder.find_documents_request(pid),
                         extra_headers=[issue.wsse_security(assertion)])
        assert ok.body.get("status") == C.RESPONSE_SUCCESS
        m = Scrape(services.port)
        assert m.value("xds_requests_total", transaction="ITI-18", outcome="soap_fault") == 1
        assert m.value("xds_requests_total", transaction="ITI-18", outcome="success") == 1
        assert m.value("xds_requests_total", transaction="other", outcome="soap_fault") is None
        assert m.value("xds_request_duration_seconds_count", transaction="ITI-18") == 2
        for secret in ("zorglub", "Zorglub", "Secrète", "Secr", "1.2.250.1.71.4.2.2.77", pid.split("^")[0]):
            assert secret not in m.text, secret
    finally:
        services.stop()


def test_audit_over_udp_empties_the_outbox_and_two_databases_are_two_pools(tmp_path):
    import socket

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        services = Services(Settings(
            port=0, data=str(tmp_path / "data"), repository_id=REPO, settle_interval=0,
            repository_db=f"sqlite:///{tmp_path}/repository.db", audit_interval=0.1,
            audit_repository=f"udp://127.0.0.1:{sink.getsockname()[1]}")).start()
        try:
            pid = new_pid()
            services.registry.store.add_patient(pid)
            provide(services, pid)
            deadline = time.monotonic() + 10
            while True:
                m = Scrape(services.port)
                if m.value("xds_audit_outbox_pending", kind="record") == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert m.value("xds_audit_outbox_pending", kind="record") == 0  # sent over UDP: none waits
            assert m.value("xds_audit_outbox_oldest_pending_seconds") == 0
            assert m.value("xds_audit_delivery_enabled") == 1
            assert sorted(x["store"] for x in m.labelled("xds_db_pool_info")) == ["registry", "repository"]
            for store in ("registry", "repository"):
                assert m.value("xds_db_pool_checked_out", store=store) == 0
                assert m.value("xds_db_pool_size", store=store) >= 1
            assert m.value("xds_requests_total", transaction="ITI-41", outcome="success") == 1
        finally:
            services.stop()
    finally:
        sink.close()


def test_without_audit_there_is_no_outbox_to_report(tmp_path):
    services = Services(Settings(port=0, data=str(tmp_path / "data"), settle_interval=0, audit=False)).start()
    try:
        m = Scrape(services.port)
        assert "xds_audit_outbox_pending" not in m.families
        assert m.labelled("xds_db_pool_info")
    finally:
        services.stop()


def test_metrics_off_answers_404_and_counts_nothing(tmp_path):
    services = Services(Settings(port=0, data=str(tmp_path / "data"), settle_interval=0, metrics=False)).start()
    try:
        status, _, _ = get(services.port, "/metrics")
        assert status == 404
        assert services.app._pipeline is not None and services.metrics is None
        status, _, body = get(services.port, "/")
        assert status == 200 and b"/metrics" not in body
        pid = new_pid()
        services.registry.store.add_patient(pid)
        reply = SoapClient(services.url + "/xds/registry").call(C.ACTION_REGISTER, builder.simple_submission(pid))
        assert reply.body.get("status") == C.RESPONSE_SUCCESS
    finally:
        services.stop()


def test_the_metrics_setting_reads_from_toml_and_the_environment(tmp_path):
    from xds import settings as settings_mod

    toml = tmp_path / "xds.toml"
    toml.write_text("[xds]\nmetrics = false\n")
    assert settings_mod.load(str(toml), env={}).metrics is False
    assert settings_mod.load(None, env={"XDS_METRICS": "off"}).metrics is False
    assert settings_mod.load(None, env={}).metrics is True


def test_two_servers_in_one_process_count_apart(tmp_path):
    a = Services(Settings(port=0, data=str(tmp_path / "a"), settle_interval=0)).start()
    b = Services(Settings(port=0, data=str(tmp_path / "b"), settle_interval=0)).start()
    try:
        pid = new_pid()
        a.registry.store.add_patient(pid)
        SoapClient(a.url + "/xds/registry").call(C.ACTION_QUERY, builder.find_documents_request(pid))
        assert Scrape(a.port).value("xds_requests_total", transaction="ITI-18", outcome="success") == 1
        assert Scrape(b.port).value("xds_requests_total", transaction="ITI-18", outcome="success") == 0
    finally:
        a.stop()
        b.stop()


def test_pool_figures_on_postgresql(pg_url, tmp_path):
    services = Services(Settings(port=0, role="registry", db=pg_url, data=str(tmp_path / "data"),
                                 settle_interval=0)).start()
    try:
        pid = new_pid()
        services.registry.store.add_patient(pid)
        reply = SoapClient(services.url + "/xds/registry").call(C.ACTION_REGISTER, builder.simple_submission(pid))
        assert reply.body.get("status") == C.RESPONSE_SUCCESS
        m = Scrape(services.port)
        assert m.labelled("xds_db_pool_info") == [{"store": "registry", "pool_class": "QueuePool"}]
        assert m.value("xds_db_pool_size", store="registry") == 10        # xds/db.py's pool_size
        assert m.value("xds_db_pool_max_overflow", store="registry") == 20
        assert m.value("xds_db_pool_checked_out", store="registry") == 0
        assert m.value("xds_db_pool_checked_in", store="registry") >= 1   # the connections the request used
        assert m.value("xds_db_pool_overflow", store="registry") == 0
        assert m.value("xds_requests_total", transaction="ITI-42", outcome="success") == 1
        assert m.value("xds_audit_outbox_pending", kind="record") >= 1
    finally:
        services.stop()


def test_outcomes_of_the_answer_kinds_and_codes_outside_the_vocabulary():
    from registry.feed_v3 import acknowledgement
    from xds.ebrim import registry_response
    from xds.errors import XdsError
    from xds.metrics import outcome_of

    partial = registry_response([XdsError("XDSRepositoryError", "one of two"),
                                 XdsError("PatientSaid:P123^^^&1.2.3&ISO", "a host's own code")],
                                status=C.RESPONSE_PARTIAL_SUCCESS)
    assert outcome_of(partial) == ("partial", [("XDSRepositoryError", "error"), ("other", "error")])
    warned = registry_response([XdsError("XDSExtraMetadataNotSaved", "kept out", severity=C.SEVERITY_WARNING)])
    assert outcome_of(warned) == ("success", [("XDSExtraMetadataNotSaved", "warning")])
    assert outcome_of(acknowledgement("AA")) == ("success", [])
    assert outcome_of(acknowledgement("AE")) == ("failure", [])
