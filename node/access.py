"""`xds access`: the command-line client of the registry's administration interface of the patients'
access states (registry/admin.py), JSON over HTTP at /admin/access/<patient id, URL-encoded>.

    xds access show PATIENT [--json]
    xds access grant PATIENT PERSON [--since DATE] [--until DATE]
    xds access revoke|block|unblock|representative|unrepresent PATIENT PERSON
    xds access treating-doctor PATIENT (PERSON | --none)
    xds access object|withdraw PATIENT (break-the-glass | centre-15)
    xds access set PATIENT (closed | minor) (on | off)

The caller is who the server authenticates: the mutual TLS certificate (--tls-cert/--tls-key, or the
settings'), or a SAML assertion (--assertion FILE, or --sts), sent as `Authorization: Bearer
<base64url>`. The server alone decides what each caller may change; this client judges no value
(a bad date is the server's 400), and shows its answer.
"""
from __future__ import annotations

import base64
import http.client
import json
import ssl
import sys
from urllib.parse import quote, urlsplit

from .transfer import ClientSetupError, add_client_arguments, client_identity, default_url

PREFIX = "/admin/access"
OBJECTIONS = {"break-the-glass": "break_glass", "centre-15": "centre_15"}
OBJECTION_NAMES = {v: k for k, v in OBJECTIONS.items()}
SWITCH = {"on": True, "off": False}
MAX_ANSWER = 1 << 20


class AccessError(Exception):
    """The server refused (status 4xx/5xx) or could not be reached (status None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message


# --- the request -------------------------------------------------------------------------------------

def admin_url(base: str, prefix: str, patient: str | None = None) -> str:
    """An administration endpoint's URL (prefix: /admin/access, /admin/patients), with the patient id
    URL-encoded after it. base: http(s)://host:port, optionally with a path (a reverse proxy's prefix, or
    the endpoint itself)."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{base}: give an http:// or https:// URL of the registry")
    root = base.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    if not root.endswith(prefix):
        root += prefix
    return root + (f"/{quote(patient, safe='')}" if patient else "")


def access_url(base: str, patient: str) -> str:
    return admin_url(base, PREFIX, patient)


def bearer(assertion: bytes) -> str:
    """RFC 7522's encoding of a SAML assertion: base64url, no padding."""
    return "Bearer " + base64.urlsafe_b64encode(assertion).rstrip(b"=").decode("ascii")


def call(url: str, change: dict | None = None, *, assertion: bytes | None = None,
         ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0, expect: str = "patient") -> dict:
    """GET the state (change None) or POST one change; the state the server answers, or AccessError.
    expect: a key every good answer carries (the audit interface's answers use it too)."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                           context=ssl_context or ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Accept": "application/json"}
    if assertion is not None:
        headers["Authorization"] = bearer(assertion)
    body = None
    if change is not None:
        body = json.dumps(change).encode("utf-8")
        headers["Content-Type"] = "application/json"
    try:
        conn.request("POST" if change is not None else "GET", target, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read(MAX_ANSWER)
        status = resp.status
    except (OSError, http.client.HTTPException) as exc:
        raise AccessError(f"{url}: {exc}") from None
    finally:
        conn.close()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if status == 200 and isinstance(data, dict) and expect in data:
        return data
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data["error"]
    else:
        message = raw[:300].decode("utf-8", "replace").strip() or "(no answer body)"
    raise AccessError(f"HTTP {status}: {message}", status)


# --- the command line --------------------------------------------------------------------------------

def add_arguments(p) -> None:
    """`xds access ACTION PATIENT ...`: one subcommand per action, each with the common flags after it."""
    sub = p.add_subparsers(dest="access_command", required=True, metavar="ACTION")

    def action(name: str, help_: str):
        ap = sub.add_parser(name, help=help_, description=help_ + ".")
        ap.add_argument("patient", metavar="PATIENT", help="the patient id (CX: id^^^&OID&ISO)")
        return ap

    show = action("show", "print the patient's access state")
    show.add_argument("--json", action="store_true", help="print the state as the server answers it (JSON)")
    grant = action("grant", "authorise a professional to consult the record")
    grant.add_argument("person", metavar="PERSON", help="the professional's id (e.g. the RPPS / IdNat_PS)")
    grant.add_argument("--since", metavar="DATE", help="from (ISO 8601 date or date-time, UTC without a zone)")
    grant.add_argument("--until", metavar="DATE", help="until, exclusive (ISO 8601 date or date-time)")
    for name, help_ in (("revoke", "withdraw a professional's authorisation"),
                        ("block", "block a professional from the record (withdraws an authorisation)"),
                        ("unblock", "lift a professional's block"),
                        ("representative", "name a legal representative"),
                        ("unrepresent", "remove a legal representative")):
        action(name, help_).add_argument("person", metavar="PERSON", help="the person's id")
    doctor = action("treating-doctor", "name the treating doctor (médecin traitant), or none")
    which = doctor.add_mutually_exclusive_group(required=True)
    which.add_argument("person", metavar="PERSON", nargs="?", help="the doctor's id")
    which.add_argument("--none", action="store_true", help="the patient has no treating doctor")
    for name, help_ in (("object", "record the patient's objection to an emergency access"),
                        ("withdraw", "withdraw the patient's objection to an emergency access")):
        action(name, help_).add_argument("objection", choices=tuple(OBJECTIONS), metavar="OBJECTION",
                                         help="break-the-glass or centre-15")
    flag = action("set", "open or close the record, or say whether the patient is a minor")
    flag.add_argument("flag", choices=("closed", "minor"), metavar="FLAG", help="closed or minor")
    flag.add_argument("value", choices=tuple(SWITCH), metavar="on|off", help="on or off")
    for ap in sub.choices.values():
        _common(ap)


def _common(p) -> None:
    p.add_argument("--config", help="TOML settings file (also XDS_CONFIG)")
    p.add_argument("--url", help=f"the registry (default http://HOST:PORT of the settings, https when they name "
                                 f"tls_cert); {PREFIX}/PATIENT is appended")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")
    add_client_arguments(p)


def change_of(args) -> dict | None:
    """The JSON body of the action (None: show)."""
    a = args.access_command
    if a == "show":
        return None
    if a == "grant":
        change = {"action": a, "person": args.person}
        for key in ("since", "until"):
            if getattr(args, key) is not None:
                change[key] = getattr(args, key)
        return change
    if a == "treating-doctor":
        return {"action": a, "person": None if args.none else args.person}
    if a in ("object", "withdraw"):
        return {"action": a, "objection": OBJECTIONS[args.objection]}
    if a == "set":
        return {"action": a, "flag": args.flag, "value": SWITCH[args.value]}
    return {"action": a, "person": args.person}


def done_line(args, state: dict) -> str:
    """What changed, in one line, from the state the server answers."""
    a, patient = args.access_command, state.get("patient") or args.patient
    person = getattr(args, "person", None)
    if a == "grant":
        grant = next((g for g in state.get("authorised", []) if g.get("person") == person), {})
        period = ", ".join(f"{k} {grant[k]}" for k in ("since", "until") if grant.get(k))
        return f"authorised {person} for {patient}" + (f" ({period})" if period else "")
    if a == "treating-doctor":
        doctor = state.get("treating_doctor")
        return f"treating doctor of {patient}: {doctor}" if doctor else f"{patient} has no treating doctor"
    if a in ("object", "withdraw"):
        verb = "objects to" if a == "object" else "no longer objects to"
        return f"{patient} {verb} {args.objection}"
    if a == "set":
        if args.flag == "closed":
            return f"the record of {patient} is {'closed' if state.get('closed') else 'open'}"
        return f"{patient} is {'a minor' if state.get('minor') else 'not a minor'}"
    return {"revoke": f"withdrew the authorisation of {person} for {patient}",
            "block": f"blocked {person} from {patient}",
            "unblock": f"unblocked {person} for {patient}",
            "representative": f"{person} represents {patient}",
            "unrepresent": f"{person} no longer represents {patient}"}[a]


def format_state(state: dict) -> str:
    def people(names) -> str:
        return ", ".join(names) if names else "(none)"

    grants = []
    for g in state.get("authorised", []):
        period = ", ".join(f"{k} {g[k]}" for k in ("since", "until") if g.get(k))
        grants.append(g.get("person", "?") + (f" ({period})" if period else ""))
    objections = [OBJECTION_NAMES.get(o, o) for o in state.get("objections", [])]
    rows = [("patient", state.get("patient", "")),
            ("record", "closed" if state.get("closed") else "open"),
            ("minor", "yes" if state.get("minor") else "no"),
            ("treating doctor", state.get("treating_doctor") or "(none)"),
            ("authorised", grants[0] if grants else "(none)")]
    rows += [("", g) for g in grants[1:]]
    rows += [("blocked", people(state.get("blocked"))),
             ("representatives", people(state.get("representatives"))),
             ("objections", people(objections))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in rows)


def command(args, settings) -> int:
    try:
        url = access_url(args.url or default_url(settings), args.patient)
    except ValueError as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return 2
    try:
        context, assertion = client_identity(args, settings, args.patient)
    except ClientSetupError as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        state = call(url, change_of(args), assertion=assertion, ssl_context=context, timeout=args.timeout)
    except AccessError as exc:
        print(f"xds: access {args.access_command} {args.patient}: {exc.message}", file=sys.stderr)
        return 1
    if args.access_command != "show":
        print(done_line(args, state))
    elif args.json:
        print(json.dumps(state, indent=2, ensure_ascii=False))
    else:
        print(format_state(state))
    return 0
