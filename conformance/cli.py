"""`xds conformance run …` (also `python -m conformance run …`): NIST test plans against any
XDS.b registry/repository."""
from __future__ import annotations

import argparse
import os
import sys

from xds.security.issue import DEFAULT_AUDIENCE, DEFAULT_PASSWORD

from . import report, report_html
from .context import DEFAULT_ASSIGNING_AUTHORITY, RunConfig
from .results import RunResult
from .runner import Runner
from .testkit import TestKit
from .transactions import Endpoints, parse_hostport
from .xua import StsConfig

DEFAULT_COLLECTIONS = ("reg", "rep")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--testkit", required=True, metavar="DIR",
                   help="the NIST test kit (the toolkitx folder, its testkit/ folder or testkit/tests/)")
    p.add_argument("--registry", metavar="URL", help="registry endpoint (ITI-42, ITI-18, ITI-57, ITI-62 …)")
    p.add_argument("--repository", metavar="URL", help="repository endpoint (ITI-41, ITI-43, ITI-86)")
    p.add_argument("--repository-id", metavar="OID", help="the repository's repositoryUniqueId")
    p.add_argument("--mllp", metavar="HOST:PORT",
                   help="the SUT's ITI-8 patient identity feed; without it feeds are bypassed and the "
                        "patient ids to register by hand are printed")
    p.add_argument("--collection", action="append", metavar="TAG",
                   help="collection tag from collections.txt: reg, rep, reg_mu, reg_rm, rep_rd … (repeatable; "
                        "default reg and rep unless --test is given)")
    p.add_argument("--test", action="append", nargs="+", metavar="ID", help="test id(s) to run")
    p.add_argument("--report-dir", default="conformance-report", metavar="DIR",
                   help="where junit.xml and report.html go (default ./conformance-report)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each reply (default 60)")
    p.add_argument("--assigning-authority", default=DEFAULT_ASSIGNING_AUTHORITY, metavar="OID",
                   help="assigning authority of the patient ids the harness makes up")
    p.add_argument("--home-community-id", metavar="URN", help="value for $homeCommunityId$")
    p.add_argument("--sts", metavar="URL",
                   help="a WS-Trust 1.3 STS (the Gazelle STS, or `xds sts serve`'s http://HOST:8090/sts): the "
                        "tests of the XUA collections run, each SOAP step carrying in wsse:Security the assertion "
                        "of the STS user the test id ends with (11966_expired: expired); without it they are skipped")
    p.add_argument("--sts-user", default="valid", metavar="USER",
                   help="the STS user of XUA tests without a variant suffix, of the setup tests and of the steps "
                        "to the registry that supports a repository test (default valid)")
    p.add_argument("--sts-password", default=DEFAULT_PASSWORD, metavar="PASSWORD",
                   help=f"the STS users' password (default {DEFAULT_PASSWORD}, the Gazelle STS's)")
    p.add_argument("--sts-audience", default=DEFAULT_AUDIENCE, metavar="URI",
                   help=f"the audience asked for (wsp:AppliesTo; default {DEFAULT_AUDIENCE}; none: ask for none)")
    p.add_argument("--sts-all", action="store_true",
                   help="every test sends an assertion (--sts-user's), not only the XUA tests: for a SUT that "
                        "authenticates every request")
    p.add_argument("--tls-cert", metavar="PEM", help="the harness's client certificate for https endpoints")
    p.add_argument("--tls-key", metavar="PEM", help="its private key")
    p.add_argument("--tls-ca", metavar="PEM", help="the CA the SUT's certificates chain to; with https endpoints "
                                                  "the TLS tests (12028) run")
    p.add_argument("--list", action="store_true", help="list the selected tests and exit")
    p.add_argument("--async-listen", metavar="HOST:PORT",
                   help="run the ASync tests: listen here for the SUT's asynchronous replies (wsa:ReplyTo "
                        "http://HOST:PORT/async-replies, which the SUT must allow); without it they are skipped")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the closing line")


def selected_tests(kit: TestKit, collections: list[str] | None, tests: list[list[str]] | None) -> list[str]:
    chosen: list[str] = []
    for group in tests or []:
        chosen.extend(group)
    if collections or not chosen:
        for tag in collections or DEFAULT_COLLECTIONS:
            chosen.extend(kit.collection(tag))
    return list(dict.fromkeys(chosen))


def execute(args: argparse.Namespace, out=None) -> tuple[RunResult, int]:
    out = out or sys.stdout
    kit = TestKit(args.testkit)
    ids = selected_tests(kit, args.collection, args.test)
    if args.list:
        for t in ids:
            case = kit.test(t) if kit.has(t) else None
            print(f"{t}\t{' '.join(case.collections) if case else '?'}\t{case.title if case else 'not in the kit'}",
                  file=out)
        return RunResult(), 0
    listener = None
    if getattr(args, "async_listen", None):
        from .async_listener import ReplyListener

        listener = ReplyListener(*parse_hostport(args.async_listen)).start()
        print(f"asynchronous replies: wsa:ReplyTo {listener.url}", file=out, flush=True)
    try:
        return _execute(args, kit, ids, listener, out)
    finally:
        if listener is not None:
            listener.stop()


def _execute(args, kit: TestKit, ids: list[str], listener, out) -> tuple[RunResult, int]:
    endpoints = Endpoints(args.registry, args.repository,
                          parse_hostport(args.mllp) if args.mllp else None, args.timeout, tls_context(args),
                          reply_listener=listener)
    config = RunConfig(endpoints, args.repository_id, kit.source_id, args.assigning_authority,
                       args.home_community_id, sts=sts_config(args))
    progress = None if args.quiet else (lambda line: print(line, file=out, flush=True))
    run = Runner(kit, config, progress).run(ids)
    write_reports(run, args.report_dir)
    if not args.quiet:
        print(report.text_listing(run), file=out)
        print(f"reports: {os.path.join(args.report_dir, 'report.html')}, "
              f"{os.path.join(args.report_dir, 'junit.xml')}", file=out)
    print(run.summary_line(), file=out, flush=True)
    return run, (1 if run.count("failed") else 0)


def tls_context(args: argparse.Namespace):
    if not (args.tls_cert or args.tls_ca):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("xds conformance run: --tls-cert and --tls-key go together")
    from xds.tls import TlsFiles, client_context

    return client_context(TlsFiles(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None,
                          ca=args.tls_ca)


def sts_config(args: argparse.Namespace) -> StsConfig | None:
    if not args.sts:
        return None
    audience = None if args.sts_audience.lower() == "none" else args.sts_audience
    return StsConfig(args.sts, args.sts_user, args.sts_password, audience, args.sts_all, args.timeout)


def write_reports(run: RunResult, directory: str) -> None:
    report.write_junit(run, os.path.join(directory, "junit.xml"))
    report_html.write_html(run, os.path.join(directory, "report.html"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xds conformance", description=__doc__)
    sub = parser.add_subparsers(dest="conformance_command", required=True)
    add_arguments(sub.add_parser("run", help="run test plans against an endpoint"))
    args = parser.parse_args(argv)
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    if not args.list and not (args.registry or args.repository):
        print("xds conformance: give --registry and/or --repository", file=sys.stderr)
        return 2
    if args.sts_all and not args.sts:
        print("xds conformance: --sts-all needs --sts URL", file=sys.stderr)
        return 2
    try:
        _, code = execute(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"xds conformance: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
