"""Associations that say no more than their columns are stored without their XML (registry/bare_association.py),
and answered, over HTTP and in process, with what their XML would have said; any other association keeps its
XML word for word."""
import uuid

import pytest
from lxml import etree
from sqlalchemy import select

from registry import bare_association, schema as S, splice
from registry.query import stored_query
from registry.store import association_xml, render, stored_association, stored_xml
from tests.helpers import new_pid
from tests.test_splice import _post, infoset, server  # noqa: F401 - server is the fixture
from xds import builder, hl7, soap
from xds import constants as C
from xds.client import SoapClient
from xds.ebrim import parse_submission
from xds.model import Association

RIM = C.NS_RIM


def rim(name: str) -> str:
    return f"{{{RIM}}}{name}"


def submission(pid: str) -> tuple[etree._Element, dict[str, str]]:
    """Two documents in a folder; the associations get UUIDs (kept by the registry) and these shapes:
    ssde1 indented (bare: whitespace between elements is not content), ssde2 named, fdde1 without
    objectType, fdde2 holding a comment, ssfd with a second slot; the others as xds.builder writes them."""
    req = builder.simple_submission(pid, 2, folder_too=True)
    assocs = req.iter(rim("Association"))
    ids = {a.get("id"): f"urn:uuid:{uuid.uuid4()}" for a in assocs}
    for a in req.iter(rim("Association")):
        a.set("id", ids[a.get("id")])
        for end in ("sourceObject", "targetObject"):
            a.set(end, ids.get(a.get(end), a.get(end)))
    by = {old: next(a for a in req.iter(rim("Association")) if a.get("id") == new) for old, new in ids.items()}
    a = by["ssde1"]
    a.text, a[0].text, a[0][0].text, a[0][0].tail, a[0].tail = "\n  ", "\n    ", "\n      ", "\n  ", "\n"
    name = etree.SubElement(by["ssde2"], rim("Name"))
    etree.SubElement(name, rim("LocalizedString"), value="named & kept")
    del by["fdde1"].attrib["objectType"]
    by["fdde2"].append(etree.Comment(" a note "))
    builder.slot(by["ssfd"], "other", ["x"])
    return req, ids


KEPT = {"ssde2", "fdde1", "fdde2", "ssfd"}


def _query(server, req: etree._Element) -> etree._Element:
    data = _post(server, soap.build_envelope(soap.SOAP12, C.ACTION_QUERY, None, req))
    answer = etree.fromstring(data).find(f".//{{{C.NS_QUERY}}}AdhocQueryResponse")
    assert answer.get("status") == C.RESPONSE_SUCCESS
    return answer


def test_bare_associations_are_stored_as_their_columns_and_answered_whole(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    req, ids = submission(pid)
    sent = {old: etree.fromstring(etree.tostring(next(a for a in req.iter(rim("Association"))
                                                      if a.get("id") == new))) for old, new in ids.items()}
    reply = SoapClient(server.url + "/xds/registry").call(C.ACTION_REGISTER, req)
    assert reply.body.get("status") == C.RESPONSE_SUCCESS

    t = S.association
    with server.registry.store.reading() as c:
        rows = {r.id: r for r in c.execute(select(t).where(t.c.id.in_(ids.values())))}
    stored = {i: r.xml for i, r in rows.items()}
    assert set(stored) == set(ids.values())
    assert {old for old, new in ids.items() if stored[new] is not None} == KEPT
    assert "named &amp; kept" in stored[ids["ssde2"]] and "<!-- a note -->" in stored[ids["fdde2"]]

    deprecated_home = "urn:oid:1.2.3.99"
    answer = _query(server, builder.adhoc_query_request(C.SQ_GET_ALL, [
        ("$patientId", f"'{pid}'"), ("$XDSDocumentEntryStatus", f"('{C.STATUS_APPROVED}')"),
        ("$XDSSubmissionSetStatus", f"('{C.STATUS_APPROVED}')"), ("$XDSFolderStatus", f"('{C.STATUS_APPROVED}')")],
        home=deprecated_home))
    got = {a.get("id"): a for a in answer.iter(rim("Association"))}
    assert set(got) == set(ids.values())
    for old, new in ids.items():
        a = got[new]
        assert a.get("status") == C.STATUS_APPROVED and a.get("lid") == new and a.get("home") == deprecated_home
        assert a.get("associationType") == sent[old].get("associationType") == rows[new].type
        assert (a.get("sourceObject"), a.get("targetObject")) == (rows[new].source, rows[new].target)
        assert rows[new].source.startswith("urn:uuid:") and rows[new].target.startswith("urn:uuid:")
        slots = {s.get("name"): [v.text for v in s.iter(rim("Value"))] for s in a.findall(rim("Slot"))}
        assert slots == {s.get("name"): [v.text for v in s.iter(rim("Value"))] for s in sent[old].findall(rim("Slot"))}
    assert got[ids["ssde2"]].find(rim("Name"))[0].get("value") == "named & kept"
    assert got[ids["fdde1"]].get("objectType") is None          # kept as sent, not completed
    assert got[ids["ssde1"]].get("objectType") == C.OBJECT_TYPE_ASSOCIATION
    # The in-process answer (parsed parts) says the same.
    whole = stored_query(server.registry.store, builder.adhoc_query_request(C.SQ_GET_ALL, [
        ("$patientId", f"'{pid}'"), ("$XDSDocumentEntryStatus", f"('{C.STATUS_APPROVED}')"),
        ("$XDSSubmissionSetStatus", f"('{C.STATUS_APPROVED}')"), ("$XDSFolderStatus", f"('{C.STATUS_APPROVED}')")],
        home=deprecated_home), server.registry.config)
    assert infoset(whole.find(rim("RegistryObjectList"))) == infoset(answer.find(rim("RegistryObjectList")))


def _parsed_associations(pid: str) -> list[Association]:
    req, _ = submission(pid)
    return [o for o in parse_submission(req).objects if isinstance(o, Association)]


def _without_blank_text(el: etree._Element) -> etree._Element:
    for e in el.iter():
        if e.text is not None and not e.text.strip():
            e.text = None
        if e.tail is not None and not e.tail.strip():
            e.tail = None
    return el


@pytest.mark.parametrize("status,home", [
    (C.STATUS_APPROVED, None),
    (C.STATUS_DEPRECATED, "urn:oid:1.2.3.4"),
    ('urn:x:"odd"&<st\tatus>', 'a&b"<\n>'),
])
def test_the_written_text_says_what_the_stored_xml_would_have(status, home):
    pid = new_pid()
    bare = 0
    for a in _parsed_associations(pid):
        full = stored_xml(a)
        kept = stored_association(a)
        if kept is not None:
            assert kept == full
            continue
        bare += 1
        row = type("Row", (), dict(id=a.id, type=a.type, source=a.source, target=a.target, status=status,
                                   ss_status=a.submission_set_status, xml=None))
        expected = _without_blank_text(render(full, status))
        if home:
            expected.set("home", home)
        assert infoset(etree.fromstring(splice.association_part(row, home))) == infoset(expected)
        # And the text the store gives for the row (association_xml: the migration's downgrade) says it too.
        assert infoset(render(association_xml(row), status)) == infoset(_without_blank_text(render(full, status)))
    assert bare == len(_parsed_associations(pid)) - len(KEPT)


@pytest.mark.parametrize("change", [
    "lid other than id", "another objectType", "a foreign attribute", "two values", "a slotType",
    "text in the association", "a second ValueList", "a SubmissionSetStatus other than the column",
])
def test_shapes_that_keep_their_xml(change):
    a = builder.association("urn:uuid:a", "urn:uuid:s", id="urn:uuid:i")
    a.set("lid", "urn:uuid:i")
    a.set("status", C.STATUS_APPROVED)
    ss = "Original"
    slot = a[0]
    if change == "lid other than id":
        a.set("lid", "urn:uuid:other")
    elif change == "another objectType":
        a.set("objectType", "urn:x")
    elif change == "a foreign attribute":
        a.set("{urn:x}extra", "1")
    elif change == "two values":
        etree.SubElement(slot[0], rim("Value")).text = "Reference"
    elif change == "a slotType":
        slot.set("slotType", "x")
    elif change == "text in the association":
        a.text = "words"
    elif change == "a second ValueList":
        etree.SubElement(slot, rim("ValueList"))
    else:
        ss = "Reference"
    assert bare_association.is_bare(a, ss) is False
    # The unchanged one is bare, so each change alone is what keeps the XML.
    b = builder.association("urn:uuid:a", "urn:uuid:s", id="urn:uuid:i")
    b.set("lid", "urn:uuid:i")
    b.set("status", C.STATUS_APPROVED)
    assert bare_association.is_bare(b, "Original") is True
    assert bare_association.is_bare(b, None) is False   # the column says no slot, the XML has one


def test_a_patient_merge_leaves_bare_associations_answering(server):
    """Associations have no patient column: a merge moves the objects, and the bare associations still
    answer from their columns under the surviving patient."""
    old, survivor = new_pid(), new_pid()
    for p in (old, survivor):
        server.registry.store.add_patient(p)
    req, ids = submission(old)
    assert SoapClient(server.url + "/xds/registry").call(C.ACTION_REGISTER, req).body.get("status") == \
        C.RESPONSE_SUCCESS
    server.registry.store.merge_patient(hl7.patient_key(old), hl7.patient_key(survivor))
    answer = _query(server, builder.adhoc_query_request(C.SQ_GET_ALL, [
        ("$patientId", f"'{survivor}'"), ("$XDSDocumentEntryStatus", f"('{C.STATUS_APPROVED}')"),
        ("$XDSSubmissionSetStatus", f"('{C.STATUS_APPROVED}')"), ("$XDSFolderStatus", f"('{C.STATUS_APPROVED}')")]))
    assert {a.get("id") for a in answer.iter(rim("Association"))} == set(ids.values())
