"""`xds validate`: offline validation of a message by the server's own readers and rules (issue 16).

A lab checks what its system sends before it sends it, as with Gazelle's validators: every problem the
server would answer, with its code and location, and an exit status a script can test. Nothing here
restates a rule: the message goes through the code the transactions run (xds.validation, the ITI-41
document checks of repository.provide, the stored-query parser, the ITI-57 operation reader, ...), minus
the checks that need the registry's or repository's contents, which are named once as not checked.

Needs no settings, no database and no server: it runs before the `xds` command loads its settings.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Callable

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds import mtom, soap
from xds.errors import XdsError, XdsException
from xds.settings import Settings
from xds.xmlsafe import UnsafeXml, parse as parse_xml

EXIT_OK, EXIT_ERRORS, EXIT_UNREADABLE = 0, 1, 2

# The limits of a server run on the defaults: a message the server would refuse for its size is refused here.
MAX_DOCUMENT_BYTES = Settings.max_document_bytes
MAX_XML_BYTES = Settings.max_request_bytes
_SNIFF_BYTES = 64 * 1024

PNR = C.q(C.NS_XDSB, "ProvideAndRegisterDocumentSetRequest")
SUBMIT_OBJECTS = C.q(C.NS_LCM, "SubmitObjectsRequest")
ADHOC_QUERY = C.q(C.NS_QUERY, "AdhocQueryRequest")
RETRIEVE = C.q(C.NS_XDSB, "RetrieveDocumentSetRequest")
REMOVE_OBJECTS = C.q(C.NS_LCM, "RemoveObjectsRequest")
REMOVE_DOCUMENTS = C.q(C.NS_RMD, "RemoveDocumentsRequest")


class Unreadable(Exception):
    """The input is no message at all, or says nothing of its transaction: exit 2."""


@dataclass
class Finding:
    severity: str  # error | warning | info
    code: str
    location: str
    message: str

    @classmethod
    def of(cls, e: XdsError) -> "Finding":
        # A message is one line of output whatever the validator wrote.
        text = " ".join(e.message.split())
        return cls("error" if e.is_error else "warning", e.code, e.location or "", text)


@dataclass
class Message:
    body: etree._Element
    action: str | None  # the SOAP action it names (WS-Addressing, Content-Type or SOAPAction), if any
    xop: dict  # the MTOM attachment of each xop:Include's parent


# --- reading the input ----------------------------------------------------------------------------

_REQUEST_LINE = re.compile(rb"^[A-Z]+ \S+ HTTP/\d(\.\d)?\s*$")


def _split_headers(head: bytes) -> tuple[dict[str, str], int] | None:
    """HTTP headers on top of a body (a raw dump): their values by lower-case name and the body's offset;
    None when the first line is no header."""
    ends = [i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0]
    if not ends:
        return None
    end = min(ends)
    offset = end + (4 if head[end:end + 4] == b"\r\n\r\n" else 2)
    lines = head[:end].replace(b"\r\n", b"\n").split(b"\n")
    if lines and _REQUEST_LINE.match(lines[0]):
        lines = lines[1:]
    headers: dict[str, str] = {}
    last = None
    for n, raw in enumerate(lines, 1):
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t") and last:  # an obsolete folded continuation line
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            if n == 1:
                return None
            raise Unreadable(f"line {n} of the HTTP headers is not 'Name: value'")
        last = name.strip().lower()
        headers.setdefault(last, value.strip())
    return headers, offset


def read_message(stream, spool_dir: str, bare_lf: bool = False) -> Message:
    """The request a file holds: a bare body element, a SOAP envelope, or an MTOM multipart body with or
    without the HTTP headers of a raw dump on top. stream: a seekable binary file. Raises Unreadable."""
    head = stream.read(_SNIFF_BYTES)
    text = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    lead = text.lstrip()
    if lead.startswith(b"<"):
        stream.seek(0)
        return _xml_message(_read_xml(stream), None, "the message")
    if lead.startswith(b"--"):
        first = lead.split(b"\n", 1)[0].rstrip()
        boundary = first[2:].decode("latin-1")
        if not boundary or '"' in boundary:
            raise Unreadable("the first line starts like a MIME boundary line but names no usable boundary")
        stream.seek(0)
        content_type = f'multipart/related; boundary="{boundary}"; type="{mtom.XOP_TYPE}"'
        return _mtom_message(stream, content_type, spool_dir, bare_lf, None)
    split = _split_headers(head)
    if split is None:
        if not lead:
            raise Unreadable("the input is empty")
        raise Unreadable("the input is neither XML, nor a MIME multipart body, nor HTTP headers followed by a "
                         "blank line and a body")
    headers, offset = split
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise Unreadable("the dump's body is in chunked transfer coding; save the decoded body instead")
    http_type = headers.get("content-type")
    if not http_type:
        raise Unreadable("the HTTP headers have no Content-Type, so the body's form is unknown")
    soap_action = (headers.get("soapaction") or "").strip().strip('"') or None
    mime, _ = mtom.parse_content_type(http_type)
    stream.seek(offset)
    if mime == "multipart/related":
        return _mtom_message(stream, http_type, spool_dir, bare_lf, soap_action)
    if mime in (soap.CONTENT_TYPE[soap.SOAP12], soap.CONTENT_TYPE[soap.SOAP11], "application/xml"):
        action = soap.content_type_action(http_type) or soap_action
        return _xml_message(_read_xml(stream), action, "the HTTP body")
    raise Unreadable(f"Content-Type {mime} is not SOAP (application/soap+xml, text/xml) nor MTOM "
                     "(multipart/related)")


def _read_xml(stream) -> bytes:
    data = stream.read(MAX_XML_BYTES + 1)
    if len(data) > MAX_XML_BYTES:
        raise Unreadable(f"the XML is above the server's limit of {MAX_XML_BYTES} bytes")
    return data


def _envelope(data: bytes, what: str) -> tuple[etree._Element, soap.Envelope | None]:
    """The root element of some XML, and its SOAP envelope when it is one."""
    try:
        root = parse_xml(data, what)
    except UnsafeXml as exc:
        raise Unreadable(str(exc)) from None
    if etree.QName(root).localname != "Envelope":
        return root, None
    try:
        # A wsse:Security header is understood here: who the caller is is not checked offline.
        return root, soap.parse_envelope(data, understood={soap.WSSE_SECURITY})
    except E.SoapFault as exc:
        raise Unreadable(f"the server would answer a SOAP {exc.code} fault: {exc.reason}") from None


def _xml_message(data: bytes, action: str | None, what: str) -> Message:
    root, env = _envelope(data, what)
    if env is None:
        return Message(root, action, {})
    return Message(env.body, env.action or action, {})


def _mtom_message(stream, content_type: str, spool_dir: str, bare_lf: bool, soap_action: str | None) -> Message:
    here = stream.tell()
    stream.seek(0, io.SEEK_END)
    remaining = stream.tell() - here
    stream.seek(here)
    try:
        message = mtom.read_multipart(stream, content_type, spool_dir, max_part_bytes=MAX_DOCUMENT_BYTES,
                                      max_total_bytes=remaining + 1, max_xml_bytes=MAX_XML_BYTES,
                                      bare_lf=bare_lf)
    except mtom.MtomError as exc:
        hint = "; here --mime-bare-lf accepts it"
        raise Unreadable(f"the MTOM body is refused: {exc}" + (hint if "bare LF" in str(exc) else "")) from None
    root, env = _envelope(message.root, "the MTOM root part")
    action = soap.content_type_action(content_type) or soap_action or \
        soap.content_type_action(message.root_content_type)
    try:
        xop = mtom.resolve_xop(env.root if env is not None else root, message)
    except mtom.MtomError as exc:
        raise Unreadable(f"the MTOM message is refused: {exc}") from None
    if env is None:
        return Message(root, action, xop)
    return Message(env.body, env.action or action, xop)


# --- which transaction ----------------------------------------------------------------------------

def _is_update(body: etree._Element) -> bool:
    """ITI-57 reuses ITI-42's message; its operations show in how the SubmissionSet points at things
    (registry/update_ops.py): a status change, an added association, a new version's PreviousVersion."""
    for a in body.iter(C.q(C.NS_RIM, "Association")):
        if a.get("associationType") in (C.ASSOC_UPDATE_AVAILABILITY_STATUS, C.ASSOC_SUBMIT_ASSOCIATION):
            return True
        if any(s.get("name") == "PreviousVersion" for s in a.iterchildren(C.q(C.NS_RIM, "Slot"))):
            return True
    return False


def _is_on_demand(body: etree._Element) -> bool:
    return any(eo.get("objectType") == C.OBJECT_TYPE_ON_DEMAND for eo in body.iter(C.q(C.NS_RIM, "ExtrinsicObject")))


def detect(message: Message) -> str:
    """The transaction of a message: its SOAP action, else its body's root element. Raises Unreadable."""
    if message.action:
        tx = C.TRANSACTIONS.get(message.action, "").lower()
        if tx in VALIDATORS:
            return tx
    body = message.body
    if body.tag == PNR:
        return "iti-41"
    if body.tag == SUBMIT_OBJECTS:
        return "iti-57" if _is_update(body) else "iti-61" if _is_on_demand(body) else "iti-42"
    if body.tag == ADHOC_QUERY:
        from registry.query.params import MPQ_QUERIES

        query = body.find(C.q(C.NS_RIM, "AdhocQuery"))
        return "iti-51" if query is not None and (query.get("id") or "").strip() in MPQ_QUERIES else "iti-18"
    if body.tag == RETRIEVE:
        return "iti-43"
    if body.tag == REMOVE_OBJECTS:
        return "iti-62"
    if body.tag == REMOVE_DOCUMENTS:
        return "iti-86"
    said = f"; its action {message.action} is not one of the transactions checked here" if message.action else ""
    raise Unreadable(f"the transaction of a <{etree.QName(body).localname}> body cannot be told{said}; "
                     f"give --transaction ({', '.join(VALIDATORS)})")


# --- the transactions' checks ----------------------------------------------------------------------

@dataclass
class Options:
    profile: str = "ihe"
    lenient: bool = False
    implied_references: bool = False


def _registry_config(opts: Options):
    from registry.config import RegistryConfig

    return RegistryConfig(profile=opts.profile, implied_references=opts.implied_references)


def _register(mode_name: str):
    def run(message: Message, opts: Options) -> list[XdsError]:
        from registry.register import check_object_refs, read_submission
        from xds.validation import Mode

        mode = Mode(mode_name)
        sub, found = read_submission(message.body, _registry_config(opts), mode)
        check_object_refs(sub, mode, found)
        return found.items
    return run


def _update(restricted: bool):
    def run(message: Message, opts: Options) -> list[XdsError]:
        from registry.register import read_submission
        from registry.update_ops import read_operations
        from xds.validation import Mode

        config = _registry_config(opts)
        sub, found = read_submission(message.body, config, Mode.UPDATE)
        items = list(found.items)
        # The registry reads the operations once the metadata passes; reading them now as well reports
        # everything in one round. Without a SubmissionSet there is nothing to read them from.
        if sub.submission_sets:
            try:
                read_operations(sub, config.rules.statuses, restricted)
            except XdsException as exc:
                items += exc.errors
        return items
    return run


def _provide(message: Message, opts: Options) -> list[XdsError]:
    from repository.provide import check_documents, digest_inline, read_documents
    from registry.register import check_object_refs
    from xds.ebrim import parse_submission
    from xds.validation import Mode, validate_submission

    body = message.body
    if body.tag != PNR:
        raise XdsException(E.REPOSITORY_ERROR, f"expected xdsb:ProvideAndRegisterDocumentSetRequest, got "
                           f"{etree.QName(body).localname}", "Body")
    unread: list[XdsError] = []
    try:
        contents = read_documents(body, message.xop,
                                  lambda ident, text: digest_inline(ident, text, MAX_DOCUMENT_BYTES))
    except XdsException as exc:
        contents, unread = None, exc.errors
    sub = parse_submission(body)
    if contents is None:
        # The repository stops at Documents it cannot read; their metadata is still worth checking.
        found = validate_submission(sub, Mode.PROVIDE, opts.profile, implied_references=opts.implied_references)
    else:
        _, found = check_documents(body, sub, contents, profile=opts.profile, lenient=opts.lenient,
                                   implied_references=opts.implied_references, repository_id=None,
                                   max_document_bytes=MAX_DOCUMENT_BYTES)
    # The registry the repository forwards the metadata to refuses these ObjectRefs in turn.
    check_object_refs(sub, Mode.PROVIDE, found)
    return unread + found.items


def _query(transaction: str):
    def run(message: Message, opts: Options) -> list[XdsError]:
        from registry.query.params import parse_params, read_request
        from xds.validation import get_profile

        req = read_request(message.body)
        return parse_params(req.query_id, req.slots, get_profile(opts.profile), transaction).warnings
    return run


def _retrieve(message: Message, opts: Options) -> list[XdsError]:
    from xds.xdsb import read_requests

    read_requests(message.body)
    return []


def _remove_documents(message: Message, opts: Options) -> list[XdsError]:
    from repository.remove import REQUEST_TAG
    from xds.xdsb import read_requests

    read_requests(message.body, REQUEST_TAG)
    return []


def _delete(message: Message, opts: Options) -> list[XdsError]:
    from registry.delete import read_object_refs

    read_object_refs(message.body)
    return []


_REGISTRY_STATE = ("ids already used in the registry, patientId known to the identity feed (XDSUnknownPatientId), "
                   "uniqueIds already registered (XDSDuplicateUniqueIdInRegistry, XDSNonIdenticalHash, "
                   "XDSNonIdenticalSize), references to registry objects (UnresolvedReferenceException), "
                   "RPLC/APND/XFRM/signs targets (existing, Approved, same patient), the access policy")

# Each transaction: its checks, and what only the server can check (it needs its contents or the caller).
VALIDATORS: dict[str, tuple[Callable[[Message, Options], list[XdsError]], str]] = {
    "iti-41": (_provide, "the repository's stored documents (same uniqueId with another hash), its "
                         "repositoryUniqueId, and the registry's: " + _REGISTRY_STATE),
    "iti-42": (_register("register"), _REGISTRY_STATE + ", the repository directory (--require-known-repositories)"),
    "iti-61": (_register("on-demand"), _REGISTRY_STATE + ", RPLC targets being On-Demand entries"),
    "iti-57": (_update(False), "the previous versions (lid, PreviousVersion, status, unchanged attributes and "
                               "the profile's updatable ones), status changes against the current status, added "
                               "associations' ends, and " + _REGISTRY_STATE),
    "iti-92": (_update(True), "the previous versions and the attributes ITI-92 may not change, and "
                              + _REGISTRY_STATE),
    "iti-18": (_query("ITI-18"), "the answer (XDSTooManyResults, XDSResultNotSinglePatient) and the access policy"),
    "iti-51": (_query("ITI-51"), "the answer (XDSTooManyResults) and the access policy"),
    "iti-43": (_retrieve, "whether the repository holds each document, its repositoryUniqueId, the access policy"),
    "iti-86": (_remove_documents, "whether the repository holds each document, its repositoryUniqueId"),
    "iti-62": (_delete, "whether the objects exist, what still references them, the access policy"),
}


def validate(message: Message, transaction: str, opts: Options) -> list[XdsError]:
    """The server's answer to message, as far as the message alone decides it: errors and warnings."""
    check, _ = VALIDATORS[transaction]
    try:
        return check(message, opts)
    except XdsException as exc:
        return exc.errors


# --- the command ------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="the message: a body element, a SOAP envelope or an MTOM multipart body, with or without "
                        "the HTTP headers of a raw dump; '-' reads standard input")
    p.add_argument("--profile", choices=("ihe", "dmp"), default="ihe",
                   help="the metadata profile to check against: ihe (default) or dmp (French DMP)")
    p.add_argument("--transaction", type=str.lower, choices=tuple(VALIDATORS),
                   help="default: from the SOAP action, else from the body's root element")
    p.add_argument("--lenient", action="store_true",
                   help="profile dmp: CDA headers that contradict the metadata are warnings, as the server's "
                        "--lenient makes them")
    p.add_argument("--implied-references", action="store_true",
                   help="a nested Classification or ExternalIdentifier may omit classifiedObject / registryObject "
                        "(with a warning), as the server's --implied-references allows")
    p.add_argument("--mime-bare-lf", action="store_true",
                   help="accept MTOM framing in bare LF, as the server's --mime-bare-lf does")
    p.add_argument("--json", action="store_true",
                   help="print one JSON list of the findings (file, transaction, profile, severity, code, "
                        "location, message)")
    p.add_argument("--quiet", "-q", action="store_true", help="print the errors only")


@dataclass
class Report:
    file: str
    transaction: str | None
    findings: list[Finding]
    status: int


def check_file(path: str, transaction: str | None, opts: Options, bare_lf: bool = False,
               stdin=None) -> Report:
    """Validate one file ('-': stdin)."""
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            stream = io.BytesIO((stdin or sys.stdin.buffer).read())
        else:
            stream = open(path, "rb")
    except OSError as exc:
        return Report(name, transaction, [Finding("fatal", "Unreadable", "", f"cannot open: {exc.strerror}")],
                      EXIT_UNREADABLE)
    with stream, tempfile.TemporaryDirectory(prefix="xds-validate-") as spool:
        try:
            message = read_message(stream, spool, bare_lf)
            tx = transaction or detect(message)
        except Unreadable as exc:
            return Report(name, transaction, [Finding("fatal", "Unreadable", "", str(exc))], EXIT_UNREADABLE)
        findings = [Finding.of(e) for e in validate(message, tx, opts)]
    findings.append(Finding("info", "NotCheckedOffline", "", VALIDATORS[tx][1]))
    status = EXIT_ERRORS if any(f.severity == "error" for f in findings) else EXIT_OK
    return Report(name, tx, findings, status)


def _line(f: Finding) -> str:
    if f.severity == "info":
        return f"INFO not checked offline (needs the server's contents): {f.message}"
    where = f" at {f.location}" if f.location else ""
    return f"{f.severity.upper()} {f.code}{where}: {f.message}"


def command(args) -> int:
    opts = Options(args.profile or "ihe", bool(args.lenient), bool(args.implied_references))
    reports = [check_file(path, args.transaction, opts, bool(getattr(args, "mime_bare_lf", False)))
               for path in args.files]
    if args.json:
        out = [{"file": r.file, "transaction": r.transaction, "profile": opts.profile, **asdict(f)}
               for r in reports for f in r.findings]
        print(json.dumps(out, indent=2, ensure_ascii=False))
    for r in reports:
        if r.status == EXIT_UNREADABLE:
            print(f"{r.file}: {r.findings[0].message}", file=sys.stderr)
            continue
        if args.json:
            continue
        for f in r.findings:
            if f.severity == "error" or not args.quiet:
                print(_line(f))
        if not args.quiet:
            errors = sum(f.severity == "error" for f in r.findings)
            warnings = sum(f.severity == "warning" for f in r.findings)
            print(f"{r.file}: {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)} "
                  f"({r.transaction}, profile {opts.profile})")
    return max(r.status for r in reports)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m node.validate", description=__doc__.splitlines()[0])
    add_arguments(p)
    return command(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
