"""The ITI-8 feed as a door: MLLP over mutual TLS on real sockets (127.0.0.1), the source list, merges,
the bounds, and the start-up rules. What the registry holds is checked through its store and through
ITI-42 and ITI-18 over mutual-TLS HTTP."""
from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from node.server import Services
from registry.feed_sources import FeedSources
from tests.certs import Authority
from tests.test_feed import RecordingPatients, err_text, msa, seg
from tests.test_http_registry import adhoc
from tests.helpers import make_feed_server
from xds import builder
from xds import constants as C
from xds.client import SoapClient
from xds.mllp import FrameDecoder, MllpClient, MllpServer, encode_frame, mllp_send
from xds.settings import Settings, load
from xds.tls import TlsFiles, client_context, server_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OID_A = "1.2.250.1.999.1"
OID_B = "1.2.250.1.999.2"
_n = iter(range(1, 10_000))


def pid(oid: str) -> str:
    return f"T{os.getpid()}X{next(_n)}^^^&{oid}&ISO"


def adt(trigger: str, patient: str, *, app: str, fac: str, mrg: str | None = None, control: str = "C1") -> str:
    structure = "ADT_A39" if trigger == "A40" else "ADT_A01"
    segments = [f"MSH|^~\\&|{app}|{fac}|XDS|REG|20240101120000||ADT^{trigger}^{structure}|{control}|P|2.5",
                "EVN||20240101120000", f"PID|||{patient}||DOE^JANE||19800101|F"]
    if mrg:
        segments.append(f"MRG|{mrg}")
    return "\r".join(segments) + "\r"


SOURCES = f'''
# Hopital A may create, update and merge patients of its authority.
[[source]]
name = "Hopital A"
subject = "O=XDS test,CN=feed-a"
application = "ADT_A"
facility = "HOSP_A"
authorities = ["{OID_A}"]
merge = true

# Hopital B may create and update, never merge.
[[source]]
name = "Hopital B"
subject = "O=XDS test,CN=feed-b"
application = "ADT_B"
facility = "HOSP_B"
authorities = ["{OID_B}"]
'''


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(str(folder))
    rogue = Authority(str(tmp_path_factory.mktemp("rogue")), cn="Rogue CA")
    sources = folder / "feed-sources.toml"
    sources.write_text(SOURCES)
    return SimpleNamespace(ca=ca.path, registry=ca.issue("registry"), a=ca.issue("feed-a"), b=ca.issue("feed-b"),
                           x=ca.issue("feed-x"), rogue=rogue.issue("feed-a"), sources=str(sources), authority=ca)


def identity(pki, pair) -> ssl.SSLContext:
    return client_context(TlsFiles(pair[0], pair[1], pki.ca))


@pytest.fixture(scope="module")
def registry(pki, tmp_path_factory):
    s = Settings(role="all", port=0, mllp_port=0, data=str(tmp_path_factory.mktemp("feed-tls")),
                 tls_cert=pki.registry[0], tls_key=pki.registry[1], tls_ca=pki.ca, feed_sources=pki.sources,
                 log_level="WARNING")
    s.validate()
    services = Services(s)
    events = []
    services.feed_audit = events.append
    services.start()
    assert services.mllp.tls
    try:
        yield SimpleNamespace(services=services, events=events, store=services.registry.store,
                              port=services.mllp.port, a=identity(pki, pki.a), b=identity(pki, pki.b),
                              x=identity(pki, pki.x))
    finally:
        services.stop()


def feed(registry, ctx, message: str) -> str:
    return mllp_send("127.0.0.1", registry.port, message, timeout=5, ssl_context=ctx)


def patients(registry) -> dict:
    return {p: (active, merged) for p, active, merged in registry.store.list_patients()}


def register(registry, patient: str) -> tuple[str, list[str]]:
    reply = SoapClient(registry.services.url + "/xds/registry", ssl_context=registry.a).call(
        C.ACTION_REGISTER, builder.simple_submission(patient))
    codes = [e.get("errorCode") for e in reply.body.iter(f"{{{C.NS_RS}}}RegistryError")]
    return reply.body.get("status"), codes


def find(registry, patient: str) -> int:
    reply = SoapClient(registry.services.url + "/xds/registry", ssl_context=registry.a).call(
        C.ACTION_QUERY, adhoc(C.SQ_FIND_DOCUMENTS, {
            "$XDSDocumentEntryPatientId": [f"'{patient}'"],
            "$XDSDocumentEntryStatus": [f"('{C.STATUS_APPROVED}')"]}))
    assert reply.body.get("status") == C.RESPONSE_SUCCESS
    return len(reply.body.findall(f".//{{{C.NS_RIM}}}ExtrinsicObject"))


def assert_unknown(registry, patient: str) -> None:
    """The registry does not know the patient: not in the store, and ITI-42 for it is refused."""
    assert patient not in patients(registry)
    assert register(registry, patient) == (C.RESPONSE_FAILURE, ["XDSUnknownPatientId"])


def last_event(registry, control: str):
    found = [e for e in registry.events if e.control_id == control]
    assert found, control
    return found[-1]


# --- an allowed source ------------------------------------------------------------------------------

def test_allowed_source_creates_updates_and_merges(registry):
    old, new = pid(OID_A), pid(OID_A)
    assert msa(feed(registry, registry.a, adt("A01", old, app="ADT_A", fac="HOSP_A", control="A1")))[1] == "AA"
    assert patients(registry)[old] == (True, None)
    assert register(registry, old) == (C.RESPONSE_SUCCESS, [])
    assert msa(feed(registry, registry.a, adt("A08", old, app="ADT_A", fac="HOSP_A", control="A2")))[1] == "AA"
    assert find(registry, old) == 1 and find(registry, new) == 0
    reply = feed(registry, registry.a, adt("A40", new, mrg=old, app="ADT_A", fac="HOSP_A", control="A3"))
    assert msa(reply)[:3] == ["MSA", "AA", "A3"]
    assert patients(registry)[old] == (False, new) and patients(registry)[new] == (True, None)
    assert find(registry, old) == 0 and find(registry, new) == 1
    event = last_event(registry, "A3")
    assert (event.outcome, event.subject, event.source, event.patients) == (
        "accepted", "O=XDS test,CN=feed-a", "Hopital A", (new, old))


def test_one_connection_carries_many_messages(registry):
    ids = [pid(OID_B) for _ in range(3)]
    with MllpClient("127.0.0.1", registry.port, 5, ssl_context=registry.b) as client:
        replies = [client.send(adt("A04", p, app="ADT_B", fac="HOSP_B", control=f"K{i}")) for i, p in enumerate(ids)]
    assert [msa(r)[1:3] for r in replies] == [["AA", "K0"], ["AA", "K1"], ["AA", "K2"]]
    assert all(patients(registry)[p] == (True, None) for p in ids)


# --- refused at the handshake -----------------------------------------------------------------------

def _refused_at_handshake(registry, ctx) -> None:
    patient = pid(OID_A)
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        feed(registry, ctx, adt("A01", patient, app="ADT_A", fac="HOSP_A"))
    assert not isinstance(info.value, TimeoutError), info.value
    assert time.monotonic() - started < 3
    assert_unknown(registry, patient)


def test_client_without_certificate_is_refused_at_the_handshake(registry, pki):
    _refused_at_handshake(registry, client_context(None, ca=pki.ca))


def test_certificate_of_another_ca_is_refused_at_the_handshake(registry, pki):
    # Same subject as the allowed source, signed by a CA the registry does not trust.
    _refused_at_handshake(registry, identity(pki, pki.rogue))


def test_plain_mllp_to_the_tls_port_gets_nothing(registry):
    patient = pid(OID_A)
    with pytest.raises(OSError):  # closed (or reset) without an ACK
        mllp_send("127.0.0.1", registry.port, adt("A01", patient, app="ADT_A", fac="HOSP_A"), timeout=3)
    assert_unknown(registry, patient)


# --- refused by the source list ---------------------------------------------------------------------

def _refused(registry, ctx, message: str, control: str, code: int, location: str, rule: str) -> str:
    before = patients(registry)
    reply = feed(registry, ctx, message)
    assert msa(reply)[:3] == ["MSA", "AR", control]
    err = seg(reply, "ERR")
    assert err[3].startswith(f"{code}^") and err[2] == location and err[5].startswith(rule + "^")
    assert patients(registry) == before
    event = last_event(registry, control)
    assert event.outcome == "denied" and event.ack_code == "AR"
    return err_text(reply)


def test_certificate_of_our_ca_not_in_the_list(registry):
    patient = pid(OID_A)
    text = _refused(registry, registry.x, adt("A01", patient, app="ADT_A", fac="HOSP_A", control="X1"), "X1",
                    207, "", "UNKNOWN_SOURCE")
    assert "'O=XDS test,CN=feed-x' is not a patient identity source" in text
    assert last_event(registry, "X1").subject == "O=XDS test,CN=feed-x"
    assert_unknown(registry, patient)


def test_allowed_certificate_claiming_another_sending_facility(registry):
    patient = pid(OID_A)
    text = _refused(registry, registry.a, adt("A01", patient, app="ADT_A", fac="HOSP_B", control="F1"), "F1",
                    103, "MSH^1^4", "SENDER_NOT_ALLOWED")
    assert "'HOSP_B'" in text
    assert_unknown(registry, patient)


def test_allowed_certificate_claiming_another_sending_application(registry):
    patient = pid(OID_B)
    _refused(registry, registry.a, adt("A01", patient, app="ADT_B", fac="HOSP_B", control="F2"), "F2",
             103, "MSH^1^3", "SENDER_NOT_ALLOWED")
    assert_unknown(registry, patient)


def test_allowed_certificate_with_a_foreign_assigning_authority(registry):
    patient = pid(OID_B)
    text = _refused(registry, registry.a, adt("A01", patient, app="ADT_A", fac="HOSP_A", control="F3"), "F3",
                    103, "PID^1^3", "AUTHORITY_NOT_ALLOWED")
    assert OID_B in text
    assert_unknown(registry, patient)


def test_merge_from_a_source_not_allowed_to_merge(registry):
    old, new = pid(OID_B), pid(OID_B)
    assert msa(feed(registry, registry.b, adt("A01", old, app="ADT_B", fac="HOSP_B")))[1] == "AA"
    assert register(registry, old) == (C.RESPONSE_SUCCESS, [])
    text = _refused(registry, registry.b, adt("A40", new, mrg=old, app="ADT_B", fac="HOSP_B", control="M1"), "M1",
                    207, "MRG^1^1", "MERGE_NOT_ALLOWED")
    assert "may not merge" in text
    assert patients(registry)[old] == (True, None) and new not in patients(registry)
    assert find(registry, old) == 1 and find(registry, new) == 0


def test_merge_of_another_sources_patients(registry):
    # Hopital A may merge, but only in its own authority: B's patient stays where it is.
    old, new = pid(OID_B), pid(OID_B)
    assert msa(feed(registry, registry.b, adt("A01", old, app="ADT_B", fac="HOSP_B")))[1] == "AA"
    assert register(registry, old) == (C.RESPONSE_SUCCESS, [])
    _refused(registry, registry.a, adt("A40", new, mrg=old, app="ADT_A", fac="HOSP_A", control="M2"), "M2",
             103, "PID^1^3", "AUTHORITY_NOT_ALLOWED")
    assert find(registry, old) == 1 and find(registry, new) == 0


def test_merge_across_assigning_authorities(registry):
    old, new = pid(OID_A), pid(OID_A)
    foreign = pid("1.2.250.1.999.77")
    assert msa(feed(registry, registry.a, adt("A01", old, app="ADT_A", fac="HOSP_A")))[1] == "AA"
    before = patients(registry)
    reply = feed(registry, registry.a, adt("A40", new, mrg=f"{old}~{foreign}", app="ADT_A", fac="HOSP_A"))
    assert msa(reply)[1] == "AR" and seg(reply, "ERR")[2] == "MRG^1^1"
    assert patients(registry) == before


# --- bounds -------------------------------------------------------------------------------------------

def _client_hello(ctx: ssl.SSLContext) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class Trickler(threading.Thread):
    """Sends its bytes one at a time, every ``gap`` seconds, until told to stop or cut off."""

    def __init__(self, sock, data: bytes, gap: float = 0.05):
        super().__init__(daemon=True)
        self.sock, self.data, self.gap = sock, data, gap
        self.stop = threading.Event()
        self.cut_after = None

    def run(self):
        started = time.monotonic()
        try:
            for i in range(len(self.data)):
                if self.stop.is_set():
                    return
                self.sock.send(self.data[i:i + 1])
                time.sleep(self.gap)
        except OSError:
            self.cut_after = time.monotonic() - started


def test_tricklers_never_delay_another_senders_ack(registry, pki):
    trickling = []
    # Three that stall in the TLS handshake, sending their ClientHello a byte at a time.
    for _ in range(3):
        raw = socket.create_connection(("127.0.0.1", registry.port))
        trickling.append(Trickler(raw, _client_hello(identity(pki, pki.a)) * 4))
    # Three authenticated ones inside a frame that never ends, and one that sends only noise.
    for data in [b"\x0b" + adt("A01", pid(OID_A), app="ADT_A", fac="HOSP_A").encode() * 50] * 3 + [b"noise" * 500]:
        conn = registry.a.wrap_socket(socket.create_connection(("127.0.0.1", registry.port), timeout=5),
                                      server_hostname="127.0.0.1")
        trickling.append(Trickler(conn, data))
    for t in trickling:
        t.start()
    try:
        time.sleep(0.3)
        worst = 0.0
        for i in range(5):
            started = time.monotonic()
            reply = feed(registry, registry.b, adt("A01", pid(OID_B), app="ADT_B", fac="HOSP_B", control=f"S{i}"))
            worst = max(worst, time.monotonic() - started)
            assert msa(reply)[1] == "AA"
        assert worst < 1.0, worst
        assert all(t.is_alive() for t in trickling)  # still trickling while the others were answered
    finally:
        for t in trickling:
            t.stop.set()
            t.sock.close()


def _wait_closed(sock, within: float) -> float:
    """Seconds until the server hangs up on ``sock`` (recv returns EOF or fails)."""
    started = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except (ssl.SSLError, ConnectionError):
        pass
    except socket.timeout:
        pytest.fail(f"still open after {within}s")
    return time.monotonic() - started


def test_a_frame_must_complete_within_frame_timeout_however_it_trickles():
    with make_feed_server(RecordingPatients(), host="127.0.0.1", port=0, frame_timeout=1.0) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        trickler = Trickler(sock, b"\x0bMSH|" + b"x" * 1000, gap=0.05)
        started = time.monotonic()
        trickler.start()
        trickler.join(5)
        assert trickler.cut_after is not None and 0.9 < time.monotonic() - started < 3
        sock.close()
        assert msa(mllp_send("127.0.0.1", server.port, adt("A01", pid(OID_A), app="A", fac="F")))[1] == "AA"


def test_noise_is_no_activity_for_the_idle_timeout():
    with make_feed_server(RecordingPatients(), host="127.0.0.1", port=0, idle_timeout=1.0) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        trickler = Trickler(sock, b"noise" * 200, gap=0.05)
        started = time.monotonic()
        trickler.start()
        trickler.join(5)
        assert trickler.cut_after is not None and 0.9 < time.monotonic() - started < 3
        sock.close()


def test_the_tls_handshake_has_one_deadline(pki):
    ctx = server_context(TlsFiles(pki.registry[0], pki.registry[1], pki.ca))
    with make_feed_server(RecordingPatients(), host="127.0.0.1", port=0, ssl_context=ctx,
                          handshake_timeout=1.0) as server:
        silent = socket.create_connection(("127.0.0.1", server.port))
        assert 0.9 < _wait_closed(silent, 5) < 3
        silent.close()
        sock = socket.create_connection(("127.0.0.1", server.port))
        trickler = Trickler(sock, _client_hello(identity(pki, pki.a)) * 4, gap=0.05)
        trickler.start()
        trickler.join(5)
        assert trickler.cut_after is not None
        sock.close()


def test_connections_per_source_are_bounded(pki):
    ctx = server_context(TlsFiles(pki.registry[0], pki.registry[1], pki.ca))
    sources = FeedSources.from_dict({"source": [
        {"subject": "O=XDS test,CN=feed-a", "application": "ADT_A", "facility": "HOSP_A", "authorities": [OID_A],
         "max_connections": 1}]})
    with make_feed_server(RecordingPatients(), host="127.0.0.1", port=0, ssl_context=ctx,
                          source_limit=sources.connection_limit) as server:
        a = identity(pki, pki.a)
        with MllpClient("127.0.0.1", server.port, 5, ssl_context=a) as first:
            assert msa(first.send(adt("A01", pid(OID_A), app="ADT_A", fac="HOSP_A")))[1] == "AA"
            with pytest.raises(OSError):
                with MllpClient("127.0.0.1", server.port, 5, ssl_context=a) as second:
                    second.send(adt("A01", pid(OID_A), app="ADT_A", fac="HOSP_A"))
            # Another source is not held up by A's cap.
            b = identity(pki, pki.b)
            assert msa(mllp_send("127.0.0.1", server.port, adt("A01", pid(OID_A), app="X", fac="Y"),
                                 ssl_context=b))[1] == "AA"
            assert msa(first.send(adt("A01", pid(OID_A), app="ADT_A", fac="HOSP_A")))[1] == "AA"
        deadline = time.monotonic() + 3
        while True:  # the slot is given back once the server has seen the first connection close
            try:
                reply = mllp_send("127.0.0.1", server.port, adt("A01", pid(OID_A), app="ADT_A", fac="HOSP_A"),
                                  ssl_context=a)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert msa(reply)[1] == "AA"


def test_connections_in_total_are_bounded():
    with MllpServer("127.0.0.1", 0, lambda message, peer: message, max_connections=2) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", server.port))
        assert _wait_closed(extra, 3) < 2
        extra.close()
        held[0].sendall(encode_frame("ping"))
        decoder = FrameDecoder()
        held[0].settimeout(3)
        assert decoder.feed(held[0].recv(100)) == [b"ping"]
        for sock in held:
            sock.close()


def test_subject_is_written_as_the_http_side_writes_it(pki):
    seen = []
    ctx = server_context(TlsFiles(pki.registry[0], pki.registry[1], pki.ca))
    with MllpServer("127.0.0.1", 0, lambda message, peer: seen.append(peer) or message, ssl_context=ctx) as server:
        mllp_send("127.0.0.1", server.port, "hello", ssl_context=identity(pki, pki.b))
    assert seen[0].subject == "O=XDS test,CN=feed-b" and seen[0].tls and seen[0].address == "127.0.0.1"


# --- start-up rules ---------------------------------------------------------------------------------

def _serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "serve", "--port", "0", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_plain_mllp_on_a_non_loopback_address_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="plain MLLP .* on 0.0.0.0.*--allow-plain-mllp"):
        load(env={}, overrides={"host": "0.0.0.0", "mllp_port": 2575, "allow_anonymous": True})
    r = _serve("--host", "0.0.0.0", "--mllp-port", "0", "--allow-anonymous", "--data", str(tmp_path / "d"))
    assert r.returncode == 2 and "--allow-plain-mllp" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was made
    # The flag alone is not enough: without TLS the list is the only check of who feeds.
    with pytest.raises(ValueError, match="needs feed_sources"):
        load(env={}, overrides={"host": "0.0.0.0", "mllp_port": 2575, "allow_anonymous": True,
                                "allow_plain_mllp": True})
    # On loopback, plain and open, as before.
    assert load(env={}, overrides={"mllp_port": 2575}).mllp_port == 2575


def test_the_tls_feed_needs_a_ca_and_a_source_list(pki):
    tls = {"tls_cert": pki.registry[0], "tls_key": pki.registry[1], "mllp_port": 2575}
    with pytest.raises(ValueError, match="needs tls_ca"):
        load(env={}, overrides=tls)
    with pytest.raises(ValueError, match="needs feed_sources"):
        load(env={}, overrides={**tls, "tls_ca": pki.ca})
    assert load(env={}, overrides={**tls, "tls_ca": pki.ca, "feed_sources": pki.sources}).feed_sources
    # A repository-only process has no feed to guard.
    load(env={}, overrides={**tls, "role": "repository", "registry_url": "https://r/xds/registry"})


@pytest.mark.parametrize("name,value", [("mllp_max_frame", 0), ("mllp_max_connections", 0),
                                        ("mllp_frame_timeout", 0), ("mllp_idle_timeout", -1)])
def test_feed_bounds_must_be_positive(name, value):
    with pytest.raises(ValueError, match=name):
        load(env={}, overrides={"mllp_port": 2575, name: value})
    assert load(env={f"XDS_{name.upper()}": "7"}, overrides={"mllp_port": 2575}).__dict__[name] == 7


def test_a_bad_source_list_stops_the_start_with_its_reason(pki, tmp_path):
    bad = tmp_path / "sources.toml"
    bad.write_text('[[source]]\nsubject = "CN=x"\napplication = "A"\nfacility = "F"\nauthorities = ["1.02"]\n')
    r = _serve("--mllp-port", "0", "--data", str(tmp_path / "d"), "--tls-cert", pki.registry[0], "--tls-key",
               pki.registry[1], "--tls-ca", pki.ca, "--feed-sources", str(bad))
    assert r.returncode == 2 and "'1.02' is not an OID" in r.stderr and "Traceback" not in r.stderr


def test_plain_sources_with_the_flag(tmp_path):
    sources = tmp_path / "plain.toml"
    sources.write_text(f'''
[[source]]
name = "lab"
plain = true
application = "LAB"
facility = "LAB"
authorities = ["{OID_A}"]
addresses = ["127.0.0.0/8"]

[[source]]
name = "elsewhere"
plain = true
application = "FAR"
facility = "FAR"
authorities = ["{OID_A}"]
addresses = ["10.9.0.0/16"]
''')
    s = load(env={}, overrides={"host": "0.0.0.0", "port": 0, "mllp_port": 0, "allow_anonymous": True,
                                "allow_plain_mllp": True, "feed_sources": str(sources),
                                "data": str(tmp_path / "d")})
    services = Services(s).start()
    try:
        assert not services.mllp.tls
        near, far = pid(OID_A), pid(OID_A)
        assert msa(mllp_send("127.0.0.1", services.mllp.port, adt("A01", near, app="LAB", fac="LAB")))[1] == "AA"
        reply = mllp_send("127.0.0.1", services.mllp.port, adt("A01", far, app="FAR", fac="FAR"))
        # From 127.0.0.1 only the lab's entry applies, and it may not claim to be FAR.
        assert msa(reply)[1] == "AR" and seg(reply, "ERR")[5].startswith("SENDER_NOT_ALLOWED^")
        assert "sending application 'FAR' (MSH-3) is not one a sender without TLS at 127.0.0.1" in err_text(reply)
        known = {p for p, _, _ in services.registry.store.list_patients()}
        assert near in known and far not in known
    finally:
        services.stop()


# --- the command line ---------------------------------------------------------------------------------

def test_xds_patient_over_the_tls_feed(registry, pki, tmp_path):
    env = {**os.environ, "XDS_TLS_CERT": pki.a[0], "XDS_TLS_KEY": pki.a[1], "XDS_TLS_CA": pki.ca}
    address = f"127.0.0.1:{registry.port}"
    old, new = pid(OID_A), pid(OID_A)

    folder = tmp_path / "cli"
    folder.mkdir()

    def xds(*args):
        return subprocess.run([sys.executable, "-m", "node.cli", "patient", *args], cwd=folder,
                              capture_output=True, text=True, timeout=60, env={**env, "PYTHONPATH": ROOT})

    r = xds("add", old, "--mllp", address, "--application", "ADT_A", "--facility", "HOSP_A")
    assert r.returncode == 0 and f"added {old}" in r.stdout, r.stderr
    r = xds("merge", old, new, "--mllp", address, "--application", "ADT_A", "--facility", "HOSP_A")
    assert r.returncode == 0 and "merged" in r.stdout, r.stderr
    assert patients(registry)[old] == (False, new)
    other = pid(OID_A)
    r = xds("add", other, "--mllp", address)  # claims XDS_CLI / XDS, which feed-a may not
    assert r.returncode == 1 and "refused (AR)" in r.stderr and "sending application 'XDS_CLI'" in r.stderr
    assert other not in patients(registry)
    assert list(folder.iterdir()) == []  # it talked to the server, not to a local database
