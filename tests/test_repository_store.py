"""The document store (files) and the repository's rows (database)."""
import errno
import hashlib
import io
import os

import pytest

from repository import blobs as B
from repository import schema as RS
from repository.blobs import FileSystemBlobStore, location_for
from repository.store import DocumentRow, RepositoryStore


@pytest.fixture
def store(tmp_path):
    return FileSystemBlobStore(str(tmp_path / "documents"))


def spooled(tmp_path, data: bytes, name="part") -> str:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    p = spool / name
    p.write_bytes(data)
    return str(p)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def files_under(path) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]


def test_stage_moves_a_spooled_part_without_copying(store, tmp_path):
    data = b"\r\nbinary\x00\xff\r\n"
    src = spooled(tmp_path, data)
    inode = os.stat(src).st_ino
    staged = store.stage(src, sha1=sha1(data), size=len(data))
    assert not os.path.exists(src)
    assert os.stat(staged.key).st_ino == inode  # renamed, not copied
    assert (staged.size, staged.sha1) == (len(data), sha1(data))
    assert store.staged_names() == [os.path.basename(staged.key)]


def test_stage_copies_when_asked_not_to_move(store, tmp_path):
    src = spooled(tmp_path, b"abc")
    staged = store.stage(src, sha1=sha1(b"abc"), size=3, move=False)
    assert os.path.exists(src) and open(staged.key, "rb").read() == b"abc"


def test_stage_from_a_stream_and_an_iterable_computes_hash_and_size(store):
    a = store.stage(io.BytesIO(b"x" * 3_000_000))
    assert (a.size, a.sha1) == (3_000_000, sha1(b"x" * 3_000_000))
    b = store.stage(iter([b"ab", b"", b"cd"]))
    assert (b.size, b.sha1) == (4, sha1(b"abcd"))


def test_stage_falls_back_to_copy_across_file_systems(store, tmp_path, monkeypatch):
    src = spooled(tmp_path, b"other fs")
    real_replace = os.replace

    def replace(a, b):
        if a == src:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(a, b)

    monkeypatch.setattr(B.os, "replace", replace)
    staged = store.stage(src, sha1=sha1(b"other fs"), size=8)
    assert open(staged.key, "rb").read() == b"other fs"
    assert len(store.staged_names()) == 1  # the placeholder name was not left behind


def test_failed_stage_leaves_nothing(store):
    def broken():
        yield b"some"
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        store.stage(broken())
    assert store.staged_names() == []


def test_commit_makes_the_document_readable_at_a_fanned_out_location(store, tmp_path):
    staged = store.stage(iter([b"content"]))
    loc = store.commit(staged, "1.2.3.4")
    digest = hashlib.sha256(b"1.2.3.4").hexdigest()
    assert loc == location_for("1.2.3.4") == f"{digest[:2]}/{digest[2:4]}/{digest}"
    with store.open(loc) as f:
        assert f.read() == b"content"
    assert store.staged_names() == []
    assert store.local_path(loc) == os.path.join(store.objects, loc)
    assert store.exists(loc)
    store.delete(loc)
    assert not store.exists(loc)
    store.delete(loc)  # deleting twice is harmless


def test_discard_is_idempotent(store):
    staged = store.stage(iter([b"x"]))
    store.discard(staged)
    store.discard(staged)
    assert store.staged_names() == []


def test_locations_cannot_escape_the_store(store):
    with pytest.raises(ValueError):
        store.open("../../etc/passwd")


def test_odd_unique_ids_still_give_safe_file_names(store):
    for uid in ("../../x", "a/b\\c", "urn:oid:1.2", "é" * 300):
        loc = store.commit(store.stage(iter([b"1"])), uid)
        assert ".." not in loc and store.exists(loc)


def test_clean_staging_removes_leftovers(store):
    store.stage(iter([b"1"]))
    store.stage(iter([b"2"]))
    assert store.clean_staging() == 2 and store.staged_names() == []


def test_non_durable_store_still_works(tmp_path):
    fast = FileSystemBlobStore(str(tmp_path / "fast"), durable=False)
    loc = fast.commit(fast.stage(iter([b"abc"])), "1.2")
    assert fast.open(loc).read() == b"abc"


# --- database rows ------------------------------------------------------------------------------

def row(uid: str, h: str = "a" * 40) -> DocumentRow:
    return DocumentRow(uid, h, 3, "text/plain", location_for(uid), "1.2.250.1.999.3.1")


def test_rows_round_trip_and_duplicates_are_reported(db_url):
    rs = RepositoryStore(db_url)
    rs.create_schema()
    assert rs.add([row("1.1"), row("1.2")]) == []
    got = rs.get_many(["1.1", "1.2", "1.3"])
    assert set(got) == {"1.1", "1.2"}
    assert got["1.1"].size == 3 and got["1.1"].mime_type == "text/plain" and got["1.1"].created is not None
    skipped = rs.add([row("1.2"), row("1.4")])
    assert [r.unique_id for r in skipped] == ["1.2"]
    assert rs.count() == 3 and rs.get("1.4") is not None and rs.get("nope") is None


def test_repository_tables_live_beside_the_registry_tables(db_url):
    from sqlalchemy import inspect

    from registry.store import RegistryStore

    reg = RegistryStore(db_url)
    reg.create_schema()
    rs = RepositoryStore(reg.engine)
    rs.create_schema()
    names = inspect(reg.engine).get_table_names()
    assert "repo_document" in names and "reg_object" in names
    assert all(name.startswith("repo_") for name in RS.metadata.tables)


def test_many_ids_are_looked_up_in_bounded_chunks(sqlite_url):
    rs = RepositoryStore(sqlite_url)
    rs.create_schema()
    rs.add([row(f"1.{i}") for i in range(1200)])
    assert len(rs.get_many(f"1.{i}" for i in range(1300))) == 1200
