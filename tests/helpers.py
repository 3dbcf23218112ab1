"""Shared test helpers: patient ids, submissions and lookups on a real RegistryStore."""
from __future__ import annotations

import itertools
import os

from lxml import etree
from sqlalchemy import select

from registry import schema as S
from registry.config import RegistryConfig
from registry.register import register
from registry.store import RegistryStore
from xds import builder
from xds import constants as C

_n = itertools.count(1)


def make_feed_server(patients, host: str = "0.0.0.0", port: int = 2575, **kwargs):
    """An ``MllpServer`` (not yet started) that applies ITI-8 messages to ``patients``."""
    from registry.feed import feed_handler, internal_error_ack
    from xds.mllp import MllpServer

    kwargs.setdefault("error_reply", internal_error_ack)
    return MllpServer(host, port, feed_handler(patients), **kwargs)


def new_pid(root: str = "1.2.250.1.213.1.4.10") -> str:
    return f"P{next(_n):06d}^^^&{root}&ISO"


_open_stores: list[RegistryStore] = []


def schema_store(url: str) -> RegistryStore:
    """A store on a new database with the registry's tables made. XDS_TEST_PARTITIONS=N makes them partitioned
    by patient on PostgreSQL (registry/partitions.py): the registry's tests then run on that layout, a wider
    check than tests/test_partitions.py, which CI runs."""
    partitions = int(os.environ.get("XDS_TEST_PARTITIONS") or 0) if url.startswith("postgresql") else 0
    store = RegistryStore(url, partitions=partitions or None)
    if partitions:
        store.migrate()
    else:
        store.create_schema()
    return store


def make_store(url: str, *patients: str) -> RegistryStore:
    store = schema_store(url)
    _open_stores.append(store)
    for p in patients:
        store.add_patient(p)
    return store


def dispose_stores() -> None:
    """Close the pools of the stores make_store opened (the db_url fixture does it after each test):
    left to the garbage collector, their idle connections exhaust the test PostgreSQL's clients."""
    while _open_stores:
        _open_stores.pop().engine.dispose()


def rows(store: RegistryStore, table) -> list:
    with store.reading() as c:
        return c.execute(select(table)).all()


def by_unique_id(store: RegistryStore, uid: str):
    with store.reading() as c:
        return c.execute(select(S.registry_object).where(S.registry_object.c.unique_id == uid)).all()


def count_all(store: RegistryStore) -> int:
    return sum(len(rows(store, t)) for t in (S.registry_object, S.association, S.doc_entry, S.object_code,
                                              S.object_author, S.folder, S.submission_set, S.reference_id))


def unique_ids(request: etree._Element) -> dict[str, str]:
    """symbolic id -> uniqueId for the DocumentEntries of a request."""
    out = {}
    for eo in request.iter(f"{{{C.NS_RIM}}}ExtrinsicObject"):
        for ei in eo.findall(f"{{{C.NS_RIM}}}ExternalIdentifier"):
            if ei.get("identificationScheme") == C.DE_UNIQUE_ID:
                out[eo.get("id")] = ei.get("value")
    return out


def submit(store: RegistryStore, request: etree._Element, config: RegistryConfig | None = None):
    return register(store, request, config or RegistryConfig())


def entry_id(store: RegistryStore, uid: str) -> str:
    found = by_unique_id(store, uid)
    assert len(found) == 1, found
    return found[0].id


def replacement(pid: str, target_id: str, type_: str = C.ASSOC_RPLC, **doc_kwargs) -> etree._Element:
    """A submission of one new entry related to an existing one (RPLC, APND, XFRM, ...)."""
    kw = {"hash": "da39a3ee5e6b4b0d3255bfef95601890afd80709", "size": 0,
          "repository_unique_id": "1.2.250.1.999.3.1", **doc_kwargs}
    return builder.submit_objects_request([
        builder.submission_set(pid), builder.submission_set_marker(),
        builder.document_entry(pid, id="NewDoc", **kw),
        builder.association("SubmissionSet01", "NewDoc", id="a1"),
        builder.association("NewDoc", target_id, type_, id="a2"),
    ])
