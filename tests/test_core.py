"""Core pieces: hardened XML, SOAP envelopes, ebRIM round trips, symbolic ids, settings, CLI."""
import os
import subprocess
import sys

import pytest
from lxml import etree

from xds import builder, ebrim, soap, xmlsafe
from xds import constants as C
from xds.errors import SoapFault
from xds.settings import load


# --- hardened XML -----------------------------------------------------------------------------

def test_xml_refuses_doctype_even_without_entities():
    with pytest.raises(xmlsafe.UnsafeXml, match="DOCTYPE"):
        xmlsafe.parse(b'<!DOCTYPE a [<!ELEMENT a ANY>]><a/>')


def test_xml_refuses_billion_laughs():
    bomb = b'<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><l>&b;</l>'
    with pytest.raises(xmlsafe.UnsafeXml):
        xmlsafe.parse(bomb)


def test_xml_refuses_undefined_entity_reference():
    with pytest.raises(xmlsafe.UnsafeXml):
        xmlsafe.parse(b"<a>&ext;</a>")


def test_xml_depth_and_size_are_bounded():
    deep = b"<a>" * 100 + b"</a>" * 100
    with pytest.raises(xmlsafe.UnsafeXml, match="deeper than 64"):
        xmlsafe.parse(deep)
    with pytest.raises(xmlsafe.UnsafeXml, match="above the limit"):
        xmlsafe.parse(b"<a>" + b"x" * 2000 + b"</a>", max_bytes=1000)


# --- SOAP --------------------------------------------------------------------------------------

def _env(version, headers="", body="<x:Req xmlns:x='urn:x'/>"):
    ns = C.NS_SOAP12 if version == soap.SOAP12 else C.NS_SOAP11
    return (f"<e:Envelope xmlns:e='{ns}' xmlns:a='{C.NS_WSA}'><e:Header>{headers}</e:Header>"
            f"<e:Body>{body}</e:Body></e:Envelope>").encode()


def test_envelope_reads_ws_addressing():
    hdr = ("<a:Action e:mustUnderstand='true'>urn:act</a:Action><a:MessageID>urn:uuid:1</a:MessageID>"
           "<a:To>http://h/x</a:To><a:ReplyTo><a:Address>http://www.w3.org/2005/08/addressing/anonymous"
           "</a:Address></a:ReplyTo>")
    env = soap.parse_envelope(_env(soap.SOAP12, hdr))
    assert (env.version, env.action, env.message_id, env.to) == (soap.SOAP12, "urn:act", "urn:uuid:1", "http://h/x")
    assert env.reply_to.endswith("anonymous") and env.body.tag == "{urn:x}Req"


def test_soap11_envelope_and_fault_in_kind():
    env = soap.parse_envelope(_env(soap.SOAP11))
    assert env.version == soap.SOAP11
    fault = etree.fromstring(soap.build_fault(soap.SOAP11, SoapFault("bad thing")))
    assert fault.find(f".//{{{C.NS_SOAP11}}}Fault/faultstring").text == "bad thing"
    assert fault.find(f".//{{{C.NS_SOAP11}}}Fault/faultcode").text == "soapenv:Client"


def test_soap12_fault_has_code_subcode_and_reason():
    f = etree.fromstring(soap.build_fault(soap.SOAP12, SoapFault("nope", subcode="a:ActionNotSupported"), "urn:uuid:9"))
    ns = {"s": C.NS_SOAP12, "a": C.NS_WSA}
    assert f.xpath("//s:Fault/s:Code/s:Value/text()", namespaces=ns) == ["s:Sender"]
    assert f.xpath("//s:Subcode/s:Value/text()", namespaces=ns) == ["a:ActionNotSupported"]
    assert f.xpath("//s:Reason/s:Text/text()", namespaces=ns) == ["nope"]
    assert f.xpath("//a:RelatesTo/text()", namespaces=ns) == ["urn:uuid:9"]


@pytest.mark.parametrize("data,match", [
    (_env(soap.SOAP12, "<x:Sec xmlns:x='urn:x' e:mustUnderstand='1'/>"), "mustUnderstand"),
    (f"<e:Envelope xmlns:e='{C.NS_SOAP12}'><e:Body/></e:Envelope>".encode(), "Body is empty"),
    (f"<e:Envelope xmlns:e='{C.NS_SOAP12}'/>".encode(), "no Body"),
])
def test_envelope_rejections(data, match):
    with pytest.raises(SoapFault, match=match):
        soap.parse_envelope(data)


def test_unknown_header_without_must_understand_is_ignored():
    env = soap.parse_envelope(_env(soap.SOAP12, "<x:Trace xmlns:x='urn:x'>1</x:Trace>"))
    assert env.body.tag == "{urn:x}Req"


# --- ebRIM ---------------------------------------------------------------------------------------

def test_parse_classifies_packages_by_loose_or_nested_markers():
    pid = "1^^^&1.2.3&ISO"
    req = builder.simple_submission(pid, 1, folder_too=True)
    sub = ebrim.parse_submission(req)
    assert [o.kind for o in sub.objects if o.kind != "Association"] == ["SubmissionSet", "DocumentEntry", "Folder"]
    ss = sub.submission_sets[0]
    assert ss.patient_id == pid and ss.source_id == "1.2.250.1.999.7"
    de = sub.document_entries[0]
    assert de.mime_type == "text/plain" and de.slot1("languageCode") == "fr-FR"
    assert de.code(C.DE_CLASS_CODE).key == "11488-4^^2.16.840.1.113883.6.1"
    assert de.authors()[0].person.startswith("123^Martin")


def test_assign_uuids_rewrites_every_reference_and_keeps_extra_slots():
    req = builder.simple_submission("1^^^&1.2.3&ISO", 2, folder_too=True,
                                    doc_kwargs={"extra_slots": {"urn:example:x": ["kept"]}})
    sub = ebrim.parse_submission(req)
    mapping = ebrim.assign_uuids(sub)
    assert set(mapping) >= {"SubmissionSet01", "Document01", "Document02", "Folder01"}
    ids = {o.id for o in sub.objects}
    assert all(ebrim.is_uuid_urn(i) for i in ids)
    for a in sub.associations:
        assert a.source in ids and a.target in ids
    for o in sub.objects:
        for c in o.classifications:
            assert c.classified_object == o.id and ebrim.is_uuid_urn(c.id)
        for e in o.external_ids:
            assert e.registry_object == o.id
    assert sub.loose_classifications == []  # the markers were nested as the submission was read
    assert "Document01" in etree.tostring(req).decode()  # the model changed, not yet its elements
    text = etree.tostring(ebrim.to_request(sub)).decode()
    assert "Document01" not in text and "urn:example:x" in text and "kept" in text


def _pretty_submission():
    req = builder.simple_submission("1^^^&1.2.3&ISO", 1, folder_too=True,
                                    doc_kwargs={"extra_slots": {"urn:example:x": ["kept"]}})
    return etree.fromstring(etree.tostring(req, pretty_print=True))


def test_model_has_no_xml_and_writing_an_unchanged_object_keeps_its_bytes():
    req = _pretty_submission()
    sub = ebrim.parse_submission(req)
    # Reading normalises once (the top-level markers move into their packages); from then on an
    # unchanged model writes back exactly the bytes it was read from.
    before = etree.tostring(req)
    sub = ebrim.parse_submission(req)
    de = sub.document_entries[0]
    assert not any(isinstance(v, etree._Element) for k, v in vars(de).items() if k != "origin")
    assert de.names[0].value == "Document" and de.ebrim_class == "ExtrinsicObject"
    for o in sub.objects:
        assert ebrim.to_element(o) is o.origin.element
    assert etree.tostring(ebrim.to_request(sub)) == before


def test_writer_applies_slot_changes_in_place_and_keeps_the_rest():
    req = _pretty_submission()
    sub = ebrim.parse_submission(req)
    de = sub.document_entries[0]
    untouched = etree.tostring(de.origin.element.find(f"{{{C.NS_RIM}}}Name"))
    de.set_slot("languageCode", ["en-US"])       # existing: rewritten where it is
    de.drop_slot("urn:example:x")                 # dropped
    assert de.slot("note") is None
    de.set_slot("note", ["12"])                   # new: after the last slot
    el = ebrim.to_element(de)
    slots = el.findall(f"{{{C.NS_RIM}}}Slot")
    assert [s.get("name") for s in slots] == [s.name for s in de.slots]
    assert slots[-1].get("name") == "note" and slots[-1].findtext(f".//{{{C.NS_RIM}}}Value") == "12"
    assert [v.text for v in el.iterfind(f"{{{C.NS_RIM}}}Slot[@name='languageCode']//{{{C.NS_RIM}}}Value")] == ["en-US"]
    assert etree.tostring(el.find(f"{{{C.NS_RIM}}}Name")) == untouched
    again = ebrim.read_object(el)
    assert [(s.name, s.values) for s in again.slots] == [(s.name, s.values) for s in de.slots]


def test_nesting_and_uuids_go_through_the_model():
    sub = ebrim.parse_submission(builder.simple_submission("1^^^&1.2.3&ISO", 1, folder_too=True))
    assert sub.loose_classifications == []  # the markers are nested as the submission is read
    ebrim.assign_uuids(sub)
    ss = sub.submission_sets[0]
    el = ebrim.to_element(ss)
    children = [etree.QName(c).localname for c in el]
    marker = next(c for c in el if c.get("classificationNode") == C.SS_CLASSIFICATION_NODE)
    assert marker.get("classifiedObject") == ss.id and ebrim.is_uuid_urn(ss.id) and el.get("id") == ss.id
    assert children.index("Classification") < children.index("ExternalIdentifier")
    assert max(i for i, n in enumerate(children) if n == "Classification") < children.index("ExternalIdentifier")


def test_an_object_built_in_code_gets_an_element():
    from xds.model import Association, Slot
    a = Association(id="urn:uuid:00000000-0000-4000-8000-000000000001", object_type=C.OBJECT_TYPE_ASSOCIATION,
                    type=C.ASSOC_HAS_MEMBER, source="s", target="t", slots=[Slot("SubmissionSetStatus", ["Original"])])
    el = ebrim.to_element(a)
    assert el.tag == f"{{{C.NS_RIM}}}Association" and el.get("sourceObject") == "s"
    back = ebrim.read_object(el)
    assert (back.type, back.source, back.target, back.submission_set_status) == (a.type, "s", "t", "Original")
    a.target = "u"
    assert ebrim.to_element(a) is el and el.get("targetObject") == "u"



def test_registry_response_lists_errors_and_warnings():
    from xds.errors import XdsError

    resp = ebrim.registry_response([XdsError("XDSRegistryMetadataError", "bad", "id1"),
                                    XdsError("XDSExtraMetadataNotSaved", "w", "id2", C.SEVERITY_WARNING)])
    assert resp.get("status") == C.RESPONSE_FAILURE
    status, errors = ebrim.read_response_errors(resp)
    assert [e.code for e in errors] == ["XDSRegistryMetadataError", "XDSExtraMetadataNotSaved"]
    assert errors[1].severity == C.SEVERITY_WARNING
    only_warning = ebrim.registry_response([errors[1]])
    assert only_warning.get("status") == C.RESPONSE_SUCCESS


# --- settings and CLI ---------------------------------------------------------------------------------

def test_settings_precedence_file_env_flags(tmp_path):
    cfg = tmp_path / "xds.toml"
    cfg.write_text('[xds]\nport = 9001\nrole = "registry"\ncheck_patients = false\nmax_query_results = 50\n')
    s = load(str(cfg), env={})
    assert (s.port, s.role, s.check_patients, s.max_query_results) == (9001, "registry", False, 50)
    s = load(str(cfg), env={"XDS_PORT": "9002", "XDS_CHECK_PATIENTS": "true"})
    assert s.port == 9002 and s.check_patients is True
    s = load(str(cfg), env={"XDS_PORT": "9002"}, overrides={"port": 9003})
    assert s.port == 9003
    assert load(env={}).db_url.startswith("sqlite:///") and load(env={}).port == 8080


@pytest.mark.parametrize("content,env,match", [
    ("bogus = 1", {}, "unknown setting"),
    ("", {"XDS_PORT": "eighty"}, "not a whole number"),
    ("", {"XDS_ROLE": "proxy"}, "role must be"),
    ("", {"XDS_CHECK_PATIENTS": "maybe"}, "not a boolean"),
])
def test_settings_errors_are_clear(tmp_path, content, env, match):
    cfg = tmp_path / "x.toml"
    cfg.write_text(content)
    with pytest.raises(ValueError, match=match):
        load(str(cfg), env=env)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})


def test_cli_serve_on_embedded_defaults(tmp_path):
    """The README's server command: SQLite and ./xds-data under the working directory."""
    import http.client
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--port", str(port)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "xds: all on" in proc.stdout.readline()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/xds/registry?wsdl")
        resp = conn.getresponse()
        assert resp.status == 200 and b"DocumentRegistry_Service" in resp.read()
        assert (tmp_path / "xds-data" / "registry.db").exists()
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0  # SIGTERM is a graceful stop


def test_reading_nests_top_level_classifications_and_identifiers_in_their_objects():
    req = builder.simple_submission("1^^^&1.2.3&ISO", 1)
    rol = req.find(f"{{{C.NS_RIM}}}RegistryObjectList")
    eo = rol.find(f"{{{C.NS_RIM}}}ExtrinsicObject")
    nested = [(c.tag, c.get("id")) for c in eo if etree.QName(c).localname in ("Classification", "ExternalIdentifier")]
    for c in list(eo):
        if etree.QName(c).localname in ("Classification", "ExternalIdentifier"):
            rol.append(c)  # classifiedObject / registryObject already name the entry
    stray = etree.SubElement(rol, f"{{{C.NS_RIM}}}Classification", id="stray", classifiedObject="Nowhere",
                             classificationScheme=C.DE_EVENT_CODE, nodeRepresentation="x")
    sub = ebrim.parse_submission(req)
    de = sub.document_entries[0]
    assert [(c.tag, c.get("id")) for c in ebrim.to_element(de)
            if etree.QName(c).localname in ("Classification", "ExternalIdentifier")] == nested
    assert de.unique_id and de.patient_id and de.code(C.DE_CLASS_CODE)
    assert [c.id for c in sub.loose_classifications] == ["stray"] and stray.getparent() is rol
    assert sub.submission_sets[0].classifications[-1].classification_node == C.SS_CLASSIFICATION_NODE
