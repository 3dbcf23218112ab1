"""XUA across the split deployment over mutual TLS: each hop authenticates as itself, and passes the
caller's assertion on, which the next hop verifies for signature and validity (not audience, not replay)."""
from __future__ import annotations

import pytest
from lxml import etree

from node.server import Services
from node.transfer import provide_and_register
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.security import issue
from xds.security.issue import DEFAULT_AUDIENCE, Issuer
from xds.settings import Settings
from xds.tls import TlsFiles, client_context
from tests.certs import Authority

PID = "HOP1^^^&1.2.250.1.213.1.4.10&ISO"
REPO = "1.2.250.1.999.3.44"
REPO_AUDIENCE = "https://repository.example/xds"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hops")
    ca = Authority(str(folder))
    key, cert, _ = issue.signing_pair(str(folder / "sts"))
    certs = {n: ca.issue(n) for n in ("registry", "repo", "consumer")}

    def settings(name, audience, **kw):
        c, k = certs[name]
        return Settings(port=0, data=str(folder / name), check_patients=False, settle_interval=0, security="xua",
                        xua_trust=[cert], xua_audiences=[audience], tls_cert=c, tls_key=k, tls_ca=ca.path,
                        repository_id=REPO, **kw)

    # Each service knows only its own name as an audience, so a pass on the next hop is a hop's pass.
    registry = Services(settings("registry", DEFAULT_AUDIENCE, role="registry")).start()
    repository = Services(settings("repo", REPO_AUDIENCE, role="repository", registry_url=registry.url + "/xds/registry",
                                   xua_systems=["O=XDS test,CN=registry"])).start()
    registry.registry.store.add_repository(REPO, repository.url + "/xds/repository", "O=XDS test,CN=repo")
    yield {"registry": registry, "repository": repository, "sts": Issuer(key, cert), "ca": ca, "certs": certs}
    repository.stop()
    registry.stop()


def client(w, url, who):
    cert, key = w["certs"][who]
    return SoapClient(url, 30, client_context(TlsFiles(cert, key, w["ca"].path)))


def status_of(reply):
    if reply.is_fault:
        return reply.body.findtext(f".//{{{C.NS_SOAP12}}}Subcode/{{{C.NS_SOAP12}}}Value")
    return read_response_errors(reply.body)[0]


def register_directly(w, who, headers):
    request = builder.simple_submission(PID, 1, repository_unique_id=REPO)
    return client(w, w["registry"].url + "/xds/registry", who).call(C.ACTION_REGISTER, request,
                                                                     extra_headers=headers)


def test_the_caller_s_assertion_travels_with_the_iti42_and_the_routed_iti43(world):
    w = world
    sub = builder.simple_submission(PID, 1, register=False)
    pnr, att = provide_and_register(sub, {"Document01": b"hop"})
    reply = client(w, w["repository"].url + "/xds/repository", "consumer").call(
        C.ACTION_PROVIDE, pnr, attachments=att,
        extra_headers=[issue.wsse_security(w["sts"].issue("valid", audience=REPO_AUDIENCE))])
    assert status_of(reply) == C.RESPONSE_SUCCESS, reply.raw[:500]
    # The consumer asks the registry (its assertion names the registry); the registry routes the ITI-43
    # to the host with the consumer's assertion, which the host takes as a hop's.
    uid = next(ei.get("value") for ei in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
               if ei.get("identificationScheme") == C.DE_UNIQUE_ID)
    req = etree.Element(C.q(C.NS_XDSB, "RetrieveDocumentSetRequest"), nsmap={"xdsb": C.NS_XDSB})
    dr = etree.SubElement(req, C.q(C.NS_XDSB, "DocumentRequest"))
    etree.SubElement(dr, C.q(C.NS_XDSB, "RepositoryUniqueId")).text = REPO
    etree.SubElement(dr, C.q(C.NS_XDSB, "DocumentUniqueId")).text = uid
    for audience, expected in ((DEFAULT_AUDIENCE, C.RESPONSE_SUCCESS), (REPO_AUDIENCE, "wsse:FailedAuthentication")):
        reply = client(w, w["registry"].url + "/xds/registry", "consumer").call(
            C.ACTION_RETRIEVE, req, use_mtom=True,
            extra_headers=[issue.wsse_security(w["sts"].issue("valid", audience=audience))])
        if expected == C.RESPONSE_SUCCESS:
            rr = reply.body.find(C.q(C.NS_RS, "RegistryResponse"))
            assert read_response_errors(rr)[0] == C.RESPONSE_SUCCESS, reply.raw[:800]
            assert reply.mtom and any(p.read_bytes() == b"hop" for p in reply.mtom.parts.values())
            reply.mtom.cleanup()
        else:
            assert status_of(reply) == expected  # the registry itself checks the audience


def test_a_known_repository_may_register_as_itself(world):
    assert status_of(register_directly(world, "repo", [])) == C.RESPONSE_SUCCESS


def test_an_unknown_system_needs_an_assertion(world):
    assert status_of(register_directly(world, "consumer", [])) == "wsse:SecurityTokenUnavailable"


def test_a_hop_checks_the_passed_assertion_s_signature_and_validity(world):
    w = world
    tampered = w["sts"].issue("valid")
    tampered.find(".//{urn:oasis:names:tc:SAML:2.0:assertion}NameID").text = "forged"
    assert status_of(register_directly(w, "repo", [issue.wsse_security(tampered)])) == "wsse:FailedCheck"
    expired = issue.wsse_security(w["sts"].issue("expired"))
    assert status_of(register_directly(w, "repo", [expired])) == "wsse:FailedAuthentication"


def test_a_hop_does_not_check_the_audience(world):
    """The assertion was made for the service the source called (the repository), not for the registry."""
    w = world
    other = issue.wsse_security(w["sts"].issue("valid", audience="https://repository.example/xds"))
    assert status_of(register_directly(w, "repo", [other])) == C.RESPONSE_SUCCESS
    assert status_of(register_directly(w, "consumer", [other])) == "wsse:FailedAuthentication"
