"""ITI-20 Record Audit Event: audit records to an Audit Record Repository by syslog.

IHE ITI TF-2 3.20.4.1 sends each DICOM ``AuditMessage`` as one RFC 5424 syslog message, over TLS
(RFC 5425, the secure and reliable choice) or UDP (RFC 5426).  :func:`format_message` builds the
message; :class:`TlsSender` and :class:`UdpSender` carry it.

Delivery is at least once, never "maybe"
----------------------------------------
The caller (the audit outbox) marks a batch delivered only when :meth:`TlsSender.deliver` returns, so
deliver() must not return unless the repository has read every byte of the batch.  A completed
``sendall`` proves nothing: the bytes may sit in a kernel buffer of either host when the repository
dies.  RFC 5425 has no acknowledgement, so the proof is the TLS closure handshake:

1. after the last message we send our TLS ``close_notify``;
2. the peer reads its stream in order, so it meets our ``close_notify`` only after it has read (and
   handed to its parser) every message before it; rsyslog then ends the session with its own
   ``close_notify``;
3. we return only once that ``close_notify`` has arrived.  A TCP EOF without it, a reset, an alert,
   or silence beyond ``timeout`` raises :class:`DeliveryError`, and the batch is sent again later.

Measured against rsyslog 8.2302 (imtcp with the ``ossl`` stream driver, TLS 1.2 and 1.3): it
answers our ``close_notify`` with its own within a few milliseconds of reading the last message, so
deliver() returns promptly.  A repository that rejects our certificate does so, under TLS 1.3, only
after our handshake has "succeeded" and our messages are on the wire; it answers with an alert or a
reset, never a ``close_notify``, so the same check catches it.

Why a memory BIO rather than ``SSLSocket.unwrap()``: unwrap() reports success when OpenSSL has
*received a fatal alert* (that also marks the read side shut), and after two zero returns of
SSL_shutdown; both would turn a rejected batch into a "delivered" one.  Driving
:class:`ssl.SSLObject` ourselves, we send the ``close_notify`` and then read until OpenSSL reports
the peer's own ``close_notify`` (``SSLZeroReturnError``), with every other outcome an error.

A known receiver bug, not ours to fix: rsyslog 8.2302's ossl driver closes each session's socket
twice (fixed upstream in rsyslog PR 6375).  A file rsyslog opens between the two closes loses its
descriptor, which the next accepted connection reuses, and rsyslog then writes its *output* into that
client's TLS stream.  This sender sees non-TLS bytes and raises DeliveryError, so nothing is wrongly
confirmed on that connection; but the records written there never reached rsyslog's log.  A
repository on that version should have its outputs open before the first client connects
(tests/rsyslog.py does), or use the gtls driver or a fixed rsyslog.

What "read" means: rsyslog has parsed the messages into its queue; whether they survive a crash of
rsyslog after that is the repository's configuration (a disk-assisted queue), not something a
syslog sender can observe.  Retries after a failed deliver() may duplicate records the repository
did read; records carry a record id and sequence number (:func:`xds.audit.records.record_key`) so
duplicates can be dropped.

UDP gives no acknowledgement at all: :class:`UdpSender` is fire-and-forget and the outbox never
counts a UDP send as a confirmed delivery.
"""
from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

__all__ = ["Destination", "DeliveryError", "TlsSender", "UdpSender", "format_message", "parse_destination",
           "sender_for", "PRI", "MSGID", "BOM"]

# ITI TF-2 3.20.4.1.2: facility 10 (security/authorization), severity 5 (normal but significant).
FACILITY_AUTHPRIV = 10
SEVERITY_NOTICE = 5
PRI = f"<{FACILITY_AUTHPRIV * 8 + SEVERITY_NOTICE}>".encode("ascii")   # b"<85>"
VERSION = b"1"
MSGID = "IHE+RFC-3881"       # ITI TF-2 3.20.4.1.2
BOM = b"\xef\xbb\xbf"        # RFC 5424 MSG-UTF8: tells the receiver the MSG is UTF-8
NILVALUE = "-"

# RFC 5424 6.2 header field lengths.
MAX_HOSTNAME, MAX_APP_NAME, MAX_PROCID, MAX_MSGID = 255, 48, 128, 32

TLS_PORT = 6514              # RFC 5425 8
UDP_PORT = 514               # RFC 5426 3.3
# Largest UDP payload: 65535 minus the IP (IPv4 only) and UDP headers.
UDP_MAX_IPV4 = 65535 - 20 - 8
UDP_MAX_IPV6 = 65535 - 8

_READ_CHUNK = 65536
_FLUSH_AT = 256 * 1024   # bytes of TLS records held before writing them to the socket


# --- the message --------------------------------------------------------------------------------
def _header_field(value: object, limit: int) -> bytes:
    """RFC 5424 PRINTUSASCII (33..126), at most ``limit`` octets; NILVALUE when empty.

    Invalid characters become "_" rather than being dropped so that two different values seldom
    collapse into one, and a receiver's parser never meets a space inside a header field.
    """
    text = "" if value is None else str(value)
    clean = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return (clean or NILVALUE).encode("ascii")


def _timestamp(value: datetime) -> bytes:
    # RFC 5424 6.2.3 (RFC 3339, no leap second), in UTC so receivers need no zone arithmetic; a naive
    # value is local time, as xds.audit.records reads EventDateTime.
    utc = value.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode("ascii")


def format_message(xml: bytes, *, hostname: str, app_name: str, procid: str, timestamp: datetime,
                   msgid: str = MSGID) -> bytes:
    """One RFC 5424 SYSLOG-MSG carrying ``xml`` (an AuditMessage, already serialised) as its MSG.

    ``<85>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM xml``: PRI and MSGID as ITI TF-2 3.20.4.1.2
    requires, no STRUCTURED-DATA.  Header fields are made printable US-ASCII and cut to their RFC 5424
    lengths (255/48/128/32); the XML is sent exactly as given and must be UTF-8.
    """
    if not isinstance(xml, (bytes, bytearray)):
        raise TypeError("the audit record must be bytes (the serialised AuditMessage)")
    try:
        bytes(xml).decode("utf-8")
    except UnicodeDecodeError:
        # The BOM promises UTF-8 (RFC 5424 6.4); a repository may reject or mangle anything else.
        raise ValueError("the audit record is not UTF-8") from None
    header = b" ".join((PRI + VERSION, _timestamp(timestamp), _header_field(hostname, MAX_HOSTNAME),
                        _header_field(app_name, MAX_APP_NAME), _header_field(procid, MAX_PROCID),
                        _header_field(msgid, MAX_MSGID)))
    return header + b" " + NILVALUE.encode("ascii") + b" " + BOM + bytes(xml)


# --- where to ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Destination:
    transport: str   # "tls" (RFC 5425) or "udp" (RFC 5426)
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


_DEFAULT_PORTS = {"tls": TLS_PORT, "udp": UDP_PORT}
_ACCEPTED = "tls://host[:port] (RFC 5425, port 6514 by default) or udp://host[:port] (RFC 5426, port 514 by default)"


def parse_destination(url: str) -> Destination:
    """The audit repository named by ``tls://host[:port]`` or ``udp://host[:port]`` (IPv6 in brackets)."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"no audit repository given; expected {_ACCEPTED}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"audit repository {url!r} is not a valid address ({exc}); expected {_ACCEPTED}") from None
    transport = parts.scheme.lower()
    if transport not in _DEFAULT_PORTS:
        raise ValueError(f"audit repository {url!r}: unsupported scheme {parts.scheme!r}; expected {_ACCEPTED}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"audit repository {url!r}: user information is not allowed; expected {_ACCEPTED}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"audit repository {url!r}: a path, query or fragment is not allowed; expected {_ACCEPTED}")
    host = parts.hostname
    if not host:
        raise ValueError(f"audit repository {url!r} names no host; expected {_ACCEPTED}")
    if port == 0:
        raise ValueError(f"audit repository {url!r}: port 0 is not a port; expected {_ACCEPTED}")
    return Destination(transport, host, port if port is not None else _DEFAULT_PORTS[transport])


class DeliveryError(Exception):
    """The repository did not (provably) receive the batch. The message names the destination, never a record."""


# --- TLS ----------------------------------------------------------------------------------------
class TlsSender:
    """RFC 5425 syslog over (mutual) TLS, each deliver() confirmed by the peer's close_notify.

    ``ssl_context`` is a client context: it carries this server's certificate for the repository
    to check and the CA the repository's certificate must chain to; whether the host name is checked
    is the context's ``check_hostname``.  ``timeout`` bounds each wait on the network (connect, each
    write, the wait for the peer's close), so a stalled repository fails the call within ``timeout``
    of going quiet while a large batch to a live one is not cut short.
    """

    def __init__(self, destination: Destination, ssl_context: ssl.SSLContext, timeout: float = 10.0):
        if destination.transport != "tls":
            raise ValueError(f"TlsSender needs a tls:// destination, not {destination}")
        if not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError("TlsSender needs an ssl.SSLContext (client certificate and trusted CA)")
        self.destination = destination
        self.ssl_context = ssl_context
        self.timeout = timeout

    def deliver(self, messages: list[bytes]) -> None:
        """Send ``messages`` on one connection; return only once the repository has read them all."""
        if not messages:
            return
        try:
            sock = socket.create_connection((self.destination.host, self.destination.port), timeout=self.timeout)
        except TimeoutError:
            raise DeliveryError(f"audit repository {self.destination}: cannot connect within {self.timeout:g} s") from None
        except OSError as exc:
            raise DeliveryError(f"audit repository {self.destination}: cannot connect ({_reason(exc)})") from None
        try:
            _Session(sock, self.ssl_context, self.destination.host).run(messages)
        except DeliveryError as exc:
            raise DeliveryError(f"audit repository {self.destination}: {exc}") from None
        except TimeoutError:
            raise DeliveryError(f"audit repository {self.destination}: no answer within {self.timeout:g} s") from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"audit repository {self.destination}: TLS failure ({_reason(exc)})") from None
        except OSError as exc:
            raise DeliveryError(f"audit repository {self.destination}: connection lost ({_reason(exc)})") from None
        finally:
            sock.close()


class _Session:
    """One TLS session driven through memory BIOs, so that we decide what counts as a clean close."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, host: str):
        self.sock = sock
        # Our writes are few and deliberate (handshake, the batch, close_notify); Nagle would only
        # hold the last one back waiting for a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=False, server_hostname=host)

    def run(self, messages: list[bytes]) -> None:
        self._handshake()
        for message in messages:
            # RFC 5425 4.3 octet counting: the length prefix lets the receiver take any byte in the
            # XML, newlines included, without a delimiter.
            frame = memoryview(str(len(message)).encode("ascii") + b" " + message)
            while frame:
                # A memory BIO takes everything at once; the loop only guards against a short write.
                frame = frame[self.tls.write(frame):]
            if self.outgoing.pending >= _FLUSH_AT:
                self._flush()
        self._close()

    def _handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self._flush()

    def _close(self) -> None:
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass   # expected: our close_notify is queued and the peer's has not been seen yet
        else:
            # The peer had already ended the session (an alert or its own close) before seeing ours,
            # so nothing tells us it read the last messages.
            raise DeliveryError("the repository ended the session before confirming the messages")
        self._flush()
        while True:
            try:
                data = self.tls.read(_READ_CHUNK)
            except ssl.SSLZeroReturnError:
                return   # the peer's close_notify: it has read everything we sent before ours
            except ssl.SSLWantReadError:
                self._receive()
                continue
            except ssl.SSLEOFError:
                raise DeliveryError("the repository closed the connection without confirming the messages") from None
            if not data:
                return   # the same close_notify, as OpenSSL reports it when our own was not yet recorded
            # Anything else the peer sends before its close_notify means nothing to us: keep reading.

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> None:
        data = self.sock.recv(_READ_CHUNK)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()


def _reason(exc: BaseException) -> str:
    # Only the exception's class and OS/TLS reason: a record's content never reaches these messages.
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return exc.__class__.__name__


# --- UDP ----------------------------------------------------------------------------------------
class UdpSender:
    """RFC 5426 syslog over UDP: one datagram per message, fire and forget.

    UDP gives no acknowledgement: send() returning means the datagrams left this host, not that the
    repository got them.  The outbox therefore never counts a UDP send as a confirmed delivery.  A
    message too large for one datagram raises :class:`DeliveryError` rather than being truncated
    (a cut AuditMessage is not XML); such records need the TLS transport.
    """

    def __init__(self, destination: Destination):
        if destination.transport != "udp":
            raise ValueError(f"UdpSender needs a udp:// destination, not {destination}")
        self.destination = destination

    def send(self, messages: list[bytes]) -> None:
        if not messages:
            return
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.destination.host, self.destination.port, type=socket.SOCK_DGRAM)[0]
        except OSError as exc:
            raise DeliveryError(f"audit repository {self.destination}: cannot resolve ({_reason(exc)})") from None
        limit = UDP_MAX_IPV6 if family == socket.AF_INET6 else UDP_MAX_IPV4
        # Checked before anything is sent, so a batch is not half sent because of its last record.
        for message in messages:
            if len(message) > limit:
                raise DeliveryError(f"audit repository {self.destination}: a {len(message)}-byte message exceeds "
                                    f"the {limit}-byte UDP maximum; use tls://")
        with socket.socket(family, kind, proto) as sock:
            for message in messages:
                try:
                    sock.sendto(message, address)
                except OSError as exc:
                    raise DeliveryError(f"audit repository {self.destination}: send failed ({_reason(exc)})") from None


def sender_for(destination: Destination, ssl_context: ssl.SSLContext | None = None,
               timeout: float = 10.0) -> TlsSender | UdpSender:
    """The sender for ``destination``: a :class:`TlsSender` (needs ``ssl_context``) or a :class:`UdpSender`."""
    if destination.transport == "tls":
        if ssl_context is None:
            raise ValueError(f"audit repository {destination} needs a TLS client context (certificate and CA)")
        return TlsSender(destination, ssl_context, timeout)
    return UdpSender(destination)
