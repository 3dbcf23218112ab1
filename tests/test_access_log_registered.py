"""The patient's access log of a registration names no document still hidden from her (INVISIBLE_PATIENT):
the facts the audit layer takes from the registration itself (registry/register.py `registered`, no read
back) must hide it as the stored rows would, over real HTTP, for ITI-42 and for ITI-41 in one process."""
from __future__ import annotations

import time

import pytest

from node.server import Services
from node.transfer import provide_and_register
from tests.helpers import new_pid
from xds import builder
from xds import constants as C
from xds.audit.http import log_entries
from xds.client import SoapClient
from xds.security.policy import DMP_CONFIDENTIALITY_SCHEME
from xds.settings import Settings

HIDDEN = ("INVISIBLE_PATIENT", DMP_CONFIDENTIALITY_SCHEME, "Non visible par le patient")
NORMAL = [("N", "2.16.840.1.113883.5.25", "Normal")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    services = Services(Settings(port=0, data=str(tmp_path_factory.mktemp("log")), settle_interval=0)).start()
    yield services
    services.stop()


def submission(pid: str, register: bool):
    objects = [builder.submission_set(pid), builder.submission_set_marker()]
    for i, (title, codes) in enumerate((("Visible letter", NORMAL), ("Signature", NORMAL + [HIDDEN])), 1):
        kw = dict(hash="da39a3ee5e6b4b0d3255bfef95601890afd80709", size=0,
                  repository_unique_id="1.2.250.1.999.3.1") if register else {}
        objects.append(builder.document_entry(pid, id=f"Document{i:02d}", title=title,
                                              codes={"confidentiality": codes}, **kw))
        objects.append(builder.association("SubmissionSet01", f"Document{i:02d}", id=f"a{i}"))
    return builder.submit_objects_request(objects)


@pytest.mark.parametrize("transaction", ["ITI-42", "ITI-41"])
def test_a_hidden_document_is_not_named_in_her_log(server, transaction):
    pid = new_pid()
    server.registry.store.add_patient(pid)
    if transaction == "ITI-42":
        reply = SoapClient(server.url + "/xds/registry").call(C.ACTION_REGISTER, submission(pid, True))
    else:
        pnr, _ = provide_and_register(submission(pid, False), {"Document01": b"", "Document02": b""}, inline=True)
        reply = SoapClient(server.url + "/xds/repository").call(C.ACTION_PROVIDE, pnr)
    assert reply.body.get("status") == C.RESPONSE_SUCCESS
    hers = log_entries(server.auditor.store, pid, {}, include_secret=False, for_patient=True)
    admins = log_entries(server.auditor.store, pid, {}, include_secret=True, for_patient=False)
    named = sorted(e["document_title"] for e in hers if e["document_title"])
    assert named == ["Visible letter"], hers
    assert sorted(e["document_title"] for e in admins if e["document_title"]) == ["Signature", "Visible letter"]
    hidden = [e for e in hers if e["document_title"] is None]
    assert len(hidden) == 1 and hidden[0]["document_unique_id"] is None
    rows = server.auditor.store.accesses(_key(pid), include_secret=True)
    reveal = {r["document_title"]: r["reveal_at"] for r in rows}
    assert reveal["Visible letter"] is None and reveal["Signature"] > time.time() + 25 * 86400


def _key(pid: str) -> str:
    from xds.security.policy import patient_key

    return patient_key(pid)
