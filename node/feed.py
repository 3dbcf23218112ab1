"""The ITI-8 listener as the settings ask for it: MLLP over mutual TLS with the HTTP side's certificate
and CA when that side uses TLS, plain MLLP otherwise (xds.settings allows that only on loopback or
with allow_plain_mllp), the source list, the audit hook."""
from __future__ import annotations

from registry.feed import FeedAudit, feed_handler, internal_error_ack
from registry.feed_sources import FeedSources
from registry.service import FeedPatients
from registry.store import RegistryStore
from xds.mllp import MllpServer
from xds.settings import Settings
from xds.tls import server_context


def feed_sources(settings: Settings) -> FeedSources:
    """The source list, read once at start-up (a bad file stops the start with its reason)."""
    if settings.feed_sources:
        return FeedSources.load(settings.feed_sources)
    # xds.settings has refused every configuration where an open feed would face the network.
    return FeedSources.open()


def feed_listener(settings: Settings, store: RegistryStore, sources: FeedSources,
                  audit: FeedAudit | None = None) -> MllpServer:
    """An MllpServer for the settings (not yet started)."""
    tls = settings.tls
    return MllpServer(
        settings.host, settings.mllp_port, feed_handler(FeedPatients(store), sources, audit),
        error_reply=internal_error_ack, ssl_context=server_context(tls) if tls is not None else None,
        max_frame=settings.mllp_max_frame, frame_timeout=settings.mllp_frame_timeout,
        idle_timeout=settings.mllp_idle_timeout, handshake_timeout=settings.head_timeout,
        max_connections=settings.mllp_max_connections, source_limit=sources.connection_limit)


def send_patients(settings: Settings, address: str, messages: list[str], timeout: float = 10.0) -> list[str]:
    """Send ITI-8 messages on one connection, over TLS when the settings name a certificate or a CA
    (our certificate is then the client identity); the replies, in order."""
    from xds.mllp import MllpClient, parse_hostport

    host, port = parse_hostport(address)
    with MllpClient(host, port, timeout, ssl_context=settings.client_ssl_context()) as client:
        return [client.send(message) for message in messages]
