"""An XDS SOAP client on the standard library: used by the repository to reach a remote
registry, by the CLI and by the conformance harness."""
from __future__ import annotations

import http.client
import ssl
import tempfile
from dataclasses import dataclass
from urllib.parse import urlsplit

from lxml import etree

from . import constants as C
from . import mtom, soap
from .errors import REGISTRY_NOT_AVAILABLE, XdsException


class TransportError(Exception):
    """The peer could not be reached or did not answer with SOAP."""


@dataclass
class SoapReply:
    status: int
    envelope: soap.Envelope | None
    content_type: str
    raw: bytes
    mtom: mtom.MtomMessage | None = None

    @property
    def body(self) -> etree._Element:
        if self.envelope is None:
            raise TransportError(f"HTTP {self.status} with no SOAP envelope: {self.raw[:200]!r}")
        return self.envelope.body

    @property
    def is_fault(self) -> bool:
        return self.envelope is not None and etree.QName(self.envelope.body).localname == "Fault"


class SoapClient:
    def __init__(self, url: str, timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None,
                 spool_dir: str | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{url}: only http and https endpoints are supported")
        self.url = url
        self.parts = parts
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.spool_dir = spool_dir or tempfile.gettempdir()

    def _connection(self) -> http.client.HTTPConnection:
        host, port = self.parts.hostname, self.parts.port
        if self.parts.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self.ssl_context)
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def envelope(self, action: str, payload: etree._Element, version: str = soap.SOAP12) -> bytes:
        env, body = soap._envelope(version, None, None)  # writes the MessageID
        header = env[0]
        for tag, text in ((f"{{{C.NS_WSA}}}Action", action), (f"{{{C.NS_WSA}}}To", self.url)):
            el = etree.SubElement(header, tag)
            el.text = text
            el.set(f"{{{soap._ENV_NS[version]}}}mustUnderstand", "true" if version == soap.SOAP12 else "1")
        body.append(payload)
        return etree.tostring(env, xml_declaration=True, encoding="UTF-8")

    def call(self, action: str, payload: etree._Element, *, attachments=None, use_mtom: bool = False,
             version: str = soap.SOAP12) -> SoapReply:
        """Send one request. attachments: [(cid, content_type, bytes | path)] referenced by xop:Include."""
        envelope = self.envelope(action, payload, version)
        if use_mtom or attachments:
            writer = mtom.MtomWriter()
            for cid, ctype, data in attachments or []:
                (writer.add_bytes if isinstance(data, bytes) else writer.add_file)(data, ctype, cid)
            writer.set_root(envelope, soap.CONTENT_TYPE[version])
            headers = {"Content-Type": writer.content_type(action)}
            length = writer.content_length()
            if length is not None:
                headers["Content-Length"] = str(length)
            body = writer.chunks()
        else:
            ctype = soap.CONTENT_TYPE[version]
            headers = {"Content-Type": f'{ctype}; charset=UTF-8; action="{action}"'
                       if version == soap.SOAP12 else f"{ctype}; charset=UTF-8"}
            if version == soap.SOAP11:
                headers["SOAPAction"] = f'"{action}"'
            body = envelope
        return self.send_raw(body, headers)

    def send_raw(self, body, headers: dict) -> SoapReply:
        conn = self._connection()
        try:
            conn.request("POST", self.parts.path or "/", body=body, headers=headers,
                         encode_chunked="Content-Length" not in headers and not isinstance(body, bytes))
            resp = conn.getresponse()
            ctype = resp.getheader("Content-Type", "")
            mime, _ = mtom.parse_content_type(ctype)
            message = None
            if mime == "multipart/related":
                message = mtom.read_multipart(resp, ctype, self.spool_dir, max_part_bytes=1 << 40,
                                              max_total_bytes=1 << 41)
                raw = message.root
            else:
                raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"{self.url}: {exc.__class__.__name__}: {exc}") from None
        finally:
            conn.close()
        env = None
        if raw.strip():
            try:
                env = soap.parse_envelope(raw, understood={f"{{{C.NS_WSA}}}RelatesTo"})
            except Exception:
                env = None
        if env is not None and message is not None:
            mtom.resolve_xop(env.root, message)
        return SoapReply(resp.status, env, ctype, raw, message)


def registry_call(url: str, action: str, payload: etree._Element, timeout: float = 30.0,
                  ssl_context=None) -> etree._Element:
    """Call a registry; an unreachable one is XDSRegistryNotAvailable, as ITI-41 requires."""
    try:
        reply = SoapClient(url, timeout, ssl_context).call(action, payload)
    except TransportError as exc:
        raise XdsException(REGISTRY_NOT_AVAILABLE, f"the registry could not be reached: {exc}", url) from None
    if reply.envelope is None or reply.is_fault:
        reason = reply.raw[:300].decode("utf-8", "replace")
        raise XdsException(REGISTRY_NOT_AVAILABLE, f"the registry answered HTTP {reply.status} without a "
                           f"RegistryResponse: {reason}", url)
    return reply.body

