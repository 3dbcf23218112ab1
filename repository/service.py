"""The repository actor: ITI-41 and ITI-43 on one SOAP endpoint."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from xds import constants as C
from xds.app import Endpoint, Operation, SoapRequest, SoapResponse
from xds.ebrim import registry_response
from xds.security.callers import CallerRules, caller_of
from .guard import RepositoryGuard
from .blobs import BlobStore, FileSystemBlobStore
from .forward import AuditedRegistry, InProcessRegistry, RegistryLink, RemoteRegistry
from .provide import Provide
from .settle import Ledger, SettlementJob
from .retrieve import retrieve, retrieve_response
from .store import RepositoryStore

log = logging.getLogger(__name__)


@dataclass
class RepositoryConfig:
    repository_id: str
    max_document_bytes: int = 4 * 1024 ** 3
    registry_timeout: float = 30.0   # also the CommitDeadline of each ITI-42 (repository/settle.py)
    settle_interval: float = 30.0    # seconds between settlements of pending documents; 0: only at start-up
    check_interval: float = 0        # seconds between report-only consistency checks; 0: never
    # The access policy (repository/guard.py): the registry's TLS subjects, whether the DMP rules are in
    # force, and who counts as administrator.
    registry_subjects: tuple[str, ...] = ()
    dmp_rules: bool = False
    callers: CallerRules = field(default_factory=CallerRules)
    profile: str | None = None       # the metadata validation profile of ITI-41 (None: ihe)
    lenient: bool = False            # profile checks against the document content warn instead of refusing
    implied_references: bool = False  # nested Classifications / ExternalIdentifiers may omit their parent's id


class RepositoryActor:
    def __init__(self, store: RepositoryStore, blobs: BlobStore, registry: RegistryLink, config: RepositoryConfig):
        self.store = store
        self.blobs = blobs
        self.registry = registry
        self.config = config
        self.ledger = Ledger(store, blobs, registry, config.repository_id, config.registry_timeout)
        self._provide = Provide(blobs, store, registry, config.repository_id, config.max_document_bytes,
                                self.ledger, config.profile, config.lenient,
                                config.implied_references)
        self._job: SettlementJob | None = None

    def start(self, recover: bool = True) -> None:
        """Finish what a previous run left (see recover), then settle periodically. recover False: other
        processes of this node are serving, so staged files may be theirs (settling alone is safe)."""
        if recover:
            self.recover()
        if self.config.settle_interval > 0 and self._job is None:
            self._job = SettlementJob(self.ledger, self.config.settle_interval, self.check,
                                      self.config.check_interval).start()

    def recover(self) -> dict[str, int]:
        """Start-up: drop staged files no pending row names, then settle what is due."""
        left = self.blobs.clean_staging(keep=self.store.staged_keys())
        if left:
            log.warning("removed %d staged documents left by an interrupted run", left)
        counts = self.ledger.settle_due()
        waiting = self.store.pending_count()
        if any(counts.values()) or waiting:
            log.warning("settled documents left pending by an interrupted run: %s; %d still pending", counts, waiting)
        return counts

    def check(self, repair: bool = False, hashes: bool = False):
        """Compare this repository with its registry (repository/check.py)."""
        from .check import Check

        return Check(self.store, self.blobs, self.registry, self.config.repository_id).run(repair, hashes)

    def close(self) -> None:
        if self._job is not None:
            self._job.stop()
            self._job = None

    @classmethod
    def from_settings(cls, settings, registry_actor=None, auditor=None) -> "RepositoryActor":
        """Build from xds Settings; registry_actor is the registry of the same process, if any; auditor
        records each ITI-42 this repository sends (xds/audit)."""
        if settings.registry_url:
            link: RegistryLink = RemoteRegistry(settings.registry_url, settings.registry_timeout,
                                                settings.client_ssl_context())
        elif registry_actor is not None:
            link = InProcessRegistry(registry_actor)
        else:
            raise ValueError("a repository without a registry in the same process needs --registry-url "
                             "(the registry's ITI-42 endpoint, e.g. http://registry:8080/xds/registry)")
        if auditor is not None:
            link = AuditedRegistry(link, auditor, settings.registry_url or "in-process registry")
        db_url = settings.repository_db or settings.db_url
        shared = registry_actor is not None and db_url == settings.db_url
        # One engine per database keeps the connection pool, and SQLite's single writer, in one place.
        store = RepositoryStore(registry_actor.store.engine if shared else db_url)
        store.migrate()
        blobs = FileSystemBlobStore(os.path.join(settings.data, "documents"), durable=settings.document_fsync)
        return cls(store, blobs, link, RepositoryConfig(
            settings.repository_id, settings.max_document_bytes, settings.registry_timeout, settings.settle_interval,
            settings.check_interval, tuple(settings.registry_subjects),
            settings.profile == "dmp" and settings.security == "vihf", CallerRules.from_settings(settings),
            settings.profile, settings.lenient, settings.implied_references))

    def endpoint(self, path: str = "/xds/repository") -> Endpoint:
        return Endpoint(path, self.operations(), wsdl="repository.wsdl", policy_for=self.guard_for,
                        actor="Document Repository")

    def guard_for(self, req: SoapRequest) -> RepositoryGuard:
        caller = caller_of(req.principal, self.config.callers)
        decides = None
        # Audit wraps the link (AuditedRegistry); the registry in this process decides all the same.
        link = getattr(self.registry, "link", self.registry)
        if isinstance(link, InProcessRegistry):
            actor = link.actor
            decides = lambda uids: actor.retrievable(req.principal, uids)  # noqa: E731
        return RepositoryGuard(caller, self.config.registry_subjects, self.config.dmp_rules, decides)

    def _guard(self, req: SoapRequest) -> RepositoryGuard:
        return req.policy if isinstance(req.policy, RepositoryGuard) else self.guard_for(req)

    def operations(self) -> dict[str, Operation]:
        return {
            C.ACTION_PROVIDE: Operation(self.provide, C.response_action(C.ACTION_PROVIDE)),
            C.ACTION_RETRIEVE: Operation(self.retrieve, C.response_action(C.ACTION_RETRIEVE),
                                         error_payload=lambda errors: retrieve_response(errors),
                                         mtom_response=True),
            # ITI-86 answers plain SOAP even to an MTOM request: its response carries no document.
            C.ACTION_REMOVE_DOCUMENTS: Operation(self.remove_documents,
                                                 C.response_action(C.ACTION_REMOVE_DOCUMENTS), mtom_response=False),
        }

    def provide(self, req: SoapRequest) -> SoapResponse:
        warnings = self._provide(req.body, req.mtom, req.xop, forward=req.security_to_pass_on(),
                                 principal=req.principal)
        return SoapResponse(registry_response(warnings))

    def remove_documents(self, req: SoapRequest) -> SoapResponse:
        from .remove import remove_documents

        self._guard(req).check_remove()
        payload = remove_documents(req.body, self.store, self.blobs, self.config.repository_id)
        return SoapResponse(payload, mtom=False)

    def retrieve(self, req: SoapRequest) -> SoapResponse:
        payload, attachments = retrieve(req.body, self.store, self.blobs, self.config.repository_id, self._guard(req))
        return SoapResponse(payload, attachments=attachments, mtom=True)
