"""Compact JWS (RFC 7515) as OpenID Connect id_tokens use it: RS256 and ES256 only (RFC 7518 3.3, 3.4).

Verification takes the key from the caller (the provider's JWKS, RFC 7517), never from the token: the
jwk, jku, x5u and x5c header parameters are ignored, "none" and the HMAC algorithms are refused, and a
token with a critical extension (crit) is refused since none is understood here. Signing is for the
development provider (node/dev_idp.py) and the tests.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

ALGORITHMS = ("RS256", "ES256")
MAX_TOKEN = 64 * 1024          # characters of a compact JWS; an id_token is a few kilobytes
MIN_RSA_BITS = 2048
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ES256_HALF = 32               # bytes of r and of s in an ES256 signature (RFC 7518 3.4)


class JwtError(ValueError):
    """The token is malformed, or its signature does not verify; the message never quotes the token."""


# --- base64url (RFC 7515 2: no padding) ------------------------------------------------------------

def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, what: str = "value") -> bytes:
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise JwtError(f"the {what} is not base64url without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JwtError(f"the {what} is not base64url without padding") from None


def _uint(text: object, what: str) -> int:
    if not isinstance(text, str) or not text:
        raise JwtError(f"the key's {what} is missing")
    return int.from_bytes(b64url_decode(text, f"key's {what}"), "big")


def _uint_bytes(n: int, length: int | None = None) -> bytes:
    return n.to_bytes(length or max(1, (n.bit_length() + 7) // 8), "big")


# --- JSON: strict (no duplicate names, no NaN) -----------------------------------------------------

def _no_duplicates(pairs):
    out = {}
    for name, value in pairs:
        if name in out:
            raise JwtError(f"the JSON has the member {name[:40]!r} twice")
        out[name] = value
    return out


def _no_constant(name):
    raise JwtError(f"the JSON holds {name}, which is not JSON")


def loads(raw: bytes | str, what: str) -> dict:
    """A JSON object, strictly: a duplicated member or NaN/Infinity is refused (they let two readers
    of the same text disagree)."""
    try:
        value = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except JwtError as exc:
        raise JwtError(f"the {what} is not acceptable JSON: {exc}") from None
    except (ValueError, RecursionError):
        raise JwtError(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise JwtError(f"the {what} is not a JSON object")
    return value


def is_number(value: object) -> bool:
    """A JSON number (NumericDate), not a boolean, finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- keys ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Jwk:
    """One public key of a JWKS, usable for verification."""

    kid: str | None
    kty: str                   # RSA | EC
    alg: str | None            # the key's own alg restriction, if it states one
    key: object                # rsa.RSAPublicKey | ec.EllipticCurvePublicKey

    def fits(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        return (alg == "RS256" and self.kty == "RSA") or (alg == "ES256" and self.kty == "EC")


def key_from_jwk(jwk: dict) -> Jwk:
    """A verification key from one JWK (RSA, or EC on P-256); raises JwtError when it is not one."""
    if not isinstance(jwk, dict):
        raise JwtError("a JWKS entry is not an object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwtError("a JWK's kid is not a string")
    alg = jwk.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise JwtError("a JWK's alg is not a string")
    kty = jwk.get("kty")
    if kty == "RSA":
        n, e = _uint(jwk.get("n"), "modulus (n)"), _uint(jwk.get("e"), "exponent (e)")
        if n.bit_length() < MIN_RSA_BITS:
            raise JwtError(f"an RSA key of {n.bit_length()} bits is below {MIN_RSA_BITS}")
        try:
            key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise JwtError(f"an RSA key is invalid: {exc}") from None
    elif kty == "EC":
        if jwk.get("crv") != "P-256":
            raise JwtError(f"an EC key's curve {str(jwk.get('crv'))[:20]!r} is not P-256")
        x, y = _uint(jwk.get("x"), "x"), _uint(jwk.get("y"), "y")
        try:
            key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        except ValueError:
            raise JwtError("an EC key's point is not on P-256") from None
    else:
        raise JwtError(f"key type {str(kty)[:20]!r} is not supported (RSA, EC)")
    return Jwk(kid=kid, kty=kty, alg=alg, key=key)


def keys_from_jwks(jwks: dict) -> list[Jwk]:
    """The signature keys of a JWK Set. Entries this module cannot use (another key type, an
    encryption key, a malformed one) are left out: a token naming one of them finds no key."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise JwtError("the JWKS is not an object with a keys array")
    out = []
    for entry in jwks["keys"]:
        if isinstance(entry, dict) and entry.get("use") not in (None, "sig"):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("key_ops"), list) and "verify" not in entry["key_ops"]:
            continue
        try:
            out.append(key_from_jwk(entry))
        except JwtError:
            continue
    return out


def public_jwk(public_key, kid: str | None = None, alg: str | None = None) -> dict:
    """The JWK of a public key (RSA or EC P-256), with use "sig"; kid defaults to its RFC 7638
    thumbprint."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        jwk = {"kty": "RSA", "n": b64url_encode(_uint_bytes(numbers.n)), "e": b64url_encode(_uint_bytes(numbers.e))}
        alg = alg or "RS256"
    elif isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1):
        numbers = public_key.public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": b64url_encode(_uint_bytes(numbers.x, _ES256_HALF)),
               "y": b64url_encode(_uint_bytes(numbers.y, _ES256_HALF))}
        alg = alg or "ES256"
    else:
        raise ValueError("only RSA and EC P-256 public keys have a JWK here")
    return {**jwk, "kid": kid or thumbprint(jwk), "use": "sig", "alg": alg}


def thumbprint(jwk: dict) -> str:
    """The RFC 7638 thumbprint (SHA-256) of a JWK: its required members, sorted, without spaces."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


# --- tokens ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Jws:
    """A compact JWS, split and decoded, not yet verified."""

    header: dict
    claims: dict
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> object:
        return self.header.get("alg")

    @property
    def kid(self) -> object:
        return self.header.get("kid")


def parse(token: object) -> Jws:
    """Split and decode a compact JWS whose payload is a JSON object (the claims); verifies nothing."""
    if not isinstance(token, str) or not token:
        raise JwtError("the token is missing")
    if len(token) > MAX_TOKEN:
        raise JwtError(f"the token is longer than {MAX_TOKEN} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError(f"a compact JWS has 3 parts separated by dots, this token has {len(parts)}")
    header = loads(b64url_decode(parts[0], "JWS header"), "JWS header")
    claims = loads(b64url_decode(parts[1], "JWS payload"), "JWS payload")
    signature = b64url_decode(parts[2], "JWS signature")
    return Jws(header=header, claims=claims, signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
               signature=signature)


def check_header(jws: Jws, algorithms: tuple[str, ...] = ALGORITHMS) -> str:
    """The token's alg, once it is one of algorithms; raises for "none", HMAC and the rest."""
    alg = jws.alg
    if not isinstance(alg, str):
        raise JwtError("the JWS header has no alg")
    if alg not in algorithms or alg not in ALGORITHMS:
        raise JwtError(f"the JWS algorithm {alg[:20]!r} is not accepted (accepted: {', '.join(algorithms)})")
    if "crit" in jws.header:
        raise JwtError("the JWS header has critical extensions (crit), none of which is understood here")
    kid = jws.kid
    if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
        raise JwtError("the JWS header's kid is not a string of at most 256 characters")
    return alg


def verify_signature(jws: Jws, key: Jwk, algorithms: tuple[str, ...] = ALGORITHMS) -> None:
    """Raises JwtError unless jws is signed by key with an accepted algorithm that the key is for."""
    alg = check_header(jws, algorithms)
    if not key.fits(alg):
        raise JwtError(f"the key {key.kid or '(without kid)'} is not a key for {alg}")
    try:
        if alg == "RS256":
            key.key.verify(jws.signature, jws.signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            if len(jws.signature) != 2 * _ES256_HALF:
                raise InvalidSignature()
            r = int.from_bytes(jws.signature[:_ES256_HALF], "big")
            s = int.from_bytes(jws.signature[_ES256_HALF:], "big")
            key.key.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise JwtError("the token's signature does not verify") from None


def sign(claims: dict, private_key, kid: str | None = None, alg: str | None = None,
         header: dict | None = None) -> str:
    """A compact JWS of claims, signed RS256 (RSA key) or ES256 (EC P-256 key). header: extra members."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        alg = alg or "RS256"
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        alg = alg or "ES256"
    if alg not in ALGORITHMS:
        raise ValueError(f"signing is with RS256 or ES256, not {alg!r}")
    head = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {}), **(header or {})}
    signing_input = ".".join(b64url_encode(json.dumps(part, separators=(",", ":")).encode("utf-8"))
                             for part in (head, claims)).encode("ascii")
    if alg == "RS256":
        signature = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = _uint_bytes(r, _ES256_HALF) + _uint_bytes(s, _ES256_HALF)
    return f"{signing_input.decode('ascii')}.{b64url_encode(signature)}"
