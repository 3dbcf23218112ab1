"""The feed source list (registry/feed_sources.py) and the rules the feed applies with it, without sockets.

Each refusal is checked for its ACK (MSA-1, table 0357 code in ERR-3, location in ERR-2, the rule in
ERR-5) and for leaving the store untouched; each is paired with the allowed variant succeeding."""
from __future__ import annotations

import pytest

from registry.feed import FeedEvent, handle_adt, parse_message
from registry.feed_sources import FeedSources, hd_key
from tests.test_feed import RecordingPatients, err_text, msa, seg
from xds.mllp import Peer

OID_A = "1.2.250.1.999.1"
OID_B = "1.2.250.1.999.2"
SUBJECT_A = "O=Hopital A,CN=adt.a"
SUBJECT_B = "O=Hopital B,CN=adt.b"

SOURCES = {"source": [
    {"name": "Hopital A", "subject": SUBJECT_A, "application": ["ADT_A", "EAI^1.2.250.1.999.9^ISO"],
     "facility": "HOSP_A", "authorities": [OID_A, OID_B], "merge": [OID_A]},
    {"name": "Hopital B", "subject": SUBJECT_B, "application": "ADT_B", "facility": ["HOSP_B", "HOSP_B2"],
     "authorities": OID_B, "max_connections": 2},
    {"name": "lab", "plain": True, "application": "LAB", "facility": "LAB", "authorities": [OID_B],
     "merge": True, "addresses": ["10.1.0.0/16"]},
]}

A = Peer("192.0.2.10", 40000, SUBJECT_A, tls=True)
B = Peer("192.0.2.11", 40001, SUBJECT_B, tls=True)


@pytest.fixture
def sources():
    return FeedSources.from_dict(SOURCES)


def message(trigger="A01", pid=f"P1^^^&{OID_A}&ISO", *, app="ADT_A", fac="HOSP_A", mrg=None, control="C1"):
    structure = "ADT_A39" if trigger == "A40" else "ADT_A01"
    segments = [f"MSH|^~\\&|{app}|{fac}|XDS|REG|20240101120000||ADT^{trigger}^{structure}|{control}|P|2.5",
                "EVN||20240101120000", f"PID|||{pid}||DOE^JOHN"]
    if mrg is not None:
        segments.append(f"MRG|{mrg}")
    return "\r".join(segments) + "\r"


def send(sources, text, peer, events=None):
    patients = RecordingPatients()
    reply = handle_adt(text, patients, peer=peer, sources=sources,
                       audit=events.append if events is not None else None)
    return reply, patients.calls


def refused(reply, ack_code, error_code, location, app_code):
    assert msa(reply)[1] == ack_code, reply
    err = seg(reply, "ERR")
    assert err[3].startswith(f"{error_code}^"), err
    assert err[2] == location
    assert err[5].split("^")[0] == app_code
    assert err[5].split("^")[2] == "L"
    return err_text(reply)


# --- who sends ----------------------------------------------------------------------------------------

def test_allowed_source_creates(sources):
    reply, calls = send(sources, message(), A)
    assert msa(reply)[:3] == ["MSA", "AA", "C1"]
    assert calls == [("add", f"P1^^^&{OID_A}&ISO")]


def test_unknown_certificate_subject_is_refused(sources):
    stranger = Peer("192.0.2.12", 1, "O=Elsewhere,CN=intruder", tls=True)
    reply, calls = send(sources, message(), stranger)
    text = refused(reply, "AR", 207, "", "UNKNOWN_SOURCE")
    assert "'O=Elsewhere,CN=intruder' is not a patient identity source" in text
    assert calls == []


def test_sender_without_tls_is_refused_when_only_tls_sources_are_listed():
    tls_only = FeedSources.from_dict({"source": SOURCES["source"][:2]})
    reply, calls = send(tls_only, message(), Peer("127.0.0.1", 5))
    assert "only over TLS" in refused(reply, "AR", 207, "", "UNKNOWN_SOURCE")
    assert calls == []


def test_plain_source_is_known_by_its_address(sources):
    lab = message(pid=f"L1^^^&{OID_B}&ISO", app="LAB", fac="LAB")
    reply, calls = send(sources, lab, Peer("10.1.4.5", 7))
    assert msa(reply)[1] == "AA" and calls == [("add", f"L1^^^&{OID_B}&ISO")]
    reply, calls = send(sources, lab, Peer("10.2.4.5", 7))
    assert "10.2.4.5" in refused(reply, "AR", 207, "", "UNKNOWN_SOURCE")
    assert calls == []


def test_tls_without_a_verified_certificate_is_no_plain_source(sources):
    reply, calls = send(sources, message(pid=f"L1^^^&{OID_B}&ISO", app="LAB", fac="LAB"),
                        Peer("10.1.4.5", 7, None, tls=True))
    assert "no verified client certificate" in refused(reply, "AR", 207, "", "UNKNOWN_SOURCE")
    assert calls == []


def test_a_certificate_never_matches_a_plain_source(sources):
    # The lab's entry is for connections without TLS; a TLS client of another subject is not it.
    reply, calls = send(sources, message(pid=f"L1^^^&{OID_B}&ISO", app="LAB", fac="LAB"),
                        Peer("10.1.4.5", 7, "O=Lab,CN=lab", tls=True))
    refused(reply, "AR", 207, "", "UNKNOWN_SOURCE")
    assert calls == []


def test_sending_application_it_may_not_claim(sources):
    reply, calls = send(sources, message(app="ADT_B"), A)
    text = refused(reply, "AR", 103, "MSH^1^3", "SENDER_NOT_ALLOWED")
    assert "sending application 'ADT_B' (MSH-3)" in text and SUBJECT_A in text
    assert calls == []


def test_sending_facility_it_may_not_claim(sources):
    reply, calls = send(sources, message(fac="HOSP_B"), A)
    assert "sending facility 'HOSP_B' (MSH-4)" in refused(reply, "AR", 103, "MSH^1^4", "SENDER_NOT_ALLOWED")
    assert calls == []


def test_msh3_compares_as_an_hd(sources):
    # Trailing empty components and escapes do not change who the sender is; another universal id does.
    for app in ("ADT_A^^", "EAI^1.2.250.1.999.9^ISO", "ADT\\X5F\\A"):
        reply, calls = send(sources, message(app=app), A)
        assert msa(reply)[1] == "AA", app
    reply, calls = send(sources, message(app="EAI^1.2.250.1.999.8^ISO"), A)
    refused(reply, "AR", 103, "MSH^1^3", "SENDER_NOT_ALLOWED")
    assert calls == []
    assert hd_key("A^^") == ("A",) and hd_key("^1.2^ISO") == ("", "1.2", "ISO")


def test_facility_list(sources):
    for fac in ("HOSP_B", "HOSP_B2"):
        reply, calls = send(sources, message(pid=f"P2^^^&{OID_B}&ISO", app="ADT_B", fac=fac), B)
        assert msa(reply)[1] == "AA" and calls
    reply, calls = send(sources, message(pid=f"P2^^^&{OID_B}&ISO", app="ADT_B", fac="HOSP_A"), B)
    refused(reply, "AR", 103, "MSH^1^4", "SENDER_NOT_ALLOWED")
    assert calls == []


def test_unknown_sender_is_refused_before_the_message_is_judged(sources):
    # An unknown sender learns nothing of what the registry would think of its message.
    stranger = Peer("192.0.2.12", 1, "O=Elsewhere,CN=intruder", tls=True)
    reply, calls = send(sources, message(trigger="A03"), stranger)
    refused(reply, "AR", 207, "", "UNKNOWN_SOURCE")
    reply, _ = send(sources, message(trigger="A03"), A)
    assert seg(reply, "ERR")[3].startswith("201^")


# --- whose patients ---------------------------------------------------------------------------------

def test_foreign_assigning_authority_is_refused(sources):
    reply, calls = send(sources, message(pid=f"P1^^^&{OID_A}&ISO", app="ADT_B", fac="HOSP_B"), B)
    text = refused(reply, "AR", 103, "PID^1^3", "AUTHORITY_NOT_ALLOWED")
    assert f"assigning authority {OID_A}" in text and "'Hopital B'" in text
    assert calls == []


def test_one_foreign_repetition_refuses_the_whole_message(sources):
    pid3 = f"P2^^^&{OID_B}&ISO~P9^^^&1.2.250.1.999.7&ISO"
    reply, calls = send(sources, message(pid=pid3, app="ADT_B", fac="HOSP_B"), B)
    assert "1.2.250.1.999.7" in refused(reply, "AR", 103, "PID^1^3", "AUTHORITY_NOT_ALLOWED")
    assert calls == []
    # A namespace-only repetition names no authority and is skipped, as it always was.
    reply, calls = send(sources, message(pid=f"P2^^^&{OID_B}&ISO~LOCAL9^^^LOCAL", app="ADT_B", fac="HOSP_B"), B)
    assert msa(reply)[1] == "AA" and calls == [("add", f"P2^^^&{OID_B}&ISO")]


# --- merges -------------------------------------------------------------------------------------------

def test_merge_by_a_source_allowed_to_merge(sources):
    reply, calls = send(sources, message("A40", f"NEW^^^&{OID_A}&ISO", mrg=f"OLD^^^&{OID_A}&ISO"), A)
    assert msa(reply)[1] == "AA"
    assert calls == [("add", f"NEW^^^&{OID_A}&ISO"), ("merge", f"OLD^^^&{OID_A}&ISO", f"NEW^^^&{OID_A}&ISO")]


def test_merge_by_a_source_not_allowed_to_merge(sources):
    text = message("A40", f"NEW^^^&{OID_B}&ISO", app="ADT_B", fac="HOSP_B", mrg=f"OLD^^^&{OID_B}&ISO")
    reply, calls = send(sources, text, B)
    assert "'Hopital B' may not merge" in refused(reply, "AR", 207, "MRG^1^1", "MERGE_NOT_ALLOWED")
    assert calls == []
    # It may still create that patient.
    reply, calls = send(sources, message(pid=f"NEW^^^&{OID_B}&ISO", app="ADT_B", fac="HOSP_B"), B)
    assert msa(reply)[1] == "AA" and calls


def test_merge_only_in_the_authorities_named_for_merging(sources):
    # Hopital A feeds OID_B but merges only in OID_A.
    reply, calls = send(sources, message("A40", f"NEW^^^&{OID_B}&ISO", mrg=f"OLD^^^&{OID_B}&ISO"), A)
    assert OID_B in refused(reply, "AR", 207, "MRG^1^1", "MERGE_NOT_ALLOWED")
    assert calls == []


def test_merge_of_a_foreign_authority(sources):
    text = message("A40", f"NEW^^^&{OID_A}&ISO", app="ADT_B", fac="HOSP_B", mrg=f"OLD^^^&{OID_A}&ISO")
    reply, calls = send(sources, text, B)
    refused(reply, "AR", 103, "PID^1^3", "AUTHORITY_NOT_ALLOWED")
    assert calls == []
    # The subsumed id alone foreign is refused too, at MRG-1.
    reply, calls = send(sources, message("A40", f"NEW^^^&{OID_A}&ISO~N2^^^&1.9.9&ISO",
                                         mrg="OLD^^^&1.9.9&ISO"), A)
    refused(reply, "AR", 103, "PID^1^3", "AUTHORITY_NOT_ALLOWED")
    assert calls == []


def test_second_group_of_a_merge_refused_stores_nothing(sources):
    text = "\r".join([
        "MSH|^~\\&|ADT_A|HOSP_A|XDS|REG|20240101120000||ADT^A40^ADT_A39|M2|P|2.5",
        f"PID|||N1^^^&{OID_A}&ISO", f"MRG|O1^^^&{OID_A}&ISO",
        f"PID|||N2^^^&{OID_B}&ISO", f"MRG|O2^^^&{OID_B}&ISO"]) + "\r"
    reply, calls = send(sources, text, A)
    refused(reply, "AR", 207, "MRG^2^1", "MERGE_NOT_ALLOWED")
    assert calls == []


# --- the audit hook -----------------------------------------------------------------------------------

def test_audit_hook_sees_every_outcome(sources):
    events: list[FeedEvent] = []
    send(sources, message(control="OK1"), A, events)
    send(sources, message(fac="HOSP_B", control="NO1"), A, events)
    send(sources, message(pid="P1^^^LOCAL", control="BAD1"), A, events)
    send(sources, "garbage", A, events)
    patients = RecordingPatients(fail_on="add")
    handle_adt(message(control="DB1"), patients, peer=A, sources=sources, audit=events.append)
    assert [(e.control_id, e.outcome, e.ack_code) for e in events] == [
        ("OK1", "accepted", "AA"), ("NO1", "denied", "AR"), ("BAD1", "invalid", "AE"), ("", "invalid", "AR"),
        ("DB1", "failed", "AE")]
    ok, no = events[0], events[1]
    assert (ok.event, ok.subject, ok.address, ok.source, ok.application, ok.facility, ok.patients) == (
        "ADT^A01^ADT_A01", SUBJECT_A, "192.0.2.10", "Hopital A", "ADT_A", "HOSP_A", (f"P1^^^&{OID_A}&ISO",))
    assert no.error_code == 103 and "HOSP_B" in no.reason and no.source is None


def test_a_failing_audit_hook_does_not_change_the_answer(sources):
    def hook(event):
        raise RuntimeError("audit store down")

    patients = RecordingPatients()
    reply = handle_adt(message(), patients, peer=A, sources=sources, audit=hook)
    assert msa(reply)[1] == "AA" and patients.calls


def test_open_feed_takes_everything():
    reply, calls = send(FeedSources.open(), message("A40", "N^^^&1.9.9&ISO", app="X", fac="Y",
                                                    mrg="O^^^&1.9.9&ISO"), Peer("127.0.0.1", 1))
    assert msa(reply)[1] == "AA" and len(calls) == 2


# --- reading the list ----------------------------------------------------------------------------------

def test_load_from_toml_file(tmp_path):
    path = tmp_path / "feed-sources.toml"
    path.write_text(f'''
[[source]]
name = "Hopital A"
subject = "{SUBJECT_A}"
application = "ADT_A"
facility = "HOSP_A"
authorities = ["{OID_A}"]
merge = true
max_connections = 2
''')
    loaded = FeedSources.load(str(path))
    (source,) = loaded.sources
    assert source.merge == {OID_A} and source.max_connections == 2 and not loaded.is_open
    assert loaded.connection_limit(A) == (f"subject:{SUBJECT_A}", 2)
    assert loaded.connection_limit(Peer("10.0.0.1", 1)) == ("address:10.0.0.1", 4)


@pytest.mark.parametrize("table,fragment", [
    ({"subject": SUBJECT_A, "application": "A", "facility": "F", "authorities": [OID_A], "colour": "x"},
     "unknown key 'colour'"),
    ({"application": "A", "facility": "F", "authorities": [OID_A]}, "either subject"),
    ({"subject": SUBJECT_A, "plain": True, "application": "A", "facility": "F", "authorities": [OID_A]},
     "either subject"),
    ({"subject": "  ", "application": "A", "facility": "F", "authorities": [OID_A]}, "subject must be"),
    ({"subject": SUBJECT_A, "facility": "F", "authorities": [OID_A]}, "application is required"),
    ({"subject": SUBJECT_A, "application": "A", "authorities": [OID_A]}, "facility is required"),
    ({"subject": SUBJECT_A, "application": "A", "facility": "F"}, "authorities must list"),
    ({"subject": SUBJECT_A, "application": "A", "facility": "F", "authorities": ["1.02"]}, "'1.02' is not an OID"),
    ({"subject": SUBJECT_A, "application": "A", "facility": "F", "authorities": [OID_A], "merge": [OID_B]},
     "not among its authorities"),
    ({"subject": SUBJECT_A, "application": "A", "facility": "F", "authorities": [OID_A], "addresses": ["x"]},
     "'x' is not an IP address"),
    ({"subject": SUBJECT_A, "application": "A", "facility": "F", "authorities": [OID_A], "max_connections": 0},
     "max_connections"),
    ({"subject": SUBJECT_A, "application": 5, "facility": "F", "authorities": [OID_A]}, "application must be"),
    ({"plain": "yes", "application": "A", "facility": "F", "authorities": [OID_A]}, "plain must be"),
])
def test_bad_source_entries_are_refused_with_the_reason(table, fragment):
    with pytest.raises(ValueError, match="source 1") as info:
        FeedSources.from_dict({"source": [table]})
    assert fragment in str(info.value)


def test_overlapping_entries_are_refused():
    entry = {"subject": SUBJECT_A, "application": ["A", "B"], "facility": "F", "authorities": [OID_A]}
    with pytest.raises(ValueError, match="both match"):
        FeedSources.from_dict({"source": [entry, {**entry, "application": "B", "authorities": [OID_B]}]})
    # Same subject, different facility: two entries that never compete.
    FeedSources.from_dict({"source": [entry, {**entry, "facility": "G", "authorities": [OID_B]}]})


def test_file_problems_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.toml"):
        FeedSources.load(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[[source]\n")
    with pytest.raises(ValueError, match="bad.toml"):
        FeedSources.load(str(bad))
    top = tmp_path / "top.toml"
    top.write_text("[[sources]]\nsubject = 'x'\n")
    with pytest.raises(ValueError, match="unknown key 'sources'"):
        FeedSources.load(str(top))


def test_ack_refusal_parses_back():
    reply, _ = send(FeedSources.from_dict(SOURCES), message(fac="NOPE"), A)
    assert parse_message(reply).first("ERR")[4] == "E"
