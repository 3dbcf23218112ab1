"""The published WSDL / XSD documents (package ``wsdl``).

* zeep loads both WSDL files from the file system, without network access,
  and again when they are served over HTTP the way the server serves them
  (``<endpoint>?wsdl`` and ``<endpoint>?xsd=NAME``);
* every operation is bound with SOAP 1.2 and carries the IHE action;
* zeep builds request messages with the right root elements;
* lxml compiles the schemas and accepts (and rejects) hand-written XDS metadata.
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from lxml import etree
from zeep import Client, Settings
from zeep.transports import Transport
from zeep.wsdl.bindings.soap import Soap12Binding

import wsdl as wsdl_pkg
from wsdl import schema_names, schema_text, wsdl_names, wsdl_text

WSDL_DIR = Path(wsdl_pkg.__file__).resolve().parent

NS_RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
NS_RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
NS_LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
NS_QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
NS_XDSB = "urn:ihe:iti:xds-b:2007"
NS_RMD = "urn:ihe:iti:rmd:2017"
NS_SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
NS_WSA = "http://www.w3.org/2005/08/addressing"
NS_WSDL = "http://schemas.xmlsoap.org/wsdl/"
NS_WSAW = "http://www.w3.org/2006/05/addressing/wsdl"
NS_XSD = "http://www.w3.org/2001/XMLSchema"

FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"

# file -> (service, endpoint path, {operation: (input element, action)})
EXPECTED = {
    "registry.wsdl": (
        "DocumentRegistry_Service",
        "/xds/registry",
        {
            "DocumentRegistry_RegisterDocumentSet-b": (
                f"{{{NS_LCM}}}SubmitObjectsRequest",
                "urn:ihe:iti:2007:RegisterDocumentSet-b",
            ),
            "DocumentRegistry_RegistryStoredQuery": (
                f"{{{NS_QUERY}}}AdhocQueryRequest",
                "urn:ihe:iti:2007:RegistryStoredQuery",
            ),
            "DocumentRegistry_MultiPatientStoredQuery": (
                f"{{{NS_QUERY}}}AdhocQueryRequest",
                "urn:ihe:iti:2009:MultiPatientStoredQuery",
            ),
            "DocumentRegistry_UpdateDocumentSet": (
                f"{{{NS_LCM}}}SubmitObjectsRequest",
                "urn:ihe:iti:2010:UpdateDocumentSet",
            ),
            "DocumentRegistry_RestrictedUpdateDocumentSet": (
                f"{{{NS_LCM}}}SubmitObjectsRequest",
                "urn:ihe:iti:2018:RestrictedUpdateDocumentSet",
            ),
            "DocumentRegistry_RegisterOnDemandDocumentEntry": (
                f"{{{NS_LCM}}}SubmitObjectsRequest",
                "urn:ihe:iti:2010:RegisterOnDemandDocumentEntry",
            ),
            "DocumentRegistry_DeleteDocumentSet": (
                f"{{{NS_LCM}}}RemoveObjectsRequest",
                "urn:ihe:iti:2010:DeleteDocumentSet",
            ),
        },
    ),
    "repository.wsdl": (
        "DocumentRepository_Service",
        "/xds/repository",
        {
            "DocumentRepository_ProvideAndRegisterDocumentSet-b": (
                f"{{{NS_XDSB}}}ProvideAndRegisterDocumentSetRequest",
                "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
            ),
            "DocumentRepository_RetrieveDocumentSet": (
                f"{{{NS_XDSB}}}RetrieveDocumentSetRequest",
                "urn:ihe:iti:2007:RetrieveDocumentSet",
            ),
            "DocumentRepository_RemoveDocuments": (
                f"{{{NS_RMD}}}RemoveDocumentsRequest",
                "urn:ihe:iti:2017:RemoveDocuments",
            ),
        },
    ),
}
OUTPUT_ELEMENT = {
    "DocumentRegistry_RegistryStoredQuery": f"{{{NS_QUERY}}}AdhocQueryResponse",
    "DocumentRegistry_MultiPatientStoredQuery": f"{{{NS_QUERY}}}AdhocQueryResponse",
    "DocumentRepository_RetrieveDocumentSet": f"{{{NS_XDSB}}}RetrieveDocumentSetResponse",
}


class LoopbackOnlyTransport(Transport):
    """A zeep transport that refuses every remote URL except 127.0.0.1."""

    def __init__(self):
        session = requests.Session()
        session.trust_env = False  # no proxies from the environment
        super().__init__(session=session, cache=None)
        self.fetched: list[str] = []

    def _load_remote_data(self, url):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname != "127.0.0.1":
            raise AssertionError(f"zeep tried to load {url!r}")
        self.fetched.append(url)
        return super()._load_remote_data(url)


def _client(location: str) -> tuple[Client, LoopbackOnlyTransport]:
    transport = LoopbackOnlyTransport()
    return Client(location, transport=transport, settings=Settings(strict=True)), transport


@pytest.fixture(scope="module")
def clients():
    return {name: _client(str(WSDL_DIR / name))[0] for name in EXPECTED}


def _schema(name: str) -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(WSDL_DIR / name), parser))


def _body_root(envelope: etree._Element) -> etree._Element:
    assert envelope.tag == f"{{{NS_SOAP12}}}Envelope"
    body = envelope.find(f"{{{NS_SOAP12}}}Body")
    assert body is not None and len(body) == 1
    return body[0]


def _wsa_action(envelope: etree._Element) -> str:
    return envelope.find(f"{{{NS_SOAP12}}}Header/{{{NS_WSA}}}Action").text


# --------------------------------------------------------------------------
# the packaged files
# --------------------------------------------------------------------------


def test_package_lists_its_documents():
    assert wsdl_names() == ["pix.wsdl", "registry.wsdl", "repository.wsdl"]
    assert {"rim.xsd", "rs.xsd", "lcm.xsd", "query.xsd", "xdsb.xsd", "rmd.xsd"} <= set(schema_names())


def test_every_schema_location_is_a_packaged_sibling():
    """What ?xsd=NAME must serve is closed: every import names a packaged .xsd."""
    shipped = set(schema_names())
    for name in wsdl_names() + schema_names():
        doc = etree.parse(str(WSDL_DIR / name))
        for imp in doc.iter(f"{{{NS_XSD}}}import", f"{{{NS_XSD}}}include"):
            location = imp.get("schemaLocation")
            assert location in shipped, (name, location)


@pytest.mark.parametrize("name", ["rim.xsd", "rs.xsd", "lcm.xsd", "query.xsd", "xdsb.xsd", "rmd.xsd"])
def test_each_schema_compiles(name):
    _schema(name)


# --------------------------------------------------------------------------
# zeep, from the file system
# --------------------------------------------------------------------------


@pytest.mark.parametrize("wsdl_name", sorted(EXPECTED))
def test_zeep_loads_wsdl_from_file_system(wsdl_name):
    client, transport = _client(str(WSDL_DIR / wsdl_name))
    assert transport.fetched == []
    service_name, endpoint_path, _ = EXPECTED[wsdl_name]
    assert list(client.wsdl.services) == [service_name]
    ports = list(client.wsdl.services[service_name].ports.values())
    assert len(ports) == 1
    assert isinstance(ports[0].binding, Soap12Binding)
    assert ports[0].binding_options["address"] == "http://localhost:8080" + endpoint_path


@pytest.mark.parametrize(
    "wsdl_name,operation",
    [(w, op) for w, (_, _, ops) in sorted(EXPECTED.items()) for op in ops],
)
def test_binding_operation_and_actions(clients, wsdl_name, operation):
    client = clients[wsdl_name]
    service_name, _, ops = EXPECTED[wsdl_name]
    element, action = ops[operation]
    port = next(iter(client.wsdl.services[service_name].ports.values()))
    assert set(port.binding._operations) == set(ops)

    op = port.binding.get(operation)
    assert op.soapaction == action
    assert op.abstract.wsa_action == action
    assert op.input.body.qname == element
    assert op.output.body.qname == OUTPUT_ELEMENT.get(operation, f"{{{NS_RS}}}RegistryResponse")

    # the response action is declared on the port type output
    doc = etree.parse(str(WSDL_DIR / wsdl_name))
    out = doc.xpath(
        "/wsdl:definitions/wsdl:portType/wsdl:operation[@name=$op]/wsdl:output",
        namespaces={"wsdl": NS_WSDL},
        op=operation,
    )
    assert [o.get(f"{{{NS_WSAW}}}Action") for o in out] == [action + "Response"]


def test_create_submit_objects_request(clients):
    client = clients["registry.wsdl"]
    for operation, action in (
        ("DocumentRegistry_RegisterDocumentSet-b", "urn:ihe:iti:2007:RegisterDocumentSet-b"),
        ("DocumentRegistry_UpdateDocumentSet", "urn:ihe:iti:2010:UpdateDocumentSet"),
        ("DocumentRegistry_RestrictedUpdateDocumentSet", "urn:ihe:iti:2018:RestrictedUpdateDocumentSet"),
    ):
        env = client.create_message(client.service, operation, RegistryObjectList={})
        root = _body_root(env)
        assert root.tag == f"{{{NS_LCM}}}SubmitObjectsRequest"
        assert [c.tag for c in root] == [f"{{{NS_RIM}}}RegistryObjectList"]
        assert _wsa_action(env) == action
        _schema("lcm.xsd").assertValid(root)


def test_create_adhoc_query_request(clients):
    client = clients["registry.wsdl"]
    env = client.create_message(
        client.service,
        "DocumentRegistry_RegistryStoredQuery",
        ResponseOption={"returnType": "LeafClass", "returnComposedObjects": True},
        AdhocQuery={
            "id": FIND_DOCUMENTS,
            "Slot": [
                {"name": "$XDSDocumentEntryPatientId", "ValueList": {"Value": ["'st3498702^^^&1.3.6.1.4.1.21367.2005.3.7&ISO'"]}},
                {"name": "$XDSDocumentEntryStatus", "ValueList": {"Value": ["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]}},
            ],
        },
    )
    assert _wsa_action(env) == "urn:ihe:iti:2007:RegistryStoredQuery"
    root = _body_root(env)
    assert root.tag == f"{{{NS_QUERY}}}AdhocQueryRequest"
    option, query = list(root)
    assert option.tag == f"{{{NS_QUERY}}}ResponseOption"
    assert option.get("returnType") == "LeafClass"
    assert option.get("returnComposedObjects") == "true"
    assert query.tag == f"{{{NS_RIM}}}AdhocQuery"
    assert query.get("id") == FIND_DOCUMENTS
    slots = query.findall(f"{{{NS_RIM}}}Slot")
    assert [s.get("name") for s in slots] == ["$XDSDocumentEntryPatientId", "$XDSDocumentEntryStatus"]
    assert slots[0].findtext(f"{{{NS_RIM}}}ValueList/{{{NS_RIM}}}Value").startswith("'st3498702^^^&")
    _schema("query.xsd").assertValid(root)


def test_create_retrieve_document_set_request(clients):
    client = clients["repository.wsdl"]
    env = client.create_message(
        client.service,
        "DocumentRepository_RetrieveDocumentSet",
        DocumentRequest=[
            {"RepositoryUniqueId": "1.3.6.1.4.1.21367.2010.1.2.1125", "DocumentUniqueId": "1.2.3.4.1"},
            {"HomeCommunityId": "urn:oid:1.2.3", "RepositoryUniqueId": "1.3.6.1.4.1.21367.2010.1.2.1125",
             "DocumentUniqueId": "1.2.3.4.2"},
        ],
    )
    assert _wsa_action(env) == "urn:ihe:iti:2007:RetrieveDocumentSet"
    root = _body_root(env)
    assert root.tag == f"{{{NS_XDSB}}}RetrieveDocumentSetRequest"
    requests_ = root.findall(f"{{{NS_XDSB}}}DocumentRequest")
    assert len(requests_) == 2
    assert [c.tag.split("}")[1] for c in requests_[1]] == ["HomeCommunityId", "RepositoryUniqueId", "DocumentUniqueId"]
    _schema("xdsb.xsd").assertValid(root)


def test_create_remove_documents_and_delete_requests(clients):
    repo = clients["repository.wsdl"]
    env = repo.create_message(
        repo.service,
        "DocumentRepository_RemoveDocuments",
        DocumentRequest=[{"RepositoryUniqueId": "1.2.3", "DocumentUniqueId": "1.2.3.4"}],
    )
    root = _body_root(env)
    assert root.tag == f"{{{NS_RMD}}}RemoveDocumentsRequest"
    assert root[0].tag == f"{{{NS_XDSB}}}DocumentRequest"
    _schema("rmd.xsd").assertValid(root)

    reg = clients["registry.wsdl"]
    env = reg.create_message(
        reg.service,
        "DocumentRegistry_DeleteDocumentSet",
        ObjectRefList={"ObjectRef": [{"id": "urn:uuid:7b1e7b5c-0ae5-4bd3-a4f4-7a0e0a6c2b91"}]},
    )
    root = _body_root(env)
    assert root.tag == f"{{{NS_LCM}}}RemoveObjectsRequest"
    assert root[0][0].tag == f"{{{NS_RIM}}}ObjectRef"
    _schema("lcm.xsd").assertValid(root)


def test_create_provide_and_register_request(clients):
    client = clients["repository.wsdl"]
    env = client.create_message(
        client.service,
        "DocumentRepository_ProvideAndRegisterDocumentSet-b",
        SubmitObjectsRequest={"RegistryObjectList": {}},
        Document=[{"_value_1": b"%PDF-1.4 ...", "id": "Document01"}],
    )
    root = _body_root(env)
    assert root.tag == f"{{{NS_XDSB}}}ProvideAndRegisterDocumentSetRequest"
    assert [c.tag for c in root] == [f"{{{NS_LCM}}}SubmitObjectsRequest", f"{{{NS_XDSB}}}Document"]
    assert root[1].get("id") == "Document01"
    _schema("xdsb.xsd").assertValid(root)


def test_zeep_parses_responses(clients):
    reg = clients["registry.wsdl"]
    response = reg.get_element(f"{{{NS_RS}}}RegistryResponse")
    parsed = response.parse(etree.fromstring(REGISTRY_FAILURE), reg.wsdl.types)
    assert parsed.status.endswith(":Failure")
    assert parsed.RegistryErrorList.RegistryError[0].errorCode == "XDSRegistryMetadataError"

    repo = clients["repository.wsdl"]
    response = repo.get_element(f"{{{NS_XDSB}}}RetrieveDocumentSetResponse")
    parsed = response.parse(etree.fromstring(RETRIEVE_RESPONSE), repo.wsdl.types)
    assert parsed.DocumentResponse[0].mimeType == "text/plain"
    assert parsed.DocumentResponse[0].Document._value_1 == b"hello"


# --------------------------------------------------------------------------
# lxml: the schemas accept real XDS metadata
# --------------------------------------------------------------------------

SUBMIT_OBJECTS_REQUEST = b"""<?xml version="1.0" encoding="UTF-8"?>
<lcm:SubmitObjectsRequest
    xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
    xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">
  <rim:RegistryObjectList>
    <rim:ExtrinsicObject id="Document01" mimeType="text/plain"
        objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1">
      <rim:Slot name="creationTime">
        <rim:ValueList><rim:Value>20240131120000</rim:Value></rim:ValueList>
      </rim:Slot>
      <rim:Slot name="languageCode">
        <rim:ValueList><rim:Value>en-US</rim:Value></rim:ValueList>
      </rim:Slot>
      <rim:Slot name="sourcePatientId">
        <rim:ValueList><rim:Value>pid1^^^&amp;1.2.3&amp;ISO</rim:Value></rim:ValueList>
      </rim:Slot>
      <rim:Name><rim:LocalizedString xml:lang="en-US" value="Discharge summary"/></rim:Name>
      <rim:Description/>
      <rim:VersionInfo versionName="1"/>
      <rim:Classification id="cl01" classificationScheme="urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
          classifiedObject="Document01" nodeRepresentation="18842-5">
        <rim:Slot name="codingScheme">
          <rim:ValueList><rim:Value>2.16.840.1.113883.6.1</rim:Value></rim:ValueList>
        </rim:Slot>
        <rim:Name><rim:LocalizedString value="Discharge summary"/></rim:Name>
      </rim:Classification>
      <rim:Classification id="cl02" classificationScheme="urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
          classifiedObject="Document01" nodeRepresentation="">
        <rim:Slot name="authorPerson">
          <rim:ValueList><rim:Value>^Welby^Marcus^^^Dr</rim:Value></rim:ValueList>
        </rim:Slot>
      </rim:Classification>
      <rim:ExternalIdentifier id="ei01" registryObject="Document01"
          identificationScheme="urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
          value="pid1^^^&amp;1.2.3&amp;ISO">
        <rim:Name><rim:LocalizedString value="XDSDocumentEntry.patientId"/></rim:Name>
      </rim:ExternalIdentifier>
      <rim:ExternalIdentifier id="ei02" registryObject="Document01"
          identificationScheme="urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
          value="1.2.3.4.5.6.7">
        <rim:Name><rim:LocalizedString value="XDSDocumentEntry.uniqueId"/></rim:Name>
      </rim:ExternalIdentifier>
    </rim:ExtrinsicObject>
    <rim:RegistryPackage id="SubmissionSet01">
      <rim:Slot name="submissionTime">
        <rim:ValueList><rim:Value>20240131120500</rim:Value></rim:ValueList>
      </rim:Slot>
      <rim:ExternalIdentifier id="ei03" registryObject="SubmissionSet01"
          identificationScheme="urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
          value="1.2.3.4.5.6.8"/>
    </rim:RegistryPackage>
    <rim:Classification id="cl03" classifiedObject="SubmissionSet01"
        classificationNode="urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"/>
    <rim:Association id="as01"
        associationType="urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
        sourceObject="SubmissionSet01" targetObject="Document01">
      <rim:Slot name="SubmissionSetStatus">
        <rim:ValueList><rim:Value>Original</rim:Value></rim:ValueList>
      </rim:Slot>
    </rim:Association>
    <rim:ObjectRef id="urn:uuid:3b9a8a1c-4c3f-4e0f-9b1e-2f1e0c0b9d11"/>
  </rim:RegistryObjectList>
</lcm:SubmitObjectsRequest>
"""

REGISTRY_FAILURE = b"""<rs:RegistryResponse xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
    status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure">
  <rs:RegistryErrorList highestSeverity="urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error">
    <rs:RegistryError errorCode="XDSRegistryMetadataError" codeContext="missing uniqueId"
        location="Document01" severity="urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"/>
  </rs:RegistryErrorList>
</rs:RegistryResponse>"""

RETRIEVE_RESPONSE = b"""<xdsb:RetrieveDocumentSetResponse xmlns:xdsb="urn:ihe:iti:xds-b:2007"
    xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
    xmlns:xmime="http://www.w3.org/2005/05/xmlmime">
  <rs:RegistryResponse status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"/>
  <xdsb:DocumentResponse>
    <xdsb:RepositoryUniqueId>1.2.3</xdsb:RepositoryUniqueId>
    <xdsb:DocumentUniqueId>1.2.3.4.5.6.7</xdsb:DocumentUniqueId>
    <xdsb:mimeType>text/plain</xdsb:mimeType>
    <xdsb:Document xmime:contentType="text/plain">aGVsbG8=</xdsb:Document>
  </xdsb:DocumentResponse>
</xdsb:RetrieveDocumentSetResponse>"""

ADHOC_QUERY_RESPONSE = b"""<query:AdhocQueryResponse
    xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
    xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
    status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success">
  <rim:RegistryObjectList>
    <rim:ObjectRef id="urn:uuid:3b9a8a1c-4c3f-4e0f-9b1e-2f1e0c0b9d11"/>
    <rim:ExtrinsicObject id="urn:uuid:3b9a8a1c-4c3f-4e0f-9b1e-2f1e0c0b9d12"
        lid="urn:uuid:3b9a8a1c-4c3f-4e0f-9b1e-2f1e0c0b9d12"
        status="urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
        objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
        home="urn:oid:1.2.3" mimeType="text/plain" isOpaque="false"/>
  </rim:RegistryObjectList>
</query:AdhocQueryResponse>"""


def test_lcm_schema_accepts_xds_submission():
    _schema("lcm.xsd").assertValid(etree.fromstring(SUBMIT_OBJECTS_REQUEST))


def test_xdsb_schema_accepts_provide_and_register_and_retrieve_response():
    schema = _schema("xdsb.xsd")
    submit = SUBMIT_OBJECTS_REQUEST.split(b"?>", 1)[1]
    pnr = (
        b'<xdsb:ProvideAndRegisterDocumentSetRequest xmlns:xdsb="urn:ihe:iti:xds-b:2007"'
        b' xmlns:xmime="http://www.w3.org/2005/05/xmlmime">'
        + submit
        + b'<xdsb:Document id="Document01" xmime:contentType="text/plain">aGVsbG8=</xdsb:Document>'
        b"</xdsb:ProvideAndRegisterDocumentSetRequest>"
    )
    schema.assertValid(etree.fromstring(pnr))
    schema.assertValid(etree.fromstring(RETRIEVE_RESPONSE))


def test_rs_and_query_schemas_accept_responses():
    _schema("rs.xsd").assertValid(etree.fromstring(REGISTRY_FAILURE))
    _schema("query.xsd").assertValid(etree.fromstring(ADHOC_QUERY_RESPONSE))


def _mutated(xpath: str, change) -> etree._Element:
    doc = etree.fromstring(SUBMIT_OBJECTS_REQUEST)
    (node,) = doc.xpath(xpath, namespaces={"rim": NS_RIM})
    change(node)
    return doc


@pytest.mark.parametrize(
    "xpath,change",
    [
        # required attributes
        ("//rim:Association", lambda n: n.attrib.pop("targetObject")),
        ("//rim:ExternalIdentifier[@id='ei01']", lambda n: n.attrib.pop("value")),
        ("//rim:Classification[@id='cl03']", lambda n: n.attrib.pop("classifiedObject")),
        ("//rim:ExtrinsicObject", lambda n: n.attrib.pop("id")),
        # unknown attribute (no anyAttribute in ebRIM)
        ("//rim:ExtrinsicObject", lambda n: n.set("documentAvailability", "Online")),
        # a Slot needs its ValueList
        ("//rim:Slot[@name='creationTime']", lambda n: n.remove(n[0])),
        # elements out of ebRIM order: Name after Classification
        ("//rim:ExtrinsicObject/rim:Name", lambda n: n.getparent().append(n)),
        # not an Identifiable
        ("//rim:RegistryObjectList", lambda n: etree.SubElement(n, f"{{{NS_RIM}}}Value")),
        # ebRIM LongName is 256 characters at most
        ("//rim:Slot[@name='languageCode']/rim:ValueList/rim:Value", lambda n: setattr(n, "text", "x" * 257)),
    ],
)
def test_lcm_schema_rejects_broken_metadata(xpath, change):
    schema = _schema("lcm.xsd")
    assert not schema.validate(_mutated(xpath, change))


def test_xdsb_schema_requires_document_id():
    doc = etree.fromstring(
        b'<xdsb:ProvideAndRegisterDocumentSetRequest xmlns:xdsb="urn:ihe:iti:xds-b:2007"'
        b' xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"'
        b' xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">'
        b"<lcm:SubmitObjectsRequest><rim:RegistryObjectList/></lcm:SubmitObjectsRequest>"
        b"<xdsb:Document>aGVsbG8=</xdsb:Document>"
        b"</xdsb:ProvideAndRegisterDocumentSetRequest>"
    )
    assert not _schema("xdsb.xsd").validate(doc)


# --------------------------------------------------------------------------
# wsdl_text / schema_text
# --------------------------------------------------------------------------


def test_wsdl_text_rewrites_address_and_schema_locations():
    text = wsdl_text("registry.wsdl", "https://xds.example.org:8443/")
    assert b"localhost:8080" not in text
    doc = etree.fromstring(text)
    (address,) = doc.xpath("//soap12:address/@location", namespaces={"soap12": "http://schemas.xmlsoap.org/wsdl/soap12/"})
    assert address == "https://xds.example.org:8443/xds/registry"
    locations = doc.xpath("//xsd:import/@schemaLocation", namespaces={"xsd": NS_XSD})
    assert sorted(locations) == [
        "https://xds.example.org:8443/xds/registry?xsd=lcm.xsd",
        "https://xds.example.org:8443/xds/registry?xsd=query.xsd",
        "https://xds.example.org:8443/xds/registry?xsd=rs.xsd",
    ]
    # explicit endpoint path, suffix-less name, base URL with a path prefix
    text = wsdl_text("repository", "http://h:1/prefix", "/other")
    doc = etree.fromstring(text)
    assert doc.xpath("//soap12:address/@location", namespaces={"soap12": "http://schemas.xmlsoap.org/wsdl/soap12/"}) == [
        "http://h:1/prefix/xds/repository"
    ]
    assert all(
        loc.startswith("http://h:1/prefix/other?xsd=")
        for loc in doc.xpath("//xsd:import/@schemaLocation", namespaces={"xsd": NS_XSD})
    )


def test_wsdl_text_escapes_base_url():
    text = wsdl_text("registry.wsdl", 'http://a&b"<c>')
    doc = etree.fromstring(text)  # still well-formed
    (address,) = doc.xpath("//soap12:address/@location", namespaces={"soap12": "http://schemas.xmlsoap.org/wsdl/soap12/"})
    assert address == 'http://a&b"<c>/xds/registry'


@pytest.mark.parametrize("base_url", ["", "ftp://h", "localhost:8080", "http://h/?q=1", "http://h/#f", "http://h /x", "http://"])
def test_wsdl_text_rejects_bad_base_url(base_url):
    with pytest.raises(ValueError):
        wsdl_text("registry.wsdl", base_url)


def test_schema_text():
    raw = schema_text("lcm.xsd")
    assert raw == (WSDL_DIR / "lcm.xsd").read_bytes()
    served = etree.fromstring(schema_text("lcm.xsd", "http://127.0.0.1:9", "/xds/registry"))
    assert sorted(served.xpath("//xsd:import/@schemaLocation", namespaces={"xsd": NS_XSD})) == [
        "http://127.0.0.1:9/xds/registry?xsd=rim.xsd",
        "http://127.0.0.1:9/xds/registry?xsd=rs.xsd",
    ]
    host_relative = schema_text("rmd.xsd", endpoint_path="/xds/repository")
    assert b'schemaLocation="/xds/repository?xsd=xdsb.xsd"' in host_relative


@pytest.mark.parametrize(
    "name,exc",
    [
        ("../rim.xsd", ValueError),
        ("sub/rim.xsd", ValueError),
        ("..\\rim.xsd", ValueError),
        ("/etc/passwd", ValueError),
        (".hidden.xsd", ValueError),
        ("rim.xsd\x00", ValueError),
        ("registry.wsdl", ValueError),
        ("__init__.py", ValueError),
        ("", ValueError),
        ("nope.xsd", FileNotFoundError),
    ],
)
def test_schema_text_rejects_bad_names(name, exc):
    with pytest.raises(exc):
        schema_text(name)


@pytest.mark.parametrize("name,exc", [("../registry.wsdl", ValueError), ("rim.xsd", ValueError), ("nope.wsdl", FileNotFoundError)])
def test_wsdl_text_rejects_bad_names(name, exc):
    with pytest.raises(exc):
        wsdl_text(name, "http://h")


# --------------------------------------------------------------------------
# zeep, over HTTP, the way the server publishes the documents
# --------------------------------------------------------------------------

ENDPOINTS = {"/xds/registry": "registry.wsdl", "/xds/repository": "repository.wsdl"}


class _Handler(BaseHTTPRequestHandler):
    requested: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server API)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        base_url = "http://" + self.headers["Host"]
        type(self).requested.append(self.path)
        body = None
        if parts.path in ENDPOINTS:
            try:
                if "wsdl" in query:
                    body = wsdl_text(ENDPOINTS[parts.path], base_url, parts.path)
                elif "xsd" in query:
                    body = schema_text(query["xsd"][0], base_url, parts.path)
            except (ValueError, FileNotFoundError):
                body = None
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # keep pytest output quiet
        pass


@pytest.fixture(scope="module")
def http_base():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("wsdl_name", sorted(EXPECTED))
def test_zeep_loads_wsdl_over_http(http_base, wsdl_name):
    service_name, endpoint_path, ops = EXPECTED[wsdl_name]
    client, transport = _client(f"{http_base}{endpoint_path}?wsdl")

    # every document came from the server, the schemas through ?xsd=
    assert transport.fetched[0] == f"{http_base}{endpoint_path}?wsdl"
    fetched_schemas = {urlsplit(u).query for u in transport.fetched[1:]}
    expected = {"xsd=rim.xsd", "xsd=rs.xsd", "xsd=xml.xsd"}
    if wsdl_name == "registry.wsdl":
        expected |= {"xsd=lcm.xsd", "xsd=query.xsd"}
    else:
        expected |= {"xsd=lcm.xsd", "xsd=xdsb.xsd", "xsd=rmd.xsd", "xsd=xmime.xsd"}
    assert fetched_schemas == expected
    assert all(urlsplit(u).path == endpoint_path for u in transport.fetched)

    port = next(iter(client.wsdl.services[service_name].ports.values()))
    assert port.binding_options["address"] == http_base + endpoint_path
    for operation, (element, action) in ops.items():
        op = port.binding.get(operation)
        assert op.soapaction == action
        assert op.input.body.qname == element

    operation = next(iter(ops))
    if wsdl_name == "registry.wsdl":
        env = client.create_message(client.service, operation, RegistryObjectList={})
    else:
        env = client.create_message(client.service, operation, SubmitObjectsRequest={"RegistryObjectList": {}})
    assert env.findtext(f"{{{NS_SOAP12}}}Header/{{{NS_WSA}}}To") == http_base + endpoint_path


def test_http_server_refuses_traversal(http_base):
    session = requests.Session()
    session.trust_env = False
    assert session.get(f"{http_base}/xds/registry?xsd=../__init__.py").status_code == 404
    assert session.get(f"{http_base}/xds/registry?xsd=rim.xsd").status_code == 200


# --------------------------------------------------------------------------
# ITI-44 (pix.wsdl), from the file system and from a running server
# --------------------------------------------------------------------------

NS_HL7V3 = "urn:hl7-org:v3"
PIX_INTERACTIONS = ("PRPA_IN201301UV02", "PRPA_IN201302UV02", "PRPA_IN201304UV02")


def _check_pix(client: Client, address: str) -> None:
    port = next(iter(client.wsdl.services["PIXManager_Service"].ports.values()))
    assert isinstance(port.binding, Soap12Binding)
    assert port.binding_options["address"] == address
    assert set(port.binding._operations) == {f"PIXManager_{i}" for i in PIX_INTERACTIONS}
    for interaction in PIX_INTERACTIONS:
        op = port.binding.get(f"PIXManager_{interaction}")
        assert op.soapaction == op.abstract.wsa_action == f"urn:hl7-org:v3:{interaction}"
        assert op.input.body.qname == f"{{{NS_HL7V3}}}{interaction}"
        assert op.output.body.qname == f"{{{NS_HL7V3}}}MCCI_IN000002UV01"


def test_pix_wsdl_loads_from_the_file_system():
    client, transport = _client(str(WSDL_DIR / "pix.wsdl"))
    assert transport.fetched == []
    _check_pix(client, "http://localhost:8080/xds/pix")


def test_pix_wsdl_served_by_the_registry_is_what_the_feed_answers(tmp_path):
    """GET /xds/pix?wsdl on a real registry: zeep loads it (schemas through ?xsd=), and a message zeep
    builds from it for the add operation is accepted by that registry (security = none on loopback)."""
    from node.server import Services
    from xds.client import SoapClient
    from xds.settings import Settings

    settings = Settings(role="registry", host="127.0.0.1", port=0, data=str(tmp_path), log_level="WARNING")
    settings.validate()
    services = Services(settings).start()
    try:
        client, transport = _client(services.url + "/xds/pix?wsdl")
        assert {urlsplit(u).query for u in transport.fetched} == {"wsdl", "xsd=hl7v3-feed.xsd"}
        _check_pix(client, services.url + "/xds/pix")
        from tests.test_feed_v3 import ADD, message

        body = etree.fromstring(message(ADD, [("1.2.250.1.999.9", "WSDL1")]))
        env = client.create_message(client.service, "PIXManager_PRPA_IN201301UV02", _value_1=list(body))
        assert _wsa_action(env) == "urn:hl7-org:v3:PRPA_IN201301UV02"
        assert _body_root(env).tag == f"{{{NS_HL7V3}}}PRPA_IN201301UV02"
        reply = SoapClient(services.url + "/xds/pix").call("urn:hl7-org:v3:PRPA_IN201301UV02", _body_root(env))
        assert reply.body.find(f"{{{NS_HL7V3}}}acknowledgement/{{{NS_HL7V3}}}typeCode").get("code") == "AA"
        assert "WSDL1^^^&1.2.250.1.999.9&ISO" in {p for p, _, _ in services.registry.store.list_patients()}
    finally:
        services.stop()
