"""`xds patient`: the registry's patient ids, through the server, never its files.

    xds patient add ID [ID ...]          accept patient ids
    xds patient merge SUBSUMED SURVIVING  merge one id into another (as an ITI-8 A40 would)
    xds patient list [--json]             every id, with merged ones pointing at their survivor
    xds patient show ID [--json]          one id

By default the command calls the registry's administration endpoint (/admin/patients, registry/
admin_patients.py), as an administrator: the mutual TLS certificate of the settings or flags, or a SAML
assertion (--assertion, --sts), exactly like `xds access`. With `--mllp HOST:PORT`, add and merge are sent
as ITI-8 messages (A01, A40) to the registry's patient feed instead, for a registry whose feed source list
names this host. Options go before or after the action. No form of the command creates or opens a
database: run elsewhere than the server, it fails with the server's address, not with a new empty registry.
"""
from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import quote

from .access import AccessError, admin_url, call
from .transfer import ClientSetupError, add_client_arguments, client_identity, default_url

PREFIX = "/admin/patients"
ACTIONS = ("add", "merge", "list", "show")


def add_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    sub = p.add_subparsers(dest="patient_command", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="accept patient ids (CX: id^^^&OID&ISO)")
    add.add_argument("patient_id", nargs="+", metavar="ID")
    merge = sub.add_parser("merge", help="merge SUBSUMED into SURVIVING (its documents follow)")
    merge.add_argument("subsumed", metavar="SUBSUMED")
    merge.add_argument("surviving", metavar="SURVIVING")
    listed = sub.add_parser("list", help="list the registry's patient ids")
    show = sub.add_parser("show", help="one patient id: known, active, merged into which")
    show.add_argument("patient_id", metavar="ID")
    for leaf in (listed, show):
        leaf.add_argument("--json", action="store_true", help="print what the server answers (JSON)")
    for leaf in (add, merge):
        leaf.add_argument("--mllp", metavar="HOST:PORT",
                          help="send ITI-8 (A01, or A40 to merge) to this patient feed instead of the "
                               "administration endpoint; over TLS when the settings name tls_cert or tls_ca")
        leaf.add_argument("--application", default="XDS_CLI", help="MSH-3 sending application (default XDS_CLI)")
        leaf.add_argument("--facility", default="XDS", help="MSH-4 sending facility (default XDS)")
    from .cli import options_anywhere

    options_anywhere(p, sub)


def _common(p) -> None:
    p.add_argument("--config", help="TOML settings file (also XDS_CONFIG)")
    p.add_argument("--url", help=f"the registry (default http://HOST:PORT of the settings, https when they name "
                                 f"tls_cert); {PREFIX} is appended")
    p.add_argument("--profile", help="the ids' form checked before an --mllp message is sent: ihe (default) or "
                                     "dmp (the server checks every id it is sent by its own profile)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")
    add_client_arguments(p)


def patients_url(base: str, patient: str | None = None) -> str:
    return admin_url(base, PREFIX, patient)


def command(args, settings) -> int:
    if getattr(args, "mllp", None):
        return _feed(args, settings)
    try:
        base = args.url or default_url(settings)
        url = patients_url(base, args.patient_id if args.patient_command == "show" else None)
        context, assertion = client_identity(args, settings)
    except ValueError as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return 2
    except ClientSetupError as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return exc.exit_code

    def ask(target: str, change: dict | None, expect: str) -> dict:
        return call(target, change, assertion=assertion, ssl_context=context, timeout=args.timeout, expect=expect)

    try:
        if args.patient_command == "add":
            done = ask(url, {"action": "add", "patients": args.patient_id}, "added")
            for pid in done["added"]:
                print(f"added {pid}")
        elif args.patient_command == "merge":
            ask(url, {"action": "merge", "subsumed": args.subsumed, "surviving": args.surviving}, "merged")
            print(f"merged {args.subsumed} into {args.surviving}")
        elif args.patient_command == "show":
            found = ask(url, None, "patient")["patient"]
            print(json.dumps(found, indent=2, ensure_ascii=False) if args.json else _line(found))
        else:
            rows = []
            after = None
            while True:  # the server answers in pages; `next` names where the following one starts
                page = ask(url + (f"?after={quote(after, safe='')}" if after else ""), None, "patients")
                rows += page["patients"]
                after = page.get("next")
                if not after:
                    break
            if args.json:
                print(json.dumps(rows, indent=2, ensure_ascii=False))
            else:
                for row in rows:
                    print(_line(row))
    except AccessError as exc:
        hint = " (is the registry running there? --url or --config names another)" if exc.status is None else ""
        print(f"xds: patient {args.patient_command}: {exc.message}{hint}", file=sys.stderr)
        return 1
    return 0


def _line(row: dict) -> str:
    if row.get("active"):
        return row["id"]
    return row["id"] + (f"  (merged into {row['merged_into']})" if row.get("merged_into") else "  (inactive)")


# --- ITI-8 over MLLP ---------------------------------------------------------------------------------

def _feed(args, settings) -> int:
    """The change as the registry's feed takes it, ACK by ACK."""
    from registry.feed import adt_message
    from .feed import send_patients

    if args.patient_command == "add":
        ids, messages = args.patient_id, [adt_message("A01", pid, application=args.application,
                                                      facility=args.facility) for pid in args.patient_id]
    else:
        ids = [args.subsumed, args.surviving]
        messages = [adt_message("A40", args.surviving, subsumed_id=args.subsumed, application=args.application,
                                facility=args.facility)]
    if _bad_ids(ids, settings):
        return 2
    try:
        replies = send_patients(settings, args.mllp, messages)
    except (OSError, ValueError) as exc:
        print(f"xds: {args.mllp}: {exc}", file=sys.stderr)
        return 1
    done = [f"added {pid}" for pid in ids] if args.patient_command == "add" else \
        [f"merged {args.subsumed} into {args.surviving}"]
    failed = 0
    for line, reply in zip(done, replies):
        code, text = _ack_result(reply)
        if code == "AA":
            print(line)
        else:
            failed += 1
            print(f"xds: refused ({code}): {text}", file=sys.stderr)
    return 1 if failed else 0


def _bad_ids(ids, settings) -> bool:
    """Whether any id fails the profile's rule for naming a patient (the DMP's INS may carry CX.5 NH and
    a CX.7 date); checked here because an HL7 v2 feed keeps only CX.1 and CX.4 of what it is sent."""
    from xds.validation.profiles import get_profile

    check = get_profile(settings.profile).checker("queryPatientId")
    bad = False
    for pid in ids:
        problems = check(pid)
        if problems:
            print(f"xds: {pid} is not an XDS patient id (profile {settings.profile}): {'; '.join(problems)}",
                  file=sys.stderr)
            bad = True
    return bad


def _ack_result(reply: str) -> tuple[str, str]:
    """MSA-1 and the fullest reason an ACK gives (ERR-8 when there is one, else MSA-3)."""
    from registry.feed import Hl7ParseError, field_of, parse_message

    try:
        msg = parse_message(reply)
    except Hl7ParseError as exc:
        return "??", f"unreadable acknowledgement: {exc}"
    msa, err = msg.first("MSA"), msg.first("ERR")
    text = msg.unescape(field_of(err, 8)) or msg.unescape(field_of(msa, 3))
    return field_of(msa, 1), text
