"""What each test plan transaction is on the wire, and the senders: SOAP (plain or
MTOM), ITI-8 over MLLP, and the raw HTTP POST of HttpTransaction."""
from __future__ import annotations

import copy
import http.client
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from lxml import etree

from xds import constants as C
from xds import soap
from xds.client import SoapClient, SoapReply, TransportError
from xds.mllp import mllp_send
from xds.security.issue import wsse_security

ACTION_RMU = "urn:ihe:iti:2018:RestrictedUpdateDocumentSet"
ACTION_RODDE = "urn:ihe:iti:2010:RegisterOnDemandDocumentEntry"


@dataclass(frozen=True)
class Kind:
    label: str
    action: str | None = None
    endpoint: str = "none"         # registry | repository | mllp | none
    mtom: bool = False
    submission: bool = False       # carries metadata the engine rewrites (patient ids, uids, uuids)
    wrap: str | None = None        # submit: lcm:SubmitObjectsRequest; pnr: ProvideAndRegister
    response_action: str | None = None

    def expected_response_action(self) -> str | None:
        if self.response_action:
            return self.response_action
        return C.response_action(self.action) if self.action else None


KINDS: dict[str, Kind] = {
    "RegisterTransaction": Kind("ITI-42", C.ACTION_REGISTER, "registry", False, True, "submit"),
    "ProvideAndRegisterTransaction": Kind("ITI-41", C.ACTION_PROVIDE, "repository", True, True, "pnr"),
    "StoredQueryTransaction": Kind("ITI-18", C.ACTION_QUERY, "registry"),
    "RetrieveTransaction": Kind("ITI-43", C.ACTION_RETRIEVE, "repository", True),
    "MuTransaction": Kind("ITI-57", C.ACTION_UPDATE, "registry", False, True, "submit"),
    "RmuTransaction": Kind("ITI-92", ACTION_RMU, "registry", False, True, "submit"),
    "RemoveMetadataTransaction": Kind("ITI-62", C.ACTION_DELETE, "registry"),
    "RdTransaction": Kind("ITI-86", C.ACTION_REMOVE_DOCUMENTS, "repository"),
    "MPQTransaction": Kind("ITI-51", C.ACTION_MPQ, "registry"),
    # ITI TF-2b 3.61.5 (its WSDL) answers RegisterOnDemandDocumentEntryResponse; the NIST toolkit's own
    # simulator writes "RegisterOnDemandDocumentResponse", which no endpoint of the TF sends.
    "RegisterODDETransaction": Kind("ITI-61", ACTION_RODDE, "registry", False, True, "submit"),
    "PatientIdentityFeedTransaction": Kind("ITI-8", endpoint="mllp"),
    "HttpTransaction": Kind("HTTP", endpoint="repository"),
    "NullTransaction": Kind("none"),
    "PatientMoveTransaction": Kind("ITI-64", endpoint="mllp"),  # an ADT^A43 (conformance/patient_move.py)
}


@dataclass
class Endpoints:
    registry: str | None = None
    repository: str | None = None
    mllp: tuple[str, int] | None = None
    timeout: float = 60.0
    # https endpoints: our client certificate and the CA their certificates chain to (--tls-*).
    ssl_context: ssl.SSLContext | None = None
    # The ReplyTo listener of the <ASync/> steps (conformance/async_listener.py); None: they are skipped.
    reply_listener: object = None

    @property
    def tls(self) -> bool:
        """Whether the tests that must run over TLS (12028) can: every endpoint given is https and the
        harness has a TLS context."""
        given = [u for u in (self.registry, self.repository) if u]
        return self.ssl_context is not None and bool(given) and all(u.startswith("https://") for u in given)

    def url_for(self, kind: Kind) -> str | None:
        return {"registry": self.registry, "repository": self.repository}.get(kind.endpoint)


@dataclass
class Exchange:
    """One request and what came back; the report shows both."""
    endpoint: str = ""
    request: bytes = b""             # the SOAP envelope, HL7 message or raw body as sent
    reply: SoapReply | None = None
    response_text: str = ""          # what came back, for people to read
    transport_error: str | None = None
    ack_code: str | None = None      # ITI-8: MSA-1
    elapsed: float = 0.0
    attachments: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def body(self) -> etree._Element | None:
        if self.reply is None or self.reply.envelope is None:
            return None
        return self.reply.body


def send_soap(kind: Kind, url: str, payload: etree._Element, attachments: list[tuple[str, str, str]],
              timeout: float, soap11: bool = False, use_mtom: bool | None = None,
              assertion: etree._Element | None = None, ssl_context: ssl.SSLContext | None = None) -> Exchange:
    """assertion: a SAML assertion to send in wsse:Security (a copy: a signed element can be sent
    by many steps, and the header takes what it wraps)."""
    version = soap.SOAP11 if soap11 else soap.SOAP12
    client = SoapClient(url, timeout, ssl_context)
    headers = [wsse_security(copy.deepcopy(assertion), version)] if assertion is not None else None
    ex = Exchange(endpoint=url, attachments=list(attachments))
    ex.request = client.envelope(kind.action, payload, version, headers)
    started = time.monotonic()
    try:
        ex.reply = client.call(kind.action, payload, attachments=attachments,
                               use_mtom=kind.mtom if use_mtom is None else use_mtom, version=version,
                               extra_headers=headers)
    except TransportError as exc:
        ex.transport_error = str(exc)
    ex.elapsed = time.monotonic() - started
    if ex.reply is not None:
        ex.response_text = ex.reply.raw.decode("utf-8", "replace")
    return ex


def adt_a01(patient_id: str, now: datetime | None = None, control_id: str | None = None) -> str:
    """An ITI-8 ADT^A01 (HL7 v2.3.1) announcing one patient; PID-3 carries the CX as is."""
    now = now or datetime.now()
    stamp = now.strftime("%Y%m%d%H%M%S")
    control_id = control_id or now.strftime("%H%M%S%f")
    segments = [
        f"MSH|^~\\&|XDSCONFORMANCE|HARNESS|XDSREGISTRY|SUT|{stamp}||ADT^A01^ADT_A01|{control_id}|P|2.3.1",
        f"EVN|A01|{stamp}",
        f"PID|||{patient_id}||Conformance^Patient||19700101|U",
        "PV1||O",
    ]
    return "\r".join(segments) + "\r"


def send_pif(host: str, port: int, patient_id: str, timeout: float) -> Exchange:
    return send_hl7(host, port, adt_a01(patient_id), timeout)


def send_hl7(host: str, port: int, message: str, timeout: float) -> Exchange:
    """One HL7 v2 message over MLLP (ITI-8, ITI-64), its ACK code read from MSA-1."""
    ex = Exchange(endpoint=f"mllp://{host}:{port}", request=message.encode("utf-8"))
    started = time.monotonic()
    try:
        reply = mllp_send(host, port, message, timeout=timeout)
    except (OSError, TimeoutError, ConnectionError) as exc:
        ex.transport_error = f"{host}:{port}: {exc.__class__.__name__}: {exc}"
        ex.elapsed = time.monotonic() - started
        return ex
    ex.elapsed = time.monotonic() - started
    ex.response_text = reply.replace("\r", "\n")
    for segment in reply.replace("\n", "\r").split("\r"):
        fields = segment.split("|")
        if fields[0] == "MSA" and len(fields) > 1:
            ex.ack_code = fields[1]
    return ex


def send_http(url: str, headers: dict[str, str], body: bytes, timeout: float,
              ssl_context: ssl.SSLContext | None = None) -> Exchange:
    """POST ready-made bytes (HttpTransaction's wire samples) and read the SOAP reply like any other."""
    ex = Exchange(endpoint=url, request=body)
    client = SoapClient(url, timeout, ssl_context)
    started = time.monotonic()
    try:
        sent = dict(headers)
        sent["Content-Length"] = str(len(body))
        ex.reply = client.send_raw(body, sent)
    except (TransportError, http.client.HTTPException) as exc:
        ex.transport_error = str(exc)
    ex.elapsed = time.monotonic() - started
    if ex.reply is not None:
        ex.response_text = ex.reply.raw.decode("utf-8", "replace")
    return ex


def parse_hostport(value: str) -> tuple[str, int]:
    if "://" in value:
        parts = urlsplit(value)
        return parts.hostname or "127.0.0.1", parts.port or 2575
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)
