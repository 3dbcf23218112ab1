"""`python -m conformance.ci <testkit dir> [--collection TAG …]`: start our all-in-one server
(fresh SQLite and data folder), run the required collections against it over HTTP and
MLLP, write ./conformance-report/ and print the closing line.

The XUA collections (reg_xua, rep_xua) run against a second all-in-one server, with
security = xua and the Connectathon policy the kit's variants assume, which trusts our own
STS (node/sts.py, in-process, with a key pair made for the run); the harness asks that STS
for each test's assertion as it would ask the Gazelle STS.

12028 (Submit and Retrieve over TLS) runs against a third one, with mutual TLS and a CA, server and
client certificate made for the run (conformance/certs.py), and PnrXop and PnrNoXop, whose wire samples
frame MTOM with bare LF, against one server each with mime_bare_lf = true. The ASync tests run against
another, whose async_reply_to names the ReplyTo listener the harness opens on 127.0.0.1
(conformance/async_listener.py), and the kit's tests of no collection (15804, 12344, RMDInit1/2) against
a last one.

The exit code is non-zero when a test fails (every default collection passes against our
server, so a failure is a regression) or when the harness itself fails; --informative keeps
failures informative, for collections the server does not serve yet.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

from . import report
from .cli import write_reports
from .context import RunConfig
from .results import FAILED, RunResult
from .runner import Runner
from .testkit import TestKit
from .transactions import Endpoints
from .xua import StsConfig

COLLECTIONS = ("reg", "rep", "reg_mu", "reg_rmu", "reg_rm", "reg_mpq", "reg_od", "reg_xadpid", "reg_isr",
               "reg_catfolder", "reg_catlifecycle", "rep_rd", "ASync")  # required ones and the options built
XUA_COLLECTIONS = ("reg_xua", "rep_xua")
# PnrXop and PnrNoXop send wire samples framed with bare LF whose uniqueIds are hard-coded (the same ones in
# both): a mime_bare_lf server each.
BARE_LF_TESTS = ("PnrXop", "PnrNoXop")
# Tests of the kit in no collection: the simple feed, the old registry/repository initialisation and the
# Remove Metadata data loads. Run on a server of their own, so their submissions count in no collection's
# queries.
UNTAGGED = ("15804", "12344", "RMDInit1", "RMDInit2")
ASYNC_TAG = "ASync"
ASYNC_SUPPORT = ("12029",)   # 12335 retrieves the document 12029 submitted: run first, as a setup step
_ATNA = None  # (schema, AtnaCheck) when --atna-schema is given


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.ci", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("testkit")
    parser.add_argument("--collection", action="append",
                        help=f"default: {' '.join(COLLECTIONS + XUA_COLLECTIONS)}")
    parser.add_argument("--informative", action="store_true",
                        help="exit 0 even when tests fail (for collections the server does not serve yet)")
    parser.add_argument("--report-dir", default="conformance-report")
    parser.add_argument("--atna-schema", metavar="XSD",
                        help="check every audit record the run left against this DICOM audit schema")
    args = parser.parse_args(argv)
    global _ATNA
    if args.atna_schema:
        from lxml import etree

        from .atna import AtnaCheck

        _ATNA = (etree.XMLSchema(etree.parse(args.atna_schema)), AtnaCheck())

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    kit = TestKit(args.testkit)
    tags = args.collection or list(COLLECTIONS + XUA_COLLECTIONS)
    plain_tags = [t for t in tags if not t.endswith("_xua") and t not in ("Ret.b", ASYNC_TAG)]
    xua_tags = [t for t in tags if t.endswith("_xua")]
    runs: list[tuple[str, RunResult]] = []
    parts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="xds-conformance-") as data:
        if plain_tags:
            runs.append(("", _run(kit, plain_tags, _settings(os.path.join(data, "plain")))))
            parts.append(" ".join(plain_tags))
        if xua_tags:
            runs.append(("XUA server", _run_xua(kit, xua_tags, os.path.join(data, "xua"))))
            parts.append(" ".join(xua_tags) + " (XUA server)")
        if ASYNC_TAG in tags:
            runs.append(("async server", _run_async(kit, os.path.join(data, "async"))))
            parts.append(f"{ASYNC_TAG} (async server)")
        if args.collection is None or "Ret.b" in tags:
            runs.append(("TLS server", _run_tls(kit, os.path.join(data, "tls"))))
            parts.append("12028 (TLS server)")
        for test in BARE_LF_TESTS if args.collection is None else ():
            if not kit.has(test):
                continue
            # The kit's wire samples frame MTOM with bare LF, which the server refuses by default (RFC 2046
            # wants CRLF); mime_bare_lf is the documented setting that accepts them.
            print(f"conformance harness: {test} runs against a server with mime_bare_lf = true", flush=True)
            settings = _settings(os.path.join(data, f"bare-lf-{test}"))
            settings.mime_bare_lf = True
            runs.append(("mime_bare_lf server", _run(kit, ["hidden"], settings, tests=[test])))
            parts.append(f"{test} (mime_bare_lf server)")
        untagged = [t for t in UNTAGGED if kit.has(t)] if args.collection is None else []
        if untagged:
            runs.append(("", _run(kit, ["no collection"], _settings(os.path.join(data, "untagged")), tests=untagged)))
            parts.append(f"{' '.join(untagged)} (in no collection)")
    run = merge(runs)
    write_reports(run, args.report_dir)
    print(report.text_listing(run))
    print(f"reports: {args.report_dir}/report.html, {args.report_dir}/junit.xml")
    if len(runs) > 1:
        for what, (_, part) in zip(parts, runs):
            print(part.summary_line(f"  {what}"))
    print(run.summary_line(), flush=True)
    if _ATNA is not None:
        print(_ATNA[1].line(os.path.basename(args.atna_schema)), flush=True)
        for problem in _ATNA[1].invalid[:20]:
            print(f"  {problem}", file=sys.stderr)
        if _ATNA[1].invalid:
            return 1
    broken = run.internal_errors
    if broken:
        print(f"conformance harness errors in: {', '.join(t.id for t in broken)}", file=sys.stderr)
        return 1
    # Every default collection passes against our server, so a failure is a regression.
    if run.count(FAILED) and not args.informative:
        return 1
    return 0


def _settings(data: str, **security):
    from xds.settings import Settings

    return Settings(role="all", port=0, data=data, mllp_port=0, check_patients=True, log_level="WARNING",
                    **security)


def _run(kit: TestKit, tags: list[str], settings, sts: StsConfig | None = None, *,
         tests: list[str] | None = None, ssl_context=None, reply_listener=None) -> RunResult:
    from node.server import Services

    tests = tests or list(dict.fromkeys(t for tag in tags for t in kit.collection(tag)))
    services = Services(settings).start()
    try:
        mllp = (settings.host, services.mllp.port) if services.mllp is not None else None
        endpoints = Endpoints(f"{services.url}/xds/registry", f"{services.url}/xds/repository", mllp,
                              timeout=60.0, ssl_context=ssl_context, reply_listener=reply_listener)
        config = RunConfig(endpoints, settings.repository_id, kit.source_id, sts=sts)
        how = f" (security = xua, assertions from {sts.url})" if sts else " (https, mutual TLS)" if ssl_context else ""
        print(f"conformance harness: {len(tests)} tests ({', '.join(tags)}) against {services.url}{how}",
              flush=True)
        return Runner(kit, config, lambda line: print(line, flush=True)).run(tests)
    finally:
        services.stop()
        if _ATNA is not None:
            from .atna import check_outbox

            _ATNA[1].add(check_outbox(services.auditor.store, services.auditor.source, _ATNA[0]))


def _run_async(kit: TestKit, data: str) -> RunResult:
    """The ASync tests (12331, 12333-12335): sent with wsa:ReplyTo naming a listener of the harness on
    127.0.0.1, against a server whose async_reply_to allows that listener and nothing else."""
    from .async_listener import ReplyListener

    with ReplyListener() as listener:
        settings = _settings(data, async_reply_to=[listener.url])
        print(f"conformance harness: {ASYNC_TAG} replies go to {listener.url} (the server's async_reply_to)",
              flush=True)
        tests = [t for t in ASYNC_SUPPORT if kit.has(t)] + kit.collection(ASYNC_TAG)
        run = _run(kit, [ASYNC_TAG], settings, tests=list(dict.fromkeys(tests)), reply_listener=listener)
    for test in run.tests:
        if test.id in ASYNC_SUPPORT and ASYNC_TAG not in test.collections:
            test.setup = True   # counted once, in the run of its own collection; a failure still fails the run
    return run


def _run_tls(kit: TestKit, data: str) -> RunResult:
    """The tests that must run over TLS (12028), against a server with mutual TLS and certificates made
    for the run. Its feed would be MLLP over TLS too, which the harness does not speak: that server
    takes submissions without an announced patient instead."""
    from xds.tls import TlsFiles, client_context

    from . import certs, orchestration

    made = certs.make(os.path.join(data, "certs"))
    settings = _settings(os.path.join(data, "server"), tls_cert=made.server_cert, tls_key=made.server_key,
                         tls_ca=made.ca)
    settings.mllp_port = None
    settings.check_patients = False
    context = client_context(TlsFiles(made.client_cert, made.client_key, made.ca))
    tests = [t for t in orchestration.TLS_TESTS if kit.has(t)]
    return _run(kit, ["TLS"], settings, tests=tests, ssl_context=context)


def _run_xua(kit: TestKit, tags: list[str], data: str) -> RunResult:
    from node import sts as sts_server
    from xds.security import issue
    from xds.security.xua import AC_CLASSES

    key, cert, _ = issue.signing_pair(os.path.join(data, "sts"))
    server = sts_server.start(issue.Issuer(key, cert))
    try:
        # The Connectathon policy the kit's "second" variants are refused by: the first-level role and
        # purpose of use only, and every SAML authentication context but InternetProtocol.
        settings = _settings(os.path.join(data, "server"), security="xua", xua_trust=[cert],
                             xua_audiences=[issue.DEFAULT_AUDIENCE], xua_roles=[issue.ROLE_MEDICAL_DOCTOR.code],
                             xua_purposes=[issue.POU_TREATMENT.code],
                             xua_authn_contexts=sorted(AC_CLASSES - {issue.AC_INTERNET_PROTOCOL}))
        return _run(kit, tags, settings, StsConfig(f"http://127.0.0.1:{server.port}{sts_server.PATH}"))
    finally:
        server.stop()


def merge(runs: list[tuple[str, RunResult]]) -> RunResult:
    """One report of the runs against several servers. The setup tests run on each server, so those
    of a labelled run say where they ran (a report would show the same test twice otherwise)."""
    if len(runs) == 1:
        return runs[0][1]
    merged = RunResult(started=runs[0][1].started if runs else "")
    for label, run in runs:
        prefix = f"{label}: " if label else ""
        for test in run.tests:
            if label and test.setup:
                test.title = f"{test.title} ({label})"
            merged.tests.append(test)
        merged.notes.extend(prefix + note for note in run.notes)
        merged.target.update({f"{prefix}{name}": value for name, value in run.target.items()})
        merged.elapsed += run.elapsed
    return merged


if __name__ == "__main__":
    sys.exit(main())
