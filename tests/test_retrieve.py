"""ITI-43 logic without HTTP: which documents are answered, with which errors and status."""
import os

import pytest
from lxml import etree

from repository.blobs import FileSystemBlobStore
from repository.retrieve import retrieve, retrieve_response
from repository.store import DocumentRow, RepositoryStore
from node.transfer import retrieve_request
from xds import constants as C
from xds import errors as E
from xds.errors import XdsError, XdsException

REPO = "1.2.250.1.999.3.1"
NS = {"x": C.NS_XDSB, "rs": C.NS_RS, "xop": C.NS_XOP}


@pytest.fixture
def repo(tmp_path, sqlite_url):
    store = RepositoryStore(sqlite_url)
    store.create_schema()
    blobs = FileSystemBlobStore(str(tmp_path / "documents"))
    for uid, data, mime in (("1.1", b"one", "text/plain"), ("1.2", b"\r\ntwo\r\n", "text/goofy"),
                            ("1.3", b"%PDF", 'bad"type')):
        loc = blobs.commit(blobs.stage(iter([data])), uid)
        store.add([DocumentRow(uid, "a" * 40, len(data), mime, loc, REPO)])
    return store, blobs


def request(*items, home=None):
    req = etree.Element(f"{{{C.NS_XDSB}}}RetrieveDocumentSetRequest", nsmap={"xdsb": C.NS_XDSB})
    for repo_id, uid in items:
        dr = etree.SubElement(req, f"{{{C.NS_XDSB}}}DocumentRequest")
        if home:
            etree.SubElement(dr, f"{{{C.NS_XDSB}}}HomeCommunityId").text = home
        if repo_id is not None:
            etree.SubElement(dr, f"{{{C.NS_XDSB}}}RepositoryUniqueId").text = repo_id
        if uid is not None:
            etree.SubElement(dr, f"{{{C.NS_XDSB}}}DocumentUniqueId").text = uid
    return req


def run(repo, req):
    store, blobs = repo
    return retrieve(req, store, blobs, REPO)


def status_and_codes(resp):
    rr = resp.find("rs:RegistryResponse", NS)
    return rr.get("status"), [(e.get("errorCode"), e.get("location")) for e in rr.iterfind(".//rs:RegistryError", NS)]


def test_all_found(repo):
    resp, atts = run(repo, request((REPO, "1.1"), (REPO, "1.2")))
    assert resp.tag == f"{{{C.NS_XDSB}}}RetrieveDocumentSetResponse"
    assert status_and_codes(resp) == (C.RESPONSE_SUCCESS, [])
    drs = resp.findall("x:DocumentResponse", NS)
    assert [etree.QName(c).localname for c in drs[0]] == [
        "RepositoryUniqueId", "DocumentUniqueId", "mimeType", "Document"]
    assert [d.findtext("x:mimeType", namespaces=NS) for d in drs] == ["text/plain", "text/goofy"]
    cids = [d.find("x:Document/xop:Include", NS).get("href")[4:] for d in drs]
    assert [a[0] for a in atts] == cids
    assert [open(a[2], "rb").read() for a in atts] == [b"one", b"\r\ntwo\r\n"]


def test_unknown_document_makes_partial_success(repo):
    resp, atts = run(repo, request((REPO, "1.1"), (REPO, "9.9"), (REPO, "1.2")))
    assert status_and_codes(resp) == (C.RESPONSE_PARTIAL_SUCCESS, [(E.DOCUMENT_UNIQUE_ID_ERROR, "9.9")])
    assert len(resp.findall("x:DocumentResponse", NS)) == len(atts) == 2


def test_nothing_found_is_failure(repo):
    resp, atts = run(repo, request((REPO, "9.8"), (REPO, "9.9")))
    assert status_and_codes(resp) == (C.RESPONSE_FAILURE, [(E.DOCUMENT_UNIQUE_ID_ERROR, "9.8"),
                                                           (E.DOCUMENT_UNIQUE_ID_ERROR, "9.9")])
    assert atts == [] and resp.find("x:DocumentResponse", NS) is None


def test_foreign_repository(repo):
    resp, _ = run(repo, request(("1.2.3.4.5", "1.1"), (REPO, "1.1")))
    assert status_and_codes(resp) == (C.RESPONSE_PARTIAL_SUCCESS, [(E.UNKNOWN_REPOSITORY_ID, "1.2.3.4.5")])


def test_home_community_is_echoed(repo):
    resp, _ = run(repo, request((REPO, "1.1"), home="urn:oid:1.2.3"))
    assert resp.findtext("x:DocumentResponse/x:HomeCommunityId", namespaces=NS) == "urn:oid:1.2.3"


def test_unsafe_mime_type_is_not_used_as_a_part_header(repo):
    resp, atts = run(repo, request((REPO, "1.3")))
    assert resp.findtext("x:DocumentResponse/x:mimeType", namespaces=NS) == 'bad"type'
    assert atts[0][1] == "application/octet-stream"


def test_content_missing_on_disk_is_a_repository_error(repo):
    store, blobs = repo
    os.unlink(blobs.local_path(store.get("1.1").location))
    resp, _ = run(repo, request((REPO, "1.1"), (REPO, "1.2")))
    assert status_and_codes(resp) == (C.RESPONSE_PARTIAL_SUCCESS, [(E.REPOSITORY_ERROR, "1.1")])


@pytest.mark.parametrize("items,words", [
    ([(None, "1.1")], "no RepositoryUniqueId"),
    ([(REPO, None)], "no DocumentUniqueId"),
    ([(REPO, "1.1"), (REPO, "  ")], "DocumentRequest #2 has no DocumentUniqueId"),
    ([], "no DocumentRequest"),
])
def test_incomplete_requests(repo, items, words):
    with pytest.raises(XdsException) as info:
        run(repo, request(*items))
    assert info.value.errors[0].code == E.REPOSITORY_ERROR and words in info.value.errors[0].message


def test_wrong_body_element(repo):
    with pytest.raises(XdsException) as info:
        run(repo, etree.Element("other"))
    assert info.value.errors[0].code == E.REPOSITORY_ERROR


def test_error_payload_wraps_a_registry_response():
    resp = retrieve_response([XdsError(E.REPOSITORY_ERROR, "boom")])
    assert status_and_codes(resp) == (C.RESPONSE_FAILURE, [(E.REPOSITORY_ERROR, "")])


def test_client_request_builder_matches_the_reader(repo):
    resp, atts = run(repo, retrieve_request("1.2", REPO, home="urn:oid:9"))
    assert len(atts) == 1 and status_and_codes(resp)[0] == C.RESPONSE_SUCCESS
