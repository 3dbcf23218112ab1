"""Assembles the actors a process runs and serves them over HTTP and MLLP."""
from __future__ import annotations

import logging
import os
import signal
import threading

from registry.config import RegistryConfig
from registry.feed import internal_error_ack
from registry.service import RegistryActor
from registry.store import RegistryStore
from repository.service import RepositoryActor
from xds.app import AppConfig, XdsApp
from xds.cheroot_adapter import HttpServer
from xds.mllp import MllpServer
from xds.settings import Settings

log = logging.getLogger("xds.server")


class Services:
    """Everything one `xds serve` process runs."""

    def __init__(self, settings: Settings):
        self.settings = settings
        os.makedirs(settings.data, exist_ok=True)
        spool = os.path.join(settings.data, "spool")
        os.makedirs(spool, exist_ok=True)
        self.registry = None
        self.repository = None
        endpoints = []
        if settings.role in ("all", "registry"):
            store = RegistryStore(settings.db_url)
            store.migrate()
            self.registry = RegistryActor(store, RegistryConfig(
                check_patients=settings.check_patients, max_query_results=settings.max_query_results,
                keep_extra_metadata=settings.keep_extra_metadata, profile=settings.profile,
                require_known_repositories=settings.require_known_repositories,
                route_retrieve=settings.route_retrieve, forward_timeout=settings.forward_timeout),
                client_ssl_context=settings.client_ssl_context(), spool_dir=spool)
            endpoints.append(self.registry.endpoint())
        if settings.role in ("all", "repository"):
            self.repository = RepositoryActor.from_settings(settings, self.registry)
            endpoints.append(self.repository.endpoint())
        self.app = XdsApp(endpoints, AppConfig(spool_dir=spool, max_request_bytes=settings.max_request_bytes,
                                               max_document_bytes=settings.max_document_bytes,
                                               base_url=settings.base_url, mime_bare_lf=settings.mime_bare_lf),
                          health=lambda: {"role": settings.role})
        self.http: HttpServer | None = None
        self.mllp = None

    def start(self) -> "Services":
        """Bind and serve in background threads (tests, and `serve` below)."""
        s = self.settings
        self.http = HttpServer(self.app, s.host, s.port, threads=s.threads, tls=s.tls,
                               server_name="xds", shutdown_timeout=10, max_header_bytes=s.max_header_bytes)
        self.http.start()
        if self.registry is not None and self.repository is not None and s.route_retrieve:
            # All in one process: the registry's own directory names the local repository, so ITI-43
            # sent to the registry endpoint reaches it like any other host.
            self.registry.store.add_repository(s.repository_id, self.url + "/xds/repository")
        if self.registry is not None and s.mllp_port is not None:
            self.mllp = MllpServer(s.host, s.mllp_port, self.registry.feed_handler(),
                                   error_reply=internal_error_ack).start()
        return self

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls is not None else "http"
        return f"{scheme}://{self.settings.host}:{self.port}"

    def stop(self) -> None:
        if self.mllp is not None:
            self.mllp.stop()
        if self.http is not None:
            self.http.stop()  # finishes requests in flight within shutdown_timeout
        if self.registry is not None:
            self.registry.close()  # then the threads it forwards ITI-43 on


def serve(settings: Settings) -> None:
    services = Services(settings).start()
    log.info("serving role=%s on %s (db %s)", settings.role, services.url, _safe_url(settings.db_url))
    if services.mllp is not None:
        log.info("ITI-8 feed (MLLP) on %s:%s", settings.host, services.mllp.port)
    print(f"xds: {settings.role} on {services.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    services.stop()


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
