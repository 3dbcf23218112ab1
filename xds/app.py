"""The HTTP application: SOAP endpoints that route WS-Addressing actions to actor handlers.

The core knows no actor: registry and repository each contribute an Endpoint with their
operations, and one application can carry either or both.

The application knows no HTTP server either: it is a WSGI callable that reads two keys the
server's adapter (docs/decisions.md, "HTTP server adapter") puts into the environ, INPUT_KEY and
PEER_KEY below. Without them (an environ made by hand) it reads wsgi.input and sees no client
certificate.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qs

from lxml import etree

from . import constants as C
from . import async_reply, logs, metrics, mtom, pipeline, soap, spliced
from .ebrim import registry_response
from .errors import SoapFault, XdsError
from .security.principal import ANONYMOUS, Principal
from .security.xua import NoSecurity

log = logging.getLogger("xds.app")

# The request body: an object with read(n), and readinto(memoryview) when the server can fill a buffer.
INPUT_KEY = "xds.input"
# Offered by a server that can send a file's bytes itself (sendfile): a callable (path, offset, length)
# whose result the application may yield among its body's bytes chunks. Absent: every chunk is bytes.
FILE_REGION_KEY = "xds.file_region"
# The subject of the client certificate verified during the TLS handshake; absent without one.
from .http_auth import PEER_KEY, REFUSAL_KEY  # noqa: E402 (the verified client certificate subject, set by the HTTP adapter)


# Set on a request's environ once a worker owns its spooled MTOM parts (asynchronous replies).
_HANDED_OVER = "xds.async_handed_over"


class MalformedBody(ValueError):
    """Raised by the INPUT_KEY stream when the body's HTTP framing is broken (a chunk size that is
    not hexadecimal, a chunk not ended by CRLF): the client's fault, answered 400."""


# How much of a request path an answer quotes back: enough to recognise it, never the client's megabyte.
_PATH_SHOWN = 200


def _shown(path: str) -> str:
    return path if len(path) <= _PATH_SHOWN else path[:_PATH_SHOWN] + f"... ({len(path)} characters)"


def request_input(environ: dict):
    """The body of the request, as the server's adapter hands it over (INPUT_KEY), else wsgi.input."""
    stream = environ.get(INPUT_KEY)
    return environ["wsgi.input"] if stream is None else stream


@dataclass
class SoapRequest:
    envelope: soap.Envelope
    environ: dict
    request_id: str
    mtom: mtom.MtomMessage | None = None
    # The attachment each xop:Include names, keyed by the Include's parent (resolved once, by the app).
    xop: dict[etree._Element, mtom.Attachment] = field(default_factory=dict)

    # Set by the pipeline (xds/pipeline.py): the operation called, who calls, and the policy to ask.
    action: str = ""
    operation: "Operation | None" = None
    principal: Principal = ANONYMOUS
    policy: object = None
    # The endpoint's maker of request-scoped policy objects (its actor's access policy), if it has one.
    policy_for: "Callable | None" = None
    actor: str | None = None   # the endpoint's actor, as audit records name it ("Document Registry", ...)
    # An in-process caller already authenticated by its own layer (XdsApp.call: the patients' portal,
    # signed in by OpenID Connect). Never set for a request read off the network.
    authenticated: Principal | None = None
    # Set by the registry's ITI-42/ITI-61 handler: what it registered, for the audit layer (registry/register.py).
    registered: dict | None = None

    @property
    def body(self) -> etree._Element:
        return self.envelope.body

    def security_to_pass_on(self) -> list[etree._Element]:
        """The caller's wsse:Security, for a hop that passes it on unchanged (the repository's ITI-42,
        the registry's routed ITI-43): each hop authenticates as itself over TLS, the assertion says
        for whom. Not mustUnderstand on the next hop: a peer that does not process assertions still
        serves the system it knows. Handlers never read what is in it."""
        header = self.envelope.header(soap.WSSE_SECURITY)
        if header is None:
            return []
        copy = etree.fromstring(etree.tostring(header))
        for name in list(copy.attrib):
            if etree.QName(name).localname == "mustUnderstand":
                del copy.attrib[name]
        return [copy]

    @property
    def peer_subject(self) -> str | None:
        """The verified client certificate subject (RFC 2253-like DN), or None."""
        return self.environ.get(PEER_KEY)


class SoapResponse:
    """attachments: (content_type, bytes | file path) referenced by xop:Include cids in the payload.
    mtom: None answers in the request's packaging. cleanup: called once the answer has been sent (or
    failed), e.g. to delete the files attachments came from.
    parts: the children of the payload's rim:RegistryObjectList as bytes (xds/spliced.py), spliced into the
    serialised envelope; `payload` parses them into the tree the first time a layer asks for it, `head` is
    the payload without them (its status and errors), for the layers that read only those."""

    def __init__(self, payload: etree._Element, attachments: list[tuple[str, str, bytes | str]] | None = None,
                 mtom: bool | None = None, cleanup: Callable[[], None] | None = None,
                 parts: list[bytes] | None = None):
        self._payload = payload
        self.attachments = attachments if attachments is not None else []
        self.mtom = mtom
        self.cleanup = cleanup
        self._parts = parts
        self._objects: list[etree._Element] | None = None
        if parts is not None:
            spliced.mark(payload)

    @property
    def payload(self) -> etree._Element:
        if self._parts is not None:
            spliced.materialise(self._payload, self._parts)
            self._parts = None
        return self._payload

    @property
    def head(self) -> etree._Element:
        return self._payload

    def registry_objects(self) -> list[etree._Element]:
        """The registry objects the answer holds, as elements, for a layer that reads them (the audit of a
        query by ids): parsed from the serialised parts once, but not put into the payload, which then still
        goes out spliced instead of being serialised whole again."""
        if self._parts is None:
            holder = self._payload.find(spliced.LIST)
            return [] if holder is None else [el for el in holder if isinstance(el.tag, str)]
        if self._objects is None:
            self._objects = spliced.parsed(self._parts)
        return self._objects

    def envelope(self, version: str, action: str | None, relates_to: str | None, to: str | None = None) -> bytes:
        body = soap.build_envelope(version, action, relates_to, self._payload, to=to)
        return body if self._parts is None else spliced.join(body, self._parts)


@dataclass
class Operation:
    handler: Callable[[SoapRequest], SoapResponse]
    response_action: str
    # Builds the failure payload when the handler raises: each transaction answers in its own message type.
    error_payload: Callable[[list[XdsError]], etree._Element] = registry_response
    mtom_response: bool | None = None  # force MTOM (ITI-43) regardless of the request
    # A patient identity feed (ITI-44, ITI-64): a PIX source is a system that authenticates by its TLS
    # certificate and its handler decides whether that certificate may feed (registry.feed_sources), as
    # ITI-8 does, so under xua/vihf it needs no assertion (one it sends is still verified).
    certificate_alone: bool = False


@dataclass
class Endpoint:
    path: str
    operations: dict[str, Operation]
    wsdl: str | None = None  # file name in the wsdl package
    # request -> the request-scoped policy object its handlers ask (xds/pipeline.py, Authorise).
    policy_for: Callable | None = None
    actor: str | None = None   # "Document Registry" | "Document Repository": who audits what is served here


@dataclass
class AppConfig:
    spool_dir: str = field(default_factory=tempfile.gettempdir)
    max_request_bytes: int = 64 * 1024 * 1024      # plain SOAP requests
    max_document_bytes: int = 4 * 1024 ** 3        # one MTOM attachment
    max_mtom_bytes: int = 8 * 1024 ** 3            # a whole MTOM request
    base_url: str | None = None
    mime_bare_lf: bool = False                     # accept MTOM framing with bare LF line ends
    # The WSDLs require wsa:Action and wsa:MessageID on every request; by default a request that names its
    # action only in the Content-Type (or SOAPAction) is taken too, as many Document Sources send it.
    require_ws_addressing: bool = False
    # The pipeline's layers (xds/pipeline.py): who is calling, what they may do, who is told.
    authenticator: object = field(default_factory=NoSecurity)
    policy_for: Callable | None = None
    auditor: object = None                          # xds.audit.Auditor; None: nothing is recorded
    # Asynchronous replies (xds/async_reply.py): the address prefixes a ReplyTo/FaultTo may name (empty:
    # none, every request is answered on its HTTP response), and the TLS context for https ones.
    async_reply_to: list[str] = field(default_factory=list)
    async_ssl_context: object = None
    # xds.metrics.Metrics: counted as the outermost layer and served at GET /metrics; None: neither.
    metrics: object = None


def _answer_status(payload: etree._Element) -> etree._Element | None:
    """The element carrying the answer's status: the payload itself (RegistryResponse,
    AdhocQueryResponse) or the RegistryResponse inside it (RetrieveDocumentSetResponse)."""
    if payload.get("status") is not None:
        return payload
    return payload.find(C.q(C.NS_RS, "RegistryResponse"))


def _log_outcome(action: str, message_id: str | None, payload: etree._Element) -> None:
    """Every answer that is not a plain Success leaves a line, as faults do: the transaction, its
    status and error codes, and the request's MessageID; never the metadata or the patient."""
    holder = _answer_status(payload)
    status = holder.get("status") if holder is not None else None
    if status is None or status == C.RESPONSE_SUCCESS:
        return
    codes = [e.get("errorCode") for e in holder.iter(C.q(C.NS_RS, "RegistryError"))
             if e.get("severity") != C.SEVERITY_WARNING]
    log.warning(json.dumps({"event": "answer", "transaction": C.TRANSACTIONS.get(action, action),
                            "status": C.last_segment(status), "error_codes": sorted(set(codes)),
                            "errors": len(codes), "message_id": message_id}))


def _fault_response(version: str, fault: SoapFault, relates_to: str | None):
    body = soap.build_fault(version, fault, relates_to)
    status = fault.http_status
    return f"{status} {'Bad Request' if status == 400 else 'Error'}", soap.CONTENT_TYPE[version], body


class XdsApp:
    def __init__(self, endpoints: list[Endpoint], config: AppConfig | None = None,
                 health: Callable[[], dict] | None = None, routes: dict[str, Callable] | None = None,
                 on_auth_refusal: Callable[[dict, str | None], None] | None = None):
        """routes: path prefix -> WSGI application for the endpoints that are not SOAP (the administration
        interface); each authenticates through xds/http_auth.py with this application's authenticator."""
        self.endpoints = {e.path.rstrip("/"): e for e in endpoints}
        self.routes = dict(routes or {})
        self.on_auth_refusal = on_auth_refusal  # told of each refused authentication at those routes
        self.config = config or AppConfig()
        self.health = health
        c = self.config
        layers = pipeline.default_layers(c.authenticator, c.policy_for, c.auditor)
        if c.metrics is not None:
            # Outermost, so that the latency and the outcome include audit and authentication.
            layers = [c.metrics.layer()] + layers
            c.metrics.expect(C.TRANSACTIONS.get(a, "") for e in endpoints for a in e.operations)
        self._pipeline = pipeline.compose(layers, lambda req: req.operation.handler(req))
        # wsse:Security is understood only where an authentication layer processes it.
        self._understood = {soap.WSSE_SECURITY} if c.authenticator.mode != "none" else set()
        self._replies = async_reply.Replies(c.async_ssl_context)  # its workers start with the first use

    def close(self, timeout: float = 30.0) -> None:
        """Finish the asynchronous requests already accepted (HTTP 202), then stop their workers."""
        self._replies.close(timeout)

    def call(self, path: str, action: str, body: etree._Element, principal: Principal,
             environ: dict | None = None) -> SoapResponse:
        """One transaction from inside the server (the patients' portal), through the same layers as a
        SOAP request: audit, the caller's policy, the handler. ``principal`` is who the in-process caller
        authenticated (a portal session); ``environ`` the HTTP request it serves, for the audit record."""
        endpoint = self.endpoints.get(path.rstrip("/"))
        op = endpoint.operations.get(action) if endpoint is not None else None
        if op is None:
            raise KeyError(f"no operation {action} at {path}")
        request_id = uuid.uuid4().hex[:16]
        env = soap.Envelope(version=soap.SOAP12, body=body, action=action,
                            message_id=f"urn:uuid:{uuid.uuid4()}")
        req = SoapRequest(envelope=env, environ=dict(environ or {}), request_id=request_id, action=action,
                          operation=op, policy_for=endpoint.policy_for, actor=endpoint.actor,
                          authenticated=principal)
        resp = self._pipeline(req)
        _log_outcome(action, env.message_id, resp.head)
        return resp

    # --- WSGI entry -------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        request_id = (environ.get("HTTP_X_REQUEST_ID") or "")[:64] or uuid.uuid4().hex[:16]
        token = logs.request_id.set(request_id)
        started = time.perf_counter()
        path = (environ.get("PATH_INFO") or "/").rstrip("/") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if path == "/health" and method == "GET":
                try:
                    facts = self.health() if self.health else {}
                except Exception as exc:  # the database (or whatever health checks) cannot answer
                    log.warning(json.dumps({"event": "health", "outcome": "unavailable",
                                            "reason": exc.__class__.__name__}))
                    return self._json(start_response, 503, {"status": "unavailable",
                                                            "reason": "the database does not answer"})
                return self._json(start_response, 200, {"status": "ok", **facts})
            if path == "/metrics" and method == "GET" and self.config.metrics is not None:
                content_type, body = self.config.metrics.exposition(environ.get("HTTP_ACCEPT", ""))
                start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                          ("Cache-Control", "no-store")])
                return [body]
            if path == "/" and method == "GET":
                return self._index(start_response)
            for prefix, route in self.routes.items():
                if path == prefix or path.startswith(prefix + "/"):
                    if self.on_auth_refusal is not None:
                        environ[REFUSAL_KEY] = self.on_auth_refusal
                    return route(environ, start_response)
            endpoint = self.endpoints.get(path)
            if endpoint is None:
                return self._plain(start_response, "404 Not Found", f"no XDS endpoint at {_shown(path)}\n")
            if method == "GET":
                return self._wsdl(environ, start_response, endpoint)
            if method != "POST":
                return self._plain(start_response, "405 Method Not Allowed", "SOAP endpoints take POST\n",
                                   [("Allow", "GET, POST")])
            return self._soap(environ, start_response, endpoint, request_id)
        finally:
            log.info(json.dumps({"event": "request", "method": method, "path": path,
                                 "peer": environ.get("REMOTE_ADDR"),
                                 "ms": round((time.perf_counter() - started) * 1000, 2)}))
            logs.request_id.reset(token)

    # --- SOAP --------------------------------------------------------------------------------------
    def _soap(self, environ, start_response, endpoint: Endpoint, request_id: str):
        content_type = environ.get("CONTENT_TYPE", "")
        mime, params = mtom.parse_content_type(content_type)
        version = soap.SOAP11 if mime == "text/xml" else soap.SOAP12
        message = None
        env = None
        action = None
        if self.config.metrics is not None:
            environ[metrics.STARTED_KEY] = time.perf_counter()
        try:
            if mime == "multipart/related":
                message, envelope_bytes = self._read_mtom(environ, content_type)
                root_mime, root_params = mtom.parse_content_type(message.root_content_type)
                version = soap.SOAP11 if root_params.get("type", "").lower() == "text/xml" else soap.SOAP12
            elif mime in ("application/soap+xml", "text/xml"):
                envelope_bytes = self._read_plain(environ)
            else:
                raise SoapFault(f"content type {mime or '(none)'} is not SOAP; send application/soap+xml "
                                f"(SOAP 1.2), text/xml (SOAP 1.1) or multipart/related MTOM", http_status=415)
            env = soap.parse_envelope(envelope_bytes, understood=self._understood)
            if env.version != version and message is None:
                raise SoapFault(f"a SOAP {env.version} envelope was sent as {mime}", code="VersionMismatch")
            action = env.action or soap.content_type_action(content_type) or \
                (environ.get("HTTP_SOAPACTION") or "").strip().strip('"') or None
            if not action:
                raise SoapFault("the request has no WS-Addressing Action header", subcode="a:MessageAddressingHeaderRequired")
            if self.config.require_ws_addressing:
                missing = [name for name, value in (("wsa:Action", env.action), ("wsa:MessageID", env.message_id))
                           if not value]
                if missing:
                    raise SoapFault(f"the request has no {' and no '.join(missing)} header: this server requires "
                                    "WS-Addressing 1.0 on every request (require_ws_addressing)",
                                    subcode="a:MessageAddressingHeaderRequired")
            op = endpoint.operations.get(action)
            if op is None:
                raise SoapFault(f"action {action} is not served at {endpoint.path}; served here: "
                                f"{', '.join(sorted(endpoint.operations))}", subcode="a:ActionNotSupported")
            xop = {}
            if message is not None:
                try:
                    xop = mtom.resolve_xop(env.root, message)
                except mtom.MtomError as exc:
                    raise SoapFault(str(exc)) from None
            elif env.root.find(f".//{{{C.NS_XOP}}}Include") is not None:
                raise SoapFault("the envelope holds an xop:Include but the request is not MTOM "
                                "(multipart/related; type=\"application/xop+xml\")")
            reply_route = async_reply.route(env, action, self.config.async_reply_to)
            req = SoapRequest(envelope=env, environ=environ, request_id=request_id, mtom=message, xop=xop,
                              action=action, operation=op, policy_for=endpoint.policy_for,
                              actor=endpoint.actor)
            if reply_route is not None:
                return self._accept(start_response, req, reply_route, op, message)
            resp = self._pipeline(req)
            _log_outcome(action, env.message_id, resp.head)
            use_mtom = resp.mtom if resp.mtom is not None else (
                op.mtom_response if op.mtom_response is not None else message is not None)
            return self._answer(start_response, env.version, op.response_action, env.message_id, resp, use_mtom,
                                environ.get(FILE_REGION_KEY))
        except SoapFault as fault:
            log.warning(json.dumps({"event": "soap_fault", "reason": fault.reason}))
            if self.config.metrics is not None and not environ.get(metrics.COUNTED_KEY):
                self.config.metrics.fault(action, environ.get(metrics.STARTED_KEY))
            status, ctype, body = _fault_response(env.version if env else version, fault,
                                                  env.message_id if env else None)
            start_response(status, [("Content-Type", f"{ctype}; charset=UTF-8"), ("Content-Length", str(len(body)))])
            return [body]
        finally:
            if message is not None and not environ.get(_HANDED_OVER):
                message.cleanup()

    def _accept(self, start_response, req: SoapRequest, reply_route, op: Operation, message):
        """A request to answer on a connection of its own: queued (or refused on this response when the
        workers are all busy), then 202 with an empty body. The worker runs the whole pipeline."""
        # The server's environ belongs to this HTTP exchange; the worker keeps what the layers read.
        original = req.environ
        req.environ = {k: v for k, v in original.items() if k not in (INPUT_KEY, "wsgi.input")}

        def process(r: SoapRequest):
            resp = self._pipeline(r)
            _log_outcome(r.action, r.envelope.message_id, resp.head)
            use_mtom = resp.mtom if resp.mtom is not None else (
                op.mtom_response if op.mtom_response is not None else message is not None)
            return op.response_action, resp, use_mtom

        self._replies.submit(req, reply_route, process, message.cleanup if message is not None else None)
        original[_HANDED_OVER] = True
        start_response("202 Accepted", [("Content-Length", "0")])
        return [b""]

    def _content_length(self, environ) -> int | None:
        raw = environ.get("CONTENT_LENGTH")
        if raw in (None, ""):
            return None
        try:
            length = int(raw)
        except ValueError:
            raise SoapFault(f"Content-Length {raw[:40]!r} is not a number") from None
        if length < 0:
            raise SoapFault(f"Content-Length {length} is negative")
        return length

    def _read_plain(self, environ) -> bytes:
        length = self._content_length(environ)
        limit = self.config.max_request_bytes
        if length is not None and length > limit:
            raise SoapFault(f"request of {length} bytes is above the limit of {limit} bytes", http_status=413)
        try:
            return self._read_all(request_input(environ), length, limit)
        except MalformedBody as exc:
            raise SoapFault(f"the request body's HTTP framing is malformed: {exc}") from None

    @staticmethod
    def _read_all(stream, length: int | None, limit: int) -> bytes:
        if length is not None:
            data = stream.read(length)
            if len(data) < length:
                raise SoapFault(f"request body ended after {len(data)} of {length} bytes")
            return data
        chunks, total = [], 0
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise SoapFault(f"request is above the limit of {limit} bytes", http_status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    def _read_mtom(self, environ, content_type: str):
        length = self._content_length(environ)
        if length is not None and length > self.config.max_mtom_bytes:
            raise SoapFault(f"request of {length} bytes is above the limit of {self.config.max_mtom_bytes} bytes",
                            http_status=413)
        try:
            message = mtom.read_multipart(request_input(environ), content_type,
                                          self.config.spool_dir,
                                          max_part_bytes=self.config.max_document_bytes,
                                          max_total_bytes=self.config.max_mtom_bytes,
                                          max_xml_bytes=self.config.max_request_bytes, content_length=length,
                                          bare_lf=self.config.mime_bare_lf)
        except mtom.MtomError as exc:
            raise SoapFault(f"MTOM request rejected: {exc}",
                            http_status=413 if isinstance(exc, mtom.MtomLimitError) else 400) from None
        except MalformedBody as exc:
            raise SoapFault(f"the request body's HTTP framing is malformed: {exc}") from None
        return message, message.root

    def _answer(self, start_response, version, action, relates_to, resp: SoapResponse, use_mtom: bool,
                file_region=None):
        if resp.cleanup is None:
            return self._answer_body(start_response, version, action, relates_to, resp, use_mtom, file_region)
        try:
            body = self._answer_body(start_response, version, action, relates_to, resp, use_mtom, file_region)
        except BaseException:
            resp.cleanup()
            raise
        return _then(body, resp.cleanup)

    def _answer_body(self, start_response, version, action, relates_to, resp: SoapResponse, use_mtom: bool,
                     file_region=None):
        if not use_mtom:
            body = resp.envelope(version, action, relates_to)
            start_response("200 OK", [("Content-Type", f"{soap.CONTENT_TYPE[version]}; charset=UTF-8"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        writer = mtom.MtomWriter()
        for cid, ctype, data in resp.attachments:
            if isinstance(data, bytes):
                writer.add_bytes(data, ctype, cid)
            else:
                writer.add_file(data, ctype, cid)
        writer.set_root(resp.envelope(version, action, relates_to),
                        soap.CONTENT_TYPE[version])
        headers = [("Content-Type", writer.content_type(action))]
        n = writer.content_length()
        if n is not None:
            headers.append(("Content-Length", str(n)))
        start_response("200 OK", headers)
        # The parts stay files up to the server when it sends files itself (FILE_REGION_KEY).
        return writer.chunks(file_region)

    # --- WSDL and plain answers --------------------------------------------------------------------
    def _index(self, start_response):
        """GET /: what this server is and where its endpoints are, for a person who typed its address."""
        import html
        from importlib.metadata import PackageNotFoundError, version

        try:
            release = version("xds-server")
        except PackageNotFoundError:
            release = "unknown"
        try:
            role = (self.health() or {}).get("role", "") if self.health else ""
        except Exception:
            role = ""
        # The zeep variant (wsdl/__init__.py, VARIANTS) is offered for the endpoints whose schemas import rim.xsd.
        variant = {"registry.wsdl", "repository.wsdl"}
        items = [f'<li><a href="{html.escape(p)}?wsdl"><code>{html.escape(p)}</code></a> (SOAP; its WSDL: '
                 f'<code>?wsdl</code>'
                 + (f', for zeep and suds: <a href="{html.escape(p)}?wsdl=zeep"><code>?wsdl=zeep</code></a>'
                    if e.wsdl in variant else '')
                 + f'): {html.escape(", ".join(sorted(C.TRANSACTIONS.get(a, a) for a in e.operations)))}'
                 f'</li>' for p, e in sorted(self.endpoints.items())]
        items += [f"<li><code>{html.escape(p)}</code></li>" for p in sorted(self.routes)]
        items.append('<li><a href="/health"><code>/health</code></a> (the server and its database)</li>')
        if self.config.metrics is not None:
            items.append('<li><a href="/metrics"><code>/metrics</code></a> (Prometheus)</li>')
        body = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>xds {html.escape(role)}</title>'
                f'</head><body><h1>XDS.b {html.escape(role)} server</h1><p>xds-server {html.escape(release)}, '
                f'role <code>{html.escape(role)}</code>.</p><h2>Endpoints</h2><ul>{"".join(items)}</ul>'
                f'</body></html>\n').encode("utf-8")
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))),
                                  ("X-Content-Type-Options", "nosniff")])
        return [body]

    def _wsdl(self, environ, start_response, endpoint: Endpoint):
        import wsdl as wsdl_pkg

        qs = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        base = self.config.base_url or _base_url(environ)
        try:
            if "wsdl" in qs and endpoint.wsdl:
                # ?wsdl is the standard WSDL; ?wsdl=zeep the same one with the schemas typed for the
                # toolkits that do not follow substitution groups (wsdl/__init__.py, VARIANTS).
                body = wsdl_pkg.wsdl_text(endpoint.wsdl, base, endpoint.path, variant=qs["wsdl"][0] or None)
            elif "xsd" in qs:
                body = wsdl_pkg.schema_text(qs["xsd"][0], base, endpoint.path,
                                            variant=qs.get("variant", [""])[0] or None)
            else:
                return self._plain(start_response, "405 Method Not Allowed",
                                   f"{endpoint.path} is a SOAP endpoint: POST requests, or GET ?wsdl\n",
                                   [("Allow", "GET, POST")])
        except (FileNotFoundError, ValueError) as exc:
            return self._plain(start_response, "404 Not Found", f"{exc}\n")
        start_response("200 OK", [("Content-Type", "text/xml; charset=UTF-8"), ("Content-Length", str(len(body)))])
        return [body]

    @staticmethod
    def _plain(start_response, status: str, text: str, extra=()):
        body = text.encode()
        start_response(status, [("Content-Type", "text/plain; charset=UTF-8"),
                                ("Content-Length", str(len(body)))] + list(extra))
        return [body]

    @staticmethod
    def _json(start_response, code: int, data: dict):
        body = json.dumps(data).encode()
        start_response(f"{code} OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def _then(body, cleanup):
    """Iterate body, then clean up, however the iteration ends (the client may hang up)."""
    try:
        yield from body
    finally:
        cleanup()


def _base_url(environ) -> str:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"
    return f"{scheme}://{host}"
