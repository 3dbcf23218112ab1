"""What real Document Sources send, over HTTP: forms ebRIM and the Technical Framework allow are
accepted, and the rest is answered with a message that names what the source sent.

Each form is tried on ITI-42 and ITI-41, all-in-one and split (a repository process talking ITI-42 over
HTTP to a registry process), then looked for with FindDocuments on its codes and GetDocuments on its
uniqueId.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging

import pytest
from lxml import etree

from node.server import Services
from node.transfer import provide_and_register, retrieve_request
from xds import builder
from xds import constants as C
from xds import errors as E
from xds.client import SoapClient
from xds.settings import Settings
from tests.helpers import new_pid, unique_ids

OURS = "1.2.250.1.999.3.1"
FOREIGN = "1.2.250.1.999.3.77"
RIM = C.NS_RIM
NS = {"rim": RIM, "rs": C.NS_RS, "s": C.NS_SOAP12, "x": C.NS_XDSB}


def rim(local: str) -> str:
    return f"{{{RIM}}}{local}"


# --- deployments ---------------------------------------------------------------------------

class Deployment:
    """Where a source sends ITI-41 and ITI-42, and where a consumer queries and retrieves."""

    def __init__(self, registry: Services, repository: Services):
        self.registry, self.repository = registry, repository

    @property
    def store(self):
        return self.registry.registry.store

    def patient(self) -> str:
        pid = new_pid()
        self.store.add_patient(pid)
        return pid

    def register(self, request):
        return SoapClient(self.registry.url + "/xds/registry").call(C.ACTION_REGISTER, request)

    def provide(self, request, documents: dict[str, bytes]):
        pnr, attachments = provide_and_register(request, documents)
        return SoapClient(self.repository.url + "/xds/repository", timeout=60,
                          spool_dir=str(self.repository.settings.data)).call(
            C.ACTION_PROVIDE, pnr, attachments=attachments, use_mtom=True)

    def query(self, query_id: str, params: dict):
        q = C.NS_QUERY
        req = etree.Element(f"{{{q}}}AdhocQueryRequest", nsmap={"query": q, "rim": RIM})
        etree.SubElement(req, f"{{{q}}}ResponseOption", returnType="LeafClass", returnComposedObjects="true")
        aq = etree.SubElement(req, rim("AdhocQuery"), id=query_id)
        for name, values in params.items():
            builder.slot(aq, name, values)
        return SoapClient(self.registry.url + "/xds/registry").call(C.ACTION_QUERY, req)

    def find_by_class_code(self, pid: str, code: str, scheme: str) -> list[etree._Element]:
        reply = self.query(C.SQ_FIND_DOCUMENTS, {
            "$XDSDocumentEntryPatientId": [f"'{pid}'"],
            "$XDSDocumentEntryStatus": [f"('{C.STATUS_APPROVED}')"],
            "$XDSDocumentEntryClassCode": [f"('{code}^^{scheme}')"]})
        assert reply.body.get("status") == C.RESPONSE_SUCCESS, etree.tostring(reply.body)
        return reply.body.findall(f".//{rim('ExtrinsicObject')}")

    def get_by_unique_id(self, uid: str) -> list[etree._Element]:
        reply = self.query(C.SQ_GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": [f"('{uid}')"]})
        assert reply.body.get("status") == C.RESPONSE_SUCCESS, etree.tostring(reply.body)
        return reply.body.findall(f".//{rim('ExtrinsicObject')}")

    def retrieve(self, uid: str, repo: str = OURS):
        return SoapClient(self.repository.url + "/xds/repository", timeout=60,
                          spool_dir=str(self.repository.settings.data)).call(
            C.ACTION_RETRIEVE, retrieve_request(uid, repo))


def _start(tmp_path, name: str, **kw) -> Services:
    kw.setdefault("repository_id", OURS)
    return Services(Settings(port=0, data=str(tmp_path / name), **kw)).start()


@pytest.fixture(params=["all-in-one", "split"])
def deployment(request, tmp_path):
    if request.param == "all-in-one":
        one = _start(tmp_path, "one", role="all")
        yield Deployment(one, one)
        one.stop()
        return
    reg = _start(tmp_path, "reg", role="registry")
    repo = _start(tmp_path, "repo", role="repository", registry_url=reg.url + "/xds/registry")
    yield Deployment(reg, repo)
    repo.stop()
    reg.stop()


# --- the forms -----------------------------------------------------------------------------

def hoist(request: etree._Element, *, classifications=True, external_ids=True, kinds=("ExtrinsicObject",)):
    """Move the nested Classifications and ExternalIdentifiers of the named objects to the top of
    the RegistryObjectList, each naming its object by classifiedObject / registryObject."""
    rol = request.find(rim("RegistryObjectList"))
    for obj in list(rol):
        if etree.QName(obj).localname not in kinds:
            continue
        for child in list(obj):
            local = etree.QName(child).localname
            if local == "Classification" and classifications:
                child.set("classifiedObject", obj.get("id"))
            elif local == "ExternalIdentifier" and external_ids:
                child.set("registryObject", obj.get("id"))
            else:
                continue
            rol.append(child)
    return request


def submission(pid: str, *, register: bool, **doc_kwargs) -> etree._Element:
    return builder.simple_submission(pid, register=register, repository_unique_id=OURS, doc_kwargs=doc_kwargs)


def errors_of(body) -> list[etree._Element]:
    return body.findall(".//rs:RegistryError", NS)


def assert_success(reply):
    assert reply.body.get("status") == C.RESPONSE_SUCCESS, etree.tostring(reply.body, pretty_print=True).decode()


def assert_found(dep: Deployment, pid: str, uid: str):
    cls = builder.DEFAULT_CODES["class"]
    found = dep.find_by_class_code(pid, cls[0], cls[1])
    assert [e for e in found if _unique_id(e) == uid], "FindDocuments on the class code misses the entry"
    got = dep.get_by_unique_id(uid)
    assert len(got) == 1
    entry = got[0]
    # Stored and returned nested, as if the source had nested them.
    schemes = {c.get("classificationScheme") for c in entry.findall(rim("Classification"))}
    assert {C.DE_CLASS_CODE, C.DE_TYPE_CODE, C.DE_FORMAT_CODE, C.DE_AUTHOR} <= schemes
    assert all(c.get("classifiedObject") == entry.get("id") for c in entry.findall(rim("Classification")))
    ids = {e.get("identificationScheme"): e.get("value") for e in entry.findall(rim("ExternalIdentifier"))}
    assert ids[C.DE_UNIQUE_ID] == uid and ids[C.DE_PATIENT_ID] == pid
    return entry


def _unique_id(entry) -> str | None:
    for e in entry.findall(rim("ExternalIdentifier")):
        if e.get("identificationScheme") == C.DE_UNIQUE_ID:
            return e.get("value")
    return None


def slot_value(entry, name):
    for s in entry.findall(rim("Slot")):
        if s.get("name") == name:
            return [v.text for v in s.iter(rim("Value"))]
    return None


@pytest.mark.parametrize("which", ["classifications", "external_ids", "both"])
def test_top_level_classifications_and_identifiers_on_iti42(deployment, which):
    pid = deployment.patient()
    req = submission(pid, register=True)
    uid = unique_ids(req)["Document01"]
    hoist(req, classifications=which != "external_ids", external_ids=which != "classifications")
    assert_success(deployment.register(req))
    assert_found(deployment, pid, uid)


@pytest.mark.parametrize("which", ["classifications", "external_ids", "both"])
def test_top_level_classifications_and_identifiers_on_iti41(deployment, which):
    pid = deployment.patient()
    req = submission(pid, register=False)
    uid = unique_ids(req)["Document01"]
    hoist(req, classifications=which != "external_ids", external_ids=which != "classifications")
    reply = deployment.provide(req, {"Document01": b"hello, top level"})
    assert_success(reply)
    assert not errors_of(reply.body)
    assert_found(deployment, pid, uid)
    got = deployment.retrieve(uid)
    assert retrieve_status(got) == C.RESPONSE_SUCCESS


def test_submission_set_identifiers_at_top_level(deployment):
    pid = deployment.patient()
    req = submission(pid, register=True)
    hoist(req, kinds=("RegistryPackage",))
    assert_success(deployment.register(req))


@pytest.mark.parametrize("attr,tag", [("classifiedObject", "Classification"),
                                      ("registryObject", "ExternalIdentifier")])
def test_top_level_object_pointing_at_nothing_names_the_id(deployment, attr, tag):
    pid = deployment.patient()
    req = submission(pid, register=True)
    uid = unique_ids(req)["Document01"]
    hoist(req)
    rol = req.find(rim("RegistryObjectList"))
    stray = next(el for el in rol if etree.QName(el).localname == tag)
    stray.set(attr, "NoSuchObject42")
    reply = deployment.register(req)
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    texts = [e.get("codeContext") for e in errors_of(reply.body)]
    assert any("NoSuchObject42" in t for t in texts), texts
    assert not any("None" in t for t in texts), texts
    assert deployment.get_by_unique_id(uid) == []


def test_foreign_repository_unique_id_is_replaced_with_a_warning(deployment):
    pid = deployment.patient()
    req = submission(pid, register=False, repository_unique_id=FOREIGN)
    uid = unique_ids(req)["Document01"]
    data = b"a document from a source that copied someone else's repositoryUniqueId"
    reply = deployment.provide(req, {"Document01": data})
    assert_success(reply)
    warnings = errors_of(reply.body)
    assert len(warnings) == 1
    w = warnings[0]
    assert w.get("severity") == C.SEVERITY_WARNING
    assert FOREIGN in w.get("codeContext") and OURS in w.get("codeContext")
    entry = deployment.get_by_unique_id(uid)[0]
    assert slot_value(entry, "repositoryUniqueId") == [OURS]
    got = deployment.retrieve(uid)
    assert retrieve_status(got) == C.RESPONSE_SUCCESS
    assert document_bytes(got) == data
    assert retrieve_status(deployment.retrieve(uid, FOREIGN)) == C.RESPONSE_FAILURE


@pytest.mark.parametrize("slot,value,words", [
    ("hash", "0" * 40, "hash"),
    ("size", "999", "size"),
])
def test_hash_or_size_that_disagrees_is_still_refused(deployment, slot, value, words):
    pid = deployment.patient()
    kw = {"hash": value} if slot == "hash" else {"size": int(value)}
    req = submission(pid, register=False, repository_unique_id=FOREIGN, **kw)
    uid = unique_ids(req)["Document01"]
    reply = deployment.provide(req, {"Document01": b"bytes that do not match"})
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    texts = [e.get("codeContext") for e in errors_of(reply.body) if e.get("severity") != C.SEVERITY_WARNING]
    assert any(words in t and "Document01" in t for t in texts), texts
    assert deployment.get_by_unique_id(uid) == []


# --- messages that name what was sent ---------------------------------------------------------

def test_unknown_patient_names_the_submission_set_as_sent(deployment):
    pid = new_pid()  # never fed
    req = submission(pid, register=True)
    reply = deployment.register(req)
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    errs = [e for e in errors_of(reply.body) if e.get("errorCode") == E.UNKNOWN_PATIENT_ID]
    assert errs
    assert "SubmissionSet01" in errs[0].get("codeContext")
    assert errs[0].get("location") == "SubmissionSet01"
    assert "urn:uuid:" not in errs[0].get("codeContext")
    assert pid in errs[0].get("codeContext")


def test_unknown_patient_on_iti41_names_the_submission_set_as_sent(deployment):
    pid = new_pid()
    req = submission(pid, register=False)
    reply = deployment.provide(req, {"Document01": b"x"})
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    errs = [e for e in errors_of(reply.body) if e.get("errorCode") == E.UNKNOWN_PATIENT_ID]
    assert errs and "SubmissionSet01" in errs[0].get("codeContext"), etree.tostring(reply.body)
    assert "urn:uuid:" not in errs[0].get("codeContext")


def test_uuid_ids_as_sent_are_named_as_sent(deployment):
    pid = new_pid()
    ss_id = "urn:uuid:6b5a3c1e-0f1e-4b8e-9a51-2d3c4b5a6978"
    req = builder.submit_objects_request([
        builder.submission_set(pid, id=ss_id), builder.submission_set_marker(ss_id),
        builder.document_entry(pid, id="Document01", hash="da39a3ee5e6b4b0d3255bfef95601890afd80709", size=0,
                               repository_unique_id=OURS),
        builder.association(ss_id, "Document01", id="a1"),
    ])
    reply = deployment.register(req)
    errs = [e for e in errors_of(reply.body) if e.get("errorCode") == E.UNKNOWN_PATIENT_ID]
    assert errs and ss_id in errs[0].get("codeContext") and errs[0].get("location") == ss_id


def test_missing_unique_id_is_never_called_none(deployment):
    pid = deployment.patient()
    req = submission(pid, register=False)
    eo = req.find(f".//{rim('ExtrinsicObject')}")
    for ei in eo.findall(rim("ExternalIdentifier")):
        if ei.get("identificationScheme") == C.DE_UNIQUE_ID:
            eo.remove(ei)
    reply = deployment.provide(req, {"Document02": b"no entry describes me"})
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    texts = [e.get("codeContext") for e in errors_of(reply.body)]
    assert texts and not any("None" in t for t in texts), texts
    assert any("Document01" in t for t in texts), texts


def answer_lines(caplog) -> list[dict]:
    out = []
    for r in caplog.records:
        msg = r.getMessage()
        if r.name == "xds.app" and msg.startswith("{"):
            data = json.loads(msg)
            if data.get("event") == "answer":
                out.append(data)
    return out


def test_failure_and_partial_success_are_logged(deployment, caplog):
    caplog.set_level(logging.INFO)
    pid = new_pid()  # never fed
    reply = deployment.register(submission(pid, register=True))
    assert reply.body.get("status") == C.RESPONSE_FAILURE
    lines = answer_lines(caplog)
    assert lines, [r.getMessage() for r in caplog.records]
    line = lines[-1]
    assert line["transaction"] == "ITI-42" and line["status"] == "Failure"
    assert line["error_codes"] == [E.UNKNOWN_PATIENT_ID]
    assert line["message_id"].startswith("urn:uuid:")
    assert pid.split("^")[0] not in json.dumps(line)  # codes, not the patient

    caplog.clear()
    reply = deployment.retrieve("1.2.250.1.999.1.424242")
    assert retrieve_status(reply) == C.RESPONSE_FAILURE
    lines = answer_lines(caplog)
    assert lines and lines[-1]["transaction"] == "ITI-43" and lines[-1]["status"] == "Failure"

    # A mix of a stored and an unknown document: PartialSuccess, logged as such.
    good = deployment.patient()
    req = submission(good, register=False)
    uid = unique_ids(req)["Document01"]
    assert_success(deployment.provide(req, {"Document01": b"kept"}))
    caplog.clear()
    retrieve = retrieve_request(uid, OURS)
    extra = etree.SubElement(retrieve, f"{{{C.NS_XDSB}}}DocumentRequest")
    etree.SubElement(extra, f"{{{C.NS_XDSB}}}RepositoryUniqueId").text = OURS
    etree.SubElement(extra, f"{{{C.NS_XDSB}}}DocumentUniqueId").text = "1.2.250.1.999.1.434343"
    reply = SoapClient(deployment.repository.url + "/xds/repository", timeout=60,
                       spool_dir=str(deployment.repository.settings.data)).call(C.ACTION_RETRIEVE, retrieve)
    assert reply.body.find("rs:RegistryResponse", NS).get("status") == C.RESPONSE_PARTIAL_SUCCESS
    lines = answer_lines(caplog)
    assert lines and lines[-1]["status"] == "PartialSuccess" and lines[-1]["error_codes"]

    # A plain Success leaves no such line.
    caplog.clear()
    assert_success(deployment.register(submission(good, register=True)))
    assert answer_lines(caplog) == []


def retrieve_status(reply) -> str:
    return reply.body.find("rs:RegistryResponse", NS).get("status")


def document_bytes(reply) -> bytes:
    parts = list(reply.mtom.parts.values()) if reply.mtom is not None else []
    assert len(parts) == 1, reply.raw[:300]
    return parts[0].read_bytes()


# --- MIME framing with bare LF -----------------------------------------------------------------

def _bare_lf_body(envelope: bytes, document: bytes, boundary: str = "MIMEBoundary_bare") -> tuple[bytes, str]:
    b = boundary.encode()
    body = (b"--" + b + b"\n"
            b"Content-Type: application/xop+xml; charset=UTF-8; type=\"application/soap+xml\"\n"
            b"Content-Transfer-Encoding: binary\n"
            b"Content-ID: <root.message@example.org>\n"
            b"\n" + envelope + b"\n"
            b"--" + b + b"\n"
            b"Content-Type: application/octet-stream\n"
            b"Content-Transfer-Encoding: binary\n"
            b"Content-ID: <doc1@example.org>\n"
            b"\n" + document + b"\n"
            b"--" + b + b"--\n")
    ctype = (f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; '
             f'start="<root.message@example.org>"; start-info="application/soap+xml"; '
             f'action="{C.ACTION_PROVIDE}"')
    return body, ctype


def _pnr_envelope(pid: str) -> tuple[bytes, str]:
    req = submission(pid, register=False)
    uid = unique_ids(req)["Document01"]
    pnr = etree.Element(f"{{{C.NS_XDSB}}}ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": C.NS_XDSB})
    pnr.append(req)
    doc = etree.SubElement(pnr, f"{{{C.NS_XDSB}}}Document", id="Document01")
    etree.SubElement(doc, f"{{{C.NS_XOP}}}Include", href="cid:doc1@example.org")
    s, a = C.NS_SOAP12, C.NS_WSA
    env = etree.Element(f"{{{s}}}Envelope", nsmap={"s": s, "a": a})
    header = etree.SubElement(env, f"{{{s}}}Header")
    etree.SubElement(header, f"{{{a}}}Action", {f"{{{s}}}mustUnderstand": "1"}).text = C.ACTION_PROVIDE
    etree.SubElement(header, f"{{{a}}}MessageID").text = "urn:uuid:0a1b2c3d-1111-2222-3333-444455556666"
    etree.SubElement(env, f"{{{s}}}Body").append(pnr)
    return etree.tostring(env), uid


def _post(services: Services, body: bytes, ctype: str) -> tuple[int, bytes]:
    host, port = services.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/xds/repository", body=body, headers={"Content-Type": ctype})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


# Content that would expose any CR/LF rewriting: CRLF, bare CR and LF inside, and a CR at the end.
AWKWARD = b"line one\r\nline two\nline three\r\r\n\n--not-a-boundary\r\nend\r"


def test_bare_lf_framing_is_refused_by_default_with_the_crlf_message(deployment):
    pid = deployment.patient()
    env, uid = _pnr_envelope(pid)
    body, ctype = _bare_lf_body(env, AWKWARD)
    status, data = _post(deployment.repository, body, ctype)
    assert status == 400
    text = data.decode()
    assert "bare LF" in text and "CRLF" in text and "RFC 2046" in text
    assert "never occurs" not in text
    assert deployment.get_by_unique_id(uid) == []


def test_bare_lf_framing_is_accepted_intact_when_lenient(tmp_path):
    one = _start(tmp_path, "lenient", role="all", mime_bare_lf=True)
    try:
        dep = Deployment(one, one)
        pid = dep.patient()
        env, uid = _pnr_envelope(pid)
        body, ctype = _bare_lf_body(env, AWKWARD)
        status, data = _post(one, body, ctype)
        assert status == 200, data
        assert b"ResponseStatusType:Success" in data
        got = dep.retrieve(uid)
        assert retrieve_status(got) == C.RESPONSE_SUCCESS
        assert document_bytes(got) == AWKWARD
        entry = dep.get_by_unique_id(uid)[0]
        assert slot_value(entry, "hash") == [hashlib.sha1(AWKWARD).hexdigest()]
        assert slot_value(entry, "size") == [str(len(AWKWARD))]
    finally:
        one.stop()


def test_crlf_framing_still_works_when_lenient(tmp_path):
    one = _start(tmp_path, "lenient2", role="all", mime_bare_lf=True)
    try:
        dep = Deployment(one, one)
        pid = dep.patient()
        req = submission(pid, register=False)
        uid = unique_ids(req)["Document01"]
        assert_success(dep.provide(req, {"Document01": AWKWARD}))
        assert document_bytes(dep.retrieve(uid)) == AWKWARD
    finally:
        one.stop()
