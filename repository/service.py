"""The repository actor: ITI-41 and ITI-43 on one SOAP endpoint."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from xds import constants as C
from xds.app import Endpoint, Operation, SoapRequest, SoapResponse
from xds.ebrim import registry_response
from .blobs import BlobStore, FileSystemBlobStore
from .forward import InProcessRegistry, RegistryLink, RemoteRegistry
from .provide import Provide
from .retrieve import retrieve, retrieve_response
from .store import RepositoryStore

log = logging.getLogger(__name__)


@dataclass
class RepositoryConfig:
    repository_id: str
    max_document_bytes: int = 4 * 1024 ** 3


class RepositoryActor:
    def __init__(self, store: RepositoryStore, blobs: BlobStore, registry: RegistryLink, config: RepositoryConfig):
        self.store = store
        self.blobs = blobs
        self.registry = registry
        self.config = config
        self._provide = Provide(blobs, store, registry, config.repository_id, config.max_document_bytes)

    @classmethod
    def from_settings(cls, settings, registry_actor=None) -> "RepositoryActor":
        """Build from xds Settings; registry_actor is the registry of the same process, if any."""
        if settings.registry_url:
            link: RegistryLink = RemoteRegistry(settings.registry_url, settings.registry_timeout,
                                                settings.client_ssl_context())
        elif registry_actor is not None:
            link = InProcessRegistry(registry_actor)
        else:
            raise ValueError("a repository without a registry in the same process needs --registry-url "
                             "(the registry's ITI-42 endpoint, e.g. http://registry:8080/xds/registry)")
        db_url = settings.repository_db or settings.db_url
        shared = registry_actor is not None and db_url == settings.db_url
        # One engine per database keeps the connection pool, and SQLite's single writer, in one place.
        store = RepositoryStore(registry_actor.store.engine if shared else db_url)
        store.migrate()
        blobs = FileSystemBlobStore(os.path.join(settings.data, "documents"), durable=settings.document_fsync)
        left = blobs.clean_staging()
        if left:
            log.warning("removed %d staged documents left by an interrupted run", left)
        return cls(store, blobs, link, RepositoryConfig(settings.repository_id, settings.max_document_bytes))

    def endpoint(self, path: str = "/xds/repository") -> Endpoint:
        return Endpoint(path, self.operations(), wsdl="repository.wsdl")

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
        warnings = self._provide(req.body, req.mtom, req.xop)
        return SoapResponse(registry_response(warnings))

    def remove_documents(self, req: SoapRequest) -> SoapResponse:
        from .remove import remove_documents

        payload = remove_documents(req.body, self.store, self.blobs, self.config.repository_id)
        return SoapResponse(payload, mtom=False)

    def retrieve(self, req: SoapRequest) -> SoapResponse:
        payload, attachments = retrieve(req.body, self.store, self.blobs, self.config.repository_id)
        return SoapResponse(payload, attachments=attachments, mtom=True)
