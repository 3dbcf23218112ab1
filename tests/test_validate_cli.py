"""`xds validate` (node/validate.py): offline validation of a message by the server's own rules.

The messages are built here (xds.builder, tests/dmp_messages.py) and written to files in each form a lab
has them in: a bare body, a SOAP envelope, an MTOM body with or without the HTTP headers of a raw dump.
A few tests run the command as a process (`python -m node.validate`, what `xds validate` dispatches to);
the rest call it in process.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from lxml import etree

from node import validate
from node.transfer import provide_and_register
from xds import builder, mtom, soap
from xds import constants as C
from xds import errors as E
from xds.validation import dmp
from tests import dmp_messages as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PID = "4711^^^&1.2.250.1.999.1.2&ISO"
DMP_PATIENT = M.patient_id(M.ins(41), date=M.INS_DATE)
CONTENT = b"a lab report, line one\r\nline two\r\n"
SUMMARY_TAIL = "(iti-42, profile ihe)"


# --- building the inputs ----------------------------------------------------------------------------

def xml(el: etree._Element) -> bytes:
    return etree.tostring(el, xml_declaration=True, encoding="UTF-8")


def envelope(body: etree._Element, action: str | None) -> bytes:
    return soap.build_envelope(soap.SOAP12, action, None, body)


def mtom_message(pnr: etree._Element, attachments, *, http: bool, action: str = C.ACTION_PROVIDE) -> bytes:
    """An ITI-41 as sent on the wire: the MTOM body, after its HTTP request line and headers when http."""
    writer = mtom.MtomWriter()
    for cid, ctype, data in attachments:
        writer.add_bytes(data, ctype, cid)
    writer.set_root(envelope(pnr, action))
    body = b"".join(writer.chunks())
    if not http:
        return body
    head = (f"POST /xds/repository HTTP/1.1\r\nHost: repository.example:8080\r\n"
            f"Content-Type: {writer.content_type(action)}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def register_request(**doc_kwargs) -> etree._Element:
    return builder.simple_submission(PID, doc_kwargs=doc_kwargs or None)


def provide(document_hash: str | None = None, size: int | None = None, content: bytes = CONTENT):
    """ITI-41 of one document, its hash and size given (or left to the repository when None)."""
    kw = {k: v for k, v in (("hash", document_hash), ("size", size)) if v is not None}
    request = builder.simple_submission(PID, register=False, doc_kwargs=kw)
    return provide_and_register(request, {"Document01": content})


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# --- running it --------------------------------------------------------------------------------------

def run(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The command as a process, as `xds validate` runs it."""
    return subprocess.run([sys.executable, "-m", "node.validate", *argv], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=120)


def call(capsys, *argv: str) -> tuple[int, list[str], str]:
    """The command in process: exit status, stdout lines, stderr."""
    status = validate.main(list(argv))
    out = capsys.readouterr()
    return status, out.out.splitlines(), out.err


def findings(capsys, *argv: str) -> tuple[int, list[dict]]:
    status = validate.main(["--json", *argv])
    return status, json.loads(capsys.readouterr().out)


def problems(found: list[dict], severity: str = "error") -> list[tuple[str, str]]:
    return [(f["code"], f["location"]) for f in found if f["severity"] == severity]


# --- ITI-42 ------------------------------------------------------------------------------------------

def test_a_valid_register_passes_with_its_summary_line(tmp_path):
    path = write(tmp_path, "register.xml", xml(register_request()))
    done = run(path)
    lines = done.stdout.decode().splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines[-1] == f"{path}: 0 errors, 0 warnings {SUMMARY_TAIL}"
    assert not any(line.startswith(("ERROR", "WARNING")) for line in lines)
    # What only the registry can check is said once, not pretended.
    infos = [line for line in lines if line.startswith("INFO not checked offline")]
    assert len(infos) == 1 and "XDSUnknownPatientId" in infos[0] and "XDSDuplicateUniqueIdInRegistry" in infos[0]


def test_a_bad_register_lists_each_error_with_its_code_and_location(tmp_path, capsys):
    request = register_request(creation_time="2024-01-01")
    # Two problems on two objects: a DTM with dashes on the entry, and an association to nothing.
    rol = request.find(f"{{{C.NS_RIM}}}RegistryObjectList")
    rol.append(builder.association("SubmissionSet01", "Document09", id="dangling"))
    path = write(tmp_path, "bad.xml", xml(request))
    status, lines, _ = call(capsys, path)
    assert status == 1
    errors = [line for line in lines if line.startswith("ERROR")]
    assert len(errors) == 2, lines
    assert errors[0].startswith(f"ERROR {E.REGISTRY_METADATA_ERROR} at Document01: ") and "creationTime" in errors[0]
    assert errors[1].startswith(f"ERROR {E.REGISTRY_METADATA_ERROR} at dangling: ") and "Document09" in errors[1]
    assert lines[-1] == f"{path}: 2 errors, 0 warnings {SUMMARY_TAIL}"


def test_json_lists_the_findings_with_severity_code_location_and_message(tmp_path, capsys):
    path = write(tmp_path, "bad.xml", xml(register_request(creation_time="2024-01-01")))
    status, found = findings(capsys, path)
    assert status == 1
    errors = [f for f in found if f["severity"] == "error"]
    assert [(f["code"], f["location"]) for f in errors] == [(E.REGISTRY_METADATA_ERROR, "Document01")]
    assert "creationTime" in errors[0]["message"]
    assert {f["file"] for f in found} == {path} and {f["transaction"] for f in found} == {"iti-42"}
    assert {f["profile"] for f in found} == {"ihe"}
    assert [f["code"] for f in found if f["severity"] == "info"] == ["NotCheckedOffline"]


def test_an_object_ref_outside_the_model_is_refused_as_the_registry_does(tmp_path, capsys):
    request = register_request()
    etree.SubElement(request.find(f"{{{C.NS_RIM}}}RegistryObjectList"), f"{{{C.NS_RIM}}}ObjectRef",
                     id="urn:uuid:00000000-0000-0000-0000-000000000001")
    status, found = findings(capsys, write(tmp_path, "ref.xml", xml(request)))
    assert status == 1
    assert problems(found) == [(E.REGISTRY_METADATA_ERROR, "urn:uuid:00000000-0000-0000-0000-000000000001")]


# --- ITI-41 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("http", [True, False], ids=["raw-http-dump", "mtom-body-only"])
def test_a_valid_mtom_provide_passes(tmp_path, capsys, http):
    pnr, attachments = provide(hashlib.sha1(CONTENT).hexdigest(), len(CONTENT))
    path = write(tmp_path, "pnr.mime", mtom_message(pnr, attachments, http=http))
    status, lines, err = call(capsys, path)
    assert status == 0, lines + [err]
    assert lines[-1] == f"{path}: 0 errors, 0 warnings (iti-41, profile ihe)"


def test_an_mtom_document_whose_hash_and_size_disagree_is_refused(tmp_path, capsys):
    pnr, attachments = provide(hashlib.sha1(b"another document").hexdigest(), len(CONTENT) + 1)
    path = write(tmp_path, "pnr.mime", mtom_message(pnr, attachments, http=True))
    status, found = findings(capsys, path)
    assert status == 1
    assert problems(found) == [(E.REPOSITORY_METADATA_ERROR, "Document01")] * 2
    messages = " ".join(f["message"] for f in found)
    assert "size" in messages and "hash" in messages and hashlib.sha1(CONTENT).hexdigest() in messages
    # The findings describe the document, they never quote it.
    assert "lab report" not in messages


def test_an_inline_provide_is_checked_against_its_base64_document(tmp_path, capsys):
    pnr, _ = provide_and_register(builder.simple_submission(PID, register=False, doc_kwargs={"size": 3}),
                                  {"Document01": CONTENT}, inline=True)
    status, found = findings(capsys, write(tmp_path, "pnr.xml", envelope(pnr, C.ACTION_PROVIDE)))
    assert status == 1
    assert problems(found) == [(E.REPOSITORY_METADATA_ERROR, "Document01")]
    assert f"its document is {len(CONTENT)} bytes" in found[0]["message"]


def test_a_document_without_its_entry_and_an_entry_without_its_document(tmp_path, capsys):
    pnr, attachments = provide()
    pnr.find(f"{{{C.NS_XDSB}}}Document").set("id", "Document02")
    status, found = findings(capsys, write(tmp_path, "pnr.mime", mtom_message(pnr, attachments, http=False)))
    assert status == 1
    assert problems(found) == [(E.MISSING_DOCUMENT, "Document01"), (E.MISSING_DOCUMENT_METADATA, "Document02")]


# --- the DMP profile -----------------------------------------------------------------------------------

def test_an_author_without_a_national_id_passes_ihe_and_is_refused_by_dmp(tmp_path, capsys):
    # The builder's author is an IHE XCN with a local number: no IdNat_PS (PROFILE.md B-9).
    path = write(tmp_path, "register.xml", xml(register_request()))
    status, found = findings(capsys, path)
    assert status == 0 and problems(found) == []
    status, found = findings(capsys, "--profile", "dmp", path)
    assert status == 1
    assert (dmp.AUTHOR_NATIONAL_ID, "Document01") in problems(found)
    assert {f["profile"] for f in found} == {"dmp"}


def test_a_dmp_submission_passes_and_its_rules_refuse_a_bad_author(tmp_path, capsys):
    good = M.submission(DMP_PATIENT)
    path = write(tmp_path, "good.mime", mtom_message(good.request, good.attachments, http=True))
    status, found = findings(capsys, "--profile", "dmp", path)
    assert status == 0, problems(found)

    bad = M.submission(DMP_PATIENT, M.Document(patient=DMP_PATIENT, author=M.xcn("89990006348")))
    # The signature document is written by the document's author: only the document keeps the bad one.
    sig = bad.request.find(f".//{{{C.NS_RIM}}}ExtrinsicObject[@id='Signature01']")
    for value in sig.iterfind(f".//{{{C.NS_RIM}}}Slot[@name='authorPerson']/{{{C.NS_RIM}}}ValueList/{{{C.NS_RIM}}}Value"):
        value.text = M.xcn()
    path = write(tmp_path, "bad.mime", mtom_message(bad.request, bad.attachments, http=True))
    status, found = findings(capsys, "--profile", "dmp", path)
    assert status == 1
    assert problems(found) == [(dmp.AUTHOR_NATIONAL_ID, "Document01")]


def test_a_cda_contradicting_its_metadata_is_an_error_and_lenient_makes_it_a_warning(tmp_path, capsys):
    sub = M.submission(DMP_PATIENT, M.Document(patient=DMP_PATIENT, cda_id="1.2.250.1.999.1.1.7898.77"))
    path = write(tmp_path, "cda.mime", mtom_message(sub.request, sub.attachments, http=True))
    status, found = findings(capsys, "--profile", "dmp", path)
    assert status == 1
    assert [code for code, _ in problems(found)] == ["DMPCdaUniqueId"]
    status, found = findings(capsys, "--profile", "dmp", "--lenient", path)
    assert status == 0
    assert [code for code, _ in problems(found, "warning")] == ["DMPCdaUniqueId"]


def test_implied_references_accepts_a_nested_classification_without_its_parent(tmp_path, capsys):
    request = register_request()
    nested = request.find(f".//{{{C.NS_RIM}}}ExtrinsicObject/{{{C.NS_RIM}}}Classification")
    del nested.attrib["classifiedObject"]
    path = write(tmp_path, "implied.xml", xml(request))
    status, found = findings(capsys, path)
    assert status == 1 and problems(found)[0][1] == "Document01"
    status, found = findings(capsys, "--implied-references", path)
    assert status == 0 and problems(found) == [] and problems(found, "warning")


# --- the other transactions ------------------------------------------------------------------------------

def test_a_stored_query_with_a_bad_parameter_names_it(tmp_path, capsys):
    query = builder.adhoc_query_request(C.SQ_FIND_DOCUMENTS, [
        ("$XDSDocumentEntryPatientId", f"'{PID}'"), ("$XDSDocumentEntryStatus", f"('{C.STATUS_APPROVED}')"),
        ("$XDSDocumentEntryCreationTimeFrom", "2024-13")])
    path = write(tmp_path, "query.xml", envelope(query, C.ACTION_QUERY))
    status, lines, _ = call(capsys, path)
    assert status == 1
    assert [line.split(":")[0] for line in lines if line.startswith("ERROR")] == \
        [f"ERROR {E.REGISTRY_ERROR} at $XDSDocumentEntryCreationTimeFrom"]
    assert lines[-1] == f"{path}: 1 error, 0 warnings (iti-18, profile ihe)"


def test_a_stored_query_missing_its_required_parameter(tmp_path, capsys):
    query = builder.adhoc_query_request(C.SQ_FIND_DOCUMENTS, [("$XDSDocumentEntryStatus", f"('{C.STATUS_APPROVED}')")])
    status, found = findings(capsys, write(tmp_path, "query.xml", xml(query)))
    assert status == 1
    assert problems(found) == [(E.STORED_QUERY_MISSING_PARAM, "$XDSDocumentEntryPatientId")]


def test_an_update_is_told_from_a_register_by_its_operations(tmp_path, capsys):
    objects = [builder.submission_set(PID), builder.submission_set_marker(),
               builder.status_change("urn:uuid:5b2f4c8e-1d1e-4c3a-9e55-2a1c3f0e7d10", C.STATUS_APPROVED,
                                     C.STATUS_DEPRECATED)]
    path = write(tmp_path, "update.xml", xml(builder.submit_objects_request(objects)))
    status, lines, _ = call(capsys, path)
    assert status == 0, lines
    assert lines[-1].endswith("(iti-57, profile ihe)")

    objects[-1] = builder.status_change("urn:uuid:5b2f4c8e-1d1e-4c3a-9e55-2a1c3f0e7d10", C.STATUS_APPROVED,
                                        "urn:oasis:names:tc:ebxml-regrep:StatusType:Gone")
    status, found = findings(capsys, write(tmp_path, "update.xml", xml(builder.submit_objects_request(objects))))
    assert status == 1
    assert problems(found) == [(E.METADATA_UPDATE_ERROR, "uas")]


@pytest.mark.parametrize("body,action,transaction", [
    (lambda: register_request(), None, "iti-42"),
    (lambda: register_request(), C.ACTION_REGISTER, "iti-42"),
    (lambda: register_request(), C.ACTION_UPDATE, "iti-57"),
    (lambda: provide_and_register(builder.simple_submission(PID, register=False), {"Document01": CONTENT},
                                  inline=True)[0], None, "iti-41"),
    (lambda: builder.find_documents_request(PID), None, "iti-18"),
    (lambda: builder.retrieve_request("1.2.3.4.5", "1.2.250.1.999.3.1"), None, "iti-43"),
    (lambda: builder.remove_objects_request("urn:uuid:5b2f4c8e-1d1e-4c3a-9e55-2a1c3f0e7d10"), None, "iti-62"),
    (lambda: builder.remove_documents_request(("1.2.250.1.999.3.1", "1.2.3.4.5")), None, "iti-86"),
], ids=["body", "register-action", "update-action", "provide", "query", "retrieve", "delete", "remove-documents"])
def test_the_transaction_is_found_from_the_action_or_the_body(tmp_path, capsys, body, action, transaction):
    data = envelope(body(), action) if action else xml(body())
    status, found = findings(capsys, write(tmp_path, "message.xml", data))
    assert {f["transaction"] for f in found} == {transaction}
    if transaction != "iti-57":  # a plain register read as an update has no operation
        assert status == 0, problems(found)


def test_the_transaction_given_overrides_the_detection(tmp_path, capsys):
    path = write(tmp_path, "register.xml", xml(register_request()))
    status, found = findings(capsys, "--transaction", "ITI-18", path)
    assert status == 1
    assert problems(found) == [(E.REGISTRY_ERROR, "AdhocQueryRequest")]
    assert {f["transaction"] for f in found} == {"iti-18"}


def test_a_retrieve_without_its_repository_id(tmp_path, capsys):
    request = builder.retrieve_request("1.2.3.4.5", "1.2.250.1.999.3.1")
    repo = request.find(f".//{{{C.NS_XDSB}}}RepositoryUniqueId")
    repo.getparent().remove(repo)
    status, found = findings(capsys, write(tmp_path, "retrieve.xml", xml(request)))
    assert status == 1
    assert problems(found) == [(E.REPOSITORY_ERROR, "1.2.3.4.5")]


# --- inputs it cannot read -------------------------------------------------------------------------------

def test_xml_that_is_not_well_formed_exits_2_with_line_and_column(tmp_path):
    path = write(tmp_path, "broken.xml", b"<?xml version='1.0'?>\n<lcm:SubmitObjectsRequest xmlns:lcm='x'>\n"
                                         b"  <secret>patient data</wrong>\n</lcm:SubmitObjectsRequest>\n")
    done = run(path)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert err.startswith(f"{path}: ") and "not well-formed" in err and "line 3" in err and "column" in err
    assert "patient data" not in err and done.stdout == b""


def test_a_body_of_no_known_transaction_exits_2(tmp_path, capsys):
    status, lines, err = call(capsys, write(tmp_path, "other.xml", b"<Something xmlns='urn:x'/>"))
    assert status == 2 and lines == []
    assert "<Something>" in err and "--transaction" in err


def test_a_missing_file_and_an_mtom_body_with_another_boundary_exit_2(tmp_path, capsys):
    status, _, err = call(capsys, str(tmp_path / "absent.xml"))
    assert status == 2 and "cannot open" in err
    pnr, attachments = provide()
    data = mtom_message(pnr, attachments, http=True)
    head, _, body = data.partition(b"\r\n\r\n")
    path = write(tmp_path, "wrong.mime", head.replace(b'boundary="', b'boundary="X') + b"\r\n\r\n" + body)
    status, _, err = call(capsys, path)
    assert status == 2 and "never occurs" in err


def test_the_worst_outcome_of_several_files_is_the_exit_status(tmp_path, capsys):
    good = write(tmp_path, "good.xml", xml(register_request()))
    bad = write(tmp_path, "bad.xml", xml(register_request(creation_time="2024-01")))
    status, lines, _ = call(capsys, good, bad)
    assert status == 1
    assert [line.split(":")[0] for line in lines if line.endswith(SUMMARY_TAIL)] == [good, bad]
    broken = write(tmp_path, "broken.xml", b"<unclosed>")
    status, lines, err = call(capsys, good, broken, bad)
    assert status == 2 and err.startswith(f"{broken}: ")
    assert [line.split(":")[0] for line in lines if line.endswith(SUMMARY_TAIL)] == [good, bad]


# --- stdin and --quiet ---------------------------------------------------------------------------------

def test_stdin_is_read_when_the_file_is_a_dash():
    pnr, attachments = provide(hashlib.sha1(b"x").hexdigest())
    done = run("-", stdin=mtom_message(pnr, attachments, http=True))
    out = done.stdout.decode().splitlines()
    assert done.returncode == 1
    assert [line.split(":")[0] for line in out if line.startswith("ERROR")] == \
        [f"ERROR {E.REPOSITORY_METADATA_ERROR} at Document01"]
    assert out[-1] == "<stdin>: 1 error, 0 warnings (iti-41, profile ihe)"


def test_quiet_prints_the_errors_only(tmp_path, capsys):
    good = write(tmp_path, "good.xml", xml(register_request()))
    status, lines, _ = call(capsys, "--quiet", good)
    assert status == 0 and lines == []
    bad = write(tmp_path, "bad.xml", xml(register_request(creation_time="2024-01-01")))
    status, lines, _ = call(capsys, "-q", bad)
    assert status == 1 and len(lines) == 1 and lines[0].startswith("ERROR ")


def test_validation_opens_no_database_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    pnr, attachments = provide()
    write(tmp_path, "pnr.mime", mtom_message(pnr, attachments, http=True))
    before = sorted(os.listdir(tmp_path))
    status, _, _ = call(capsys, "pnr.mime")
    assert status == 0
    assert sorted(os.listdir(tmp_path)) == before  # no xds-data, no database file, no spool left
