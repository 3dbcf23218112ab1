"""The registry endpoint over real HTTP on 127.0.0.1: ITI-42, bad input, WSDL, the ITI-8 feed."""
import http.client
import os
import socket

import pytest
from lxml import etree

from xds import builder
from xds import constants as C
from xds import soap
from xds.client import SoapClient
from xds.mllp import mllp_send
from node.server import Services
from xds.settings import Settings
from tests.helpers import new_pid

NS = {"rs": C.NS_RS, "s": C.NS_SOAP12, "s11": C.NS_SOAP11, "a": C.NS_WSA}


@pytest.fixture
def server(db_url, tmp_path):
    s = Settings(role="all", port=0, data=str(tmp_path / "data"), db=db_url, mllp_port=0,
                 max_request_bytes=2 * 1024 * 1024)
    services = Services(s).start()
    yield services
    services.stop()


def post(server, body: bytes, content_type: str, path="/xds/registry", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.getheader("Content-Type"), data


def register_call(server, request):
    return SoapClient(server.url + "/xds/registry").call(C.ACTION_REGISTER, request)


def fault_reason(data: bytes) -> str:
    root = etree.fromstring(data)
    return " ".join(root.xpath("//s:Reason/s:Text/text() | //faultstring/text()", namespaces=NS))


def assert_still_serving(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    reply = register_call(server, builder.simple_submission(pid))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS


def test_register_success_with_ws_addressing(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    reply = register_call(server, builder.simple_submission(pid, 2, folder_too=True))
    assert reply.status == 200
    assert reply.body.tag == f"{{{C.NS_RS}}}RegistryResponse"
    assert reply.body.get("status") == C.RESPONSE_SUCCESS
    assert reply.envelope.action == C.ACTION_REGISTER + "Response"
    relates = reply.envelope.header(f"{{{C.NS_WSA}}}RelatesTo")
    assert relates is not None and relates.text.startswith("urn:uuid:")


def test_register_failure_answers_registry_error_list(server):
    reply = register_call(server, builder.simple_submission(new_pid()))  # patient never fed
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    err = reply.body.find(".//rs:RegistryError", NS)
    assert err.get("errorCode") == "XDSUnknownPatientId"
    assert err.get("severity") == C.SEVERITY_ERROR and err.get("location")


def test_soap11_is_answered_in_soap11(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    reply = SoapClient(server.url + "/xds/registry").call(C.ACTION_REGISTER, builder.simple_submission(pid),
                                                          version=soap.SOAP11)
    assert reply.envelope.version == soap.SOAP11 and reply.content_type.startswith("text/xml")
    assert reply.body.get("status") == C.RESPONSE_SUCCESS


@pytest.mark.parametrize("body,ctype,status,words", [
    (b"<not-closed", "application/soap+xml", 400, "not well-formed"),
    (b"", "application/soap+xml", 400, "empty"),
    (b"<a/>", "application/soap+xml", 400, "not a SOAP Envelope"),
    (b'<Envelope xmlns="urn:wrong"><Body/></Envelope>', "application/soap+xml", 500, "namespace"),
    (b"{}", "application/json", 415, "not SOAP"),
])
def test_malformed_requests_get_soap_faults(server, body, ctype, status, words):
    code, rtype, data = post(server, body, ctype)
    assert code == status
    assert rtype.startswith("application/soap+xml")
    assert words in fault_reason(data)
    assert_still_serving(server)


def envelope(body: str, headers: str = "", action: str = C.ACTION_REGISTER) -> bytes:
    return (f'<s:Envelope xmlns:s="{C.NS_SOAP12}" xmlns:a="{C.NS_WSA}"><s:Header>'
            f'<a:Action s:mustUnderstand="true">{action}</a:Action>{headers}</s:Header>'
            f'<s:Body>{body}</s:Body></s:Envelope>').encode()


def test_unknown_action_is_a_fault_naming_the_action(server):
    code, _, data = post(server, envelope("<x/>", action="urn:example:Nope"), "application/soap+xml")
    assert code == 400 and "urn:example:Nope" in fault_reason(data)
    assert b"ActionNotSupported" in data


def test_missing_action_is_a_fault(server):
    body = f'<s:Envelope xmlns:s="{C.NS_SOAP12}"><s:Body><x/></s:Body></s:Envelope>'.encode()
    code, _, data = post(server, body, "application/soap+xml")
    assert code == 400 and "Action" in fault_reason(data)


def test_unknown_must_understand_header_is_refused(server):
    hdr = '<x:Secret xmlns:x="urn:example" s:mustUnderstand="true">1</x:Secret>'
    code, _, data = post(server, envelope("<x/>", hdr), "application/soap+xml")
    assert code == 500 and b"MustUnderstand" in data


def test_body_that_is_not_submit_objects_request_fails_with_registry_error(server):
    code, _, data = post(server, envelope('<q:AdhocQueryRequest xmlns:q="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"/>'),
                         "application/soap+xml")
    root = etree.fromstring(data)
    resp = root.find(".//rs:RegistryResponse", NS)
    assert code == 200 and resp.get("status") == C.RESPONSE_FAILURE
    assert resp.find(".//rs:RegistryError", NS).get("errorCode") == "XDSRegistryError"


def test_external_entities_and_dtds_are_refused(server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    body = (f'<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY x SYSTEM "file://{secret}">]>'
            f'<s:Envelope xmlns:s="{C.NS_SOAP12}"><s:Body><a>&x;</a></s:Body></s:Envelope>').encode()
    code, _, data = post(server, body, "application/soap+xml")
    assert code == 400 and b"TOP-SECRET" not in data
    assert "DOCTYPE" in fault_reason(data) or "entit" in fault_reason(data)


def raw_exchange(server, head: bytes, body: bytes) -> bytes:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server may answer and close before reading all we send; its answer is still readable
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    s.close()
    return data


def test_oversize_request_is_refused_before_reading(server):
    # Only the headers and a first slice are sent: the answer must come from Content-Length alone.
    head = (b"POST /xds/registry HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml\r\n"
            b"Content-Length: 3145728\r\n\r\n")
    data = raw_exchange(server, head, envelope("<x>" + "a" * 60000)[:65536])
    assert b" 413 " in data.split(b"\r\n", 1)[0]
    assert b"above the limit" in data
    assert_still_serving(server)


def test_truncated_body_is_a_fault(server):
    head = (b"POST /xds/registry HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml\r\n"
            b"Content-Length: 5000\r\n\r\n")
    data = raw_exchange(server, head, b"<s:Envelope")
    assert b" 400 " in data.split(b"\r\n", 1)[0]
    assert_still_serving(server)


def test_xop_include_without_mtom_is_a_fault(server):
    body = envelope(f'<x><xop:Include xmlns:xop="{C.NS_XOP}" href="cid:a"/></x>')
    code, _, data = post(server, body, "application/soap+xml")
    assert code == 400 and "not MTOM" in fault_reason(data)


def test_wsdl_is_served_and_loads_in_zeep(server):
    import zeep

    client = zeep.Client(server.url + "/xds/registry?wsdl")
    ops = client.service._binding._operations
    assert "DocumentRegistry_RegisterDocumentSet-b" in ops
    assert server.url in str(client.service._binding_options["address"])


def test_health_and_unknown_paths(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200 and b'"ok"' in resp.read()
    conn.request("GET", "/nowhere")
    resp = conn.getresponse()
    assert resp.status == 404 and b"/nowhere" in resp.read()


def test_iti8_feed_over_mllp_then_submission(server):
    pid_number = f"F{os.getpid()}"
    oid = "1.2.250.1.213.1.4.10"
    msg = "\r".join([
        "MSH|^~\\&|PAT_IDENTITY_X_REF_MGR|IHE|REGISTRY|IHE|20240101120000||ADT^A01^ADT_A01|MSG0001|P|2.5",
        "EVN||20240101120000",
        f"PID|||{pid_number}^^^&{oid}&ISO||DOE^JOHN||19700101|M",
        "PV1||I",
    ])
    ack = mllp_send("127.0.0.1", server.mllp.port, msg)
    assert "MSA|AA|MSG0001" in ack
    reply = register_call(server, builder.simple_submission(f"{pid_number}^^^&{oid}&ISO"))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS


def adhoc(query_id: str, params: dict, return_type: str = "LeafClass") -> etree._Element:
    q = C.NS_QUERY
    req = etree.Element(f"{{{q}}}AdhocQueryRequest", nsmap={"query": q, "rim": C.NS_RIM})
    etree.SubElement(req, f"{{{q}}}ResponseOption", returnType=return_type, returnComposedObjects="true")
    aq = etree.SubElement(req, f"{{{C.NS_RIM}}}AdhocQuery", id=query_id)
    for name, values in params.items():
        builder.slot(aq, name, values)
    return req


def test_iti18_over_http_finds_what_iti42_registered(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    register_call(server, builder.simple_submission(pid, 3))
    client = SoapClient(server.url + "/xds/registry")
    reply = client.call(C.ACTION_QUERY, adhoc(C.SQ_FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": [f"'{pid}'"],
        "$XDSDocumentEntryStatus": [f"('{C.STATUS_APPROVED}')"]}))
    assert reply.envelope.action == C.ACTION_QUERY + "Response"
    assert reply.body.get("status") == C.RESPONSE_SUCCESS
    found = reply.body.findall(f".//{{{C.NS_RIM}}}ExtrinsicObject")
    assert len(found) == 3 and all(e.get("status") == C.STATUS_APPROVED for e in found)
    refs = client.call(C.ACTION_QUERY, adhoc(C.SQ_FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": [f"'{pid}'"],
        "$XDSDocumentEntryStatus": [f"('{C.STATUS_APPROVED}')"]}, "ObjectRef"))
    assert len(refs.body.findall(f".//{{{C.NS_RIM}}}ObjectRef")) == 3


def test_iti18_bad_query_fails_with_code_and_parameter(server):
    reply = SoapClient(server.url + "/xds/registry").call(C.ACTION_QUERY, adhoc(C.SQ_FIND_DOCUMENTS, {
        "$XDSDocumentEntryStatus": [f"('{C.STATUS_APPROVED}')"]}))
    assert reply.body.tag == f"{{{C.NS_QUERY}}}AdhocQueryResponse"
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    err = reply.body.find(".//rs:RegistryError", NS)
    assert err.get("errorCode") == "XDSStoredQueryMissingParam"
    assert "$XDSDocumentEntryPatientId" in err.get("codeContext")


# --- referenceIdList (CXi, ITI TF-3 4.2.3.1.7) ----------------------------------------------------------

GLOBAL_IDS = ["urn:uuid:6b2ea1e8-1d6e-4e1f-9d0a-3c1f4b2a9e77^^^^urn:ihe:iti:xds:2013:uniqueId",
              "urn:oid:1.2.3.4.5.6^^^^urn:ihe:iti:xds:2013:accession",
              "URN:OID:1.2.250.1.999^^^^urn:ihe:iti:xds:2013:referral"]
NOT_GLOBAL = ["A1234^^^^urn:ihe:iti:xds:2013:accession",                 # a local id needs its authority
              "urn:uuid:not-a-uuid^^^^urn:ihe:iti:xds:2013:uniqueId",     # claims to be global, is not
              "urn:oid:1.2.x^^^^urn:ihe:iti:xds:2013:accession"]


@pytest.mark.parametrize("value", GLOBAL_IDS)
def test_a_globally_unique_reference_id_needs_no_assigning_authority(server, value):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    reply = register_call(server, builder.simple_submission(pid, doc_kwargs={"reference_ids": [value]}))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS, etree.tostring(reply.body)


@pytest.mark.parametrize("value", NOT_GLOBAL)
def test_any_other_reference_id_without_assigning_authority_is_refused(server, value):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    reply = register_call(server, builder.simple_submission(pid, doc_kwargs={"reference_ids": [value]}))
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    err = reply.body.find(".//rs:RegistryError", NS)
    assert err.get("errorCode") == "XDSRegistryMetadataError"
    assert "referenceIdList" in err.get("codeContext") and "unless CX.1 is a globally unique" in err.get("codeContext")
    found = SoapClient(server.url + "/xds/registry").call(C.ACTION_QUERY, builder.find_documents_request(pid))
    assert found.body.find(f".//{{{C.NS_RIM}}}ExtrinsicObject") is None  # nothing was stored
    # The same id with its assigning authority is taken.
    scoped = value.replace("^^^^", "^^^&1.2.3.4&ISO^", 1)
    reply = register_call(server, builder.simple_submission(pid, doc_kwargs={"reference_ids": [scoped]}))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS, etree.tostring(reply.body)
