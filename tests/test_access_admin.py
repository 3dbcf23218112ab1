"""`xds access` and the administration interface of the patients' access states (registry/admin.py), over
real HTTP on 127.0.0.1: every action through the command line on a server with security = none (the
loopback caller is the administrator), then who may change what over mutual TLS on a security = xua
server (an administrator's certificate, another certificate, a professional's assertion), and the
refusals of bad requests. After every refusal an administrator's GET shows that nothing changed, and
every refusal is paired with the allowed caller succeeding."""
from __future__ import annotations

import base64
import http.client
import json
from urllib.parse import quote

import pytest

from node import access as A
from node.cli import main
from node.server import Services
from tests.certs import Authority
from xds.security import issue as I
from xds.settings import Settings
from xds.tls import TlsFiles, client_context

ROOT = "1.2.250.1.213.1.4.10"
ADMIN_DN = "O=XDS test,CN=admin"
CLERK_DN = "O=XDS test,CN=clerk"   # a system known by its certificate (xua_systems), no administrator
# A certificate of admin_subjects calls without an assertion as itself without being a system (it passes
# no one's assertion on): the servers below list it nowhere else. test_admin_subjects_alone_call_without_assertion.
ADMIN_AS_SYSTEM: list[str] = []
DOCTOR = "899700012345"     # the professional of the assertions (their NameID)
COLLEAGUE = "899700054321"  # another professional


def pid(n: str) -> str:
    return f"ACC{n}^^^&{ROOT}&ISO"


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["access", *args])
    out, err = capsys.readouterr()
    return code, out, err


# --- security = none: every action through the command line ------------------------------------------

@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    services = Services(Settings(port=0, data=str(tmp_path_factory.mktemp("access-none")), check_patients=False,
                                 settle_interval=0)).start()
    yield services
    services.stop()


def known(server, patient: str) -> str:
    server.registry.store.add_patient(patient)
    return patient


def show(capsys, server, patient, *credentials) -> dict:
    code, out, err = cli(capsys, "show", patient, "--json", "--url", server.url, *credentials)
    assert code == 0, err
    return json.loads(out)


def test_every_action_changes_the_state_that_show_prints(capsys, open_server):
    p = known(open_server, pid("1"))
    url = ("--url", open_server.url)
    empty = {"patient": p, "closed": False, "minor": False, "treating_doctor": None, "authorised": [],
             "blocked": [], "representatives": [], "objections": []}
    assert show(capsys, open_server, p) == empty

    code, out, err = cli(capsys, "grant", p, DOCTOR, "--since", "2024-01-01", "--until", "2030-06-30T12:00:00", *url)
    assert code == 0, err
    assert out.strip() == f"authorised {DOCTOR} for {p} (since 2024-01-01T00:00:00Z, until 2030-06-30T12:00:00Z)"
    code, out, err = cli(capsys, "grant", p, COLLEAGUE, *url)
    assert code == 0 and out.strip() == f"authorised {COLLEAGUE} for {p}", err
    assert show(capsys, open_server, p)["authorised"] == [
        {"person": DOCTOR, "since": "2024-01-01T00:00:00Z", "until": "2030-06-30T12:00:00Z"},
        {"person": COLLEAGUE, "since": None, "until": None}]

    code, out, err = cli(capsys, "revoke", p, COLLEAGUE, *url)
    assert code == 0 and COLLEAGUE in out, err
    assert [g["person"] for g in show(capsys, open_server, p)["authorised"]] == [DOCTOR]

    # Blocking withdraws the authorisation; unblocking does not give it back.
    code, out, err = cli(capsys, "block", p, DOCTOR, *url)
    assert code == 0 and out.strip() == f"blocked {DOCTOR} from {p}", err
    state = show(capsys, open_server, p)
    assert state["blocked"] == [DOCTOR] and state["authorised"] == []
    code, out, err = cli(capsys, "unblock", p, DOCTOR, *url)
    assert code == 0, err
    state = show(capsys, open_server, p)
    assert state["blocked"] == [] and state["authorised"] == []

    code, out, err = cli(capsys, "treating-doctor", p, DOCTOR, *url)
    assert code == 0 and out.strip() == f"treating doctor of {p}: {DOCTOR}", err
    assert show(capsys, open_server, p)["treating_doctor"] == DOCTOR
    code, out, err = cli(capsys, "treating-doctor", p, "--none", *url)
    assert code == 0 and out.strip() == f"{p} has no treating doctor", err
    assert show(capsys, open_server, p)["treating_doctor"] is None

    for objection, name in (("break-the-glass", "break_glass"), ("centre-15", "centre_15")):
        code, out, err = cli(capsys, "object", p, objection, *url)
        assert code == 0 and out.strip() == f"{p} objects to {objection}", err
        assert name in show(capsys, open_server, p)["objections"]
    assert show(capsys, open_server, p)["objections"] == ["break_glass", "centre_15"]
    code, out, err = cli(capsys, "withdraw", p, "break-the-glass", *url)
    assert code == 0 and out.strip() == f"{p} no longer objects to break-the-glass", err
    assert show(capsys, open_server, p)["objections"] == ["centre_15"]

    code, out, err = cli(capsys, "representative", p, "PARENT-1", *url)
    assert code == 0 and out.strip() == f"PARENT-1 represents {p}", err
    code, out, err = cli(capsys, "representative", p, "PARENT-2", *url)
    assert code == 0, err
    assert show(capsys, open_server, p)["representatives"] == ["PARENT-1", "PARENT-2"]
    code, out, err = cli(capsys, "unrepresent", p, "PARENT-1", *url)
    assert code == 0 and out.strip() == f"PARENT-1 no longer represents {p}", err
    assert show(capsys, open_server, p)["representatives"] == ["PARENT-2"]

    for flag, on, off in (("closed", f"the record of {p} is closed", f"the record of {p} is open"),
                          ("minor", f"{p} is a minor", f"{p} is not a minor")):
        code, out, err = cli(capsys, "set", p, flag, "on", *url)
        assert code == 0 and out.strip() == on, err
        assert show(capsys, open_server, p)[flag] is True
        code, out, err = cli(capsys, "set", p, flag, "off", *url)
        assert code == 0 and out.strip() == off, err
        assert show(capsys, open_server, p)[flag] is False


def test_show_prints_a_readable_summary(capsys, open_server):
    p = known(open_server, pid("2"))
    url = ("--url", open_server.url)
    for args in (("grant", p, DOCTOR, "--until", "2031-01-01"), ("grant", p, COLLEAGUE), ("block", p, "899700099999"),
                 ("treating-doctor", p, COLLEAGUE), ("object", p, "centre-15"), ("set", p, "minor", "on"),
                 ("representative", p, "PARENT-1")):
        assert cli(capsys, *args, *url)[0] == 0
    code, out, err = cli(capsys, "show", p, *url)
    assert code == 0, err
    assert out.splitlines() == [
        f"patient          {p}",
        "record           open",
        "minor            yes",
        f"treating doctor  {COLLEAGUE}",
        f"authorised       {DOCTOR} (until 2031-01-01T00:00:00Z)",
        f"                 {COLLEAGUE}",
        "blocked          899700099999",
        "representatives  PARENT-1",
        "objections       centre-15",
    ]


def test_the_url_may_name_the_interface_and_the_patient_id_is_encoded(capsys, open_server):
    # ^, &, / and spaces in the id travel URL-encoded and come back as sent.
    p = known(open_server, "ACC 3/x^^^&1.2.250.1.213.1.4.10&ISO")
    code, out, err = cli(capsys, "grant", p, DOCTOR, "--url", open_server.url + A.PREFIX + "/")
    assert code == 0, err
    assert show(capsys, open_server, p)["authorised"][0]["person"] == DOCTOR
    assert A.access_url("http://h:1", "a^b&c/d") == "http://h:1/admin/access/a%5Eb%26c%2Fd"
    assert A.access_url("https://h:1/proxy/", "p") == "https://h:1/proxy/admin/access/p"


def test_an_unknown_patient_is_exit_1_with_the_servers_message(capsys, open_server):
    code, out, err = cli(capsys, "grant", pid("unknown"), DOCTOR, "--url", open_server.url)
    assert code == 1 and out == ""
    assert "HTTP 404" in err and "knows no active patient" in err
    code, out, err = cli(capsys, "show", pid("unknown"), "--url", open_server.url)
    assert code == 1 and "HTTP 404" in err  # and the refused grant left no state behind
    code, out, err = cli(capsys, "grant", known(open_server, pid("known")), DOCTOR, "--url", open_server.url)
    assert code == 0, err


def test_a_bad_time_is_the_servers_400_and_changes_nothing(capsys, open_server):
    p = known(open_server, pid("4"))
    code, out, err = cli(capsys, "grant", p, DOCTOR, "--since", "yesterday", "--url", open_server.url)
    assert code == 1 and out == ""
    assert "HTTP 400" in err and "since must be an ISO 8601 date" in err
    assert show(capsys, open_server, p)["authorised"] == []
    code, out, err = cli(capsys, "grant", p, DOCTOR, "--since", "2024-02-01", "--url", open_server.url)
    assert code == 0, err
    assert show(capsys, open_server, p)["authorised"][0]["since"] == "2024-02-01T00:00:00Z"


def test_usage_errors_are_exit_2(capsys, open_server):
    p = known(open_server, pid("5"))
    url = ("--url", open_server.url)
    for args in (("treating-doctor", p), ("treating-doctor", p, DOCTOR, "--none"), ("object", p, "everything"),
                 ("set", p, "closed", "maybe"), ("set", p, "deceased", "on"), ("grant", p), ("frobnicate", p)):
        with pytest.raises(SystemExit) as exc:
            cli(capsys, *args, *url)
        assert exc.value.code == 2, args
    code, out, err = cli(capsys, "show", p, "--url", "ftp://nowhere")
    assert code == 2 and "http" in err
    code, out, err = cli(capsys, "show", p, "--sts-user", "valid", *url)
    assert code == 2 and "--sts" in err
    assert show(capsys, open_server, p)["authorised"] == []


def test_a_server_that_cannot_be_reached_is_exit_1(capsys, open_server):
    code, out, err = cli(capsys, "show", pid("6"), "--url", "http://127.0.0.1:1", "--timeout", "5")
    assert code == 1 and "127.0.0.1:1" in err


# --- raw HTTP: what the client sends, and the server's refusals of bad requests -----------------------

def request(server, method: str, patient: str | None, body=None, headers=None, ssl_context=None,
            raw_path: str | None = None) -> tuple[int, dict | None]:
    host, port = "127.0.0.1", server.port
    if server.url.startswith("https"):
        conn = http.client.HTTPSConnection(host, port, timeout=30, context=ssl_context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=30)
    path = raw_path if raw_path is not None else f"{A.PREFIX}/{quote(patient, safe='')}"
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, None


def test_an_authorization_header_on_a_security_none_server_is_400_and_changes_nothing(capsys, open_server):
    p = known(open_server, pid("7"))
    before = show(capsys, open_server, p)
    status, data = request(open_server, "POST", p, {"action": "grant", "person": DOCTOR},
                           {"Authorization": "Bearer " + base64.urlsafe_b64encode(b"<a/>").decode().rstrip("=")})
    assert status == 400 and "security = none" in data["error"]
    status, data = request(open_server, "GET", p, headers={"Authorization": "Basic eDp5"})
    assert status == 400
    assert show(capsys, open_server, p) == before
    # The same request without the header is the loopback administrator's.
    status, data = request(open_server, "POST", p, {"action": "grant", "person": DOCTOR})
    assert status == 200 and data["authorised"][0]["person"] == DOCTOR


@pytest.mark.parametrize("body,words", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b"", "POST a JSON object"),
    ({"action": "promote", "person": DOCTOR}, "action must be one of"),
    ({"person": DOCTOR}, "action must be one of"),
    ({"action": "grant"}, "person must be"),
    ({"action": "grant", "person": "  "}, "person must be"),
    ({"action": "grant", "person": "x" * 257}, "person must be"),
    ({"action": "grant", "person": DOCTOR, "since": "next tuesday"}, "since must be"),
    ({"action": "grant", "person": DOCTOR, "until": [2024]}, "until must be"),
    ({"action": "treating-doctor", "person": 12}, "treating doctor"),
    ({"action": "object", "objection": "everything"}, "objection must be"),
    ({"action": "withdraw"}, "objection must be"),
    ({"action": "set", "flag": "closed", "value": "yes"}, "set takes flag"),
    ({"action": "set", "flag": "deceased", "value": True}, "set takes flag"),
])
def test_a_bad_request_is_400_and_changes_nothing(capsys, open_server, body, words):
    p = known(open_server, pid("8"))
    before = show(capsys, open_server, p)
    status, data = request(open_server, "POST", p, body)
    assert status == 400 and words in data["error"], data
    assert show(capsys, open_server, p) == before
    status, data = request(open_server, "POST", p, {"action": "block", "person": DOCTOR})
    assert status == 200 and data["blocked"] == [DOCTOR]


@pytest.mark.parametrize("case,body", [
    ("epoch-year-31690708", b'{"action": "grant", "person": "X", "since": 1e15}'),
    ("epoch-overflow", b'{"action": "grant", "person": "X", "until": 1e20}'),
    ("nan", b'{"action": "grant", "person": "X", "until": NaN}'),
    ("iso-year-10000", b'{"action": "grant", "person": "X", "since": "9999-12-31T23:59:59-12:00"}'),
    ("long-doctor", json.dumps({"action": "treating-doctor", "person": "D" * 257}).encode()),
])
def test_a_value_the_state_cannot_hold_is_400_and_changes_nothing(capsys, open_server, case, body):
    p = known(open_server, pid(f"10-{case}"))  # one patient each: a stored bad time breaks the patient's state
    before = show(capsys, open_server, p)
    status, data = request(open_server, "POST", p, body)
    assert status == 400, (status, data)
    assert show(capsys, open_server, p) == before
    status, data = request(open_server, "POST", p, {"action": "grant", "person": "X", "until": "9999-12-31"})
    assert status == 200 and data["authorised"][0]["until"] == "9999-12-31T00:00:00Z"


def test_the_well_formed_request_beside_the_bad_ones_succeeds(open_server):
    p = known(open_server, pid("9"))
    status, data = request(open_server, "POST", p, {"action": "grant", "person": DOCTOR, "since": 1704067200,
                                                    "until": "2030-01-01T00:00:00Z"})
    assert status == 200
    assert data["authorised"] == [{"person": DOCTOR, "since": "2024-01-01T00:00:00Z",
                                   "until": "2030-01-01T00:00:00Z"}]


def test_a_patient_id_with_a_percent_sign_or_beyond_ascii_is_the_one_sent(capsys, open_server):
    # The id is URL-encoded once (UTF-8) by the client; the server must decode it once.
    p, other = known(open_server, f"ACC%41^^^&{ROOT}&ISO"), known(open_server, f"ACCA^^^&{ROOT}&ISO")
    code, out, err = cli(capsys, "block", p, DOCTOR, "--url", open_server.url)
    assert code == 0, err
    assert show(capsys, open_server, other)["blocked"] == []  # not another patient's state
    assert show(capsys, open_server, p)["blocked"] == [DOCTOR]
    p = known(open_server, f"ACCé^^^&{ROOT}&ISO")
    code, out, err = cli(capsys, "block", p, DOCTOR, "--url", open_server.url)
    assert code == 0, err
    assert show(capsys, open_server, p)["blocked"] == [DOCTOR]


# --- mutual TLS, security = xua: who may change what -----------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("access-pki")
    ca = Authority(str(folder))
    key, cert, _ = I.signing_pair(str(folder / "sts"))
    return {"ca": ca.path, "server": ca.issue("registry"), "admin": ca.issue("admin"), "clerk": ca.issue("clerk"),
            "stranger": ca.issue("stranger"), "doctor": ca.issue("doctor"), "sts": I.Issuer(key, cert),
            "sts_cert": cert}


def xua_services(tmp, pki, **kw) -> Services:
    cert, key = pki["server"]
    return Services(Settings(port=0, data=str(tmp), check_patients=False, settle_interval=0, security="xua",
                             xua_trust=[pki["sts_cert"]], xua_audiences=[I.DEFAULT_AUDIENCE], tls_cert=cert,
                             tls_key=key, tls_ca=pki["ca"], admin_subjects=[ADMIN_DN], **kw)).start()


@pytest.fixture(scope="module")
def xua_server(tmp_path_factory, pki):
    services = xua_services(tmp_path_factory.mktemp("access-xua"), pki, xua_systems=[CLERK_DN, *ADMIN_AS_SYSTEM])
    yield services
    services.stop()


def tls(pki, who: str) -> tuple[str, ...]:
    cert, key = pki[who]
    return ("--tls-cert", cert, "--tls-key", key, "--tls-ca", pki["ca"])


def context(pki, who: str):
    cert, key = pki[who]
    return client_context(TlsFiles(cert, key, pki["ca"]))


def assertion(tmp_path, pki, subject: str = DOCTOR) -> str:
    """A fresh assertion file for the professional `subject`, one per call (servers may refuse replays)."""
    path = tmp_path / f"assertion-{subject}.xml"
    path.write_bytes(I.serialize(pki["sts"].issue("valid", subject=subject)))
    return str(path)


def admin_state(xua_server, pki, patient) -> dict:
    status, data = request(xua_server, "GET", patient, ssl_context=context(pki, "admin"))
    assert status == 200, data
    return data


def test_the_admin_certificate_manages_any_patient(capsys, xua_server, pki):
    for n in ("x1", "x2"):
        p = known(xua_server, pid(n))
        code, out, err = cli(capsys, "grant", p, COLLEAGUE, "--url", xua_server.url, *tls(pki, "admin"))
        assert code == 0, err
        code, out, err = cli(capsys, "set", p, "closed", "on", "--url", xua_server.url, *tls(pki, "admin"))
        assert code == 0, err
        state = show(capsys, xua_server, p, *tls(pki, "admin"))
        assert state["closed"] is True and state["authorised"][0]["person"] == COLLEAGUE


def test_admin_subjects_alone_call_without_assertion(capsys, tmp_path, pki):
    services = xua_services(tmp_path / "xua-admin-only", pki)
    try:
        p = known(services, pid("x0"))
        code, out, err = cli(capsys, "grant", p, COLLEAGUE, "--url", services.url, *tls(pki, "admin"))
        assert code == 0, err
        assert show(capsys, services, p, *tls(pki, "admin"))["authorised"][0]["person"] == COLLEAGUE
    finally:
        services.stop()


def test_another_certificate_is_refused_and_nothing_changes(capsys, xua_server, pki):
    p = known(xua_server, pid("x3"))
    before = admin_state(xua_server, pki, p)
    # A system known by its certificate is authenticated, and denied; an unknown one is not authenticated.
    for who, status in (("clerk", 403), ("stranger", 401)):
        for args in (("grant", p, COLLEAGUE), ("block", p, DOCTOR), ("set", p, "closed", "on"), ("show", p)):
            code, out, err = cli(capsys, *args, "--url", xua_server.url, *tls(pki, who))
            assert code == 1 and out == "" and f"HTTP {status}" in err, (who, args, err)
        got, data = request(xua_server, "POST", p, {"action": "grant", "person": COLLEAGUE},
                            ssl_context=context(pki, who))
        assert got == status and data["error"]
    assert admin_state(xua_server, pki, p) == before
    # The administrator's certificate, the same request.
    code, out, err = cli(capsys, "grant", p, COLLEAGUE, "--url", xua_server.url, *tls(pki, "admin"))
    assert code == 0, err
    assert admin_state(xua_server, pki, p)["authorised"][0]["person"] == COLLEAGUE


def test_a_professional_grants_and_revokes_only_themselves(capsys, xua_server, pki, tmp_path):
    p = known(xua_server, pid("x4"))
    url = ("--url", xua_server.url, *tls(pki, "doctor"))
    before = admin_state(xua_server, pki, p)
    code, out, err = cli(capsys, "grant", p, COLLEAGUE, "--assertion", assertion(tmp_path, pki), *url)
    assert code == 1 and "HTTP 403" in err and "access denied" in err
    assert admin_state(xua_server, pki, p)["authorised"] == []
    for args in (("block", p, COLLEAGUE), ("treating-doctor", p, DOCTOR), ("set", p, "closed", "on"),
                 ("object", p, "centre-15"), ("show", p)):
        code, out, err = cli(capsys, *args, "--assertion", assertion(tmp_path, pki), *url)
        assert code == 1 and "HTTP 403" in err, args
    assert admin_state(xua_server, pki, p) == before

    code, out, err = cli(capsys, "grant", p, DOCTOR, "--until", "2031-01-01", "--assertion",
                         assertion(tmp_path, pki), *url)
    assert code == 0, err
    assert out.strip() == f"authorised {DOCTOR} for {p} (until 2031-01-01T00:00:00Z)"
    assert admin_state(xua_server, pki, p)["authorised"] == [{"person": DOCTOR, "since": None,
                                                              "until": "2031-01-01T00:00:00Z"}]
    code, out, err = cli(capsys, "revoke", p, DOCTOR, "--assertion", assertion(tmp_path, pki), *url)
    assert code == 0, err
    assert admin_state(xua_server, pki, p)["authorised"] == []


def test_a_blocked_professional_may_not_grant_themselves(capsys, xua_server, pki, tmp_path):
    p = known(xua_server, pid("x5"))
    url = ("--url", xua_server.url, *tls(pki, "doctor"))
    assert cli(capsys, "block", p, DOCTOR, "--url", xua_server.url, *tls(pki, "admin"))[0] == 0
    before = admin_state(xua_server, pki, p)
    code, out, err = cli(capsys, "grant", p, DOCTOR, "--assertion", assertion(tmp_path, pki), *url)
    assert code == 1 and "HTTP 403" in err
    assert admin_state(xua_server, pki, p) == before
    # Another professional, not blocked, may.
    code, out, err = cli(capsys, "grant", p, COLLEAGUE, "--assertion", assertion(tmp_path, pki, COLLEAGUE), *url)
    assert code == 0, err
    state = admin_state(xua_server, pki, p)
    assert state["blocked"] == [DOCTOR] and [g["person"] for g in state["authorised"]] == [COLLEAGUE]


def test_the_assertion_travels_as_a_bearer_token_and_a_bad_one_is_401(xua_server, pki, tmp_path):
    p = known(xua_server, pid("x6"))
    before = admin_state(xua_server, pki, p)
    token = I.serialize(pki["sts"].issue("valid", subject=DOCTOR))
    assert "=" not in A.bearer(token) and A.bearer(token).startswith("Bearer ")
    forged = token.replace(DOCTOR.encode(), COLLEAGUE.encode())
    for header in (A.bearer(forged), "Bearer %%%", "Bearer " + base64.urlsafe_b64encode(b"<x").decode(),
                   "Basic eDp5"):
        status, data = request(xua_server, "POST", p, {"action": "grant", "person": COLLEAGUE},
                               {"Authorization": header}, ssl_context=context(pki, "doctor"))
        assert status == 401 and data["error"], header
    assert admin_state(xua_server, pki, p) == before
    status, data = request(xua_server, "POST", p, {"action": "grant", "person": DOCTOR},
                           {"Authorization": A.bearer(token)}, ssl_context=context(pki, "doctor"))
    assert status == 200 and data["authorised"][0]["person"] == DOCTOR


def test_an_unknown_patient_is_404_for_the_administrator(capsys, xua_server, pki):
    code, out, err = cli(capsys, "grant", pid("x-unknown"), COLLEAGUE, "--url", xua_server.url, *tls(pki, "admin"))
    assert code == 1 and "HTTP 404" in err
    status, data = request(xua_server, "GET", pid("x-unknown"), ssl_context=context(pki, "admin"))
    assert status == 404 and "knows no active patient" in data["error"]
    p = known(xua_server, pid("x7"))
    assert cli(capsys, "grant", p, COLLEAGUE, "--url", xua_server.url, *tls(pki, "admin"))[0] == 0


def test_bad_requests_over_tls_are_400_and_change_nothing(xua_server, pki):
    p = known(xua_server, pid("x8"))
    before = admin_state(xua_server, pki, p)
    for body in (b"{", {"action": "nope"}, {"action": "grant", "person": COLLEAGUE, "until": "soon"}):
        status, data = request(xua_server, "POST", p, body, ssl_context=context(pki, "admin"))
        assert status == 400 and data["error"], body
    assert admin_state(xua_server, pki, p) == before
    status, data = request(xua_server, "POST", p, {"action": "grant", "person": COLLEAGUE, "until": "2030-01-01"},
                           ssl_context=context(pki, "admin"))
    assert status == 200 and data["authorised"][0]["until"] == "2030-01-01T00:00:00Z"
