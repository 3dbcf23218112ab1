"""The client side of ITI-41 and ITI-43, for `xds submit` and `xds retrieve`, and what every client
command shares: its TLS identity and the SAML assertion it sends in wsse:Security (`--assertion FILE`
or `--sts URL --sts-user NAME`).

Both directions stream: files are read in chunks while the request is sent, and a retrieved
document goes from the socket to a spool file beside the output, then is renamed into place.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import http.client
import json
import mimetypes
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lxml import etree

from xds import builder
from xds import constants as C
from xds import mtom, soap, xmlsafe
from xds.constants import last_segment
from xds.client import SoapClient, TransportError
from xds.ebrim import read_response_errors
from xds.errors import XdsError
from xds.security import issue
from xds.builder import retrieve_request  # noqa: F401  (the CLI's and the benchmarks' name for it)

REPOSITORY_PATH = "/xds/repository"
PROGRESS_FROM = 8 * 1024 * 1024  # smaller transfers finish before a progress line would help


def endpoint_url(url: str, path: str = REPOSITORY_PATH) -> str:
    """Accept a bare http://host:port and add the endpoint's path."""
    parts = urlsplit(url)
    return url if parts.path not in ("", "/") else url.rstrip("/") + path


def default_url(settings) -> str:
    """The server the settings describe: HTTPS when they give it a certificate to serve with."""
    return f"{'https' if settings.tls_cert else 'http'}://{settings.host}:{settings.port}"


# --- who the client is: its TLS identity and its SAML assertion ----------------------------------

class ClientSetupError(Exception):
    """The client cannot even send its request; exit_code 2 for what the command line got wrong."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def add_client_arguments(p) -> None:
    """The flags of every command that calls a server: the assertion to send and the TLS identity."""
    auth = p.add_argument_group("authentication (a SAML 2.0 assertion in wsse:Security, for a server with "
                                "security = xua or vihf)")
    how = auth.add_mutually_exclusive_group()
    how.add_argument("--assertion", metavar="FILE",
                     help="send this saml2:Assertion (e.g. from `xds sts token valid > a.xml`), its bytes unchanged")
    how.add_argument("--sts", metavar="URL", help="ask this WS-Trust 1.3 STS for an assertion first "
                                                  "(e.g. http://127.0.0.1:8090/sts, or the Gazelle STS)")
    auth.add_argument("--sts-user", metavar="NAME", help="the STS user (ours and Gazelle's: valid, expired, ...)")
    auth.add_argument("--sts-password", metavar="PASSWORD", default=issue.DEFAULT_PASSWORD,
                      help=f"its password (default {issue.DEFAULT_PASSWORD!r}, the Gazelle STS's)")
    auth.add_argument("--sts-audience", metavar="URI", help="the audience to ask for (AppliesTo; default: "
                                                            "the STS's own)")
    tls = p.add_argument_group("TLS (default: the settings' tls_cert, tls_key, tls_ca)")
    tls.add_argument("--tls-cert", metavar="PEM", help="client certificate for mutual TLS")
    tls.add_argument("--tls-key", metavar="PEM", help="its private key")
    tls.add_argument("--tls-ca", metavar="PEM", help="CA to trust for the server's certificate (default: the "
                                                     "system's)")


# A declaration may only open a document, and the assertion is spliced into the envelope.
_DECLARATION = re.compile(rb"\A\s*<\?xml\s[^>]*\?>")
_UTF8_NAMES = {"utf-8", "utf8", "us-ascii", "ascii"}


def read_assertion(path: str) -> bytes:
    """The file's saml2:Assertion as the bytes to put in wsse:Security: exactly the file's, without
    its XML declaration, byte order mark and surrounding blank lines (transcoded to UTF-8 when the file
    is in another encoding). Its signature covers what these bytes say, so they are never parsed and
    written out again."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ClientSetupError(f"{path}: {exc.strerror or exc}") from None
    try:
        root = xmlsafe.parse(data, path)
    except xmlsafe.UnsafeXml as exc:
        raise ClientSetupError(str(exc)) from None
    if root.tag != f"{{{issue.NS_SAML2}}}Assertion":
        raise ClientSetupError(f"{path} is not a SAML 2.0 assertion: its root element is "
                               f"{etree.QName(root).localname} in {etree.QName(root).namespace or 'no namespace'}")
    encoding = (root.getroottree().docinfo.encoding or "UTF-8").lower()
    if encoding not in _UTF8_NAMES:
        try:
            data = data.decode(encoding).encode("utf-8")
        except (LookupError, UnicodeError) as exc:
            raise ClientSetupError(f"{path}: cannot be read as {encoding}: {exc}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return _DECLARATION.sub(b"", data, count=1).strip()


def client_identity(args, settings, patient_id: str | None = None):
    """(ssl_context, assertion bytes or None) for a client command. patient_id: the patient the
    request is about, asked of the STS as the resource-id (a VIHF must name the body's patient)."""
    try:
        context = settings.client_ssl_context()
    except (OSError, ValueError) as exc:
        raise ClientSetupError(f"TLS: {exc}") from None
    sts = getattr(args, "sts", None)
    user = getattr(args, "sts_user", None)
    if getattr(args, "assertion", None):
        if user:
            raise ClientSetupError("--sts-user goes with --sts, not with --assertion")
        return context, read_assertion(args.assertion)
    if not sts:
        if user:
            raise ClientSetupError("--sts-user needs --sts URL: the STS to ask")
        return context, None
    if not user:
        raise ClientSetupError("--sts needs --sts-user NAME")
    try:
        token = issue.request_token(sts, user, args.sts_password, args.sts_audience, context,
                                    patient_id=patient_id)
    except issue.StsError as exc:
        raise ClientSetupError(f"the STS {sts} refused: {exc}", 1) from None
    except (TransportError, ValueError, xmlsafe.UnsafeXml) as exc:
        raise ClientSetupError(f"the STS {sts} could not be asked: {exc}", 1) from None
    return context, issue.serialize(token)


def soap_envelope(client: SoapClient, action: str, payload: etree._Element, assertion: bytes | None) -> bytes:
    """The request's SOAP 1.2 envelope, the assertion's bytes spliced into its wsse:Security."""
    if assertion is None:
        return client.envelope(action, payload)
    mark = f"xds-assertion-{uuid.uuid4().hex}"
    envelope = client.envelope(action, payload, extra_headers=[issue.wsse_security(etree.Comment(mark))])
    # A comment holds the assertion's place: whatever lxml would write for the element itself may
    # differ from the bytes its signer wrote.
    return envelope.replace(f"<!--{mark}-->".encode(), assertion, 1)


class Progress:
    """A percentage line on stderr, redrawn in place at most once per percent."""

    def __init__(self, label: str, total: int | None, stream=None):
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(total and total >= PROGRESS_FROM)
        self.shown = -1
        self.started = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        pct = min(100, self.done * 100 // self.total)
        if pct != self.shown:
            self.shown = pct
            rate = self.done / max(time.monotonic() - self.started, 1e-6) / 1e6
            self.stream.write(f"\r{self.label}: {pct:3d}% of {self.total / 1e6:.1f} MB ({rate:.1f} MB/s)")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.shown >= 0:
            self.stream.write("\n")
            self.stream.flush()


class _CountingReader:
    """A file-like wrapper that reports every block read to a Progress."""

    def __init__(self, inner, progress: Progress):
        self.inner = inner
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.progress.add(len(data))
        return data


@dataclass
class TransferResult:
    status: str
    errors: list[XdsError] = field(default_factory=list)
    unique_ids: list[tuple[str, str]] = field(default_factory=list)  # (file, uniqueId)
    mime_type: str | None = None
    size: int | None = None
    submitted: "Submitted | None" = None

    @property
    def ok(self) -> bool:
        return self.status == C.RESPONSE_SUCCESS


def _dtm(path: str) -> str:
    ts = _dt.datetime.fromtimestamp(os.path.getmtime(path), _dt.timezone.utc)
    return ts.strftime("%Y%m%d%H%M%S")


def guess_mime(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def provide_and_register(submit_objects: etree._Element, documents: dict[str, bytes | str],
                         inline: bool = False, content_types: dict[str, str] | None = None):
    """Wrap an lcm:SubmitObjectsRequest into an ITI-41 request.

    documents maps a Document id (the DocumentEntry's id) to its bytes or a file path. With
    inline=False each Document is an xop:Include and the attachments come back as
    [(cid, content type, bytes | path)] for SoapClient.call(..., use_mtom=True); with inline=True
    the bytes are base64 text in the Document and no attachment is needed.
    """
    pnr = etree.Element(C.q(C.NS_XDSB, "ProvideAndRegisterDocumentSetRequest"), nsmap={"xdsb": C.NS_XDSB})
    pnr.append(submit_objects)
    attachments = []
    for ident, data in documents.items():
        doc = etree.SubElement(pnr, C.q(C.NS_XDSB, "Document"), id=ident)
        if inline:
            if not isinstance(data, bytes):
                with open(data, "rb") as f:
                    data = f.read()
            doc.text = base64.b64encode(data).decode("ascii")
            continue
        cid = mtom.new_cid()
        mtom.xop_include(doc, cid)
        attachments.append((cid, (content_types or {}).get(ident, "application/octet-stream"), data))
    return pnr, attachments


@dataclass
class Submitted:
    """What one ITI-41 request says, for the `--json` answer: ids are made here (entryUUIDs as urn:uuid:
    ids, which a registry keeps), so the client knows them without asking."""
    submission_set: dict
    documents: list[dict]  # {"file", "entryUUID", "uniqueId", "mimeType", "size"}


def _entry_meta(path: str, mime: str, given: dict) -> dict:
    from .submit_metadata import document_defaults

    return {**document_defaults(path, mime), **given}


def provide_request(patient_id: str, files: list[tuple[str, str]] | list[tuple[str, str, dict]],
                    submission: dict | None = None):
    """ITI-41 metadata for (path, mimeType[, metadata]) triples: one SubmissionSet, one DocumentEntry per file;
    metadata as node/submit_metadata.py reads it, over the defaults that fit each file.

    Returns the request, its attachments [(cid, mimeType, path)] and what was submitted (Submitted)."""
    ss = dict(submission or {})
    ss_id, ss_uid = f"urn:uuid:{uuid.uuid4()}", builder.new_oid()
    ss_kwargs = {"id": ss_id, "unique_id": ss_uid, "title": ss.get("title", "Submission")}
    for key, arg in (("source_id", "source_id"), ("content_type_code", "content_type"),
                     ("author_person", "author_person"), ("author_institution", "author_institutions")):
        if key in ss:
            ss_kwargs[arg] = ss[key]
    objects = [builder.submission_set(patient_id, **ss_kwargs), builder.submission_set_marker(ss_id)]
    documents, types, described = {}, {}, []
    for i, item in enumerate(files, 1):
        path, mime = item[0], item[1]
        meta = _entry_meta(path, mime, item[2] if len(item) > 2 else {})
        mime = meta.get("mime_type", mime)
        ident, uid = f"urn:uuid:{uuid.uuid4()}", builder.new_oid()
        codes = {"class": meta["class_code"], "type": meta["type_code"], "format": meta["format_code"]}
        for key, name in (("practice_setting_code", "practice"), ("facility_type_code", "hcft")):
            if key in meta:
                codes[name] = meta[key]
        for key, name in (("confidentiality_code", "confidentiality"), ("event_code", "event")):
            if key in meta:
                codes[name] = meta[key]
        kwargs = dict(id=ident, unique_id=uid, mime_type=mime, title=meta["title"][:256],
                      creation_time=meta.get("creation_time") or _dtm(path), codes=codes,
                      service_start=meta.get("service_start"), service_stop=meta.get("service_stop"),
                      legal_authenticator=meta.get("legal_authenticator"))
        for key, arg in (("language", "language"), ("author_person", "author_person"),
                         ("author_institution", "author_institutions"), ("author_role", "author_roles"),
                         ("author_specialty", "author_specialties")):
            if key in meta:
                kwargs[arg] = meta[key]
        entry = builder.document_entry(patient_id, **kwargs)
        if meta.get("comments"):
            builder.name(entry, meta["comments"], "Description")
        objects.append(entry)
        objects.append(builder.association(ss_id, ident, id=f"urn:uuid:{uuid.uuid4()}"))
        documents[ident], types[ident] = path, mime
        described.append({"file": path, "entryUUID": ident, "uniqueId": uid, "mimeType": mime,
                          "size": os.path.getsize(path), "title": meta["title"][:256],
                          "typeCode": _code_json(meta["type_code"]), "formatCode": _code_json(meta["format_code"])})
    pnr, attachments = provide_and_register(builder.submit_objects_request(objects), documents,
                                            content_types=types)
    return pnr, attachments, Submitted({"entryUUID": ss_id, "uniqueId": ss_uid}, described)


def _code_json(code) -> dict:
    return {"code": code[0], "scheme": code[1], "display": code[2]}


def provide_files(url: str, patient_id: str, paths: list[str], mime: str | None = None,
                  timeout: float = 600.0, progress_stream=None, *, ssl_context=None,
                  assertion: bytes | None = None, metadata=None, submission: dict | None = None) -> TransferResult:
    """assertion: a saml2:Assertion's bytes, sent unchanged in wsse:Security. metadata: path -> the
    metadata of that file (node/submit_metadata.py); submission: the SubmissionSet's."""
    files = [(p, mime or guess_mime(p), (metadata or {}).get(p, {})) for p in paths]
    pnr, parts, submitted = provide_request(patient_id, files, submission)
    client = SoapClient(endpoint_url(url), timeout, ssl_context)
    writer = mtom.MtomWriter()
    total = sum(os.path.getsize(p) for p in paths)
    progress = Progress("sending", total, progress_stream)
    with contextlib.ExitStack() as stack:
        for cid, ctype, path in parts:
            f = stack.enter_context(open(path, "rb"))
            writer.add_stream(_CountingReader(f, progress), ctype, cid, size=os.path.getsize(path))
        writer.set_root(soap_envelope(client, C.ACTION_PROVIDE, pnr, assertion), soap.CONTENT_TYPE[soap.SOAP12])
        headers = {"Content-Type": writer.content_type(C.ACTION_PROVIDE),
                   "Content-Length": str(writer.content_length())}
        try:
            reply = client.send_raw(writer.chunks(), headers)
        finally:
            progress.close()
    if reply.mtom is not None:
        reply.mtom.cleanup()
    status, errors = _status(reply.envelope.body if reply.envelope is not None else None, reply.status, reply.raw)
    ok = status == C.RESPONSE_SUCCESS
    return TransferResult(status, errors, [(d["file"], d["uniqueId"]) for d in submitted.documents] if ok else [],
                          submitted=submitted)


def _status(body, http_status: int, raw: bytes) -> tuple[str, list[XdsError]]:
    if body is None:
        return "HTTP " + str(http_status), [XdsError("HTTP", raw[:300].decode("utf-8", "replace"))]
    if etree.QName(body).localname == "Fault":
        reason, subcode = issue.fault_text(body)
        if not reason:
            reason = " ".join(t.strip() for t in body.itertext() if t.strip())
        return "SOAP Fault", [XdsError(subcode or "Fault", reason)]
    rr = body if body.tag == C.q(C.NS_RS, "RegistryResponse") else body.find(C.q(C.NS_RS, "RegistryResponse"))
    return read_response_errors(rr if rr is not None else body)


def retrieve_document(url: str, unique_id: str, repository_id: str, out: str, timeout: float = 600.0,
                      progress_stream=None, *, ssl_context=None, assertion: bytes | None = None) -> TransferResult:
    """Write one document to out ('-' for stdout)."""
    client = SoapClient(endpoint_url(url), timeout, ssl_context)
    writer = mtom.MtomWriter()
    writer.set_root(soap_envelope(client, C.ACTION_RETRIEVE, retrieve_request(unique_id, repository_id), assertion),
                    soap.CONTENT_TYPE[soap.SOAP12])
    headers = {"Content-Type": writer.content_type(C.ACTION_RETRIEVE),
               "Content-Length": str(writer.content_length())}
    # Spooling beside the output lets the finished part be renamed into place, not copied.
    spool = os.path.dirname(os.path.abspath(out)) if out != "-" else None
    parts = urlsplit(client.url)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ssl_context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    message = None
    try:
        conn.request("POST", parts.path or "/", body=b"".join(writer.chunks()), headers=headers)
        resp = conn.getresponse()
        ctype = resp.getheader("Content-Type", "")
        length = resp.getheader("Content-Length")
        if mtom.parse_content_type(ctype)[0] != "multipart/related":
            raw = resp.read()
            env = _envelope(raw)
            status, errors = _status(env.body if env else None, resp.status, raw)
            return TransferResult(status, errors)
        progress = Progress("receiving", int(length) if length else None, progress_stream)
        try:
            message = mtom.read_multipart(_CountingReader(resp, progress), ctype, spool or client.spool_dir,
                                          max_part_bytes=1 << 42, max_total_bytes=1 << 43,
                                          content_length=int(length) if length else None)
        finally:
            progress.close()
        env = _envelope(message.root)
        if env is None:
            return TransferResult("HTTP " + str(resp.status), [XdsError("HTTP", "no SOAP envelope in the answer")])
        status, errors = _status(env.body, resp.status, message.root)
        found = mtom.resolve_xop(env.body, message)
        for dr in env.body.iterchildren(C.q(C.NS_XDSB, "DocumentResponse")):
            doc = dr.find(C.q(C.NS_XDSB, "Document"))
            att = found.get(doc)
            if att is None or (dr.findtext(C.q(C.NS_XDSB, "DocumentUniqueId")) or "").strip() != unique_id:
                continue
            if out == "-":
                with open(att.path, "rb") as f:
                    shutil.copyfileobj(f, sys.stdout.buffer, 1024 * 1024)
                sys.stdout.buffer.flush()
            else:
                os.replace(att.path, out)
                message.take(att.cid)  # renamed into place: no longer the spool's to remove
            mime = (dr.findtext(C.q(C.NS_XDSB, "mimeType")) or "").strip()
            return TransferResult(status, errors, mime_type=mime, size=att.size)
        return TransferResult(status, errors)
    finally:
        conn.close()
        if message is not None:
            message.cleanup()


def _envelope(raw: bytes):
    try:
        return soap.parse_envelope(raw, understood={f"{{{C.NS_WSA}}}RelatesTo"})
    except Exception:
        return None


# --- the `xds submit` and `xds retrieve` commands ------------------------------------------------

def _print_errors(errors: list[XdsError]) -> None:
    for e in errors:
        level = "error" if e.is_error else "warning"
        print(f"  {level}: {e.code}: {e.message}" + (f" [{e.location}]" if e.location else ""), file=sys.stderr)


def submit_command(args, settings) -> int:
    from .submit_metadata import MetadataError, resolve

    url = args.url or default_url(settings)
    for p in args.files:
        if not os.path.isfile(p):
            print(f"xds: {p} is not a file", file=sys.stderr)
            return 2
    try:
        metadata, submission = resolve(args, args.files)
    except MetadataError as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return 2
    try:
        context, assertion = client_identity(args, settings, args.patient)
    except ClientSetupError as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        result = provide_files(url, args.patient, args.files, args.mime, ssl_context=context, assertion=assertion,
                               metadata=metadata, submission=submission)
    except Exception as exc:  # a CLI answers with one line, not a trace
        print(f"xds: submit to {url} failed: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(submit_json(result, url, args, context, assertion), indent=2, ensure_ascii=False))
        return 0 if result.ok else 1
    print(last_segment(result.status, ""))
    _print_errors(result.errors)
    for path, uid in result.unique_ids:
        print(f"{uid}\t{path}")
    return 0 if result.ok else 1


def submit_json(result: TransferResult, url: str, args, context, assertion) -> dict:
    """What `xds submit --json` prints: the ids of what was stored and where. The repositoryUniqueId is the
    registry's answer to a GetDocuments of the new uniqueIds (the repository gives it to the entries), asked
    of --registry, or of the same server as --url."""
    answer = {"status": last_segment(result.status, ""), "ok": result.ok,
              "errors": [{"code": e.code, "message": e.message, "location": e.location,
                          "severity": "error" if e.is_error else "warning"} for e in result.errors]}
    submitted = result.submitted
    if not result.ok or submitted is None:
        return answer
    answer["submission_set"] = submitted.submission_set
    answer["documents"] = submitted.documents
    repository = {"url": endpoint_url(url), "repositoryUniqueId": None}
    registry = getattr(args, "query_registry", None) or _server_root(url)
    try:
        from .query import run_query

        uids = ", ".join(f"'{d['uniqueId']}'" for d in submitted.documents)
        found = run_query(registry, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryUniqueId", f"({uids})")],
                          ssl_context=context, assertion=assertion, timeout=30)
        held = {o.get("repositoryUniqueId") for o in found.objects if o.get("repositoryUniqueId")}
        if found.ok and len(held) == 1:
            repository["repositoryUniqueId"] = held.pop()
        elif not found.ok:
            repository["note"] = f"the registry at {registry} did not say ({last_segment(found.status, '')})"
    except Exception as exc:
        repository["note"] = f"the registry at {registry} could not be asked: {exc}"
    answer["repository"] = repository
    return answer


def _server_root(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def retrieve_command(args, settings) -> int:
    url = args.url or default_url(settings)
    out = args.output or args.unique_id
    try:
        context, assertion = client_identity(args, settings)
    except ClientSetupError as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        result = retrieve_document(url, args.unique_id, args.repository_id or settings.repository_id, out,
                                   ssl_context=context, assertion=assertion)
    except Exception as exc:
        print(f"xds: retrieve from {url} failed: {exc}", file=sys.stderr)
        return 1
    _print_errors(result.errors)
    if result.size is None:
        print(f"xds: {args.unique_id} was not retrieved ({last_segment(result.status, '')})", file=sys.stderr)
        return 1
    if out != "-":
        print(f"{out}\t{result.size} bytes\t{result.mime_type}")
    return 0
