"""A DMP deployment for the patient portal's browser tests (tests/test_portal_browser.py): one all-in-one
`Services` in this process (registry and repository, SQLite), profile = "dmp", security = "vihf", the
unofficial habilitation matrix, and the portal signing patients in at the development identity provider
(node.dev_idp.DevIdp) on another loopback port.

What vihf needs, and why the browser goes through a front end. Settings.validate() asks of security = "vihf"
only xua_trust (the certificates that sign the tokens; here each structure's cachet certificate), and the
professionals here present signed tokens (INDIRECTE to submit, INDIRECTE_RENFORCEE to consult, DIRECTE signed
for break-the-glass), which need no TLS. But a download is an ITI-43 that the registry routes to the
repository over HTTP, even in one process (node/server.py names the local repository in the registry's
directory), and under the DMP rules a repository serves ITI-43 to its registry only, which it knows by the
registry's TLS client certificate (registry_subjects). So the server runs in mutual TLS (tls_cert, tls_key,
tls_ca: every client must present a certificate of the test CA), with its own certificate's subject in
registry_subjects. Chromium cannot present a client certificate headless without an NSS database and an
enterprise policy, so the browser talks to a small front end on 127.0.0.1 (Front below, the part of a
deployment's reverse proxy that terminates the patients' connections) that forwards each request to the
server over mutual TLS with its own certificate. The portal's base_url is the front end's plain-http loopback
address, the one setting in which the portal may drop the Secure flag of its cookies
(portal_secure_cookies = False); the browser sees no certificate at all, so nothing is ignored
(no --ignore-certificate-errors).

The record (every identifier on the test arcs: INS on 1.2.250.1.213.1.4.10, IdNat_PS 8999..., structures
4999...):
  marie  three documents by DR_A of structure A (two CDA R2 and one PDF, distinct titles and dates), each
         with its signature document (MASQUE_PS + INVISIBLE_PATIENT, so not hers to see for a month);
         DR_A (the author) and DR_X (structure C) authorised, DR_MT (structure C) her treating doctor;
         accesses logged: DR_X and DR_A consult (ITI-18), DR_B (structure B) breaks the glass, DR_SAMU
         consults as centre 15;
  paul   one document of his own, nobody authorised.
"""
from __future__ import annotations

import http.client
import http.server
import os
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from urllib.parse import quote

from node.dev_idp import DevIdp
from node.server import Services
from registry import schema as RS
from registry.access import AccessStore
from xds import constants as C
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.security import issue
from xds.security.issue import Issuer
from xds.settings import Settings
from xds.tls import TlsFiles, client_context
from tests.certs import Authority
from tests import dmp_messages as M
from tests.test_portal_signin import HASH, PASSWORD  # noqa: F401  (PASSWORD: the tests sign in with it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATRIX = os.path.join(ROOT, "tests", "fixtures", "policy", "habilitations-unofficial.toml")
CLIENT, SECRET = "xds-portal-browser", "browser-test-secret"

# Patients: the id the identity provider gives (bare, as a feed writes it) and the DMP's metadata form.
MARIE = M.patient_id(M.ins(101), nh=False)
PAUL = M.patient_id(M.ins(202), nh=False)
MARIE_NH, PAUL_NH = M.patient_id(M.ins(101)), M.patient_id(M.ins(202))
LOGINS = {"marie": (MARIE, "Marie Dupont"), "paul": (PAUL, "Paul Martin")}

STRUCT_A, STRUCT_B, STRUCT_C, STRUCT_SAMU = "499900000000011", "499900000000022", "499900000000033", "499900000000044"
DR_A = "899900000011"       # physician of structure A, author of marie's documents
DR_B = "899900000021"       # physician of structure B, breaks the glass
DR_MT = "899900000031"      # physician of structure C, marie's treating doctor
DR_X = "899900000041"       # physician of structure C, authorised by marie
DR_SAMU = "899900000051"    # regulating physician of the SAMU (centre 15)
DR_Y = "899900000022"       # physician of structure B whom nobody authorised
STRUCTURE_OF = {DR_A: STRUCT_A, DR_B: STRUCT_B, DR_MT: STRUCT_C, DR_X: STRUCT_C, DR_SAMU: STRUCT_SAMU,
                DR_Y: STRUCT_B}
NAMES = {DR_A: "Anne Auteur", DR_B: "Bruno Urgence", DR_MT: "Michel Traitant", DR_X: "Xavier Xenakis",
         DR_SAMU: "Sophie Regulation", DR_Y: "Yvonne Ygrec"}
ORGANISATIONS = {STRUCT_A: "CENTRE HOSPITALIER A", STRUCT_B: "CLINIQUE B", STRUCT_C: "CABINET C",
                 STRUCT_SAMU: "SAMU 99"}

# The PDF's bytes, so that a download can be compared with them byte for byte.
PDF_BYTES = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
             b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
             b"% portal browser test: resultats d'analyses de marie\n"
             b"trailer << /Root 1 0 R >>\n%%EOF\n")


@dataclass
class Doc:
    title: str
    created: str            # creationTime, YYYYMMDDhhmmss
    content: bytes
    mime_type: str
    unique_id: str
    entry_uuid: str = ""


@dataclass
class World:
    services: Services
    idp: DevIdp
    idp_server: object
    front: "Front"
    base: str                   # the front end's http://127.0.0.1:port: what the browser opens (base_url)
    folder: str
    signers: dict[str, Issuer]
    client: ssl.SSLContext      # a professional's software's TLS identity, for talking to the server itself
    docs: dict[str, list[Doc]] = field(default_factory=dict)   # patient -> documents, oldest first

    @property
    def access(self) -> AccessStore:
        return AccessStore(self.services.registry.store)

    def record_url(self, patient: str, page: str = "documents") -> str:
        return f"{self.base}/portal/record/{quote(patient, safe='')}/{page}"

    @property
    def server_url(self) -> str:
        """The server itself (https, client certificates required)."""
        return self.services.url

    def close(self) -> None:
        self.front.stop()
        self.services.stop()
        self.idp_server.stop()


class Front:
    """A plain-http listener on 127.0.0.1 that forwards every request, as it came, to the server over mutual
    TLS with its own client certificate, and the answer back as it came (redirects not followed, every
    Set-Cookie kept). One request per connection."""

    HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}

    def __init__(self, port: int, upstream_port: int, context: ssl.SSLContext):
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # the server logs each request already
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in front.HOP_BY_HOP}
                conn = http.client.HTTPSConnection("127.0.0.1", front.upstream_port, context=front.context,
                                                   timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response_only(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in front.HOP_BY_HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_POST = do_HEAD = _forward

        self.upstream_port = upstream_port
        self.context = context
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="portal-front", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- tokens ---------------------------------------------------------------------------------------------

def token(w: World, professional: str, patient: str, mode: str = "indirecte_renforcee", purpose: str = "normal"):
    """A fresh VIHF (the server refuses replays) signed by the professional's structure's cachet key:
    mode indirecte (a structure's software submitting), indirecte_renforcee (consulting with a card behind
    the structure's login: AIR) or directe (signed by the card; the only mode for break-the-glass)."""
    structure = STRUCTURE_OF[professional]
    return w.signers[structure].issue(mode, subject=professional, subject_name=NAMES[professional],
                                      structure_id=structure, patient_id=patient, purpose_of_use=purpose)


def xcn(professional: str) -> str:
    """The professional as authorPerson / legalAuthenticator (IdNat_PS, family and given names)."""
    given, family = NAMES[professional].split(" ", 1)
    return M.xcn(professional, family.upper(), given.upper())


# --- ITI-41 and ITI-18 over HTTP ------------------------------------------------------------------------

def provide(w: World, patient_nh: str, professional: str, *, title: str, created: str, type_code=M.TYPE_CONSULTATION,
            content: bytes | None = None, mime_type: str = "text/xml") -> Doc:
    """ITI-41 to the repository by the professional's structure (INDIRECTE), conformant to the dmp profile:
    a CDA whose header agrees with its metadata, or any other content (a PDF is not CDA-checked), and the
    signature document."""
    structure = STRUCTURE_OF[professional]
    fields = {"_content": content} if content is not None else {}
    doc = M.Document(patient=patient_nh, title=title, type_code=type_code, creation_time=created,
                     service_start=created[:8] + "080000", service_stop=created[:8] + "090000",
                     author=xcn(professional), legal_authenticator=xcn(professional),
                     institution=M.xon(ORGANISATIONS[structure], structure), mime_type=mime_type, **fields)
    sub = M.submission(patient_nh, doc, ss_author=xcn(professional))
    reply = SoapClient(w.server_url + "/xds/repository", 30, w.client).call(
        C.ACTION_PROVIDE, sub.request, attachments=sub.attachments,
        extra_headers=[issue.wsse_security(token(w, professional, patient_nh, "indirecte"))])
    status, errors = read_response_errors(reply.body)
    assert status == C.RESPONSE_SUCCESS and not errors, [(e.code, e.message) for e in errors] or reply.raw[:2000]
    return Doc(title, created, doc.content, mime_type, doc.unique_id, entry_uuid_of(w, doc.unique_id))


def entry_uuid_of(w: World, unique_id: str) -> str:
    import sqlalchemy as sa

    o = RS.registry_object
    with w.services.registry.store.engine.connect() as c:
        return c.execute(sa.select(o.c.id).where(o.c.unique_id == unique_id,
                                                 o.c.kind == RS.KIND_DOCUMENT_ENTRY)).scalar_one()


def find_documents(w: World, professional: str, patient: str, *, mode: str = "indirecte_renforcee",
                   purpose: str = "normal"):
    """ITI-18 FindDocuments (LeafClass, Approved) by a professional over HTTP: the SOAP reply."""
    from xds import builder

    nh = patient if patient.endswith("^NH") else patient + "^NH"
    return SoapClient(w.server_url + "/xds/registry", 30, w.client).call(
        C.ACTION_QUERY, builder.find_documents_request(nh),
        extra_headers=[issue.wsse_security(token(w, professional, nh, mode, purpose))])


def professional_finds(w: World, professional: str, patient: str, *, mode: str = "indirecte_renforcee",
                       purpose: str = "normal") -> set[str]:
    """The entryUUIDs of the DocumentEntries an ITI-18 FindDocuments (LeafClass) returns to that professional."""
    reply = find_documents(w, professional, patient, mode=mode, purpose=purpose)
    assert not reply.is_fault, reply.raw[:2000]
    status, errors = read_response_errors(reply.body)
    assert status == C.RESPONSE_SUCCESS and not errors, [(e.code, e.message) for e in errors]
    return {eo.get("id") for eo in reply.body.iter(f"{{{C.NS_RIM}}}ExtrinsicObject")}


# --- the deployment -------------------------------------------------------------------------------------

def build(folder: str | None = None) -> World:
    folder = folder or tempfile.mkdtemp(prefix="portal-world-")
    signers = {}
    for s in (STRUCT_A, STRUCT_B, STRUCT_C, STRUCT_SAMU):
        key, cert, _ = issue.signing_pair(os.path.join(folder, f"cachet-{s}"), f"Structure {s}")
        signers[s] = Issuer(key, cert)
    ca = Authority(folder)
    server_cert, server_key = ca.issue("registry")
    front_cert, front_key = ca.issue("portal-front")
    lps_cert, lps_key = ca.issue("lps")
    users = os.path.join(folder, "users.toml")
    with open(users, "w", encoding="utf-8") as f:
        for login, (pid, name) in LOGINS.items():
            f.write(f'[[user]]\nlogin = "{login}"\npassword = "{HASH}"\nname = "{name}"\npatient_id = "{pid}"\n\n')
    front_port = free_port()
    base = f"http://127.0.0.1:{front_port}"
    idp = DevIdp(users, None, {CLIENT: (SECRET, [base + "/portal/callback"])})
    idp_server = idp.serve("127.0.0.1", 0)
    settings = Settings(port=0, data=os.path.join(folder, "data"), base_url=base, settle_interval=0,
                        profile="dmp", security="vihf", habilitation_matrix=MATRIX,
                        xua_trust=[os.path.join(folder, f"cachet-{s}", issue.CERT_FILE) for s in signers],
                        tls_cert=server_cert, tls_key=server_key, tls_ca=ca.path,
                        # The registry's routed ITI-43 reaches the repository with the server's own certificate.
                        registry_subjects=["O=XDS test,CN=registry"],
                        portal_issuer=idp.issuer, portal_client_id=CLIENT, portal_client_secret=SECRET,
                        portal_secure_cookies=False)
    settings.validate()
    try:
        services = Services(settings).start()
    except BaseException:
        idp_server.stop()
        raise
    try:
        front = Front(front_port, services.port, client_context(TlsFiles(front_cert, front_key, ca.path)))
    except BaseException:
        services.stop()
        idp_server.stop()
        raise
    w = World(services, idp, idp_server, front, base, folder, signers,
              client_context(TlsFiles(lps_cert, lps_key, ca.path)))
    try:
        _populate(w)
    except BaseException:
        w.close()
        raise
    return w


def _populate(w: World) -> None:
    store = w.services.registry.store
    for pid in (MARIE, PAUL):
        store.add_patient(pid)
    access = w.access
    access.add_person(MARIE, RS.ACCESS_AUTHORISED, DR_X)
    access.add_person(MARIE, RS.ACCESS_AUTHORISED, DR_A)
    access.set_treating_doctor(MARIE, DR_MT)
    w.docs[MARIE] = [
        provide(w, MARIE_NH, DR_A, title="Compte rendu de consultation cardiologie", created="20240115093000",
                type_code=M.TYPE_CONSULTATION),
        provide(w, MARIE_NH, DR_A, title="Synthèse d'hospitalisation", created="20240320141500",
                type_code=M.TYPE_SUMMARY),
        provide(w, MARIE_NH, DR_A, title="Résultats d'analyses biologiques", created="20240610081000",
                type_code=("11502-2", M.LOINC, "CR d'examens biologiques"), content=PDF_BYTES,
                mime_type="application/pdf"),
    ]
    w.docs[PAUL] = [provide(w, PAUL_NH, DR_A, title="Compte rendu de paul", created="20240201100000")]
    visible = {d.entry_uuid for d in w.docs[MARIE]}
    # The accesses marie's log shows: consultations by authorised professionals, one break-the-glass
    # (DIRECTE, DR_B is not authorised), one centre 15.
    assert professional_finds(w, DR_X, MARIE) == visible          # no signature documents: MASQUE_PS
    assert visible <= professional_finds(w, DR_A, MARIE)          # the author's structure: everything
    assert professional_finds(w, DR_B, MARIE, mode="directe", purpose="bris_de_glace") == visible
    assert professional_finds(w, DR_SAMU, MARIE, purpose="centre_15") == visible


def professional_finds_unique_ids(w: World, professional: str, patient: str, **kw) -> set[str]:
    """As professional_finds, by DocumentEntry uniqueId (the same for every version of an entry: a mask made
    through the portal is an ITI-57 new version, with a new entryUUID)."""
    reply = find_documents(w, professional, patient, **kw)
    status, errors = read_response_errors(reply.body)
    assert status == C.RESPONSE_SUCCESS and not errors, [(e.code, e.message) for e in errors]
    return {ei.get("value") for ei in reply.body.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
            if ei.get("identificationScheme") == C.DE_UNIQUE_ID}


def self_grant(w: World, professional: str, patient: str) -> int:
    """A professional records their own authorisation at /admin/access (TD0.3), with their token as
    `Authorization: Bearer`: the HTTP status (200, or 403 while the patient blocks them)."""
    import base64
    import json

    nh = patient if patient.endswith("^NH") else patient + "^NH"
    bearer = base64.urlsafe_b64encode(issue.serialize(token(w, professional, nh))).decode()
    conn = http.client.HTTPSConnection("127.0.0.1", w.services.port, context=w.client, timeout=30)
    try:
        conn.request("POST", "/admin/access/" + quote(patient, safe=""),
                     json.dumps({"action": "grant", "person": professional}),
                     {"Content-Type": "application/json", "Authorization": "Bearer " + bearer})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()
