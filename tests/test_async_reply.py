"""Asynchronous WS-Addressing replies over real HTTP on 127.0.0.1 (xds/async_reply.py).

A request whose wsa:ReplyTo is a listener of this test (on the server's async_reply_to list) gets HTTP
202 with an empty body, and its answer arrives at the listener with wsa:RelatesTo = the request's
MessageID, the response Action and wsa:To = the listener; ITI-41 and ITI-43 answers are MTOM, ITI-43's
document byte for byte. A ReplyTo off the list, or no MessageID, is a SOAP fault on the request's own
response and nothing is stored; an anonymous ReplyTo is answered as before; a ReplyTo nobody listens
on does not stop the server; the transaction's audit record is written as for a synchronous request.
"""
from __future__ import annotations

import http.client
import socket
import time

import pytest
from lxml import etree

from conformance.async_listener import ReplyListener, async_envelope, reply_to_header, send_async
from node.server import Services
from node.transfer import provide_and_register, retrieve_request
from xds import builder
from xds import constants as C
from xds import mtom
from xds.async_reply import ANONYMOUS, Replies, allowed
from xds.audit import records as R
from xds.client import SoapClient
from xds.settings import Settings
from tests.helpers import by_unique_id, new_pid, unique_ids

NS = {"rs": C.NS_RS, "s": C.NS_SOAP12, "a": C.NS_WSA, "x": C.NS_XDSB, "q": C.NS_QUERY, "rim": C.NS_RIM}
REPO = "1.2.250.1.999.3.1"
DOCUMENT = b"\x00\x01 compte rendu \xc3\xa9\r\n--MIMEBoundary\r\n" + bytes(range(256))


@pytest.fixture
def listener():
    with ReplyListener() as lst:
        yield lst


def start(tmp_path, listener, db=None, **kw) -> Services:
    return Services(Settings(role="all", port=0, data=str(tmp_path / "data"), db=db, settle_interval=0,
                             async_reply_to=[listener.url] if listener is not None else [], **kw)).start()


@pytest.fixture
def server(tmp_path, listener):
    services = start(tmp_path, listener)
    yield services
    services.stop()


def patient(server) -> str:
    pid = new_pid()
    server.registry.store.add_patient(pid)
    return pid


def post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    c = SoapClient(url, 30)
    reply = c.send_raw(body, {"Content-Type": content_type})
    return reply.status, reply.raw


def status_of(body) -> str:
    rr = body if body.get("status") else body.find("rs:RegistryResponse", NS)
    return rr.get("status")


def check_headers(arrival, message_id: str, action: str, listener) -> None:
    env = arrival.reply.envelope
    assert env is not None and env.version == "1.2"
    assert arrival.relates_to == message_id
    assert env.action == C.response_action(action)
    assert env.to == listener.url
    assert env.message_id and env.message_id != message_id


def registry(server) -> str:
    return server.url + "/xds/registry"


def repository(server) -> str:
    return server.url + "/xds/repository"


def records(server, after: int = 0) -> list:
    return [etree.fromstring(R.render(R.from_stored(stored, seq), "test"))
            for seq, stored, _, _ in server.auditor.store.records(after, 100000)]


def last_seq(server) -> int:
    rows = server.auditor.store.records(0, 1000000)
    return rows[-1][0] if rows else 0


# --- the four transactions answered asynchronously ----------------------------------------------------

def register_async(server, listener, pid):
    req = builder.simple_submission(pid)
    sent, answer, arrival, note = send_async(listener, registry(server), C.ACTION_REGISTER, req)
    return req, sent, answer, arrival, note


def test_iti42_then_iti18_answered_at_the_reply_to(server, listener):
    pid = patient(server)
    req, sent, answer, arrival, note = register_async(server, listener, pid)
    assert note is None, note
    assert answer.status == 202 and answer.raw == b""
    mid = etree.fromstring(sent).findtext(".//a:MessageID", namespaces=NS)
    check_headers(arrival, mid, C.ACTION_REGISTER, listener)
    assert status_of(arrival.reply.body) == C.RESPONSE_SUCCESS
    assert arrival.content_type.startswith("application/soap+xml")
    uid = unique_ids(req)["Document01"]
    assert by_unique_id(server.registry.store, uid)

    query = builder.find_documents_request(pid)
    sent, answer, arrival, note = send_async(listener, registry(server), C.ACTION_QUERY, query)
    assert note is None, note
    mid = etree.fromstring(sent).findtext(".//a:MessageID", namespaces=NS)
    check_headers(arrival, mid, C.ACTION_QUERY, listener)
    body = arrival.reply.body
    assert body.tag == C.q(C.NS_QUERY, "AdhocQueryResponse") and body.get("status") == C.RESPONSE_SUCCESS
    found = [ei.get("value") for ei in body.iter(C.q(C.NS_RIM, "ExternalIdentifier"))
             if ei.get("identificationScheme") == C.DE_UNIQUE_ID]
    assert found == [uid]


def test_iti41_then_iti43_mtom_byte_exact(server, listener):
    pid = patient(server)
    req = builder.simple_submission(pid, register=False)
    uid = unique_ids(req)["Document01"]
    pnr, attachments = provide_and_register(req, {"Document01": DOCUMENT})
    sent, answer, arrival, note = send_async(listener, repository(server), C.ACTION_PROVIDE, pnr,
                                             attachments=attachments, use_mtom=True)
    assert note is None, note
    assert answer.status == 202
    mid = mtom_message_id(sent)
    check_headers(arrival, mid, C.ACTION_PROVIDE, listener)
    assert arrival.content_type.startswith("multipart/related")  # MTOM in, MTOM out
    assert status_of(arrival.reply.body) == C.RESPONSE_SUCCESS

    rq = etree.Element(C.q(C.NS_XDSB, "RetrieveDocumentSetRequest"), nsmap={"xdsb": C.NS_XDSB})
    rq.append(retrieve_request(uid, REPO)[0])
    sent, answer, arrival, note = send_async(listener, repository(server), C.ACTION_RETRIEVE, rq, use_mtom=True)
    assert note is None, note
    check_headers(arrival, mtom_message_id(sent), C.ACTION_RETRIEVE, listener)
    reply = arrival.reply
    assert arrival.content_type.startswith("multipart/related") and reply.mtom is not None
    assert status_of(reply.body) == C.RESPONSE_SUCCESS
    found = mtom.resolve_xop(reply.body, reply.mtom)
    dr = reply.body.find("x:DocumentResponse", NS)
    assert dr.findtext("x:DocumentUniqueId", namespaces=NS) == uid
    assert found[dr.find("x:Document", NS)].read_bytes() == DOCUMENT


def mtom_message_id(sent: bytes) -> str:
    return etree.fromstring(sent).findtext(".//a:MessageID", namespaces=NS)


def test_postgresql_register_async(pg_url, tmp_path, listener):
    services = start(tmp_path, listener, db=pg_url)
    try:
        pid = patient(services)
        req, _, answer, arrival, note = register_async(services, listener, pid)
        assert note is None, note
        assert status_of(arrival.reply.body) == C.RESPONSE_SUCCESS
        assert by_unique_id(services.registry.store, unique_ids(req)["Document01"])
    finally:
        services.stop()


# --- refusals: answered on the request's own response, nothing processed ----------------------------

def fault_of(raw: bytes) -> tuple[list[str], str]:
    root = etree.fromstring(raw)
    values = root.xpath("//s:Fault/s:Code//s:Value/text()", namespaces=NS)
    return values, " ".join(root.xpath("//s:Reason/s:Text/text()", namespaces=NS))


def test_reply_to_not_on_the_list_is_refused_and_nothing_stored(server, listener):
    pid = patient(server)
    req = builder.simple_submission(pid)
    other = f"http://127.0.0.1:{listener.port}/elsewhere"
    envelope, _ = async_envelope(registry(server), C.ACTION_REGISTER, req, other)
    status, raw = post(registry(server), envelope, "application/soap+xml")
    assert status == 400
    codes, reason = fault_of(raw)
    assert codes == ["s:Sender", "a:InvalidAddressingHeader", "a:InvalidAddress"]
    assert "async_reply_to" in reason and other in reason
    assert not by_unique_id(server.registry.store, unique_ids(req)["Document01"])
    time.sleep(0.3)
    assert listener.arrivals() == []


def test_without_an_allow_list_every_non_anonymous_reply_to_is_refused(tmp_path, listener):
    services = start(tmp_path, None)
    try:
        pid = patient(services)
        req = builder.simple_submission(pid)
        sent, answer, arrival, note = send_async(listener, registry(services), C.ACTION_REGISTER, req, timeout=2)
        assert answer.status == 400 and arrival is None and "not 202" in note
        codes, reason = fault_of(answer.raw)
        assert codes == ["s:Sender", "a:InvalidAddressingHeader", "a:OnlyAnonymousAddressSupported"]
        assert not by_unique_id(services.registry.store, unique_ids(req)["Document01"])
        assert listener.arrivals() == []
    finally:
        services.stop()


def test_no_message_id_is_refused_and_nothing_stored(server, listener):
    pid = patient(server)
    req = builder.simple_submission(pid)
    envelope, mid = async_envelope(registry(server), C.ACTION_REGISTER, req, listener.url)
    root = etree.fromstring(envelope)
    el = root.find(".//a:MessageID", NS)
    el.getparent().remove(el)
    status, raw = post(registry(server), etree.tostring(root), "application/soap+xml")
    assert status == 400
    codes, reason = fault_of(raw)
    assert codes == ["s:Sender", "a:MessageAddressingHeaderRequired"]
    assert etree.fromstring(raw).findtext(".//a:ProblemHeaderQName", namespaces=NS) == "a:MessageID"
    assert not by_unique_id(server.registry.store, unique_ids(req)["Document01"])
    time.sleep(0.3)
    assert listener.arrivals() == []


def test_fault_to_not_on_the_list_is_refused(server, listener):
    pid = patient(server)
    req = builder.simple_submission(pid)
    envelope, _ = async_envelope(registry(server), C.ACTION_REGISTER, req, listener.url,
                                 extra_headers=[reply_to_header("http://127.0.0.1:1/faults", "FaultTo")])
    status, raw = post(registry(server), envelope, "application/soap+xml")
    assert status == 400 and fault_of(raw)[0][-1] == "a:InvalidAddress"
    assert not by_unique_id(server.registry.store, unique_ids(req)["Document01"])


def test_a_transaction_not_answered_asynchronously_is_refused(server, listener):
    update = builder.submit_objects_request([])
    envelope, _ = async_envelope(registry(server), C.ACTION_UPDATE, update, listener.url)
    status, raw = post(registry(server), envelope, "application/soap+xml")
    assert status == 400
    codes, reason = fault_of(raw)
    assert codes[-1] == "a:OnlyAnonymousAddressSupported" and "ITI-57" in reason


def test_anonymous_reply_to_is_still_synchronous(server, listener):
    pid = patient(server)
    req = builder.simple_submission(pid)
    envelope, mid = async_envelope(registry(server), C.ACTION_REGISTER, req, ANONYMOUS)
    reply = SoapClient(registry(server), 30).send_raw(envelope, {"Content-Type": "application/soap+xml"})
    assert reply.status == 200 and status_of(reply.body) == C.RESPONSE_SUCCESS
    assert reply.envelope.header(C.q(C.NS_WSA, "RelatesTo")).text == mid
    time.sleep(0.3)
    assert listener.arrivals() == []


def test_allow_list_matches_on_segment_boundaries():
    prefixes = ["https://Host.example:8443/replies"]
    assert allowed("https://host.example:8443/replies", prefixes)
    assert allowed("https://host.example:8443/replies/a?x=1", prefixes)
    assert not allowed("https://host.example:8443/replies-x", prefixes)
    assert not allowed("http://host.example:8443/replies", prefixes)
    assert not allowed("https://host.example/replies", prefixes)
    assert not allowed("https://user@host.example:8443/replies", prefixes)
    assert not allowed("mailto:someone@example.org", prefixes)
    with pytest.raises(ValueError, match="async_reply_to"):
        Settings(async_reply_to=["host.example/replies"]).validate()


# --- delivery failures, faults, audit --------------------------------------------------------------------

def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_reply_to_does_not_stop_the_server(tmp_path, listener, caplog):
    dead = f"http://127.0.0.1:{_closed_port()}/gone"
    services = Services(Settings(role="all", port=0, data=str(tmp_path / "data"), settle_interval=0,
                                 async_reply_to=[dead, listener.url])).start()
    try:
        pid = patient(services)
        req = builder.simple_submission(pid)
        envelope, mid = async_envelope(registry(services), C.ACTION_REGISTER, req, dead)
        with caplog.at_level("INFO", logger="xds.async_reply"):
            status, raw = post(registry(services), envelope, "application/soap+xml")
            assert status == 202 and raw == b""
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and '"delivered": false' not in caplog.text:
                time.sleep(0.05)
        assert '"delivered": false' in caplog.text and mid in caplog.text
        assert "XDSDocumentEntry" not in caplog.text  # the log names the exchange, never the content
        # Processed all the same (the submission is stored), and the server goes on answering.
        assert by_unique_id(services.registry.store, unique_ids(req)["Document01"])
        _, _, _, arrival, note = register_async(services, listener, pid)
        assert note is None and status_of(arrival.reply.body) == C.RESPONSE_SUCCESS
        reply = SoapClient(registry(services), 30).call(C.ACTION_QUERY, builder.find_documents_request(pid))
        assert reply.status == 200
    finally:
        services.stop()


def test_a_refused_submission_arrives_as_its_failure_response(server, listener):
    unknown = new_pid()  # never fed: XDSUnknownPatientId
    req = builder.simple_submission(unknown)
    _, answer, arrival, note = send_async(listener, registry(server), C.ACTION_REGISTER, req)
    assert note is None, note
    body = arrival.reply.body
    assert status_of(body) == C.RESPONSE_FAILURE
    assert [e.get("errorCode") for e in body.iter(C.q(C.NS_RS, "RegistryError"))] == ["XDSUnknownPatientId"]
    assert not by_unique_id(server.registry.store, unique_ids(req)["Document01"])


def test_the_transaction_is_audited_as_a_synchronous_one(server, listener):
    pid = patient(server)
    after = last_seq(server)
    query = builder.find_documents_request(pid)
    _, _, arrival, note = send_async(listener, registry(server), C.ACTION_QUERY, query)
    assert note is None, note
    deadline = time.monotonic() + 5
    found = []
    while time.monotonic() < deadline and not found:
        found = [r for r in records(server, after)
                 if r.find("EventIdentification/EventTypeCode").get("csd-code") == "ITI-18"]
        time.sleep(0.05)
    assert len(found) == 1
    rec = found[0]
    assert rec.find("EventIdentification").get("EventOutcomeIndicator") == "0"
    # The source's UserID is its ReplyTo address, as DICOM's audit message for ITI-18 says.
    users = [p.get("UserID") for p in rec.iterfind("ActiveParticipant")]
    assert listener.url in users
    patients = [o.get("ParticipantObjectID") for o in rec.iterfind("ParticipantObjectIdentification")]
    assert pid in patients


def test_busy_workers_refuse_with_endpoint_unavailable(tmp_path, listener):
    services = start(tmp_path, listener)
    try:
        # No worker and room for one request: the second finds the queue full, as under load.
        services.app._replies = Replies(workers=0, depth=1)
        pid = patient(services)
        first, second = builder.simple_submission(pid), builder.simple_submission(pid)
        status, _ = post(registry(services), async_envelope(registry(services), C.ACTION_REGISTER, first,
                                                            listener.url)[0], "application/soap+xml")
        assert status == 202
        envelope, _ = async_envelope(registry(services), C.ACTION_REGISTER, second, listener.url)
        status, raw = post(registry(services), envelope, "application/soap+xml")
        assert status == 503
        assert fault_of(raw)[0] == ["s:Receiver", "a:EndpointUnavailable"]
        assert not by_unique_id(services.registry.store, unique_ids(second)["Document01"])
    finally:
        services.stop()


def test_http_202_body_is_empty_on_the_wire(server, listener):
    pid = patient(server)
    envelope, mid = async_envelope(registry(server), C.ACTION_QUERY, builder.find_documents_request(pid),
                                   listener.url)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/xds/registry", body=envelope, headers={"Content-Type": "application/soap+xml"})
    resp = conn.getresponse()
    assert resp.status == 202 and resp.getheader("Content-Length") == "0" and resp.read() == b""
    conn.close()
    assert listener.wait(mid, 10) is not None


def test_an_authentication_failure_is_a_fault_sent_to_fault_to(tmp_path, listener):
    """WS-Addressing Core 3.4: a fault in answer to a request goes to its FaultTo (else its ReplyTo); only the
    faults about the addressing headers themselves come back on the request's own response."""
    from xds.security import issue
    from tests.test_xua import ALLOWED_CONTEXTS

    key, cert, _ = issue.signing_pair(str(tmp_path / "sts"))
    sts = issue.Issuer(key, cert)
    key2, cert2, _ = issue.signing_pair(str(tmp_path / "rogue"))
    rogue = issue.Issuer(key2, cert2)
    services = Services(Settings(role="all", port=0, data=str(tmp_path / "data"), settle_interval=0,
                                 check_patients=False, security="xua", xua_trust=[cert],
                                 xua_audiences=[issue.DEFAULT_AUDIENCE], xua_roles=["112247003"],
                                 xua_purposes=["TREATMENT"], xua_authn_contexts=ALLOWED_CONTEXTS,
                                 async_reply_to=[listener.url])).start()
    try:
        after = last_seq(services)
        pid = new_pid()
        req = builder.simple_submission(pid)
        fault_to = listener.url + "/faults"
        headers = [issue.wsse_security(rogue.issue("valid")), reply_to_header(fault_to, "FaultTo")]
        _, answer, arrival, note = send_async(listener, registry(services), C.ACTION_REGISTER, req,
                                              extra_headers=headers)
        assert note is None, note
        assert answer.status == 202
        assert arrival.path.endswith("/faults") and arrival.reply.is_fault
        assert arrival.reply.envelope.to == fault_to
        assert arrival.reply.envelope.action == "http://www.w3.org/2005/08/addressing/soap/fault"
        sub = arrival.reply.body.findtext(".//s:Subcode/s:Value", namespaces=NS)
        assert sub.startswith("wsse:")
        assert not by_unique_id(services.registry.store, unique_ids(req)["Document01"])
        # Audited as the refusal it is, as a synchronous one would be.
        kinds = [r.find("EventIdentification/EventTypeCode").get("csd-code") for r in records(services, after)]
        assert "ITI-42" in kinds

        # The same request with a valid assertion is answered at ReplyTo: the refusal was the assertion's.
        headers = [issue.wsse_security(sts.issue("valid")), reply_to_header(fault_to, "FaultTo")]
        services.registry.store.add_patient(pid)
        _, _, arrival, note = send_async(listener, registry(services), C.ACTION_REGISTER, req, extra_headers=headers)
        assert note is None, note
        assert not arrival.path.endswith("/faults") and status_of(arrival.reply.body) == C.RESPONSE_SUCCESS
    finally:
        services.stop()


def test_fault_to_elsewhere_with_an_anonymous_reply_to_is_refused(server, listener):
    pid = patient(server)
    req = builder.simple_submission(pid)
    envelope, _ = async_envelope(registry(server), C.ACTION_REGISTER, req, ANONYMOUS,
                                 extra_headers=[reply_to_header(listener.url, "FaultTo")])
    status, raw = post(registry(server), envelope, "application/soap+xml")
    assert status == 400
    codes, reason = fault_of(raw)
    assert codes[-1] == "a:OnlyAnonymousAddressSupported" and "FaultTo" in reason
    assert not by_unique_id(server.registry.store, unique_ids(req)["Document01"])


def test_soap11_request_is_answered_in_soap11(server, listener):
    pid = patient(server)
    _, answer, arrival, note = send_async(listener, registry(server), C.ACTION_QUERY,
                                          builder.find_documents_request(pid), version="1.1")
    assert note is None, note
    assert arrival.reply.envelope.version == "1.1" and arrival.content_type.startswith("text/xml")


def test_https_reply_to_gets_the_servers_client_certificate(tmp_path):
    """An https ReplyTo is reached over TLS with the server's own certificate as client identity, checked
    against tls_ca; a listener that requires a client certificate of that CA receives the reply."""
    from tests.certs import Authority
    from xds.tls import TlsFiles, client_context, server_context

    (tmp_path / "ca").mkdir()
    ca = Authority(str(tmp_path / "ca"))
    server_cert, server_key = ca.issue("registry")
    listener_cert, listener_key = ca.issue("127.0.0.1")
    consumer_cert, consumer_key = ca.issue("consumer")
    ctx = server_context(TlsFiles(listener_cert, listener_key, ca.path), require_client_cert=True)

    with ReplyListener(ssl_context=ctx) as lst:
        services = Services(Settings(role="all", port=0, data=str(tmp_path / "data"), settle_interval=0,
                                     tls_cert=server_cert, tls_key=server_key, tls_ca=ca.path,
                                     async_reply_to=[lst.url])).start()
        try:
            pid = patient(services)
            client_ctx = client_context(TlsFiles(consumer_cert, consumer_key, ca.path))
            _, answer, arrival, note = send_async(lst, registry(services), C.ACTION_QUERY,
                                                  builder.find_documents_request(pid), ssl_context=client_ctx)
            assert note is None, note
            assert lst.url.startswith("https://") and arrival.relates_to
            assert arrival.reply.body.get("status") == C.RESPONSE_SUCCESS
            assert arrival.peer and "commonName=registry" in arrival.peer  # the server's own certificate
        finally:
            services.stop()
