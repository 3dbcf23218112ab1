"""node-soap (npm "soap", pinned in tests/node/package-lock.json) against a real server on 127.0.0.1.

tests/node/xds-client.js reads the server's standard WSDL and drives ITI-18, ITI-42 and ITI-43;
it prints JSON, asserted on here.  The package is installed once per session with ``npm ci`` into
tests/node/node_modules (git-ignored); .ci/run installs Debian's nodejs and npm when missing.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from xds import builder
from xds import constants as C
from tests.helpers import new_pid
from tests.test_interop_zeep import LONE, PDF, provide_with_xds_client, server  # noqa: F401

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "xds-client.js"


@pytest.fixture(scope="module")
def node_client():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are not on PATH (.ci/run installs Debian's nodejs and npm)")
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"npm ci failed in {NODE_DIR}:\n{done.stdout}\n{done.stderr}"
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["soap"]
    installed = json.loads((NODE_DIR / "node_modules" / "soap" / "package.json").read_text())["version"]
    assert installed == pinned

    def run(*args: str) -> dict:
        done = subprocess.run([node, str(SCRIPT), *args], cwd=NODE_DIR, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"node {SCRIPT.name} {' '.join(args)} failed:\n{done.stderr}"
        return json.loads(done.stdout)

    return run


def test_iti18_find_documents(server, node_client):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    docs = {builder.new_oid(): PDF, builder.new_oid(): LONE}
    provide_with_xds_client(server, pid, docs)
    answer = node_client("query", server.url + "/xds/registry?wsdl", pid)
    assert answer["status"] == C.RESPONSE_SUCCESS and answer["errors"] == []
    found = {e["uniqueId"]: e for e in answer["entries"]}
    assert set(found) == set(docs)
    for uid, data in docs.items():
        e = found[uid]
        assert e["patientId"] == pid and e["mimeType"] == "application/pdf"
        assert e["status"] == C.STATUS_APPROVED and e["id"].startswith("urn:uuid:")
        assert e["size"] == [str(len(data))] and e["hash"] == [hashlib.sha1(data).hexdigest()]
        assert e["repositoryUniqueId"] == [server.repository.config.repository_id]


def test_iti42_register(server, node_client):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    uid = builder.new_oid()
    answer = node_client("register", server.url + "/xds/registry?wsdl", pid, uid, "1.2.250.1.999.3.7")
    assert answer == {"status": C.RESPONSE_SUCCESS, "errors": []}
    (entry,) = node_client("query", server.url + "/xds/registry?wsdl", pid)["entries"]
    assert entry["uniqueId"] == uid and entry["mimeType"] == "text/plain"
    assert entry["repositoryUniqueId"] == ["1.2.250.1.999.3.7"] and entry["title"] == ["node-soap document"]


def test_iti42_refusal_is_read_as_registry_errors(server, node_client):
    answer = node_client("register", server.url + "/xds/registry?wsdl", new_pid(), builder.new_oid(),
                         "1.2.250.1.999.3.7")  # a patient the registry was never told of
    assert answer["status"] == C.RESPONSE_FAILURE
    assert "XDSUnknownPatientId" in [e["errorCode"] for e in answer["errors"]]


def test_iti43_retrieve_byte_for_byte(server, node_client):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    docs = {builder.new_oid(): PDF, builder.new_oid(): LONE}
    provide_with_xds_client(server, pid, docs)
    answer = node_client("retrieve", server.url + "/xds/repository?wsdl", server.repository.config.repository_id,
                         *docs)
    assert answer["status"] == C.RESPONSE_SUCCESS
    got = {d["uniqueId"]: d for d in answer["documents"]}
    assert set(got) == set(docs)
    for uid, data in docs.items():
        assert got[uid]["mimeType"] == "application/pdf"
        assert base64.b64decode(got[uid]["base64"]) == data
