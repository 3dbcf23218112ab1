"""ITI-20 transport (xds/audit/syslog.py) against a real rsyslogd on 127.0.0.1 (tests/rsyslog.py)."""
import re
import socket
import ssl
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from lxml import etree

from tests import rsyslog
from tests.certs import Authority
from xds.audit import AuditEvent, HumanRequestor, Node, record_key, to_xml
from xds.audit import syslog
from xds.audit.syslog import DeliveryError, Destination, TlsSender, UdpSender, format_message, parse_destination
from xds.builder import adhoc_query_request
from xds.tls import TlsFiles, client_context

needs_rsyslog = pytest.mark.skipif(not rsyslog.available(), reason=f"no real rsyslogd here: {rsyslog.unavailable_reason()}")

PID = "4711^^^&1.3.6.1.4.1.21367.2005.13.20.1000&ISO"
WHEN = datetime(2025, 3, 1, 12, 30, 5, 123456, tzinfo=timezone.utc)
CLIENT = Node(user_id="http://www.w3.org/2005/08/addressing/anonymous", address="10.1.2.3")
SERVER = Node(user_id="https://xds.example.org/registry", address="xds.example.org", alternative_user_id="1234")
HUMAN = HumanRequestor(name_id="7601000000000", issuer="https://idp.example.org", alias="Dr. Hélène Müller-Ørsted")
QUERY_ID = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
SOURCE = "xds@xds.example.org"


def record(seq: int, **more) -> bytes:
    """One real AuditMessage (ITI-42 by default), serialised as the outbox does."""
    fields = dict(transaction="ITI-42", actor="Document Registry", patient_id=PID, submission_set_uid=f"1.2.3.{seq}")
    fields.update(more)
    event = AuditEvent(requestor=CLIENT, responder=SERVER, sequence=seq, event_time=WHEN, human=HUMAN,
                       tls_subject="CN=source.example.org,O=Example Hospital", **fields)
    return etree.tostring(to_xml(event, SOURCE), encoding="utf-8")


def big_query_record(seq: int) -> bytes:
    """An ITI-18 record over 64 KB: a FindDocuments-by-uniqueId query naming thousands of documents."""
    ids = "(" + ",".join(f"'1.2.840.113619.2.55.3.{i}'" for i in range(3000)) + ")"
    request = etree.tostring(adhoc_query_request(QUERY_ID, [("$XDSDocumentEntryPatientId", f"'{PID}'"),
                                                            ("$XDSDocumentEntryUniqueId", ids)]), encoding="utf-8")
    xml = record(seq, transaction="ITI-18", query_id=QUERY_ID, query_request=request, submission_set_uid=None)
    assert len(xml) > 70_000
    return xml


def message(xml: bytes, stamp: datetime = WHEN) -> bytes:
    return format_message(xml, hostname="xds.example.org", app_name="xds-registry", procid="1234", timestamp=stamp)


# --- format_message -----------------------------------------------------------------------------
HEADER = re.compile(rb"<(\d+)>(\d) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) (.*)\Z", re.S)


def test_message_structure_follows_iti20():
    xml = record(1)
    out = message(xml)
    pri, version, stamp, host, app, procid, msgid, sd, msg = HEADER.match(out).groups()
    assert int(pri) == 10 * 8 + 5 == 85          # facility 10 (security/authorization), severity 5 (notice)
    assert version == b"1"
    assert stamp == b"2025-03-01T12:30:05.123456Z"
    assert (host, app, procid) == (b"xds.example.org", b"xds-registry", b"1234")
    assert msgid == b"IHE+RFC-3881"
    assert sd == b"-"
    assert msg == b"\xef\xbb\xbf" + xml           # BOM, then the XML untouched
    assert out.startswith(b"<85>1 ")


def test_timestamp_is_utc_with_fraction():
    local = WHEN.astimezone(timezone(timedelta(hours=2)))
    assert HEADER.match(message(b"<A/>", local)).group(3) == b"2025-03-01T12:30:05.123456Z"
    whole = datetime(2025, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))
    assert HEADER.match(message(b"<A/>", whole)).group(3) == b"2026-01-01T04:59:59.000000Z"


def test_header_fields_are_sanitised_and_cut():
    out = format_message(b"<A/>", hostname="hôte de test", app_name="a" * 60, procid="p" * 200,
                         timestamp=WHEN, msgid="custom id")
    _, _, _, host, app, procid, msgid, sd, msg = HEADER.match(out).groups()
    assert host == b"h_te_de_test"
    assert app == b"a" * 48
    assert procid == b"p" * 128
    assert msgid == b"custom_id"
    assert msg == b"\xef\xbb\xbf<A/>"
    long_host = format_message(b"<A/>", hostname="h" * 300, app_name="x", procid="1", timestamp=WHEN)
    assert HEADER.match(long_host).group(4) == b"h" * 255
    empty = format_message(b"<A/>", hostname="", app_name="", procid="", timestamp=WHEN)
    assert empty.startswith(b"<85>1 2025-03-01T12:30:05.123456Z - - - IHE+RFC-3881 - \xef\xbb\xbf")
    assert b" 4321 " in format_message(b"<A/>", hostname="h", app_name="x", procid=4321, timestamp=WHEN)
    assert all(33 <= b <= 126 or b == 32 for b in out[:out.index(b"\xef\xbb\xbf")])


def test_record_must_be_utf8_bytes():
    with pytest.raises(ValueError, match="UTF-8"):
        format_message("<A>é</A>".encode("latin-1"), hostname="h", app_name="x", procid="1", timestamp=WHEN)
    with pytest.raises(TypeError):
        format_message("<A/>", hostname="h", app_name="x", procid="1", timestamp=WHEN)


# --- parse_destination --------------------------------------------------------------------------
@pytest.mark.parametrize("url,expected", [
    ("tls://arr.example.org", Destination("tls", "arr.example.org", 6514)),
    ("tls://arr.example.org:7514", Destination("tls", "arr.example.org", 7514)),
    ("TLS://ARR.example.org:7514/", Destination("tls", "arr.example.org", 7514)),
    ("udp://10.0.0.7", Destination("udp", "10.0.0.7", 514)),
    ("udp://10.0.0.7:5514", Destination("udp", "10.0.0.7", 5514)),
    ("tls://[2001:db8::1]:6515", Destination("tls", "2001:db8::1", 6515)),
    ("udp://[::1]", Destination("udp", "::1", 514)),
])
def test_parse_good_destinations(url, expected):
    parsed = parse_destination(url)
    assert parsed == expected
    assert parse_destination(str(parsed)) == parsed


@pytest.mark.parametrize("url", ["", "arr.example.org:6514", "tcp://arr.example.org", "https://arr.example.org",
                                 "syslog://arr", "tls://", "tls://:6514", "tls://arr:99999", "tls://arr:port",
                                 "tls://arr:0", "tls://arr/audit", "udp://arr?x=1", "tls://user@arr",
                                 "tls://[::1"])
def test_parse_bad_destinations(url):
    with pytest.raises(ValueError, match=re.escape("tls://host[:port]") + ".*" + re.escape("udp://host[:port]")):
        parse_destination(url)


def test_sender_for_picks_the_transport():
    ctx = ssl.create_default_context()
    assert isinstance(syslog.sender_for(parse_destination("tls://arr"), ctx), TlsSender)
    assert isinstance(syslog.sender_for(parse_destination("udp://arr"), None), UdpSender)
    with pytest.raises(ValueError, match="TLS client context"):
        syslog.sender_for(parse_destination("tls://arr"), None)
    with pytest.raises(ValueError):
        TlsSender(parse_destination("udp://arr"), ctx)


# --- against rsyslog ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("audit-pki"))
    ca = Authority(folder)
    rogue = Authority(folder, cn="rogue CA")
    return {"ca": ca, "server": ca.issue("rsyslog"), "client": ca.issue("xds-node"),
            "rogue_client": rogue.issue("rogue-node"), "rogue_ca": rogue}


@pytest.fixture
def rs(pki, tmp_path):
    with rsyslog.Rsyslog(pki["ca"].path, *pki["server"], folder=str(tmp_path)) as server:
        yield server


def good_context(pki) -> ssl.SSLContext:
    cert, key = pki["client"]
    return client_context(TlsFiles(cert, key, pki["ca"].path))


def tls(rs, context, timeout=5.0) -> TlsSender:
    return TlsSender(parse_destination(f"tls://127.0.0.1:{rs.tls_port}"), context, timeout)


def assert_clean_error(exc: DeliveryError, rs) -> None:
    text = str(exc)
    assert f"tls://127.0.0.1:{rs.tls_port}" in text
    assert "AuditMessage" not in text and PID not in text and "Müller" not in text


@needs_rsyslog
def test_tls_delivery_is_byte_identical(rs, pki):
    xmls = [record(seq) for seq in range(1, 6)]
    xmls.append(record(6, outcome=8, outcome_description="XDSRegistryError:\tline one\nline two"))
    sent = [message(x) for x in xmls]
    tls(rs, good_context(pki)).deliver(sent)
    got = rs.wait_for(len(xmls), timeout=1.0)
    assert got == xmls
    for received, raw, xml in zip(rs.records(), sent, xmls):
        assert received["raw"] == raw                       # the whole syslog message, header and all
        assert received["msg"] == b"\xef\xbb\xbf" + xml
        assert received["input"] == "imtcp"
        assert (received["pri"], received["version"], received["msgid"]) == ("85", "1", "IHE+RFC-3881")
        assert (received["hostname"], received["app_name"], received["procid"]) == \
            ("xds.example.org", "xds-registry", "1234")
        assert received["structured_data"] == "-"
    keys = [record_key(x) for x in got]
    assert [seq for _, seq in keys] == [1, 2, 3, 4, 5, 6]
    assert keys == [record_key(etree.fromstring(x)) for x in xmls]


@needs_rsyslog
def test_returned_deliver_means_rsyslog_has_them(rs, pki):
    sender = tls(rs, good_context(pki))
    total = 0
    for batch in (1, 7, 25):
        sender.deliver([message(record(total + i)) for i in range(batch)])
        total += batch
        # Nothing still in flight: the count is exact as soon as rsyslog has written its queue.
        assert len(rs.wait_for(total, timeout=1.0)) == total
    sender.deliver([message(record(1000 + i)) for i in range(10)])
    rs.stop()     # right away: what rsyslog read is in its queue, and a clean stop writes it out
    got = rs.messages()
    assert len(got) == total + 10
    assert [record_key(x)[1] for x in got[-10:]] == list(range(1000, 1010))


@needs_rsyslog
def test_large_record_whole_over_tls_refused_over_udp(rs, pki):
    xml = big_query_record(77)
    sent = message(xml)
    assert len(sent) > 65507
    tls(rs, good_context(pki)).deliver([sent, message(record(78))])
    got = rs.wait_for(2, timeout=2.0)
    assert got[0] == xml and record_key(got[0])[1] == 77
    assert etree.fromstring(got[0]).find("ParticipantObjectIdentification/ParticipantObjectQuery") is not None

    udp = UdpSender(parse_destination(f"udp://127.0.0.1:{rs.udp_port}"))
    with pytest.raises(DeliveryError, match=f"{len(sent)}-byte message exceeds the 65507-byte UDP maximum"):
        udp.send([message(record(79)), sent])
    udp.send([message(record(80))])
    got = rs.wait_for(3, timeout=2.0)
    # Checked before sending: neither the oversize record nor the one before it went out.
    assert [record_key(x)[1] for x in got] == [77, 78, 80]


@needs_rsyslog
def test_udp_delivery_arrives(rs):
    xmls = [record(seq) for seq in (11, 12, 13)]
    UdpSender(parse_destination(f"udp://127.0.0.1:{rs.udp_port}")).send([message(x) for x in xmls])
    got = rs.wait_for(3, timeout=2.0)
    assert sorted(got) == sorted(xmls)     # UDP does not promise order
    assert {r["input"] for r in rs.records()} == {"imudp"}
    assert {r["pri"] for r in rs.records()} == {"85"}


@needs_rsyslog
def test_stopped_repository_fails_promptly_and_restart_recovers(rs, pki):
    sender = tls(rs, good_context(pki))
    sender.deliver([message(record(1))])
    rs.wait_for(1, timeout=1.0)
    port = rs.tls_port
    rs.stop()
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="cannot connect") as caught:
        sender.deliver([message(record(2)), message(record(3))])
    assert time.monotonic() - started < 1.0
    assert_clean_error(caught.value, rs)

    rs.restart()
    assert rs.tls_port == port
    sender.deliver([message(record(2)), message(record(3))])   # the outbox's retry of the failed batch
    got = rs.wait_for(3, timeout=1.0)
    assert [record_key(x)[1] for x in got] == [1, 2, 3]


@needs_rsyslog
@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_client_without_accepted_certificate_is_refused(rs, pki, who):
    if who == "no certificate":
        context = client_context(None, ca=pki["ca"].path)
    else:
        context = client_context(TlsFiles(*pki["rogue_client"], pki["ca"].path))
    for tls_max in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        context.maximum_version = tls_max
        with pytest.raises(DeliveryError) as caught:
            tls(rs, context).deliver([message(record(500 + i)) for i in range(3)])
        assert_clean_error(caught.value, rs)
    # Under TLS 1.3 the records were on the wire before the refusal; rsyslog must have dropped them.
    tls(rs, good_context(pki)).deliver([message(record(1))])
    got = rs.wait_for(1, timeout=1.0)
    time.sleep(0.1)
    assert [record_key(x)[1] for x in rs.messages()] == [1]
    assert len(got) == 1


@needs_rsyslog
def test_wrong_server_ca_is_refused(rs, pki):
    cert, key = pki["client"]
    context = client_context(TlsFiles(cert, key, pki["rogue_ca"].path))
    with pytest.raises(DeliveryError, match="certificate verify failed") as caught:
        tls(rs, context).deliver([message(record(1))])
    assert_clean_error(caught.value, rs)
    time.sleep(0.1)
    assert rs.messages() == []


@needs_rsyslog
def test_hung_repository_times_out(rs, pki):
    rs.pause()
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryError, match="no answer within 0.5 s"):
            tls(rs, good_context(pki), timeout=0.5).deliver([message(record(1))])
        assert time.monotonic() - started < 2.0
    finally:
        rs.resume()


# --- the confirmation itself, against a minimal TLS peer ---------------------------------------
def _tls_peer(pki, behaviour, host="127.0.0.1"):
    """A one-shot TLS server that reads the whole stream, then confirms (close_notify), just drops the
    connection ("eof"), or says nothing at all ("silent")."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*pki["server"])
    listener = socket.create_server((host, 0))
    listener.settimeout(3)
    received = bytearray()

    def serve():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            try:
                tls_conn = context.wrap_socket(conn, server_side=True)
            except ssl.SSLError:
                return
            with tls_conn:
                if behaviour == "silent":
                    time.sleep(1.0)
                    return
                while True:
                    chunk = tls_conn.recv(65536)     # b"" at the client's close_notify
                    if not chunk:
                        break
                    received.extend(chunk)
                if behaviour == "confirm":
                    tls_conn.unwrap()                # our own close_notify
                # else: SSLSocket.close() sends no close_notify, a bare TCP close after reading it all.

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread, received


def _framed(messages):
    return b"".join(b"%d %s" % (len(m), m) for m in messages)


@pytest.mark.parametrize("behaviour", ["confirm", "eof", "silent"])
def test_only_the_peers_close_notify_confirms(pki, behaviour):
    listener, thread, received = _tls_peer(pki, behaviour)
    try:
        port = listener.getsockname()[1]
        sender = TlsSender(parse_destination(f"tls://127.0.0.1:{port}"), good_context(pki), timeout=0.5)
        sent = [message(record(1)), message(record(2))]
        if behaviour == "confirm":
            sender.deliver(sent)
        else:
            with pytest.raises(DeliveryError, match="without confirming" if behaviour == "eof" else "no answer"):
                sender.deliver(sent)
        thread.join(3)
        if behaviour != "silent":
            # Both peers read everything, octet-counted; only the one that said so counts as delivered.
            assert bytes(received) == _framed(sent)
    finally:
        listener.close()


def test_server_name_is_checked_as_the_context_says(pki):
    # The server's certificate names 127.0.0.1 and localhost; this peer answers on 127.0.0.2.
    for check, outcome in ((True, "refused"), (False, "delivered")):
        listener, thread, received = _tls_peer(pki, "confirm", host="127.0.0.2")
        try:
            port = listener.getsockname()[1]
            context = good_context(pki)
            context.check_hostname = check
            sender = TlsSender(parse_destination(f"tls://127.0.0.2:{port}"), context, timeout=2.0)
            sent = [message(record(1))]
            if outcome == "refused":
                with pytest.raises(DeliveryError, match=f"tls://127.0.0.2:{port}.*certificate verify failed"):
                    sender.deliver(sent)
            else:
                sender.deliver(sent)
                thread.join(3)
                assert bytes(received) == _framed(sent)
        finally:
            listener.close()
            thread.join(3)
