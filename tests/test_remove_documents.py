"""ITI-86 Remove Documents over real HTTP against an all-in-one server, on SQLite and PostgreSQL:
a removed document is gone from the database and the disk and can no longer be retrieved."""
from __future__ import annotations

import pytest

from repository.remove import remove_documents
from repository.store import DocumentRow, RepositoryStore
from xds import builder
from xds import constants as C
from xds.builder import remove_documents_request as remove_request
from xds import errors as E
from tests.helpers import unique_ids
from tests.test_repository_http import NS, REPO, client, leftovers, patient, provide, retrieve, start, status_codes


@pytest.fixture
def server(db_url, tmp_path):
    services = start(tmp_path, db=db_url)
    yield services
    services.stop()


def remove(server, *items, use_mtom=False):
    reply = client(server).call(C.ACTION_REMOVE_DOCUMENTS, remove_request(*items), use_mtom=use_mtom)
    assert reply.status == 200
    assert reply.envelope.action == C.response_action(C.ACTION_REMOVE_DOCUMENTS)
    assert reply.body.tag == C.q(C.NS_RS, "RegistryResponse")
    assert reply.mtom is None and reply.content_type.startswith("application/soap+xml")
    return reply


def stored(server, n=1) -> list[str]:
    """Provide n documents; returns their uniqueIds."""
    req = builder.simple_submission(patient(server), n, register=False)
    uids = unique_ids(req)
    docs = {sym: f"content of {sym}".encode() for sym in uids}
    assert status_codes(provide(server, req, docs).body) == (C.RESPONSE_SUCCESS, [])
    return [uids[f"Document{i:02d}"] for i in range(1, n + 1)]


def test_removed_document_is_gone(server):
    [uid] = stored(server)
    before = leftovers(server)
    assert before["rows"] == 1 and len(before["objects"]) == 1
    assert status_codes(remove(server, (REPO, uid)).body) == (C.RESPONSE_SUCCESS, [])
    reply, docs = retrieve(server, uid)
    assert docs == {} and status_codes(reply.body) == (C.RESPONSE_FAILURE, [E.DOCUMENT_UNIQUE_ID_ERROR])
    after = leftovers(server)
    assert after["rows"] == 0 and after["objects"] == []
    assert server.repository.store.get(uid) is None


def test_two_documents_in_one_request_even_sent_as_mtom(server):
    uids = stored(server, 2)
    reply = remove(server, *[(REPO, u) for u in uids], use_mtom=True)
    assert status_codes(reply.body) == (C.RESPONSE_SUCCESS, [])
    assert leftovers(server)["objects"] == [] and leftovers(server)["rows"] == 0
    assert retrieve(server, *uids)[1] == {}


def test_wrong_repository_changes_nothing(server):
    [uid] = stored(server)
    reply = remove(server, ("1.2.3.4.5.999", uid))
    assert status_codes(reply.body) == (C.RESPONSE_FAILURE, [E.UNKNOWN_REPOSITORY_ID])
    assert reply.body.find(".//rs:RegistryError", NS).get("location") == "1.2.3.4.5.999"
    assert retrieve(server, uid)[1][uid][0] == b"content of Document01"


def test_unknown_document(server):
    [uid] = stored(server)
    reply = remove(server, (REPO, "1.2.3.404"))
    assert status_codes(reply.body) == (C.RESPONSE_FAILURE, [E.DOCUMENT_UNIQUE_ID_ERROR])
    assert reply.body.find(".//rs:RegistryError", NS).get("location") == "1.2.3.404"
    assert retrieve(server, uid)[1][uid][0] == b"content of Document01"


def test_removing_twice_finds_nothing_the_second_time(server):
    [uid] = stored(server)
    remove(server, (REPO, uid))
    assert status_codes(remove(server, (REPO, uid)).body) == (C.RESPONSE_FAILURE, [E.DOCUMENT_UNIQUE_ID_ERROR])


def test_a_mix_is_partial_success(server):
    first, second = stored(server, 2)
    reply = remove(server, (REPO, first), ("9.9.9", second), (REPO, "1.2.3.404"), (REPO, first))
    assert status_codes(reply.body) == (C.RESPONSE_PARTIAL_SUCCESS,
                                        [E.UNKNOWN_REPOSITORY_ID, E.DOCUMENT_UNIQUE_ID_ERROR])
    _, docs = retrieve(server, first, second)
    assert set(docs) == {second}
    assert leftovers(server)["rows"] == 1 and len(leftovers(server)["objects"]) == 1


def test_malformed_requests(server):
    [uid] = stored(server)
    empty = client(server).call(C.ACTION_REMOVE_DOCUMENTS, remove_request())
    assert status_codes(empty.body) == (C.RESPONSE_FAILURE, [E.REPOSITORY_ERROR])
    assert "RemoveDocumentsRequest" in empty.body.find(".//rs:RegistryError", NS).get("codeContext")
    wrong_root = remove_request((REPO, uid))
    wrong_root.tag = C.q(C.NS_XDSB, "RetrieveDocumentSetRequest")
    reply = client(server).call(C.ACTION_REMOVE_DOCUMENTS, wrong_root)
    assert reply.body.tag == C.q(C.NS_RS, "RegistryResponse") and reply.mtom is None
    assert status_codes(reply.body) == (C.RESPONSE_FAILURE, [E.REPOSITORY_ERROR])
    no_uid = remove_request((REPO, uid))
    no_uid[0].remove(no_uid[0][1])
    assert status_codes(client(server).call(C.ACTION_REMOVE_DOCUMENTS, no_uid).body) == \
        (C.RESPONSE_FAILURE, [E.REPOSITORY_ERROR])
    assert retrieve(server, uid)[1][uid][0] == b"content of Document01"


def test_a_failed_file_deletion_keeps_the_rows(db_url, tmp_path):
    """Files go inside the database transaction: if that fails, the rows stay for a retry."""
    store = RepositoryStore(db_url)
    store.create_schema()
    store.add([DocumentRow("1.2.3.1", "0" * 40, 1, "text/plain", "aa/bb/one", REPO),
               DocumentRow("1.2.3.2", "0" * 40, 1, "text/plain", "aa/bb/two", REPO)])

    class Broken:
        def delete(self, location):
            raise PermissionError(location)

    with pytest.raises(PermissionError):
        remove_documents(remove_request((REPO, "1.2.3.1"), (REPO, "1.2.3.2")), store, Broken(), REPO)
    assert store.count() == 2

    deleted = []

    class Files:
        def delete(self, location):
            deleted.append(location)

    reply = remove_documents(remove_request((REPO, "1.2.3.2")), store, Files(), REPO)
    assert reply.get("status") == C.RESPONSE_SUCCESS
    assert deleted == ["aa/bb/two"] and store.count() == 1 and store.get("1.2.3.1") is not None
