"""The French DMP profile over real HTTP (issue 14): `xds serve --profile dmp --security none` (the metadata-only
mode, where the caller is the administrator), all in one process and split into a registry and repository hosts,
on SQLite and on a real PostgreSQL.

Each deployment runs a strict side and a `--lenient` side. All in one, they are two processes with their own
databases; split, they are two repository hosts of one registry. Patients are fed before the start as an IHE
feed writes an INS, bare (`INS^^^&1.2.250.1.213.1.4.10&ISO`); the documents are submitted with the CX.5 `NH`
and the CX.7 date of the official examples. The messages come from tests/dmp_messages.py, conformant unless a
test breaks one rule. Every refusal is shown next to the allowed variant succeeding, and a refused submission
is shown to leave nothing behind, in the registry's database and on the repository host.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from lxml import etree

from registry import schema as RS
from repository import schema as PS
from xds import constants as C
from xds import errors as E
from xds import hl7
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.mtom import href_to_cid
from tests import dmp_messages as M
from tests import pgserver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATRIX = os.path.join(ROOT, "tests", "fixtures", "policy", "habilitations-unofficial.toml")
RIM = f"{{{C.NS_RIM}}}"
SUCCESS, FAILURE = C.RESPONSE_SUCCESS, C.RESPONSE_FAILURE
APPROVED, DEPRECATED = C.STATUS_APPROVED, C.STATUS_DEPRECATED
ARCHIVED, DELETED = C.STATUS_ARCHIVED, C.STATUS_DELETED
EVERY_STATUS = (APPROVED, DEPRECATED, ARCHIVED, DELETED)
LENIENT_REPOSITORY = "1.2.250.1.999.3.77"

# Codes outside the DMP value sets (a local code system, or a LOINC code J07 does not list).
LOCAL_TYPE: M.Code = ("CR-LOCAL", "1.2.250.1.999.1.1.7898.5", "Compte rendu (code local)")
LOINC_NOT_IN_J07: M.Code = ("55107-7", M.LOINC, "Addendum")
LOCAL_FORMAT: M.Code = ("PDF-LOCAL", "1.2.250.1.999.1.1.7898.4", "PDF (code local)")
LOCAL_CONTENT_TYPE: M.Code = ("HOSPIT", "1.2.250.1.999.1.1.7898.6", "Hospitalisation (code local)")
CCAM_ECG: M.Code = ("DEKA001", "1.2.250.1.213.2.5", "Electrocardiographie")
# An author known by a local id only: no IdNat_PS (RPPS), no IDNPS type.
LOCAL_AUTHOR = M.xcn("LOC4711", authority="1.2.250.1.999.1.1.7898.3", type_code=None)


# --- the patients ---------------------------------------------------------------------------------------

# Table B: one patient per rule, so that "nothing stored" can be read from the patient's own records.
TABLE_B = ("author", "type", "format", "content-type", "no-signature", "signs-target", "signature-codes",
           "cda-id", "cda-patient")
NAMES = ("feed", "forms", "retrieve", "mask", "archive", "delete", "replace", "replace-other", "legacy",
         "lenient", "lenient-rules", *(f"b-{case}" for case in TABLE_B))
PATIENTS = {name: M.ins(n) for n, name in enumerate(NAMES, start=1)}
STRANGER = M.ins(999)  # never fed


def bare(name: str) -> str:
    """As an IHE feed writes it: CX.1 and CX.4 only."""
    return M.patient_id(PATIENTS[name], nh=False)


def nh(name: str) -> str:
    return M.patient_id(PATIENTS[name])


def dated(name: str) -> str:
    """As the official examples submit it: ^NH^^20100907."""
    return M.patient_id(PATIENTS[name], date=M.INS_DATE)


FED = [bare(n) for n in NAMES] + [M.patient_id(PATIENTS["legacy"], root=M.LEGACY_INS_C, nh=False)]


# --- the deployments ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


class Serve:
    """One `xds serve` process on 127.0.0.1 with its own data folder, logging to a file."""

    def __init__(self, tmp, name: str, *args: str):
        self.data = str(tmp / name)
        self.log = str(tmp / f"{name}.log")
        self.port = free_port()
        self.args = ["serve", "--port", str(self.port), "--data", self.data, "--profile", "dmp", "--security", "none",
                     "--habilitation-matrix", MATRIX, *args]
        self.proc = None

    def launch(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", *self.args], cwd=ROOT,
                                         stdout=subprocess.PIPE, stderr=log)

    def wait_ready(self) -> None:
        line = self.proc.stdout.readline().decode()
        if "xds:" not in line:
            with open(self.log) as f:
                raise AssertionError(f.read())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        if self.proc is not None:
            self.proc.stdout.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{os.path.abspath(self.data)}/registry.db"


@dataclass
class Side:
    """Where one side of a deployment is reached, and the databases it keeps."""

    feed: str              # ITI-41: the repository endpoint
    registry: str          # ITI-18, ITI-57, and ITI-43 routed to the repository hosts
    host: str              # ITI-43 sent straight to the repository endpoint that holds the bytes
    repository_id: str
    registry_db: sa.Engine
    host_db: sa.Engine
    host_data: str
    in_process: bool       # the repository runs in the registry's process


@dataclass
class Deployment:
    name: str
    strict: Side
    lenient: Side
    engines: list = field(default_factory=list)


DEPLOYMENTS = [("all-in-one", "sqlite"), ("all-in-one", "postgresql"), ("split", "sqlite"), ("split", "postgresql")]


@pytest.fixture(scope="module", params=DEPLOYMENTS, ids=["-".join(p) for p in DEPLOYMENTS])
def dmp(request, tmp_path_factory):
    kind, backend = request.param
    if backend == "postgresql" and not pgserver.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing; .ci/run installs them")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    tmp = tmp_path_factory.mktemp(f"dmp-{kind}-{backend}")

    def database(proc: Serve) -> str:
        if backend == "sqlite":
            return proc.sqlite_url
        from tests.conftest import _dbs, _pg_admin_url

        return pgserver.create_database(_pg_admin_url(), f"xds_dmp_http_{os.getpid()}_{next(_dbs)}")

    engines: list[sa.Engine] = []

    def engine(url: str) -> sa.Engine:
        engines.append(sa.create_engine(url))
        return engines[-1]

    if kind == "all-in-one":
        strict = Serve(tmp, "strict", "--repository-id", M.DMP_REPOSITORY)
        lenient = Serve(tmp, "lenient", "--repository-id", LENIENT_REPOSITORY, "--lenient")
        sides = {}
        for name, proc, rid in (("strict", strict, M.DMP_REPOSITORY), ("lenient", lenient, LENIENT_REPOSITORY)):
            db = database(proc)
            proc.args += ["--db", db]
            db_engine = engine(db)
            sides[name] = Side(proc.url + "/xds/repository", proc.url + "/xds/registry", proc.url + "/xds/repository",
                               rid, db_engine, db_engine, proc.data, True)
        procs = [strict, lenient]
        fed = [strict.url, lenient.url]
    else:
        registry = Serve(tmp, "registry", "--role", "registry")
        db = database(registry)
        registry.args += ["--db", db]
        hosts = {"strict": (Serve(tmp, "host-strict", "--role", "repository", "--repository-id", M.DMP_REPOSITORY,
                                  "--registry-url", registry.url + "/xds/registry"), M.DMP_REPOSITORY),
                 "lenient": (Serve(tmp, "host-lenient", "--role", "repository", "--repository-id", LENIENT_REPOSITORY,
                                   "--registry-url", registry.url + "/xds/registry", "--lenient"), LENIENT_REPOSITORY)}
        cli("db", "--db", db, "--data", registry.data, "--role", "registry", "upgrade")  # for the directory
        registry_engine = engine(db)
        sides = {}
        for name, (host, rid) in hosts.items():
            # The registry's directory: where it routes the ITI-43 of each repositoryUniqueId.
            cli("repository", "--db", db, "--data", registry.data, "add", rid, host.url + "/xds/repository")
            sides[name] = Side(host.url + "/xds/repository", registry.url + "/xds/registry",
                               host.url + "/xds/repository", rid, registry_engine, engine(host.sqlite_url), host.data,
                               False)
        procs = [registry, *(h for h, _ in hosts.values())]
        fed = [registry.url]
    started = []
    try:
        for p in procs:
            p.launch()
            started.append(p)
        for p in procs:
            p.wait_ready()
        for url in fed:  # through each registry's administration endpoint (the loopback administrator)
            cli("patient", "add", *FED, "--url", url)
        yield Deployment(f"{kind}-{backend}", sides["strict"], sides["lenient"], engines)
    finally:
        for p in started:
            p.stop()
        for e in engines:
            e.dispose()


# --- talking to a deployment ----------------------------------------------------------------------------

def call(url: str, action: str, body: etree._Element, **kw):
    reply = SoapClient(url, 30).call(action, body, **kw)
    assert not reply.is_fault, reply.raw[:2000]
    return reply


def codes(errors, severity: str = C.SEVERITY_ERROR) -> list[str]:
    return sorted({e.code for e in errors if e.severity == severity})


def provide(side: Side, sub: M.Submission) -> tuple[str, list]:
    """ITI-41 (TD2.1): (status, errors)."""
    return read_response_errors(call(side.feed, C.ACTION_PROVIDE, sub.request, attachments=sub.attachments).body)


def provided(side: Side, sub: M.Submission) -> None:
    status, errors = provide(side, sub)
    assert (status, errors) == (SUCCESS, []), [(e.code, e.message) for e in errors]


def update(side: Side, request: etree._Element) -> tuple[str, list]:
    """ITI-57 (TD3.3): (status, errors)."""
    return read_response_errors(call(side.registry, C.ACTION_UPDATE, request).body)


def updated(side: Side, request: etree._Element) -> None:
    status, errors = update(side, request)
    assert (status, errors) == (SUCCESS, []), [(e.code, e.message) for e in errors]


def query(side: Side, request: etree._Element) -> etree._Element:
    """ITI-18 (TD3.1): the AdhocQueryResponse, which must be a Success."""
    body = call(side.registry, C.ACTION_QUERY, request).body
    status, errors = read_response_errors(body)
    assert (status, errors) == (SUCCESS, []), [(e.code, e.message) for e in errors]
    return body


@dataclass
class Entry:
    """A DocumentEntry of a LeafClass answer."""

    id: str
    lid: str
    version: str
    status: str
    unique_id: str
    patient: str
    title: str
    codes: dict[str, set]


def entries(body: etree._Element) -> dict[str, Entry]:
    """uniqueId -> the DocumentEntry (one version per uniqueId in these answers)."""
    out = {}
    for eo in body.iter(RIM + "ExtrinsicObject"):
        ids = {ei.get("identificationScheme"): ei.get("value") for ei in eo.iter(RIM + "ExternalIdentifier")}
        coded: dict[str, set] = {}
        for cl in eo.iter(RIM + "Classification"):
            scheme = cl.find(f"{RIM}Slot[@name='codingScheme']/{RIM}ValueList/{RIM}Value")
            coded.setdefault(cl.get("classificationScheme"), set()).add(
                (cl.get("nodeRepresentation"), scheme.text if scheme is not None else None))
        version = eo.find(RIM + "VersionInfo")
        uid = ids[C.DE_UNIQUE_ID]
        assert uid not in out, f"two versions of {uid} in one answer"
        out[uid] = Entry(eo.get("id"), eo.get("lid"), version.get("versionName") if version is not None else "",
                         eo.get("status"), uid, ids[C.DE_PATIENT_ID],
                         eo.find(f"{RIM}Name/{RIM}LocalizedString").get("value"), coded)
    return out


def submission_sets(body: etree._Element) -> set[str]:
    return {ei.get("value") for ei in body.iter(RIM + "ExternalIdentifier")
            if ei.get("identificationScheme") == C.SS_UNIQUE_ID}


def objects_in(body: etree._Element) -> list[etree._Element]:
    found = body.find(RIM + "RegistryObjectList")
    return [] if found is None else list(found)


def find(side: Side, patient: str, statuses=(APPROVED,)) -> dict[str, Entry]:
    return entries(query(side, M.find_documents(patient, statuses)))


def retrieve(url: str, repository_id: str, *uids: str) -> tuple[str, list, dict[str, bytes]]:
    """ITI-43 (TD3.2): (status, errors, {uniqueId: bytes})."""
    reply = call(url, C.ACTION_RETRIEVE, M.retrieve(repository_id, *uids), use_mtom=True)
    status, errors = read_response_errors(reply.body.find(C.q(C.NS_RS, "RegistryResponse")))
    got = {}
    try:
        for dr in reply.body.iterchildren(C.q(C.NS_XDSB, "DocumentResponse")):
            inc = dr.find(f"{C.q(C.NS_XDSB, 'Document')}/{C.q(C.NS_XOP, 'Include')}")
            got[dr.findtext(C.q(C.NS_XDSB, "DocumentUniqueId"))] = \
                reply.mtom.parts[href_to_cid(inc.get("href"))].read_bytes()
    finally:
        if reply.mtom:
            reply.mtom.cleanup()
    return status, errors, got


def retrieve_endpoints(side: Side) -> list[str]:
    """ITI-43 at the repository endpoint, and through the registry's endpoint that routes it to the host."""
    return [side.host, side.registry]


def deciding_endpoints(side: Side) -> list[str]:
    """The ITI-43 endpoints where the registry decides what is served: its own, and the repository endpoint of
    its process. A separate host cannot know a status; it serves its registry (which decided before routing)
    and its administrators (README, "Access policy"), and under security none every caller is the latter."""
    return [side.registry, side.host] if side.in_process else [side.registry]


def refusal(errors, *ids: str) -> list[tuple[str, str, str, str]]:
    """A refusal's errors with the ids the request named replaced by their position, so that the answers to two
    requests naming different objects compare."""
    out = []
    for e in errors:
        fields = [e.code, e.message, e.location, e.severity]
        for n, i in enumerate(ids):
            fields = [f.replace(i, f"<{n}>") for f in fields]
        out.append(tuple(fields))
    return out


# --- what the deployment holds, read from its databases and its disk --------------------------------------

def registry_rows(side: Side, patient: str) -> dict[str, tuple]:
    """Every registry object of the patient and every association touching one: {id: (kind, status, version)}."""
    o, a = RS.registry_object, RS.association
    with side.registry_db.connect() as c:
        objs = {r.id: (r.kind, r.status, r.version) for r in c.execute(
            sa.select(o.c.id, o.c.kind, o.c.status, o.c.version).where(o.c.patient_id == hl7.patient_key(patient)))}
        links = {r.id: ("association", r.status, None) for r in c.execute(sa.select(a.c.id, a.c.status).where(
            a.c.source.in_(list(objs)) | a.c.target.in_(list(objs))))} if objs else {}
    return {**objs, **links}


def entry_rows(side: Side, uid: str) -> list[tuple[str, str, int]]:
    """(id, status, version) of every stored version of the DocumentEntry with this uniqueId."""
    o = RS.registry_object
    with side.registry_db.connect() as c:
        return sorted((r.id, r.status, r.version) for r in c.execute(
            sa.select(o.c.id, o.c.status, o.c.version).where(o.c.unique_id == uid, o.c.kind == RS.KIND_DOCUMENT_ENTRY)))


def stored_xml(side: Side, patient: str) -> list[tuple[str, str]]:
    o = RS.registry_object
    with side.registry_db.connect() as c:
        return [(r.kind, r.xml) for r in c.execute(
            sa.select(o.c.kind, o.c.xml).where(o.c.patient_id == hl7.patient_key(patient)))]


def host_documents(side: Side) -> set[str]:
    """The uniqueIds the repository host holds, with or without their bytes committed."""
    with side.host_db.connect() as c:
        held = {r.unique_id for r in c.execute(sa.select(PS.document.c.unique_id))}
        pending = {r.unique_id for r in c.execute(sa.select(PS.pending.c.unique_id))}
    return held | pending


def files_on_host(side: Side) -> int:
    root = os.path.join(side.host_data, "documents")
    return sum(len(files) for _, _, files in os.walk(root))


def holdings(side: Side, patient: str) -> tuple:
    return registry_rows(side, patient), host_documents(side), files_on_host(side)


# --- ITI-41: the patient as the examples write it -------------------------------------------------------

def test_feeding_an_ins_submitted_with_nh_and_its_date_keeps_the_id_as_submitted(dmp):
    s = dmp.strict
    sub = M.submission(dated("feed"))
    provided(s, sub)
    doc = sub.documents["Document01"]
    # The query answers the entry (and the signature) with the patientId as it was submitted...
    found = find(s, bare("feed"))
    assert set(found) == set(sub.unique_ids)
    assert {e.patient for e in found.values()} == {dated("feed")}
    # ... and that is what the registry stored, for the SubmissionSet and both DocumentEntries.
    rows = stored_xml(s, bare("feed"))
    assert sorted(kind for kind, _ in rows) == [RS.KIND_DOCUMENT_ENTRY, RS.KIND_DOCUMENT_ENTRY,
                                                RS.KIND_SUBMISSION_SET]
    for _, xml in rows:
        values = {ei.get("value") for ei in etree.fromstring(xml.encode()).iter(RIM + "ExternalIdentifier")
                  if ei.get("identificationScheme") in (C.DE_PATIENT_ID, C.SS_PATIENT_ID)}
        assert values == {dated("feed")}
    assert doc.unique_id in host_documents(s)
    # A patient the registry was never told about is refused.
    before = holdings(s, M.patient_id(STRANGER))
    status, errors = provide(s, M.submission(M.patient_id(STRANGER, date=M.INS_DATE)))
    assert (status, codes(errors)) == (FAILURE, [E.UNKNOWN_PATIENT_ID])
    assert holdings(s, M.patient_id(STRANGER)) == before


# --- ITI-18: any form of the patient finds its documents -----------------------------------------------

def test_queries_find_the_patient_bare_with_nh_or_with_its_date(dmp):
    s = dmp.strict
    sub = M.submission(nh("forms"))
    provided(s, sub)
    doc = sub.documents["Document01"]
    for form in (bare("forms"), nh("forms"), dated("forms")):
        assert doc.unique_id in find(s, form), form
        assert doc.unique_id in entries(query(s, M.get_all(form, (APPROVED,)))), form
        assert sub.ss_unique_id in submission_sets(query(s, M.find_submission_sets(form))), form
    got = entries(query(s, M.get_documents(unique_ids=[doc.unique_id])))
    assert set(got) == {doc.unique_id}
    assert set(entries(query(s, M.get_documents(uuids=[got[doc.unique_id].id])))) == {doc.unique_id}
    # Another INS, in the same forms, finds none of them.
    for form in (M.patient_id(STRANGER, nh=False), M.patient_id(STRANGER), M.patient_id(STRANGER, date=M.INS_DATE)):
        assert find(s, form) == {}
        assert entries(query(s, M.get_all(form, (APPROVED,)))) == {}


# --- ITI-43 --------------------------------------------------------------------------------------------

def test_retrieve_returns_the_bytes_submitted(dmp):
    s = dmp.strict
    sub = M.submission(dated("retrieve"))
    provided(s, sub)
    wanted = {d.unique_id: d.content for d in sub.documents.values()}  # the CDA and the signature
    for url in retrieve_endpoints(s):
        status, errors, got = retrieve(url, s.repository_id, *wanted)
        assert (status, errors) == (SUCCESS, []), (url, [(e.code, e.message) for e in errors])
        assert got == wanted, url
    # An unknown uniqueId gets no bytes.
    for url in retrieve_endpoints(s):
        status, errors, got = retrieve(url, s.repository_id, M.new_oid())
        assert (status, codes(errors), got) == (FAILURE, [E.DOCUMENT_UNIQUE_ID_ERROR], {}), url


# --- ITI-57 metadata update: masking only (TD3.3a, B-34) -----------------------------------------------

def test_masking_is_the_only_metadata_update_and_a_refused_one_changes_nothing(dmp):
    s = dmp.strict
    doc = M.Document(patient=dated("mask"))
    provided(s, M.submission(dated("mask"), doc))
    first = find(s, bare("mask"))[doc.unique_id]
    assert first.version == "1"
    masked = doc.but(confidentiality=(M.NORMAL, M.MASQUE_PS), same_content=True)
    updated(s, M.metadata_update(masked, first.lid, "1", s.repository_id))
    second = find(s, bare("mask"))[doc.unique_id]
    assert (second.lid, second.version, second.status) == (first.lid, "2", APPROVED) and second.id != first.id
    assert second.codes[C.DE_CONFIDENTIALITY_CODE] == {(M.NORMAL[0], M.NORMAL[1]), (M.MASQUE_PS[0], M.MASQUE_PS[1])}
    assert second.patient == dated("mask")
    assert [(i, st) for i, st, _ in entry_rows(s, doc.unique_id)] == sorted([(first.id, DEPRECATED),
                                                                             (second.id, APPROVED)])
    # A new version that also changes the title, the typeCode or an eventCode is refused, naming the attribute.
    before = holdings(s, bare("mask"))
    for attribute, changes in (("title", {"title": "Compte rendu modifié"}),
                               ("typeCode", {"type_code": M.TYPE_SUMMARY}),
                               ("eventCode", {"events": (CCAM_ECG,)})):
        other = masked.but(same_content=True, **changes)
        status, errors = update(s, M.metadata_update(other, first.lid, "2", s.repository_id))
        assert (status, codes(errors)) == (FAILURE, [E.METADATA_UPDATE_ERROR]), attribute
        assert any(attribute in e.message for e in errors), (attribute, [e.message for e in errors])
        assert holdings(s, bare("mask")) == before, attribute
        latest = find(s, bare("mask"))[doc.unique_id]
        assert (latest.id, latest.version, latest.title) == (second.id, "2", doc.title), attribute
        assert latest.codes[C.DE_TYPE_CODE] == {doc.type_code[:2]} and C.DE_EVENT_CODE not in latest.codes
    # Unmasking, the other confidentiality-only change, is accepted as version 3, the patient written without
    # its CX.7 date this time (the same identity, so not a change).
    updated(s, M.metadata_update(doc.but(patient=nh("mask"), same_content=True), first.lid, "2", s.repository_id))
    third = find(s, dated("mask"))[doc.unique_id]
    assert third.version == "3" and third.codes[C.DE_CONFIDENTIALITY_CODE] == {(M.NORMAL[0], M.NORMAL[1])}
    assert third.patient == nh("mask")


# --- ITI-57 UpdateAvailabilityStatus: archiving (TD3.3d) -----------------------------------------------

def test_an_archived_document_is_found_only_when_archived_is_asked_for_and_can_come_back(dmp):
    s = dmp.strict
    doc = M.Document(patient=dated("archive"))
    provided(s, M.submission(dated("archive"), doc))
    entry = find(s, bare("archive"))[doc.unique_id]
    # The SubmissionSet of the change names the patient: another INS is refused and changes nothing; the same
    # INS written without its CX.7 date is the same patient.
    status, errors = update(s, M.status_update(nh("replace-other"), entry.id, APPROVED, ARCHIVED))
    assert (status, codes(errors)) == (FAILURE, [E.PATIENT_ID_DOES_NOT_MATCH])
    assert entry_rows(s, doc.unique_id) == [(entry.id, APPROVED, 1)]
    updated(s, M.status_update(nh("archive"), entry.id, APPROVED, ARCHIVED))
    assert doc.unique_id not in find(s, bare("archive"))
    archived = find(s, bare("archive"), (ARCHIVED,))
    assert set(archived) == {doc.unique_id} and archived[doc.unique_id].status == ARCHIVED
    assert doc.unique_id in find(s, bare("archive"), (APPROVED, ARCHIVED))
    # Archived to Deprecated is not a DMP transition: refused, and the entry stays archived.
    status, errors = update(s, M.status_update(dated("archive"), entry.id, ARCHIVED, DEPRECATED))
    assert (status, codes(errors)) == (FAILURE, [E.METADATA_UPDATE_ERROR])
    assert entry_rows(s, doc.unique_id) == [(entry.id, ARCHIVED, 1)]
    # Back to Approved.
    updated(s, M.status_update(dated("archive"), entry.id, ARCHIVED, APPROVED))
    assert find(s, bare("archive"))[doc.unique_id].status == APPROVED
    assert doc.unique_id not in find(s, bare("archive"), (ARCHIVED,))


# --- ITI-57 UpdateAvailabilityStatus: deletion (TD3.3c) ------------------------------------------------

def test_a_deleted_document_is_answered_as_absent_everywhere_and_kept_in_the_database(dmp):
    s = dmp.strict
    gone, archived_then_gone, kept = (M.Document(patient=dated("delete"), title=t) for t in ("A", "B", "C"))
    sub = M.submission(dated("delete"), gone, archived_then_gone, kept)
    provided(s, sub)
    found = find(s, bare("delete"))
    ids = {d.unique_id: found[d.unique_id].id for d in (gone, archived_then_gone, kept)}
    updated(s, M.status_update(dated("delete"), ids[gone.unique_id], APPROVED, DELETED))
    updated(s, M.status_update(dated("delete"), ids[archived_then_gone.unique_id], APPROVED, ARCHIVED))
    updated(s, M.status_update(dated("delete"), ids[archived_then_gone.unique_id], ARCHIVED, DELETED))
    deleted = [gone, archived_then_gone]
    hidden = [d.unique_id for d in deleted] + [ids[d.unique_id] for d in deleted]
    nowhere = "urn:uuid:00000000-0000-4000-8000-0000000000dd"  # an entryUUID nobody registered

    def absent(body: etree._Element, *, kept_too: bool = True) -> None:
        raw = etree.tostring(body).decode()
        assert not [h for h in hidden if h in raw]
        if kept_too:
            assert kept.unique_id in entries(body)

    # No query answers them, whatever status it asks for, by patient, by uuid or by uniqueId.
    for statuses in ((APPROVED,), (DELETED,), (ARCHIVED,), EVERY_STATUS):
        absent(query(s, M.find_documents(bare("delete"), statuses)), kept_too=APPROVED in statuses)
        absent(query(s, M.get_all(bare("delete"), statuses)), kept_too=APPROVED in statuses)
    absent(query(s, M.get_documents(uuids=list(ids.values()))))
    absent(query(s, M.get_submission_set_and_contents(sub.ss_unique_id)))
    absent(query(s, M.get_documents(unique_ids=list(ids))))
    absent(query(s, M.get_documents(uuids=list(ids.values()), return_type="ObjectRef")), kept_too=False)
    # Asked about by entryUUID alone, they are answered as entryUUIDs nobody registered: nothing (where the
    # entry kept is found with its SubmissionSet and its HasMember association).
    for query_id in (C.SQ_GET_ASSOCIATIONS, C.SQ_GET_SUBMISSION_SETS, C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS):
        assert objects_in(query(s, M.by_entry_uuid(query_id, [ids[kept.unique_id]]))), query_id
    for query_id in (C.SQ_GET_ASSOCIATIONS, C.SQ_GET_SUBMISSION_SETS, C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS,
                     C.SQ_GET_FOLDERS_FOR_DOCUMENT, C.SQ_GET_RELATED_DOCUMENTS):
        types = (C.ASSOC_RPLC, C.ASSOC_SIGNS, C.ASSOC_APND) if query_id == C.SQ_GET_RELATED_DOCUMENTS else ()
        for d in deleted:
            assert objects_in(query(s, M.by_entry_uuid(query_id, [ids[d.unique_id]], association_types=types))) \
                == objects_in(query(s, M.by_entry_uuid(query_id, [nowhere], association_types=types))) == [], query_id
    # ITI-43 answers them exactly as a uniqueId nobody submitted, through the registry's routing and (all in
    # one) at the repository endpoint; the document kept is still served.
    unknown = M.new_oid()
    for url in deciding_endpoints(s):
        _, errors_unknown, _ = retrieve(url, s.repository_id, unknown)
        for d in deleted:
            status, errors, got = retrieve(url, s.repository_id, d.unique_id)
            assert (status, got) == (FAILURE, {}), url
            assert codes(errors) == [E.DOCUMENT_UNIQUE_ID_ERROR], url
            assert refusal(errors, d.unique_id) == refusal(errors_unknown, unknown), url
        status, errors, got = retrieve(url, s.repository_id, kept.unique_id)
        assert (status, errors, got) == (SUCCESS, [], {kept.unique_id: kept.content}), url
    # Nor can it be brought back: its entryUUID is answered as one the registry never held.
    status, errors = update(s, M.status_update(dated("delete"), ids[gone.unique_id], DELETED, APPROVED))
    _, errors_nowhere = update(s, M.status_update(dated("delete"), nowhere, DELETED, APPROVED))
    assert status == FAILURE and refusal(errors, ids[gone.unique_id]) == refusal(errors_nowhere, nowhere)
    status, errors = update(s, M.status_update(dated("delete"), ids[gone.unique_id], APPROVED, ARCHIVED))
    _, errors_nowhere = update(s, M.status_update(dated("delete"), nowhere, APPROVED, ARCHIVED))
    assert status == FAILURE and refusal(errors, ids[gone.unique_id]) == refusal(errors_nowhere, nowhere)
    # Nor replaced, nor given a new version (masked): the same answers as for an entry nobody registered.
    lid = ids[gone.unique_id]  # a first version's logical id is its entryUUID
    answers = []
    for target in (lid, nowhere):
        rplc = M.replacement(gone, target)
        status, errors = provide(s, M.submission(dated("delete"), rplc))
        assert status == FAILURE, target
        answers.append(refusal(errors, target, rplc.unique_id))
        assert entry_rows(s, rplc.unique_id) == []
    assert answers[0] == answers[1] and answers[0], answers
    answers = []
    for target in (lid, nowhere):
        masked = gone.but(confidentiality=(M.NORMAL, M.MASQUE_PS), same_content=True)
        status, errors = update(s, M.metadata_update(masked, target, "1", s.repository_id))
        assert status == FAILURE, target
        answers.append(refusal(errors, target))
    assert answers[0] == answers[1] and answers[0], answers
    # The registry keeps the entries, Deleted, and the host keeps their bytes.
    for d in deleted:
        assert entry_rows(s, d.unique_id) == [(ids[d.unique_id], DELETED, 1)]
        assert d.unique_id in host_documents(s)
    assert entry_rows(s, kept.unique_id) == [(ids[kept.unique_id], APPROVED, 1)]


# --- RPLC (TD2.1 "b", B-33) ----------------------------------------------------------------------------

def test_a_replacement_may_write_the_patient_otherwise_but_not_name_another(dmp):
    s = dmp.strict
    old = M.Document(patient=dated("replace"))
    provided(s, M.submission(dated("replace"), old))
    old_id = find(s, bare("replace"))[old.unique_id].id
    # Another INS (a patient the registry knows): XDSPatientIdDoesNotMatch, and nothing stored.
    before = holdings(s, bare("replace")), holdings(s, bare("replace-other"))
    wrong = M.replacement(old, old_id, patient=dated("replace-other"))
    status, errors = provide(s, M.submission(dated("replace-other"), wrong))
    assert status == FAILURE and E.PATIENT_ID_DOES_NOT_MATCH in codes(errors), [(e.code, e.message) for e in errors]
    assert (holdings(s, bare("replace")), holdings(s, bare("replace-other"))) == before
    assert entry_rows(s, wrong.unique_id) == []
    assert entry_rows(s, old.unique_id) == [(old_id, APPROVED, 1)]
    # The same INS written without its CX.7 date: the replacement is accepted and the old entry deprecated.
    new = M.replacement(old, old_id, patient=nh("replace"))
    provided(s, M.submission(nh("replace"), new))
    found = find(s, dated("replace"))
    assert new.unique_id in found and old.unique_id not in found
    assert found[new.unique_id].patient == nh("replace")
    assert entry_rows(s, old.unique_id) == [(old_id, DEPRECATED, 1)]


# --- B-1: the retired INS-C root -----------------------------------------------------------------------

def test_a_legacy_ins_c_root_is_an_unknown_patient_even_when_fed(dmp):
    s = dmp.strict
    legacy = M.patient_id(PATIENTS["legacy"], root=M.LEGACY_INS_C, date=M.INS_DATE)
    before = holdings(s, legacy)
    status, errors = provide(s, M.submission(legacy))
    assert (status, codes(errors)) == (FAILURE, [E.UNKNOWN_PATIENT_ID]), [(e.code, e.message) for e in errors]
    assert holdings(s, legacy) == before
    # The same matricule under the INS-NIR (test) root is accepted.
    sub = M.submission(dated("legacy"))
    provided(s, sub)
    assert set(find(s, bare("legacy"))) == set(sub.unique_ids)
    assert registry_rows(s, legacy) == {}


# --- Table B refusals ----------------------------------------------------------------------------------

def _table_b(case: str, patient: str, broken: bool) -> M.Submission:
    """The submission of a Table B case: breaking its rule, or (the allowed variant) respecting it."""
    if case == "author":
        author = LOCAL_AUTHOR if broken else M.xcn()
        return M.submission(patient, M.Document(patient=patient, author=author), ss_author=author)
    if case == "type":
        return M.submission(patient, M.Document(patient=patient, type_code=LOCAL_TYPE if broken else M.TYPE_SUMMARY))
    if case == "format":
        return M.submission(patient, M.Document(patient=patient, format_code=LOCAL_FORMAT if broken else M.FORMAT_PDF))
    if case == "content-type":
        return M.submission(patient, content_type=LOCAL_CONTENT_TYPE if broken else M.CONTENT_DAY_HOSPITAL)
    if case == "no-signature":
        return M.submission(patient, signature="none" if broken else "signs")
    if case == "signs-target":
        return M.submission(patient, signature="document" if broken else "signs")
    if case == "signature-codes":
        return M.submission(patient, signature_confidentiality=[M.NORMAL] if broken else M.SIGNATURE_CONFIDENTIALITY)
    if case == "cda-id":
        return M.submission(patient, M.Document(patient=patient, cda_id=M.new_oid() if broken else None))
    if case == "cda-patient":
        other = PATIENTS["b-cda-id"]  # a real, fed INS: only the disagreement is wrong
        return M.submission(patient, M.Document(patient=patient, cda_patient=other if broken else None))
    raise AssertionError(case)


TABLE_B_CODES = {"author": "DMPAuthorNationalId", "type": "DMPTypeCode", "format": "DMPFormatCode",
                 "content-type": "DMPContentTypeCode", "no-signature": "DMPSignatureMissing",
                 "signs-target": "DMPSignatureTarget", "signature-codes": "DMPSignatureMetadata",
                 "cda-id": "DMPCdaUniqueId", "cda-patient": "DMPCdaPatient"}


@pytest.mark.parametrize("case", TABLE_B)
def test_table_b_refusal_stores_nothing_and_the_conformant_variant_is_accepted(dmp, case):
    s, patient = dmp.strict, dated(f"b-{case}")
    before = holdings(s, patient)
    broken = _table_b(case, patient, broken=True)
    status, errors = provide(s, broken)
    assert status == FAILURE and TABLE_B_CODES[case] in codes(errors), [(e.code, e.message) for e in errors]
    assert holdings(s, patient) == before
    assert find(s, bare(f"b-{case}")) == {}
    for uid in broken.unique_ids:
        assert entry_rows(s, uid) == []
        assert retrieve(s.registry, s.repository_id, uid)[0] == FAILURE
    allowed = _table_b(case, patient, broken=False)
    provided(s, allowed)
    assert set(find(s, bare(f"b-{case}"))) == set(allowed.unique_ids)


# Second forms of two rules: the broken one refused as the first, the allowed one accepted.
SECOND_FORMS = {
    # An IDNPS author whose XCN.1 is one digit short of 8 + RPPS; an ADELI professional (0 + ADELI) is allowed.
    "author": (M.xcn("89990006348"), M.xcn("0123456789")),
    # A LOINC code that JDV_J07 does not list; a LOINC code it lists.
    "type": (LOINC_NOT_IN_J07, M.TYPE_CONSULTATION),
}


@pytest.mark.parametrize("case", sorted(SECOND_FORMS))
def test_table_b_second_forms(dmp, case):
    s, patient = dmp.strict, dated(f"b-{case}")

    def build(value) -> M.Submission:
        if case == "author":
            return M.submission(patient, M.Document(patient=patient, author=value), ss_author=value)
        return M.submission(patient, M.Document(patient=patient, type_code=value))

    wrong, right = SECOND_FORMS[case]
    before = holdings(s, patient)
    status, errors = provide(s, build(wrong))
    assert status == FAILURE and TABLE_B_CODES[case] in codes(errors), [(e.code, e.message) for e in errors]
    assert holdings(s, patient) == before
    sub = build(right)
    provided(s, sub)
    assert set(sub.unique_ids) <= set(find(s, bare(f"b-{case}")))


# --- --lenient: the CDA mismatches of the official examples are warnings -------------------------------

@pytest.mark.parametrize("case", ["cda-id", "cda-patient"])
def test_lenient_accepts_a_cda_mismatch_with_a_warning_naming_it(dmp, case):
    s, patient = dmp.lenient, dated("lenient")
    sub = _table_b(case, patient, broken=True)
    status, errors = provide(s, sub)
    assert (status, codes(errors)) == (SUCCESS, []), [(e.code, e.message) for e in errors]
    assert TABLE_B_CODES[case] in codes(errors, C.SEVERITY_WARNING), [(e.code, e.message) for e in errors]
    doc = sub.documents["Document01"]
    assert doc.unique_id in find(s, bare("lenient"))
    status, errors, got = retrieve(s.registry, s.repository_id, doc.unique_id)
    assert (status, got) == (SUCCESS, {doc.unique_id: doc.content})
    # The strict side refuses the same submission (test_table_b_refusal_... shows it stores nothing).
    status, errors = provide(dmp.strict, _table_b(case, dated(f"b-{case}"), broken=True))
    assert status == FAILURE and TABLE_B_CODES[case] in codes(errors)


def test_lenient_relaxes_only_the_cda_checks(dmp):
    s, patient = dmp.lenient, dated("lenient-rules")
    before = holdings(s, patient)
    for case in ("type", "no-signature"):
        status, errors = provide(s, _table_b(case, patient, broken=True))
        assert status == FAILURE and TABLE_B_CODES[case] in codes(errors), (case, [(e.code, e.message) for e in errors])
        assert holdings(s, patient) == before
    sub = _table_b("type", patient, broken=False)
    provided(s, sub)
    assert set(find(s, bare("lenient-rules"))) == set(sub.unique_ids)
