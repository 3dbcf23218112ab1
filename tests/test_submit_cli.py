"""`xds submit` over real HTTP: the metadata flags and the --metadata TOML file reach the registry as
sent (read back with ITI-18), the defaults fit each file (a PDF, an image, a CDA's own header), --json
names the entryUUIDs, uniqueIds, SubmissionSet and repositoryUniqueId that the registry holds, and a
bad flag or file is refused before anything is sent."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from node import submit_metadata as SM
from node.server import Services
from xds.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PID = "SUBMIT1^^^&1.2.3.4.5&ISO"
LOINC = "2.16.840.1.113883.6.1"
CDA = """<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <code code="11490-0" codeSystem="2.16.840.1.113883.6.1" displayName="Discharge summary"/>
  <title>Lettre de   sortie</title>
  <effectiveTime value="20240301123000+0100"/>
  <languageCode code="fr-FR"/>
</ClinicalDocument>
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    services = Services(Settings(port=0, data=str(tmp_path_factory.mktemp("submit")), settle_interval=0)).start()
    services.registry.store.add_patient(PID)
    yield services
    services.stop()


@pytest.fixture
def files(tmp_path):
    (tmp_path / "letter.pdf").write_bytes(b"\r\n%PDF-1.4 not really\r\n")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (tmp_path / "summary.xml").write_text(CDA)
    return tmp_path


def xds(cwd, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDS_")}
    env["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60)


def stored(server, uid: str) -> dict:
    """The entry as ITI-18 answers it (`xds query get-documents --json`)."""
    found = xds(ROOT, "query", "get-documents", "--uid", uid, "--url", server.url, "--json")
    assert found.returncode == 0, found.stderr
    objects = json.loads(found.stdout)["objects"]
    assert len(objects) == 1
    return objects[0]


def code(obj: dict | list) -> tuple:
    return (obj["code"], obj["scheme"], obj["display"]) if isinstance(obj, dict) else tuple(code(o) for o in obj)


def test_defaults_fit_each_file_and_json_names_what_the_registry_holds(server, files):
    done = xds(files, "submit", "letter.pdf", "scan.png", "summary.xml", "--patient", PID, "--url", server.url,
               "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ok"] and answer["status"] == "Success" and answer["errors"] == []
    assert answer["repository"] == {"url": server.url + "/xds/repository",
                                    "repositoryUniqueId": server.settings.repository_id}
    docs = {d["file"]: d for d in answer["documents"]}
    assert set(docs) == {"letter.pdf", "scan.png", "summary.xml"}
    sufficient = ("urn:ihe:iti:xds:2017:mimeTypeSufficient", "1.3.6.1.4.1.19376.1.2.3", "mimeType Sufficient")
    expected = {"letter.pdf": ("application/pdf", ("55188-7", LOINC, "Patient data Document"), "letter.pdf"),
                "scan.png": ("image/png", ("18748-4", LOINC, "Diagnostic imaging study"), "scan.png"),
                "summary.xml": ("application/xml", ("11490-0", LOINC, "Discharge summary"), "Lettre de sortie")}
    for name, (mime, type_code, title) in expected.items():
        entry = stored(server, docs[name]["uniqueId"])
        assert entry["id"] == docs[name]["entryUUID"] and entry["id"].startswith("urn:uuid:")
        assert entry["mimeType"] == mime == docs[name]["mimeType"]
        assert code(entry["typeCode"]) == type_code and code(entry["classCode"]) == type_code
        assert code(entry["formatCode"]) == sufficient
        assert entry["title"] == title
        assert entry["repositoryUniqueId"] == server.settings.repository_id
        assert entry["size"] == str(os.path.getsize(files / name))
    # A CDA's effectiveTime, converted to UTC, and its language.
    cda = stored(server, docs["summary.xml"]["uniqueId"])
    assert cda["creationTime"] == "20240301113000" and cda["languageCode"] == "fr-FR"
    # The SubmissionSet the answer names is the one the registry holds.
    ss = xds(ROOT, "query", "get-submission-sets", "--uuid", docs["letter.pdf"]["entryUUID"], "--url", server.url,
             "--json")
    sets = [o for o in json.loads(ss.stdout)["objects"] if o["type"] == "SubmissionSet"]
    assert [(s["id"], s["uniqueId"]) for s in sets] == [(answer["submission_set"]["entryUUID"],
                                                         answer["submission_set"]["uniqueId"])]


def test_flags_win_over_the_metadata_file_which_wins_over_the_defaults(server, files):
    (files / "meta.toml").write_text('''
[document]
class_code = "CLS^Class from file^1.2.3.9"
type_code = "TYP^Type from file^1.2.3.9"
confidentiality_code = ["N^Normal^2.16.840.1.113883.5.25", "R^Restricted^2.16.840.1.113883.5.25"]
practice_setting_code = "394802001^General medicine^2.16.840.1.113883.6.96"
author_person = "999^Durand^Anne^^^^^^&1.2.250.1.71.4.2.1&ISO"
author_institution = "Clinique du Parc^^^^^^^^^1.2.3.4.77"

[submission_set]
source_id = "1.2.3.4.5.6.7"
content_type_code = "CT9^Content from file^1.2.3.9"

[files."letter.pdf"]
title = "Title from file"
event_code = ["EV1^Event one^1.2.3.9"]
''')
    done = xds(files, "submit", "letter.pdf", "scan.png", "--patient", PID, "--url", server.url, "--json",
               "--metadata", "meta.toml", "--type-code", "TYP2^^1.2.3.10", "--title", "Flag title",
               "--comments", "from the flag")
    assert done.returncode == 0, done.stderr
    docs = {d["file"]: d for d in json.loads(done.stdout)["documents"]}
    letter, scan = stored(server, docs["letter.pdf"]["uniqueId"]), stored(server, docs["scan.png"]["uniqueId"])
    for entry in (letter, scan):
        assert code(entry["typeCode"]) == ("TYP2", "1.2.3.10", "TYP2")          # the flag
        assert code(entry["classCode"]) == ("CLS", "1.2.3.9", "Class from file")  # the file
        assert entry["title"] == "Flag title" and entry["comments"] == "from the flag"
        assert sorted(c[0] for c in code(entry["confidentialityCode"])) == ["N", "R"]
        assert code(entry["practiceSettingCode"])[0] == "394802001"
        assert entry["authors"][0]["authorPerson"] == "999^Durand^Anne^^^^^^&1.2.250.1.71.4.2.1&ISO"
        assert entry["authors"][0]["authorInstitution"] == ["Clinique du Parc^^^^^^^^^1.2.3.4.77"]
    assert code(letter["eventCodeList"]) == (("EV1", "1.2.3.9", "Event one"),)   # only that file's
    assert "eventCodeList" not in scan
    ss = xds(ROOT, "query", "get-submission-sets", "--uuid", docs["scan.png"]["entryUUID"], "--url", server.url,
             "--json")
    submission = [o for o in json.loads(ss.stdout)["objects"] if o["type"] == "SubmissionSet"][0]
    assert submission["sourceId"] == "1.2.3.4.5.6.7"
    assert code(submission["contentTypeCode"]) == ("CT9", "1.2.3.9", "Content from file")
    assert submission["authors"][0]["authorPerson"] == "999^Durand^Anne^^^^^^&1.2.250.1.71.4.2.1&ISO"


@pytest.mark.parametrize("content,words", [
    ("[document]\ntype_cod = \"A^^1.2\"\n", "unknown key 'type_cod'"),
    ("[documents]\n", "unknown table 'documents'"),
    ("[document]\ntype_code = \"A\"\n", "document.type_code: 'A' is not a code"),
    ("[document]\nconfidentiality_code = [1]\n", "confidentiality_code must be"),
    ("[document\n", "not TOML"),
])
def test_a_bad_metadata_file_is_refused_before_anything_is_sent(server, files, content, words):
    (files / "bad.toml").write_text(content)
    before = server.registry.store.list_patients()
    count = len(json.loads(xds(ROOT, "query", "find-documents", "--patient", PID, "--url", server.url,
                               "--json").stdout)["objects"])
    done = xds(files, "submit", "letter.pdf", "--patient", PID, "--url", server.url, "--metadata", "bad.toml")
    assert done.returncode == 2 and words in done.stderr, done.stderr
    after = json.loads(xds(ROOT, "query", "find-documents", "--patient", PID, "--url", server.url,
                           "--json").stdout)["objects"]
    assert len(after) == count and server.registry.store.list_patients() == before


def test_a_bad_code_flag_is_refused(files):
    done = xds(files, "submit", "letter.pdf", "--patient", PID, "--url", "http://127.0.0.1:1", "--class-code", "X")
    assert done.returncode == 2 and "--class-code: 'X' is not a code" in done.stderr


def test_a_refused_submission_prints_its_errors_as_json(server, files):
    done = xds(files, "submit", "letter.pdf", "--patient", "UNKNOWN^^^&1.2.3.4.5&ISO", "--url", server.url, "--json")
    assert done.returncode == 1
    answer = json.loads(done.stdout)
    assert not answer["ok"] and "documents" not in answer
    assert [e["code"] for e in answer["errors"]] == ["XDSUnknownPatientId"]


@pytest.mark.parametrize("value,utc", [("20240301123000+0100", "20240301113000"), ("20240301123000", "20240301123000"),
                                       ("20240301", "20240301"), ("202403011230-0230", "202403011500"),
                                       ("20240301123000.123+0000", "20240301123000"), ("nonsense", None)])
def test_cda_times_become_utc(value, utc):
    assert SM.utc_dtm(value) == utc
