"""Query answers spliced from the stored XML text (registry/splice.py, xds/spliced.py): the patched text says
exactly what the parsed and rendered element says, it is used for what the registry stores, it steps aside
for any shape it is not certain of, and the answers over HTTP are whole."""
import http.client

import pytest
from lxml import etree
from sqlalchemy import select

from registry import schema as S
from registry import splice
from registry import store as store_module
from registry.query import query_answer, stored_query
from registry.store import render
from xds import builder
from xds import constants as C
from xds import soap, spliced
from node.server import Services
from xds.settings import Settings
from tests.helpers import new_pid
from tests.test_query import build_world, lst, request

RIM = C.NS_RIM
DEPRECATED = C.STATUS_DEPRECATED


def infoset(el: etree._Element):
    """What an element says, whatever prefixes and namespace declarations spell it."""
    return (el.tag, sorted(el.attrib.items()), el.text or "", [(infoset(c), c.tail or "") for c in el
                                                                if isinstance(c.tag, str)])


def same(fast: bytes, xml: str, *args, home=None):
    slow = render(xml, *args)
    if home:
        slow.set("home", home)
    assert infoset(etree.fromstring(fast)) == infoset(slow)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    world = build_world("sqlite:///" + str(tmp_path_factory.mktemp("splice") / "r.db"))
    with world.store.reading() as c:
        objects = c.execute(select(S.registry_object.c.xml, S.registry_object.c.kind)).all()
        assocs = c.execute(select(S.association.c.xml)).all()
    assert {k for _, k in objects} == {S.KIND_DOCUMENT_ENTRY, S.KIND_SUBMISSION_SET, S.KIND_FOLDER}
    # Bare associations have no XML (tests/test_bare_association.py).
    return [x for x, _ in objects], [x for (x,) in assocs if x is not None]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    world = build_world("sqlite:///" + str(tmp_path_factory.mktemp("ready") / "r.db"))
    t = S.registry_object
    with world.store.reading() as c:
        return c.execute(select(t.c.xml, t.c.kind, t.c.lid, t.c.version, t.c.ready)).all()


@pytest.mark.parametrize("status,home", [
    (C.STATUS_APPROVED, None), (DEPRECATED, "urn:oid:1.2.3.4"), ('urn:x:"odd"&<st\tatus>', 'a&b"<\n>'),
])
def test_ready_text_needs_only_its_status(rows, status, home):
    """Everything the registry stores is answer-ready (its lid and versionName in it): setting the status
    and home in the root's start tag says what rendering the row says."""
    assert rows and all(r.ready for r in rows)
    for r in rows:
        fast = splice.with_status(r.xml, status, home)
        same(fast, r.xml, status, r.lid, r.version, home=home)
        assert splice.answer_part(r.xml, status, r.lid, r.version, home=home, ready=True) == fast


def test_prepare_keeps_text_it_is_not_certain_of():
    for name, xml in UNSURE.items():
        assert splice.prepare(xml, "L", 1) == (xml, False), name
    text, ready = splice.prepare(CERTAIN["only slots"], "L", 3)
    assert ready and 'lid="L"' in text and 'versionName="3"' in text
    assert infoset(etree.fromstring(splice.with_status(text, DEPRECATED))) == \
        infoset(render(CERTAIN["only slots"], DEPRECATED, "L", 3))


@pytest.mark.parametrize("status,lid,version,home", [
    (C.STATUS_APPROVED, None, 1, None),
    (DEPRECATED, "urn:uuid:7d3c4a6e-0000-4000-8000-000000000001", 3, None),
    (DEPRECATED, None, 12, "urn:oid:1.2.3.4"),
    ('urn:x:"odd"&<status>', 'lid&"<>', 2, "a&b"),
])
def test_what_the_registry_stores_is_patched_in_its_text(stored, status, lid, version, home):
    objects, assocs = stored
    for xml in objects:
        fast = splice.patched(xml, status, lid, version, home)
        assert fast is not None, xml[:200]
        same(fast, xml, status, lid, version, home=home)
    for xml in assocs:
        fast = splice.patched(xml, status, home=home)
        assert fast is not None, xml[:200]
        same(fast, xml, status, home=home)


R = f'xmlns:rim="{RIM}"'
SLOT = '<rim:Slot name="creationTime"><rim:ValueList><rim:Value>2024</rim:Value></rim:ValueList></rim:Slot>'
NAME = '<rim:Name><rim:LocalizedString value="a &amp; &quot;b&quot; &lt;c&gt;"/></rim:Name>'
CL = (f'<rim:Classification id="c1" classificationScheme="s" classifiedObject="e" nodeRepresentation="n">'
      f'{NAME}</rim:Classification>')
EI = '<rim:ExternalIdentifier id="i1" identificationScheme="s" registryObject="e" value="v"/>'
CERTAIN = {
    "no VersionInfo, classification follows": f'<rim:ExtrinsicObject {R} id="e" status="x">{SLOT}{NAME}{CL}{EI}'
                                             f'</rim:ExtrinsicObject>',
    "only slots": f'<rim:ExtrinsicObject {R} id="e" lid="e">{SLOT}</rim:ExtrinsicObject>',
    "VersionInfo with a comment": f'<rim:ExtrinsicObject {R} id="e">{SLOT}<rim:VersionInfo versionName="1" '
                                  f'comment="first &amp; only"/>{CL}</rim:ExtrinsicObject>',
    "default namespace": f'<ExtrinsicObject xmlns="{RIM}" id="e" status="x"><Slot name="a"><ValueList><Value>1'
                         f'</Value></ValueList></Slot><Classification id="c" classificationScheme="s" '
                         f'classifiedObject="e" nodeRepresentation="n"/></ExtrinsicObject>',
    "trailing whitespace and other namespaces": f'<rim:RegistryPackage {R} xmlns:q="urn:q" xmlns:x="urn:x" '
                                                f'id="p">{EI}</rim:RegistryPackage>\n    ',
    "empty element with children closing": f'<rim:ExtrinsicObject {R} id="e"></rim:ExtrinsicObject>',
}
UNSURE = {
    "a comment": f'<rim:ExtrinsicObject {R} id="e"><!-- <rim:VersionInfo versionName="9"/> -->{CL}'
                 f'</rim:ExtrinsicObject>',
    "CDATA": f'<rim:ExtrinsicObject {R} id="e"><rim:Slot name="a"><rim:ValueList><rim:Value><![CDATA[<x>]]>'
             f'</rim:Value></rim:ValueList></rim:Slot></rim:ExtrinsicObject>',
    "a processing instruction": f'<rim:ExtrinsicObject {R} id="e"><?pi <rim:Classification?></rim:ExtrinsicObject>',
    "VersionInfo after a Classification": f'<rim:ExtrinsicObject {R} id="e">{CL}<rim:VersionInfo versionName="1"/>'
                                          f'</rim:ExtrinsicObject>',
    "a Classification's own VersionInfo": f'<rim:ExtrinsicObject {R} id="e"><rim:Classification id="c" '
                                          f'classificationScheme="s" classifiedObject="e" nodeRepresentation="n">'
                                          f'<rim:VersionInfo versionName="4"/></rim:Classification>'
                                          f'</rim:ExtrinsicObject>',
    "two VersionInfo": f'<rim:ExtrinsicObject {R} id="e"><rim:VersionInfo versionName="1"/><rim:VersionInfo '
                       f'versionName="2"/></rim:ExtrinsicObject>',
    "children under a second prefix": f'<rim:ExtrinsicObject {R} xmlns:r2="{RIM}" id="e"><r2:Classification '
                                      f'id="c" classificationScheme="s" classifiedObject="e" '
                                      f'nodeRepresentation="n"/></rim:ExtrinsicObject>',
    "the prefix declared again": f'<rim:ExtrinsicObject {R} id="e"><rim:Slot xmlns:rim="urn:other" name="a"/>'
                                 f'{CL}</rim:ExtrinsicObject>',
    "an unknown child first": f'<rim:ExtrinsicObject {R} id="e"><rim:Extra>{CL}</rim:Extra></rim:ExtrinsicObject>',
    "root prefix not declared on it": f'<rim:ExtrinsicObject id="e"/>',
    "a childless object to version": f'<rim:ExtrinsicObject {R} id="e"/>',
    "a VersionInfo with content": f'<rim:ExtrinsicObject {R} id="e"><rim:VersionInfo versionName="1">x'
                                  f'</rim:VersionInfo></rim:ExtrinsicObject>',
}


@pytest.mark.parametrize("name", sorted(CERTAIN))
def test_shapes_it_is_certain_of(name):
    xml = CERTAIN[name]
    fast = splice.patched(xml, DEPRECATED, "L", 5, "urn:oid:9")
    assert fast is not None
    same(fast, xml, DEPRECATED, "L", 5, home="urn:oid:9")


@pytest.mark.parametrize("name", sorted(UNSURE))
def test_shapes_it_steps_aside_for(name):
    xml = UNSURE[name]
    assert splice.patched(xml, DEPRECATED, "L", 5) is None
    if name != "root prefix not declared on it":
        # ...and the answer is still the rendered element.
        assert infoset(etree.fromstring(splice.answer_part(xml, DEPRECATED, "L", 5))) == \
            infoset(render(xml, DEPRECATED, "L", 5))


def test_a_folder_is_rendered_for_its_last_update_time(stored):
    objects, _ = stored
    folder = next(x for x in objects if "RegistryPackage" in x[:40] and C.FOLDER_CLASSIFICATION_NODE in x)
    part = splice.answer_part(folder, C.STATUS_APPROVED, "l", 1, "20250101010101")
    el = etree.fromstring(part)
    slots = {s.get("name"): s.findtext(f".//{{{RIM}}}Value") for s in el.findall(f"{{{RIM}}}Slot")}
    assert slots["lastUpdateTime"] == "20250101010101"


def test_join_and_materialise_agree():
    payload = etree.Element(C.q(C.NS_QUERY, "AdhocQueryResponse"), nsmap={"query": C.NS_QUERY, "rim": RIM})
    etree.SubElement(payload, C.q(RIM, "RegistryObjectList"))
    parts = [splice.patched(CERTAIN["only slots"], DEPRECATED, "L", 2),
             splice.patched(CERTAIN["default namespace"], DEPRECATED, "M", 3)]
    spliced.mark(payload)
    joined = etree.fromstring(spliced.join(etree.tostring(payload), parts))
    built = spliced.materialise(payload, parts)
    assert infoset(joined) == infoset(built)
    assert [c.get("lid") for c in built.find(C.q(RIM, "RegistryObjectList"))] == ["L", "M"]
    with pytest.raises(ValueError):
        spliced.mark(built)   # a list that already holds objects is not spliced into
    with pytest.raises(ValueError):
        spliced.join(b"<x/>", parts)


def test_query_answer_keeps_objects_as_bytes_in_process(stored, tmp_path):
    world = build_world("sqlite:///" + str(tmp_path / "r.db"))
    from registry.config import RegistryConfig
    from tests.test_query import PID
    req = request(C.SQ_GET_ALL, [("$patientId", f"'{PID}'"),
                                 ("$XDSDocumentEntryStatus", lst(C.STATUS_APPROVED, DEPRECATED)),
                                 ("$XDSSubmissionSetStatus", lst(C.STATUS_APPROVED)),
                                 ("$XDSFolderStatus", lst(C.STATUS_APPROVED))], "LeafClass")
    payload, parts = query_answer(world.store, req, RegistryConfig())
    assert parts and all(isinstance(p, bytes) for p in parts)
    assert len(payload.find(C.q(RIM, "RegistryObjectList"))) == 0
    whole = stored_query(world.store, req, RegistryConfig())
    kinds = [etree.QName(c).localname for c in whole.find(C.q(RIM, "RegistryObjectList"))]
    assert len(kinds) == len(parts) and {"ExtrinsicObject", "RegistryPackage", "Association"} <= set(kinds)


@pytest.fixture
def server(db_url, tmp_path):
    s = Settings(role="all", port=0, data=str(tmp_path / "data"), db=db_url, mllp_port=0)
    services = Services(s).start()
    yield services
    services.stop()


def _post(server, envelope: bytes) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/xds/registry", body=envelope,
                 headers={"Content-Type": f'application/soap+xml; action="{C.ACTION_QUERY}"'})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 200
    return data


def test_http_answer_is_spliced_and_whole(server, monkeypatch):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    from xds.client import SoapClient
    reply = SoapClient(server.url + "/xds/registry").call(C.ACTION_REGISTER,
                                                          builder.simple_submission(pid, 3, folder_too=True))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS
    # Nothing the registry stored needs the parser on the way out: a fallback now would fail the answer.
    monkeypatch.setattr(store_module, "render", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rendered")))
    env = soap.build_envelope(soap.SOAP12, C.ACTION_QUERY, None, builder.find_documents_request(pid))
    data = _post(server, env)
    assert b"<!--xds:registry-objects-->" not in data
    root = etree.fromstring(data)
    answer = root.find(f".//{{{C.NS_QUERY}}}AdhocQueryResponse")
    assert answer.get("status") == C.RESPONSE_SUCCESS
    entries = answer.findall(f"{{{RIM}}}RegistryObjectList/{{{RIM}}}ExtrinsicObject")
    assert len(entries) == 3
    for e in entries:
        assert e.get("status") == C.STATUS_APPROVED and e.get("lid")
        assert e.find(f"{{{RIM}}}VersionInfo").get("versionName") == "1"
    # The same answer as the in-process form, which parses the parts into the tree.
    whole = stored_query(server.registry.store, builder.find_documents_request(pid), server.registry.config)
    assert infoset(answer) == infoset(whole)


def test_http_query_by_ids_audits_its_patient(server, monkeypatch):
    """A query by ids has its patient from the answer's objects, which the audit layer parses beside the
    answer (SoapResponse.registry_objects): the answer still goes out spliced, never parsed into its tree."""
    from xds.audit import records as R
    from xds.client import SoapClient

    pid = new_pid()
    server.registry.store.add_patient(pid)
    sub = builder.simple_submission(pid, 1)
    SoapClient(server.url + "/xds/registry").call(C.ACTION_REGISTER, sub)
    uid = sub.find(f".//{{{RIM}}}ExternalIdentifier[@identificationScheme='{C.DE_UNIQUE_ID}']").get("value")
    before = (server.auditor.store.records(0, 100000) or [(0,)])[-1][0]
    req = request(C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryUniqueId", lst(uid))], "LeafClass")
    monkeypatch.setattr(spliced, "materialise", lambda *a: (_ for _ in ()).throw(AssertionError("materialised")))
    data = _post(server, soap.build_envelope(soap.SOAP12, C.ACTION_QUERY, None, req))
    assert len(etree.fromstring(data).findall(f".//{{{RIM}}}ExtrinsicObject")) == 1
    queries = [e for e in (R.from_stored(stored, seq) for seq, stored, _, _ in
                           server.auditor.store.records(before, 10000)) if getattr(e, "transaction", "") == "ITI-18"]
    assert [e.patient_id for e in queries] == [pid]
