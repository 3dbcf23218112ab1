"""The CDA R2 header coherence checks of the DMP profile (xds/validation/cda.py, PROFILE.md B-14, B-16, B-24,
B-30, B-31), run by the repository on each ITI-41 document before it stores anything.

Shown three ways: the checks on a document and its DocumentEntry; the ITI-41 handler of a repository under
profile dmp, refusing (nothing kept) or, lenient, answering Success with a Warning of the same code; and a
running `xds serve --profile dmp` refusing over HTTP, with nothing in its databases or on its disk.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import sqlalchemy as sa
from lxml import etree

from node.transfer import provide_and_register
from registry import schema as RS
from registry.config import RegistryConfig
from registry.service import RegistryActor
from repository import schema as PS
from repository.forward import InProcessRegistry
from repository.provide import Provide
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.ebrim import parse_submission, read_response_errors
from xds.errors import ErrorList, XdsException
from xds.mtom import resolve_xop
from xds.validation import cda
from tests import dmp_messages as M
from tests.test_provide import Repo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATRIX = os.path.join(ROOT, "tests", "fixtures", "policy", "habilitations-unofficial.toml")
PACK = os.path.join(ROOT, "..", "shared", "testkits", "dmp", "k-jefferson", "Dehempe", "docs", "package_dmp",
                    "DMP_LPS_Exemple_de_messages_1.0.1_1_-_v02.05.00")
TD21 = os.path.join(PACK, "TD2.1_-_Alimentation_requete.xml")
RIM = f"{{{C.NS_RIM}}}"
V3 = f"{{{cda.NS_CDA}}}"
DOC = "Document01"
PATIENT = M.patient_id(M.ins(51), date=M.INS_DATE)

CDA_CODES = (cda.CDA_UNIQUE_ID, cda.CDA_PATIENT, cda.CDA_TYPE_CODE, cda.CDA_CONFIDENTIALITY, cda.CDA_HEADER)


def entry_of(sub: M.Submission, ident: str = DOC):
    return next(de for de in parse_submission(sub.request).document_entries if de.id == ident)


def edited(content: bytes, change) -> bytes:
    """The CDA with its parsed tree changed by change(root)."""
    root = etree.fromstring(content)
    change(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def remove(root: etree._Element, path: str) -> None:
    for el in root.findall(path, {"v3": cda.NS_CDA}):
        el.getparent().remove(el)


# Each rule broken once; (code, attribute the codeContext names, how the document differs).
BROKEN = {
    "uniqueId": (cda.CDA_UNIQUE_ID, "uniqueId", {"cda_id": "1.2.250.1.999.1.1.7898.4.9956570902"}),
    "patient": (cda.CDA_PATIENT, "patientId", {"cda_patient": M.ins(52)}),
    "typeCode": (cda.CDA_TYPE_CODE, "typeCode", {"cda_code": M.TYPE_SUMMARY}),
    "confidentiality": (cda.CDA_CONFIDENTIALITY, "confidentialityCode", {"cda_confidentiality": "R"}),
}


def broken_document(case: str) -> M.Document:
    return M.Document(patient=PATIENT, **BROKEN[case][2])


# --- the checks -------------------------------------------------------------------------------------------

def test_a_coherent_cda_has_no_problem():
    sub = M.submission(PATIENT)
    d = sub.documents[DOC]
    assert cda.wants_check(entry_of(sub), d.content[:cda.HEAD_BYTES])
    assert cda.check(entry_of(sub), d.content) == []


def test_a_uniqueid_with_an_extension_is_root_and_extension():
    d = M.Document(patient=PATIENT, unique_id="1.2.250.1.999.1.1.7898.9^DOC-42")
    sub = M.submission(PATIENT, d)
    ident = etree.fromstring(d.content).find(V3 + "id")
    assert (ident.get("root"), ident.get("extension")) == ("1.2.250.1.999.1.1.7898.9", "DOC-42")
    assert cda.check(entry_of(sub), d.content) == []
    other = edited(d.content, lambda r: r.find(V3 + "id").set("extension", "DOC-43"))
    assert [p.code for p in cda.check(entry_of(sub), other)] == [cda.CDA_UNIQUE_ID]


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_mismatch_has_its_code_and_names_the_entry_and_attribute(case):
    code, attribute, _ = BROKEN[case]
    d = broken_document(case)
    sub = M.submission(PATIENT, d)
    de = entry_of(sub)
    problems = cda.check(de, d.content)
    assert [(p.code, p.attribute) for p in problems] == [(code, attribute)]
    errors = ErrorList()
    cda.report(errors, de, problems)
    (e,) = errors.items
    assert (e.code, e.location, e.severity) == (code, DOC, C.SEVERITY_ERROR)
    assert e.message.startswith(f"DocumentEntry '{DOC}' (uniqueId {d.unique_id}) {attribute}: "), e.message


def test_the_patient_is_matched_on_id_and_authority_among_the_cda_s_ids():
    d = M.Document(patient=PATIENT)
    de = entry_of(M.submission(PATIENT, d))

    def add_local_id(root):
        role = root.find(f"{V3}recordTarget/{V3}patientRole")
        local = etree.Element(V3 + "id", root="1.2.250.1.999.1.1.7898.2", extension="0456789999")
        role.insert(0, local)

    assert cda.check(de, edited(d.content, add_local_id)) == []
    # The same matricule under another authority is another patient.
    other_root = edited(d.content, lambda r: r.find(f"{V3}recordTarget/{V3}patientRole/{V3}id").set(
        "root", "1.2.250.1.213.1.4.8"))
    assert [p.code for p in cda.check(de, other_root)] == [cda.CDA_PATIENT]


def test_the_first_hl7_confidentiality_code_is_compared():
    d = M.Document(patient=PATIENT, confidentiality=(M.MASQUE_PS, M.RESTRICTED))
    de = entry_of(M.submission(PATIENT, d))
    assert cda.check(de, d.content) == []  # the CDA carries R
    normal = edited(d.content, lambda r: r.find(V3 + "confidentialityCode").set("code", "N"))
    assert [p.code for p in cda.check(de, normal)] == [cda.CDA_CONFIDENTIALITY]


HEADER_BREAKS = {
    "realmCode": lambda r: remove(r, "v3:realmCode"),
    "realmCode US": lambda r: r.find(V3 + "realmCode").set("code", "US"),
    "HL7 France templateId": lambda r: remove(r, "v3:templateId[@root='2.16.840.1.113883.2.8.2.1']"),
    "CI-SIS templateId": lambda r: remove(r, "v3:templateId[@root='1.2.250.1.213.1.1.1.1']"),
}


@pytest.mark.parametrize("case", sorted(HEADER_BREAKS))
def test_the_ci_sis_header(case):
    d = M.Document(patient=PATIENT)
    de = entry_of(M.submission(PATIENT, d))
    problems = cda.check(de, edited(d.content, HEADER_BREAKS[case]))
    assert [p.code for p in problems] == [cda.CDA_HEADER]
    assert problems[0].attribute.startswith("CDA ")


@pytest.mark.parametrize("content", [b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id root='1.2'/>",
                                     b"not XML at all", b"", b"<!DOCTYPE x [<!ENTITY e 'e'>]><x>&e;</x>",
                                     b"<Signature xmlns='http://www.w3.org/2000/09/xmldsig#'/>",
                                     b"<ClinicalDocument><id root='1.2'/></ClinicalDocument>"])
def test_an_xml_document_that_is_no_readable_cda(content):
    de = entry_of(M.submission(PATIENT))
    problems = cda.check(de, content)
    assert [(p.code, p.attribute) for p in problems] == [(cda.CDA_HEADER, "document")]


def test_which_documents_are_read_as_cda():
    sub = M.submission(PATIENT, M.Document(patient=PATIENT, mime_type="application/pdf"))
    pdf_entry, content = entry_of(sub), sub.documents[DOC].content
    assert cda.wants_check(pdf_entry, content[:cda.HEAD_BYTES])  # a CDA, whatever its mimeType says
    assert not cda.wants_check(pdf_entry, b"%PDF-1.4\n...")
    for head in (b"\xef\xbb\xbf<ClinicalDocument xmlns='urn:hl7-org:v3'>",
                 b"<?xml version='1.0'?>\n<!-- a comment -->\n<?xml-stylesheet href='cda.xsl'?>\n<v3:ClinicalDocument ",
                 b"  <ClinicalDocument>"):
        assert cda.starts_as_cda(head), head
    assert not cda.starts_as_cda(b"<ClinicalDocumentX>") and not cda.starts_as_cda(b"<x/><ClinicalDocument>")
    # text/xml is read as a CDA, except the signature document (a XAdES signature).
    sub = M.submission(PATIENT)
    assert cda.wants_check(entry_of(sub), b"<x/>")
    assert not cda.wants_check(entry_of(sub, "Signature01"), sub.documents["Signature01"].content)


def test_report_lenient_makes_warnings():
    d = broken_document("uniqueId")
    de = entry_of(M.submission(PATIENT, d))
    errors = ErrorList()
    cda.report(errors, de, cda.check(de, d.content), lenient=True)
    assert not errors.has_errors and [(w.code, w.severity) for w in errors.warnings] == [
        (cda.CDA_UNIQUE_ID, C.SEVERITY_WARNING)]


@pytest.mark.skipif(not os.path.exists(TD21), reason="the shared DMP test kit is not on this machine")
def test_the_official_td21_cda_breaks_only_the_uniqueid_rule():
    """PROVENANCE.md: its DocumentEntry uniqueId is not the attached CDA's id; the header, the patient, the
    typeCode and the confidentiality agree."""
    raw = open(TD21, "rb").read()
    end = b"</soap:Envelope>"
    envelope = etree.fromstring(raw[raw.find(b"<soap:Envelope"):raw.find(end) + len(end)])
    request = next(envelope.iter(C.q(C.NS_XDSB, "ProvideAndRegisterDocumentSetRequest")))
    de = next(d for d in parse_submission(request).document_entries if d.id == "DocumentME2")
    content = raw[raw.find(b"<ClinicalDocument"):raw.find(b"</ClinicalDocument>") + len(b"</ClinicalDocument>")]
    assert cda.wants_check(de, content[:cda.HEAD_BYTES])
    assert [p.code for p in cda.check(de, content)] == [cda.CDA_UNIQUE_ID]


# --- the repository's ITI-41 handler ---------------------------------------------------------------------

class DmpRepo(Repo):
    """test_provide's repository, under profile dmp on both actors."""

    def __init__(self, tmp_path, db_url, lenient=False):
        super().__init__(tmp_path, db_url)
        self.actor = RegistryActor(self.registry_store, RegistryConfig(profile="dmp", check_patients=False))
        self.handler = Provide(self.blobs, self.store, InProcessRegistry(self.actor), M.DMP_REPOSITORY, 10_000_000,
                               profile="dmp", lenient=lenient)

    def provide_dmp(self, sub: M.Submission, inline: bool = False):
        sor = sub.request.find(C.q(C.NS_LCM, "SubmitObjectsRequest"))
        pnr, attachments = provide_and_register(sor, {i: d.content for i, d in sub.documents.items()}, inline=inline)
        message = None if inline else self.message(attachments)
        try:
            return self.handler(pnr, message, resolve_xop(pnr, message) if message is not None else None)
        finally:
            if message is not None:
                message.cleanup()


@pytest.fixture
def strict(tmp_path, sqlite_url):
    return DmpRepo(tmp_path, sqlite_url)


@pytest.fixture
def lenient(tmp_path, sqlite_url):
    return DmpRepo(tmp_path, sqlite_url, lenient=True)


@pytest.mark.parametrize("inline", [False, True])
def test_a_coherent_submission_is_stored(strict, inline):
    sub = M.submission(PATIENT)
    assert strict.provide_dmp(sub, inline=inline) == []
    assert {strict.store.get(uid).hash for uid in sub.unique_ids} == {d.hash for d in sub.documents.values()}


@pytest.mark.parametrize("inline", [False, True])
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_mismatch_is_refused_and_nothing_is_kept(strict, case, inline):
    code, attribute, _ = BROKEN[case]
    with pytest.raises(XdsException) as info:
        strict.provide_dmp(M.submission(PATIENT, broken_document(case)), inline=inline)
    assert [(e.code, e.location, e.severity) for e in info.value.errors] == [(code, DOC, C.SEVERITY_ERROR)]
    assert f" {attribute}: " in info.value.errors[0].message
    strict.assert_nothing_kept()
    with strict.registry_store.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(RS.registry_object)).scalar() == 0


def test_an_unreadable_cda_is_refused(strict):
    d = M.Document(patient=PATIENT, _content=b"<ClinicalDocument xmlns='urn:hl7-org:v3'>cut short")
    with pytest.raises(XdsException) as info:
        strict.provide_dmp(M.submission(PATIENT, d))
    assert [e.code for e in info.value.errors] == [cda.CDA_HEADER]
    strict.assert_nothing_kept()


def test_cda_problems_come_with_the_metadata_problems(strict):
    sub = M.submission(PATIENT, broken_document("patient"), signature="none")
    with pytest.raises(XdsException) as info:
        strict.provide_dmp(sub)
    assert sorted(e.code for e in info.value.errors) == ["DMPCdaPatient", "DMPSignatureMissing"]
    strict.assert_nothing_kept()


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_lenient_stores_with_a_warning_of_the_same_code(lenient, case):
    code, attribute, _ = BROKEN[case]
    sub = M.submission(PATIENT, broken_document(case))
    warnings = lenient.provide_dmp(sub)
    assert [(w.code, w.location, w.severity) for w in warnings] == [(code, DOC, C.SEVERITY_WARNING)]
    assert f" {attribute}: " in warnings[0].message
    for uid in sub.unique_ids:
        assert lenient.store.get(uid) is not None


def test_lenient_does_not_relax_the_metadata_rules(lenient):
    with pytest.raises(XdsException) as info:
        lenient.provide_dmp(M.submission(PATIENT, broken_document("uniqueId"), signature="none"))
    assert [(e.code, e.severity) for e in info.value.errors] == [("DMPSignatureMissing", C.SEVERITY_ERROR),
                                                                  (cda.CDA_UNIQUE_ID, C.SEVERITY_WARNING)]
    lenient.assert_nothing_kept()


def test_the_ihe_profile_reads_no_cda(tmp_path, sqlite_url):
    repo = Repo(tmp_path, sqlite_url)
    repo.registry_store.add_patient("P51^^^&1.2.250.1.999.51&ISO")
    request = builder.simple_submission("P51^^^&1.2.250.1.999.51&ISO", 1, register=False,
                                        doc_kwargs={"mime_type": "text/xml"})
    content = M.Document(patient=PATIENT, cda_id="1.2.3", cda_patient=M.ins(52)).content
    assert repo.send(request, {DOC: content}) == []


# --- over HTTP: `xds serve --profile dmp` --------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp, name: str, *args: str):
        self.data = str(tmp / name)
        self.log = str(tmp / f"{name}.log")
        self.port = free_port()
        self.args = ["serve", "--port", str(self.port), "--data", self.data, "--profile", "dmp", "--security", "none",
                     "--habilitation-matrix", MATRIX, "--no-patient-check", "--repository-id", M.DMP_REPOSITORY,
                     *args]
        self.proc = None

    def __enter__(self) -> "Server":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", *self.args], cwd=ROOT,
                                         stdout=subprocess.PIPE, stderr=log)
        line = self.proc.stdout.readline().decode()
        if "xds:" not in line:
            self.__exit__()
            with open(self.log) as f:
                raise AssertionError(f.read())
        self.engine = sa.create_engine(f"sqlite:///{os.path.abspath(self.data)}/registry.db")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc.stdout.close()
        if hasattr(self, "engine"):
            self.engine.dispose()

    def provide(self, sub: M.Submission):
        reply = SoapClient(f"http://127.0.0.1:{self.port}/xds/repository", 30).call(
            C.ACTION_PROVIDE, sub.request, attachments=sub.attachments)
        assert not reply.is_fault, reply.raw[:2000]
        return read_response_errors(reply.body)

    def held(self) -> tuple[int, int, list[str]]:
        """(registry objects, repository documents, files under the document store)."""
        with self.engine.connect() as c:
            objects = c.execute(sa.select(sa.func.count()).select_from(RS.registry_object)).scalar()
            documents = c.execute(sa.select(sa.func.count()).select_from(PS.document)).scalar()
        root = os.path.join(self.data, "documents")
        files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
        return objects, documents, files


@pytest.mark.parametrize("case", ["uniqueId", "patient"])
def test_over_http_a_refused_iti41_stores_nothing(tmp_path, case):
    code = BROKEN[case][0]
    with Server(tmp_path, "strict") as server:
        assert server.held() == (0, 0, [])
        status, errors = server.provide(M.submission(PATIENT, broken_document(case)))
        assert (status, [(e.code, e.location) for e in errors]) == (C.RESPONSE_FAILURE, [(code, DOC)])
        assert server.held() == (0, 0, [])
        # The coherent submission is accepted, and stored.
        sub = M.submission(PATIENT)
        assert server.provide(sub) == (C.RESPONSE_SUCCESS, [])
        objects, documents, files = server.held()
        assert documents == 2 and len(files) == 2 and objects > 0


def test_over_http_lenient_answers_success_with_the_warning(tmp_path):
    with Server(tmp_path, "lenient", "--lenient") as server:
        sub = M.submission(PATIENT, broken_document("uniqueId"))
        status, errors = server.provide(sub)
        assert status == C.RESPONSE_SUCCESS
        assert [(e.code, e.location, e.severity) for e in errors] == [(cda.CDA_UNIQUE_ID, DOC, C.SEVERITY_WARNING)]
        assert server.held()[1] == 2


def test_inline_documents_are_decoded_for_the_check_only_as_far_as_needed(strict, monkeypatch):
    """A large inline document is not decoded twice to decide it is no CDA: the first block says so."""
    pdf = b"%PDF-1.4\n" + os.urandom(3 * 1024 * 1024)
    d = M.Document(patient=PATIENT, mime_type="application/pdf", _content=pdf)
    sub = M.submission(PATIENT, d)
    seen = []
    real = cda.wants_check
    monkeypatch.setattr(cda, "wants_check", lambda de, head: seen.append(len(head)) or real(de, head))
    assert strict.provide_dmp(sub, inline=True) == []
    assert seen and max(seen) <= cda.HEAD_BYTES
