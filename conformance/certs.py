"""Throwaway certificates for a TLS run against our own server (python -m conformance.ci): a CA, a
server certificate for 127.0.0.1 and a client certificate, all made for the run and never reused."""
from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class RunCertificates:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xds conformance run"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(subject: str, key, ca_key, ca_name: x509.Name, *, ca: bool = False, server: bool = False):
    now = _dt.datetime.now(_dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(ca_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def make(folder: str) -> RunCertificates:
    os.makedirs(folder, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("xds conformance run CA")
    ca = _issue("xds conformance run CA", ca_key, ca_key, ca_name, ca=True)
    pem = serialization.Encoding.PEM
    out = {"ca": _write(os.path.join(folder, "ca.pem"), ca.public_bytes(pem))}
    for who, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"xds conformance {who}", key, ca_key, ca_name, server=server)
        out[f"{who}_cert"] = _write(os.path.join(folder, f"{who}.pem"), cert.public_bytes(pem))
        out[f"{who}_key"] = _write(os.path.join(folder, f"{who}.key"), _key_pem(key))
    return RunCertificates(**out)
