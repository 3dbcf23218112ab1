"""SOAP 1.2 / 1.1 envelopes with WS-Addressing, and SOAP faults."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from lxml import etree

from . import constants as C
from .errors import SoapFault
from .xmlsafe import UnsafeXml, parse

SOAP12 = "1.2"
SOAP11 = "1.1"
_ENV_NS = {SOAP12: C.NS_SOAP12, SOAP11: C.NS_SOAP11}
CONTENT_TYPE = {SOAP12: "application/soap+xml", SOAP11: "text/xml"}

# Header blocks we process; any other header flagged mustUnderstand is refused.
_UNDERSTOOD = {
    C.q(C.NS_WSA, n) for n in ("Action", "To", "MessageID", "ReplyTo", "From", "FaultTo", "RelatesTo")
}
NS_WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSSE_SECURITY = "{%s}Security" % NS_WSSE
# Prefixes a fault subcode may use: WS-Addressing's, and WS-Security's (wsse:InvalidSecurity, ...).
_SUBCODE_NS = {"a": C.NS_WSA, "wsse": NS_WSSE}


@dataclass
class Envelope:
    version: str
    body: etree._Element  # the first element child of soap:Body
    headers: list[etree._Element] = field(default_factory=list)
    action: str | None = None
    message_id: str | None = None
    to: str | None = None
    reply_to: str | None = None
    fault_to: str | None = None  # wsa:FaultTo's Address; asynchronous faults go there (xds/async_reply.py)
    root: etree._Element | None = None

    def header(self, tag: str) -> etree._Element | None:
        for h in self.headers:
            if h.tag == tag:
                return h
        return None


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip() in ("1", "true")


def parse_envelope(data: bytes, understood: set[str] | None = None, max_bytes: int | None = None) -> Envelope:
    """Parse a SOAP envelope; raise SoapFault for anything that is not a usable envelope."""
    try:
        root = parse(data, "SOAP envelope", **({"max_bytes": max_bytes} if max_bytes else {}))
    except UnsafeXml as exc:
        raise SoapFault(str(exc)) from None
    version = {C.q(C.NS_SOAP12, "Envelope"): SOAP12, C.q(C.NS_SOAP11, "Envelope"): SOAP11}.get(root.tag)
    if version is None:
        if etree.QName(root).localname == "Envelope":
            raise SoapFault(f"unknown SOAP envelope namespace {etree.QName(root).namespace!r}", code="VersionMismatch")
        raise SoapFault(f"the request body is <{etree.QName(root).localname}>, not a SOAP Envelope")
    ns = _ENV_NS[version]
    header_el = root.find(C.q(ns, "Header"))
    body_el = root.find(C.q(ns, "Body"))
    if body_el is None:
        raise SoapFault("the SOAP envelope has no Body")
    children = [c for c in body_el if isinstance(c.tag, str)]
    if not children:
        raise SoapFault("the SOAP Body is empty")
    headers = [h for h in header_el if isinstance(h.tag, str)] if header_el is not None else []
    ok = _UNDERSTOOD | (understood or set())
    for h in headers:
        if _is_true(h.get(C.q(ns, "mustUnderstand"))) and h.tag not in ok:
            raise SoapFault(f"header {h.tag} is marked mustUnderstand and is not understood", code="MustUnderstand")
    env = Envelope(version=version, body=children[0], headers=headers, root=root)
    for h in headers:
        if h.tag == C.q(C.NS_WSA, "Action"):
            env.action = (h.text or "").strip()
        elif h.tag == C.q(C.NS_WSA, "MessageID"):
            env.message_id = (h.text or "").strip()
        elif h.tag == C.q(C.NS_WSA, "To"):
            env.to = (h.text or "").strip()
        elif h.tag in (C.q(C.NS_WSA, "ReplyTo"), C.q(C.NS_WSA, "FaultTo")):
            addr = h.find(C.q(C.NS_WSA, "Address"))
            value = (addr.text or "").strip() if addr is not None else None
            if h.tag == C.q(C.NS_WSA, "ReplyTo"):
                env.reply_to = value
            else:
                env.fault_to = value
    return env


def content_type_action(content_type: str) -> str | None:
    """The action parameter of a SOAP 1.2 content type (used when WS-Addressing is absent)."""
    for part in content_type.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.strip().lower() == "action":
            return v.strip().strip('"')
    return None


def _envelope(version: str, action: str | None, relates_to: str | None) -> tuple[etree._Element, etree._Element]:
    ns = _ENV_NS[version]
    nsmap = {"soapenv" if version == SOAP11 else "s": ns, "a": C.NS_WSA}
    env = etree.Element(C.q(ns, "Envelope"), nsmap=nsmap)
    header = etree.SubElement(env, C.q(ns, "Header"))
    if action:
        a = etree.SubElement(header, C.q(C.NS_WSA, "Action"))
        a.set(C.q(ns, "mustUnderstand"), "1" if version == SOAP11 else "true")
        a.text = action
    mid = etree.SubElement(header, C.q(C.NS_WSA, "MessageID"))
    mid.text = "urn:uuid:" + str(uuid.uuid4())
    if relates_to:
        r = etree.SubElement(header, C.q(C.NS_WSA, "RelatesTo"))
        r.text = relates_to
    body = etree.SubElement(env, C.q(ns, "Body"))
    return env, body


def build_envelope(version: str, action: str | None, relates_to: str | None, payload: etree._Element,
                   to: str | None = None) -> bytes:
    env, body = _envelope(version, action, relates_to)
    if to:
        header = env[0]
        t = etree.SubElement(header, C.q(C.NS_WSA, "To"))
        t.text = to
    body.append(payload)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def build_fault(version: str, fault: SoapFault, relates_to: str | None = None, to: str | None = None) -> bytes:
    env, body = _envelope(version, "http://www.w3.org/2005/08/addressing/soap/fault", relates_to)
    ns = _ENV_NS[version]
    if to:  # a fault sent on its own connection, to the request's FaultTo (xds/async_reply.py)
        etree.SubElement(env[0], C.q(C.NS_WSA, "To")).text = to
    if version == SOAP12:
        f = etree.SubElement(body, C.q(ns, "Fault"))
        code = etree.SubElement(f, C.q(ns, "Code"))
        value = etree.SubElement(code, C.q(ns, "Value"))
        value.text = "s:" + fault.code
        if fault.subcode:
            sub = etree.SubElement(code, C.q(ns, "Subcode"))
            sv = etree.SubElement(sub, C.q(ns, "Value"), nsmap=_SUBCODE_NS)
            sv.text = fault.subcode
            # WS-Addressing's faults name a Subsubcode (wsa:InvalidAddressingHeader/wsa:InvalidAddress, ...).
            subsub = getattr(fault, "subsubcode", None)
            if subsub:
                ssv = etree.SubElement(etree.SubElement(sub, C.q(ns, "Subcode")), C.q(ns, "Value"), nsmap=_SUBCODE_NS)
                ssv.text = subsub
        reason = etree.SubElement(f, C.q(ns, "Reason"))
        text = etree.SubElement(reason, C.q(ns, "Text"))
        text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        text.text = fault.reason
        problem = getattr(fault, "problem_header", None)  # the header at fault, as WS-Addressing details it
        if problem:
            detail = etree.SubElement(f, C.q(ns, "Detail"))
            etree.SubElement(detail, C.q(C.NS_WSA, "ProblemHeaderQName")).text = problem
    else:
        f = etree.SubElement(body, C.q(ns, "Fault"))
        code = etree.SubElement(f, "faultcode", nsmap=_SUBCODE_NS)
        if fault.subcode and fault.subcode.startswith("wsse:"):
            code.text = fault.subcode  # WS-Security 1.1 section 12: its codes are the SOAP 1.1 faultcode
        else:
            code.text = "soapenv:" + {"Sender": "Client", "Receiver": "Server"}.get(fault.code, fault.code)
        reason = etree.SubElement(f, "faultstring")
        reason.text = fault.reason
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")
