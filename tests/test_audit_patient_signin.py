"""The patient's access log behind the portal's OpenID Connect sign-in: a patient signed in at the
(development) provider reads their own log, and nothing of anyone else's, by URL or by cookie."""
from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import quote

import pytest

from node.dev_idp import DevIdp
from node.server import Services
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.settings import Settings
from tests.test_portal_signin import HASH, PASSWORD, Browser, hidden_fields

MARIE = "2750101000001^^^&1.2.250.1.213.1.4.10&ISO"
PAUL = "1800202000002^^^&1.2.250.1.213.1.4.10&ISO"
CLIENT, SECRET = "xds-registry", "portal-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signin")
    users = folder / "users.toml"
    users.write_text(f'[[user]]\nlogin = "marie"\npassword = "{HASH}"\nname = "Marie"\npatient_id = "{MARIE}"\n\n'
                     f'[[user]]\nlogin = "paul"\npassword = "{HASH}"\nname = "Paul"\npatient_id = "{PAUL}"\n')
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    idp = DevIdp(str(users), None, {CLIENT: (SECRET, [base + "/portal/callback"])})
    idp_server = idp.serve("127.0.0.1", 0)
    services = Services(Settings(port=port, data=str(folder / "data"), base_url=base, portal_issuer=idp.issuer,
                                 portal_client_id=CLIENT, portal_client_secret=SECRET,
                                 portal_secure_cookies=False)).start()
    for pid in (MARIE, PAUL):
        services.registry.store.add_patient(pid)
        reply = SoapClient(base + "/xds/registry").call(C.ACTION_REGISTER, builder.simple_submission(pid))
        assert reply.body.get("status") == C.RESPONSE_SUCCESS
    yield idp, services, base
    services.stop()
    idp_server.stop()


def sign_in(idp, base, login) -> Browser:
    browser = Browser()
    first = browser.get(base + "/portal/login")
    assert first.status == 302
    form = browser.get(first.location)
    posted = browser.post(idp.issuer + "/authorize", {**hidden_fields(form.text), "login": login,
                                                      "password": PASSWORD, "action": "signin"})
    assert posted.status == 302
    assert browser.get(posted.location).status in (302, 303)
    assert browser.cookie(base, "xds_session")
    return browser


def log_of(browser, base, query="") -> tuple[int, dict]:
    answer = browser.get(base + "/patient/log" + query)
    return answer.status, json.loads(answer.body)


def test_a_signed_in_patient_reads_their_own_log(world):
    idp, services, base = world
    marie = sign_in(idp, base, "marie")
    status, data = log_of(marie, base)
    assert status == 200 and data["patient"] == MARIE
    assert [e["action"] for e in data["entries"]] == ["submit"]
    paul = sign_in(idp, base, "paul")
    status, data = log_of(paul, base)
    assert status == 200 and data["patient"] == PAUL and len(data["entries"]) == 1


def test_another_patients_log_is_refused_by_url_and_by_cookie(world):
    idp, services, base = world
    marie = sign_in(idp, base, "marie")
    status, data = log_of(marie, base, "?patient=" + quote(PAUL, safe=""))
    assert status == 403 and "entries" not in data
    # A forged or stale cookie is no session: the caller is nobody's patient.
    forged = Browser()
    forged.jars[base.split("//")[1]] = {"xds_session": marie.cookie(base, "xds_session")[:-2] + "xx"}
    status, data = log_of(forged, base)
    assert status == 403 and "entries" not in data
    status, data = log_of(Browser(), base)
    assert status == 403 and "entries" not in data


def test_after_logout_the_cookie_opens_nothing(world):
    idp, services, base = world
    marie = sign_in(idp, base, "marie")
    token = marie.cookie(base, "xds_session")
    session = services.signin.session_of({"HTTP_COOKIE": f"xds_session={token}"})
    answer = marie.post(base + "/portal/logout", {"csrf": session.csrf_token}, headers={"Origin": base})
    assert answer.status in (302, 303)
    replay = Browser()
    replay.jars[base.split("//")[1]] = {"xds_session": token}
    status, data = log_of(replay, base)
    assert status == 403 and "entries" not in data


def test_the_portal_needs_its_registration_and_base_url(tmp_path):
    with pytest.raises(ValueError, match="portal_client_id"):
        Settings(data=str(tmp_path), portal_issuer="https://idp.example.org").validate()
    with pytest.raises(ValueError, match="base_url"):
        Settings(data=str(tmp_path), portal_issuer="https://idp.example.org", portal_client_id="c",
                 portal_client_secret="s").validate()
