"""The DMP pack replay (conformance/dmp*.py) on a SYNTHETIC pack written here, in the official pack's layout
and with its defects (a bare-LF MIME dump, a SOAP 1.1 envelope, a Document id in the wrong case, VIHF
headers, cp437 mojibake in file names, a C# template without namespaces), so that the project's tests
never depend on ../shared. The messages come from tests/dmp_messages.py.

The replay runs against a real `xds serve --profile dmp --security none --lenient`: once through its own
server (every step passes), once against a server given by --url with a pack whose expectations the
server does not meet (the judge must fail those steps, and only those)."""
from __future__ import annotations

import base64
import hashlib
import os

import pytest
from lxml import etree

from conformance import dmp
from conformance import dmp_adapt as A
from conformance.dmp_pack import Pack, PackError, frame, read_dump
from tests import dmp_messages as M
from xds import constants as C

MATRICULE = M.ins(424242)
PATIENT = M.patient_id(MATRICULE, date=M.INS_DATE)          # as the pack writes it in metadata
QUERY_PATIENT = M.patient_id(MATRICULE)                       # as its queries write it (no CX.7)
PACK = "k-jefferson/Dehempe/docs/package_dmp/DMP_LPS_Exemple_de_messages_1.0.1_1_-_v02.05.00"
RESOURCES = "k-jefferson/Dehempe/docs/package_dmp/DMP-LPS-Code-Exemple_C_dotNET-v2.06.01/TLSiKitEditeur/Resources"
NS_WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
NS_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
BOUNDARY = "----=_Part_7_1234.5678"
# The pack's names: TD2.1 with the cp437 mojibake of the original (ê read as ˆ, é as ‚), the others renamed.
NAMES = {
    ("TD2.1", "request"): "TD2.1 - Alimentation requ\u02c6te.xml",
    ("TD2.1", "response"): "TD2.1 - Alimentation r\u201aponse.xml",
    ("TD3.1", "request"): "TD3.1_-_Recherche_de_document_requete.xml",
    ("TD3.1", "response"): "TD3.1_-_Recherche_de_document_reponse.xml",
    ("TD3.2", "request"): "TD3.2_-_Consultation_d_un_document_requete.xml",
    ("TD3.2", "response"): "TD3.2_-_Consultation_d_un_document_reponse.xml",
    ("TD3.3c", "request"): "TD3.3c_-_Supprimer_un_document_requete.xml",
    ("TD3.3c", "response"): "TD3.3c_-_Supprimer_un_document_reponse.xml",
    ("TD3.3d", "request"): "TD3.3d_-_Archiver_un_document_requete.xml",
    ("TD3.3d", "response"): "TD3.3d_-_Archiver_un_document_reponse.xml",
}
# The known server bug the replay found: a Deleted document is still served by ITI-43 on /xds/repository.
ITI43_DELETED = "ITI-43 of the deleted document"


# --- the synthetic pack ---------------------------------------------------------------------------------

def envelope(payload: etree._Element, action: str, *, soap11: bool = False, security: bool = True,
             message_id: str | None = None) -> etree._Element:
    ns = C.NS_SOAP11 if soap11 else C.NS_SOAP12
    env = etree.Element(C.q(ns, "Envelope"), nsmap={"soap": ns})
    header = etree.SubElement(env, C.q(ns, "Header"))
    etree.SubElement(header, C.q(C.NS_WSA, "MessageID"), nsmap={None: C.NS_WSA}).text = \
        message_id or f"urn:uuid:{hashlib.md5(action.encode() + os.urandom(8)).hexdigest()[:8]}-0000-4000-8000-000000000000"
    action_el = etree.SubElement(header, C.q(C.NS_WSA, "Action"), nsmap={None: C.NS_WSA})
    action_el.text = action
    action_el.set("mustUnderstand", "true")   # unprefixed, as the pack writes it
    if security:
        sec = etree.SubElement(header, C.q(NS_WSSE, "Security"), nsmap={"wsse": NS_WSSE})
        etree.SubElement(sec, C.q(NS_SAML, "Assertion"), nsmap={"saml2": NS_SAML}, ID="_vihf", Version="2.0")
    etree.SubElement(env, C.q(ns, "Body")).append(payload)
    return env


def xml(el: etree._Element) -> bytes:
    return etree.tostring(el, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def registry_response(status: str = "Success", errors: tuple[str, ...] = ()) -> bytes:
    rr = etree.Element(C.q(C.NS_RS, "RegistryResponse"), nsmap={"rs": C.NS_RS},
                       status=f"urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:{status}")
    if errors:
        el = etree.SubElement(rr, C.q(C.NS_RS, "RegistryErrorList"))
        for code in errors:
            etree.SubElement(el, C.q(C.NS_RS, "RegistryError"), errorCode=code, codeContext="",
                             severity="urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error")
    return xml(envelope(rr, "urn:ihe:iti:2010:UpdateDocumentSet-Response", security=False))


def mime_dump(env: etree._Element, attachments) -> bytes:
    """The body as the pack saved TD2.1: no HTTP headers, bare-LF framing, a root part declaring SOAP 1.2
    around a SOAP 1.1 envelope, Content-Disposition headers."""
    lines = [f"--{BOUNDARY}".encode(), b'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"; '
             b'action="DocumentRepository_ProvideAndRegisterDocumentSet-b"', b"Content-Transfer-Encoding: 8bit",
             b"Content-ID: <rootpart@soapui.org>", b"", etree.tostring(env)]
    for cid, ctype, data in attachments:
        lines += [f"--{BOUNDARY}".encode(), f"Content-Type: {ctype}; charset=Cp1252; name={cid}".encode(),
                  b"Content-Transfer-Encoding: binary", f"Content-ID: <{cid}>".encode(),
                  f'Content-Disposition: attachment; name="{cid}"; filename="{cid}"'.encode(), b"", data]
    return b"\n".join(lines) + f"\n--{BOUNDARY}--".encode()


def td21() -> tuple[bytes, M.Submission]:
    sub = M.submission(PATIENT)
    # PROVENANCE 2: the Document of the first entry names it in the wrong case.
    first = next(d for d in sub.request.iter(C.q(C.NS_XDSB, "Document")) if d.get("id") == "Document01")
    first.set("id", "document01")
    env = envelope(sub.request, C.ACTION_PROVIDE, soap11=True)
    return mime_dump(env, sub.attachments), sub


def td31_response(sub: M.Submission) -> bytes:
    """An answer shaped as the DMP's: every entry with the registry's slots, lid, status, VersionInfo."""
    resp = etree.Element(C.q(C.NS_QUERY, "AdhocQueryResponse"), nsmap={"query": C.NS_QUERY, "rim": C.NS_RIM},
                         status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success")
    rol = etree.SubElement(resp, C.q(C.NS_RIM, "RegistryObjectList"))
    doc = M.Document(patient=PATIENT)
    eo = doc.entry("urn:uuid:7953af1a-ba1c-11eb-816f-0050569e422e", lid="urn:uuid:7953af1a-ba1c-11eb-816f-0050569e422e",
                   repository_id=M.DMP_REPOSITORY, registered=True)
    eo.set("status", C.STATUS_APPROVED)
    eo.set("isOpaque", "false")
    eo.insert(list(eo).index(eo.find(C.q(C.NS_RIM, "Name"))) + 1,
              etree.Element(C.q(C.NS_RIM, "VersionInfo"), versionName="1"))
    rol.append(eo)
    return xml(envelope(resp, "urn:ihe:iti:2007:RegistryStoredQueryResponse", security=False))


def td32_response(mime_type: str = "text/xml") -> bytes:
    resp = etree.Element(C.q(C.NS_XDSB, "RetrieveDocumentSetResponse"), nsmap={"xdsb": C.NS_XDSB, "rs": C.NS_RS})
    etree.SubElement(resp, C.q(C.NS_RS, "RegistryResponse"),
                     status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success")
    dr = etree.SubElement(resp, C.q(C.NS_XDSB, "DocumentResponse"))
    for tag, text in (("RepositoryUniqueId", M.DMP_REPOSITORY), ("DocumentUniqueId", "1.2.250.1.999.1.1.7898.1.99"),
                      ("mimeType", mime_type)):
        etree.SubElement(dr, C.q(C.NS_XDSB, tag)).text = text
    etree.SubElement(etree.SubElement(dr, C.q(C.NS_XDSB, "Document")), C.q(C.NS_XOP, "Include"),
                     nsmap={"xop": C.NS_XOP}, href="cid:doc-1@example")
    return xml(envelope(resp, "urn:ihe:iti:2007:RetrieveDocumentSetResponse", security=False))


def status_request(original: str, new: str, *, drop_references: bool = False) -> bytes:
    req = M.status_update(PATIENT, "urn:uuid:fe5287a2-ae6a-11eb-8f5d-0050569e422e", original, new)
    if drop_references:  # as the official TD3.3c/d SubmissionSets do
        ss = next(req.iter(C.q(C.NS_RIM, "RegistryPackage")))
        for el in ss.findall(C.q(C.NS_RIM, "ExternalIdentifier")):
            del el.attrib["registryObject"]
    return xml(envelope(req, C.ACTION_UPDATE))


def template() -> bytes:
    """template_masquage.xml as the C# kit writes it: no namespace anywhere, the SubmissionSet's nested
    objects without their references, another patient, another document, a MASQUE_PS classification."""
    doc = M.Document(patient=M.patient_id(M.ins(99), date="20190404100738"), confidentiality=(M.NORMAL, M.MASQUE_PS))
    req = M.metadata_update(doc, "urn:uuid:4f196ae8-5549-11e9-9478-0050569e422e", "5", M.DMP_REPOSITORY)
    for el in req.iter():
        if isinstance(el.tag, str):
            el.tag = etree.QName(el).localname
    ss = next(req.iter("RegistryPackage"))
    for el in ss.findall("ExternalIdentifier"):
        el.attrib.pop("registryObject", None)
    etree.cleanup_namespaces(req)
    return etree.tostring(req, encoding="UTF-8")


def write_pack(root, **overrides: bytes) -> str:
    """The synthetic pack under root (a testkit root); overrides: (td, side) file contents by key
    "TD3_2_response" and the like."""
    dump, sub = td21()
    files = {
        ("TD2.1", "request"): dump,
        ("TD2.1", "response"): registry_response(),
        ("TD3.1", "request"): xml(envelope(M.find_documents(QUERY_PATIENT), C.ACTION_QUERY)),
        ("TD3.1", "response"): td31_response(sub),
        ("TD3.2", "request"): xml(envelope(M.retrieve(M.DMP_REPOSITORY, "1.2.250.1.999.1.1.7898.1.99"),
                                           C.ACTION_RETRIEVE)),
        ("TD3.2", "response"): td32_response(),
        ("TD3.3c", "request"): status_request(C.STATUS_ARCHIVED, C.STATUS_DELETED, drop_references=True),
        ("TD3.3c", "response"): registry_response(),
        ("TD3.3d", "request"): status_request(C.STATUS_APPROVED, C.STATUS_ARCHIVED, drop_references=True),
        ("TD3.3d", "response"): registry_response(),
    }
    for key, data in overrides.items():
        td, side = key.rsplit("_", 1)
        files[(td.replace("_", "."), side)] = data
    folder = os.path.join(root, PACK)
    os.makedirs(folder, exist_ok=True)
    for key, data in files.items():
        with open(os.path.join(folder, NAMES[key]), "wb") as f:
            f.write(data)
    with open(os.path.join(folder, "TD2.1-DocumentME2.xml"), "wb") as f:   # a loose attachment, not an exchange
        f.write(sub.documents["Document01"].content)
    resources = os.path.join(root, RESOURCES)
    os.makedirs(resources, exist_ok=True)
    with open(os.path.join(resources, "template_masquage.xml"), "wb") as f:
        f.write(template())
    return str(root)


# --- the pack on disk -------------------------------------------------------------------------------------

def test_pack_is_found_from_the_testkit_root_and_from_its_own_folder(tmp_path):
    root = write_pack(tmp_path / "testkit")
    for where in (root, os.path.join(root, PACK)):
        pack = Pack.find(where)
        assert pack.folder == os.path.join(root, PACK)
        assert set(pack.requests) == set(pack.responses) == {"TD2.1", "TD3.1", "TD3.2", "TD3.3c", "TD3.3d"}
        assert pack.name("TD2.1") == NAMES[("TD2.1", "request")]          # the mojibake spelling
        assert pack.templates["template_masquage.xml"].startswith(os.path.join(root, RESOURCES))


def test_an_incomplete_pack_says_what_it_lacks(tmp_path):
    root = write_pack(tmp_path / "testkit")
    os.remove(os.path.join(root, PACK, NAMES[("TD3.3c", "response")]))
    with pytest.raises(PackError, match="TD3.3c response"):
        Pack.find(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PackError, match="no DMP example-message pack"):
        Pack.find(str(empty))
    assert dmp.main([str(tmp_path / "nowhere")]) == 2


def test_the_bare_lf_dump_is_read_exactly_and_reframed_in_crlf(tmp_path):
    dump_bytes, sub = td21()
    dump = read_dump(dump_bytes)
    assert dump.line_end == b"\n" and dump.soap_type == "application/soap+xml"
    assert [p.data for p in dump.parts] == [data for _, _, data in sub.attachments]
    body, headers = frame(dump.root, dump.parts, dump.soap_type, C.ACTION_PROVIDE)
    boundary = headers["Content-Type"].split('boundary="', 1)[1].split('"', 1)[0]
    assert body.count(f"\r\n--{boundary}\r\n".encode()) == len(dump.parts)
    assert int(headers["Content-Length"]) == len(body)


def test_the_adaptations_say_what_they_changed():
    dump_bytes, _ = td21()
    env = A.load(read_dump(dump_bytes).root, "TD2.1")
    request = A.envelope_body(env)
    assert A.strip_security(env) == ["wsse:Security removed"] and not list(env.iter(A.WSSE_SECURITY))
    assert A.fix_document_ids(request) == ["Document id document01 -> Document01"]
    assert A.fix_document_ids(request) == []
    mapping, notes = A.fresh_unique_ids(request)
    assert len(mapping) == 3 and all(new.rsplit(".", 1)[0] == old.rsplit(".", 1)[0] for old, new in mapping.items())
    update = A.load(status_request(C.STATUS_APPROVED, C.STATUS_ARCHIVED, drop_references=True), "TD3.3d")
    body = A.envelope_body(update)
    assert A.swap_status_targets(body, "urn:uuid:1") == ["targetObject urn:uuid:fe5287a2-ae6a-11eb-8f5d-0050569e422e"
                                                          " -> urn:uuid:1"]
    assert len(A.missing_nested_references(body)) == 3
    assert len(A.fill_nested_references(body)) == 3 and not A.missing_nested_references(body)


def test_the_masking_update_is_the_registry_entry_with_the_template_code():
    entry = M.Document(patient=PATIENT).entry("urn:uuid:aaaa", lid="urn:uuid:aaaa", repository_id=M.DMP_REPOSITORY,
                                             registered=True)
    etree.SubElement(entry, C.q(C.NS_RIM, "VersionInfo"), versionName="1")
    request, notes = A.build_update(template(), entry, add=A.MASK_CODE)
    ss, marker, assoc, eo = request.find(C.q(C.NS_RIM, "RegistryObjectList"))
    assert marker.get("classifiedObject") == ss.get("id")      # the template's top-level SubmissionSet marker
    assert A.external_id(ss, A.SS_PATIENT_ID) == PATIENT
    assert all(ei.get("registryObject") == ss.get("id") for ei in ss.findall(A.rim("ExternalIdentifier")))
    assert A.slot_values(assoc, "PreviousVersion") == ["1"] and assoc.get("targetObject") == eo.get("id")
    assert eo.get("lid") == "urn:uuid:aaaa" and eo.get("id") != "urn:uuid:aaaa"
    assert A.codes(eo, A.CONFIDENTIALITY) == ["N", "MASQUE_PS"]
    assert {c.get("classifiedObject") for c in eo.findall(A.rim("Classification"))} == {eo.get("id")}
    assert any("PreviousVersion 5 -> 1" in n for n in notes)
    unmasked, _ = A.build_update(template(), eo, remove=A.MASK_CODE)
    assert A.codes(unmasked.find(C.q(C.NS_RIM, "RegistryObjectList"))[-1], A.CONFIDENTIALITY) == ["N"]


# --- the replay against a real server ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def passing(tmp_path_factory):
    """One replay of the conformant synthetic pack, through the replay's own server."""
    root = write_pack(tmp_path_factory.mktemp("pack") / "testkit")
    lines: list[str] = []
    steps, url = dmp.run(Pack.find(root), None, lines.append)
    junit = str(tmp_path_factory.mktemp("junit") / "dmp.xml")
    dmp.write_junit(junit, steps, Pack.find(root), url)
    return {s.td: s for s in steps}, lines, junit


def test_the_replay_passes_every_step(passing):
    steps, lines, junit = passing
    assert list(steps) == ["TD2.1", "TD3.1", "TD3.2", "TD3.3a", "TD3.3b", "TD3.3d", "TD3.3c"]
    for td, step in steps.items():
        problems = [p for p in step.problems if td != "TD3.3c" or ITI43_DELETED not in p]
        assert not problems, step.line()
    assert len(lines) == 1 + len(steps) and lines[0].startswith("dmp replay: ")
    assert "--profile dmp --security none --lenient" in lines[0]
    adapted = steps["TD2.1"].adaptations
    assert "wsse:Security removed" in adapted and "Document id document01 -> Document01" in adapted
    assert "MIME framing bare LF -> CRLF" in adapted
    assert not any(a.startswith("uniqueId") for a in adapted)   # its own fresh server: the pack's ids kept
    assert any("targetObject" in a for a in steps["TD3.3d"].adaptations)
    assert any("FindDocuments Archived: Document01" in c for c in steps["TD3.3d"].checks)
    assert any("confidentialityCode N, MASQUE_PS" in c for c in steps["TD3.3a"].checks)
    suite = etree.parse(junit).getroot()[0]
    assert suite.get("tests") == "7" and len(suite.findall("testcase")) == 7


def test_a_deleted_document_is_not_retrieved(passing):
    steps, _, _ = passing
    assert steps["TD3.3c"].ok, steps["TD3.3c"].line()


def test_the_judge_fails_what_the_server_does_not_do(tmp_path, capsys):
    """A pack whose TD3.2 answer has another mimeType, and whose TD3.3d leaves out the nested references
    as the official one does, against a server strict about those: those two steps fail, for those reasons,
    and the rest passes."""
    root = write_pack(tmp_path / "testkit", TD3_2_response=td32_response("application/pdf"),
                      TD3_3d_request=status_request(C.STATUS_APPROVED, C.STATUS_ARCHIVED, drop_references=True))
    server = dmp.OwnServer([dmp.fed_patient(Pack.find(root))], implied_references=False).start()
    try:
        code = dmp.main([root, "--url", server.url + "/xds/registry"])
    finally:
        server.stop()
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    lines = {line.split()[1]: line for line in out if line.startswith(("PASS ", "FAIL "))}
    assert lines["TD3.2"].startswith("FAIL") and "mimeType text/xml (the pack's application/pdf" in lines["TD3.2"]
    assert lines["TD3.3d"].startswith("FAIL") and "leaves out 3 classifiedObject/registryObject" in lines["TD3.3d"]
    assert "resent with them filled to go on: Success" in lines["TD3.3d"]
    for td in ("TD2.1", "TD3.1", "TD3.3a", "TD3.3b"):
        assert lines[td].startswith("PASS"), lines[td]
    assert "uniqueId " in lines["TD2.1"]            # --url: the server may hold an earlier run
    assert out[-1].startswith("dmp replay: 7 steps") and "TD3.2" in out[-1] and "TD3.3d" in out[-1]


def test_document_bytes_come_from_xop_or_base64():
    answer = dmp.Answer(parts={"a@b": b"xop"})
    dr = etree.fromstring(f'<x:DocumentResponse xmlns:x="{C.NS_XDSB}"><x:Document>'
                          f'<i:Include xmlns:i="{C.NS_XOP}" href="cid:a@b"/></x:Document></x:DocumentResponse>')
    assert answer.document_bytes(dr) == b"xop"
    dr = etree.fromstring(f'<x:DocumentResponse xmlns:x="{C.NS_XDSB}"><x:Document>'
                          f'{base64.b64encode(b"inline").decode()}</x:Document></x:DocumentResponse>')
    assert answer.document_bytes(dr) == b"inline"
