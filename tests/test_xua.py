"""security = xua over real HTTP: every refusal rule with its bad assertion, and what a valid one reaches.

Assertions come from the project's own STS library (xds/security/issue.py), with the NIST kit's
variants; the server is configured with the Connectathon policy the kit expects (allowed role,
purpose of use and authentication contexts), as a lab would configure it.
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from lxml import etree

from node.server import Services
from node.transfer import provide_and_register
from registry import schema as RS
from repository import schema as PS
from xds import builder
from xds import constants as C
from xds.app import AppConfig, Endpoint, Operation, SoapResponse, XdsApp
from xds.cheroot_adapter import HttpServer
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.security import issue
from xds.security.issue import DEFAULT_AUDIENCE, Issuer
from xds.security.xua import AC_CLASSES, TrustStore, XuaAuthenticator, XuaConfig
from xds.settings import Settings
from xds.soap import WSSE_SECURITY

PID = "XUA1^^^&1.2.250.1.213.1.4.10&ISO"
REPO = "1.2.250.1.999.3.55"
ALLOWED_CONTEXTS = sorted(AC_CLASSES - {"urn:oasis:names:tc:SAML:2.0:ac:classes:InternetProtocol"})


@pytest.fixture(scope="module")
def sts(tmp_path_factory):
    key, cert, _ = issue.signing_pair(str(tmp_path_factory.mktemp("sts")))
    issuer = Issuer(key, cert)
    issuer.cert_path = cert  # the file the server trusts
    return issuer


@pytest.fixture(scope="module")
def rogue(tmp_path_factory):
    key, cert, _ = issue.signing_pair(str(tmp_path_factory.mktemp("rogue")))
    return Issuer(key, cert)


def settings(tmp, sts, **kw):
    return Settings(port=0, data=str(tmp), repository_id=REPO, check_patients=False, settle_interval=0,
                    security="xua", xua_trust=[sts_cert(sts)], xua_audiences=[DEFAULT_AUDIENCE],
                    xua_roles=["112247003"], xua_purposes=["TREATMENT"], xua_authn_contexts=ALLOWED_CONTEXTS, **kw)


def sts_cert(sts: Issuer) -> str:
    return sts.cert_path


@pytest.fixture(scope="module")
def server(tmp_path_factory, sts):
    services = Services(settings(tmp_path_factory.mktemp("xua"), sts)).start()
    yield services
    services.stop()


def query(server, headers):
    req = builder.find_documents_request(PID)
    return SoapClient(server.url + "/xds/registry").call(C.ACTION_QUERY, req, extra_headers=headers)


def provide(server, headers):
    sub = builder.simple_submission(PID, 1, register=False)
    pnr, att = provide_and_register(sub, {"Document01": b"xua document"})
    return SoapClient(server.url + "/xds/repository").call(C.ACTION_PROVIDE, pnr, attachments=att,
                                                           extra_headers=headers)


def fault_code(reply) -> str | None:
    if not reply.is_fault:
        return None
    sub = reply.body.find(f".//{{{C.NS_SOAP12}}}Subcode/{{{C.NS_SOAP12}}}Value")
    return sub.text if sub is not None else reply.body.findtext(f".//{{{C.NS_SOAP12}}}Value")


def stored(server) -> tuple[int, int]:
    with server.registry.store.engine.connect() as c:
        entries = c.execute(sa.select(sa.func.count()).select_from(RS.doc_entry)).scalar_one()
        documents = c.execute(sa.select(sa.func.count()).select_from(PS.document)).scalar_one()
    return entries, documents


REFUSED = [name for name, v in issue.VARIANTS.items() if v.outcome.startswith("refused") and v.profile != "vihf"]
ACCEPTED = [name for name, v in issue.VARIANTS.items() if v.outcome.startswith("accepted") and v.profile != "vihf"]


@pytest.mark.parametrize("variant", REFUSED)
def test_each_bad_assertion_is_refused_and_nothing_is_read_or_stored(server, sts, variant):
    before = stored(server)
    headers = [issue.wsse_security(sts.issue(variant))]
    for reply in (query(server, headers), provide(server, headers)):
        assert reply.status in (400, 500) and fault_code(reply).startswith("wsse:"), (variant, reply.raw[:600])
        assert b"RegistryObjectList" not in reply.raw  # nothing was read for the caller
    assert stored(server) == before


def test_the_kit_variants_are_all_decided(server):
    """Every NIST XUA variant has an outcome this server enforces (a missing one would pass unnoticed)."""
    assert set(issue.KIT_VARIANTS) <= set(REFUSED) | set(ACCEPTED)
    assert {"valid", "withauthzconsent"} <= set(ACCEPTED)


@pytest.mark.parametrize("variant", ["valid", "withauthzconsent"])
def test_a_valid_assertion_is_served(server, sts, variant):
    headers = [issue.wsse_security(sts.issue(variant))]
    reply = provide(server, headers)
    assert read_response_errors(reply.body)[0] == C.RESPONSE_SUCCESS, reply.raw[:600]
    reply = query(server, headers)
    assert reply.body.get("status") == C.RESPONSE_SUCCESS and b"ExtrinsicObject" in reply.raw


def test_no_assertion_is_refused(server):
    before = stored(server)
    for reply in (query(server, []), provide(server, [])):
        assert fault_code(reply) == "wsse:SecurityTokenUnavailable"
        assert "requires a SAML 2.0 assertion" in reply.raw.decode()
    assert stored(server) == before


def test_two_assertions_or_two_headers_are_refused(server, sts):
    two = issue.wsse_security(sts.issue("valid"))
    two.append(sts.issue("valid"))
    assert fault_code(query(server, [two])) == "wsse:InvalidSecurity"
    headers = [issue.wsse_security(sts.issue("valid")), issue.wsse_security(sts.issue("valid"))]
    assert fault_code(query(server, headers)) == "wsse:InvalidSecurity"


def test_a_tampered_assertion_fails_its_check(server, sts):
    a = sts.issue("valid")
    a.find(".//{urn:oasis:names:tc:SAML:2.0:assertion}NameID").text = "someone-else"
    reply = query(server, [issue.wsse_security(a)])
    assert fault_code(reply) == "wsse:FailedCheck"
    assert "someone-else" not in reply.raw.decode()  # refusals never echo the token


def test_an_assertion_from_an_untrusted_issuer_is_refused(server, rogue):
    reply = query(server, [issue.wsse_security(rogue.issue("valid"))])
    assert fault_code(reply) == "wsse:FailedAuthentication" and "trust store" in reply.raw.decode()


def test_a_reused_assertion_is_accepted_by_default_and_refused_when_asked(tmp_path, server, sts):
    headers = [issue.wsse_security(sts.issue("valid"))]
    assert not query(server, headers).is_fault and not query(server, headers).is_fault
    strict = Services(settings(tmp_path, sts, xua_refuse_replay=True)).start()
    try:
        assert not query(strict, headers).is_fault
        reply = query(strict, headers)
        assert fault_code(reply) == "wsse:FailedAuthentication" and "used before" in reply.raw.decode()
    finally:
        strict.stop()


def test_without_xua_a_mustunderstand_security_header_is_refused(tmp_path, sts):
    plain = Services(Settings(port=0, data=str(tmp_path), check_patients=False, settle_interval=0)).start()
    try:
        reply = query(plain, [issue.wsse_security(sts.issue("valid"))])
        assert reply.is_fault and "MustUnderstand" in reply.raw.decode() and "Security" in reply.raw.decode()
    finally:
        plain.stop()


def test_the_handler_receives_the_principal(tmp_path, sts):
    seen = []

    def handler(req):
        seen.append(req.principal)
        return SoapResponse(etree.Element("ok"))

    auth = XuaAuthenticator(XuaConfig(TrustStore([sts_cert(sts)]), audiences=(DEFAULT_AUDIENCE,)))
    app = XdsApp([Endpoint("/x", {"urn:test": Operation(handler, "urn:testResponse")})],
                 AppConfig(authenticator=auth))
    http = HttpServer(app, "127.0.0.1", 0)
    http.start()
    try:
        a = sts.issue("valid", patient_id=PID, organization="Clinique X", organization_id="1.2.3.4")
        reply = SoapClient(f"http://127.0.0.1:{http.port}/x").call("urn:test", etree.Element("q"),
                                                                     extra_headers=[issue.wsse_security(a)])
        assert not reply.is_fault, reply.raw[:400]
    finally:
        http.stop()
    p, = seen
    assert p.mode == "xua" and p.name_id and p.patient_id == PID and p.assertion_id == a.get("ID")
    assert p.organization == "Clinique X" and p.organization_id == "1.2.3.4"
    assert [r.code for r in p.roles] == ["112247003"] and [u.code for u in p.purposes_of_use] == ["TREATMENT"]
    assert p.issuer and p.authn_context


def test_anonymous_listening_off_loopback_needs_to_be_asked_for(tmp_path):
    with pytest.raises(ValueError, match="allow-anonymous"):
        Settings(host="0.0.0.0", data=str(tmp_path)).validate()
    Settings(host="0.0.0.0", data=str(tmp_path), allow_anonymous=True).validate()
    with pytest.raises(ValueError, match="xua_trust"):
        Settings(host="0.0.0.0", data=str(tmp_path), security="xua").validate()


def test_security_header_is_passed_on_without_mustunderstand():
    from xds.app import SoapRequest
    from xds import soap

    a = issue.wsse_security(etree.Element("{urn:oasis:names:tc:SAML:2.0:assertion}Assertion"))
    env = soap.Envelope(version=soap.SOAP12, body=etree.Element("b"), headers=[a])
    passed, = SoapRequest(envelope=env, environ={}, request_id="r").security_to_pass_on()
    assert passed.tag == WSSE_SECURITY and not any("mustUnderstand" in k for k in passed.attrib)
    assert any("mustUnderstand" in k for k in a.attrib)  # the caller's header is left as it came
