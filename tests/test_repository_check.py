"""`xds repository check [--repair]` finds every kind of disagreement between a repository and its
registry, repairs what can be repaired without guessing, and keeps reporting what cannot."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from node.server import Services
from node.transfer import provide_and_register
from registry import schema as RS
from repository import schema as PS
from repository.blobs import location_for
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PID = "CHECK1^^^&1.2.250.1.213.1.4.10&ISO"
REPO = "1.2.250.1.999.3.66"


def cli(data, *args):
    return subprocess.run([sys.executable, "-m", "node.cli", "repository", "--data", data, "check",
                           "--repository-id", REPO, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "XDS_CHECK_PATIENTS": "false"})


@pytest.fixture
def node(tmp_path):
    services = Services(Settings(port=0, data=str(tmp_path / "node"), repository_id=REPO, check_patients=False,
                                 settle_interval=0)).start()
    sub = builder.simple_submission(PID, 6, register=False)
    uids = [ei.get("value") for ei in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
            if ei.get("identificationScheme") == C.DE_UNIQUE_ID]
    docs = {f"Document{i:02d}": f"document {i}\n".encode() for i in range(1, 7)}
    pnr, att = provide_and_register(sub, docs)
    reply = SoapClient(services.url + "/xds/repository").call(C.ACTION_PROVIDE, pnr, attachments=att)
    assert read_response_errors(reply.body)[0] == C.RESPONSE_SUCCESS
    services.stop()
    return services, uids


def test_a_consistent_repository_passes(node):
    services, uids = node
    r = cli(services.settings.data)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checked 6 stored documents and 6 registry entries" in r.stdout and "0 problems" in r.stdout


def test_every_disagreement_is_found_and_repaired_where_it_can_be(node):
    services, uids = node
    repo, blobs = services.repository.store, services.repository.blobs
    lost, unrowed, unregistered, wrong_row, corrupt, fine = uids
    os.unlink(blobs.local_path(repo.get(lost).location))                  # bytes gone
    with repo.engine.begin() as c:
        c.execute(sa.delete(PS.document).where(PS.document.c.unique_id == unrowed))         # row gone, file kept
        c.execute(sa.update(PS.document).where(PS.document.c.unique_id == wrong_row).values(hash="0" * 40))
    with open(blobs.local_path(repo.get(corrupt).location), "ab") as f:
        f.write(b"tampered")                                                # bytes no longer the registry's
    with services.registry.store.transaction() as c:                       # entry gone (as ITI-62 would)
        c.execute(sa.delete(RS.registry_object).where(RS.registry_object.c.unique_id == unregistered))
    stray = os.path.join(blobs.objects, "ff", "ff", "f" * 64)
    os.makedirs(os.path.dirname(stray), exist_ok=True)
    open(stray, "wb").write(b"nobody's")

    r = cli(services.settings.data, "--hashes")
    assert r.returncode == 1
    found = {tuple(line.split("\t")[:2]) for line in r.stdout.splitlines() if "\t" in line}
    assert found == {("entry-without-bytes", lost), ("entry-without-bytes", unrowed),
                     ("bytes-without-entry", unregistered), ("hash-mismatch", wrong_row),
                     ("hash-mismatch", corrupt), ("file-without-row", "-")}
    assert fine not in r.stdout
    assert os.path.exists(stray) and repo.get(unregistered) is not None  # a check alone changes nothing

    r = cli(services.settings.data, "--hashes", "--repair")
    assert r.returncode == 1  # the lost and the tampered bytes cannot be made again
    assert "row recorded for the stored bytes" in r.stdout and "row corrected" in r.stdout
    assert repo.get(unrowed) is not None and repo.get(wrong_row).hash != "0" * 40
    assert repo.get(unregistered) is None and not os.path.exists(stray)
    quarantine = os.path.join(blobs.root, "quarantine")
    assert sorted(f for _, _, fs in os.walk(quarantine) for f in fs) == sorted(
        [os.path.basename(location_for(unregistered)), "f" * 64])

    r = cli(services.settings.data, "--hashes")
    left = {tuple(line.split("\t")[:2]) for line in r.stdout.splitlines() if "\t" in line}
    assert left == {("entry-without-bytes", lost), ("hash-mismatch", corrupt)}
    assert r.returncode == 1


def test_the_periodic_check_reports_in_the_log(node, caplog):
    import logging
    import time

    services, uids = node
    blobs = services.repository.blobs
    os.unlink(blobs.local_path(services.repository.store.get(uids[0]).location))
    settings = Settings(port=0, data=services.settings.data, repository_id=REPO, check_patients=False,
                        settle_interval=0.1, check_interval=0.1)
    with caplog.at_level(logging.INFO, logger="repository.settle"):
        again = Services(settings).start()
        try:
            end = time.monotonic() + 10
            while time.monotonic() < end and not any("consistency check" in r.getMessage() for r in caplog.records):
                time.sleep(0.1)
        finally:
            again.stop()
    reports = [r for r in caplog.records if "consistency check" in r.getMessage()]
    assert reports and reports[0].levelname == "ERROR" and "entry-without-bytes" in reports[0].getMessage()
    assert uids[0] not in reports[0].getMessage()  # counts in the log, identifiers only from the command
