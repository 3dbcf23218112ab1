"""`xds query` over real HTTP: each of the fourteen stored queries and the two ITI-51 ones against a registry holding a few
submissions (one with a Folder, one replacing a document), in its three outputs (table, --json,
--xml), and the registry's refusals shown with their codes and exit 1."""
from __future__ import annotations

import json

import pytest
from lxml import etree

from node import query as Q
from node.cli import main
from node.server import Services
from registry.query.params import MPQ_QUERIES
from registry.query.params import QUERIES as REGISTRY_QUERIES
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.settings import Settings

P1 = "CLIQ1^^^&1.2.250.1.213.1.4.10&ISO"
P2 = "CLIQ2^^^&1.2.250.1.213.1.4.10&ISO"
REPO = "1.2.250.1.999.3.77"
CLASS_REPORT = ("REPORT", "1.2.250.1.999.9.1", "Report")
CLASS_IMAGE = ("IMAGE", "1.2.250.1.999.9.1", "Image")
EVENT_A = ("EVT-A", "1.2.250.1.999.9.2", "Event A")
EVENT_B = ("EVT-B", "1.2.250.1.999.9.2", "Event B")
REFERENCE = "ORDER-1^^^&1.2.250.1.999.9.3&ISO^urn:ihe:iti:xds:2013:order"
UID = {name: builder.new_oid("1.2.250.1.999.44") for name in ("d1", "d2", "d3", "d4", "ss1", "ss2", "ss3", "f1")}


def _register(server, objects) -> None:
    reply = SoapClient(server.url + "/xds/registry").call(C.ACTION_REGISTER, builder.submit_objects_request(objects))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS, reply.raw[:2000]


def _document(pid, ident, uid, **kw):
    return builder.document_entry(pid, id=ident, unique_id=uid, hash="da39a3ee5e6b4b0d3255bfef95601890afd80709",
                                  size=0, repository_unique_id=REPO, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    services = Services(Settings(port=0, data=str(tmp_path_factory.mktemp("cli-query")), repository_id=REPO,
                                 check_patients=False, settle_interval=0)).start()
    report = {**builder.DEFAULT_CODES, "class": CLASS_REPORT, "event": [EVENT_A, EVENT_B]}
    image = {**builder.DEFAULT_CODES, "class": CLASS_IMAGE, "event": [EVENT_A]}
    # P1, first submission: two documents in a Folder.
    _register(services, [
        builder.submission_set(P1, unique_id=UID["ss1"]), builder.submission_set_marker(),
        _document(P1, "d1", UID["d1"], title="Discharge summary", codes=report, creation_time="20240110093000"),
        _document(P1, "d2", UID["d2"], title="Chest X-ray", codes=image, creation_time="20240301120000",
                  reference_ids=[REFERENCE]),
        builder.association("SubmissionSet01", "d1", id="a1"), builder.association("SubmissionSet01", "d2", id="a2"),
        builder.folder(P1, unique_id=UID["f1"], title="Stay 2024"), builder.folder_marker(),
        builder.association("SubmissionSet01", "Folder01", id="a3"),
        builder.association("Folder01", "d1", id="a4", ss_status=None),
        builder.association("SubmissionSet01", "a4", id="a5"),
    ])
    services.d1_uuid = _entry_uuid(services, UID["d1"])
    # P1, second submission: d3 replaces d1, which becomes Deprecated.
    _register(services, [
        builder.submission_set(P1, unique_id=UID["ss2"]), builder.submission_set_marker(),
        _document(P1, "d3", UID["d3"], title="Discharge summary, corrected", codes=report,
                  creation_time="20240111080000"),
        builder.association("SubmissionSet01", "d3", id="b1"),
        builder.association("d3", services.d1_uuid, C.ASSOC_RPLC, id="b2"),
    ])
    # Another patient, whom no P1 query may return.
    _register(services, [builder.submission_set(P2, unique_id=UID["ss3"]), builder.submission_set_marker(),
                         _document(P2, "d4", UID["d4"], codes=report),
                         builder.association("SubmissionSet01", "d4", id="c1")])
    yield services
    services.stop()


def _entry_uuid(server, uid) -> str:
    body = Q.run_query(server.url, C.SQ_GET_DOCUMENTS, [("$XDSDocumentEntryUniqueId", f"('{uid}')")])
    assert body.ok, body.errors
    return body.objects[0]["id"]


def run(capsys, server, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["query", *args, "--url", server.url])
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys, server, *args) -> dict:
    code, out, err = run(capsys, server, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def uids(doc: dict, kind: str | None = None) -> set[str]:
    return {o.get("uniqueId") for o in doc["objects"] if kind is None or o["type"] == kind}


def by_kind(doc: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in doc["objects"]:
        out[o["type"]] = out.get(o["type"], 0) + 1
    return out


# --- the command table covers the Technical Framework's ----------------------------------------------

def test_every_stored_query_is_a_command_with_every_parameter_as_a_flag():
    served = {**REGISTRY_QUERIES, **MPQ_QUERIES}
    assert len(Q.QUERIES) == 16 == len(served)
    assert {q.id for q in Q.QUERIES} == set(served)
    for q in Q.QUERIES:
        assert served[q.id].name == q.name
        assert q.slot_names() == {s.name for s in served[q.id].specs}, q.name
        assert q.transaction == ("ITI-51" if q.id in MPQ_QUERIES else "ITI-18")


def test_values_are_written_in_the_iti18_syntax():
    assert Q.slot_text(Q.STATUS, ["approved", "Deprecated"], True) == (
        f"('{C.STATUS_APPROVED}','{C.STATUS_DEPRECATED}')")
    assert Q.slot_text(Q.STRING, ["O'Brien^^^&1.2&ISO"], False) == "'O''Brien^^^&1.2&ISO'"
    assert Q.slot_text(Q.DTM, ["2024-01-31T10:15"], False) == "202401311015"
    assert Q.slot_text(Q.DTM, ["yesterday"], False) == "yesterday"  # for the registry to refuse
    assert Q.slot_text(Q.UUID, ["0E6B1B52-0F4C-4D5E-9A4A-2D1B0C9E8F70"], True) == (
        "('urn:uuid:0e6b1b52-0f4c-4d5e-9a4a-2d1b0c9e8f70')")
    assert Q.slot_text(Q.ASSOC_TYPE, ["rplc", "signs"], True) == f"('{C.ASSOC_RPLC}','{C.ASSOC_SIGNS}')"
    assert Q.slot_text(Q.ENTRY_TYPE, ["on-demand"], True) == f"('{C.OBJECT_TYPE_ON_DEMAND}')"


# --- the Find queries --------------------------------------------------------------------------------

def test_find_documents_prints_a_table_of_the_approved_entries(capsys, server):
    code, out, err = run(capsys, server, "find-documents", "--patient", P1)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "UNIQUEID", "STATUS", "TIME", "CODE", "ENTRYUUID", "TITLE"]
    assert len(lines) == 3
    row = next(line for line in lines if UID["d2"] in line)
    assert row.split()[:5] == ["DocumentEntry", UID["d2"], "Approved", "2024-03-01", "12:00:00"]
    assert "IMAGE^^1.2.250.1.999.9.1" in row and row.endswith("Chest X-ray")
    assert UID["d1"] not in out and UID["d4"] not in out  # replaced; another patient


def test_find_documents_filters(capsys, server):
    assert uids(as_json(capsys, server, "find-documents", "--patient", P1, "--status", "deprecated")) == {UID["d1"]}
    assert uids(as_json(capsys, server, "find-documents", "--patient", P1, "--status", "approved,deprecated")) == {
        UID["d1"], UID["d2"], UID["d3"]}
    assert uids(as_json(capsys, server, "find-documents", "--patient", P1,
                        "--class-code", "REPORT^^1.2.250.1.999.9.1")) == {UID["d3"]}
    assert uids(as_json(capsys, server, "find-documents", "--patient", P1, "--class-code",
                        "REPORT^^1.2.250.1.999.9.1", "--class-code", "IMAGE^^1.2.250.1.999.9.1")) == {
        UID["d2"], UID["d3"]}
    assert uids(as_json(capsys, server, "find-documents", "--patient", P1,
                        "--creation-from", "2024-02-01", "--creation-to", "2025")) == {UID["d2"]}
    # Commas OR the codes of one Slot, repeating the flag ANDs the Slots.
    assert uids(as_json(capsys, server, "find-documents", "--patient", P1, "--status", "approved,deprecated",
                        "--event-code", "EVT-A^^1.2.250.1.999.9.2", "--event-code", "EVT-B^^1.2.250.1.999.9.2")) == {
        UID["d1"], UID["d3"]}
    assert uids(as_json(capsys, server, "find-documents", "--patient", P1, "--event-code",
                        "EVT-B^^1.2.250.1.999.9.2,EVT-A^^1.2.250.1.999.9.2")) == {UID["d2"], UID["d3"]}


def test_find_documents_json_carries_the_metadata(capsys, server):
    doc = as_json(capsys, server, "find-documents", "--patient", P1, "--class-code", "IMAGE^^1.2.250.1.999.9.1")
    assert doc["status"] == "Success" and doc["errors"] == []
    (entry,) = doc["objects"]
    assert entry["type"] == "DocumentEntry" and entry["uniqueId"] == UID["d2"] and entry["patientId"] == P1
    assert entry["classCode"] == {"code": "IMAGE", "scheme": "1.2.250.1.999.9.1", "display": "Image"}
    assert entry["creationTime"] == "20240301120000" and entry["repositoryUniqueId"] == REPO
    assert entry["status"] == "Approved" and entry["entryType"] == "stable" and entry["id"].startswith("urn:uuid:")
    assert entry["slots"][C.REFERENCE_ID_LIST_SLOT] == [REFERENCE]


def test_find_documents_xml_is_the_adhoc_query_response(capsys, server):
    code, out, err = run(capsys, server, "find-documents", "--patient", P1, "--xml")
    assert code == 0, err
    root = etree.fromstring(out.encode())
    assert root.tag == C.q(C.NS_QUERY, "AdhocQueryResponse") and root.get("status") == C.RESPONSE_SUCCESS
    found = root.findall(f"{{{C.NS_RIM}}}RegistryObjectList/{{{C.NS_RIM}}}ExtrinsicObject")
    assert {e.find(f"{{{C.NS_RIM}}}ExternalIdentifier[@identificationScheme='{C.DE_UNIQUE_ID}']").get("value")
            for e in found} == {UID["d2"], UID["d3"]}
    assert C.NS_SOAP12 not in out  # the response alone, not its envelope


def test_find_documents_by_reference_id(capsys, server):
    doc = as_json(capsys, server, "find-documents-by-reference-id", "--patient", P1, "--reference-id", REFERENCE)
    assert uids(doc) == {UID["d2"]}
    assert as_json(capsys, server, "find-documents-by-reference-id", "--patient", P1,
                   "--reference-id", "NOPE^^^&1.2.3&ISO")["objects"] == []


def test_find_submission_sets(capsys, server):
    code, out, err = run(capsys, server, "find-submission-sets", "--patient", P1)
    assert code == 0, err
    assert UID["ss1"] in out and UID["ss2"] in out and UID["ss3"] not in out
    assert all(line.startswith("SubmissionSet") for line in out.splitlines()[1:])
    doc = as_json(capsys, server, "find-submission-sets", "--patient", P1, "--source-id", "1.2.250.1.999.7")
    assert uids(doc) == {UID["ss1"], UID["ss2"]}
    assert as_json(capsys, server, "find-submission-sets", "--patient", P1, "--source-id", "9.9.9")["objects"] == []


def test_find_folders(capsys, server):
    code, out, err = run(capsys, server, "find-folders", "--patient", P1)
    assert code == 0, err
    (row,) = out.splitlines()[1:]
    assert row.split()[:3] == ["Folder", UID["f1"], "Approved"] and row.endswith("Stay 2024")
    assert uids(as_json(capsys, server, "find-folders", "--patient", P1,
                        "--code-list", "Referrals^^1.3.6.1.4.1.21367.100.1")) == {UID["f1"]}


def test_get_all(capsys, server):
    code, out, err = run(capsys, server, "get-all", "--patient", P1)
    assert code == 0, err
    kinds = [line.split()[0] for line in out.splitlines()[1:]]
    assert {"SubmissionSet", "DocumentEntry", "Folder", "Association"} <= set(kinds)
    assert UID["d1"] not in out.split("->")[0]  # Deprecated entries only when asked for
    doc = as_json(capsys, server, "get-all", "--patient", P1, "--document-status", "approved,deprecated")
    assert uids(doc, "DocumentEntry") == {UID["d1"], UID["d2"], UID["d3"]}
    assert uids(doc, "SubmissionSet") == {UID["ss1"], UID["ss2"]} and uids(doc, "Folder") == {UID["f1"]}


def test_object_refs(capsys, server):
    code, out, err = run(capsys, server, "get-all", "--patient", P1, "--return", "objectref")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "ENTRYUUID"]
    assert len(lines) > 4 and all(line.split()[0] == "ObjectRef" and line.split()[1].startswith("urn:uuid:")
                                  for line in lines[1:])


# --- the Get queries ---------------------------------------------------------------------------------

def test_get_documents_by_uid_uuid_and_lid(capsys, server):
    doc = as_json(capsys, server, "get-documents", "--uid", f"{UID['d1']},{UID['d2']}")
    assert uids(doc) == {UID["d1"], UID["d2"]}
    d1 = next(o for o in doc["objects"] if o["uniqueId"] == UID["d1"])
    assert d1["status"] == "Deprecated"
    bare = server.d1_uuid.removeprefix("urn:uuid:")
    assert uids(as_json(capsys, server, "get-documents", "--uuid", bare)) == {UID["d1"]}
    assert uids(as_json(capsys, server, "get-documents", "--lid", d1["lid"])) == {UID["d1"]}
    code, out, err = run(capsys, server, "get-documents", "--uid", UID["d3"])
    assert code == 0 and UID["d3"] in out and "Discharge summary, corrected" in out


def test_get_folders(capsys, server):
    doc = as_json(capsys, server, "get-folders", "--uid", UID["f1"])
    assert by_kind(doc) == {"Folder": 1} and doc["objects"][0]["codeList"][0]["code"] == "Referrals"
    code, out, err = run(capsys, server, "get-folders", "--uuid", doc["objects"][0]["id"])
    assert code == 0 and UID["f1"] in out


def test_get_associations(capsys, server):
    doc = as_json(capsys, server, "get-associations", "--uuid", server.d1_uuid)
    kinds = {(o["associationType"], o["targetObject"] == server.d1_uuid) for o in doc["objects"]}
    assert by_kind(doc) == {"Association": 3}  # HasMember from SubmissionSet and Folder, RPLC from d3
    assert ("RPLC", True) in kinds and ("HasMember", True) in kinds
    code, out, err = run(capsys, server, "get-associations", "--uuid", server.d1_uuid)
    assert code == 0 and "RPLC" in out and server.d1_uuid in out


def test_get_documents_and_associations(capsys, server):
    doc = as_json(capsys, server, "get-documents-and-associations", "--uid", UID["d1"])
    assert by_kind(doc) == {"DocumentEntry": 1, "Association": 3}
    code, out, err = run(capsys, server, "get-documents-and-associations", "--uid", UID["d1"])
    # The table names an Association's ends by uniqueId when the answer holds them.
    assert code == 0 and f"-> {UID['d1']}" in out


def test_get_submission_sets(capsys, server):
    doc = as_json(capsys, server, "get-submission-sets", "--uuid", server.d1_uuid)
    assert uids(doc, "SubmissionSet") == {UID["ss1"]} and by_kind(doc)["Association"] == 1


def test_get_submission_set_and_contents(capsys, server):
    doc = as_json(capsys, server, "get-submission-set-and-contents", "--uid", UID["ss1"])
    assert uids(doc, "SubmissionSet") == {UID["ss1"]} and uids(doc, "Folder") == {UID["f1"]}
    assert uids(doc, "DocumentEntry") == {UID["d1"], UID["d2"]}
    code, out, err = run(capsys, server, "get-submission-set-and-contents", "--uid", UID["ss2"])
    assert code == 0 and UID["d3"] in out and UID["ss2"] in out


def test_get_folder_and_contents(capsys, server):
    doc = as_json(capsys, server, "get-folder-and-contents", "--uid", UID["f1"])
    # A replacement joins the Folders of the entry it replaces, as RPLC requires.
    assert uids(doc, "Folder") == {UID["f1"]} and uids(doc, "DocumentEntry") == {UID["d1"], UID["d3"]}
    assert by_kind(doc)["Association"] == 2


def test_get_folders_for_document(capsys, server):
    assert uids(as_json(capsys, server, "get-folders-for-document", "--uid", UID["d1"])) == {UID["f1"]}
    assert uids(as_json(capsys, server, "get-folders-for-document", "--uid", UID["d3"])) == {UID["f1"]}
    code, out, err = run(capsys, server, "get-folders-for-document", "--uid", UID["d2"])
    assert code == 0 and out.startswith("no objects match")


def test_get_related_documents(capsys, server):
    doc = as_json(capsys, server, "get-related-documents", "--uid", UID["d3"])
    assert uids(doc, "DocumentEntry") == {UID["d1"], UID["d3"]}
    assert [o["associationType"] for o in doc["objects"] if o["type"] == "Association"] == ["RPLC"]
    assert as_json(capsys, server, "get-related-documents", "--uid", UID["d3"],
                   "--association-type", "APND")["objects"] == []


# --- what goes wrong ---------------------------------------------------------------------------------

def test_a_bad_parameter_is_the_registrys_error_with_its_code(capsys, server):
    code, out, err = run(capsys, server, "find-documents", "--patient", P1, "--status", "bogus")
    assert code == 1 and out == ""
    assert "Failure" in err and "XDSRegistryError" in err and "$XDSDocumentEntryStatus" in err
    code, out, err = run(capsys, server, "find-documents", "--patient", P1, "--creation-from", "yesterday", "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["status"] == "Failure" and doc["errors"][0]["code"] == "XDSRegistryError"
    assert doc["errors"][0]["location"] == "$XDSDocumentEntryCreationTimeFrom"
    code, out, err = run(capsys, server, "find-documents", "--patient", P1,
                         "--param", f"$XDSDocumentEntryStatus=('{C.STATUS_APPROVED}')", "--xml")
    assert code == 1 and "XDSStoredQueryParamNumber" in err and "XDSStoredQueryParamNumber" in out


def test_a_patient_id_that_is_no_cx_is_refused(capsys, server):
    code, out, err = run(capsys, server, "find-documents", "--patient", "not-a-cx")
    assert code == 1 and "XDSRegistryError" in err and "$XDSDocumentEntryPatientId" in err


def test_an_unreachable_registry_is_one_line_and_exit_1(capsys, tmp_path):
    code = main(["query", "get-documents", "--uid", "1.2.3", "--url", "http://127.0.0.1:9/xds/registry"])
    err = capsys.readouterr().err
    assert code == 1 and "query to http://127.0.0.1:9/xds/registry failed" in err and "Traceback" not in err


def test_the_command_line_is_checked_before_anything_is_sent(capsys, server):
    with pytest.raises(SystemExit) as exc:
        main(["query", "get-documents", "--uid", "1", "--uuid", "2", "--url", server.url])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["query", "find-documents", "--url", server.url])  # no --patient


# --- ITI-51 ------------------------------------------------------------------------------------------

def test_find_documents_for_multiple_patients(capsys, server):
    """Sent with the ITI-51 action: both patients' entries, filtered as ITI-18 filters them."""
    report = "REPORT^^1.2.250.1.999.9.1"
    both = as_json(capsys, server, "find-documents-for-multiple-patients", "--patient", f"{P1},{P2}",
                   "--class-code", report)
    assert uids(both) == {UID["d3"], UID["d4"]}
    one = as_json(capsys, server, "find-documents-for-multiple-patients", "--patient", P2, "--class-code", report)
    assert uids(one) == {UID["d4"]}
    # The loopback administrator may leave the patients out: every patient.
    assert uids(as_json(capsys, server, "find-documents-for-multiple-patients", "--class-code", report)) >= {
        UID["d3"], UID["d4"]}


def test_find_documents_for_multiple_patients_without_a_code_is_the_registrys_error(capsys, server):
    code, out, err = run(capsys, server, "find-documents-for-multiple-patients", "--patient", P1)
    assert code == 1 and "XDSStoredQueryMissingParam" in err, err


def test_find_folders_for_multiple_patients(capsys, server):
    referrals = "Referrals^^1.3.6.1.4.1.21367.100.1"  # the builder's default Folder code
    doc = as_json(capsys, server, "find-folders-for-multiple-patients", "--patient", P1, "--patient", P2,
                  "--code-list", referrals)
    assert uids(doc) == {UID["f1"]}
    assert uids(as_json(capsys, server, "find-folders-for-multiple-patients", "--patient", P2,
                        "--code-list", referrals)) == set()
    assert uids(as_json(capsys, server, "find-folders-for-multiple-patients", "--patient", P1,
                        "--code-list", "Other^^1.2.250.1.999.9.9")) == set()


def test_an_iti18_query_under_the_iti51_action_is_refused(server):
    result = Q.run_query(server.url, C.SQ_FIND_DOCUMENTS, [("$XDSDocumentEntryPatientId", f"'{P1}'"),
                                                          ("$XDSDocumentEntryStatus", f"('{C.STATUS_APPROVED}')")],
                         action=C.ACTION_MPQ)
    assert not result.ok and result.errors
