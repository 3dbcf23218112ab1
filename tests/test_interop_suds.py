"""suds (suds-community), against a real server on 127.0.0.1 (issue 16, "Interop").

suds speaks SOAP 1.1 only and does not follow substitution groups: with the standard WSDL an ITI-18
answer with documents is "Type not found: 'rim:ExtrinsicObject'"; with ``?wsdl=zeep`` it is read
into objects.  suds has no MTOM at all (it parses the whole multipart body as XML), so ITI-43 goes
through the small transport below, which does what an MTOM stack does: it finds the root part and
puts each attachment back, base64, where its xop:Include was (docs/clients.md shows the same).
"""
from __future__ import annotations

import base64
import hashlib
import re

import pytest
from lxml import etree

suds_client = pytest.importorskip("suds.client", reason="suds-community is in the test extra of setup.cfg")
from suds.transport import Reply  # noqa: E402
from suds.transport.http import HttpTransport  # noqa: E402

from xds import builder  # noqa: E402
from xds import constants as C  # noqa: E402
from tests.helpers import new_pid  # noqa: E402
from tests.test_interop_zeep import LONE, PDF, provide_with_xds_client, server  # noqa: E402,F401

XOP_INCLUDE = "{http://www.w3.org/2004/08/xop/include}Include"


class MtomTransport(HttpTransport):
    """suds' HTTP transport, with MTOM answers turned back into the one XML document suds expects."""

    def send(self, request):
        reply = super().send(request)
        ctype = next((v for k, v in reply.headers.items() if k.lower() == "content-type"), "")
        if not ctype.lower().startswith("multipart/related"):
            return reply
        boundary = re.search(r'boundary="?([^";]+)', ctype).group(1).encode("latin-1")
        start = re.search(r'start="?<([^>]+)>', ctype)
        parts: dict[str, bytes] = {}
        # Each delimiter is CRLF--boundary (RFC 2046 5.1.1); the CRLF is part of it, not of the content.
        for chunk in (b"\r\n" + reply.message).split(b"\r\n--" + boundary)[1:]:
            if chunk.startswith(b"--"):
                break
            head, _, content = chunk.partition(b"\r\n\r\n")
            cid = re.search(rb"(?im)^content-id:[ \t]*<([^>]*)>", head).group(1).decode("latin-1")
            parts[cid] = content
        root = etree.fromstring(parts[start.group(1)] if start else next(iter(parts.values())))
        for include in list(root.iter(XOP_INCLUDE)):
            parent = include.getparent()
            parent.remove(include)
            parent.text = base64.b64encode(parts[include.get("href").removeprefix("cid:")]).decode("ascii")
        return Reply(reply.code, {"Content-Type": "text/xml; charset=UTF-8"}, etree.tostring(root))


def _suds(url: str, **kw):
    return suds_client.Client(url, cache=None, **kw)


def _slot(client, name: str, value: str):
    s = client.factory.create("ns1:SlotType1")
    s._name = name
    s.ValueList.Value = [value]
    return s


def _find_documents(client, pid: str):
    query = client.factory.create("ns1:AdhocQueryType")
    query._id = C.SQ_FIND_DOCUMENTS
    query.Slot = [_slot(client, "$XDSDocumentEntryPatientId", f"'{pid}'"),
                  _slot(client, "$XDSDocumentEntryStatus", f"('{C.STATUS_APPROVED}')")]
    option = client.factory.create("ns0:ResponseOptionType")
    option._returnType = "LeafClass"
    return client.service.DocumentRegistry_RegistryStoredQuery(ResponseOption=option, AdhocQuery=query)


def _answer_status(client) -> str:
    # suds leaves out the attributes of the body's root element (AdhocQueryResponse/@status) from
    # the object it returns; the document it received still has them.
    body = client.last_received().getChild("Envelope").getChild("Body")
    return body.children[0].get("status")


def _ext(obj, scheme: str) -> str:
    (value,) = [e._value for e in obj.ExternalIdentifier if e._identificationScheme == scheme]
    return value


def test_iti18_with_the_variant_wsdl(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    uid = builder.new_oid()
    provide_with_xds_client(server, pid, {uid: PDF})
    client = _suds(server.url + "/xds/registry?wsdl=zeep")
    answer = _find_documents(client, pid)
    assert _answer_status(client) == C.RESPONSE_SUCCESS
    # Each member of the repeated choice has maxOccurs 1 of its own, so suds gives one ExtrinsicObject
    # as the object itself and several as a list.
    entry = answer.RegistryObjectList.ExtrinsicObject
    assert not isinstance(entry, list)
    assert _ext(entry, C.DE_UNIQUE_ID) == uid and _ext(entry, C.DE_PATIENT_ID) == pid
    assert entry._mimeType == "application/pdf"
    slots = {s._name: list(s.ValueList.Value) for s in entry.Slot}
    assert slots["size"] == [str(len(PDF))] and slots["hash"] == [hashlib.sha1(PDF).hexdigest()]
    assert slots["repositoryUniqueId"] == [server.repository.config.repository_id]


def test_iti18_with_the_standard_wsdl_is_what_the_variant_is_for(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    provide_with_xds_client(server, pid, {builder.new_oid(): PDF})
    with pytest.raises(Exception, match="Type not found: 'rim:ExtrinsicObject'"):
        _find_documents(_suds(server.url + "/xds/registry?wsdl"), pid)


def test_iti43_byte_for_byte_through_the_mtom_transport(server):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    docs = {builder.new_oid(): PDF, builder.new_oid(): LONE}
    provide_with_xds_client(server, pid, docs)
    client = _suds(server.url + "/xds/repository?wsdl=zeep", transport=MtomTransport())
    answer = client.service.DocumentRepository_RetrieveDocumentSet(DocumentRequest=[
        {"RepositoryUniqueId": server.repository.config.repository_id, "DocumentUniqueId": uid} for uid in docs])
    assert answer.RegistryResponse._status == C.RESPONSE_SUCCESS
    got = {str(r.DocumentUniqueId): r for r in answer.DocumentResponse}
    assert set(got) == set(docs)
    for uid, data in docs.items():
        assert got[uid].mimeType == "application/pdf"
        # suds leaves base64Binary as its text.
        assert base64.b64decode(str(got[uid].Document)) == data
