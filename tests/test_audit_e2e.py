"""The audit layer over HTTP, both actors in one process under XUA: one ATNA record per transaction and
per hop, for every outcome (refusals included), the patient's access log and the break-the-glass
notifications."""
from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from lxml import etree

from node.access import bearer
from node.server import Services
from node.transfer import provide_and_register, retrieve_request
from registry.access import AccessStore, REPRESENTATIVE
from xds import builder
from xds import constants as C
from xds.audit import records as R
from xds.client import SoapClient
from xds.security import issue
from xds.security.issue import DEFAULT_AUDIENCE, Issuer
from xds.settings import Settings

PID = "AUD1^^^&1.2.250.1.213.1.4.10&ISO"
OTHER = "AUD2^^^&1.2.250.1.213.1.4.10&ISO"
MINOR = "AUD3^^^&1.2.250.1.213.1.4.10&ISO"
REPO = "1.2.250.1.999.3.77"
DOCTOR = ("112247003", "2.16.840.1.113883.6.96", "SNOMED CT", "Medical doctor")
PATIENT_ROLE = ("116154003", "2.16.840.1.113883.6.96", "SNOMED CT", "Patient")
ADMIN_ROLE = ("XDS-ADMIN", "1.2.250.1.999.9", "project roles", "Administrator")
EMERGENCY = ("EMERGENCY", "2.16.840.1.113883.3.18.7.1", "nhin-purpose", "Emergency Treatment")
ATNA_XSD = Path(__file__).resolve().parents[2] / "shared" / "testkits" / "atna" / "dicom2024d.xsd"


@pytest.fixture(scope="module")
def sts(tmp_path_factory):
    key, cert, _ = issue.signing_pair(str(tmp_path_factory.mktemp("sts")))
    issuer = Issuer(key, cert)
    issuer.cert_path = cert
    return issuer


@pytest.fixture(scope="module")
def server(tmp_path_factory, sts):
    s = Settings(port=0, data=str(tmp_path_factory.mktemp("audit")), repository_id=REPO, settle_interval=0,
                 security="xua", xua_trust=[sts.cert_path], xua_audiences=[DEFAULT_AUDIENCE],
                 admin_roles=[ADMIN_ROLE[0]])
    services = Services(s).start()
    for pid in (PID, OTHER, MINOR):
        services.registry.store.add_patient(pid)
    yield services
    services.stop()


def professional(sts, name="dr-house", purpose=None, **kw):
    return sts.issue(subject=name, subject_name=f"Dr {name}", roles=[DOCTOR], organization="Hôpital Test",
                     organization_id="urn:oid:1.2.250.1.71.4.2.2.1", purpose_of_use=purpose, **kw)


def headers(assertion):
    return [issue.wsse_security(assertion)]


def get(server, path, assertion=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    hdrs = {"Authorization": bearer(issue.serialize(assertion))} if assertion is not None else {}
    conn.request("GET", path, headers=hdrs)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, json.loads(raw)


def last_seq(server) -> int:
    rows = server.auditor.store.records(0, 100000)
    return rows[-1][0] if rows else 0


def new_records(server, after) -> list[etree._Element]:
    out = []
    for seq, stored, _, _ in server.auditor.store.records(after, 10000):
        xml = R.render(R.from_stored(stored, seq), server.auditor.source.audit_source_id)
        out.append(etree.fromstring(xml))
    return out


def event_of(rec: etree._Element) -> tuple[str, str]:
    """(EventTypeCode or EventID code, outcome)."""
    ident = rec.find("EventIdentification")
    code = ident.find("EventTypeCode").get("csd-code")
    return code, ident.get("EventOutcomeIndicator")


def objects(rec, type_code_role=None) -> list[etree._Element]:
    return [o for o in rec.iterfind("ParticipantObjectIdentification")
            if type_code_role is None or o.get("ParticipantObjectTypeCodeRole") == type_code_role]


def validate(rec):
    if ATNA_XSD.exists():
        schema = etree.XMLSchema(etree.parse(str(ATNA_XSD)))
        assert schema.validate(rec), schema.error_log


def provide(server, assertion, patient=PID, title="Compte rendu"):
    sub = builder.simple_submission(patient, 1, register=False)
    for ls in sub.iter(f"{{{C.NS_RIM}}}LocalizedString"):
        if ls.getparent().getparent().tag == f"{{{C.NS_RIM}}}ExtrinsicObject":
            ls.set("value", title)
    pnr, att = provide_and_register(sub, {"Document01": b"audited document"})
    reply = SoapClient(server.url + "/xds/repository").call(C.ACTION_PROVIDE, pnr, attachments=att,
                                                            extra_headers=headers(assertion))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS, reply.raw[:500]
    uid = next(ei.get("value") for ei in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
               if ei.get("identificationScheme") == C.DE_UNIQUE_ID)
    return uid


def query(server, assertion, patient=PID):
    return SoapClient(server.url + "/xds/registry").call(C.ACTION_QUERY, builder.find_documents_request(patient),
                                                         extra_headers=headers(assertion))


def retrieve(server, assertion, uid):
    return SoapClient(server.url + "/xds/registry").call(C.ACTION_RETRIEVE, retrieve_request(uid, REPO),
                                                         extra_headers=headers(assertion), use_mtom=True)


def test_provide_leaves_one_record_per_actor_and_hop(server, sts):
    before = last_seq(server)
    uid = provide(server, professional(sts))
    recs = new_records(server, before)
    kinds = sorted((event_of(r)[0], r.find("ActiveParticipant[@UserIsRequestor='true']") is not None) for r in recs)
    assert [k for k, _ in kinds] == ["ITI-41", "ITI-42", "ITI-42"]
    for rec in recs:
        validate(rec)
        assert event_of(rec)[1] == "0"
        patient = objects(rec, "1")
        assert [p.get("ParticipantObjectID") for p in patient] == [PID]
        assert objects(rec, "20"), "the submission set is named"
        human = [p for p in rec.iterfind("ActiveParticipant") if p.get("UserID") == "dr-house"]
        assert human and human[0].find("RoleIDCode").get("csd-code") == "112247003"
        assert b"audited document" not in etree.tostring(rec)
    actions = sorted(r.find("EventIdentification").get("EventActionCode") for r in recs)
    assert actions == ["C", "C", "R"]  # the repository's side of its ITI-42 is an export
    entries = server.auditor.store.accesses(R_patient(PID), include_secret=True)
    assert any(e["action"] == "submit" and e["document_uid"] == uid and e["document_title"] == "Compte rendu"
               and e["person"] == "Dr dr-house" and e["organisation"] == "Hôpital Test" for e in entries)


def R_patient(pid):
    from xds.security.policy import patient_key

    return patient_key(pid)


def test_query_and_routed_retrieve_are_recorded_with_what_they_touched(server, sts):
    uid = provide(server, professional(sts))
    before = last_seq(server)
    reply = query(server, professional(sts))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS
    (rec,) = new_records(server, before)
    validate(rec)
    assert event_of(rec) == ("ITI-18", "0")
    q = objects(rec, "24")[0]
    query_xml = base64.b64decode(q.findtext("ParticipantObjectQuery"))
    assert b"AdhocQueryRequest" in query_xml and b"Assertion" not in query_xml
    assert q.get("ParticipantObjectID") == C.SQ_FIND_DOCUMENTS

    before = last_seq(server)
    reply = retrieve(server, professional(sts), uid)
    assert reply.body.find(f".//{{{C.NS_XDSB}}}DocumentResponse") is not None
    recs = new_records(server, before)
    # The registry answering the consumer, the registry's call to the host, the host answering it.
    sides = sorted((event_of(r)[0], r.find("EventIdentification/EventID").get("csd-code")) for r in recs)
    assert sides == [("ITI-43", "110106"), ("ITI-43", "110106"), ("ITI-43", "110107")]
    for rec in recs:
        validate(rec)
        assert [o.get("ParticipantObjectID") for o in objects(rec, "3")] == [uid]
    entries = server.auditor.store.accesses(R_patient(PID), include_secret=True)
    assert [e["action"] for e in entries][:2] == ["retrieve", "query"]  # newest first


def test_refusals_are_recorded_and_nothing_else_happens(server, sts):
    before = last_seq(server)
    bad = sts.issue("expired")
    reply = query(server, bad)
    assert reply.is_fault
    recs = new_records(server, before)
    assert sorted(event_of(r) for r in recs) == [("110122", "4"), ("ITI-18", "8")]
    for rec in recs:
        validate(rec)
    login = next(r for r in recs if event_of(r)[0] == "110122")
    assert login.find("EventIdentification/EventID").get("csd-code") == "110114"
    # A refused request touches no patient's log.
    assert not [e for e in server.auditor.store.accesses(R_patient(PID), include_secret=True) if e["outcome"] != "success"
                and e["transaction"] == "ITI-18"]


def test_a_failed_transaction_is_recorded_with_its_error_code(server, sts):
    before = last_seq(server)
    reply = SoapClient(server.url + "/xds/registry").call(
        C.ACTION_REGISTER, builder.simple_submission("NOPE^^^&1.2.3.4&ISO"), extra_headers=headers(professional(sts)))
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    (rec,) = new_records(server, before)
    validate(rec)
    assert event_of(rec) == ("ITI-42", "8")
    assert "XDSUnknownPatientId" in rec.findtext("EventIdentification/EventOutcomeDescription")


def test_break_the_glass_notifies_the_patient_and_the_treating_doctor(server, sts):
    AccessStore(server.registry.store).set_treating_doctor(PID, "dr-wilson")
    provide(server, professional(sts))
    before = {n["id"] for n in server.auditor.store.notifications()}
    reply = query(server, professional(sts, "dr-er", purpose=[EMERGENCY]))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS
    new = [n for n in server.auditor.store.notifications() if n["id"] not in before]
    assert sorted((n["recipient"], n["recipient_id"], n["mode"]) for n in new) == [
        ("patient", R_patient(PID), "bris_de_glace"), ("treating_doctor", "dr-wilson", "bris_de_glace")]
    entry = server.auditor.store.accesses(R_patient(PID), include_secret=True)[0]
    assert entry["mode"] == "bris_de_glace" and entry["person"] == "Dr dr-er"
    # A normal access notifies nobody.
    count = len(server.auditor.store.notifications())
    query(server, professional(sts))
    assert len(server.auditor.store.notifications()) == count


def patient_assertion(sts, pid, name=None):
    return sts.issue(subject=name or pid, roles=[PATIENT_ROLE], patient_id=pid)


def test_the_patient_reads_their_own_log_only(server, sts):
    provide(server, professional(sts), patient=PID)
    provide(server, professional(sts, "dr-other"), patient=OTHER)
    status, data = get(server, "/patient/log", patient_assertion(sts, PID))
    assert status == 200 and data["patient"] == PID
    assert data["entries"] and all(e["professional"] != "Dr dr-other" for e in data["entries"])
    status, data = get(server, "/patient/log?patient=" + quote(OTHER, safe=""), patient_assertion(sts, PID))
    assert status == 403 and "entries" not in data
    status, data = get(server, "/patient/log", professional(sts))
    assert status == 403 and "entries" not in data
    status, data = get(server, "/patient/log")
    assert status == 401 and "entries" not in data
    # The other patient sees theirs.
    status, data = get(server, "/patient/log", patient_assertion(sts, OTHER))
    assert status == 200 and any(e["professional"] == "Dr dr-other" for e in data["entries"])
    # Filters.
    status, data = get(server, "/patient/log?professional=dr-other", patient_assertion(sts, OTHER))
    assert status == 200 and data["entries"] and all(e["professional"] == "Dr dr-other" for e in data["entries"])
    status, data = get(server, "/patient/log?since=2999-01-01", patient_assertion(sts, OTHER))
    assert status == 200 and data["entries"] == []
    status, data = get(server, "/patient/log?since=yesterday", patient_assertion(sts, OTHER))
    assert status == 400


def test_a_legal_representative_does_not_see_what_the_minor_kept_secret(server, sts):
    access = AccessStore(server.registry.store)
    access.set_flag(MINOR, "minor", True)
    access.add_person(MINOR, REPRESENTATIVE, "parent-1")
    provide(server, professional(sts, "dr-open"), patient=MINOR, title="open visit")
    secret = professional(sts, "dr-secret", attributes={
        "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code": "INVISIBLE_REPRESENTANTS_LEGAUX"})
    query(server, secret, patient=MINOR)
    status, own = get(server, "/patient/log", patient_assertion(sts, MINOR))
    assert status == 200 and {"Dr dr-open", "Dr dr-secret"} <= {e["professional"] for e in own["entries"]}
    status, theirs = get(server, "/patient/log?patient=" + quote(MINOR, safe=""),
                         patient_assertion(sts, "parent-1"))
    people = {e["professional"] for e in theirs["entries"]}
    assert status == 200 and "Dr dr-open" in people and "Dr dr-secret" not in people
    # Not a representative: refused.
    status, data = get(server, "/patient/log?patient=" + quote(MINOR, safe=""), patient_assertion(sts, "stranger"))
    assert status == 403 and "entries" not in data


def test_the_administrators_interface_is_for_administrators(server, sts):
    status, data = get(server, "/admin/audit/status", professional(sts))
    assert status == 403 and "records" not in data
    status, data = get(server, "/admin/audit/status", patient_assertion(sts, PID))
    assert status == 403
    before = last_seq(server)
    status, data = get(server, "/admin/audit/status", sts.issue("expired"))
    assert status == 401
    (rec,) = new_records(server, before)
    assert event_of(rec) == ("110122", "4")


def admin(sts):
    return sts.issue(subject="ops", roles=[ADMIN_ROLE], organization="Operations")


def entry_of(server, uid):
    store = server.registry.store
    with store.reading() as conn:
        rows = store.by_unique_ids(conn, [uid])
    return max(rows, key=lambda r: r[0].version)[0].id


def call(server, path, action, body, assertion):
    return SoapClient(server.url + path).call(action, body, extra_headers=headers(assertion))


def status(reply):
    body = reply.body
    holder = body if body.get("status") else body.find(C.q(C.NS_RS, "RegistryResponse"))
    return C.last_segment(holder.get("status"))


def test_updates_deletions_and_removals_are_recorded_refused_and_allowed(server, sts):
    uid = provide(server, professional(sts))
    entry = entry_of(server, uid)
    deprecate = builder.submit_objects_request([builder.submission_set(PID), builder.submission_set_marker(),
                                                builder.status_change(entry, C.STATUS_APPROVED, C.STATUS_DEPRECATED)])
    before = last_seq(server)
    other_org = sts.issue(subject="dr-x", roles=[DOCTOR], organization="Other", organization_id="urn:oid:9.9.9")
    assert status(call(server, "/xds/registry", C.ACTION_UPDATE, deprecate, other_org)) == "Failure"
    assert status(call(server, "/xds/registry", C.ACTION_UPDATE, deprecate, admin(sts))) == "Success"
    recs = new_records(server, before)
    assert [event_of(r) for r in recs] == [("ITI-57", "8"), ("ITI-57", "0")]
    for rec in recs:
        validate(rec)
        assert rec.find("EventIdentification").get("EventActionCode") == "U"
        assert [o.get("ParticipantObjectID") for o in objects(rec, "1")] == [PID]

    uid = provide(server, professional(sts))  # a fresh one: the update's own submission now refers to the first
    entry = entry_of(server, uid)
    store = server.registry.store
    with store.reading() as conn:
        links = [a for a in store.associations_touching(conn, [entry]) if a.type == C.ASSOC_HAS_MEMBER]
    ids = [entry] + [a.id for a in links] + [a.source for a in links]
    before = last_seq(server)
    assert status(call(server, "/xds/registry", C.ACTION_DELETE, builder.remove_objects_request(*ids),
                       other_org)) == "Failure"
    assert status(call(server, "/xds/registry", C.ACTION_DELETE, builder.remove_objects_request(*ids),
                       admin(sts))) == "Success"
    recs = new_records(server, before)
    assert [event_of(r) for r in recs] == [("ITI-62", "8"), ("ITI-62", "0")]
    for rec in recs:
        validate(rec)
        assert sorted(o.get("ParticipantObjectID") for o in objects(rec, "3")) == sorted(ids)
        assert all(o.get("ParticipantObjectDataLifeCycle") == "15" for o in objects(rec, "3"))
    log = server.auditor.store.accesses(R_patient(PID), include_secret=True)
    assert log[0]["action"] == "delete" and log[0]["document_uid"] == uid and log[0]["person"] == "ops"

    before = last_seq(server)
    removal = builder.remove_documents_request((REPO, uid))
    assert status(call(server, "/xds/repository", C.ACTION_REMOVE_DOCUMENTS, removal, professional(sts))) == "Failure"
    assert status(call(server, "/xds/repository", C.ACTION_REMOVE_DOCUMENTS, removal, admin(sts))) == "Success"
    recs = new_records(server, before)
    assert [event_of(r) for r in recs] == [("ITI-86", "8"), ("ITI-86", "0")]
    for rec in recs:
        validate(rec)
        (doc,) = objects(rec, "3")
        assert doc.get("ParticipantObjectID") == uid and doc.get("ParticipantObjectDataLifeCycle") == "15"


class _Hook:
    """A webhook receiver on 127.0.0.1 that answers the status it is told to."""

    def __init__(self):
        import http.server
        import threading

        hook = self
        self.status = 500
        self.received: list[dict] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.status == 200:
                    hook.received.append(json.loads(body))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_notifications_go_to_the_webhook_and_wait_while_it_fails(server, sts):
    from xds.audit.delivery import Delivery

    query(server, professional(sts, "dr-samu", purpose=[("centre_15", "1.2.250.1.213.1.1.4.248", "DMP", "C15")]))
    pending = server.auditor.store.notifications(pending_only=True)
    assert pending and pending[0]["mode"] == "centre_15"
    hook = _Hook()
    try:
        delivery = Delivery(server.auditor.store, server.auditor.source, webhook=hook.url, timeout=5)
        delivery.run_once()
        still = server.auditor.store.notifications(pending_only=True)
        assert {n["id"] for n in still} == {n["id"] for n in pending}   # a 500 delivers nothing
        assert [n["last_error"] for n in still].count("webhook HTTP 500") == 1   # the round stops at a failure
        hook.status = 200
        for n in server.auditor.store.notifications(pending_only=True):  # the retry time has not come yet:
            server.auditor.store.notification_failed(n["id"], "test: retry now", -1)  # make it now
        while delivery.run_once():
            pass
        assert server.auditor.store.notifications(pending_only=True) == []
        got = {(m["recipient"], m["mode"]) for m in hook.received}
        assert ("patient", "centre_15") in got and ("treating_doctor", "centre_15") in got
        sample = next(m for m in hook.received if m["mode"] == "centre_15")
        assert set(sample) == {"id", "recipient", "recipient_id", "patient", "mode", "at", "professional",
                               "organisation", "document_title"}
        assert sample["professional"] == "Dr dr-samu"
    finally:
        hook.close()
