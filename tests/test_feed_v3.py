"""ITI-44 Patient Identity Feed HL7 v3 (registry/feed_v3.py): the interactions read and judged without
sockets, then over SOAP 1.2 on a real server (HTTPS with client certificates, and plain HTTP on loopback
where the caller is the administrator), on SQLite and PostgreSQL. Every refusal is checked for its
acknowledgement and for leaving the patients untouched, and paired with the allowed caller succeeding."""
from __future__ import annotations

import base64
import os
from types import SimpleNamespace

import pytest
from lxml import etree

from node.server import Services
from registry.feed_sources import FeedSources
from registry.feed_v3 import ADD, MERGE, REVISE, handle
from tests import pgserver
from tests.certs import Authority
from tests.test_feed import RecordingPatients
from tests.test_http_registry import adhoc
from xds import builder, soap
from xds import constants as C
from xds.audit import records as R
from xds.client import SoapClient
from xds.settings import Settings
from xds.tls import TlsFiles, client_context

V3 = C.NS_HL7V3
OID_A = "1.2.250.1.999.1"
OID_B = "1.2.250.1.999.2"
SUBJECT_A = "O=XDS test,CN=pix-a"
SUBJECT_B = "O=XDS test,CN=pix-b"
_n = iter(range(1, 100_000))

SOURCES = f'''
[[source]]
name = "Hopital A"
subject = "{SUBJECT_A}"
application = "ADT_A"
facility = "HOSP_A"
authorities = ["{OID_A}"]
merge = true

[[source]]
name = "Hopital B"
subject = "{SUBJECT_B}"
application = "ADT_B"
facility = "HOSP_B"
authorities = ["{OID_B}"]
'''


def ext() -> str:
    return f"V{os.getpid()}X{next(_n)}"


def cx(extension: str, oid: str) -> str:
    return f"{extension}^^^&{oid}&ISO"


def message(interaction: str, ids, prior=(), *, message_id: str = "M1", interaction_id: str | None = None) -> bytes:
    """An ITI-44 interaction: ids, the patient's (root, extension) pairs; prior, the subsumed ones (merge)."""
    patient_ids = "".join(f'<id root="{root}" extension="{e}"/>' for root, e in ids)
    replaced = "".join(
        '<replacementOf typeCode="RPLC"><priorRegistration classCode="REG" moodCode="EVN">'
        '<statusCode code="obsolete"/><subject1 typeCode="SBJ"><priorRegisteredRole classCode="PAT">'
        f'<id root="{root}" extension="{e}"/></priorRegisteredRole></subject1></priorRegistration></replacementOf>'
        for root, e in prior)
    return f'''<{interaction} xmlns="{V3}" ITSVersion="XML_1.0">
  <id root="1.2.250.1.999.77" extension="{message_id}"/>
  <creationTime value="20240101120000"/>
  <interactionId root="2.16.840.1.113883.1.6" extension="{interaction_id or interaction}"/>
  <processingCode code="P"/><processingModeCode code="T"/><acceptAckCode code="AL"/>
  <receiver typeCode="RCV"><device classCode="DEV" determinerCode="INSTANCE"><id root="1.2.250.1.999.90"/></device></receiver>
  <sender typeCode="SND"><device classCode="DEV" determinerCode="INSTANCE"><id root="1.2.250.1.999.91"/></device></sender>
  <controlActProcess classCode="CACT" moodCode="EVN">
    <code code="PRPA_TE{interaction[7:13]}UV02" codeSystem="2.16.840.1.113883.1.6"/>
    <subject typeCode="SUBJ"><registrationEvent classCode="REG" moodCode="EVN"><statusCode code="active"/>
      <subject1 typeCode="SBJ"><patient classCode="PAT">{patient_ids}<statusCode code="active"/>
        <patientPerson><name><given>Jane</given><family>Doe</family></name></patientPerson>
      </patient></subject1>{replaced}
    </registrationEvent></subject>
  </controlActProcess>
</{interaction}>'''.encode()


def ack_of(payload: etree._Element) -> tuple[str, str | None, str]:
    """(typeCode, the detail's code, the detail's text) of an MCCI_IN000002UV01."""
    assert payload.tag == f"{{{V3}}}MCCI_IN000002UV01", payload.tag
    assert payload.find(f"{{{V3}}}interactionId").get("extension") == "MCCI_IN000002UV01"
    assert payload.find(f"{{{V3}}}acceptAckCode").get("code") == "NE"
    ack = payload.find(f"{{{V3}}}acknowledgement")
    detail = ack.find(f"{{{V3}}}acknowledgementDetail")
    code = detail.find(f"{{{V3}}}code").get("code") if detail is not None else None
    text = detail.findtext(f"{{{V3}}}text") if detail is not None else ""
    return ack.find(f"{{{V3}}}typeCode").get("code"), code, text


# --- without sockets ---------------------------------------------------------------------------------

@pytest.fixture
def sources():
    return FeedSources.from_dict({"source": [
        {"name": "Hopital A", "subject": SUBJECT_A, "application": "ADT_A", "facility": "HOSP_A",
         "authorities": [OID_A], "merge": True},
        {"name": "Hopital A lab", "subject": SUBJECT_A, "application": "LAB_A", "facility": "HOSP_A",
         "authorities": [OID_B]},
    ]})


def test_add_from_an_allowed_certificate_is_stored_and_acknowledged(sources):
    patients = RecordingPatients()
    payload, event = handle(message(ADD, [(OID_A, "P1")]), patients, action=C.ACTION_PIX_ADD, subject=SUBJECT_A,
                            sources=sources)
    assert ack_of(payload) == ("AA", None, "")
    target = payload.find(f"{{{V3}}}acknowledgement/{{{V3}}}targetMessage/{{{V3}}}id")
    assert (target.get("root"), target.get("extension")) == ("1.2.250.1.999.77", "M1")
    # The ack goes back to the sender's device, from the receiver's.
    assert payload.find(f"{{{V3}}}receiver/{{{V3}}}device/{{{V3}}}id").get("root") == "1.2.250.1.999.91"
    assert payload.find(f"{{{V3}}}sender/{{{V3}}}device/{{{V3}}}id").get("root") == "1.2.250.1.999.90"
    assert patients.calls == [("add", cx("P1", OID_A))]
    assert (event.event, event.control_id, event.outcome, event.source, event.patients) == (
        ADD, "1.2.250.1.999.77^M1", "accepted", "Hopital A + Hopital A lab", (cx("P1", OID_A),))


def test_entries_of_one_certificate_are_granted_together(sources):
    # Over ITI-8 the holder of this certificate picks the entry by MSH-3; v3 has no MSH, so it gets both.
    patients = RecordingPatients()
    payload, _ = handle(message(ADD, [(OID_A, "P1"), (OID_B, "P2")]), patients, subject=SUBJECT_A, sources=sources)
    assert ack_of(payload)[0] == "AA"
    assert patients.calls == [("add", cx("P1", OID_A)), ("add", cx("P2", OID_B))]
    payload, _ = handle(message(MERGE, [(OID_B, "P3")], [(OID_B, "P2")]), patients, subject=SUBJECT_A,
                        sources=sources)
    assert ack_of(payload)[:2] == ("AR", "MERGE_NOT_ALLOWED")


def test_several_ids_are_judged_whole(sources):
    patients = RecordingPatients()
    payload, event = handle(message(ADD, [(OID_A, "P1"), ("1.2.250.1.999.3", "P2")]), patients,
                            subject=SUBJECT_A, sources=sources)
    type_code, code, text = ack_of(payload)
    assert (type_code, code) == ("AR", "AUTHORITY_NOT_ALLOWED")
    assert "1.2.250.1.999.3" in text and patients.calls == []
    assert event.outcome == "denied"


def test_unknown_certificate_and_no_certificate_are_refused_before_reading(sources):
    for subject in ("O=Elsewhere,CN=intruder", None):
        patients = RecordingPatients()
        payload, event = handle(message(ADD, [(OID_A, "P1")]), patients, subject=subject, sources=sources)
        type_code, code, text = ack_of(payload)
        assert (type_code, code) == ("AR", "NS260") and text.startswith("UNKNOWN_SOURCE")
        assert patients.calls == [] and event.outcome == "denied"


def test_without_a_source_list_only_an_administrator_feeds():
    patients = RecordingPatients()
    for listed in (None, FeedSources.open()):
        payload, _ = handle(message(ADD, [(OID_A, "P1")]), patients, subject=SUBJECT_A, sources=listed)
        assert ack_of(payload)[:2] == ("AR", "NS260")
    assert patients.calls == []
    payload, event = handle(message(ADD, [(OID_A, "P1")]), patients, admin=True)
    assert ack_of(payload)[0] == "AA" and event.source == "administrator"
    assert patients.calls == [("add", cx("P1", OID_A))]


@pytest.mark.parametrize("body,type_code,code", [
    (b"<PRPA_IN201301UV02 xmlns='urn:hl7-org:v3'><id", "AE", "SYN"),
    (b"<PRPA_IN201301UV02/>", "AR", "NS200"),                                       # not in the v3 namespace
    (f"<QUQI_IN000003UV01 xmlns='{V3}'/>".encode(), "AR", "NS200"),
    (message(ADD, [], message_id="X"), "AE", "SYN105"),                            # no patient id
    (message(ADD, [("not-an-oid", "P1")]), "AE", "SYN102"),
    (message(ADD, [(OID_A, "")]), "AE", "SYN102"),                                  # root only
    (message(ADD, [(OID_A, "P1")], interaction_id=REVISE), "AR", "NS200"),
    (message(MERGE, [(OID_A, "P2")]), "AE", "SYN105"),                              # merge without the subsumed id
    (message(MERGE, [(OID_A, "P2")], [(OID_B, "P1")]), "AE", "SYN105"),             # across authorities
    (message(MERGE, [(OID_A, "P2")], [(OID_A, "P2")]), "AE", "SYN105"),             # the same id
])
def test_unusable_messages_store_nothing(body, type_code, code):
    patients = RecordingPatients()
    payload, event = handle(body, patients, admin=True)
    assert ack_of(payload)[:2] == (type_code, code)
    assert patients.calls == [] and event.outcome == "invalid"


def test_an_interaction_sent_under_another_action_is_refused():
    patients = RecordingPatients()
    payload, _ = handle(message(ADD, [(OID_A, "P1")]), patients, action=C.ACTION_PIX_MERGE, admin=True)
    assert ack_of(payload)[:2] == ("AR", "NS200") and patients.calls == []


def test_a_failing_store_is_an_ae():
    class Broken(RecordingPatients):
        def add(self, patient_id):
            raise RuntimeError("database down")

    payload, event = handle(message(ADD, [(OID_A, "P1")]), Broken(), admin=True)
    assert ack_of(payload)[:2] == ("AE", "INTERR") and event.outcome == "failed"


# --- over HTTP on a real server -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pix-pki")
    ca = Authority(str(folder))
    sources = folder / "feed-sources.toml"
    sources.write_text(SOURCES)
    return SimpleNamespace(ca=ca.path, registry=ca.issue("registry"), a=ca.issue("pix-a"), b=ca.issue("pix-b"),
                           x=ca.issue("pix-x"), sources=str(sources))


def _database(kind: str, tmp_path_factory) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('pix-db')}/registry.db"
    if not pgserver.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing; .ci/run installs them")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    from tests.conftest import _dbs, _pg_admin_url

    return pgserver.create_database(_pg_admin_url(), f"xds_test_{os.getpid()}_pix_{next(_dbs)}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, pki, tmp_path_factory):
    s = Settings(role="all", port=0, data=str(tmp_path_factory.mktemp("pix")), db=_database(request.param,
                 tmp_path_factory), tls_cert=pki.registry[0], tls_key=pki.registry[1], tls_ca=pki.ca,
                 feed_sources=pki.sources, log_level="WARNING")
    s.validate()
    services = Services(s).start()
    ctx = {name: client_context(TlsFiles(pair[0], pair[1], pki.ca)) for name, pair in
           (("a", pki.a), ("b", pki.b), ("x", pki.x))}
    try:
        yield SimpleNamespace(services=services, store=services.registry.store, ctx=ctx)
    finally:
        services.stop()


def feed(server, who: str, interaction: str, body: bytes, path: str = "/xds/registry") -> tuple[str, str | None, str]:
    action = {ADD: C.ACTION_PIX_ADD, REVISE: C.ACTION_PIX_REVISE, MERGE: C.ACTION_PIX_MERGE}[interaction]
    reply = SoapClient(server.services.url + path, ssl_context=server.ctx[who]).call(
        action, etree.fromstring(body))
    assert reply.status == 200
    assert reply.envelope.action == C.ACTION_PIX_ACK
    return ack_of(reply.body)


def patients(server) -> dict:
    return {p: (active, merged) for p, active, merged in server.store.list_patients()}


def register(server, patient: str) -> tuple[str, list[str]]:
    reply = SoapClient(server.services.url + "/xds/registry", ssl_context=server.ctx["a"]).call(
        C.ACTION_REGISTER, builder.simple_submission(patient))
    return reply.body.get("status"), [e.get("errorCode") for e in reply.body.iter(f"{{{C.NS_RS}}}RegistryError")]


def find(server, patient: str) -> int:
    reply = SoapClient(server.services.url + "/xds/registry", ssl_context=server.ctx["a"]).call(
        C.ACTION_QUERY, adhoc(C.SQ_FIND_DOCUMENTS, {
            "$XDSDocumentEntryPatientId": [f"'{patient}'"],
            "$XDSDocumentEntryStatus": [f"('{C.STATUS_APPROVED}')"]}))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS
    return len(reply.body.findall(f".//{{{C.NS_RIM}}}ExtrinsicObject"))


def assert_unknown(server, patient: str) -> None:
    assert patient not in patients(server)
    assert register(server, patient) == (C.RESPONSE_FAILURE, ["XDSUnknownPatientId"])


def feed_records(server) -> list[etree._Element]:
    out = []
    for seq, stored, _, _ in server.services.auditor.store.records(0, 100000):
        rec = etree.fromstring(R.render(R.from_stored(stored, seq), server.services.auditor.source.audit_source_id))
        if rec.find("EventIdentification/EventTypeCode").get("csd-code") == "ITI-44":
            out.append(rec)
    return out


def test_add_revise_merge_over_https(server):
    old, new = ext(), ext()
    old_id, new_id = cx(old, OID_A), cx(new, OID_A)
    assert_unknown(server, old_id)
    assert feed(server, "a", ADD, message(ADD, [(OID_A, old)], message_id="ADD1")) == ("AA", None, "")
    assert patients(server)[old_id] == (True, None)
    assert register(server, old_id) == (C.RESPONSE_SUCCESS, [])
    assert find(server, old_id) == 1
    assert feed(server, "a", REVISE, message(REVISE, [(OID_A, old)]))[0] == "AA"
    # The merge, on the PIX path this time: records move to the survivor, the subsumed id is refused.
    assert feed(server, "a", MERGE, message(MERGE, [(OID_A, new)], [(OID_A, old)], message_id="MRG1"),
                path="/xds/pix")[0] == "AA"
    assert patients(server)[old_id] == (False, new_id) and patients(server)[new_id] == (True, None)
    assert find(server, new_id) == 1 and find(server, old_id) == 0
    assert register(server, old_id) == (C.RESPONSE_FAILURE, ["XDSUnknownPatientId"])
    assert register(server, new_id) == (C.RESPONSE_SUCCESS, [])
    # Audited as ITI-8 is: Patient Record, Create for the add, Update for the merge, the message id kept.
    records = {r.find("ParticipantObjectIdentification").get("ParticipantObjectID"): r for r in feed_records(server)
               if r.find("ParticipantObjectIdentification[@ParticipantObjectTypeCodeRole='1']") is not None}
    add_record = next(r for r in feed_records(server)
                      if r.find("ParticipantObjectIdentification").get("ParticipantObjectID") == old_id)
    ident = add_record.find("EventIdentification")
    assert (ident.find("EventID").get("csd-code"), ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")) \
        == ("110110", "C", "0")
    detail = add_record.find("ParticipantObjectIdentification/ParticipantObjectDetail")
    assert detail.get("type") == "II"
    assert base64.b64decode(detail.get("value")).decode() == "1.2.250.1.999.77^ADD1"
    source = add_record.find("ActiveParticipant")
    assert source.get("AlternativeUserID") == SUBJECT_A and source.get("UserIsRequestor") == "true"
    merge_record = records[new_id]
    assert merge_record.find("EventIdentification").get("EventActionCode") == "U"


def test_a_certificate_that_is_no_source_is_refused(server):
    patient = ext()
    type_code, code, text = feed(server, "x", ADD, message(ADD, [(OID_A, patient)]))
    assert (type_code, code) == ("AR", "NS260") and "O=XDS test,CN=pix-x" in text
    assert_unknown(server, cx(patient, OID_A))
    denied = [r for r in feed_records(server) if r.find("EventIdentification").get("EventOutcomeIndicator") == "8"]
    assert denied


def test_a_source_of_authority_b_cannot_feed_authority_a(server):
    patient = ext()
    type_code, code, _ = feed(server, "b", ADD, message(ADD, [(OID_A, patient)]))
    assert (type_code, code) == ("AR", "AUTHORITY_NOT_ALLOWED")
    assert_unknown(server, cx(patient, OID_A))
    # Its own authority, and with another's in the same message: judged whole.
    own = ext()
    assert feed(server, "b", ADD, message(ADD, [(OID_B, own), (OID_A, patient)]))[0] == "AR"
    assert cx(own, OID_B) not in patients(server)
    assert feed(server, "b", ADD, message(ADD, [(OID_B, own)]))[0] == "AA"
    assert patients(server)[cx(own, OID_B)] == (True, None)


def test_a_source_without_merge_rights_cannot_merge(server):
    old, new = ext(), ext()
    assert feed(server, "b", ADD, message(ADD, [(OID_B, old)]))[0] == "AA"
    assert feed(server, "b", MERGE, message(MERGE, [(OID_B, new)], [(OID_B, old)]))[:2] == ("AR", "MERGE_NOT_ALLOWED")
    assert patients(server)[cx(old, OID_B)] == (True, None) and cx(new, OID_B) not in patients(server)


def test_unusable_messages_over_https_store_nothing(server):
    patient = ext()
    assert feed(server, "a", ADD, message(ADD, [("not-an-oid", patient)]))[:2] == ("AE", "SYN102")
    assert feed(server, "a", ADD, message(ADD, []))[:2] == ("AE", "SYN105")
    # A revise sent with the add action.
    assert feed(server, "a", ADD, message(REVISE, [(OID_A, patient)]))[:2] == ("AR", "NS200")
    assert_unknown(server, cx(patient, OID_A))
    # XML that is not well formed is no SOAP envelope: a SOAP fault, and nothing stored.
    client = SoapClient(server.services.url + "/xds/registry", ssl_context=server.ctx["a"])
    reply = client.send_raw(b"<soap:Envelope xmlns:soap='http://www.w3.org/2003/05/soap-envelope'><PRPA",
                            {"Content-Type": f'application/soap+xml; action="{C.ACTION_PIX_ADD}"'})
    assert reply.status == 400
    assert_unknown(server, cx(patient, OID_A))


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    """security = none, plain HTTP on 127.0.0.1, no source list: the caller is the administrator."""
    s = Settings(role="all", host="127.0.0.1", port=0, data=str(tmp_path_factory.mktemp("pix-loop")),
                 log_level="WARNING")
    s.validate()
    services = Services(s).start()
    try:
        yield services
    finally:
        services.stop()


def test_administrator_on_loopback_feeds_any_authority(loopback):
    patient = ext()
    reply = SoapClient(loopback.url + "/xds/registry").call(
        C.ACTION_PIX_ADD, etree.fromstring(message(ADD, [(OID_A, patient), (OID_B, patient)])))
    assert ack_of(reply.body)[0] == "AA"
    listed = {p for p, _, _ in loopback.registry.store.list_patients()}
    assert {cx(patient, OID_A), cx(patient, OID_B)} <= listed


# --- under security = xua: a PIX source authenticates by its certificate, as over ITI-8 ------------------

@pytest.fixture(scope="module")
def xua_server(pki, tmp_path_factory):
    """security = xua; the trust store is the test CA (no assertion in these tests is meant to verify)."""
    s = Settings(role="all", port=0, data=str(tmp_path_factory.mktemp("pix-xua")),
                 db=f"sqlite:///{tmp_path_factory.mktemp('pix-xua-db')}/registry.db", tls_cert=pki.registry[0],
                 tls_key=pki.registry[1], tls_ca=pki.ca, feed_sources=pki.sources, security="xua",
                 xua_trust=[pki.ca], log_level="WARNING")
    s.validate()
    services = Services(s).start()
    ctx = {name: client_context(TlsFiles(pair[0], pair[1], pki.ca)) for name, pair in
           (("a", pki.a), ("x", pki.x))}
    try:
        yield SimpleNamespace(services=services, store=services.registry.store, ctx=ctx)
    finally:
        services.stop()


def _fault_code(reply) -> str | None:
    if not reply.is_fault:
        return None
    return reply.body.findtext(f".//{{{C.NS_SOAP12}}}Subcode/{{{C.NS_SOAP12}}}Value")


def test_under_xua_a_source_feeds_with_its_certificate_alone(xua_server):
    patient = ext()
    assert feed(xua_server, "a", ADD, message(ADD, [(OID_A, patient)]))[0] == "AA"
    assert patients(xua_server)[cx(patient, OID_A)] == (True, None)


def test_under_xua_a_certificate_that_is_no_source_is_refused_and_stores_nothing(xua_server):
    patient = ext()
    code, detail, text = feed(xua_server, "x", ADD, message(ADD, [(OID_A, patient)]))
    assert (code, detail) == ("AR", "NS260") and "UNKNOWN_SOURCE" in text
    assert cx(patient, OID_A) not in patients(xua_server)


def test_under_xua_an_assertion_a_source_sends_is_still_verified(xua_server):
    """The exemption is for no assertion at all: a wsse:Security header is processed, and a bad one refused."""
    patient = ext()
    security = etree.fromstring(
        f'<wsse:Security xmlns:wsse="{soap.NS_WSSE}" xmlns:saml2="urn:oasis:names:tc:SAML:2.0:assertion">'
        '<saml2:Assertion ID="_x" Version="2.0" IssueInstant="2024-01-01T00:00:00Z">'
        '<saml2:Issuer>nobody</saml2:Issuer></saml2:Assertion></wsse:Security>')
    reply = SoapClient(xua_server.services.url + "/xds/registry", ssl_context=xua_server.ctx["a"]).call(
        C.ACTION_PIX_ADD, etree.fromstring(message(ADD, [(OID_A, patient)])), extra_headers=[security])
    assert (_fault_code(reply) or "").startswith("wsse:"), reply.raw[:400]
    assert cx(patient, OID_A) not in patients(xua_server)


def test_under_xua_the_sources_certificate_alone_does_not_query(xua_server):
    """Only the feed operations take a certificate alone: the same source's ITI-18 wants an assertion."""
    reply = SoapClient(xua_server.services.url + "/xds/registry", ssl_context=xua_server.ctx["a"]).call(
        C.ACTION_QUERY, adhoc(C.SQ_FIND_DOCUMENTS, {
            "$XDSDocumentEntryPatientId": [f"'{cx(ext(), OID_A)}'"],
            "$XDSDocumentEntryStatus": [f"('{C.STATUS_APPROVED}')"]}))
    assert _fault_code(reply) == "wsse:SecurityTokenUnavailable"
