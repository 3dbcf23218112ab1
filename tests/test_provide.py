"""ITI-41 logic without HTTP: the repository actor with an in-process registry on both databases."""
import datetime
import hashlib
import os
import socket

import pytest
from lxml import etree

from registry.config import RegistryConfig
from registry.service import RegistryActor
from repository.blobs import FileSystemBlobStore
from repository.forward import InProcessRegistry, RemoteRegistry
from repository.provide import Provide
from repository.store import RepositoryStore
from node.transfer import provide_and_register
from xds import builder, ebrim
from xds import constants as C
from xds import errors as E
from xds.errors import XdsError, XdsException
from xds.mtom import Attachment, MtomMessage, resolve_xop
from xds.registered import Registered
from tests.helpers import by_unique_id, make_store, new_pid, unique_ids

REPO = "1.2.250.1.999.3.1"


class Repo:
    """A Provide with real stores, and files standing in for the MTOM reader's spool."""

    def __init__(self, tmp_path, db_url, registry=None):
        self.registry_store = make_store(db_url)
        self.actor = RegistryActor(self.registry_store, RegistryConfig())
        self.store = RepositoryStore(self.registry_store.engine)
        self.store.create_schema()
        self.blobs = FileSystemBlobStore(str(tmp_path / "documents"))
        self.spool = tmp_path / "spool"
        self.spool.mkdir()
        self.handler = Provide(self.blobs, self.store, registry or InProcessRegistry(self.actor), REPO, 10_000_000)

    def provide(self, pnr, message: MtomMessage | None):
        """The ITI-41 handler as the HTTP application calls it: the xop:Includes resolved beforehand."""
        return self.handler(pnr, message, resolve_xop(pnr, message) if message is not None else None)

    def message(self, attachments) -> MtomMessage:
        parts = {}
        for cid, _, data in attachments:
            p = self.spool / cid
            p.write_bytes(data)
            parts[cid] = Attachment(cid, "application/octet-stream", str(p), len(data),
                                    hashlib.sha1(data).hexdigest())
        return MtomMessage(b"", "", parts)

    def send(self, request, documents, inline=False):
        pnr, attachments = provide_and_register(request, documents, inline=inline)
        message = None if inline else self.message(attachments)
        try:
            return self.provide(pnr, message)
        finally:
            if message is not None:
                message.cleanup()

    def codes(self, request, documents, **kw) -> list[str]:
        with pytest.raises(XdsException) as info:
            self.send(request, documents, **kw)
        self.assert_nothing_kept()
        return [e.code for e in info.value.errors]

    def assert_nothing_kept(self):
        assert self.blobs.staged_names() == []
        assert [f for _, _, fs in os.walk(self.blobs.objects) for f in fs] == []
        assert self.store.count() == 0
        assert os.listdir(self.spool) == []


@pytest.fixture
def repo(tmp_path, db_url):
    return Repo(tmp_path, db_url)


def patient(repo) -> str:
    pid = new_pid()
    repo.registry_store.add_patient(pid)
    return pid


def request_for(pid, n=1, **doc_kwargs):
    return builder.simple_submission(pid, n, register=False, doc_kwargs=doc_kwargs)


def entry(request, ident="Document01"):
    return request.find(f".//{{{C.NS_RIM}}}ExtrinsicObject[@id='{ident}']")


def slot_values(el, name):
    return [v.text for s in el.findall(f"{{{C.NS_RIM}}}Slot") if s.get("name") == name
            for v in s.iter(f"{{{C.NS_RIM}}}Value")]


@pytest.mark.parametrize("inline", [False, True])
def test_provide_stores_documents_and_registers_repository_slots(repo, inline):
    pid = patient(repo)
    req = request_for(pid, 2)
    uids = unique_ids(req)
    docs = {"Document01": b"\r\nfirst\x00\r\n", "Document02": "deuxième".encode()}
    assert repo.send(req, docs, inline=inline) == []
    for ident, data in docs.items():
        row = repo.store.get(uids[ident])
        assert (row.hash, row.size, row.repository_unique_id) == (hashlib.sha1(data).hexdigest(), len(data), REPO)
        with repo.blobs.open(row.location) as f:
            assert f.read() == data
        registered = etree.fromstring(by_unique_id(repo.registry_store, uids[ident])[0].xml)
        assert slot_values(registered, "hash") == [hashlib.sha1(data).hexdigest()]
        assert slot_values(registered, "size") == [str(len(data))]
        assert slot_values(registered, "repositoryUniqueId") == [REPO]
    assert repo.blobs.staged_names() == [] and os.listdir(repo.spool) == []


def test_slots_are_added_before_name_in_schema_order(repo):
    pid = patient(repo)
    req = request_for(pid)
    de = entry(req)
    repo.send(req, {"Document01": b"x"})
    tags = [etree.QName(c).localname for c in de]
    assert tags.index("Name") > max(i for i, t in enumerate(tags) if t == "Slot")


def test_upper_case_hash_and_matching_size_are_accepted_and_kept(repo):
    pid = patient(repo)
    data = b"upper case hash"
    digest = hashlib.sha1(data).hexdigest().upper()
    req = request_for(pid, hash=digest, size=len(data))
    uid = unique_ids(req)["Document01"]
    assert repo.send(req, {"Document01": data}) == []
    registered = etree.fromstring(by_unique_id(repo.registry_store, uid)[0].xml)
    assert slot_values(registered, "hash") == [digest]


def test_own_repository_id_is_accepted(repo):
    pid = patient(repo)
    assert repo.send(request_for(pid, repository_unique_id=REPO), {"Document01": b"x"}) == []


def test_hash_mismatch(repo):
    pid = patient(repo)
    with pytest.raises(XdsException) as info:
        repo.send(request_for(pid, hash="0" * 40), {"Document01": b"abc"})
    err = info.value.errors[0]
    assert err.code == E.REPOSITORY_METADATA_ERROR
    assert "0" * 40 in err.message and hashlib.sha1(b"abc").hexdigest() in err.message
    repo.assert_nothing_kept()


def test_size_mismatch(repo):
    pid = patient(repo)
    with pytest.raises(XdsException) as info:
        repo.send(request_for(pid, size=99), {"Document01": b"abc"})
    err = info.value.errors[0]
    assert err.code == E.REPOSITORY_METADATA_ERROR and "99" in err.message and "3 bytes" in err.message
    repo.assert_nothing_kept()


def test_foreign_repository_unique_id_is_replaced_with_a_warning(repo):
    pid = patient(repo)
    req = request_for(pid, repository_unique_id="1.2.3.999")
    warnings = repo.send(req, {"Document01": b"x"})
    assert [(w.code, w.severity) for w in warnings] == [(E.REPOSITORY_METADATA_ERROR, C.SEVERITY_WARNING)]
    assert "1.2.3.999" in warnings[0].message and warnings[0].location == "Document01"


def test_entry_without_document(repo):
    pid = patient(repo)
    req = request_for(pid, 2)
    with pytest.raises(XdsException) as info:
        repo.send(req, {"Document01": b"x"})
    err = info.value.errors[0]
    assert err.code == E.MISSING_DOCUMENT and "Document02" in err.message and err.location == "Document02"
    assert unique_ids(req)["Document02"] in err.message
    repo.assert_nothing_kept()


def test_document_without_entry(repo):
    pid = patient(repo)
    with pytest.raises(XdsException) as info:
        repo.send(request_for(pid), {"Document01": b"x", "Stray": b"y"})
    assert [(e.code, e.location) for e in info.value.errors] == [(E.MISSING_DOCUMENT_METADATA, "Stray")]
    repo.assert_nothing_kept()


def test_every_problem_is_reported_at_once(repo):
    pid = patient(repo)
    req = request_for(pid, 2, size=1)
    codes = repo.codes(req, {"Document01": b"abc", "Stray": b"y"})
    assert sorted(codes) == sorted([E.MISSING_DOCUMENT, E.MISSING_DOCUMENT_METADATA, E.REPOSITORY_METADATA_ERROR])


def test_duplicate_unique_ids_in_message(repo):
    pid = patient(repo)
    req = request_for(pid, 2, unique_id="1.2.250.1.999.1.42")
    assert E.REPOSITORY_DUPLICATE_UNIQUE_ID_IN_MESSAGE in repo.codes(req, {"Document01": b"a", "Document02": b"b"})


def test_metadata_errors_keep_the_validator_codes(repo):
    pid = patient(repo)
    req = request_for(pid)
    entry(req).attrib.pop("mimeType")
    codes = repo.codes(req, {"Document01": b"x"})
    assert codes and all(c == E.REGISTRY_METADATA_ERROR for c in codes)


def test_same_unique_id_with_another_hash_is_refused(repo):
    pid = patient(repo)
    uid = builder.new_oid()
    repo.send(request_for(pid, unique_id=uid), {"Document01": b"one"})
    with pytest.raises(XdsException) as info:
        repo.send(request_for(pid, unique_id=uid), {"Document01": b"two"})
    assert info.value.errors[0].code == E.NON_IDENTICAL_HASH and uid in info.value.errors[0].location
    assert repo.store.count() == 1 and repo.blobs.staged_names() == []


def test_same_unique_id_with_the_same_hash_keeps_the_stored_copy(tmp_path, db_url):
    calls = []

    class Accepting:
        def register(self, request, commit_before, forward=(), principal=None):
            calls.append(request)
            return [XdsError(E.EXTRA_METADATA_NOT_SAVED, "a warning", "x", C.SEVERITY_WARNING)]

    repo = Repo(tmp_path, db_url, Accepting())
    uid = builder.new_oid()
    repo.send(request_for("P^^^&1.2&ISO", unique_id=uid), {"Document01": b"same"})
    warnings = repo.send(request_for("P^^^&1.2&ISO", unique_id=uid), {"Document01": b"same"})
    assert [w.code for w in warnings] == [E.EXTRA_METADATA_NOT_SAVED]  # registry warnings pass through
    assert len(calls) == 2 and repo.store.count() == 1 and repo.blobs.staged_names() == []


def test_registry_failure_passes_back_unchanged_and_keeps_nothing(repo):
    req = request_for(new_pid())  # never fed to the registry
    with pytest.raises(XdsException) as info:
        repo.send(req, {"Document01": b"x"})
    assert [e.code for e in info.value.errors] == [E.UNKNOWN_PATIENT_ID]
    repo.assert_nothing_kept()


def test_registry_errors_from_a_remote_registry_are_kept_whole(tmp_path, db_url):
    errors = [XdsError(E.PATIENT_ID_DOES_NOT_MATCH, "pid differs", "Document01"),
              XdsError("XDSSomethingElse", "warned", "w", C.SEVERITY_WARNING)]

    class Refusing:
        def register(self, request, commit_before, forward=(), principal=None):
            raise XdsException.of(errors)

    repo = Repo(tmp_path, db_url, Refusing())
    with pytest.raises(XdsException) as info:
        repo.send(request_for("P^^^&1.2&ISO"), {"Document01": b"x"})
    assert info.value.errors == errors
    repo.assert_nothing_kept()


def test_unreachable_registry(tmp_path, db_url):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    repo = Repo(tmp_path, db_url, RemoteRegistry(f"http://127.0.0.1:{port}/xds/registry", timeout=5))
    assert repo.codes(request_for("P^^^&1.2&ISO"), {"Document01": b"x"}) == [E.REGISTRY_NOT_AVAILABLE]


def test_internal_error_in_the_registry_keeps_nothing(tmp_path, db_url):
    class Broken:
        # A fake registry link that fails in its own code; asked afterwards, it holds nothing.
        def register(self, request, commit_before, forward=(), principal=None):
            raise RuntimeError("database went away")

        def registered(self, repository_id, unique_ids=(), after=None, limit=None):
            return Registered(datetime.datetime.now(datetime.timezone.utc))

    repo = Repo(tmp_path, db_url, Broken())
    with pytest.raises(RuntimeError):
        repo.send(request_for("P^^^&1.2&ISO"), {"Document01": b"x"})
    repo.assert_nothing_kept()


def test_two_documents_may_share_one_mime_part(repo):
    pid = patient(repo)
    req = request_for(pid, 2)
    uids = unique_ids(req)
    pnr, attachments = provide_and_register(req, {"Document01": b"shared", "Document02": b"shared"})
    include = pnr.findall(f".//{{{C.NS_XOP}}}Include")
    include[1].set("href", include[0].get("href"))
    message = repo.message(attachments[:1])
    repo.provide(pnr, message)
    message.cleanup()
    for uid in uids.values():
        with repo.blobs.open(repo.store.get(uid).location) as f:
            assert f.read() == b"shared"


@pytest.mark.parametrize("text,words", [("not base64!!", "not valid base64"), ("abc", "multiple of 4"),
                                        ("é", "not base64")])
def test_bad_inline_content(repo, text, words):
    pid = patient(repo)
    pnr, _ = provide_and_register(request_for(pid), {"Document01": b""}, inline=True)
    pnr.find(f"{{{C.NS_XDSB}}}Document").text = text
    with pytest.raises(XdsException) as info:
        repo.provide(pnr, None)
    assert info.value.errors[0].code == E.REPOSITORY_ERROR and words in info.value.errors[0].message
    repo.assert_nothing_kept()


def test_inline_document_above_the_limit(tmp_path, db_url):
    repo = Repo(tmp_path, db_url)
    repo.handler.max_document_bytes = 1000
    pid = patient(repo)
    codes = repo.codes(request_for(pid), {"Document01": b"x" * 5000}, inline=True)
    assert codes == [E.REPOSITORY_ERROR]


def test_document_without_id_and_duplicate_document_ids(repo):
    pid = patient(repo)
    pnr, _ = provide_and_register(request_for(pid), {"Document01": b"a"}, inline=True)
    etree.SubElement(pnr, f"{{{C.NS_XDSB}}}Document").text = ""
    etree.SubElement(pnr, f"{{{C.NS_XDSB}}}Document", id="Document01").text = ""
    with pytest.raises(XdsException) as info:
        repo.provide(pnr, None)
    assert [e.code for e in info.value.errors] == [E.REPOSITORY_ERROR, E.REPOSITORY_ERROR]
    repo.assert_nothing_kept()


def test_wrong_body_element(repo):
    with pytest.raises(XdsException) as info:
        repo.provide(builder.simple_submission("P^^^&1.2&ISO"), None)
    assert info.value.errors[0].code == E.REPOSITORY_ERROR


def test_set_slot_replaces_an_existing_value():
    el = builder.document_entry("P^^^&1.2&ISO", hash="ABC")
    de = ebrim.read_object(el)
    de.set_slot("hash", ["def"])
    de.set_slot("size", ["3"])
    assert ebrim.to_element(de) is el
    assert slot_values(el, "hash") == ["def"] and slot_values(el, "size") == ["3"]
    names = [s.get("name") for s in el.findall(f"{{{C.NS_RIM}}}Slot")]
    assert names.index("size") == names.index("hash") + 1 and names[-1] == "size"
