"""The harness against our own all-in-one server over HTTP and MLLP, with a hand-written kit:
T100 feeds a patient, registers one entry (ebRIM 2.1, translated) and finds it again;
T101 fails on purpose; T102 needs an STS and is skipped."""
import io
import os

import pytest

from conformance import cli
from conformance.context import RunConfig
from conformance.results import FAILED, NOT_RUN, PASSED, SKIPPED
from conformance.runner import Runner
from conformance.testkit import TestKit
from conformance.transactions import Endpoints
from node.server import Services
from xds.settings import Settings

KIT = os.path.join(os.path.dirname(__file__), "fixtures", "conformance", "kit")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("conformance-server")
    settings = Settings(role="all", port=0, data=str(data), mllp_port=0, check_patients=True, log_level="WARNING")
    services = Services(settings).start()
    yield services
    services.stop()


def _endpoints(server) -> Endpoints:
    return Endpoints(f"{server.url}/xds/registry", f"{server.url}/xds/repository",
                     (server.settings.host, server.mllp.port), timeout=30)


def test_run_against_our_server(server):
    kit = TestKit(KIT)
    lines = []
    run = Runner(kit, RunConfig(_endpoints(server), server.settings.repository_id, kit.source_id),
                 lines.append).run(["T100", "T101", "T102"])
    by_id = {t.id: t for t in run.tests}
    t100 = by_id["T100"]
    assert t100.status == PASSED, t100.reason
    assert [s.name for s in t100.sections] == ["feed", "submit", "eval"]
    feed, submit, query = (sec.steps[0] for sec in t100.sections)
    assert feed.transaction == "ITI-8" and "ADT^A01" in feed.request and "MSA|AA" in feed.response
    assert submit.transaction == "ITI-42" and "lcm:SubmitObjectsRequest" in submit.request
    assert "rim:LeafRegistryObjectList" not in submit.request  # sent as ebRIM 3.0
    assert query.transaction == "ITI-18" and "AdhocQueryResponse" in query.response

    t101 = by_id["T101"]
    assert t101.status == FAILED
    step, missing = t101.sections
    assert step.steps[0].status == FAILED and step.steps[1].status == NOT_RUN
    assert "status Failure, expected Success" in step.steps[0].problems[0]
    assert "XDSUnknownPatientId" in step.steps[0].problems[0]
    assert "listed in index.idx" in missing.error
    assert by_id["T102"].status == SKIPPED and "STS" in by_id["T102"].reason
    assert run.summary_line() == "conformance: 1 passed, 1 failed, 1 skipped"
    assert not run.internal_errors
    assert any(line.startswith("PASSED  T100") for line in lines)


def test_cli_writes_reports_and_exits_non_zero_on_failure(server, tmp_path):
    ep = _endpoints(server)
    out = io.StringIO()
    args = _parse(["run", "--testkit", KIT, "--registry", ep.registry, "--repository", ep.repository,
                   "--repository-id", server.settings.repository_id, "--mllp", f"{ep.mllp[0]}:{ep.mllp[1]}",
                   "--collection", "mini", "--report-dir", str(tmp_path / "rep")])
    run, code = cli.execute(args, out)
    assert code == 1
    text = out.getvalue()
    assert text.rstrip().splitlines()[-1] == "conformance: 1 passed, 1 failed, 1 skipped"
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "unknown_patient" in page and "XDSUnknownPatientId" in page and "SubmitObjectsRequest" in page
    assert (tmp_path / "rep" / "junit.xml").exists()
    passing = _parse(["run", "--testkit", KIT, "--registry", ep.registry, "--mllp",
                      f"{ep.mllp[0]}:{ep.mllp[1]}", "--test", "T100", "--report-dir", str(tmp_path / "ok"), "-q"])
    _, code = cli.execute(passing, io.StringIO())
    assert code == 0


def test_xds_command_has_the_subcommand(capsys):
    from node.cli import main

    assert main(["conformance", "run", "--testkit", KIT, "--list", "--collection", "mini"]) == 0
    listed = capsys.readouterr().out
    assert "T100\tmini reg\tRegister one entry, then find it" in listed
    assert main(["conformance", "run", "--testkit", KIT]) == 2  # no endpoint given


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    cli.add_arguments(sub.add_parser("run"))
    return parser.parse_args(argv)


def test_the_tls_test_runs_over_mutual_tls_with_certificates_made_for_the_run(tmp_path):
    """12028 (Submit and Retrieve over TLS) runs only against https endpoints with a TLS context, as
    python -m conformance.ci runs it: certificates from conformance/certs.py, a server requiring them."""
    import shutil

    from conformance import certs
    from xds.tls import TlsFiles, client_context

    kit_dir = tmp_path / "kit"
    shutil.copytree(KIT, kit_dir)
    tests = kit_dir / "testkit" / "tests"
    shutil.copytree(tests / "T100", tests / "12028")
    made = certs.make(str(tmp_path / "certs"))
    settings = Settings(role="all", port=0, data=str(tmp_path / "data"), check_patients=False, log_level="WARNING",
                        tls_cert=made.server_cert, tls_key=made.server_key, tls_ca=made.ca)
    services = Services(settings).start()
    try:
        assert services.url.startswith("https://")
        kit = TestKit(str(kit_dir))
        context = client_context(TlsFiles(made.client_cert, made.client_key, made.ca))
        urls = (f"{services.url}/xds/registry", f"{services.url}/xds/repository")
        run = Runner(kit, RunConfig(Endpoints(*urls, ssl_context=context), settings.repository_id,
                                    kit.source_id)).run(["12028"])
        assert [(t.id, t.status) for t in run.tests] == [("12028", PASSED)], run.tests[0].reason
        # No TLS context: skipped, saying what it needs.
        run = Runner(kit, RunConfig(Endpoints(*urls), settings.repository_id, kit.source_id)).run(["12028"])
        assert run.tests[0].status == SKIPPED and "--tls-cert" in run.tests[0].reason
        # A client certificate from another CA is refused at the handshake: the step fails, not passes.
        stranger = certs.make(str(tmp_path / "other"))
        wrong = client_context(TlsFiles(stranger.client_cert, stranger.client_key, made.ca))
        run = Runner(kit, RunConfig(Endpoints(*urls, ssl_context=wrong), settings.repository_id,
                                    kit.source_id)).run(["12028"])
        assert run.tests[0].status == FAILED
    finally:
        services.stop()
