"""Length and range limits: every value the registry keeps in a column is bounded by ebRIM 3.0 and
ITI TF-3 in validation, so SQLite (which enforces no length) and PostgreSQL (which does) answer alike:
an over-long or out-of-range value is an XDSRegistryMetadataError naming the attribute, never an
internal error; the longest allowed value is stored and found on both."""
from __future__ import annotations

import pytest
from lxml import etree

from node.server import Services
from xds import builder
from xds import constants as C
from xds import errors as E
from xds.client import SoapClient
from xds.errors import XdsException
from xds.settings import Settings
from tests.helpers import by_unique_id, count_all, make_store, new_pid, submit

P_ROOT = "^^^&1.2.250.1.213.1.4.10&ISO"
LONG_CODE = ("c" * 256, "1." + "2" * 254, "longest code")  # nodeRepresentation and codingScheme: LongName


def _request(pid, **kw):
    return builder.simple_submission(pid, **kw)


TOO_LONG = {
    "DocumentEntry uniqueId": (dict(doc_kwargs={"unique_id": "1." + "2" * 310}), "uniqueId"),
    "SubmissionSet uniqueId": (dict(ss_kwargs={"unique_id": "1." + "2" * 310}), "uniqueId"),
    "size out of range": (dict(doc_kwargs={"size": 999999999999999999999}), "size"),
    "mimeType": (dict(doc_kwargs={"mime_type": "application/" + "x" * 250}), "mimeType"),
    "nodeRepresentation": (dict(doc_kwargs={"codes": {"class": ("c" * 300, "1.2.3", "d")}}), "nodeRepresentation"),
    "repositoryUniqueId": (dict(repository_unique_id="1." + "2" * 80), "repositoryUniqueId"),
    "sourceId": (dict(ss_kwargs={"source_id": "1." + "2" * 80}), "sourceId"),
    "title": (dict(doc_kwargs={"title": "t" * 1100}), "Name"),
}


@pytest.mark.parametrize("case", sorted(TOO_LONG))
def test_too_long_or_out_of_range_is_a_metadata_error_on_both_backends(db_url, case):
    kw, attribute = TOO_LONG[case]
    pid = new_pid()
    store = make_store(db_url, pid)
    before = count_all(store)
    with pytest.raises(XdsException) as info:
        submit(store, _request(pid, **kw))
    errors = info.value.errors
    assert {e.code for e in errors} == {E.REGISTRY_METADATA_ERROR}, errors
    assert any(attribute in e.message for e in errors), errors
    assert count_all(store) == before


def test_patient_id_longer_than_a_long_name_is_a_metadata_error(db_url):
    pid = "P" + "1" * 280 + P_ROOT
    store = make_store(db_url, pid[:256])
    with pytest.raises(XdsException) as info:
        submit(store, _request(pid))
    assert all(e.code == E.REGISTRY_METADATA_ERROR for e in info.value.errors)
    assert any("value: is 309 characters long" in e.message for e in info.value.errors)


def test_the_longest_allowed_values_are_stored_on_both_backends(db_url):
    pid = new_pid()
    store = make_store(db_url, pid)
    uid = "1." + "2" * 62  # an OID of 64 characters
    req = _request(pid, doc_kwargs={"unique_id": uid, "size": 2 ** 63 - 1, "mime_type": "application/" + "x" * 244,
                                    "codes": {"class": LONG_CODE}})
    submit(store, req)
    (row,) = by_unique_id(store, uid)
    assert row.unique_id == uid


def test_over_http_a_too_long_value_gets_a_registry_response(tmp_path, db_url):
    services = Services(Settings(port=0, data=str(tmp_path / "d"), db=db_url)).start()
    try:
        pid = new_pid()
        services.registry.store.add_patient(pid)
        reply = SoapClient(services.url + "/xds/registry").call(
            C.ACTION_REGISTER, _request(pid, doc_kwargs={"size": 999999999999999999999}))
        assert reply.status == 200 and reply.body.get("status") == C.RESPONSE_FAILURE
        (err,) = reply.body.iter(f"{{{C.NS_RS}}}RegistryError")
        assert err.get("errorCode") == E.REGISTRY_METADATA_ERROR and "size" in err.get("codeContext")
        assert "internal error" not in etree.tostring(reply.body).decode()
    finally:
        services.stop()
