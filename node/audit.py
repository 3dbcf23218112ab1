"""`xds audit`: the command-line client of the audit interface (xds/audit/http.py), JSON over HTTP.

    xds audit status                          the outbox: pending, delivered, sent over UDP; notifications
    xds audit log PATIENT [--since D] [--until D] [--professional P] [--json]
    xds audit notifications [--pending] [--json]
    xds audit records [--after SEQ] [--limit N] [--xml]

Administrators only: the caller is who the server authenticates (mutual TLS, or --assertion/--sts),
as for `xds access`.
"""
from __future__ import annotations

import json
import sys
from urllib.parse import quote, urlencode, urlsplit

from .access import AccessError, call
from .transfer import ClientSetupError, add_client_arguments, client_identity, default_url

PREFIX = "/admin/audit"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="audit_command", required=True, metavar="WHAT")
    sub.add_parser("status", help="what the outbox holds: records pending delivery, delivered, sent over UDP")
    lg = sub.add_parser("log", help="a patient's access log: who accessed the record, when, how")
    lg.add_argument("patient", metavar="PATIENT", help="the patient id (CX: id^^^&OID&ISO)")
    lg.add_argument("--since", metavar="DATE", help="from (ISO 8601 date or date-time)")
    lg.add_argument("--until", metavar="DATE", help="until, exclusive")
    lg.add_argument("--professional", metavar="WHO", help="only this professional (id, or part of the name)")
    nt = sub.add_parser("notifications", help="break-the-glass and centre 15 notifications")
    nt.add_argument("--pending", action="store_true", help="only those the webhook has not taken yet")
    rc = sub.add_parser("records", help="the ATNA records, in sequence order")
    rc.add_argument("--after", type=int, default=0, metavar="SEQ", help="records after this sequence number")
    rc.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    rc.add_argument("--xml", action="store_true", help="print each record's AuditMessage")
    for ap in sub.choices.values():
        ap.add_argument("--config", help="TOML settings file (also XDS_CONFIG)")
        ap.add_argument("--url", help="the server (default http://HOST:PORT of the settings)")
        ap.add_argument("--timeout", type=float, default=30.0)
        ap.add_argument("--json", action="store_true", help="print the server's answer (JSON)")
        add_client_arguments(ap)


def _url(base: str, path: str, params: dict) -> str:
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{base}: give an http:// or https:// URL of the server")
    root = base.split("?", 1)[0].rstrip("/")
    if not root.endswith(PREFIX):
        root += PREFIX
    query = urlencode({k: v for k, v in params.items() if v not in (None, False, "")})
    return f"{root}/{path}" + (f"?{query}" if query else "")


def request_of(args) -> tuple[str, dict, str]:
    """(path, query parameters, the key every good answer has)."""
    a = args.audit_command
    if a == "status":
        return "status", {}, "records"
    if a == "log":
        return "log/" + quote(args.patient, safe=""), {"since": args.since, "until": args.until,
                                                       "professional": args.professional}, "entries"
    if a == "notifications":
        return "notifications", {"pending": "1" if args.pending else None}, "notifications"
    return "records", {"after": args.after, "limit": args.limit, "xml": "1" if args.xml else None}, "records"


def format_answer(args, data: dict) -> str:
    a = args.audit_command
    if a == "status":
        lines = [f"audit repository   {data.get('audit_repository') or '(none configured: records are kept here)'}",
                 f"records            {data['records']}",
                 f"  delivered        {data['delivered']}",
                 f"  sent over UDP    {data['sent_unconfirmed']} (never confirmed)",
                 f"  pending          {data['pending']}" + (f" (oldest {data['oldest_pending']})"
                                                          if data.get("oldest_pending") else "")]
        if data.get("last_error"):
            lines.append(f"  last error       {data['last_error']}")
        lines.append(f"notifications      {data['notifications']} ({data['notifications_pending']} pending)")
        return "\n".join(lines)
    if a == "log":
        if not data["entries"]:
            return f"no access recorded for {data['patient']}"
        rows = [(e["at"][:19].replace("T", " "), e["professional"] or "", e["profession"] or "",
                 e["organisation"] or "", e["action"], e["mode"], e["outcome"], e["document_title"] or "")
                for e in data["entries"]]
        return _table(("when (UTC)", "who", "profession", "organisation", "action", "mode", "outcome", "document"),
                      rows)
    if a == "notifications":
        if not data["notifications"]:
            return "no notifications"
        rows = [(str(n["id"]), (n["at"] or "")[:19].replace("T", " "), n["recipient"], n["recipient_id"] or "",
                 n["mode"], n["person"] or "", "delivered" if n["delivered"] else "pending")
                for n in data["notifications"]]
        return _table(("id", "access (UTC)", "to", "recipient", "mode", "who", "state"), rows)
    if args.xml:
        return "\n".join(r["xml"] for r in data["records"])
    rows = [(str(r["seq"]), r["event_time"][:23], r["event"], r["actor"] or "", str(r["outcome"]),
             "delivered" if r["delivered"] else ("sent (UDP)" if r["sent_unconfirmed"] else "pending"))
            for r in data["records"]]
    return _table(("seq", "time (UTC)", "event", "actor", "outcome", "state"), rows) if rows else "no records"


def _table(header, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (header, *rows))


def command(args, settings) -> int:
    path, params, expect = request_of(args)
    try:
        url = _url(args.url or default_url(settings), path, params)
    except ValueError as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return 2
    try:
        context, assertion = client_identity(args, settings, getattr(args, "patient", None))
    except ClientSetupError as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        data = call(url, assertion=assertion, ssl_context=context, timeout=args.timeout, expect=expect)
    except AccessError as exc:
        print(f"xds: audit {args.audit_command}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else format_answer(args, data))
    return 0
