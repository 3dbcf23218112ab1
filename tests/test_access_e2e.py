"""The access policy end to end, over real HTTP, on the split deployment: one registry on PostgreSQL and
two repository hosts, each a separate `xds serve` process, over mutual TLS with certificates of one CA,
under profile = dmp and security = vihf (docs/decisions.md, "The access policy").

Each probe of the issue is repeated and shown refused, with nothing read or changed, next to the
legitimate caller succeeding:
  "any certificate of the domain's CA can list any patient's documents (ITI-18), read their bytes through
  the registry or directly on a host (ITI-43), deprecate another host's document (ITI-57), delete another
  host's submission (ITI-62), and remove another host's document (ITI-86, with host-b's certificate on
  host-a). A document masked with MASQUE_PS is returned to every professional."

Who is who: structure A submits through host-a, structure B through host-b; each structure signs its
INDIRECTE tokens with its own signature (cachet) key. Professionals consult in DIRECTE with their card:
an unsigned VIHF carried by the card's TLS session (the card's certificate names the professional).
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from cryptography import x509
from lxml import etree

from registry import schema as RS
from registry.store import RegistryStore
from xds import builder
from xds import constants as C
from xds import errors as E
from xds import hl7
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.mtom import href_to_cid
from xds.security import issue
from xds.security.issue import Issuer
from xds.tls import TlsFiles, client_context
from tests import dmp_messages as M
from tests.certs import Authority
from tests.test_delete import remove_request
from tests.test_split_deployment import Proc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATRIX = os.path.join(ROOT, "tests", "fixtures", "policy", "habilitations-unofficial.toml")
SAML = "{urn:oasis:names:tc:SAML:2.0:assertion}"
X509_NAME = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"

REPO_A, REPO_B = "1.2.250.1.999.3.10", "1.2.250.1.999.3.20"
STRUCT_A, STRUCT_B, STRUCT_C = "499900000000011", "499900000000022", "499900000000033"
# Professionals (IdNat_PS, the CN of their card) and the structure on their card.
DR_A, DR_A2 = "899900000011", "899900000012"    # physicians of structure A; DR_A authors A's documents
DR_B = "899900000021"                           # a physician of structure B
DR_MT = "899900000031"                          # a physician of structure C, the treating doctor of some
DR_X = "899900000041"                           # a physician of structure C whom a patient blocks
CARDS = {DR_A: STRUCT_A, DR_A2: STRUCT_A, DR_B: STRUCT_B, DR_MT: STRUCT_C, DR_X: STRUCT_C}
# Each structure's software connects with its own TLS certificate.
LPS = {STRUCT_A: "lps-a", STRUCT_B: "lps-b", STRUCT_C: "lps-c"}

REGISTRY_DN, ADMIN_DN = "O=XDS test,CN=registry", "O=XDS test,CN=admin"
HOST_DN = {"host-a": "O=XDS test,CN=host-a", "host-b": "O=XDS test,CN=host-b"}

HL7_CONF, DMP_CONF = "2.16.840.1.113883.5.25", "1.2.250.1.213.1.1.4.13"
LOINC = "2.16.840.1.113883.6.1"
NORMAL = [("N", HL7_CONF, "Normal")]
MASKED = [("N", HL7_CONF, "Normal"), ("MASQUE_PS", DMP_CONF, "Masqué aux professionnels de santé")]


def pid(n: int) -> str:
    """A test INS-NIR (15 characters, the test root), as the DMP writes it."""
    return f"2{n:014d}^^^&1.2.250.1.213.1.4.10&ISO^NH"


PATIENTS = {name: pid(i) for i, name in enumerate(
    ("find", "masked", "retrieve", "host", "update", "delete", "remove", "indirecte"), start=1)}


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests import pgserver
    from tests.conftest import _dbs, _pg_admin_url

    if not pgserver.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing; .ci/run installs them")
        pytest.skip("PostgreSQL is not installed here")
    tmp = tmp_path_factory.mktemp("access-e2e")
    db = pgserver.create_database(_pg_admin_url(), f"xds_access_e2e_{os.getpid()}_{next(_dbs)}")
    ca = Authority(str(tmp))
    names = ("registry", "host-a", "host-b", "admin", *LPS.values(), *CARDS)
    certs = {n: ca.issue(n) for n in names}
    signers = {}
    for s in (STRUCT_A, STRUCT_B, STRUCT_C):
        key, cert, _ = issue.signing_pair(str(tmp / f"cachet-{s}"), f"Structure {s}")
        signers[s] = Issuer(key, cert)

    def tls(name):
        cert, key = certs[name]
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca.path]

    common = {"XDS_PROFILE": "dmp", "XDS_SECURITY": "vihf",
              "XDS_XUA_TRUST": ";".join(str(tmp / f"cachet-{s}" / issue.CERT_FILE) for s in signers)}
    # The administrator's certificate is listed in admin_subjects only, on the registry and on each host.
    reg = Proc(tmp, "registry", "--role", "registry", "--db", db, *tls("registry"), "--require-known-repositories",
               "--habilitation-matrix", MATRIX, "--admin-subject", ADMIN_DN, env=common)
    hosts = {}
    for name, rid in (("host-a", REPO_A), ("host-b", REPO_B)):
        hosts[name] = Proc(tmp, name, "--role", "repository", "--repository-id", rid,
                           "--registry-url", reg.url + "/xds/registry", "--registry-timeout", "10", *tls(name),
                           "--registry-subject", REGISTRY_DN, "--admin-subject", ADMIN_DN,
                           env={**common, "XDS_XUA_SYSTEMS": REGISTRY_DN})
    cli("db", "--db", db, "--data", reg.data, "--role", "registry", "upgrade")  # only serve and db upgrade make one
    for name, rid in (("host-a", REPO_A), ("host-b", REPO_B)):
        cli("repository", "--db", db, "--data", reg.data, "add", rid, hosts[name].url + "/xds/repository",
            "--subject", HOST_DN[name])
    # The patients, in the form the dmp profile demands of every patientId (CX.5 NH, B-1), written through the
    # registry's store before it starts.
    store = RegistryStore(db)
    for patient in PATIENTS.values():
        store.add_patient(patient)
    store.engine.dispose()
    procs = []
    engine = sa.create_engine(db)
    try:
        for p in (reg, *hosts.values()):
            procs.append(p.start())
        yield {"registry": reg, **hosts, "ca": ca, "certs": certs, "signers": signers, "db": engine}
    finally:
        for p in procs:
            p.stop()
        engine.dispose()


# --- tokens -------------------------------------------------------------------------------------------

def card_token(w, ps: str, patient: str, **kw):
    """DIRECTE, unsigned, standing on the card's TLS session: its Issuer is the card's subject."""
    el = w["signers"][CARDS[ps]].issue("directe", signed=False, subject=ps, structure_id=CARDS[ps],
                                       patient_id=patient, **kw)
    with open(w["certs"][ps][0], "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    el.find(SAML + "Issuer").text = cert.subject.rfc4514_string()
    el.find(SAML + "Issuer").set("Format", X509_NAME)
    return el


def structure_token(w, structure: str, patient: str, ps: str | None = None):
    """INDIRECTE, signed by the structure's cachet key, for one of its professionals."""
    return w["signers"][structure].issue("indirecte", subject=ps or DR_A, structure_id=structure,
                                         patient_id=patient)


def as_card(w, ps: str, patient: str) -> tuple[str, object]:
    return ps, card_token(w, ps, patient)


def as_structure(w, structure: str, patient: str, ps: str | None = None) -> tuple[str, object]:
    return LPS[structure], structure_token(w, structure, patient, ps)


# --- talking to the deployment --------------------------------------------------------------------

def context(w, who: str):
    cert, key = w["certs"][who]
    return client_context(TlsFiles(cert, key, w["ca"].path))


def call(w, where: str, who: str, action: str, body, token=None, **kw):
    """where: registry, host-a or host-b; who: the certificate the client presents."""
    path = "/xds/registry" if where == "registry" else "/xds/repository"
    headers = [issue.wsse_security(token)] if token is not None else []
    return SoapClient(w[where].url + path, 30, context(w, who)).call(action, body, extra_headers=headers, **kw)


def fault_code(reply) -> str | None:
    if not reply.is_fault:
        return None
    return reply.body.findtext(f".//{{{C.NS_SOAP12}}}Subcode/{{{C.NS_SOAP12}}}Value")


def outcome(reply) -> tuple[str, list[str]]:
    assert not reply.is_fault, reply.raw[:1500]
    status, errors = read_response_errors(reply.body)
    return status, [e.code for e in errors]


def answer(reply, *ids: str) -> list[tuple[str, str, str, str]]:
    """A Failure's errors with the ids the request named replaced by their position, so that the answers
    to two requests naming different objects compare."""
    status, errors = read_response_errors(reply.body) if not reply.is_fault else ("fault", [])
    assert status == C.RESPONSE_FAILURE, reply.raw[:1500]
    out = []
    for e in errors:
        fields = [e.code, e.message, e.location, e.severity]
        for n, i in enumerate(ids):
            fields = [f.replace(i, f"<{n}>") for f in fields]
        out.append(tuple(fields))
    return out


def admin(w, patient: str, action: str, who: str = "admin", token=None, **fields) -> tuple[int, dict]:
    """The registry's administration interface over mutual TLS (and a bearer VIHF when given)."""
    conn = http.client.HTTPSConnection("127.0.0.1", w["registry"].port, context=context(w, who), timeout=30)
    try:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = "Bearer " + base64.urlsafe_b64encode(issue.serialize(token)).decode()
        path = "/admin/access/" + quote(patient, safe="")
        if action == "show":
            conn.request("GET", path, headers=headers)
        else:
            conn.request("POST", path, json.dumps({"action": action, **fields}), headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def allow(w, patient: str, action: str, **fields) -> dict:
    status, state = admin(w, patient, action, **fields)
    assert status == 200, state
    return state


def xcn(ps: str) -> str:
    return f"{ps}^DOC^TEUR^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"


def xon(structure: str) -> str:
    return f"STRUCTURE {structure}^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^{structure}"


# The signature document (PROFILE.md B-32) that came with each document provide() submitted, by uniqueId.
SIGNATURES: dict[str, str] = {}


def provide(w, host: str, patient: str, structure: str, ps: str = DR_A, codes=NORMAL) -> tuple[str, bytes]:
    """ITI-41 to a host by a structure's software, with the structure's INDIRECTE token for ps, in a
    submission the dmp profile accepts (a CDA whose header agrees with its metadata, and the signature
    document); returns the CDA's (uniqueId, bytes)."""
    doc = M.Document(patient=patient, type_code=("34133-9", LOINC, "Summary of episode note"),
                     confidentiality=tuple(codes), author=xcn(ps), institution=xon(structure),
                     legal_authenticator=xcn(ps))
    sub = M.submission(patient, doc, ss_author=xcn(ps))
    reply = call(w, host, LPS[structure], C.ACTION_PROVIDE, sub.request, structure_token(w, structure, patient, ps),
                 attachments=sub.attachments)
    status, errors = read_response_errors(reply.body)
    assert status == C.RESPONSE_SUCCESS and not errors, [(e.code, e.message) for e in errors] or reply.raw[:1500]
    SIGNATURES[doc.unique_id] = sub.documents["Signature01"].unique_id
    return doc.unique_id, doc.content


def signed(*uids: str) -> set[str]:
    """Documents provide() submitted and their signature documents, which the policy treats as any entry:
    masked to professionals (MASQUE_PS), so seen by the author's structure and the treating doctor only."""
    return set(uids) | {SIGNATURES[u] for u in uids}


def find(w, caller: tuple[str, object], patient: str, return_type: str = "LeafClass"):
    who, token = caller
    return call(w, "registry", who, C.ACTION_QUERY, builder.find_documents_request(patient, return_type=return_type),
                token)


def listed(reply) -> set[str]:
    """The DocumentEntry uniqueIds of a LeafClass answer."""
    assert outcome(reply) == (C.RESPONSE_SUCCESS, [])
    return {ei.get("value") for ei in reply.body.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
            if ei.get("identificationScheme") == C.DE_UNIQUE_ID}


def objects_in(reply) -> list[etree._Element]:
    rol = reply.body.find(f"{{{C.NS_RIM}}}RegistryObjectList")
    return [] if rol is None else list(rol)


def document_requests(tag: str, *wanted: tuple[str, str]) -> etree._Element:
    """A RetrieveDocumentSetRequest (ITI-43) or RemoveDocumentsRequest (ITI-86) of (repositoryUniqueId,
    uniqueId) pairs."""
    ns = C.NS_XDSB if tag == "RetrieveDocumentSetRequest" else C.NS_RMD
    req = etree.Element(C.q(ns, tag), nsmap={"xdsb": C.NS_XDSB, "rmd": C.NS_RMD})
    for repo, uid in wanted:
        dr = etree.SubElement(req, C.q(C.NS_XDSB, "DocumentRequest"))
        etree.SubElement(dr, C.q(C.NS_XDSB, "RepositoryUniqueId")).text = repo
        etree.SubElement(dr, C.q(C.NS_XDSB, "DocumentUniqueId")).text = uid
    return req


def retrieve(w, where: str, caller: tuple[str, object], *wanted: tuple[str, str]):
    """ITI-43 of (repositoryUniqueId, uniqueId) pairs: (status, errors, {uniqueId: bytes}, how many
    attachments the answer carried)."""
    who, token = caller
    reply = call(w, where, who, C.ACTION_RETRIEVE, document_requests("RetrieveDocumentSetRequest", *wanted), token,
                 use_mtom=True)
    assert not reply.is_fault, reply.raw[:1500]
    rr = reply.body.find(C.q(C.NS_RS, "RegistryResponse"))
    status, errors = read_response_errors(rr)
    got = {}
    try:
        for dr in reply.body.iterchildren(C.q(C.NS_XDSB, "DocumentResponse")):
            inc = dr.find(f"{C.q(C.NS_XDSB, 'Document')}/{C.q(C.NS_XOP, 'Include')}")
            got[dr.findtext(C.q(C.NS_XDSB, "DocumentUniqueId"))] = \
                reply.mtom.parts[href_to_cid(inc.get("href"))].read_bytes()
        parts = len(reply.mtom.parts) if reply.mtom else 0
    finally:
        if reply.mtom:
            reply.mtom.cleanup()
    return status, errors, got, parts


def update_request(patient: str, entry_id: str, original: str, new: str, ps: str) -> etree._Element:
    """ITI-57 UpdateAvailabilityStatus of one registered DocumentEntry."""
    ss = builder.submission_set(patient, author_person=xcn(ps), content_type=M.CONTENT_DAY_HOSPITAL)
    change = builder.association("SubmissionSet01", entry_id, C.ASSOC_UPDATE_AVAILABILITY_STATUS, id="uas")
    builder.slot(change, "OriginalStatus", [original])
    builder.slot(change, "NewStatus", [new])
    return builder.submit_objects_request([ss, builder.submission_set_marker(), change])


def remove_documents_request(*wanted: tuple[str, str]) -> etree._Element:
    return document_requests("RemoveDocumentsRequest", *wanted)


# --- what the registry and the hosts hold (read directly, not through the policy) ------------------

def entry(w, uid: str) -> tuple[str, str]:
    """(registry id, status) of the DocumentEntry with this uniqueId."""
    o = RS.registry_object
    with w["db"].connect() as c:
        row = c.execute(sa.select(o.c.id, o.c.status).where(o.c.unique_id == uid,
                                                            o.c.kind == RS.KIND_DOCUMENT_ENTRY)).one()
    return row.id, row.status


def registry_objects(w, patient: str) -> dict:
    """Every object and association of a patient in the registry: {id: status}."""
    o, a = RS.registry_object, RS.association
    with w["db"].connect() as c:
        # The registry may keep the patient as written or by CX.1 + CX.4 alone (hl7.patient_key).
        spellings = [patient, hl7.patient_key(patient)]
        objs = {r.id: r.status for r in c.execute(sa.select(o.c.id, o.c.status).where(o.c.patient_id.in_(spellings)))}
        assocs = {r.id: r.status for r in c.execute(sa.select(a.c.id, a.c.status).where(
            a.c.source.in_(list(objs)) | a.c.target.in_(list(objs))))} if objs else {}
    return {**objs, **assocs}


def linked(w, obj_id: str) -> set[str]:
    """An object's id and the ids of the associations from or to it."""
    a = RS.association
    with w["db"].connect() as c:
        found = c.execute(sa.select(a.c.id).where((a.c.source == obj_id) | (a.c.target == obj_id)))
        return {obj_id} | {r.id for r in found}


def files_on(w, host: str) -> set[bytes]:
    """The contents of the documents stored on a host's disk (staging excluded)."""
    root = os.path.join(w[host].data, "documents")
    out = set()
    for d, _, files in os.walk(root):
        if os.sep + "staging" in d:
            continue
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out.add(fh.read())
    return out


# --- 1. ITI-18 ----------------------------------------------------------------------------------------

def test_find_documents_needs_an_authorisation_and_a_blocked_professional_sees_nothing(world):
    w, p = world, PATIENTS["find"]
    uid, _ = provide(w, "host-a", p, STRUCT_A)
    # A physician of another structure, any card of the CA: the query succeeds and lists nothing.
    reply = find(w, as_card(w, DR_B, p), p)
    assert listed(reply) == set() and objects_in(reply) == []
    # Once the patient (here the administrator) authorises that physician: listed.
    allow(w, p, "grant", person=DR_B)
    assert listed(find(w, as_card(w, DR_B, p), p)) == {uid}
    # That physician's unsigned card token stands only on the card's own TLS session: presented with
    # another certificate of the CA (a host's, a structure's software's), it is refused, nothing listed.
    for who in ("host-b", LPS[STRUCT_B]):
        reply = find(w, (who, card_token(w, DR_B, p)), p)
        assert fault_code(reply) == "wsse:FailedAuthentication" and uid.encode() not in reply.raw
    # A blocked professional sees nothing: blocking withdraws the grant, the professional cannot grant
    # themself again, and being the treating doctor does not lift the block either.
    allow(w, p, "grant", person=DR_X)
    assert listed(find(w, as_card(w, DR_X, p), p)) == {uid}
    state = allow(w, p, "block", person=DR_X)
    assert DR_X in state["blocked"] and DR_X not in {g["person"] for g in state["authorised"]}
    status, answer = admin(w, p, "grant", who=DR_X, token=card_token(w, DR_X, p), person=DR_X)
    assert status == 403, answer
    allow(w, p, "treating-doctor", person=DR_X)
    reply = find(w, as_card(w, DR_X, p), p)
    assert listed(reply) == set() and objects_in(reply) == []
    assert listed(find(w, as_card(w, DR_B, p), p)) == {uid}  # the others are unaffected


# --- 2. MASQUE_PS -------------------------------------------------------------------------------------

def test_masque_ps_is_hidden_except_from_the_author_s_structure_and_the_treating_doctor(world):
    w, p = world, PATIENTS["masked"]
    masked, _ = provide(w, "host-a", p, STRUCT_A, codes=MASKED)
    plain, _ = provide(w, "host-a", p, STRUCT_A)
    for ps in (DR_B, DR_A2):
        allow(w, p, "grant", person=ps)
    # An authorised physician of another structure: the plain document only.
    assert listed(find(w, as_card(w, DR_B, p), p)) == {plain}
    # A physician of the author's structure (not the author in person), authorised: both, and their
    # signature documents (masked too).
    assert listed(find(w, as_card(w, DR_A2, p), p)) == signed(masked, plain)
    # The treating doctor, of a third structure, with no authorisation: nothing; as treating doctor: both.
    assert listed(find(w, as_card(w, DR_MT, p), p)) == set()
    allow(w, p, "treating-doctor", person=DR_MT)
    assert listed(find(w, as_card(w, DR_MT, p), p)) == signed(masked, plain)


# --- 3. ITI-43 through the registry ---------------------------------------------------------------

def test_a_hidden_document_is_answered_through_the_registry_exactly_as_an_unknown_one(world):
    w, p = world, PATIENTS["retrieve"]
    masked, _ = provide(w, "host-a", p, STRUCT_A, codes=MASKED)
    plain, content = provide(w, "host-a", p, STRUCT_A)
    allow(w, p, "grant", person=DR_B)
    unknown = builder.new_oid()

    def refusal(uid):
        status, errors, got, parts = retrieve(w, "registry", as_card(w, DR_B, p), (REPO_A, uid))
        assert got == {} and parts == 0
        assert status == C.RESPONSE_FAILURE and len(errors) == 1
        e = errors[0]
        return e.code, e.message.replace(uid, "<uid>"), e.location.replace(uid, "<uid>"), e.severity

    answer_for_hidden, answer_for_unknown = refusal(masked), refusal(unknown)
    assert answer_for_hidden == answer_for_unknown
    assert answer_for_hidden[0] == E.DOCUMENT_UNIQUE_ID_ERROR
    # Unauthorised, even the plain document does not exist as far as the caller can tell.
    status, errors, got, parts = retrieve(w, "registry", as_card(w, DR_MT, p), (REPO_A, plain))
    assert (status, [e.code for e in errors], got, parts) == (C.RESPONSE_FAILURE, [E.DOCUMENT_UNIQUE_ID_ERROR], {}, 0)
    # The visible one: its bytes.
    status, errors, got, _ = retrieve(w, "registry", as_card(w, DR_B, p), (REPO_A, plain))
    assert (status, errors, got) == (C.RESPONSE_SUCCESS, [], {plain: content})


# --- 4. ITI-43 directly on a host -------------------------------------------------------------------

def test_a_host_serves_retrieve_to_its_registry_only(world):
    w, p = world, PATIENTS["host"]
    uid, content = provide(w, "host-a", p, STRUCT_A)
    allow(w, p, "grant", person=DR_B)
    # An authorised professional's card and token, directly on the host: refused, no document.
    for caller in (as_card(w, DR_B, p), as_card(w, DR_A, p), as_structure(w, STRUCT_A, p)):
        status, errors, got, parts = retrieve(w, "host-a", caller, (REPO_A, uid))
        assert status == C.RESPONSE_FAILURE and [e.code for e in errors] == [E.REPOSITORY_ERROR], errors
        assert got == {} and parts == 0
    # Another host's certificate without a token is not even authenticated there.
    reply = call(w, "host-a", "host-b", C.ACTION_RETRIEVE, document_requests("RetrieveDocumentSetRequest",
                                                                         (REPO_A, uid)), use_mtom=True)
    assert fault_code(reply) == "wsse:SecurityTokenUnavailable" and content not in reply.raw
    # The same request through the registry, by the authorised professional: the bytes.
    status, errors, got, _ = retrieve(w, "registry", as_card(w, DR_B, p), (REPO_A, uid))
    assert (status, errors, got) == (C.RESPONSE_SUCCESS, [], {uid: content})


# --- 5. ITI-57 ----------------------------------------------------------------------------------------

def test_another_structure_cannot_deprecate_a_document_and_the_author_s_structure_can(world):
    w, p = world, PATIENTS["update"]
    uid, _ = provide(w, "host-a", p, STRUCT_A)
    eid, status = entry(w, uid)
    assert status == C.STATUS_APPROVED
    before = registry_objects(w, p)

    def deprecate(caller, target=eid):
        who, token = caller
        return call(w, "registry", who, C.ACTION_UPDATE,
                    update_request(p, target, C.STATUS_APPROVED, C.STATUS_DEPRECATED, DR_B), token)

    # Host-b's structure (its software, INDIRECTE) does not even see the document: it is answered
    # exactly as an entry the registry does not hold; so is host-b's certificate alone.
    nowhere = "urn:uuid:00000000-0000-4000-8000-000000000057"
    unknown = answer(deprecate(as_structure(w, STRUCT_B, p, DR_B), nowhere), nowhere)
    assert unknown[0][0] == E.UNRESOLVED_REFERENCE
    for caller in (as_structure(w, STRUCT_B, p, DR_B), ("host-b", None)):
        assert answer(deprecate(caller), eid) == unknown
        assert registry_objects(w, p) == before
    # A physician of host-b's structure who sees it (break-the-glass) may still not change it.
    reply = deprecate((DR_B, card_token(w, DR_B, p, purpose_of_use="bris_de_glace")))
    assert outcome(reply) == (C.RESPONSE_FAILURE, [E.REGISTRY_ERROR])
    assert registry_objects(w, p) == before
    # The author's structure: deprecated.
    assert outcome(deprecate(as_structure(w, STRUCT_A, p, DR_A))) == (C.RESPONSE_SUCCESS, [])
    assert entry(w, uid) == (eid, C.STATUS_DEPRECATED)


# --- 6. ITI-62 ----------------------------------------------------------------------------------------

def test_another_host_cannot_delete_a_submission_and_the_administrator_can(world):
    w, p = world, PATIENTS["delete"]
    uid, _ = provide(w, "host-a", p, STRUCT_A)
    allow(w, p, "grant", person=DR_B)
    before = registry_objects(w, p)
    # The SubmissionSet, the DocumentEntry, the signature DocumentEntry, their two HasMember associations
    # and the signature's signs association.
    assert len(before) == 6
    ids = list(before)
    # The signature DocumentEntry is masked (MASQUE_PS): another structure's physician sees neither it nor
    # its associations.
    signature = linked(w, entry(w, SIGNATURES[uid])[0])
    seen_by_b = [i for i in ids if i not in signature]
    assert len(signature) == 3
    nowhere = [f"urn:uuid:00000000-0000-4000-8000-00000000006{i}" for i in range(len(ids))]

    def delete(caller, targets):
        who, token = caller
        return call(w, "registry", who, C.ACTION_DELETE, remove_request(*targets), token)

    # Host-b's certificate alone, or host-b's structure: the submission is answered as objects the
    # registry does not hold.
    unknown = answer(delete(as_structure(w, STRUCT_B, p, DR_B), nowhere), *nowhere)
    assert {code for code, *_ in unknown} == {E.UNRESOLVED_REFERENCE}
    for caller in (("host-b", None), as_structure(w, STRUCT_B, p, DR_B)):
        assert answer(delete(caller, ids), *ids) == unknown
        assert registry_objects(w, p) == before
    # A physician of host-b's structure, authorised, sees the document but may not delete it; what is
    # masked to them is answered as objects the registry does not hold.
    assert outcome(delete(as_card(w, DR_B, p), seen_by_b)) == (C.RESPONSE_FAILURE, [E.REGISTRY_ERROR])
    assert registry_objects(w, p) == before
    status, errors = read_response_errors(delete(as_card(w, DR_B, p), ids).body)
    assert status == C.RESPONSE_FAILURE and {e.code for e in errors} == {E.UNRESOLVED_REFERENCE}
    assert {e.location for e in errors} == signature
    assert registry_objects(w, p) == before
    # The administrator: gone.
    assert outcome(delete(("admin", None), ids)) == (C.RESPONSE_SUCCESS, [])
    assert registry_objects(w, p) == {}


# --- 7. ITI-86 ----------------------------------------------------------------------------------------

def test_another_host_cannot_remove_documents_and_the_administrator_or_the_registry_can(world):
    w, p = world, PATIENTS["remove"]
    first, first_bytes = provide(w, "host-a", p, STRUCT_A)
    second, second_bytes = provide(w, "host-a", p, STRUCT_A)
    allow(w, p, "grant", person=DR_B)
    assert {first_bytes, second_bytes} <= files_on(w, "host-a")
    # host-b's certificate on host-a: without a token it is no one there; with its structure's token,
    # or an authorised physician's card, it is refused by the policy.
    reply = call(w, "host-a", "host-b", C.ACTION_REMOVE_DOCUMENTS, remove_documents_request((REPO_A, first)))
    assert fault_code(reply) == "wsse:SecurityTokenUnavailable"
    for who, token in (("host-b", structure_token(w, STRUCT_B, p, DR_B)), as_card(w, DR_B, p),
                       as_structure(w, STRUCT_A, p)):
        reply = call(w, "host-a", who, C.ACTION_REMOVE_DOCUMENTS, remove_documents_request((REPO_A, first)), token)
        assert outcome(reply) == (C.RESPONSE_FAILURE, [E.REPOSITORY_ERROR]), who
    assert {first_bytes, second_bytes} <= files_on(w, "host-a")
    status, errors, got, _ = retrieve(w, "registry", as_card(w, DR_B, p), (REPO_A, first), (REPO_A, second))
    assert (status, errors, got) == (C.RESPONSE_SUCCESS, [], {first: first_bytes, second: second_bytes})
    # The administrator's certificate removes one, the registry's certificate the other.
    for who, uid in (("admin", first), ("registry", second)):
        reply = call(w, "host-a", who, C.ACTION_REMOVE_DOCUMENTS, remove_documents_request((REPO_A, uid)))
        assert outcome(reply) == (C.RESPONSE_SUCCESS, []), who
    assert not {first_bytes, second_bytes} & files_on(w, "host-a")
    status, errors, got, _ = retrieve(w, "registry", as_card(w, DR_B, p), (REPO_A, first))
    assert (status, [e.code for e in errors], got) == (C.RESPONSE_FAILURE, [E.DOCUMENT_UNIQUE_ID_ERROR], {})


# --- 8. INDIRECTE ---------------------------------------------------------------------------------------

def test_an_indirecte_caller_finds_references_to_its_own_submissions_only(world):
    w, p = world, PATIENTS["indirecte"]
    uid_a, _ = provide(w, "host-a", p, STRUCT_A)
    uid_b, _ = provide(w, "host-b", p, STRUCT_B, ps=DR_B)
    # Consulting (LeafClass) in INDIRECTE: refused, nothing in the answer.
    reply = find(w, as_structure(w, STRUCT_A, p), p)
    assert outcome(reply) == (C.RESPONSE_FAILURE, [E.REGISTRY_ERROR]) and objects_in(reply) == []
    # Finding references (ObjectRef): each structure its own submissions only.
    for structure, uid in ((STRUCT_A, uid_a), (STRUCT_B, uid_b)):
        reply = find(w, as_structure(w, structure, p), p, return_type="ObjectRef")
        assert outcome(reply) == (C.RESPONSE_SUCCESS, [])
        assert [o.tag for o in objects_in(reply)] == [f"{{{C.NS_RIM}}}ObjectRef"] * 2  # the CDA, its signature
        assert {o.get("id") for o in objects_in(reply)} == {entry(w, u)[0] for u in signed(uid)}
    # Nor may it retrieve through the registry.
    status, errors, got, parts = retrieve(w, "registry", as_structure(w, STRUCT_A, p), (REPO_A, uid_a))
    assert (status, [e.code for e in errors], got, parts) == (C.RESPONSE_FAILURE, [E.REGISTRY_ERROR], {}, 0)
