"""WS-Addressing strictness over real HTTP: by default a request that names its action only in the
Content-Type is served (the documented leniency); with require_ws_addressing, a request without wsa:Action
or wsa:MessageID is a SOAP fault (wsa:MessageAddressingHeaderRequired) that stores nothing, and a request
with both is served."""
from __future__ import annotations

import http.client
import uuid

import pytest
from lxml import etree

from node.server import Services
from tests.helpers import new_pid
from xds import builder
from xds import constants as C
from xds.settings import Settings, load

NS = {"s": C.NS_SOAP12, "rs": C.NS_RS}


def envelope(body: etree._Element, *, action: bool, message_id: bool) -> bytes:
    headers = ""
    if action:
        headers += f'<a:Action s:mustUnderstand="1">{C.ACTION_REGISTER}</a:Action>'
    if message_id:
        headers += f"<a:MessageID>urn:uuid:{uuid.uuid4()}</a:MessageID>"
    return (f'<s:Envelope xmlns:s="{C.NS_SOAP12}" xmlns:a="{C.NS_WSA}"><s:Header>{headers}</s:Header><s:Body>'
            ).encode() + etree.tostring(body) + b"</s:Body></s:Envelope>"


def post(server, data: bytes) -> tuple[int, etree._Element]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/xds/registry", body=data, headers={
            "Content-Type": f'application/soap+xml; charset=UTF-8; action="{C.ACTION_REGISTER}"'})
        resp = conn.getresponse()
        return resp.status, etree.fromstring(resp.read())
    finally:
        conn.close()


def entries(server, pid: str) -> int:
    with server.registry.store.reading() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM reg_object WHERE patient_id = ?",
                                    (pid,)).scalar()


@pytest.fixture(scope="module", params=[False, True], ids=["lenient", "strict"])
def server(request, tmp_path_factory):
    services = Services(Settings(port=0, data=str(tmp_path_factory.mktemp("wsa")), settle_interval=0,
                                 require_ws_addressing=request.param)).start()
    yield services
    services.stop()


@pytest.mark.parametrize("action,message_id", [(False, False), (True, False), (False, True)])
def test_missing_headers(server, action, message_id):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    status, answer = post(server, envelope(builder.simple_submission(pid), action=action, message_id=message_id))
    if not server.settings.require_ws_addressing:
        assert status == 200 and answer.find(".//rs:RegistryResponse", NS).get("status") == C.RESPONSE_SUCCESS
        return
    assert status >= 400
    subcode = answer.find(".//s:Subcode/s:Value", NS).text
    reason = answer.find(".//s:Reason/s:Text", NS).text
    assert subcode.endswith("MessageAddressingHeaderRequired")
    for name, given in (("wsa:Action", action), ("wsa:MessageID", message_id)):
        assert (name in reason) is (not given)
    assert entries(server, pid) == 0


def test_both_headers_are_served(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    status, answer = post(server, envelope(builder.simple_submission(pid), action=True, message_id=True))
    assert status == 200 and answer.find(".//rs:RegistryResponse", NS).get("status") == C.RESPONSE_SUCCESS
    assert entries(server, pid) == 2


def test_the_setting_reads_from_toml_and_environment(tmp_path):
    cfg = tmp_path / "x.toml"
    cfg.write_text("require_ws_addressing = true\n")
    assert load(str(cfg), env={}).require_ws_addressing is True
    assert load(None, env={"XDS_REQUIRE_WS_ADDRESSING": "true"}).require_ws_addressing is True
    assert load(None, env={}).require_ws_addressing is False
