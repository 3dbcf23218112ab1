"""The ATNA audit record builder (xds/audit/records.py): structure and codes per transaction."""
import base64
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from xds.audit import AuditEvent, DocumentRef, HumanRequestor, Node, record_key, to_xml
from xds.audit import records
from xds.builder import adhoc_query_request
from xds.constants import NS_QUERY, NS_RIM
from xds.security.principal import Code

ATNA_KIT = Path(__file__).resolve().parents[2] / "shared" / "testkits" / "atna"

PID = "4711^^^&1.3.6.1.4.1.21367.2005.13.20.1000&ISO"
WHEN = datetime(2025, 3, 1, 12, 30, 5, 123000, tzinfo=timezone.utc)
CLIENT = Node(user_id="http://www.w3.org/2005/08/addressing/anonymous", address="10.1.2.3")
SERVER = Node(user_id="https://xds.example.org/repository", address="xds.example.org", alternative_user_id="1234")
TLS = "CN=source.example.org,O=Example Hospital,C=CH"
HUMAN = HumanRequestor(
    name_id="7601000000000",
    issuer="https://idp.example.org",
    alias="Dr. Hans Muster",
    roles=(Code("HCP", "2.16.756.5.30.1.127.3.10.6", "Healthcare professional"),),
    organization="Example Hospital",
    organization_id="urn:oid:2.16.756.5.30.1.1",
    purposes_of_use=(Code("NORM", "2.16.756.5.30.1.127.3.10.5", "Normal access"),),
)
QUERY_ID = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"  # FindDocuments


def adhoc_request() -> bytes:
    return etree.tostring(adhoc_query_request(QUERY_ID, [("$XDSDocumentEntryPatientId", f"'{PID}'")]),
                          encoding="utf-8")


DOCS = (DocumentRef("1.2.3.4.1", "1.3.6.1.4.1.21367.2010.1.2.1125"),
        DocumentRef("1.2.3.4.2", "1.3.6.1.4.1.21367.2010.1.2.1125", "urn:oid:1.2.3.99"))

# transaction, actor, extra fields, expected (EventID code, action)
CASES = {
    "ITI-41": ("Document Repository", dict(patient_id=PID, submission_set_uid="1.2.3.5"), ("110107", "C")),
    "ITI-42": ("Document Registry", dict(patient_id=PID, submission_set_uid="1.2.3.5"), ("110107", "C")),
    "ITI-43": ("Document Repository", dict(documents=DOCS), ("110106", "R")),
    "ITI-43-proxy": ("Document Consumer", dict(patient_id=PID, documents=DOCS), ("110107", "C")),
    "ITI-18": ("Document Registry", dict(patient_id=PID, query_id=QUERY_ID, query_request=adhoc_request(),
                                         home_community_id="urn:oid:1.2.3.99"), ("110112", "E")),
    "ITI-57": ("Document Registry", dict(patient_id=PID, submission_set_uid="1.2.3.6"), ("110110", "U")),
    "ITI-62": ("Document Registry", dict(patient_id=PID, object_uuids=(
        "urn:uuid:1d6f2d39-3a1e-4a56-9d0c-55a1a35b5e01", "urn:uuid:2d6f2d39-3a1e-4a56-9d0c-55a1a35b5e02")),
        ("110110", "D")),
    "ITI-86": ("Document Repository", dict(patient_id=PID, documents=DOCS), ("110110", "D")),
    "ITI-8": ("Document Registry", dict(patient_id=PID, hl7_trigger="A01", message_control_id="MSG00042"),
              ("110110", "C")),
}


def make(case: str, *, outcome=0, human=None, sequence=7, **more) -> AuditEvent:
    actor, extra, _ = CASES[case]
    fields = dict(extra, event_time=WHEN)
    fields.update(more)
    requestor, responder = CLIENT, SERVER
    if case == "ITI-8":
        requestor = Node(user_id="EHR_FACILITY|PAT_IDENTITY_X_REF_MGR", address="10.1.2.9")
        responder = Node(user_id="XDS_FACILITY|XDS_REGISTRY", address="xds.example.org", alternative_user_id="1234")
    if case == "ITI-43-proxy":
        requestor = Node(user_id="https://xds.example.org/registry", address="xds.example.org",
                         alternative_user_id="1234")
        responder = Node(user_id="https://repo2.example.org/xds/retrieve", address="repo2.example.org")
    return AuditEvent(transaction=case.split("-proxy")[0], actor=actor, requestor=requestor, responder=responder,
                      outcome=outcome, human=human,
                      tls_subject=TLS if case != "ITI-43-proxy" else None, sequence=sequence, **fields)


def participants(root):
    return {p.find("RoleIDCode").get("csd-code"): p for p in root.iterfind("ActiveParticipant")
            if p.find("RoleIDCode") is not None and p.find("RoleIDCode").get("codeSystemName") == "DCM"}


def objects(root, type_code, role=None):
    return [o for o in root.iterfind("ParticipantObjectIdentification")
            if o.get("ParticipantObjectTypeCode") == type_code
            and (role is None or o.get("ParticipantObjectTypeCodeRole") == role)]


def detail(obj, kind):
    for d in obj.iterfind("ParticipantObjectDetail"):
        if d.get("type") == kind:
            return base64.b64decode(d.get("value")).decode("utf-8")
    return None


ALL = [(case, outcome, with_human) for case in CASES for outcome in (0, 8) for with_human in (False, True)]


@pytest.mark.parametrize("case,outcome,with_human", ALL)
def test_structure_and_codes(case, outcome, with_human):
    event = make(case, outcome=outcome, human=HUMAN if with_human else None)
    root = to_xml(event, "XDS-SERVER", "1.3.6.1.4.1.21367.2010.1.2")
    tx = event.transaction
    assert root.tag == "AuditMessage"

    # Element order: EventIdentification, ActiveParticipant+, AuditSourceIdentification, ParticipantObject*.
    tags = [child.tag for child in root]
    assert tags[0] == "EventIdentification"
    n_active = 3 if with_human else 2
    assert tags[1:1 + n_active] == ["ActiveParticipant"] * n_active
    assert tags[1 + n_active] == "AuditSourceIdentification"
    assert set(tags[2 + n_active:]) == {"ParticipantObjectIdentification"}

    ident = root.find("EventIdentification")
    event_code, action = CASES[case][2]
    assert [c.tag for c in ident][:2] == ["EventID", "EventTypeCode"]
    event_id = ident.find("EventID")
    assert (event_id.get("csd-code"), event_id.get("codeSystemName")) == (event_code, "DCM")
    assert event_id.get("originalText")
    assert ident.get("EventActionCode") == action
    assert ident.get("EventOutcomeIndicator") == str(outcome)
    assert ident.get("EventDateTime") == "2025-03-01T12:30:05.123Z"
    type_code = ident.find("EventTypeCode")
    assert type_code.attrib == {"csd-code": tx, "codeSystemName": "IHE Transactions",
                                "originalText": records.TRANSACTION_NAMES[tx]}
    purposes = ident.findall("PurposeOfUse")
    assert [p.get("csd-code") for p in purposes] == (["NORM"] if with_human else [])

    roles = participants(root)
    source, destination = roles["110153"], roles["110152"]
    assert source.find("RoleIDCode").get("originalText") == "Source Role ID"
    assert destination.find("RoleIDCode").get("originalText") == "Destination Role ID"
    if tx == "ITI-43":
        # Documents flow from the repository to the requestor.
        assert source.get("UserIsRequestor") == "false"
        assert destination.get("UserIsRequestor") == "true"
    else:
        assert source.get("UserIsRequestor") == "true"
        assert destination.get("UserIsRequestor") == "false"
        assert source.get("AlternativeUserID") == TLS
        assert destination.get("AlternativeUserID") == "1234"
    for p in (source, destination):
        assert p.get("UserID")
        ap = p.get("NetworkAccessPointID")
        assert p.get("NetworkAccessPointTypeCode") == ("2" if ap[0].isdigit() else "1")

    humans = [p for p in root.iterfind("ActiveParticipant") if p not in (source, destination)]
    if with_human:
        (human,) = humans
        assert human.get("UserID") == HUMAN.name_id
        assert human.get("UserName") == "Dr. Hans Muster<7601000000000@https://idp.example.org>"
        assert human.get("UserIsRequestor") == "true"
        assert [(r.get("csd-code"), r.get("codeSystemName")) for r in human.iterfind("RoleIDCode")] == \
            [("HCP", "2.16.756.5.30.1.127.3.10.6")]
        (org,) = objects(root, "3")
        assert org.get("ParticipantObjectID") == HUMAN.organization_id
        assert org.findtext("ParticipantObjectName") == HUMAN.organization
    else:
        assert humans == []
        assert objects(root, "3") == []

    audit_source = root.find("AuditSourceIdentification")
    assert audit_source.get("AuditSourceID") == "XDS-SERVER"
    assert audit_source.get("AuditEnterpriseSiteID") == "1.3.6.1.4.1.21367.2010.1.2"

    patients = objects(root, "1", "1")
    if case == "ITI-43":
        assert patients == []
    else:
        (patient,) = patients
        assert patient.get("ParticipantObjectID") == PID
        id_type = patient.find("ParticipantObjectIDTypeCode")
        assert (id_type.get("csd-code"), id_type.get("codeSystemName")) == ("2", "RFC-3881")
        assert detail(patient, "MSH-10") == ("MSG00042" if tx == "ITI-8" else None)

    sets = objects(root, "2", "20")
    if tx in ("ITI-41", "ITI-42", "ITI-57"):
        (ss,) = sets
        assert ss.get("ParticipantObjectID") == event.submission_set_uid
        assert ss.find("ParticipantObjectIDTypeCode").get("csd-code") == \
            "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
    else:
        assert sets == []

    reports = objects(root, "2", "3")
    if tx in ("ITI-43", "ITI-86"):
        assert [r.get("ParticipantObjectID") for r in reports] == ["1.2.3.4.1", "1.2.3.4.2"]
        for r in reports:
            assert r.find("ParticipantObjectIDTypeCode").attrib == {
                "csd-code": "9", "codeSystemName": "RFC-3881", "originalText": "Report Number"}
            assert detail(r, "Repository Unique Id") == "1.3.6.1.4.1.21367.2010.1.2.1125"
        assert detail(reports[1], "ihe:homeCommunityID") == "urn:oid:1.2.3.99"
        assert reports[0].get("ParticipantObjectDataLifeCycle") == ("15" if tx == "ITI-86" else None)
    elif tx == "ITI-62":
        assert [r.get("ParticipantObjectID") for r in reports] == list(event.object_uuids)
        assert {r.find("ParticipantObjectIDTypeCode").get("csd-code") for r in reports} == \
            {"urn:ihe:iti:2017:ObjectRef"}
    else:
        assert reports == []

    queries = objects(root, "2", "24")
    if tx == "ITI-18":
        (query,) = queries
        assert query.get("ParticipantObjectID") == QUERY_ID
        assert query.find("ParticipantObjectIDTypeCode").attrib == {
            "csd-code": "ITI-18", "codeSystemName": "IHE Transactions", "originalText": "Registry Stored Query"}
        assert base64.b64decode(query.findtext("ParticipantObjectQuery")) == adhoc_request()
        assert detail(query, "QueryEncoding") == "UTF-8"
        assert detail(query, "urn:ihe:iti:xca:2010:homeCommunityId") == "urn:oid:1.2.3.99"
        assert query.find("ParticipantObjectName") is None
    else:
        assert queries == []

    # Every ParticipantObjectIdentification has its IDTypeCode first, then a Name or a Query (CP-2399).
    for obj in root.iterfind("ParticipantObjectIdentification"):
        kids = [c.tag for c in obj]
        assert kids[0] == "ParticipantObjectIDTypeCode"
        assert kids[1] in ("ParticipantObjectName", "ParticipantObjectQuery")
        assert set(kids[2:]) <= {"ParticipantObjectDetail"}

    assert record_key(root) == (event.record_id, 7)


def test_coded_values_carry_the_required_attributes():
    for case in CASES:
        root = to_xml(make(case, human=HUMAN), "XDS-SERVER")
        for el in root.iter("EventID", "EventTypeCode", "RoleIDCode", "ParticipantObjectIDTypeCode", "PurposeOfUse"):
            assert el.get("csd-code") and el.get("codeSystemName") and el.get("originalText"), etree.tostring(el)
        assert root.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") is None


def test_iti8_update_triggers():
    for trigger, action in (("A01", "C"), ("A04", "C"), ("A05", "C"), ("A08", "U"), ("A40", "U")):
        root = to_xml(make("ITI-8", hl7_trigger=trigger), "XDS-SERVER")
        assert root.find("EventIdentification").get("EventActionCode") == action
    with pytest.raises(ValueError):
        make("ITI-8", hl7_trigger="A31")


def test_iti8_nodes_are_hl7_applications():
    roles = participants(to_xml(make("ITI-8"), "XDS-SERVER"))
    assert roles["110153"].get("UserID") == "EHR_FACILITY|PAT_IDENTITY_X_REF_MGR"
    assert roles["110152"].get("UserID") == "XDS_FACILITY|XDS_REGISTRY"


def test_routing_proxy_records_the_repository_as_source():
    roles = participants(to_xml(make("ITI-43-proxy"), "XDS-SERVER"))
    assert roles["110153"].get("UserID") == "https://repo2.example.org/xds/retrieve"
    assert roles["110153"].get("NetworkAccessPointTypeCode") == "1"
    assert roles["110152"].get("UserID") == "https://xds.example.org/registry"
    assert roles["110152"].get("UserIsRequestor") == "true"


def test_outcome_description_and_failure_without_known_objects():
    event = AuditEvent(transaction="ITI-41", actor="Document Repository", requestor=CLIENT, responder=SERVER,
                       outcome=12, outcome_description="XDSRepositoryError", sequence=0)
    root = to_xml(event, "XDS-SERVER")
    assert root.findtext("EventIdentification/EventOutcomeDescription") == "XDSRepositoryError"
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == "12"
    # Only the record's own key object remains.
    (obj,) = root.findall("ParticipantObjectIdentification")
    assert record_key(root) == (event.record_id, 0)
    assert obj.get("ParticipantObjectTypeCode") == "4"


def test_query_rebuilt_from_id_and_parameters():
    event = make("ITI-18", query_request=None, query_return_type="ObjectRef",
                 query_parameters=(("$XDSDocumentEntryPatientId", (f"'{PID}'",)),
                                   ("$XDSDocumentEntryStatus", ("('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')",))))
    root = to_xml(event, "XDS-SERVER")
    (query,) = objects(root, "2", "24")
    request = etree.fromstring(base64.b64decode(query.findtext("ParticipantObjectQuery")))
    assert request.tag == f"{{{NS_QUERY}}}AdhocQueryRequest"
    assert request.find(f"{{{NS_QUERY}}}ResponseOption").get("returnType") == "ObjectRef"
    adhoc = request.find(f"{{{NS_RIM}}}AdhocQuery")
    assert adhoc.get("id") == QUERY_ID
    slots = {s.get("name"): [v.text for v in s.iter(f"{{{NS_RIM}}}Value")] for s in adhoc}
    assert slots["$XDSDocumentEntryPatientId"] == [f"'{PID}'"]


def test_query_element_is_accepted():
    element = etree.fromstring(adhoc_request())
    root = to_xml(make("ITI-18", query_request=element), "XDS-SERVER")
    (query,) = objects(root, "2", "24")
    assert etree.fromstring(base64.b64decode(query.findtext("ParticipantObjectQuery"))).tag == element.tag


def test_never_records_an_envelope_or_security_tokens():
    envelope = (b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Header/>'
                b'<s:Body/></s:Envelope>')
    with pytest.raises(ValueError):
        to_xml(make("ITI-18", query_request=envelope), "XDS-SERVER")
    request = etree.fromstring(adhoc_request())
    etree.SubElement(request, "{urn:oasis:names:tc:SAML:2.0:assertion}Assertion")
    with pytest.raises(ValueError):
        to_xml(make("ITI-18", query_request=request), "XDS-SERVER")


def test_no_document_content_or_assertion_in_record():
    text = etree.tostring(to_xml(make("ITI-41", human=HUMAN), "XDS-SERVER"))
    assert b"Assertion" not in text and b"Signature" not in text
    assert not hasattr(AuditEvent, "document_content")


def test_record_ids_are_unique_and_stable():
    events = [make("ITI-42", sequence=n) for n in range(200)]
    keys = [record_key(to_xml(e, "XDS-SERVER")) for e in events]
    assert len({k[0] for k in keys}) == 200
    assert [k[1] for k in keys] == list(range(200))
    for rid, _ in keys:
        assert uuid.UUID(rid).version == 4
    # The same event serialised twice (a redelivery) has the same key.
    again = events[3]
    assert record_key(to_xml(again, "XDS-SERVER")) == record_key(to_xml(again, "XDS-SERVER"))


def test_record_key_reads_serialised_bytes():
    event = make("ITI-43", sequence=123456789012)
    data = etree.tostring(to_xml(event, "XDS-SERVER"), encoding="utf-8")
    assert record_key(data) == (event.record_id, 123456789012)


def test_record_key_refuses_foreign_records():
    root = to_xml(make("ITI-42"), "XDS-SERVER")
    for obj in root.findall("ParticipantObjectIdentification"):
        if obj.find("ParticipantObjectIDTypeCode").get("csd-code") == records.ID_RECORD[0]:
            root.remove(obj)
    with pytest.raises(ValueError):
        record_key(root)


def test_given_record_id_is_kept():
    rid = "0b7c9a8e-9f0e-4a6f-8d1c-3c2e5a7b9d10"
    assert record_key(to_xml(make("ITI-57", record_id=rid, sequence=3), "XDS-SERVER")) == (rid, 3)


def test_event_time_is_written_in_utc():
    cet = timezone(timedelta(hours=1))
    root = to_xml(make("ITI-42", event_time=datetime(2025, 3, 1, 13, 30, 5, tzinfo=cet)), "XDS-SERVER")
    assert root.find("EventIdentification").get("EventDateTime") == "2025-03-01T12:30:05.000Z"


@pytest.mark.parametrize("bad", [
    dict(transaction="ITI-99"),
    dict(actor="Document Registry"),          # ITI-41 is the repository's
    dict(outcome=3),
    dict(sequence=-1),
    dict(sequence=True),
    dict(event_time=datetime(2025, 1, 1)),    # naive
    dict(record_id="not-a-uuid"),
])
def test_invalid_events_are_refused(bad):
    fields = dict(transaction="ITI-41", actor="Document Repository", requestor=CLIENT, responder=SERVER, sequence=1)
    fields.update(bad)
    with pytest.raises(ValueError):
        AuditEvent(**fields)


def test_user_name_without_issuer():
    assert HumanRequestor(name_id="u1").user_name == "u1"
    assert HumanRequestor(name_id="u1", issuer="idp").user_name == "<u1@idp>"
    assert HumanRequestor(name_id="u1", issuer="idp", alias="Al").user_name == "Al<u1@idp>"


@pytest.mark.parametrize("edition", ["dicom2024d.xsd", "dicom2017c.xsd"])
def test_every_record_validates_against_the_dicom_schema(edition):
    path = ATNA_KIT / edition
    if not path.is_file():
        pytest.skip(f"{path} is absent (the ATNA test kit is only in CI)")
    schema = etree.XMLSchema(etree.parse(str(path)))
    for case, outcome, with_human in ALL:
        root = to_xml(make(case, outcome=outcome, human=HUMAN if with_human else None), "XDS-SERVER",
                      "1.3.6.1.4.1.21367.2010.1.2" if with_human else None)
        # Validate the serialised form, as a receiver sees it.
        parsed = etree.fromstring(etree.tostring(root))
        assert schema.validate(parsed), f"{case} outcome {outcome}: {schema.error_log}"
    bare = AuditEvent(transaction="ITI-62", actor="Document Registry", requestor=CLIENT, responder=SERVER,
                      outcome=4, sequence=0)
    assert schema.validate(to_xml(bare, "XDS-SERVER")), schema.error_log
