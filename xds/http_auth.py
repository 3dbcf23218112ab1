"""The one authentication layer of the endpoints that are not SOAP (the administration interface;
later the patient's access log and portal): the same authenticator as SOAP requests, fed from HTTP.

- mutual TLS: the verified client certificate's subject, as for SOAP;
- a SAML bearer assertion: `Authorization: Bearer <base64url of the saml2:Assertion>` (the SAML token
  of IHE IUA, RFC 7522's encoding), checked exactly as the assertion of a wsse:Security header would be;
- security = none: no assertion is read; a request with an Authorization header is refused, since it
  would not be processed (fail closed).
"""
from __future__ import annotations

import base64
import binascii

from lxml import etree

from .security.principal import Principal
from .security.saml import SecurityFault
from .xmlsafe import parse as safe_parse

WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PEER_KEY = "xds.peer_subject"
REFUSAL_KEY = "xds.auth_refusal"   # environ: (environ, reason) -> None, the audit layer's record of a refusal
MAX_TOKEN = 64 * 1024


class HttpAuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def authenticate(environ: dict, authenticator) -> Principal:
    try:
        return _authenticate(environ, authenticator)
    except HttpAuthError as exc:
        told = environ.get(REFUSAL_KEY)
        if told is not None:
            told(environ, exc.message)
        raise


def _authenticate(environ: dict, authenticator) -> Principal:
    peer = environ.get(PEER_KEY)
    header = (environ.get("HTTP_AUTHORIZATION") or "").strip()
    headers: list[etree._Element] = []
    if header:
        if authenticator.mode == "none":
            raise HttpAuthError(400, "this server processes no assertions (security = none); send the request "
                                "without an Authorization header")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpAuthError(401, "Authorization must be: Bearer <base64url of a SAML 2.0 assertion>")
        headers = [_security(token.strip())]
    try:
        return authenticator.authenticate(headers, peer)
    except SecurityFault as fault:
        raise HttpAuthError(401, f"authentication failed: {fault.reason}") from None


def _security(token: str) -> etree._Element:
    if len(token) > MAX_TOKEN:
        raise HttpAuthError(401, f"the bearer token is longer than {MAX_TOKEN} characters")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise HttpAuthError(401, "the bearer token is not base64url") from None
    try:
        assertion = safe_parse(raw, "bearer assertion")
    except Exception:
        raise HttpAuthError(401, "the bearer token is not a well-formed XML assertion") from None
    security = etree.Element(f"{{{WSSE}}}Security")
    security.append(assertion)
    return security
