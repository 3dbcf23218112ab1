"""Assembles the actors a process runs and serves them over HTTP and MLLP."""
from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

from registry.access import AccessStore
from registry.admin import PREFIX as ADMIN_PREFIX, AccessAdmin
from registry.admin_patients import PREFIX as PATIENTS_PREFIX, PatientAdmin
from registry.config import RegistryConfig
from registry.feed import no_audit
from registry.feed_v3 import pix_endpoint
from registry.service import RegistryActor
from registry.store import RegistryStore
from repository.service import RepositoryActor
from xds.app import AppConfig, XdsApp
from xds.audit.auditor import Auditor, AuditSource, RegistryFacts
from xds.audit.http import ADMIN_PREFIX as AUDIT_PREFIX, PATIENT_PREFIX as PATIENT_LOG_PREFIX, AuditAdmin, PatientLog
from xds.audit.store import AuditStore
from xds.cheroot_adapter import HttpServer
from xds.metrics import Metrics
from xds.security import modes
from xds.security.callers import CallerRules
from xds.security.matrix import load_matrix
from xds.security.policy import Matrix, Rules
from xds.portal.signin import PREFIX as SIGNIN_PREFIX
from xds.settings import Settings

from .feed import feed_listener, feed_sources

log = logging.getLogger("xds.server")

_SYSTEMS_TTL = 5.0  # seconds the directory's certificate subjects are taken as read


@dataclass(frozen=True)
class WorkerRole:
    """Which of the `xds serve` worker processes this is (node/workers.py). The primary (index 0) alone runs
    what must happen once per node: the patient feed listener, audit delivery, the repository's settlement
    job, and on its first start the clean-up of what a crash left (spooled parts, staged files), which the
    other workers must not do while a request of another process may be writing them."""

    index: int = 0
    count: int = 1
    first_start: bool = True  # False for a primary started again after it died: others are serving
    reuse_port: bool = False

    @property
    def primary(self) -> bool:
        return self.index == 0


class Services:
    """Everything one `xds serve` process runs."""

    def __init__(self, settings: Settings, worker: WorkerRole = WorkerRole()):
        self.settings = settings
        self.worker = worker
        os.makedirs(settings.data, exist_ok=True)
        spool = os.path.join(settings.data, "spool")
        os.makedirs(spool, exist_ok=True)
        if worker.primary and worker.first_start:
            _clean_spool(spool)
        self.registry = None
        self.repository = None
        self._systems: tuple[float, set[str]] = (0.0, set())  # (read again after, subjects): _known_system
        endpoints = []
        # The audit layer (xds/audit): its store is bound below, once the process's database is known.
        self.auditor = Auditor(None, AuditSource.of(settings.audit_source_id, settings.audit_enterprise_site),
                               CallerRules.from_settings(settings), base_url=settings.base_url) \
            if settings.audit else None
        if settings.role in ("all", "registry"):
            store = RegistryStore(settings.db_url, partitions=settings.registry_partitions)
            store.migrate()
            self.registry = RegistryActor(store, RegistryConfig(
                check_patients=settings.check_patients, max_query_results=settings.max_query_results,
                keep_extra_metadata=settings.keep_extra_metadata, profile=settings.profile,
                implied_references=settings.implied_references,
                require_known_repositories=settings.require_known_repositories,
                route_retrieve=settings.route_retrieve, forward_timeout=settings.forward_timeout,
                policy=policy_rules(settings), callers=CallerRules.from_settings(settings)),
                client_ssl_context=settings.client_ssl_context(), spool_dir=spool,
                max_document_bytes=settings.max_document_bytes)
            endpoints.append(self.registry.endpoint())
            endpoints.append(pix_endpoint(self.registry))  # ITI-44 also on its own path, /xds/pix
        if settings.role in ("all", "repository"):
            self.repository = RepositoryActor.from_settings(settings, self.registry, self.auditor)
            endpoints.append(self.repository.endpoint())
        self.delivery = None
        if self.auditor is not None:
            self._start_audit(settings)
        # GET /metrics (xds/metrics.py): the pools and the audit outbox are read at each scrape.
        self.metrics = Metrics(
            [("registry", self.registry.store.engine if self.registry else None),
             ("repository", self.repository.store.engine if self.repository else None)],
            audit_store=self.auditor.store if self.auditor is not None else None,
            audit_delivery=bool(settings.audit_repository or settings.notification_webhook)) if settings.metrics else None
        authenticator = modes.authenticator(settings, self._known_system, self._database())
        routes = {}
        if self.registry is not None:
            # The administration interface of the patients' access states (registry/admin.py).
            routes[ADMIN_PREFIX] = AccessAdmin(AccessStore(self.registry.store), authenticator,
                                               CallerRules.from_settings(settings),
                                               self.auditor.access_rights if self.auditor is not None else None)
            # The registry's patient ids (registry/admin_patients.py), the server side of `xds patient`.
            routes[PATIENTS_PREFIX] = PatientAdmin(self.registry.store, authenticator,
                                                   CallerRules.from_settings(settings), settings.profile,
                                                   self.auditor.patient_ids if self.auditor is not None else None)
        self.signin = None
        if self.registry is not None and settings.portal_issuer:
            self.signin = _signin(settings, self.registry.store.engine)
            routes[SIGNIN_PREFIX] = self.signin
        if self.auditor is not None:
            routes[AUDIT_PREFIX] = AuditAdmin(self.auditor.store, authenticator, CallerRules.from_settings(settings),
                                              self.auditor.source, settings.audit_repository)
            if self.registry is not None:
                routes[PATIENT_LOG_PREFIX] = PatientLog(self.auditor.store, authenticator,
                                                        CallerRules.from_settings(settings),
                                                        AccessStore(self.registry.store).state, self.signin)
        self.app = XdsApp(endpoints, AppConfig(spool_dir=spool, max_request_bytes=settings.max_request_bytes,
                                               max_document_bytes=settings.max_document_bytes,
                                               base_url=settings.base_url, mime_bare_lf=settings.mime_bare_lf,
                                               require_ws_addressing=settings.require_ws_addressing,
                                               authenticator=authenticator, auditor=self.auditor,
                                               async_reply_to=settings.async_reply_to, metrics=self.metrics,
                                               async_ssl_context=settings.client_ssl_context()
                                               if settings.async_reply_to else None),
                          health=self._health, routes=routes,
                          on_auth_refusal=self.auditor.authentication_failure if self.auditor is not None else None)
        if self.signin is not None:
            # The patients' pages, behind the sign-in; they run their transactions through this app.
            from registry.portal.pages import Portal

            self.signin.pages = Portal(self.app, self.signin, AccessStore(self.registry.store),
                                       audit_store=self.auditor.store if self.auditor is not None else None,
                                       auditor=self.auditor, secure_cookies=settings.portal_secure_cookies,
                                       masking=settings.profile == "dmp" and settings.security == "vihf")
        self.http: HttpServer | None = None
        self.mllp = None
        # The source list serves ITI-8 (MLLP) and ITI-44 (SOAP): loaded whenever one of them can use it.
        self.feed_sources = feed_sources(settings) if self.registry is not None and (
            settings.mllp_port is not None or settings.feed_sources) else None
        if self.registry is not None:
            self.registry.feed_sources = self.feed_sources  # ITI-44: without a list, administrators only
        # Called with a registry.feed.FeedEvent for every accepted and refused ITI-8 message.
        self.feed_audit = self.auditor.feed if self.auditor is not None else no_audit
        if self.metrics is not None:
            self.feed_audit = self.metrics.counting_feed(self.feed_audit)

    def _start_audit(self, settings: Settings) -> None:
        store = AuditStore(self._database())
        store.migrate()
        self.auditor.store = store
        if self.registry is not None:
            self.auditor.registry = RegistryFacts(self.registry.store, AccessStore(self.registry.store))
            router = self.registry._router
            if router is not None:
                router.hop_audit = self._routed_hop
        # One deliverer per node: the other workers' records wait in the shared outbox for the primary's.
        if (settings.audit_repository or settings.notification_webhook) and self.worker.primary:
            from xds.audit.delivery import Delivery

            self.delivery = Delivery(store, self.auditor.source, destination=settings.audit_repository,
                                     ssl_context=settings.audit_ssl_context() if settings.audit_repository else None,
                                     webhook=settings.notification_webhook,
                                     webhook_ssl_context=settings.client_ssl_context(),
                                     interval=settings.audit_interval, keep_days=settings.audit_keep_days)
            self.auditor.wake = self.delivery.kick

    def _routed_hop(self, req, url: str, repo: str, wanted, errors, answered: int) -> None:
        """The registry's side of the ITI-43 it forwards to a host (registry/route.py)."""
        failed = any(e.is_error for e in errors)
        outcome = 0 if not failed else (4 if answered else 8)
        codes = " ".join(sorted({e.code for e in errors if e.is_error}))[:200] or None
        self.auditor.hop("ITI-43", principal=req.principal, destination=url, outcome=outcome, description=codes,
                         documents=[(uid, repo, home) for home, uid in wanted])

    def start(self) -> "Services":
        """Bind and serve in background threads (tests, and `serve` below)."""
        s = self.settings
        if self.repository is not None and self.worker.primary:
            # Finishes what a crash left before any new request stages a file.
            self.repository.start(recover=self.worker.first_start)
        self.http = HttpServer(self.app, s.host, s.port, threads=s.threads, tls=s.tls,
                               server_name="xds", shutdown_timeout=10, max_header_bytes=s.max_header_bytes,
                               head_timeout=s.head_timeout, body_grace=s.body_grace, body_min_rate=s.body_min_rate,
                               body_window=s.body_window, max_connections=s.max_connections,
                               listen_backlog=s.listen_backlog, reuse_port=self.worker.reuse_port)
        try:
            self.http.start()
        except OSError as exc:
            if _in_use(exc):
                raise PortInUse(f"cannot listen on {s.host}:{s.port}: the address is already in use (another "
                                "server, or an earlier xds serve still running); choose another with --port") from None
            raise
        if not self.worker.primary:
            return self
        if self.auditor is not None:
            self.auditor.system("application-start")
            if self.delivery is not None:
                self.delivery.start()
        if self.registry is not None and self.repository is not None and s.route_retrieve:
            # All in one process: the registry's own directory names the local repository, so ITI-43
            # sent to the registry endpoint reaches it like any other host.
            self.registry.store.add_repository(s.repository_id, self.url + "/xds/repository")
        if self.registry is not None and s.mllp_port is not None:
            try:
                self.mllp = feed_listener(s, self.registry.store, self.feed_sources,
                                          lambda event: self.feed_audit(event)).start()
            except OSError as exc:
                self.http.stop()
                if _in_use(exc):
                    raise PortInUse(f"cannot listen for the patient feed on {s.host}:{s.mllp_port}: the address is "
                                    "already in use; choose another with --mllp-port") from None
                raise
            log.info("ITI-8 feed (MLLP%s) on %s:%s", " over mutual TLS" if self.mllp.tls else "", s.host,
                     self.mllp.port)
        return self

    def _health(self) -> dict:
        """GET /health: the role, and a round trip to the database (raises when it does not answer)."""
        engine = self._database()
        if engine is not None:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        return {"role": self.settings.role, "database": "ok", "worker": self.worker.index,
                "workers": self.worker.count}

    def _database(self):
        """The process's database, for what the core keeps there (the replay cache)."""
        if self.registry is not None:
            return self.registry.store.engine
        return self.repository.store.engine if self.repository is not None else None

    def _known_system(self, subject: str) -> bool:
        """A repository host of the registry's directory may send ITI-42 without an assertion (as itself).

        Asked for every request over TLS that carries an assertion (is it a hop?), so the directory's
        subjects are read at most every _SYSTEMS_TTL seconds, not once a request; a host added or removed
        with `xds repository` counts as such within that time."""
        if self.registry is None:
            return False
        now = time.monotonic()
        if now >= self._systems[0]:
            subjects = {subj for _, subj in self.registry.store.repositories().values() if subj}
            self._systems = (now + _SYSTEMS_TTL, subjects)
        return subject in self._systems[1]

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
        self.app.close()  # and the asynchronous ones already accepted (xds/async_reply.py)
        if self.repository is not None:
            self.repository.close()  # its settlement job
        if self.registry is not None:
            self.registry.close()  # then the threads it forwards ITI-43 on
        if self.auditor is not None and self.auditor.store is not None and self.worker.primary:
            try:
                self.auditor.system("application-stop")
            except Exception:
                log.exception("the application-stop audit record could not be written")
        if self.delivery is not None:
            self.delivery.stop()  # one last round; what it cannot send waits in the outbox
        # Close the pools last (the audit record above used them): a stopped server must not keep database
        # connections. The engines stay usable, so a caller may still read the store afterwards.
        for actor in (self.repository, self.registry):
            if actor is not None:
                actor.store.engine.dispose()


def _signin(settings: Settings, engine):
    """The patients' OpenID Connect sign-in (xds/portal), on the registry's database."""
    from xds.portal.oidc import OidcConfig
    from xds.portal.signin import SignIn

    config = OidcConfig(issuer=settings.portal_issuer, client_id=settings.portal_client_id,
                        client_secret=settings.portal_client_secret, scopes=settings.portal_scopes,
                        patient_claim=settings.portal_patient_claim,
                        patient_id_format=settings.portal_patient_id_format, ca_file=settings.portal_ca,
                        session_ttl=settings.portal_session_ttl)
    signin = SignIn(config, engine, settings.base_url, secure_cookies=settings.portal_secure_cookies,
                    after_logout="/portal/signed-out")
    signin.migrate()
    return signin


class PortInUse(ValueError):
    """A listening address another process holds: one line for the operator, not a traceback."""


def _in_use(exc: OSError) -> bool:
    # cheroot re-raises a failed bind as a bare socket.error whose errno is lost; only its text says why.
    return exc.errno == errno.EADDRINUSE or "[Errno 98]" in str(exc) or "Address already in use" in str(exc)


def policy_rules(settings: Settings) -> Rules:
    """The access policy's rule set: the DMP's exactly when profile = dmp and security = vihf."""
    dmp = settings.profile == "dmp" and settings.security == "vihf"
    matrix = load_matrix(settings.habilitation_matrix) if settings.habilitation_matrix else None
    if matrix is not None and not matrix.official:
        log.warning("habilitation_matrix %s says it is not the official matrix (official = false)",
                    settings.habilitation_matrix)
    return Rules(dmp=dmp, matrix=matrix or Matrix(), check_resource_id=settings.security == "vihf")


def serve(settings: Settings) -> None:
    if settings.security == "none":
        log.warning("security = none: requests are not authenticated beyond TLS; use --security xua|vihf")
    if settings.worker_count > 1:
        from .workers import serve_workers

        return serve_workers(settings)
    services = Services(settings).start()
    log.info("serving role=%s on %s (db %s)", settings.role, services.url, _safe_url(settings.db_url))
    print(f"xds: {settings.role} on {services.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    services.stop()


def _clean_spool(spool: str) -> None:
    """MTOM parts spooled by requests a crash interrupted: no one owns them any more (a request that
    completed has moved its parts into the repository or removed them)."""
    left = 0
    for name in os.listdir(spool):
        if name.startswith("xop-") and name.endswith(".part"):
            try:
                os.unlink(os.path.join(spool, name))
                left += 1
            except FileNotFoundError:
                pass
    if left:
        log.warning("removed %d spooled MTOM parts left by an interrupted run", left)


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
