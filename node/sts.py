"""A local STS: WS-Trust 1.3 Issue over HTTP, answering as the Gazelle STS does (the user name picks
the assertion's variant, xds.security.issue.VARIANTS; one password for every user), and the
`xds sts` command (serve, token, variants).

Requests: SOAP 1.2 (or 1.1) wst:RequestSecurityToken, RequestType Issue, TokenType SAML 2.0 (or
none), optional wsp:AppliesTo/wsa:EndpointReference/wsa:Address (the audience) and a resource-id
claim (the patient, wst:Claims in the WS-Federation authorization dialect). The user comes from a
wsse:UsernameToken (PasswordText or PasswordDigest) in the request's wsse:Security header, else from
HTTP Basic authentication (the Gazelle STS's way). The answer is a
wst:RequestSecurityTokenResponseCollection with Action .../RSTRC/IssueFinal; a refusal is a SOAP
fault with wst:InvalidRequest (not an Issue request we can serve) or wst:FailedAuthentication.
"""
from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hmac
import http
import json
import logging
import os
import signal
import sys
import threading

from lxml import etree

from xds import constants as C
from xds import soap
from xds.app import MalformedBody, request_input
from xds.errors import SoapFault
from xds.security import issue as I

log = logging.getLogger("xds.sts")

PATH = "/sts"
MAX_REQUEST_BYTES = 256 * 1024  # an RST is a few kilobytes
INVALID_REQUEST = "wst:InvalidRequest"
FAILED_AUTHENTICATION = "wst:FailedAuthentication"
_SUBCODE_NS = {"wst": I.NS_WST, "wsse": I.NS_WSSE}
# How far a PasswordDigest's Created may be from our clock (the profile leaves it to the receiver).
DIGEST_WINDOW = _dt.timedelta(minutes=5)


class StsFault(SoapFault):
    def __init__(self, subcode: str, reason: str):
        super().__init__(reason, code="Sender", subcode=subcode)


class StsApp:
    """The WSGI application. profile: the profile of the assertions (the VIHF users, directe,
    indirecte and indirecte_renforcee, are always VIHF); password: the one every user has."""

    def __init__(self, issuer: I.Issuer, *, password: str = I.DEFAULT_PASSWORD, profile: str = "xua",
                 max_request_bytes: int = MAX_REQUEST_BYTES):
        if profile not in I.PROFILES:
            raise ValueError(f"profile must be xua or vihf, not {profile!r}")
        self.issuer = issuer
        self.password = password
        self.profile = profile
        self.max_request_bytes = max_request_bytes

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        if method != "POST":
            if environ.get("PATH_INFO") == "/health":
                return _plain(start_response, "200 OK", b"ok\n")
            return _plain(start_response, "405 Method Not Allowed",
                          f"POST a WS-Trust RequestSecurityToken to {PATH}\n".encode(), [("Allow", "POST")])
        version = soap.SOAP11 if environ.get("CONTENT_TYPE", "").startswith("text/xml") else soap.SOAP12
        relates_to = None
        try:
            data = self._body(environ)
            env = soap.parse_envelope(data, understood={soap.WSSE_SECURITY}, max_bytes=self.max_request_bytes)
            version, relates_to = env.version, env.message_id
            answer = self.issue(env, environ)
            status = "200 OK"
        except SoapFault as fault:
            answer = fault_envelope(version, fault, relates_to)
            status = f"{fault.http_status} {http.HTTPStatus(fault.http_status).phrase}"
        except Exception:  # never a traceback to the client; the log has it
            log.exception(json.dumps({"event": "sts_error"}))
            answer = fault_envelope(version, SoapFault("the STS failed to issue the token", code="Receiver",
                                                       subcode="wst:RequestFailed"), relates_to)
            status = "500 Internal Server Error"
        start_response(status, [("Content-Type", f"{soap.CONTENT_TYPE[version]}; charset=UTF-8"),
                                ("Content-Length", str(len(answer)))])
        return [answer]

    def _body(self, environ) -> bytes:
        stream = request_input(environ)
        length = environ.get("CONTENT_LENGTH") or ""
        try:
            if length.strip():
                n = int(length)
                if n > self.max_request_bytes:
                    raise SoapFault(f"the request is {n} bytes, above the STS's limit of {self.max_request_bytes}",
                                    http_status=413)
                chunks, left = [], n
                while left > 0:
                    chunk = stream.read(left)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    left -= len(chunk)
                return b"".join(chunks)
            data = stream.read(self.max_request_bytes + 1)
        except MalformedBody as exc:
            raise SoapFault(f"the request's HTTP framing is broken: {exc}") from None
        except ValueError:
            raise SoapFault("Content-Length is not a number") from None
        if len(data) > self.max_request_bytes:
            raise SoapFault(f"the request is above the STS's limit of {self.max_request_bytes} bytes",
                            http_status=413)
        return data

    # --- Issue ----------------------------------------------------------------------------------------

    def issue(self, env: soap.Envelope, environ) -> bytes:
        rst = env.body
        if rst.tag != f"{{{I.NS_WST}}}RequestSecurityToken":
            raise StsFault(INVALID_REQUEST, f"the body is {_name(rst)}, not a WS-Trust 1.3 wst:RequestSecurityToken")
        request_type = (rst.findtext(f"{{{I.NS_WST}}}RequestType") or "").strip()
        if request_type != I.REQUEST_ISSUE:
            raise StsFault(INVALID_REQUEST, f"RequestType must be {I.REQUEST_ISSUE}; this STS only issues tokens")
        token_type = rst.findtext(f"{{{I.NS_WST}}}TokenType")
        if token_type is not None and token_type.strip() not in I.SAML2_TOKEN_TYPES:
            raise StsFault(INVALID_REQUEST, f"TokenType must be {I.SAML2_TOKEN_TYPE}: this STS issues SAML 2.0 "
                           "assertions only")
        user = self._authenticate(env, environ)
        try:
            v = I.variant(user)
        except KeyError:
            raise StsFault(FAILED_AUTHENTICATION, "unknown user: the users are the assertion variants ("
                           + ", ".join(I.VARIANTS) + ")") from None
        audience, wsp = _applies_to(rst)
        patient = _claimed_patient(rst)
        profile = v.profile or self.profile
        xua = profile == "xua"
        # XUA's NameID is the user, as on the Gazelle STS; a VIHF's is a professional's national id, and
        # a VIHF has no AudienceRestriction whatever AppliesTo says (Table F).
        assertion = self.issuer.issue(v.name, profile=profile, patient_id=patient,
                                      subject=user.split("@", 1)[0] if xua else None,
                                      **({"audience": audience} if xua and audience is not None else {}))
        log.info(json.dumps({"event": "sts_issue", "user": v.name, "profile": profile,
                             "audience": audience, "assertion_id": assertion.get("ID")}))
        return response_envelope(env.version, assertion, env.message_id, audience, wsp, self.issuer.validity)

    def _authenticate(self, env: soap.Envelope, environ) -> str:
        token = None
        security = env.header(soap.WSSE_SECURITY)
        if security is not None:
            token = security.find(f"{{{I.NS_WSSE}}}UsernameToken")
        if token is not None:
            user = (token.findtext(f"{{{I.NS_WSSE}}}Username") or "").strip()
            pw = token.find(f"{{{I.NS_WSSE}}}Password")
            if not user or pw is None:
                raise StsFault(FAILED_AUTHENTICATION, "the UsernameToken needs a Username and a Password")
            if not self._password_ok(token, pw):
                raise StsFault(FAILED_AUTHENTICATION, "the password is not accepted")
            return user
        basic = _basic_credentials(environ.get("HTTP_AUTHORIZATION"))
        if basic is None:
            raise StsFault(FAILED_AUTHENTICATION, "no credentials: send a wsse:UsernameToken in wsse:Security, or "
                           "HTTP Basic authentication")
        user, password = basic
        if not hmac.compare_digest(password.encode(), self.password.encode()):
            raise StsFault(FAILED_AUTHENTICATION, "the password is not accepted")
        return user

    def _password_ok(self, token: etree._Element, pw: etree._Element) -> bool:
        kind = pw.get("Type") or I.PASSWORD_TEXT
        given = (pw.text or "").strip()
        if kind == I.PASSWORD_TEXT:
            return hmac.compare_digest(given.encode(), self.password.encode())
        if kind != I.PASSWORD_DIGEST:
            raise StsFault(FAILED_AUTHENTICATION, "the Password Type must be PasswordText or PasswordDigest")
        nonce_text = token.findtext(f"{{{I.NS_WSSE}}}Nonce")
        created = token.findtext(f"{{{I.NS_WSU}}}Created")
        if not nonce_text or not created:
            raise StsFault(FAILED_AUTHENTICATION, "a PasswordDigest needs the token's Nonce and wsu:Created")
        try:
            nonce = base64.b64decode(nonce_text.strip(), validate=True)
            when = _dt.datetime.fromisoformat(created.strip().replace("Z", "+00:00"))
        except (binascii.Error, ValueError):
            raise StsFault(FAILED_AUTHENTICATION, "the UsernameToken's Nonce or Created cannot be read") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        if abs(self.issuer.clock() - when) > DIGEST_WINDOW:
            raise StsFault(FAILED_AUTHENTICATION, "the UsernameToken's Created is too far from this STS's clock")
        expected = I.password_digest(nonce, created.strip(), self.password)
        return hmac.compare_digest(given.encode(), expected.encode())


def _name(el: etree._Element) -> str:
    q = etree.QName(el)
    name = f"{{{q.namespace}}}{q.localname}" if q.namespace else q.localname
    return name if len(name) <= 120 else name[:120] + "..."  # never the client's megabyte back


def _applies_to(rst: etree._Element) -> tuple[str | None, str]:
    for wsp in (I.NS_WSP, I.NS_WSP15):
        applies = rst.find(f"{{{wsp}}}AppliesTo")
        if applies is not None:
            address = applies.findtext(f"{{{C.NS_WSA}}}EndpointReference/{{{C.NS_WSA}}}Address")
            if not address or not address.strip():
                raise StsFault(INVALID_REQUEST, "AppliesTo needs wsa:EndpointReference/wsa:Address (the audience)")
            return address.strip(), wsp
    return None, I.NS_WSP


def _claimed_patient(rst: etree._Element) -> str | None:
    for claim in rst.iterfind(f"{{{I.NS_WST}}}Claims/{{{I.NS_AUTH}}}ClaimType"):
        if (claim.get("Uri") or "").strip() == I.RESOURCE_ID:
            value = (claim.findtext(f"{{{I.NS_AUTH}}}Value") or "").strip()
            if value:
                return value
    return None


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise StsFault(FAILED_AUTHENTICATION, "the HTTP Basic credentials cannot be read") from None
    return (user, password) if sep and user else None


def response_envelope(version: str, assertion: etree._Element, relates_to: str | None, audience: str | None,
                      wsp_ns: str, validity: _dt.timedelta) -> bytes:
    env, body = soap._envelope(version, I.ACTION_ISSUE_FINAL, relates_to)
    wst = I.NS_WST
    collection = etree.SubElement(body, f"{{{wst}}}RequestSecurityTokenResponseCollection", nsmap={"wst": wst})
    rstr = etree.SubElement(collection, f"{{{wst}}}RequestSecurityTokenResponse")
    etree.SubElement(rstr, f"{{{wst}}}TokenType").text = I.SAML2_TOKEN_TYPE
    etree.SubElement(rstr, f"{{{wst}}}RequestedSecurityToken").append(assertion)
    if audience:
        applies = etree.SubElement(rstr, f"{{{wsp_ns}}}AppliesTo", nsmap={"wsp": wsp_ns})
        epr = etree.SubElement(applies, f"{{{C.NS_WSA}}}EndpointReference")
        etree.SubElement(epr, f"{{{C.NS_WSA}}}Address").text = audience
    conditions = assertion.find(f"{{{I.NS_SAML2}}}Conditions")
    if conditions is not None and conditions.get("NotBefore") and conditions.get("NotOnOrAfter"):
        lifetime = etree.SubElement(rstr, f"{{{wst}}}Lifetime", nsmap={"wsu": I.NS_WSU})
        etree.SubElement(lifetime, f"{{{I.NS_WSU}}}Created").text = conditions.get("NotBefore")
        etree.SubElement(lifetime, f"{{{I.NS_WSU}}}Expires").text = conditions.get("NotOnOrAfter")
    if assertion.get("ID"):
        # How a client refers to the token inside (attached) and outside (unattached) the message.
        for which in ("RequestedAttachedReference", "RequestedUnattachedReference"):
            ref = etree.SubElement(etree.SubElement(rstr, f"{{{wst}}}{which}"),
                                   f"{{{I.NS_WSSE}}}SecurityTokenReference", nsmap={"wsse": I.NS_WSSE})
            key = etree.SubElement(ref, f"{{{I.NS_WSSE}}}KeyIdentifier", ValueType=I.SAML2_SAMLID)
            key.text = assertion.get("ID")
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def fault_envelope(version: str, fault: SoapFault, relates_to: str | None) -> bytes:
    """soap.build_fault, with the wst prefix bound for WS-Trust's subcodes (wst:InvalidRequest...)."""
    if not (fault.subcode or "").startswith("wst:"):
        return soap.build_fault(version, fault, relates_to)
    env, body = soap._envelope(version, "http://www.w3.org/2005/08/addressing/soap/fault", relates_to)
    ns = C.NS_SOAP12 if version == soap.SOAP12 else C.NS_SOAP11
    f = etree.SubElement(body, f"{{{ns}}}Fault")
    if version == soap.SOAP12:
        code = etree.SubElement(f, f"{{{ns}}}Code")
        etree.SubElement(code, f"{{{ns}}}Value").text = "s:" + fault.code
        sub = etree.SubElement(code, f"{{{ns}}}Subcode")
        etree.SubElement(sub, f"{{{ns}}}Value", nsmap=_SUBCODE_NS).text = fault.subcode
        text = etree.SubElement(etree.SubElement(f, f"{{{ns}}}Reason"), f"{{{ns}}}Text")
        text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        text.text = fault.reason
    else:
        # WS-Trust 1.3 section 11: with SOAP 1.1 its fault codes are the faultcode.
        etree.SubElement(f, "faultcode", nsmap=_SUBCODE_NS).text = fault.subcode
        etree.SubElement(f, "faultstring").text = fault.reason
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _plain(start_response, status: str, body: bytes, extra: list | None = None):
    start_response(status, [("Content-Type", "text/plain; charset=UTF-8"), ("Content-Length", str(len(body)))]
                   + (extra or []))
    return [body]


def start(issuer: I.Issuer, host: str = "127.0.0.1", port: int = 0, *, tls=None, threads: int = 4, **app_options):
    """An STS serving in a background thread: the started xds.cheroot_adapter.HttpServer (its port
    is the bound one; stop() ends it)."""
    from xds.cheroot_adapter import HttpServer

    return HttpServer(StsApp(issuer, **app_options), host, port, threads=threads, tls=tls,
                      server_name="xds-sts").start()


# --- the command ----------------------------------------------------------------------------------


def add_arguments(p) -> None:
    """The `xds sts` subcommands, on its parser."""
    sub = p.add_subparsers(dest="sts_command", required=True)
    s = sub.add_parser("serve", help="serve WS-Trust 1.3 Issue (users: the assertion variants; password "
                                     f"{I.DEFAULT_PASSWORD!r})")
    _common(s)
    s.add_argument("--host", dest="sts_host", metavar="HOST", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", dest="sts_port", metavar="PORT", type=int, default=8090, help="port (default 8090)")
    s.add_argument("--password", dest="sts_password", metavar="PASSWORD", default=I.DEFAULT_PASSWORD,
                   help=f"the password of every user (default {I.DEFAULT_PASSWORD!r}, the Gazelle STS's)")
    s.add_argument("--tls-cert", dest="sts_tls_cert", metavar="PEM", help="serve HTTPS with this certificate (PEM)")
    s.add_argument("--tls-key", dest="sts_tls_key", metavar="PEM", help="its private key (PEM)")
    t = sub.add_parser("token", help="print one signed assertion (its exact bytes) to stdout")
    t.add_argument("variant", metavar="VARIANT", help="valid, expired, directe, ... (see `xds sts variants`)")
    _common(t)
    t.add_argument("--subject", dest="sts_subject", metavar="ID", help="the NameID (XUA default: the variant; VIHF: an IdNat_PS)")
    t.add_argument("--patient", dest="sts_patient", metavar="CX", help="the resource-id, a patient CX (id^^^&OID&ISO)")
    t.add_argument("--purpose", dest="sts_purpose", metavar="CODE",
                   help="purpose-of-use code (XUA: TREATMENT, ...; VIHF: normal, bris_de_glace, centre_15)")
    t.add_argument("--unsigned", dest="sts_unsigned", action="store_true", help="leave the assertion unsigned")
    sub.add_parser("variants", help="list the assertion variants (the STS's users), what they mean and where "
                                    "that comes from")


def _common(p) -> None:
    p.add_argument("--config", help="TOML settings file (also XDS_CONFIG): its data folder holds the "
                                    "generated signing pair")
    p.add_argument("--data", help="data folder (default ./xds-data); the generated pair is in <data>/sts")
    p.add_argument("--key", dest="sts_key", metavar="PEM", help="signing key (PEM); default: a pair generated once in <data>/sts")
    p.add_argument("--cert", dest="sts_cert", metavar="PEM", help="the key's certificate (PEM), which servers must trust")
    p.add_argument("--issuer", dest="sts_issuer", metavar="NAME", help="the XUA Issuer (default: the certificate's subject DN)")
    p.add_argument("--audience", dest="sts_audience", metavar="URI",
                   help=f"default AudienceRestriction of XUA assertions (default {I.DEFAULT_AUDIENCE}; "
                        "'none' for none)")
    p.add_argument("--profile", dest="sts_profile", choices=I.PROFILES, default="xua",
                   help="xua (IHE XUA, default) or vihf (French DMP VIHF)")
    p.add_argument("--validity", dest="sts_validity", metavar="SECONDS", type=int, default=3600, help="seconds (default 3600)")
    p.add_argument("--sha1", dest="sts_sha1", action="store_true",
                   help="sign with RSA-SHA1/SHA-1, as the older French tokens are")


def _data_folder(args) -> str:
    if getattr(args, "data", None):
        return args.data
    from xds import settings as settings_mod

    try:
        return settings_mod.load(getattr(args, "config", None)).data
    except (ValueError, OSError):
        return settings_mod.Settings().data


def _issuer(args) -> I.Issuer:
    if bool(args.sts_key) != bool(args.sts_cert):
        raise ValueError("--key and --cert go together")
    if args.sts_key:
        key, cert = args.sts_key, args.sts_cert
    else:
        key, cert, made = I.signing_pair(os.path.join(_data_folder(args), "sts"))
        if made:
            print(f"xds sts: made a signing key and a self-signed certificate; servers must trust {cert} "
                  f"(xds serve --security xua --xua-trust {cert})", file=sys.stderr)
    audience = args.sts_audience
    issuer = I.Issuer(key, cert, name=args.sts_issuer,
                      audience=None if audience == "none" else (audience or I.DEFAULT_AUDIENCE),
                      validity=_dt.timedelta(seconds=args.sts_validity), sha1=args.sts_sha1)
    _ = (issuer.key, issuer.certificate)  # read now: a bad file is an error before anything is served
    return issuer


def command(args) -> int:
    try:
        if args.sts_command == "variants":
            return _variants()
        issuer = _issuer(args)
        if args.sts_command == "token":
            return _token(args, issuer)
        return _serve(args, issuer)
    except (ValueError, OSError, KeyError) as exc:
        print(f"xds sts: {exc}", file=sys.stderr)
        return 2


def _variants() -> int:
    for v in I.VARIANTS.values():
        print(f"{v.name}\t{v.outcome}\t{v.meaning}\t[{v.source}]")
    return 0


def _token(args, issuer: I.Issuer) -> int:
    try:
        v = I.variant(args.variant)
    except KeyError:
        print(f"xds sts: unknown variant {args.variant!r}; `xds sts variants` lists them", file=sys.stderr)
        return 2
    assertion = issuer.issue(v.name, profile=v.profile or args.sts_profile, subject=args.sts_subject,
                             patient_id=args.sts_patient, purpose_of_use=args.sts_purpose,
                             signed=False if args.sts_unsigned else None)
    out = sys.stdout.buffer
    out.write(I.serialize(assertion))
    out.flush()
    return 0


def _serve(args, issuer: I.Issuer) -> int:
    from xds import logs
    from xds.tls import TlsFiles

    logs.setup("INFO", "json")

    if bool(args.sts_tls_cert) != bool(args.sts_tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = TlsFiles(args.sts_tls_cert, args.sts_tls_key) if args.sts_tls_cert else None
    server = start(issuer, args.sts_host, args.sts_port, tls=tls, password=args.sts_password,
                   profile=args.sts_profile)
    scheme = "https" if tls else "http"
    cert = args.sts_cert or os.path.join(_data_folder(args), "sts", I.CERT_FILE)
    password = "as given" if args.sts_password != I.DEFAULT_PASSWORD else I.DEFAULT_PASSWORD
    print(f"xds sts: WS-Trust 1.3 Issue at {scheme}://{args.sts_host}:{server.port}{PATH} ({args.sts_profile})\n"
          f"signing certificate: {cert} (servers must trust it: xds serve --xua-trust {cert})\n"
          f"users: {', '.join(I.VARIANTS)}; password: {password}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0
