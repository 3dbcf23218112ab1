"""TLS helpers: mutual TLS between repository hosts and the national registry."""
from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass
class TlsFiles:
    cert: str
    key: str
    ca: str | None = None  # CA bundle that client (server side) or server (client side) certificates must chain to


def server_context(files: TlsFiles, require_client_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    if files.ca:
        ctx.load_verify_locations(files.ca)
        # Refusing at the handshake means an unknown client never reaches application code.
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(files: TlsFiles | None, ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    trust = (files.ca if files else None) or ca
    if trust:
        ctx.load_verify_locations(trust)
    else:
        ctx.load_default_certs()
    if files:
        ctx.load_cert_chain(files.cert, files.key)
    return ctx

