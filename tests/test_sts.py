"""The local STS (node/sts.py) and the assertions it issues (xds/security/issue.py), over real sockets
on 127.0.0.1: every variant is answered, signed ones verify with signxml against the issuer's
certificate and break when anything they say is changed, the times say what the variant says, the
VIHF carries every Table F attribute, and refusals are WS-Trust faults."""
from __future__ import annotations

import base64
import datetime as dt
import http.client
import os
import urllib.parse

import pytest
from lxml import etree
from signxml import DigestAlgorithm, SignatureMethod, XMLVerifier
from signxml.exceptions import InvalidInput, InvalidSignature
from signxml.verifier import SignatureConfiguration

from node import sts
from node.cli import main as cli_main
from tests.certs import Authority
from xds import soap
from xds.client import SoapClient
from xds.security import issue as I
from xds.security.saml import SecurityFault
from xds.security.vihf import VihfAuthenticator
from xds.security.xua import TrustStore, XuaAuthenticator, XuaConfig

S = I.NS_SAML2
NS = {"saml2": S, "ds": I.NS_DS, "hl7": I.NS_HL7}
PATIENT = "207058575627097^^^&1.2.250.1.213.1.4.10&ISO^NH"
SHA256_ONLY = SignatureConfiguration(signature_methods=frozenset({SignatureMethod.RSA_SHA256}),
                                     digest_algorithms=frozenset({DigestAlgorithm.SHA256}), location="./")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    key, cert, made = I.signing_pair(str(tmp_path_factory.mktemp("sts")))
    assert made
    with open(cert, "rb") as f:
        return key, cert, f.read()


@pytest.fixture(scope="module")
def stsd(pair):
    issuer = I.Issuer(pair[0], pair[1])
    server = sts.start(issuer)
    yield f"http://127.0.0.1:{server.port}{sts.PATH}", issuer
    server.stop()


def verify(assertion, cert_pem, config=SHA256_ONLY):
    return XMLVerifier().verify(etree.tostring(assertion), x509_cert=cert_pem.decode(), expect_config=config,
                                id_attribute="ID")


def when(assertion, path, attr):
    el = assertion if path == "." else assertion.find(path, NS)
    return dt.datetime.fromisoformat(el.get(attr).replace("Z", "+00:00"))


def attributes(assertion) -> dict[str, list]:
    out = {}
    for attr in assertion.iterfind("saml2:AttributeStatement/saml2:Attribute", NS):
        out[attr.get("Name")] = [next(iter(v), v) for v in attr.iterfind("saml2:AttributeValue", NS)]
    return out


def in_envelope(assertion):
    """The assertion as a server sees it: in wsse:Security of a whole SOAP 1.2 request, sent as bytes."""
    data = SoapClient("http://127.0.0.1:9/x").envelope("urn:test", etree.Element("ping"),
                                                      extra_headers=[I.wsse_security(assertion)])
    return soap.parse_envelope(data, understood={soap.WSSE_SECURITY}).headers


def post(url, body: bytes, headers=None):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("POST", parts.path, body=body,
                     headers={"Content-Type": "application/soap+xml; charset=UTF-8", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def fault_of(raw: bytes):
    env = soap.parse_envelope(raw)
    assert etree.QName(env.body).localname == "Fault"
    return I.fault_text(env.body)


# --- every variant, through the STS ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(I.VARIANTS))
def test_the_sts_answers_every_variant(stsd, pair, name):
    url, _ = stsd
    a = I.request_token(url, name, patient_id=PATIENT)
    assert a.tag == f"{{{S}}}Assertion"
    v = I.VARIANTS[name]
    signature = a.find("ds:Signature", NS)
    if name == "unsigned":
        assert signature is None
        return
    assert signature is not None
    # Enveloped, right after the Issuer, exclusive c14n, RSA-SHA256 / SHA-256, Reference to #ID.
    issuer = a.find("saml2:Issuer", NS)
    if issuer is not None:
        assert issuer.getnext() is signature
    info = signature.find("ds:SignedInfo", NS)
    assert info.find("ds:CanonicalizationMethod", NS).get("Algorithm") == "http://www.w3.org/2001/10/xml-exc-c14n#"
    assert info.find("ds:SignatureMethod", NS).get("Algorithm").endswith("#rsa-sha256")
    ref = info.find("ds:Reference", NS)
    assert ref.get("URI") == (f"#{a.get('ID')}" if a.get("ID") else "")
    assert [t.get("Algorithm") for t in ref.iterfind("ds:Transforms/ds:Transform", NS)] == [
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature", "http://www.w3.org/2001/10/xml-exc-c14n#"]
    if name == "invalidsignature":
        with pytest.raises(InvalidSignature):
            verify(a, pair[2])
        return
    result = verify(a, pair[2])
    assert result.signed_xml.tag == f"{{{S}}}Assertion"
    if name != "missingkeyinfo":
        assert a.find("ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS) is not None
    if v.profile == "vihf":
        assert attributes(a)[I.VIHF_AUTH_MODE][0].text == name.upper()


@pytest.mark.parametrize("name", [*I.KIT_VARIANTS, "invalidsignature", "missingkeyinfo", "invalidversion",
                                  "missingversion", "missingid", "missingissuer", "missingsubjectnameid",
                                  "invalidissueinstant", "invalidauthncontext"])
def test_a_xua_service_with_the_connectathon_policy_decides_as_the_table_says(stsd, pair, name):
    url, _ = stsd
    auth = XuaAuthenticator(XuaConfig(trust=TrustStore([pair[1]]), audiences=(I.DEFAULT_AUDIENCE,),
                                      roles=frozenset({I.ROLE_MEDICAL_DOCTOR.code}),
                                      purposes=frozenset({I.POU_TREATMENT.code}),
                                      authn_contexts=frozenset({I.AC_PASSWORD_PROTECTED})))
    headers = in_envelope(I.request_token(url, name, audience=I.DEFAULT_AUDIENCE))
    if I.VARIANTS[name].outcome == "accepted":
        principal = auth.authenticate(headers, None)
        assert principal.subject == name and principal.roles[0].code == "112247003"
        if name == "withauthzconsent":
            assert principal.attributes[I.BPPC_DOCID.lower()] == (I.CONSENT_DOCUMENT_ID,)
            assert principal.patient_id == I.CONSENT_PATIENT_ID
    else:
        with pytest.raises(SecurityFault):
            auth.authenticate(headers, None)


def test_tampering_with_anything_signed_breaks_the_signature(stsd, pair):
    url, _ = stsd
    original = etree.tostring(I.request_token(url, "valid", audience="urn:test:service", patient_id=PATIENT))
    verify(etree.fromstring(original), pair[2])
    changes = []
    a = etree.fromstring(original)
    for i, _ in enumerate(a.iterfind("saml2:AttributeStatement/saml2:Attribute", NS)):
        changes.append(("attribute", i))
    changes += [("nameid", 0), ("audience", 0), ("notonorafter", 0), ("role-code", 0), ("issuer", 0)]
    for what, i in changes:
        a = etree.fromstring(original)
        if what == "attribute":
            value = a.findall("saml2:AttributeStatement/saml2:Attribute", NS)[i].find("saml2:AttributeValue", NS)
            coded = next(iter(value), None)
            if coded is not None:
                coded.set("code", coded.get("code") + "X")
            else:
                value.text += "X"
        elif what == "nameid":
            a.find("saml2:Subject/saml2:NameID", NS).text = "someone-else"
        elif what == "audience":
            a.find(".//saml2:Audience", NS).text = "urn:test:other"
        elif what == "notonorafter":
            a.find("saml2:Conditions", NS).set("NotOnOrAfter", "2999-01-01T00:00:00.000Z")
        elif what == "role-code":
            a.find(".//hl7:Role", NS).set("displayName", "Administrator")
        elif what == "issuer":
            a.find("saml2:Issuer", NS).text = "CN=Mallory"
        with pytest.raises((InvalidSignature, InvalidInput)):
            verify(a, pair[2])


def test_a_signature_survives_the_envelope_and_a_server_verifies_it(stsd, pair):
    url, _ = stsd
    a = I.request_token(url, "valid")
    sec = I.wsse_security(a)
    assert sec.tag == soap.WSSE_SECURITY
    assert sec.get(f"{{{soap.C.NS_SOAP12}}}mustUnderstand") == "true"
    assert sec[0] is a
    auth = XuaAuthenticator(XuaConfig(trust=TrustStore([pair[1]]), audiences=(I.DEFAULT_AUDIENCE,)))
    principal = auth.authenticate(in_envelope(I.request_token(url, "valid")), None)
    assert principal.mode == "xua" and principal.issuer == I.Issuer(pair[0], pair[1]).subject_dn


# --- what the variants say ----------------------------------------------------------------------------


def test_valid_expired_and_notyetvalid_times(stsd):
    url, _ = stsd
    now = dt.datetime.now(dt.timezone.utc)
    valid = I.request_token(url, "valid")
    assert when(valid, "saml2:Conditions", "NotBefore") <= now + dt.timedelta(seconds=5)
    assert when(valid, "saml2:Conditions", "NotOnOrAfter") > now + dt.timedelta(minutes=55)
    expired = I.request_token(url, "expired")
    assert when(expired, "saml2:Conditions", "NotOnOrAfter") < now - dt.timedelta(minutes=30)
    assert when(expired, ".", "IssueInstant") < when(expired, "saml2:Conditions", "NotOnOrAfter")
    late = I.request_token(url, "notyetvalid")
    assert when(late, "saml2:Conditions", "NotBefore") > now + dt.timedelta(minutes=30)
    assert when(late, "saml2:Conditions", "NotOnOrAfter") > when(late, "saml2:Conditions", "NotBefore")


def test_xua_content(stsd, pair):
    url, issuer = stsd
    a = I.request_token(url, "valid", audience="urn:test:service", patient_id=PATIENT)
    assert a.get("Version") == "2.0" and a.get("ID").startswith("_") and a.get("IssueInstant").endswith("Z")
    assert a.find("saml2:Issuer", NS).text == issuer.subject_dn
    assert a.find("saml2:Issuer", NS).get("Format") == I.NAMEID_X509
    name_id = a.find("saml2:Subject/saml2:NameID", NS)
    assert (name_id.text, name_id.get("Format")) == ("valid", I.NAMEID_UNSPECIFIED)
    assert a.find("saml2:Subject/saml2:SubjectConfirmation", NS).get("Method") == I.BEARER
    assert a.find("saml2:Conditions/saml2:AudienceRestriction/saml2:Audience", NS).text == "urn:test:service"
    assert a.find("saml2:AuthnStatement/saml2:AuthnContext/saml2:AuthnContextClassRef", NS).text == \
        I.AC_PASSWORD_PROTECTED
    attrs = attributes(a)
    assert {I.SUBJECT_ID, I.ORGANIZATION, I.ORGANIZATION_ID, I.HOME_COMMUNITY_ID, I.ROLE, I.PURPOSE_OF_USE,
            I.RESOURCE_ID} <= set(attrs)
    role = attrs[I.ROLE][0]
    assert role.tag == f"{{{I.NS_HL7}}}Role" and role.get(f"{{{I.NS_XSI}}}type") == "CE"
    assert (role.get("code"), role.get("codeSystem")) == ("112247003", I.SNOMED_CT)
    pou = attrs[I.PURPOSE_OF_USE][0]
    assert pou.tag == f"{{{I.NS_HL7}}}PurposeOfUse" and pou.get("code") == "TREATMENT"
    assert attrs[I.RESOURCE_ID][0].text == PATIENT
    assert attrs[I.SUBJECT_ID][0].get(f"{{{I.NS_XSI}}}type") == "xs:string"


def test_the_second_levels_and_the_bad_ones(stsd):
    url, _ = stsd

    def pick(name, path):
        return I.request_token(url, name).find(path, NS)

    assert pick("unknownaudience", ".//saml2:Audience").text == I.UNKNOWN_AUDIENCE
    ref = "saml2:AuthnStatement/saml2:AuthnContext/saml2:AuthnContextClassRef"
    assert pick("secondauthncontext", ref).text == I.AC_INTERNET_PROTOCOL
    assert pick("invalidauthnstatement", ref).text == I.AC_INVALID
    roles = I.request_token(url, "secondrole").findall(f".//saml2:Attribute[@Name='{I.ROLE}']//hl7:Role", NS)
    assert [(r.get("code"), r.get("displayName")) for r in roles] == [("106328005", "Social worker")]
    assert pick("secondpurposeofuse", ".//hl7:PurposeOfUse").get("code") == "RESEARCH"
    consent = attributes(I.request_token(url, "withauthzconsent", patient_id=PATIENT))
    assert consent[I.BPPC_DOCID][0].text == I.CONSENT_DOCUMENT_ID and consent[I.RESOURCE_ID][0].text == PATIENT


# --- the VIHF ------------------------------------------------------------------------------------------

TABLE_F = [I.VIHF_STRUCTURE, I.VIHF_SECTOR, I.SUBJECT_ID, I.ROLE, I.VIHF_VERSION, I.VIHF_AUTH_MODE, I.RESOURCE_ID,
           I.VIHF_RESOURCE_URN, I.PURPOSE_OF_USE, I.VIHF_LPS_NAME, I.VIHF_LPS_VERSION, I.VIHF_LPS_HOMOLOGATION]


@pytest.mark.parametrize("mode", ["indirecte", "indirecte_renforcee", "directe"])
def test_vihf_tokens_carry_table_f(stsd, pair, mode):
    url, issuer = stsd
    a = I.request_token(url, mode, patient_id=PATIENT, audience="urn:test:ignored-for-a-vihf")
    verify(a, pair[2])
    issuer_el = a.find("saml2:Issuer", NS)
    assert issuer_el.get("Format") == I.NAMEID_X509 and issuer_el.text == issuer.subject_dn
    assert a.find("saml2:Subject/saml2:NameID", NS).text == I.VIHF_NAME_ID
    assert a.find(".//saml2:AudienceRestriction", NS) is None
    attrs = attributes(a)
    expected = [n for n in TABLE_F if not (mode == "directe" and n == I.SUBJECT_ID)]
    assert [n for n in expected if n not in attrs] == []
    assert attrs[I.VIHF_AUTH_MODE][0].text == mode.upper()
    assert attrs[I.VIHF_VERSION][0].text == "3.0"
    assert attrs[I.VIHF_SECTOR][0].text == "SA07^1.2.250.1.71.4.2.4"
    assert attrs[I.VIHF_RESOURCE_URN][0].text == "urn:dmp"
    assert attrs[I.RESOURCE_ID][0].text == PATIENT
    assert [(r.get("code"), r.get("codeSystem")) for r in attrs[I.ROLE]] == [
        ("10", "1.2.250.1.71.1.2.7"), ("SM26", "1.2.250.1.71.4.2.5")]
    pou = attrs[I.PURPOSE_OF_USE][0]
    assert (pou.get("code"), pou.get("codeSystem")) == ("normal", "1.2.250.1.213.1.1.4.248")
    context = a.find("saml2:AuthnStatement/saml2:AuthnContext/saml2:AuthnContextClassRef", NS).text
    assert context == (I.AC_UNSPECIFIED if mode == "indirecte" else I.AC_SMARTCARD)
    auth = VihfAuthenticator(XuaConfig(trust=TrustStore([pair[1]])))
    principal = auth.authenticate(in_envelope(a), None)
    assert principal.mode == f"vihf:{mode.upper()}" and principal.patient_id == PATIENT


def test_vihf_signed_with_sha1_on_request(pair):
    issuer = I.Issuer(pair[0], pair[1], sha1=True)
    a = issuer.issue("indirecte", patient_id=PATIENT, purpose_of_use="centre_15")
    method = a.find("ds:Signature/ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm")
    assert method == "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
    with pytest.raises(InvalidInput):
        verify(a, pair[2])
    verify(a, pair[2], SignatureConfiguration(signature_methods=frozenset({SignatureMethod.RSA_SHA1}),
                                              digest_algorithms=frozenset({DigestAlgorithm.SHA1}), location="./"))
    assert a.find(".//hl7:PurposeOfUse", NS).get("code") == "centre_15"


def test_an_ec_key_from_the_test_ca_signs_with_ecdsa(tmp_path):
    cert, key = Authority(str(tmp_path)).issue("sts-ec")
    a = I.Issuer(key, cert, name="sts@example.org").issue("valid")
    assert a.find("ds:Signature/ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm").endswith("ecdsa-sha256")
    assert a.find("saml2:Issuer", NS).get("Format") == I.NAMEID_EMAIL
    with open(cert, "rb") as f:
        verify(a, f.read(), SignatureConfiguration(signature_methods=frozenset({SignatureMethod.ECDSA_SHA256}),
                                                   location="./"))


# --- the protocol -------------------------------------------------------------------------------------


def rst_envelope(user=None, password="connectathon", body=None, version=soap.SOAP12):
    headers = [I.username_token(user, password)] if user else []
    return SoapClient("http://127.0.0.1:9/sts").envelope(I.ACTION_ISSUE, body if body is not None
                                                         else I.request_security_token(), version, headers)


def test_the_answer_is_an_issue_final_collection(stsd):
    url, _ = stsd
    status, raw = post(url, rst_envelope("valid"))
    assert status == 200
    env = soap.parse_envelope(raw, understood={f"{{{soap.C.NS_WSA}}}RelatesTo"})
    assert env.action == I.ACTION_ISSUE_FINAL
    assert env.body.tag == f"{{{I.NS_WST}}}RequestSecurityTokenResponseCollection"
    rstr = env.body.find(f"{{{I.NS_WST}}}RequestSecurityTokenResponse")
    assert rstr.findtext(f"{{{I.NS_WST}}}TokenType") == I.SAML2_TOKEN_TYPE
    a = rstr.find(f"{{{I.NS_WST}}}RequestedSecurityToken/{{{S}}}Assertion")
    assert rstr.findtext(f".//{{{I.NS_WSSE}}}KeyIdentifier") == a.get("ID")
    assert rstr.find(f"{{{I.NS_WST}}}Lifetime") is not None


@pytest.mark.parametrize("case,subcode", [
    ("bad password", "wst:FailedAuthentication"),
    ("unknown user", "wst:FailedAuthentication"),
    ("no credentials", "wst:FailedAuthentication"),
    ("validate request", "wst:InvalidRequest"),
    ("saml 1.1 token", "wst:InvalidRequest"),
    ("not an rst", "wst:InvalidRequest"),
])
def test_refusals_are_ws_trust_faults(stsd, case, subcode):
    url, _ = stsd
    rst = I.request_security_token()
    user, password = "valid", "connectathon"
    if case == "bad password":
        password = "wrong"
    elif case == "unknown user":
        user = "nobody"
    elif case == "no credentials":
        user = None
    elif case == "validate request":
        rst.find(f"{{{I.NS_WST}}}RequestType").text = I.NS_WST + "/Validate"
    elif case == "saml 1.1 token":
        rst.find(f"{{{I.NS_WST}}}TokenType").text = \
            "http://docs.oasis-open.org/wss/oasis-wss-saml-token-profile-1.1#SAMLV1.1"
    elif case == "not an rst":
        rst = etree.Element(f"{{{I.NS_WST}}}RequestSecurityTokenCollection")
    status, raw = post(url, rst_envelope(user, password, rst))
    assert status == 400
    reason, sub = fault_of(raw)
    assert sub == subcode and reason
    assert b"connectathon" not in raw and b"wrong" not in raw
    if case in ("bad password", "unknown user"):
        with pytest.raises(I.StsError) as err:
            I.request_token(url, user, password)
        assert err.value.subcode == "wst:FailedAuthentication" and err.value.status == 400


def test_not_xml_and_soap11(stsd):
    url, _ = stsd
    status, raw = post(url, b"this is not XML")
    assert status == 400 and fault_of(raw)[0]
    status, raw = post(url, b"<x>" + b" " * sts.MAX_REQUEST_BYTES + b"</x>")
    assert status == 413 and "limit" in fault_of(raw)[0]
    a = I.request_token(url, "valid", version=soap.SOAP11)
    assert a.find("ds:Signature", NS) is not None
    status, raw = post(url, rst_envelope("valid", "wrong", version=soap.SOAP11), {"Content-Type": "text/xml"})
    env = soap.parse_envelope(raw)
    assert status == 400 and env.version == soap.SOAP11
    assert env.body.findtext("faultcode") == "wst:FailedAuthentication"


def test_credentials_by_digest_or_http_basic(stsd):
    url, _ = stsd
    assert I.request_token(url, "valid", digest=True).tag == f"{{{S}}}Assertion"
    with pytest.raises(I.StsError, match="FailedAuthentication"):
        I.request_token(url, "valid", "wrong", digest=True)
    basic = "Basic " + base64.b64encode(b"secondrole:connectathon").decode()
    status, raw = post(url, rst_envelope(), {"Authorization": basic})
    assert status == 200 and b"106328005" in raw
    status, _ = post(url, rst_envelope(), {"Authorization": "Basic " + base64.b64encode(b"valid:nope").decode()})
    assert status == 400


def test_get_is_not_served(stsd):
    url, _ = stsd
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", parts.path)
    assert conn.getresponse().status == 405
    conn.close()


# --- the command and the signing pair -------------------------------------------------------------------


def test_xds_sts_token_prints_the_exact_bytes(tmp_path, capsysbinary):
    data = tmp_path / "data"
    assert cli_main(["sts", "token", "valid", "--data", str(data), "--patient", PATIENT]) == 0
    out = capsysbinary.readouterr()
    cert = data / "sts" / I.CERT_FILE
    assert str(cert).encode() in out.err
    assert not out.out.endswith(b"\n") and not out.out.startswith(b"<?xml")
    verify(etree.fromstring(out.out), cert.read_bytes())
    key = data / "sts" / I.KEY_FILE
    assert os.stat(key).st_mode & 0o077 == 0
    assert cli_main(["sts", "token", "directe", "--key", str(key), "--cert", str(cert), "--unsigned"]) == 0
    out = capsysbinary.readouterr()
    token = etree.fromstring(out.out)
    assert token.find("ds:Signature", NS) is None and out.err == b""
    assert attributes(token)[I.VIHF_AUTH_MODE][0].text == "DIRECTE"
    assert cli_main(["sts", "token", "nothing-like-it", "--data", str(data)]) == 2
    assert cli_main(["sts", "variants"]) == 0
    listing = capsysbinary.readouterr().out.decode()
    assert all(f"{name}\t" in listing for name in I.KIT_VARIANTS)


def test_the_signing_pair_is_made_once(tmp_path):
    first = I.signing_pair(str(tmp_path))
    second = I.signing_pair(str(tmp_path))
    assert first[2] and not second[2] and first[:2] == second[:2]
    issuer = I.Issuer(first[0], first[1])
    assert issuer.key is issuer.key  # loaded once
    assert issuer.subject_dn == "CN=XDS local STS,O=XDS test,C=FR"
