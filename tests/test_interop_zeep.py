"""zeep, an independent SOAP toolkit, against a real server on 127.0.0.1 (issue 16, "Interop").

zeep reads the server's own WSDL: the standard one (``?wsdl``) loads, and the variant typed for
toolkits that ignore substitution groups (``?wsdl=zeep``, wsdl/rim-zeep.xsd) lets it read ITI-18
answers and build ITI-42 / ITI-41 requests from its types.  ITI-43 documents come back byte for
byte, including the CR/LF at their ends that zeep strips from parts labelled exactly "binary"
(xds/mtom/writer.py, _part_head).  docs/clients.md says what each client does.
"""
from __future__ import annotations

import base64
import hashlib
import random
import re
import urllib.request
from pathlib import Path

import pytest
import requests
from lxml import etree
from zeep import Client, Settings as ZeepSettings
from zeep.plugins import HistoryPlugin
from zeep.transports import Transport
from zeep.wsa import WsAddressingPlugin

import wsdl as wsdl_pkg
from node.server import Services
from node.transfer import provide_and_register
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.settings import Settings
from tests.helpers import new_pid

WSDL_DIR = Path(wsdl_pkg.__file__).resolve().parent
NS = {"rim": C.NS_RIM, "xsd": "http://www.w3.org/2001/XMLSchema", "s": C.NS_SOAP12}

# Begins and ends with CR LF (what zeep used to strip), with random octets between, CR and LF among them.
PDF = b"\r\n%PDF-1.4\r\n" + random.Random(16).randbytes(3000) + b"\r\n%%EOF\r\n"
LONE = b"\n\r" + random.Random(43).randbytes(517) + b"\r"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("interop-zeep")
    services = Services(Settings(role="all", port=0, data=str(d / "data"), db=f"sqlite:///{d}/registry.db",
                                 settle_interval=0)).start()
    yield services
    services.stop()


def _zeep(url: str, history: HistoryPlugin | None = None) -> Client:
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment for 127.0.0.1
    plugins = [WsAddressingPlugin()] + ([history] if history else [])
    return Client(url, transport=Transport(session=session, cache=None), plugins=plugins,
                  settings=ZeepSettings(strict=True))


@pytest.fixture(scope="module")
def registry(server):
    history = HistoryPlugin()
    client = _zeep(server.url + "/xds/registry?wsdl=zeep", history)
    client.history = history
    return client


@pytest.fixture(scope="module")
def repository(server):
    history = HistoryPlugin()
    client = _zeep(server.url + "/xds/repository?wsdl=zeep", history)
    client.history = history
    return client


def _repository_id(server) -> str:
    return server.repository.config.repository_id


# --- metadata, as a zeep user writes it: plain dicts in the shape of the WSDL's types ---------------

def slot(name: str, *values: str) -> dict:
    return {"name": name, "ValueList": {"Value": list(values)}}


def text(value: str) -> dict:
    return {"LocalizedString": [{"value": value}]}


def code(scheme: str, obj: str, ident: str, value: tuple[str, str, str]) -> dict:
    return {"id": ident, "classificationScheme": scheme, "classifiedObject": obj,
            "nodeRepresentation": value[0], "Slot": [slot("codingScheme", value[1])], "Name": text(value[2])}


def ext_id(scheme: str, obj: str, ident: str, value: str, label: str) -> dict:
    return {"id": ident, "registryObject": obj, "identificationScheme": scheme, "value": value, "Name": text(label)}


def document_entry(pid: str, uid: str, mime: str, *, ident: str = "Document01", extra_slots=()) -> dict:
    codes = builder.DEFAULT_CODES
    return {
        "id": ident, "mimeType": mime, "objectType": C.OBJECT_TYPE_STABLE,
        "Slot": [slot("creationTime", "20240101120000"), slot("languageCode", "fr-FR"),
                 slot("sourcePatientId", pid), slot("sourcePatientInfo", f"PID-3|{pid}", "PID-5|DOE^JOHN^^^"),
                 *extra_slots],
        "Name": text("Compte rendu"),
        "Classification": [
            {"id": f"{ident}-author", "classificationScheme": C.DE_AUTHOR, "classifiedObject": ident,
             "nodeRepresentation": "",
             "Slot": [slot("authorPerson", "123^Martin^Paul^^^^^^&1.2.250.1.71.4.2.1&ISO"),
                      slot("authorInstitution", "Hopital^^^^^^^^^1.2.3.4")]},
            code(C.DE_CLASS_CODE, ident, f"{ident}-class", codes["class"]),
            code(C.DE_CONFIDENTIALITY_CODE, ident, f"{ident}-conf", codes["confidentiality"][0]),
            code(C.DE_FORMAT_CODE, ident, f"{ident}-format", codes["format"]),
            code(C.DE_HEALTHCARE_FACILITY_TYPE_CODE, ident, f"{ident}-hcft", codes["hcft"]),
            code(C.DE_PRACTICE_SETTING_CODE, ident, f"{ident}-practice", codes["practice"]),
            code(C.DE_TYPE_CODE, ident, f"{ident}-type", codes["type"]),
        ],
        "ExternalIdentifier": [
            ext_id(C.DE_PATIENT_ID, ident, f"{ident}-pid", pid, "XDSDocumentEntry.patientId"),
            ext_id(C.DE_UNIQUE_ID, ident, f"{ident}-uid", uid, "XDSDocumentEntry.uniqueId"),
        ],
    }


def submission(pid: str, entry: dict) -> dict:
    """SubmitObjectsRequest content: the RegistryObjectList is a repeated choice in the variant, so
    zeep takes its members as a list of {element name: value} under _value_1."""
    ss = {
        "id": "SubmissionSet01", "objectType": C.OBJECT_TYPE_REGISTRY_PACKAGE,
        "Slot": [slot("submissionTime", builder.now_dtm())],
        "Name": text("Envoi"),
        "Classification": [
            {"id": "ss-author", "classificationScheme": C.SS_AUTHOR, "classifiedObject": "SubmissionSet01",
             "nodeRepresentation": "", "Slot": [slot("authorPerson", "123^Martin^Paul")]},
            code(C.SS_CONTENT_TYPE_CODE, "SubmissionSet01", "ss-content", builder.DEFAULT_CODES["content_type"]),
        ],
        "ExternalIdentifier": [
            ext_id(C.SS_UNIQUE_ID, "SubmissionSet01", "ss-uid", builder.new_oid(), "XDSSubmissionSet.uniqueId"),
            ext_id(C.SS_SOURCE_ID, "SubmissionSet01", "ss-src", "1.2.250.1.999.7", "XDSSubmissionSet.sourceId"),
            ext_id(C.SS_PATIENT_ID, "SubmissionSet01", "ss-pid", pid, "XDSSubmissionSet.patientId"),
        ],
    }
    return {"RegistryObjectList": {"_value_1": [
        {"RegistryPackage": ss},
        {"Classification": {"id": "ss-node", "classifiedObject": "SubmissionSet01",
                            "classificationNode": C.SS_CLASSIFICATION_NODE}},
        {"ExtrinsicObject": entry},
        {"Association": {"id": "ss-de", "associationType": C.ASSOC_HAS_MEMBER,
                         "sourceObject": "SubmissionSet01", "targetObject": entry["id"],
                         "Slot": [slot("SubmissionSetStatus", "Original")]}},
    ]}}


def find_documents(registry: Client, pid: str):
    return registry.service.DocumentRegistry_RegistryStoredQuery(
        ResponseOption={"returnType": "LeafClass", "returnComposedObjects": True},
        AdhocQuery={"id": C.SQ_FIND_DOCUMENTS, "Slot": [
            slot("$XDSDocumentEntryPatientId", f"'{pid}'"),
            slot("$XDSDocumentEntryStatus", f"('{C.STATUS_APPROVED}')")]})


def entries(answer) -> list:
    return [m["ExtrinsicObject"] for m in answer.RegistryObjectList._value_1 if m.get("ExtrinsicObject")]


def ext_value(obj, scheme: str) -> str:
    (value,) = [e.value for e in obj.ExternalIdentifier if e.identificationScheme == scheme]
    return value


def slot_values(obj, name: str) -> list[str]:
    return [v for s in obj.Slot if s.name == name for v in s.ValueList.Value]


def sent_body(client: Client) -> etree._Element:
    env = client.history.last_sent["envelope"]
    return env.find(f"{{{C.NS_SOAP12}}}Body")[0]


def standard_schema(name: str) -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(WSDL_DIR / name), parser))


def provide_with_xds_client(server, pid: str, documents: dict[str, bytes]) -> None:
    """ITI-41 over MTOM with the project's own client (uniqueId -> bytes), for documents zeep reads back."""
    objects = [builder.submission_set(pid), builder.submission_set_marker()]
    contents = {}
    for i, (uid, data) in enumerate(documents.items(), 1):
        ident = f"Document{i:02d}"
        objects += [builder.document_entry(pid, id=ident, unique_id=uid, mime_type="application/pdf"),
                    builder.association("SubmissionSet01", ident, id=f"as{i}")]
        contents[ident] = data
    pnr, attachments = provide_and_register(builder.submit_objects_request(objects), contents,
                                            content_types={k: "application/pdf" for k in contents})
    reply = SoapClient(server.url + "/xds/repository").call(C.ACTION_PROVIDE, pnr, attachments=attachments,
                                                            use_mtom=True)
    assert reply.body.get("status") == C.RESPONSE_SUCCESS, etree.tostring(reply.body)


# --- the WSDL documents -----------------------------------------------------------------------------

def _without(path: Path, type_names: set[str]) -> bytes:
    root = etree.parse(str(path), etree.XMLParser(remove_blank_text=True, remove_comments=True)).getroot()
    for el in root.xpath("xsd:complexType | xsd:element", namespaces=NS):
        if el.get("name") in type_names:
            root.remove(el)
        el.attrib.pop("substitutionGroup", None)
    return etree.tostring(root, method="c14n")


def test_the_variant_schema_is_rim_xsd_but_for_two_types():
    # Everything but the two redeclared types, the unused head element and the group memberships:
    redeclared = {"RegistryObjectListType", "RegistryObjectType", "Identifiable"}
    assert _without(WSDL_DIR / "rim.xsd", redeclared) == _without(WSDL_DIR / "rim-zeep.xsd", redeclared)
    standard = etree.parse(str(WSDL_DIR / "rim.xsd"))
    variant = etree.parse(str(WSDL_DIR / "rim-zeep.xsd"))
    choice = variant.xpath("//xsd:complexType[@name='RegistryObjectListType']/xsd:choice/xsd:element/@ref",
                           namespaces=NS)
    members = standard.xpath("//xsd:element[@substitutionGroup='rim:Identifiable']/@name", namespaces=NS)
    assert sorted(r.split(":")[1] for r in choice) == sorted(members)


def test_the_variant_is_served_beside_the_unchanged_standard_wsdl(server):
    def get(path):
        try:
            with urllib.request.urlopen(server.url + path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    status, standard = get("/xds/registry?wsdl")
    assert status == 200 and standard == wsdl_pkg.wsdl_text("registry.wsdl", server.url)
    status, variant = get("/xds/registry?wsdl=zeep")
    assert status == 200
    imports = re.findall(rb'schemaLocation="([^"]+)"', variant)
    assert imports and all(i.endswith(b"&amp;variant=zeep") for i in imports)
    # Same operations, actions and address: only the schema imports differ.
    assert re.sub(rb'schemaLocation="[^"]+"', b"", variant) == re.sub(rb'schemaLocation="[^"]+"', b"", standard)
    status, rim = get("/xds/registry?xsd=rim.xsd&variant=zeep")
    assert status == 200 and b'<xsd:choice minOccurs="0" maxOccurs="unbounded">' in rim
    status, query = get("/xds/registry?xsd=query.xsd&variant=zeep")
    assert status == 200 and b"?xsd=rim.xsd&amp;variant=zeep" in query
    assert get("/xds/registry?xsd=rim.xsd")[1] == wsdl_pkg.schema_text("rim.xsd", server.url, "/xds/registry")
    assert get("/xds/registry?wsdl=nosuch")[0] == 404
    front = get("/")[1]
    assert b'href="/xds/registry?wsdl=zeep"' in front and b'href="/xds/repository?wsdl=zeep"' in front
    assert get("/xds/registry?xsd=rim.xsd&variant=nosuch")[0] == 404


@pytest.mark.parametrize("path", ["/xds/registry?wsdl", "/xds/repository?wsdl"])
def test_the_standard_wsdls_still_load_in_zeep(server, path):
    client = _zeep(server.url + path)
    names = {op for svc in client.wsdl.services.values() for port in svc.ports.values()
             for op in port.binding._operations}
    expected = {"DocumentRegistry_RegistryStoredQuery", "DocumentRegistry_RegisterDocumentSet-b"} \
        if "registry" in path else {"DocumentRepository_RetrieveDocumentSet",
                                    "DocumentRepository_ProvideAndRegisterDocumentSet-b"}
    assert expected <= names
    (port,) = [p for s in client.wsdl.services.values() for p in s.ports.values()]
    assert port.binding_options["address"] == server.url + path.split("?")[0]


# --- the transactions -------------------------------------------------------------------------------

def test_iti42_register_built_from_zeep_types(server, registry):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    uid = builder.new_oid()
    entry = document_entry(pid, uid, "text/plain", extra_slots=[
        slot("hash", "da39a3ee5e6b4b0d3255bfef95601890afd80709"), slot("size", "0"),
        slot("repositoryUniqueId", "1.2.250.1.999.3.9")])
    answer = getattr(registry.service, "DocumentRegistry_RegisterDocumentSet-b")(**submission(pid, entry))
    assert answer.status == C.RESPONSE_SUCCESS, answer
    # zeep wrote standard ebRIM: the standard schema (with its substitution groups) accepts it.
    body = sent_body(registry)
    assert body.tag == f"{{{C.NS_LCM}}}SubmitObjectsRequest"
    assert standard_schema("lcm.xsd").validate(etree.ElementTree(body))
    found = entries(find_documents(registry, pid))
    assert [ext_value(e, C.DE_UNIQUE_ID) for e in found] == [uid]
    assert slot_values(found[0], "repositoryUniqueId") == ["1.2.250.1.999.3.9"]


def test_iti18_answers_are_read_into_zeep_objects(server, registry):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    uid1, uid2 = builder.new_oid(), builder.new_oid()
    provide_with_xds_client(server, pid, {uid1: PDF, uid2: LONE})

    answer = find_documents(registry, pid)
    assert answer.status == C.RESPONSE_SUCCESS
    found = {ext_value(e, C.DE_UNIQUE_ID): e for e in entries(answer)}
    assert set(found) == {uid1, uid2}
    for uid, data in ((uid1, PDF), (uid2, LONE)):
        e = found[uid]
        assert e.mimeType == "application/pdf"
        assert e.status == C.STATUS_APPROVED and e.objectType == C.OBJECT_TYPE_STABLE
        assert ext_value(e, C.DE_PATIENT_ID) == pid
        assert slot_values(e, "size") == [str(len(data))]
        assert slot_values(e, "hash") == [hashlib.sha1(data).hexdigest()]
        assert slot_values(e, "repositoryUniqueId") == [_repository_id(server)]
        assert e.Name.LocalizedString[0].value == "Document"
        class_code = [c for c in e.Classification if c.classificationScheme == C.DE_CLASS_CODE]
        assert [c.nodeRepresentation for c in class_code] == [builder.DEFAULT_CODES["class"][0]]
        assert [s.ValueList.Value for s in class_code[0].Slot] == [[builder.DEFAULT_CODES["class"][1]]]

    # GetDocuments by uniqueId, returning ObjectRefs: the other member of the choice.
    refs = registry.service.DocumentRegistry_RegistryStoredQuery(
        ResponseOption={"returnType": "ObjectRef"},
        AdhocQuery={"id": C.SQ_GET_DOCUMENTS, "Slot": [slot("$XDSDocumentEntryUniqueId", f"('{uid2}')")]})
    assert refs.status == C.RESPONSE_SUCCESS
    (member,) = refs.RegistryObjectList._value_1
    assert member["ObjectRef"].id.startswith("urn:uuid:")
    full = registry.service.DocumentRegistry_RegistryStoredQuery(
        ResponseOption={"returnType": "LeafClass"},
        AdhocQuery={"id": C.SQ_GET_DOCUMENTS, "Slot": [slot("$XDSDocumentEntryEntryUUID", f"('{member['ObjectRef'].id}')")]})
    (entry,) = entries(full)
    assert ext_value(entry, C.DE_UNIQUE_ID) == uid2 and entry.id == member["ObjectRef"].id


def test_iti41_provide_and_register_built_from_zeep_types(server, repository, registry):
    """zeep does not send MTOM: the document travels inline, as base64 text in xdsb:Document."""
    pid = new_pid()
    server.registry.store.add_patient(pid)
    uid = builder.new_oid()
    request = submission(pid, document_entry(pid, uid, "application/pdf"))
    answer = getattr(repository.service, "DocumentRepository_ProvideAndRegisterDocumentSet-b")(
        SubmitObjectsRequest=request, Document=[{"id": "Document01", "_value_1": PDF}])
    assert answer.status == C.RESPONSE_SUCCESS, answer
    body = sent_body(repository)
    assert standard_schema("xdsb.xsd").validate(etree.ElementTree(body))
    assert base64.b64decode(body.findtext(f"{{{C.NS_XDSB}}}Document")) == PDF
    (entry,) = entries(find_documents(registry, pid))
    assert slot_values(entry, "size") == [str(len(PDF))]
    assert slot_values(entry, "hash") == [hashlib.sha1(PDF).hexdigest()]
    got = repository.service.DocumentRepository_RetrieveDocumentSet(
        DocumentRequest=[{"RepositoryUniqueId": _repository_id(server), "DocumentUniqueId": uid}])
    assert got.DocumentResponse[0].Document._value_1 == PDF


def test_iti43_documents_come_back_byte_for_byte(server, repository):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    docs = {builder.new_oid(): PDF, builder.new_oid(): LONE}
    provide_with_xds_client(server, pid, docs)
    answer = repository.service.DocumentRepository_RetrieveDocumentSet(
        DocumentRequest=[{"RepositoryUniqueId": _repository_id(server), "DocumentUniqueId": uid} for uid in docs])
    assert answer.RegistryResponse.status == C.RESPONSE_SUCCESS
    got = {r.DocumentUniqueId: r for r in answer.DocumentResponse}
    assert set(got) == set(docs)
    for uid, data in docs.items():
        assert got[uid].mimeType == "application/pdf"
        assert got[uid].RepositoryUniqueId == _repository_id(server)
        assert len(got[uid].Document._value_1) == len(data)
        assert got[uid].Document._value_1 == data


def test_iti43_unknown_document_is_an_error_zeep_reads(server, repository):
    answer = repository.service.DocumentRepository_RetrieveDocumentSet(
        DocumentRequest=[{"RepositoryUniqueId": _repository_id(server), "DocumentUniqueId": "1.2.3.404"}])
    assert answer.RegistryResponse.status == C.RESPONSE_FAILURE
    errors = answer.RegistryResponse.RegistryErrorList.RegistryError
    assert [e.errorCode for e in errors] == ["XDSDocumentUniqueIdError"]
    assert not answer.DocumentResponse
