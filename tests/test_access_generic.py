"""Who may change what, in every deployment (the generic rules of xds/security/policy.py), over HTTP on a
split deployment over mutual TLS without assertions: a registry and two repository hosts, in-process.

The probes of the issue: another host's certificate deprecates a document (ITI-57), deletes a submission
(ITI-62), replaces a document (RPLC) or removes bytes on a host (ITI-86). Each is refused and changes
nothing; the submitter (or an administrator, or for ITI-86 the registry) succeeds.
"""
from __future__ import annotations

import pytest
from lxml import etree

from node.server import Services
from node.transfer import provide_and_register, retrieve_request
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.ebrim import read_response_errors
from xds.settings import Settings
from xds.tls import TlsFiles, client_context
from tests.certs import Authority
from tests.test_delete import remove_request
from tests.test_remove_documents import remove_request as remove_documents_request
from tests.test_update import message, status_change

PID = "GEN1^^^&1.2.250.1.213.1.4.10&ISO"
REPO_A, REPO_B = "1.2.250.1.999.3.61", "1.2.250.1.999.3.62"


def dn(cn: str) -> str:
    return f"O=XDS test,CN={cn}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generic")
    ca = Authority(str(folder))
    certs = {n: ca.issue(n) for n in ("registry", "host-a", "host-b", "admin", "source")}

    def settings(name, **kw):
        c, k = certs[name]
        return Settings(port=0, data=str(folder / name), settle_interval=0, tls_cert=c, tls_key=k, tls_ca=ca.path,
                        **kw)

    registry = Services(settings("registry", role="registry", require_known_repositories=True,
                                 admin_subjects=[dn("admin")])).start()
    hosts = {}
    for name, repo in (("host-a", REPO_A), ("host-b", REPO_B)):
        hosts[name] = Services(settings(name, role="repository", repository_id=repo,
                                        registry_url=registry.url + "/xds/registry",
                                        registry_subjects=[dn("registry")], admin_subjects=[dn("admin")])).start()
        registry.registry.store.add_repository(repo, hosts[name].url + "/xds/repository", dn(name))
    registry.registry.store.add_patient(PID)
    yield {"registry": registry, "hosts": hosts, "ca": ca, "certs": certs}
    for h in hosts.values():
        h.stop()
    registry.stop()


def client(w, url: str, who: str) -> SoapClient:
    cert, key = w["certs"][who]
    return SoapClient(url, 30, client_context(TlsFiles(cert, key, w["ca"].path)))


def registry_call(w, who, action, body):
    return client(w, w["registry"].url + "/xds/registry", who).call(action, body)


def host_call(w, host, who, action, body, **kw):
    return client(w, w["hosts"][host].url + "/xds/repository", who).call(action, body, **kw)


def outcome(reply) -> tuple[str, list[str]]:
    body = reply.body
    holder = body if body.get("status") else body.find(C.q(C.NS_RS, "RegistryResponse"))
    status, errors = read_response_errors(holder)
    return C.last_segment(status), [e.code for e in errors]


def provide(w, host: str, content: bytes, *extra) -> tuple[str, str]:
    """ITI-41 through a host; returns (entryUUID, uniqueId) of the one document."""
    sub = builder.simple_submission(PID, 1, register=False)
    for el in extra:
        sub.find(f"{{{C.NS_RIM}}}RegistryObjectList").append(el)
    pnr, att = provide_and_register(sub, {"Document01": content})
    reply = host_call(w, host, "source", C.ACTION_PROVIDE, pnr, attachments=att)
    assert outcome(reply)[0] == "Success", reply.raw[:600]
    uid = next(ei.get("value") for ei in sub.iter(f"{{{C.NS_RIM}}}ExternalIdentifier")
               if ei.get("identificationScheme") == C.DE_UNIQUE_ID)
    return entry_of(w, uid), uid


def entry_of(w, uid: str) -> str:
    store = w["registry"].registry.store
    with store.reading() as conn:
        rows = store.by_unique_ids(conn, [uid])
    return max(rows, key=lambda r: r[0].version)[0].id


def status_of(w, entry_id: str) -> str | None:
    store = w["registry"].registry.store
    with store.reading() as conn:
        row = store.objects(conn, [entry_id]).get(entry_id)
    return None if row is None else C.last_segment(row.status)


def deprecate(entry_id: str) -> etree._Element:
    return message(PID, status_change(entry_id, C.STATUS_APPROVED, C.STATUS_DEPRECATED))


def retrieved(w, repo: str, uid: str) -> bytes | None:
    reply = registry_call(w, "source", C.ACTION_RETRIEVE, retrieve_request(uid, repo))
    try:
        parts = [p.read_bytes() for p in reply.mtom.parts.values()] if reply.mtom else []
        return parts[0] if outcome(reply)[0] == "Success" and parts else None
    finally:
        if reply.mtom:
            reply.mtom.cleanup()


def test_another_host_may_not_deprecate_and_the_submitter_may(world):
    w = world
    entry, _ = provide(w, "host-a", b"deprecate me")
    reply = registry_call(w, "host-b", C.ACTION_UPDATE, deprecate(entry))
    assert outcome(reply) == ("Failure", ["XDSRegistryError"])
    assert "submitter" in reply.raw.decode()
    assert status_of(w, entry) == "Approved"
    reply = registry_call(w, "host-a", C.ACTION_UPDATE, deprecate(entry))
    assert outcome(reply)[0] == "Success", reply.raw[:600]
    assert status_of(w, entry) == "Deprecated"


def test_another_host_may_not_delete_a_submission_and_an_administrator_may(world):
    w = world
    entry, _ = provide(w, "host-a", b"delete me")
    reply = registry_call(w, "host-b", C.ACTION_DELETE, remove_request(entry))
    assert outcome(reply) == ("Failure", ["XDSRegistryError"])
    assert status_of(w, entry) == "Approved"
    # The entry alone cannot go while its SubmissionSet's HasMember points at it: remove both.
    store = w["registry"].registry.store
    with store.reading() as conn:
        links = [a for a in store.associations_touching(conn, [entry]) if a.type == C.ASSOC_HAS_MEMBER]
    ids = [entry] + [a.id for a in links] + [a.source for a in links]
    assert outcome(registry_call(w, "host-b", C.ACTION_DELETE, remove_request(*ids)))[0] == "Failure"
    assert status_of(w, entry) == "Approved"
    reply = registry_call(w, "admin", C.ACTION_DELETE, remove_request(*ids))
    assert outcome(reply)[0] == "Success", reply.raw[:600]
    assert status_of(w, entry) is None


def test_the_submitting_host_may_delete_its_own_submission(world):
    w = world
    entry, _ = provide(w, "host-a", b"mine to delete")
    store = w["registry"].registry.store
    with store.reading() as conn:
        links = [a for a in store.associations_touching(conn, [entry]) if a.type == C.ASSOC_HAS_MEMBER]
    reply = registry_call(w, "host-a", C.ACTION_DELETE, remove_request(entry, *[a.id for a in links],
                                                                        *[a.source for a in links]))
    assert outcome(reply)[0] == "Success", reply.raw[:600]
    assert status_of(w, entry) is None


def test_another_host_may_not_replace_a_document_and_the_submitter_may(world):
    w = world
    old, _ = provide(w, "host-a", b"original")
    rplc = builder.association("Document01", old, C.ASSOC_RPLC, id="rplc")
    sub = builder.simple_submission(PID, 1, register=False)
    sub.find(f"{{{C.NS_RIM}}}RegistryObjectList").append(rplc)
    pnr, att = provide_and_register(sub, {"Document01": b"replacement by b"})
    reply = host_call(w, "host-b", "source", C.ACTION_PROVIDE, pnr, attachments=att)
    assert outcome(reply) == ("Failure", ["XDSRegistryError"])
    assert status_of(w, old) == "Approved"
    new, _ = provide(w, "host-a", b"replacement by a", builder.association("Document01", old, C.ASSOC_RPLC,
                                                                            id="rplc"))
    assert status_of(w, old) == "Deprecated" and status_of(w, new) == "Approved"


def test_iti86_on_a_host_only_from_its_registry_or_an_administrator(world):
    w = world
    _, uid = provide(w, "host-a", b"bytes of a")
    request = remove_documents_request((REPO_A, uid))
    for who in ("host-b", "source"):
        reply = host_call(w, "host-a", who, C.ACTION_REMOVE_DOCUMENTS, request)
        assert outcome(reply) == ("Failure", ["XDSRepositoryError"]), who
        assert "registry or an administrator" in reply.raw.decode()
    assert retrieved(w, REPO_A, uid) == b"bytes of a"
    reply = host_call(w, "host-a", "registry", C.ACTION_REMOVE_DOCUMENTS, request)
    assert outcome(reply)[0] == "Success", reply.raw[:600]
    assert retrieved(w, REPO_A, uid) is None
    _, uid2 = provide(w, "host-a", b"more bytes of a")
    reply = host_call(w, "host-a", "admin", C.ACTION_REMOVE_DOCUMENTS,
                      remove_documents_request((REPO_A, uid2)))
    assert outcome(reply)[0] == "Success", reply.raw[:600]


def test_reads_stay_open_under_the_generic_rules(world):
    w = world
    _, uid = provide(w, "host-b", b"anyone authenticated reads")
    assert retrieved(w, REPO_B, uid) == b"anyone authenticated reads"
    reply = registry_call(w, "host-a", C.ACTION_QUERY, builder.find_documents_request(PID))
    assert outcome(reply)[0] == "Success"
    assert uid in reply.raw.decode()
