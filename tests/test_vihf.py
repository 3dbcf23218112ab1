"""security = vihf over real HTTP (PROFILE.md Table F, checks C-2 to C-7, C-15, C-16): each rule's bad
token is refused with a WS-Security fault and nothing is read or stored; the good ones are served."""
from __future__ import annotations

import datetime as _dt

import pytest
import sqlalchemy as sa

from node.server import Services
from node.transfer import provide_and_register
from registry import schema as RS
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.security import issue
from xds.security.issue import Issuer
from xds.settings import Settings
from xds.tls import TlsFiles, client_context
from tests.certs import Authority

PID = "VIHF1^^^&1.2.250.1.213.1.4.10&ISO"
S = "{urn:oasis:names:tc:SAML:2.0:assertion}"
CARD = "899900063480"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(str(folder))
    key, cert, _ = issue.signing_pair(str(folder / "structure"))
    return {"ca": ca, "server": ca.issue("registry"), "card": ca.issue(CARD), "other": ca.issue("899900000001"),
            "structure": Issuer(key, cert), "structure_cert": cert, "sha1": Issuer(key, cert, sha1=True)}


def start(tmp, pki, **kw):
    cert, key = pki["server"]
    return Services(Settings(port=0, data=str(tmp), check_patients=False, settle_interval=0, security="vihf",
                             xua_trust=[pki["structure_cert"]], tls_cert=cert, tls_key=key,
                             tls_ca=pki["ca"].path, **kw)).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory, pki):
    services = start(tmp_path_factory.mktemp("vihf"), pki)
    yield services
    services.stop()


def client(server, pki, who="card"):
    cert, key = pki[who]
    return SoapClient(server.url + "/xds/registry", 30, client_context(TlsFiles(cert, key, pki["ca"].path)))


def query(server, pki, token, who="card"):
    req = builder.find_documents_request(PID)
    headers = [issue.wsse_security(token)] if token is not None else []
    return client(server, pki, who).call(C.ACTION_QUERY, req, extra_headers=headers)


def provide(server, pki, token):
    sub = builder.simple_submission(PID, 1, register=False)
    pnr, att = provide_and_register(sub, {"Document01": b"compte rendu"})
    cert, key = pki["card"]
    return SoapClient(server.url + "/xds/repository", 30, client_context(TlsFiles(cert, key, pki["ca"].path))).call(
        C.ACTION_PROVIDE, pnr, attachments=att, extra_headers=[issue.wsse_security(token)])


def fault(reply) -> str | None:
    if not reply.is_fault:
        return None
    return reply.body.findtext(f".//{{{C.NS_SOAP12}}}Subcode/{{{C.NS_SOAP12}}}Value")


def entries(server) -> int:
    with server.registry.store.engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(RS.doc_entry)).scalar_one()


def token(pki, mode="indirecte", change=None, sign=True, **kw):
    """A VIHF from the structure's issuer, changed before it is signed."""
    el = pki["structure"].issue(mode, signed=False, patient_id=PID, **kw)
    if change:
        change(el)
    return pki["structure"].sign(el) if sign else el


def drop(name):
    def change(el):
        for attr in el.iter(S + "Attribute"):
            if attr.get("Name").lower() == name.lower():
                attr.getparent().remove(attr)
    return change


def set_value(name, value):
    def change(el):
        for attr in el.iter(S + "Attribute"):
            if attr.get("Name").lower() == name.lower():
                attr.find(S + "AttributeValue").text = value
    return change


def test_a_signed_indirecte_token_is_served(server, pki):
    assert read_response_errors(provide(server, pki, token(pki)).body)[0] == C.RESPONSE_SUCCESS
    reply = query(server, pki, token(pki))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS and b"ExtrinsicObject" in reply.raw


@pytest.mark.parametrize("name", ["Identifiant_Structure", "Secteur_Activite", "VIHF_Version", "Authentification_Mode",
                                  "Ressource_URN", "LPS_Nom", "LPS_Version",
                                  "urn:oasis:names:tc:xacml:2.0:subject:role",
                                  "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse",
                                  "urn:oasis:names:tc:xspa:1.0:subject:subject-id"])
def test_a_missing_mandatory_attribute_is_refused(server, pki, name):
    before = entries(server)
    for reply in (query(server, pki, token(pki, change=drop(name))), provide(server, pki, token(pki, change=drop(name)))):
        assert fault(reply) == "wsse:InvalidSecurityToken" and name.lower() in reply.raw.decode().lower()
        assert b"RegistryObjectList" not in reply.raw
    assert entries(server) == before


@pytest.mark.parametrize("name,value,words", [
    ("VIHF_Version", "2.0", "VIHF_Version"), ("Ressource_URN", "urn:other", "Ressource_URN"),
    ("Authentification_Mode", "PAR_HASARD", "Authentification_Mode"),
    ("Secteur_Activite", "SA07", "Secteur_Activite"),
    ("urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code", "SECRET", "confidentiality-code")])
def test_an_unsupported_value_is_refused(server, pki, name, value, words):
    if name.endswith("confidentiality-code"):
        tok = token(pki, confidentiality_code="INVISIBLE_REPRESENTANTS_LEGAUX", change=set_value(name, value))
    else:
        tok = token(pki, change=set_value(name, value))
    reply = query(server, pki, tok)
    assert fault(reply) == "wsse:InvalidSecurityToken" and words in reply.raw.decode()


def test_connexion_secrete_with_its_one_value_is_accepted(server, pki):
    reply = query(server, pki, token(pki, confidentiality_code="INVISIBLE_REPRESENTANTS_LEGAUX"))
    assert not reply.is_fault, reply.raw[:500]


def test_attribute_names_are_compared_without_case(server, pki):
    def lower_mode(el):
        for attr in el.iter(S + "Attribute"):
            if attr.get("Name") == "Authentification_Mode":
                attr.set("Name", "Authentification_mode")  # as the official samples spell it
    assert not query(server, pki, token(pki, change=lower_mode)).is_fault


def test_a_physician_needs_a_second_role(server, pki):
    reply = query(server, pki, token(pki, roles=[("10", "1.2.250.1.71.1.2.7", "TRE_G15", "Médecin")]))
    assert fault(reply) == "wsse:InvalidSecurityToken" and "second role" in reply.raw.decode()


def test_break_the_glass_only_in_directe(server, pki):
    reply = query(server, pki, token(pki, purpose_of_use="bris_de_glace"))
    assert fault(reply) == "wsse:FailedAuthentication" and "bris_de_glace" in reply.raw.decode()
    assert not query(server, pki, token(pki, mode="directe", purpose_of_use="bris_de_glace")).is_fault


def test_an_issuer_that_is_not_the_signer_is_refused(server, pki):
    def other_issuer(el):
        el.find(S + "Issuer").text = "CN=someone else,O=TEST,C=FR"
    reply = query(server, pki, token(pki, change=other_issuer))
    assert fault(reply) == "wsse:FailedAuthentication" and "Issuer" in reply.raw.decode()


def test_an_old_token_without_conditions_is_refused(server, pki):
    old = (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def aged(el):
        el.remove(el.find(S + "Conditions"))
        el.set("IssueInstant", old)
        el.find(S + "AuthnStatement").set("AuthnInstant", old)
    reply = query(server, pki, token(pki, change=aged))
    assert fault(reply) == "wsse:FailedAuthentication" and "older than" in reply.raw.decode()


def test_a_replayed_token_is_refused(server, pki):
    tok = token(pki)
    assert not query(server, pki, tok).is_fault
    reply = query(server, pki, tok)
    assert fault(reply) == "wsse:FailedAuthentication" and "used before" in reply.raw.decode()


def test_sha1_only_when_the_setting_allows_it(tmp_path, server, pki):
    el = pki["sha1"].sign(pki["structure"].issue("indirecte", signed=False, patient_id=PID))
    assert fault(query(server, pki, el)) == "wsse:FailedCheck"
    lenient = start(tmp_path, pki, vihf_allow_sha1=True)
    try:
        el = pki["sha1"].sign(pki["structure"].issue("indirecte", signed=False, patient_id=PID))
        assert not query(lenient, pki, el).is_fault
    finally:
        lenient.stop()


def card_token(pki, mode="directe", name_id=CARD, issuer_cert="card"):
    from cryptography import x509

    el = pki["structure"].issue(mode, signed=False, subject=name_id, patient_id=PID)
    cert = x509.load_pem_x509_certificate(open(pki[issuer_cert][0], "rb").read())
    el.find(S + "Issuer").text = cert.subject.rfc4514_string()
    el.find(S + "Issuer").set("Format", "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName")
    return el


def test_an_unsigned_directe_token_stands_on_the_card_session(server, pki):
    assert not query(server, pki, card_token(pki)).is_fault
    # Another card's session, a token naming someone else, or not DIRECTE: refused.
    assert fault(query(server, pki, card_token(pki), who="other")) == "wsse:FailedAuthentication"
    assert fault(query(server, pki, card_token(pki, name_id="899900000009"))) == "wsse:FailedAuthentication"
    assert fault(query(server, pki, card_token(pki, mode="indirecte"))) == "wsse:InvalidSecurityToken"


def test_no_token_is_refused(server, pki):
    assert fault(query(server, pki, None)) == "wsse:SecurityTokenUnavailable"


def structure_certificate(folder, ca, cn: str, *, signing: bool):
    """A structure certificate issued by the test CA, for TLS and for signing VIHF tokens: its key usage
    says signature (cachet, non-repudiation) or authentication (key encipherment)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "XDS test"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=signing,
                                         key_encipherment=not signing, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    cert_path, key_path = str(folder / f"{cn}.crt"), str(folder / f"{cn}.key")
    open(cert_path, "wb").write(cert.public_bytes(serialization.Encoding.PEM))
    open(key_path, "wb").write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return cert_path, key_path


def test_a_token_relayed_by_the_registry_is_not_a_replay_there_but_is_from_anyone_else(tmp_path, pki):
    """A host's registry (registry_subjects) passes each consumer's token on when it routes ITI-43; in one
    process, or when the token came to this host before, the replay cache already holds it. The first
    receiver checks replays; a relay is checked for signature and validity only (ISSUE-NOTES, each hop)."""
    pki = dict(pki, relay=pki["ca"].issue("registry-relay"))
    server = start(tmp_path / "relay", pki, registry_subjects=["O=XDS test,CN=registry-relay"])
    try:
        tok = token(pki)
        assert not query(server, pki, tok).is_fault                      # the first use, by the card
        for _ in range(2):
            assert not query(server, pki, tok, who="relay").is_fault     # relayed, as often as it is routed
        replayed = query(server, pki, tok, who="other")
        assert fault(replayed) == "wsse:FailedAuthentication" and "used before" in replayed.raw.decode()
    finally:
        server.stop()


def test_a_structure_signs_with_its_cachet_certificate_not_its_authentication_one(tmp_path, pki):
    ca = pki["ca"]
    cachet = structure_certificate(tmp_path, ca, "cachet", signing=True)
    auth = structure_certificate(tmp_path, ca, "auth", signing=False)
    # The CA is the trust anchor here: certificates it issues are accepted as signers.
    cert, key = pki["server"]
    server = Services(Settings(port=0, data=str(tmp_path / "srv"), check_patients=False, settle_interval=0,
                               security="vihf", xua_trust=[ca.path], tls_cert=cert, tls_key=key,
                               tls_ca=ca.path)).start()
    try:
        good = Issuer(cachet[1], cachet[0]).issue("indirecte", patient_id=PID)
        assert not query(server, pki, good).is_fault
        bad = Issuer(auth[1], auth[0]).issue("indirecte", patient_id=PID)
        reply = query(server, pki, bad)
        assert fault(reply) == "wsse:FailedAuthentication" and "cachet" in reply.raw.decode()
    finally:
        server.stop()


def test_a_proxy_signs_with_its_own_tls_certificate_when_asked(tmp_path, pki):
    ca = pki["ca"]
    proxy = structure_certificate(tmp_path, ca, "proxy", signing=True)
    pki = {**pki, "proxy": proxy}
    cert, key = pki["server"]
    server = Services(Settings(port=0, data=str(tmp_path / "srv"), check_patients=False, settle_interval=0,
                               security="vihf", xua_trust=[ca.path], tls_cert=cert, tls_key=key, tls_ca=ca.path,
                               vihf_proxy_same_subject=True)).start()
    try:
        tok = Issuer(proxy[1], proxy[0]).issue("indirecte", patient_id=PID)
        assert not query(server, pki, tok, who="proxy").is_fault
        tok = Issuer(proxy[1], proxy[0]).issue("indirecte", patient_id=PID)
        reply = query(server, pki, tok, who="card")  # the right token over another client's TLS session
        assert fault(reply) == "wsse:FailedAuthentication" and "signing certificate" in reply.raw.decode()
    finally:
        server.stop()


def test_structures_and_professionals_are_checked_against_the_directory(tmp_path, pki):
    listed = token(pki, structure_id="499900063480001", subject=CARD)
    directory = tmp_path / "directory.toml"
    directory.write_text('[[structure]]\nid = "499900063480001"\nprofessionals = ["' + CARD + '"]\n\n'
                         '[[structure]]\nid = "499900000000002"\nactive = false\nprofessionals = ["' + CARD + '"]\n')
    server = start(tmp_path / "srv", pki, vihf_directory=str(directory))
    try:
        assert not query(server, pki, listed).is_fault
        for tok, words in ((token(pki, structure_id="499900099999999", subject=CARD), "Structure introuvable"),
                           (token(pki, structure_id="499900000000002", subject=CARD), "Structure introuvable"),
                           (token(pki, structure_id="499900063480001", subject="899900000777"), "non liés")):
            reply = query(server, pki, tok)
            assert fault(reply) == "wsse:FailedAuthentication" and words in reply.raw.decode()
    finally:
        server.stop()


def test_a_replay_is_refused_by_another_server_sharing_the_database(tmp_path, pki, db_url):
    """The replay cache lives in the database (sec_replay): a token used on one host is refused on the
    other, as two registry hosts behind one address would see it."""
    first = start(tmp_path / "a", pki, db=db_url)
    second = start(tmp_path / "b", pki, db=db_url)
    try:
        tok = token(pki)
        assert not query(first, pki, tok).is_fault
        reply = query(second, pki, tok)
        assert fault(reply) == "wsse:FailedAuthentication" and "used before" in reply.raw.decode()
        assert not query(second, pki, token(pki)).is_fault  # another token is fine
    finally:
        second.stop()
        first.stop()


def test_expired_replay_entries_do_not_block_and_are_purged(tmp_path):
    import datetime as dt

    import sqlalchemy as sa

    from xds import migrate
    from xds.security.replay import DatabaseReplayCache, replay

    engine = sa.create_engine(f"sqlite:///{tmp_path}/r.db")
    migrate.upgrade(engine, "security")
    cache = DatabaseReplayCache(engine)
    now = dt.datetime.now(dt.timezone.utc)
    assert cache.first_use("_a", now - dt.timedelta(seconds=1), now - dt.timedelta(seconds=5))
    assert cache.first_use("_a", now + dt.timedelta(hours=1), now)  # its old entry had expired
    assert not cache.first_use("_a", now + dt.timedelta(hours=1), now)
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(replay)).scalar_one() == 1
