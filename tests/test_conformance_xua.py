"""The harness's XUA plumbing: which STS user each step speaks as, the assertion it carries in
wsse:Security, and a test whose assertion cannot be had failing with the reason.

A hand-written kit (written per test into tmp_path), our own STS in-process, and a fake
registry/repository that answers as an XUA service would: a Fault for an assertion of a user a
service refuses. Nothing here reads ../shared.
"""
from __future__ import annotations

import io
import socket
from dataclasses import dataclass

import pytest
from lxml import etree

from conformance import ci, cli, orchestration
from conformance.context import RunConfig
from conformance.results import FAILED, PASSED, SKIPPED, RunResult, TestResult
from conformance.runner import Runner
from conformance.testkit import TestKit
from conformance.transactions import Endpoints
from conformance.xua import StsConfig, user_for
from node import sts as sts_server
from xds import constants as C
from xds import soap
from xds.ebrim import registry_response
from xds.errors import SoapFault
from xds.security import issue

from .fakehttp import Answer, FakeHost, soap_answer

NS = {"wsse": issue.NS_WSSE, "saml2": issue.NS_SAML2, "wsa": C.NS_WSA, "s": C.NS_SOAP12}
ACCEPTED_USERS = {"valid", "withauthzconsent"}

QUERY = f"""<query:AdhocQueryRequest xmlns:query="{C.NS_QUERY}" xmlns:rim="{C.NS_RIM}">
  <query:ResponseOption returnComposedObjects="true" returnType="LeafClass"/>
  <rim:AdhocQuery id="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d">
    <rim:Slot name="$XDSDocumentEntryPatientId"><rim:ValueList>
      <rim:Value>'XUA1^^^&amp;1.2.250.1.999.4&amp;ISO'</rim:Value></rim:ValueList></rim:Slot>
    <rim:Slot name="$XDSDocumentEntryStatus"><rim:ValueList>
      <rim:Value>('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')</rim:Value></rim:ValueList></rim:Slot>
  </rim:AdhocQuery>
</query:AdhocQueryRequest>"""
REMOVE = """<rmd:RemoveDocumentsRequest xmlns:rmd="urn:ihe:iti:rmd:2017" xmlns:xdsb="urn:ihe:iti:xds-b:2007">
  <xdsb:DocumentRequest><xdsb:RepositoryUniqueId>1.2.250.1.999.3.9</xdsb:RepositoryUniqueId>
    <xdsb:DocumentUniqueId>1.2.250.1.999.5.1</xdsb:DocumentUniqueId></xdsb:DocumentRequest>
</rmd:RemoveDocumentsRequest>"""


def _query_step(step_id: str, expected: str) -> str:
    return f"""<TestStep id="{step_id}"><ExpectedStatus>{expected}</ExpectedStatus>
    <StoredQueryTransaction><XDSb/><MetadataFile>query.xml</MetadataFile></StoredQueryTransaction></TestStep>"""


def _write_test(tests, test_id: str, tags: str, sections: dict[str, str]) -> None:
    """sections: name → TestStep elements; the name "" makes a test without index.idx."""
    folder = tests / test_id
    folder.mkdir()
    (folder / "collections.txt").write_text(tags + "\n")
    (folder / "readme.txt").write_text(f"{test_id} of the XUA plumbing tests\n")
    if list(sections) != [""]:
        (folder / "index.idx").write_text("\n".join(sections) + "\n")
    for name, steps in sections.items():
        where = folder / name if name else folder
        where.mkdir(exist_ok=True)
        (where / "testplan.xml").write_text(f"<TestPlan><Test>{test_id}/{name}</Test>{steps}</TestPlan>")
        (where / "query.xml").write_text(QUERY)
        (where / "remove.xml").write_text(REMOVE)


@pytest.fixture
def kit(tmp_path) -> TestKit:
    tests = tmp_path / "testkit" / "tests"
    tests.mkdir(parents=True)
    _write_test(tests, "T200_expired", "reg_xua", {"": _query_step("query", "Fault")})
    _write_test(tests, "T201", "reg_xua", {"": _query_step("query", "Success")})
    _write_test(tests, "T202_secondrole", "rep_xua", {
        "remove": """<TestStep id="remove"><ExpectedStatus>Fault</ExpectedStatus>
          <RdTransaction><MetadataFile>remove.xml</MetadataFile></RdTransaction></TestStep>""",
        "eval": _query_step("query", "Success")})
    _write_test(tests, "T203", "reg", {"": _query_step("query", "Success")})
    _write_test(tests, "T204_nosuchuser", "reg_xua", {"": _query_step("query", "Fault")})
    _write_test(tests, "T205_expired", "reg_xua", {"": """<TestStep id="nothing"><NullTransaction/></TestStep>"""})
    return TestKit(str(tmp_path))


@pytest.fixture(scope="module")
def sts(tmp_path_factory):
    key, cert, _ = issue.signing_pair(str(tmp_path_factory.mktemp("sts")))
    server = sts_server.start(issue.Issuer(key, cert))
    yield f"http://127.0.0.1:{server.port}{sts_server.PATH}", cert
    server.stop()


@dataclass
class Seen:
    action: str
    security: etree._Element | None

    @property
    def user(self) -> str | None:
        if self.security is None:
            return None
        return self.security.findtext("saml2:Assertion/saml2:Subject/saml2:NameID", namespaces=NS)


class FakeXuaService:
    """Registry and repository at one address, recording what each request carried."""

    def __init__(self):
        self.seen: list[Seen] = []
        self.url = ""

    def __call__(self, body: bytes) -> Answer:
        env = etree.fromstring(body)
        action = env.findtext("s:Header/wsa:Action", namespaces=NS)
        seen = Seen(action, env.find("s:Header/wsse:Security", namespaces=NS))
        self.seen.append(seen)
        if seen.security is not None and seen.user not in ACCEPTED_USERS:
            refusal = SoapFault("the assertion is refused", subcode="wsse:FailedAuthentication")
            return Answer(soap.build_fault(soap.SOAP12, refusal), f"{soap.CONTENT_TYPE[soap.SOAP12]}; charset=UTF-8",
                          status=400)
        if action == C.ACTION_QUERY:
            found = etree.Element(C.q(C.NS_QUERY, "AdhocQueryResponse"), status=C.RESPONSE_SUCCESS)
            etree.SubElement(found, C.q(C.NS_RIM, "RegistryObjectList"))
            return soap_answer(found, C.response_action(C.ACTION_QUERY))
        return soap_answer(registry_response(), C.response_action(action))


@pytest.fixture
def service():
    recorder = FakeXuaService()
    with FakeHost(recorder) as host:
        recorder.url = host.url
        yield recorder


def _run(kit: TestKit, service: FakeXuaService, sts: StsConfig | None, tests: list[str]) -> dict[str, TestResult]:
    endpoints = Endpoints(service.url, service.url, None, timeout=10)
    run = Runner(kit, RunConfig(endpoints, None, kit.source_id, sts=sts)).run(tests)
    assert not run.internal_errors, [t.reason for t in run.internal_errors]
    return {t.id: t for t in run.tests}


def test_each_soap_step_carries_the_assertion_of_its_tests_variant(kit, service, sts):
    url, cert = sts
    results = _run(kit, service, StsConfig(url), ["T200_expired", "T201", "T202_secondrole", "T203"])
    assert all(t.status == PASSED for t in results.values()), {t.id: t.reason for t in results.values()}
    # In order: 11966_expired-like query, a suffixless XUA test, the repository variant then the query
    # to the registry that supports it (the default user's), and a test outside the XUA collections.
    assert [(s.action, s.user) for s in service.seen] == [
        (C.ACTION_QUERY, "expired"), (C.ACTION_QUERY, "valid"),
        (C.ACTION_REMOVE_DOCUMENTS, "secondrole"), (C.ACTION_QUERY, "valid"), (C.ACTION_QUERY, None)]
    header = service.seen[0].security
    assert header.get(f"{{{C.NS_SOAP12}}}mustUnderstand") == "true"
    # Copied into the envelope, the STS's signature still holds.
    from signxml import XMLVerifier

    with open(cert, "rb") as fh:
        XMLVerifier().verify(header.find("saml2:Assertion", NS), x509_cert=fh.read().decode())
    step = results["T200_expired"].sections[0].steps[0]
    assert "wsse:Security" in step.request and "expired" in step.request
    assert any("STS user expired" in n for n in step.notes)
    supporting = results["T202_secondrole"].sections[1].steps[0]
    assert any("STS user valid" in n and "supports the repository" in n for n in supporting.notes)


def test_every_test_when_asked(kit, service, sts):
    _run(kit, service, StsConfig(sts[0], user="withauthzconsent", every_test=True), ["T203"])
    assert [s.user for s in service.seen] == ["withauthzconsent"]


def test_an_unreachable_sts_fails_the_test_with_the_reason(kit, service):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    url = f"http://127.0.0.1:{closed}/sts"
    results = _run(kit, service, StsConfig(url, timeout=5), ["T200_expired", "T202_secondrole", "T205_expired"])
    failed = results["T200_expired"]
    assert failed.status == FAILED
    assert f"no SAML assertion for STS user 'expired' from {url}" in failed.reason
    assert "Connection" in failed.reason and "the step was not sent" in failed.reason
    both = results["T202_secondrole"]
    assert both.status == FAILED and "'secondrole'" in both.sections[0].steps[0].problems[0]
    assert "'valid'" in both.sections[1].steps[0].problems[0]
    assert service.seen == []  # nothing went to the service without its assertion
    # A test with no SOAP step needs no assertion, so the STS being down does not fail it.
    assert results["T205_expired"].status == PASSED


def test_a_refused_user_fails_the_test_with_the_sts_answer(kit, service, sts):
    results = _run(kit, service, StsConfig(sts[0]), ["T204_nosuchuser"])
    t = results["T204_nosuchuser"]
    assert t.status == FAILED and "wst:FailedAuthentication" in t.reason and "'nosuchuser'" in t.reason
    assert t.sections[0].steps[0].status == FAILED and service.seen == []


def test_without_an_sts_the_xua_tests_are_skipped(kit, service):
    results = _run(kit, service, None, ["T200_expired", "T203"])
    assert results["T200_expired"].status == SKIPPED and "--sts" in results["T200_expired"].reason
    assert results["T203"].status == PASSED and service.seen[0].security is None


def test_which_user_each_step_speaks_as(kit):
    sts = StsConfig("http://sts.invalid/sts", user="valid")
    assert user_for(kit.test("T200_expired"), sts) == "expired"
    assert user_for(kit.test("T201"), sts) == "valid"
    assert user_for(kit.test("T202_secondrole"), sts) == "secondrole"
    assert user_for(kit.test("T202_secondrole"), sts, supporting=True) == "valid"
    assert user_for(kit.test("T203"), sts) is None
    assert user_for(kit.test("T203"), StsConfig("http://sts.invalid/sts", every_test=True)) == "valid"
    assert user_for(kit.test("T200_expired"), None) is None
    assert orchestration.is_xua(kit.test("T201")) and not orchestration.is_xua(kit.test("T203"))


def test_cli_options(kit, tmp_path, capsys):
    parsed = _parse(["run", "--testkit", kit.root, "--registry", "http://r.invalid/x", "--sts", "http://s.invalid/sts",
                     "--sts-user", "withauthzconsent", "--sts-password", "pw", "--sts-audience", "none"])
    config = cli.sts_config(parsed)
    assert (config.url, config.user, config.password, config.audience, config.every_test) == (
        "http://s.invalid/sts", "withauthzconsent", "pw", None, False)
    defaults = cli.sts_config(_parse(["run", "--testkit", kit.root, "--sts", "http://s.invalid/sts"]))
    assert (defaults.user, defaults.password, defaults.audience) == ("valid", "connectathon", issue.DEFAULT_AUDIENCE)
    assert cli.sts_config(_parse(["run", "--testkit", kit.root])) is None
    assert cli.run_command(_parse(["run", "--testkit", kit.root, "--registry", "http://r.invalid/x",
                                   "--sts-all"])) == 2
    assert "--sts-all needs --sts" in capsys.readouterr().err


def test_cli_run_with_an_sts(kit, service, sts, tmp_path):
    out = io.StringIO()
    args = _parse(["run", "--testkit", kit.root, "--registry", service.url, "--repository", service.url,
                   "--sts", sts[0], "--test", "T200_expired", "T201", "--report-dir", str(tmp_path / "rep")])
    run, code = cli.execute(args, out)
    assert code == 0 and out.getvalue().rstrip().endswith("conformance: 2 passed, 0 failed, 0 skipped")
    assert [s.user for s in service.seen] == ["expired", "valid"]
    assert run.target["STS"].startswith(sts[0])


def test_ci_report_names_the_server_of_each_setup_test():
    first = RunResult(tests=[TestResult("15817", "Feed", setup=True), TestResult("11990")], notes=["a"],
                      target={"registry": "http://one"})
    second = RunResult(tests=[TestResult("15817", "Feed", setup=True), TestResult("11990_expired")], notes=["b"],
                       target={"registry": "http://two"})
    merged = ci.merge([("", first), ("XUA server", second)])
    assert [(t.id, t.title) for t in merged.tests] == [
        ("15817", "Feed"), ("11990", ""), ("15817", "Feed (XUA server)"), ("11990_expired", "")]
    assert merged.notes == ["a", "XUA server: b"]
    assert merged.target == {"registry": "http://one", "XUA server: registry": "http://two"}


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    cli.add_arguments(sub.add_parser("run"))
    return parser.parse_args(argv)
