"""`python -m conformance.ci <testkit dir> [--collection TAG …]`: start our all-in-one server
(fresh SQLite and data folder), run the required collections against it over HTTP and
MLLP, write ./conformance-report/ and print the closing line.

The exit code is non-zero when a test fails (every default collection passes against our
server, so a failure is a regression) or when the harness itself fails; --informative keeps
failures informative, for collections the server does not serve yet.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile

from . import report
from .cli import write_reports
from .context import RunConfig
from .results import FAILED
from .runner import Runner
from .testkit import TestKit
from .transactions import Endpoints

COLLECTIONS = ("reg", "rep", "reg_mu", "reg_rm", "rep_rd")  # required ones and the options built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.ci", description=__doc__)
    parser.add_argument("testkit")
    parser.add_argument("--collection", action="append", help=f"default: {' '.join(COLLECTIONS)}")
    parser.add_argument("--informative", action="store_true",
                        help="exit 0 even when tests fail (for collections the server does not serve yet)")
    parser.add_argument("--report-dir", default="conformance-report")
    args = parser.parse_args(argv)

    from node.server import Services
    from xds.settings import Settings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    kit = TestKit(args.testkit)
    tests: list[str] = []
    for tag in args.collection or COLLECTIONS:
        tests.extend(kit.collection(tag))
    with tempfile.TemporaryDirectory(prefix="xds-conformance-") as data:
        settings = Settings(role="all", port=0, data=data, mllp_port=0, check_patients=True, log_level="WARNING")
        services = Services(settings).start()
        try:
            endpoints = Endpoints(f"{services.url}/xds/registry", f"{services.url}/xds/repository",
                                  (settings.host, services.mllp.port), timeout=60.0)
            config = RunConfig(endpoints, settings.repository_id, kit.source_id)
            print(f"conformance harness: {len(set(tests))} tests ({', '.join(args.collection or COLLECTIONS)}) "
                  f"against {services.url}", flush=True)
            run = Runner(kit, config, lambda line: print(line, flush=True)).run(list(dict.fromkeys(tests)))
        finally:
            services.stop()
    write_reports(run, args.report_dir)
    print(report.text_listing(run))
    print(f"reports: {args.report_dir}/report.html, {args.report_dir}/junit.xml")
    print(run.summary_line(), flush=True)
    broken = run.internal_errors
    if broken:
        print(f"conformance harness errors in: {', '.join(t.id for t in broken)}", file=sys.stderr)
        return 1
    # Every default collection passes against our server, so a failure is a regression.
    if run.count(FAILED) and not args.informative:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
