"""`xds patient` talks to the server (/admin/patients, registry/admin_patients.py), never to its files: over real
HTTP on 127.0.0.1, from a folder that holds no database, with options before or after the action. The ids it
takes follow the server's profile and patients are kept by CX.1 + CX.4; only an administrator may read or
change them, a refused or bad request stores nothing, and each change leaves a patient record audit event.
No command but `xds serve` and `xds db upgrade` creates a database."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys

import pytest

from node.server import Services
from tests.certs import Authority
from xds.audit import records as R
from xds.settings import Settings
from xds.tls import TlsFiles, client_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATRIX = os.path.join(ROOT, "tests", "fixtures", "policy", "habilitations-unofficial.toml")
INS = "207058575627097^^^&1.2.250.1.213.1.4.10&ISO"
ADMIN_DN = "O=XDS test,CN=admin"


def pid(n: str) -> str:
    return f"PAT{n}^^^&1.2.3.4.5&ISO"


def xds(cwd, *args, env=None):
    """The real command, in its own process, in a folder of the test's (no xds-data there)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("XDS_")}
    full.update(PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=full, timeout=60)


def ids(server) -> dict[str, tuple[bool, str | None]]:
    return {p: (active, merged) for p, active, merged in server.registry.store.list_patients()}


def patient_records(server) -> list[R.AuditEvent]:
    found = []
    for seq, stored, *_ in server.auditor.store.records(0, 100000):
        event = R.from_stored(stored, seq)
        if isinstance(event, R.AuditEvent) and event.transaction == R.PATIENT_IDS:
            found.append(event)
    return found


@pytest.fixture(scope="module")
def ihe(tmp_path_factory):
    services = Services(Settings(port=0, data=str(tmp_path_factory.mktemp("patients-ihe")), settle_interval=0)).start()
    yield services
    services.stop()


@pytest.fixture(scope="module")
def dmp(tmp_path_factory):
    services = Services(Settings(port=0, data=str(tmp_path_factory.mktemp("patients-dmp")), settle_interval=0,
                                 profile="dmp", habilitation_matrix=MATRIX)).start()
    yield services
    services.stop()


@pytest.fixture
def elsewhere(tmp_path):
    """A folder with nothing in it: the command must leave it so."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_add_list_show_and_merge_through_the_server(ihe, elsewhere):
    a, b = pid("1"), pid("2")
    done = xds(elsewhere, "patient", "add", a, b, "--url", ihe.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"added {a}", f"added {b}"]
    assert ids(ihe)[a] == (True, None) and ids(ihe)[b] == (True, None)
    merged = xds(elsewhere, "patient", "merge", b, a, "--url", ihe.url)
    assert merged.returncode == 0 and merged.stdout.strip() == f"merged {b} into {a}", merged.stderr
    assert ids(ihe)[b] == (False, a)
    listed = xds(elsewhere, "patient", "list", "--url", ihe.url)
    assert listed.returncode == 0, listed.stderr
    assert a in listed.stdout.splitlines() and f"{b}  (merged into {a})" in listed.stdout.splitlines()
    shown = xds(elsewhere, "patient", "show", b, "--json", "--url", ihe.url)
    assert json.loads(shown.stdout) == {"id": b, "active": False, "merged_into": a}
    unknown = xds(elsewhere, "patient", "show", pid("never"), "--url", ihe.url)
    assert unknown.returncode == 1 and "knows no such patient" in unknown.stderr
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("order", ["before", "after", "between"])
def test_options_go_before_or_after_the_action(ihe, elsewhere, order):
    p = pid(f"order-{order}")
    args = {"before": ("patient", "--url", ihe.url, "--timeout", "20", "add", p),
            "after": ("patient", "add", p, "--url", ihe.url, "--timeout", "20"),
            "between": ("patient", "add", "--url", ihe.url, p)}[order]
    done = xds(elsewhere, *args)
    assert done.returncode == 0 and done.stdout.strip() == f"added {p}", done.stderr
    assert p in ids(ihe)


def test_dmp_ins_with_nh_and_date_is_one_patient(dmp, elsewhere):
    for form in (INS + "^NH^^20100907", INS + "^NH", INS):
        done = xds(elsewhere, "patient", "add", form, "--url", dmp.url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"added {form}"
    listed = xds(elsewhere, "patient", "list", "--url", dmp.url)
    assert listed.stdout.split() == [INS]


@pytest.mark.parametrize("bad,why", [(INS + "^PI", "CX.5 must be 'NH' or empty"),
                                     (INS + "^NH^^yesterday", "CX.7"),
                                     ("207058575627097", "CX.4")])
def test_dmp_refuses_other_forms_and_stores_nothing(dmp, elsewhere, bad, why):
    before = ids(dmp)
    good = "1" + INS[1:]   # a well-formed id sent with the bad one: a request with a bad id stores none
    done = xds(elsewhere, "patient", "add", good, bad, "--url", dmp.url)
    assert done.returncode == 1 and why in done.stderr and "profile dmp" in done.stderr
    assert "nothing was stored" in done.stderr
    assert ids(dmp) == before


def test_ihe_profile_keeps_the_plain_xds_form(ihe, elsewhere):
    before = ids(ihe)
    refused = xds(elsewhere, "patient", "add", INS + "^NH^^20100907", "--url", ihe.url)
    assert refused.returncode == 1 and "CX.7 must be empty" in refused.stderr
    merged = xds(elsewhere, "patient", "merge", "1^^^&1.2.3&ISO^^^x", INS, "--url", ihe.url)
    assert merged.returncode == 1 and "CX.7 must be empty" in merged.stderr
    assert ids(ihe) == before
    assert xds(elsewhere, "patient", "add", INS, "--url", ihe.url).returncode == 0


def test_each_change_and_refusal_leaves_a_patient_record_event(ihe, elsewhere):
    p, q = pid("audited-1"), pid("audited-2")
    before = len(patient_records(ihe))
    assert xds(elsewhere, "patient", "add", p, "--url", ihe.url).returncode == 0
    assert xds(elsewhere, "patient", "merge", p, q, "--url", ihe.url).returncode == 0
    assert xds(elsewhere, "patient", "add", "no-authority", "--url", ihe.url).returncode == 1
    new = patient_records(ihe)[before:]
    assert [(e.patient_id, e.hl7_trigger, e.action, e.outcome) for e in new] == [
        (p, "A01", "C", 0), (q, "A40", "U", 0), ("no-authority", "A01", "C", 4)]
    root = R.to_xml(new[0], "XDS-SERVER")
    ident = root.find("EventIdentification")
    assert ident.find("EventID").get("csd-code") == "110110"
    assert ident.find("EventTypeCode").get("csd-code") == R.PATIENT_IDS
    assert ident.find("EventTypeCode").get("codeSystemName") == R.OWN_CODES
    patients = [o.get("ParticipantObjectID") for o in root.findall("ParticipantObjectIdentification")
                if o.get("ParticipantObjectTypeCodeRole") == "1"]
    assert patients == [p]


def raw(server, method: str, path: str, body=None, ssl_context=None) -> tuple[int, dict]:
    if server.url.startswith("https"):
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=30, context=ssl_context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.parametrize("body,words", [
    (b"{not json", "not JSON"),
    (b"", "POST a JSON object"),
    ({"action": "create", "patients": ["x"]}, "action must be add or merge"),
    ({"action": "add", "patients": []}, "non-empty list"),
    ({"action": "add", "patients": "PAT^^^&1.2&ISO"}, "non-empty list"),
    ({"action": "add", "patients": [12]}, "non-empty string"),
    ({"action": "add", "patients": ["P" * 300]}, "at most 256"),
    ({"action": "merge", "subsumed": "A^^^&1.2&ISO"}, "non-empty string"),
    ({"action": "merge", "subsumed": "A^^^&1.2&ISO", "surviving": "A^^^&1.2&ISO"}, "two different ids"),
])
def test_a_bad_request_is_400_and_stores_nothing(ihe, body, words):
    before = ids(ihe)
    status, data = raw(ihe, "POST", "/admin/patients", body)
    assert status == 400 and words in data["error"], data
    assert ids(ihe) == before


def test_the_list_comes_in_pages(ihe, elsewhere):
    for n in range(5):
        ihe.registry.store.add_patient(pid(f"page-{n}"))
    everyone = sorted(ids(ihe))
    status, first = raw(ihe, "GET", "/admin/patients?limit=2")
    assert status == 200 and [p["id"] for p in first["patients"]] == everyone[:2] and first["next"] == everyone[1]
    status, second = raw(ihe, "GET", f"/admin/patients?limit=2&after={first['next'].replace('&', '%26')}")
    assert [p["id"] for p in second["patients"]] == everyone[2:4]
    status, data = raw(ihe, "GET", "/admin/patients?limit=0")
    assert status == 400 and "limit" in data["error"]
    listed = xds(elsewhere, "patient", "list", "--json", "--url", ihe.url)
    assert [p["id"] for p in json.loads(listed.stdout)] == everyone


# --- who may: mutual TLS ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("patients-pki")
    ca = Authority(str(folder))
    pki = {"ca": ca.path, "server": ca.issue("registry"), "admin": ca.issue("admin"), "clerk": ca.issue("clerk")}
    cert, key = pki["server"]
    services = Services(Settings(port=0, data=str(folder / "data"), settle_interval=0, tls_cert=cert, tls_key=key,
                                 tls_ca=pki["ca"], admin_subjects=[ADMIN_DN])).start()
    yield services, pki
    services.stop()


def test_only_an_administrator_reads_or_changes_the_ids(tls_server, elsewhere):
    server, pki = tls_server
    p = pid("tls-1")
    as_clerk = {"XDS_TLS_CERT": pki["clerk"][0], "XDS_TLS_KEY": pki["clerk"][1], "XDS_TLS_CA": pki["ca"]}
    refused = xds(elsewhere, "patient", "add", p, "--url", server.url, env=as_clerk)
    assert refused.returncode == 1 and "403" in refused.stderr and "only an administrator" in refused.stderr
    assert p not in ids(server)
    clerk = client_context(TlsFiles(*pki["clerk"], pki["ca"]))
    assert raw(server, "GET", "/admin/patients", ssl_context=clerk)[0] == 403
    assert raw(server, "GET", f"/admin/patients/{p}", ssl_context=clerk)[0] == 403
    assert [(e.outcome, e.tls_subject) for e in patient_records(server)][-1:] == [(4, "O=XDS test,CN=clerk")]
    # The administrator's certificate, the same command.
    done = xds(elsewhere, "patient", "add", p, "--url", server.url, "--tls-cert", pki["admin"][0],
               "--tls-key", pki["admin"][1], "--tls-ca", pki["ca"])
    assert done.returncode == 0, done.stderr
    assert ids(server)[p] == (True, None)
    assert list(elsewhere.iterdir()) == []


# --- no command but serve and db upgrade creates a database --------------------------------------------------

def test_commands_run_in_an_empty_folder_create_nothing(elsewhere):
    unreachable = xds(elsewhere, "patient", "list", "--url", "http://127.0.0.1:1", "--timeout", "5")
    assert unreachable.returncode == 1 and "127.0.0.1:1" in unreachable.stderr
    assert "is the registry running there?" in unreachable.stderr
    for args in (("repository", "list"), ("repository", "add", "1.2.3", "http://h/xds/repository")):
        done = xds(elsewhere, *args)
        assert done.returncode == 2 and "no registry database at" in done.stderr and "xds db upgrade" in done.stderr
    current = xds(elsewhere, "db", "current")
    assert current.returncode == 0 and "no registry database" in current.stdout
    assert list(elsewhere.iterdir()) == []
    made = xds(elsewhere, "db", "upgrade")
    assert made.returncode == 0, made.stderr
    assert (elsewhere / "xds-data" / "registry.db").is_file()
    assert xds(elsewhere, "repository", "list").returncode == 0
    # The parent's options may follow the subcommand too.
    other = elsewhere / "other"
    assert xds(elsewhere, "db", "upgrade", "--data", str(other)).returncode == 0
    added = xds(elsewhere, "repository", "add", "1.2.3.4", "http://h:8080/xds/repository", "--data", str(other))
    assert added.returncode == 0, added.stderr
    listed = xds(elsewhere, "repository", "--data", str(other), "list")
    assert listed.stdout.split("\t")[0] == "1.2.3.4"
