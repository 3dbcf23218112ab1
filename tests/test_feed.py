import socket
import threading
import time

import pytest

from registry.feed import (
    ack, handle_adt, internal_error_ack, parse_message, unescape, escape, Encoding,
)
from tests.helpers import make_feed_server
from xds.mllp import FrameDecoder, FrameTooLarge, MllpServer, encode_frame, mllp_send

OID = "1.3.6.1.4.1.21367.2005.3.7"
OTHER_OID = "1.2.840.113619.6.197"


class RecordingPatients:
    """Test double for the patient store: records every call in order."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def add(self, patient_id):
        if self.fail_on == "add":
            raise RuntimeError("database is down")
        with self._lock:
            self.calls.append(("add", patient_id))

    def merge(self, subsumed_id, surviving_id):
        if self.fail_on == "merge":
            raise RuntimeError("database is down")
        with self._lock:
            self.calls.append(("merge", subsumed_id, surviving_id))


def adt(trigger, pid3, *, version="2.5", extra=(), control="MSG00001", structure=None, sep="\r"):
    structure = structure or ("ADT_A39" if trigger == "A40" else "ADT_A01")
    segments = [
        f"MSH|^~\\&|PAT_IDENTITY_X_REF_MGR_MISYS|ALLSCRIPTS|EHR_MISYS|MISYS|20090227131911||"
        f"ADT^{trigger}^{structure}|{control}|P|{version}",
        "EVN||20090227131911",
        f"PID|||{pid3}||MOORE^CHIP||19380224|M",
        *extra,
    ]
    return sep.join(segments) + sep


def segments(reply):
    return [line.split("|") for line in reply.split("\r") if line]


def seg(reply, name):
    found = [s for s in segments(reply) if s[0] == name]
    return found[0] if found else None


def msa(reply):
    return seg(reply, "MSA")


def err_text(reply):
    """ERR-8, the full reason, unescaped."""
    msg = parse_message(reply)
    return msg.unescape(msg.first("ERR")[8])


# --- parsing helpers ------------------------------------------------------------------------

def test_parse_message_numbers_msh_fields_like_the_standard():
    msg = parse_message(adt("A01", f"1^^^&{OID}&ISO"))
    assert msg.msh[1] == "|"
    assert msg.msh[2] == "^~\\&"
    assert msg.msh[9] == "ADT^A01^ADT_A01"
    assert msg.msh[10] == "MSG00001"
    assert msg.first("PID")[3] == f"1^^^&{OID}&ISO"


def test_escape_round_trip():
    enc = Encoding()
    text = "a|b^c&d~e\\f"
    assert escape(text, enc) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert unescape(escape(text, enc), enc) == text
    assert unescape("\\X41\\B\\H\\C", enc) == "ABC"


# --- ADD triggers -------------------------------------------------------------------------------

@pytest.mark.parametrize("trigger", ["A01", "A04", "A05", "A08"])
def test_add_triggers_add_the_iso_identifier(trigger):
    patients = RecordingPatients()
    reply = handle_adt(adt(trigger, f"103^^^&{OID}&ISO"), patients)
    assert msa(reply)[:3] == ["MSA", "AA", "MSG00001"]
    assert patients.calls == [("add", f"103^^^&{OID}&ISO")]


def test_add_takes_a_dmp_ins_by_its_identifier_and_authority():
    """The DMP writes an INS with CX.5 NH and its CX.7 date; the patient is CX.1 + CX.4."""
    patients = RecordingPatients()
    reply = handle_adt(adt("A01", "207058575627097^^^&1.2.250.1.213.1.4.10&ISO^NH^^20100907"), patients)
    assert msa(reply)[1] == "AA"
    assert patients.calls == [("add", "207058575627097^^^&1.2.250.1.213.1.4.10&ISO")]


def test_add_drops_namespace_and_keeps_every_iso_repetition():
    patients = RecordingPatients()
    pid3 = f"103^^^IHEBLUE&{OID}&ISO~55^^^LOCAL~77^^^&{OTHER_OID}&iso^PI~103^^^&{OID}&ISO"
    reply = handle_adt(adt("A04", pid3), patients)
    assert msa(reply)[1] == "AA"
    assert patients.calls == [("add", f"103^^^&{OID}&ISO"), ("add", f"77^^^&{OTHER_OID}&ISO")]


def test_add_v231_with_newlines_instead_of_carriage_returns():
    patients = RecordingPatients()
    reply = handle_adt(adt("A01", f"9^^^&{OID}&ISO", version="2.3.1", sep="\n"), patients)
    assert msa(reply)[1] == "AA"
    assert patients.calls == [("add", f"9^^^&{OID}&ISO")]


def test_add_with_unusual_separators_and_escaped_id():
    patients = RecordingPatients()
    message = (
        "MSH#$*@%#APP#FAC#REG#XDS#20090227131911##ADT$A01#C1#T#2.5\r"
        f"PID###a@T@b$$$%{OID}%ISO\r"
    )
    reply = handle_adt(message, patients)
    # The reply is written with the sender's separators.
    assert reply.startswith("MSH#$*@%#REG#XDS#APP#FAC#")
    assert "MSA#AA#C1" in reply
    assert patients.calls == [("add", f"a%b^^^&{OID}&ISO")]


def test_add_without_iso_identifier_is_ae_with_explanation():
    patients = RecordingPatients()
    reply = handle_adt(adt("A01", "103^^^LOCAL~104^^^&1.2.3&L"), patients)
    fields = msa(reply)
    assert fields[1] == "AE"
    assert "PID-3" in fields[3] and "ISO" in fields[3]
    err = seg(reply, "ERR")
    assert err[2] == "PID^1^3"
    assert err[3].startswith("101^")
    assert "only a namespace id 'LOCAL'" in err[8]
    assert "universal id type 'L'" in err[8]
    assert patients.calls == []


def test_add_with_non_oid_universal_id_is_skipped():
    patients = RecordingPatients()
    reply = handle_adt(adt("A01", "103^^^&not-an-oid&ISO"), patients)
    assert msa(reply)[1] == "AE"
    assert "not an OID" in seg(reply, "ERR")[8]


def test_missing_pid_is_ae():
    patients = RecordingPatients()
    message = "MSH|^~\\&|A|B|C|D|20090227131911||ADT^A01^ADT_A01|X9|P|2.5\rEVN||20090227\r"
    reply = handle_adt(message, patients)
    assert msa(reply)[:3] == ["MSA", "AE", "X9"]
    assert "PID segment is missing" in msa(reply)[3]
    assert seg(reply, "ERR")[3].startswith("100^")


def test_store_failure_is_ae_and_does_not_raise():
    reply = handle_adt(adt("A01", f"1^^^&{OID}&ISO"), RecordingPatients(fail_on="add"))
    assert msa(reply)[1] == "AE"
    assert seg(reply, "ERR")[3].startswith("207^")
    assert "database is down" not in reply


# --- A40 merge ---------------------------------------------------------------------------------

def test_merge_adds_surviving_then_merges():
    patients = RecordingPatients()
    message = adt("A40", f"SURV^^^&{OID}&ISO", extra=[f"MRG|OLD^^^&{OID}&ISO"])
    reply = handle_adt(message, patients)
    assert msa(reply)[1] == "AA"
    assert patients.calls == [
        ("add", f"SURV^^^&{OID}&ISO"),
        ("merge", f"OLD^^^&{OID}&ISO", f"SURV^^^&{OID}&ISO"),
    ]
    assert seg(reply, "MSH")[8] == "ACK^A40^ACK"


def test_merge_pairs_ids_by_assigning_authority():
    patients = RecordingPatients()
    message = adt("A40", f"S1^^^LOCAL~S2^^^&{OTHER_OID}&ISO~S3^^^&{OID}&ISO",
                  extra=[f"MRG|O3^^^&{OID}&ISO"])
    reply = handle_adt(message, patients)
    assert msa(reply)[1] == "AA"
    assert patients.calls == [("add", f"S3^^^&{OID}&ISO"), ("merge", f"O3^^^&{OID}&ISO", f"S3^^^&{OID}&ISO")]


def test_merge_across_assigning_authorities_is_refused_whole():
    # O9 has no survivor in its own authority: merging it into S3 would move a patient between domains.
    patients = RecordingPatients()
    message = adt("A40", f"S3^^^&{OID}&ISO", extra=[f"MRG|O3^^^&{OID}&ISO~O9^^^&1.9.9&ISO"])
    reply = handle_adt(message, patients)
    assert msa(reply)[1] == "AE"
    assert "'O9^^^&1.9.9&ISO' has no PID-3 identifier of the same assigning authority" in err_text(reply)
    assert seg(reply, "ERR")[2] == "MRG^1^1"
    assert patients.calls == []


def test_merge_of_several_patients_in_one_message():
    patients = RecordingPatients()
    message = adt("A40", f"S1^^^&{OID}&ISO", extra=[
        f"MRG|O1^^^&{OID}&ISO", f"PID|||S2^^^&{OID}&ISO", f"MRG|O2^^^&{OID}&ISO"])
    assert msa(handle_adt(message, patients))[1] == "AA"
    assert [c for c in patients.calls if c[0] == "merge"] == [
        ("merge", f"O1^^^&{OID}&ISO", f"S1^^^&{OID}&ISO"), ("merge", f"O2^^^&{OID}&ISO", f"S2^^^&{OID}&ISO")]


@pytest.mark.parametrize("extra,expected", [
    ([], "MRG segment is missing"),
    (["MRG|OLD^^^LOCAL"], "MRG-1 has no identifier"),
    ([f"MRG|OLD^^^&{OTHER_OID}&ISO"], "same assigning authority"),
    ([f"MRG|SURV^^^&{OID}&ISO"], "nothing to merge"),
])
def test_merge_errors_change_nothing(extra, expected):
    patients = RecordingPatients()
    reply = handle_adt(adt("A40", f"SURV^^^&{OID}&ISO", extra=extra), patients)
    assert msa(reply)[1] == "AE"
    assert expected in reply
    assert patients.calls == []


def test_merge_validates_every_group_before_storing():
    patients = RecordingPatients()
    message = adt("A40", f"S1^^^&{OID}&ISO", extra=[f"MRG|O1^^^&{OID}&ISO", f"PID|||S2^^^&{OID}&ISO"])
    assert msa(handle_adt(message, patients))[1] == "AE"
    assert patients.calls == []


def test_merge_store_failure_is_ae():
    message = adt("A40", f"SURV^^^&{OID}&ISO", extra=[f"MRG|OLD^^^&{OID}&ISO"])
    assert msa(handle_adt(message, RecordingPatients(fail_on="merge")))[1] == "AE"


# --- rejected messages ----------------------------------------------------------------------------

def test_unsupported_event_is_ar():
    patients = RecordingPatients()
    reply = handle_adt(adt("A03", f"1^^^&{OID}&ISO"), patients)
    assert msa(reply)[1] == "AR"
    assert "unsupported event 'A03'" in msa(reply)[3]
    assert seg(reply, "ERR")[3].startswith("201^")
    assert patients.calls == []


def test_unsupported_message_type_is_ar():
    message = "MSH|^~\\&|A|B|C|D|20090227||ORU^R01^ORU_R01|Q1|P|2.5\rPID|||1^^^&1.2&ISO\r"
    reply = handle_adt(message, RecordingPatients())
    assert msa(reply)[:2] == ["MSA", "AR"]
    assert "ORU" in msa(reply)[3]
    assert seg(reply, "ERR")[3].startswith("200^")


@pytest.mark.parametrize("garbage", ["", "hello world", "PID|||1^^^&1.2&ISO\r", "MSH", "MSH|^~\\&\rpid lowercase"])
def test_unparseable_message_is_ar_with_default_header(garbage):
    reply = handle_adt(garbage, RecordingPatients())
    assert reply.startswith("MSH|^~\\&|")
    assert msa(reply)[1] == "AR"
    assert "cannot parse message" in msa(reply)[3]
    assert seg(reply, "ERR") is not None


# --- ACK shape --------------------------------------------------------------------------------------

def test_ack_swaps_applications_and_echoes_processing_id_and_version():
    reply = handle_adt(adt("A01", f"1^^^&{OID}&ISO", control="CTRL42"), RecordingPatients())
    msh = seg(reply, "MSH")
    assert msh[2:6] == ["EHR_MISYS", "MISYS", "PAT_IDENTITY_X_REF_MGR_MISYS", "ALLSCRIPTS"]
    assert msh[8] == "ACK^A01^ACK"
    assert msh[9] and msh[9] != "CTRL42" and len(msh[9]) <= 20
    assert msh[10:12] == ["P", "2.5"]
    assert msa(reply) == ["MSA", "AA", "CTRL42"]
    assert seg(reply, "ERR") is None
    assert reply.endswith("\r")


def test_ack_control_ids_are_unique():
    message = adt("A01", f"1^^^&{OID}&ISO")
    ids = {seg(ack(message), "MSH")[9] for _ in range(50)}
    assert len(ids) == 50


def test_ack_v231_error_uses_err1():
    reply = ack(adt("A01", "x", version="2.3.1"), "AE", "bad | text", error_code=101, location="PID^1^3")
    err = seg(reply, "ERR")
    assert err[1] == "PID^1^3^101&Required field missing&HL70357"
    assert msa(reply)[3] == "bad \\F\\ text"


def test_ack_msa_text_is_bounded_but_err_keeps_it_all():
    text = "x" * 200
    reply = ack(adt("A01", "x"), "AE", text, error_code=101)
    assert len(msa(reply)[3]) == 80
    assert seg(reply, "ERR")[8] == text


def test_ack_of_nothing_is_well_formed():
    reply = ack(None, "AR", "no frame", error_code=100)
    msh = seg(reply, "MSH")
    assert msh[1] == "^~\\&" and msh[8] == "ACK" and msh[10:12] == ["P", "2.5"]
    assert msa(reply) == ["MSA", "AR", "", "no frame"]


def test_internal_error_ack_hides_the_exception():
    reply = internal_error_ack(adt("A01", "x"), RuntimeError("secret detail"))
    assert msa(reply)[1] == "AE" and "secret" not in reply


# --- MLLP framing ---------------------------------------------------------------------------------------

def test_frame_decoder_handles_split_and_garbage():
    decoder = FrameDecoder(max_frame=100)
    stream = b"junk" + encode_frame("one") + b"\r\n" + encode_frame("two") + b"\x0bthr"
    frames = []
    for i in range(len(stream)):  # one byte at a time: the end block will straddle reads
        frames += decoder.feed(stream[i:i + 1])
    assert frames == [b"one", b"two"]
    assert decoder.feed(b"ee\x1c\x0d") == [b"three"]


def test_frame_decoder_resynchronises_on_a_new_start_block():
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0btruncated\x0bgood\x1c\x0d") == [b"good"]
    # A flood of start blocks is just more truncated frames, not a recursion.
    assert decoder.feed(b"\x0b" * 100_000 + b"ok\x1c\x0d") == [b"ok"]


def test_frame_decoder_limit():
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(encode_frame("0123456789")) == [b"0123456789"]
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"\x0b" + b"x" * 11)
    # Garbage outside frames is never buffered, however much of it arrives.
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(b"y" * 1000) == []


# --- end to end over a socket ------------------------------------------------------------------------------

@pytest.fixture
def feed_server():
    patients = RecordingPatients()
    server = make_feed_server(patients, host="127.0.0.1", port=0)
    server.start()
    try:
        yield server, patients
    finally:
        server.stop()


def test_socket_a01_then_a40(feed_server):
    server, patients = feed_server
    assert server.port != 0
    reply = mllp_send("127.0.0.1", server.port, adt("A01", f"OLD^^^&{OID}&ISO", control="M1"))
    assert msa(reply)[:3] == ["MSA", "AA", "M1"]
    reply = mllp_send("127.0.0.1", server.port,
                      adt("A40", f"NEW^^^&{OID}&ISO", extra=[f"MRG|OLD^^^&{OID}&ISO"], control="M2"))
    assert msa(reply)[:3] == ["MSA", "AA", "M2"]
    assert patients.calls == [
        ("add", f"OLD^^^&{OID}&ISO"),
        ("add", f"NEW^^^&{OID}&ISO"),
        ("merge", f"OLD^^^&{OID}&ISO", f"NEW^^^&{OID}&ISO"),
    ]


def _exchange(port, payload, frames_expected, timeout=5):
    """Send raw bytes on one connection and read back that many reply frames."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        decoder = FrameDecoder()
        replies = []
        while len(replies) < frames_expected:
            data = sock.recv(65536)
            if not data:
                break
            replies += decoder.feed(data)
        return [r.decode("utf-8") for r in replies]


def test_socket_garbage_then_valid_frame_on_same_connection(feed_server):
    server, patients = feed_server
    payload = (b"\x00\xffnoise before any frame\r\n"
               + encode_frame("this is not HL7")
               + b"more noise"
               + b"\x0bMSH|^~\\&|truncated frame that never ends"
               + encode_frame(adt("A04", f"P7^^^&{OID}&ISO", control="GOOD")))
    replies = _exchange(server.port, payload, 2)
    assert len(replies) == 2
    assert msa(replies[0])[1] == "AR"
    assert msa(replies[1])[:3] == ["MSA", "AA", "GOOD"]
    assert patients.calls == [("add", f"P7^^^&{OID}&ISO")]


def test_socket_latin1_message_gets_an_answer(feed_server):
    server, patients = feed_server
    message = adt("A01", f"P8^^^&{OID}&ISO").replace("MOORE", "M\u00d6RE")
    replies = _exchange(server.port, encode_frame(message, "latin-1"), 1)
    assert msa(replies[0])[1] == "AA"
    assert patients.calls == [("add", f"P8^^^&{OID}&ISO")]


def test_socket_oversize_frame_closes_connection_but_server_lives_on(feed_server):
    server, patients = feed_server
    huge = adt("A01", f"BIG^^^&{OID}&ISO", extra=["NTE|||" + "x" * (1024 * 1024 + 10)])
    with pytest.raises(OSError):  # EOF (ConnectionError) or a reset while still sending
        mllp_send("127.0.0.1", server.port, huge, timeout=10)
    assert patients.calls == []
    reply = mllp_send("127.0.0.1", server.port, adt("A01", f"SMALL^^^&{OID}&ISO"))
    assert msa(reply)[1] == "AA"


def test_socket_small_limit_and_concurrent_clients():
    patients = RecordingPatients()
    with make_feed_server(patients, host="127.0.0.1", port=0, max_frame=512) as server:
        with pytest.raises(OSError):
            mllp_send("127.0.0.1", server.port, "x" * 600)
        results = []

        def send(n):
            results.append(msa(mllp_send("127.0.0.1", server.port, adt("A01", f"C{n}^^^&{OID}&ISO")))[1])

        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == ["AA"] * 8
        assert sorted(c[1] for c in patients.calls) == sorted(f"C{n}^^^&{OID}&ISO" for n in range(8))


def test_handler_exception_uses_error_reply_and_server_keeps_serving():
    calls = []

    def handler(message, peer):
        calls.append(message)
        if "boom" in message:
            raise ValueError("boom")
        return ack(message)

    with MllpServer("127.0.0.1", 0, handler, error_reply=internal_error_ack) as server:
        reply = mllp_send("127.0.0.1", server.port, adt("A01", "boom"))
        assert msa(reply)[1] == "AE"
        assert msa(mllp_send("127.0.0.1", server.port, adt("A01", "fine")))[1] == "AA"


def test_handler_exception_without_error_reply_closes_only_that_connection():
    def handler(message, peer):
        if "boom" in message:
            raise ValueError("boom")
        return ack(message)

    with MllpServer("127.0.0.1", 0, handler) as server:
        with pytest.raises(ConnectionError):
            mllp_send("127.0.0.1", server.port, adt("A01", "boom"))
        assert msa(mllp_send("127.0.0.1", server.port, adt("A01", "fine")))[1] == "AA"


def test_client_times_out_when_no_reply():
    with MllpServer("127.0.0.1", 0, lambda message, peer: None) as server:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            mllp_send("127.0.0.1", server.port, "MSH|^~\\&|", timeout=0.5)
        assert time.monotonic() - started < 3


def test_stop_with_idle_client_connected_returns_promptly():
    server = MllpServer("127.0.0.1", 0, lambda message, peer: message).start()
    port = server.port
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        time.sleep(0.1)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3
        idle.settimeout(2)
        assert idle.recv(10) == b""  # the server hung up on it
    finally:
        idle.close()
    with pytest.raises(OSError):
        mllp_send("127.0.0.1", port, "x", timeout=1)
    server.stop()  # a second stop is harmless
