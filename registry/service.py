"""The registry actor: its SOAP operations and its patient identity feed."""
from __future__ import annotations

from xds import constants as C
from xds.app import Endpoint, Operation, SoapRequest, SoapResponse
from xds.ebrim import adhoc_query_response, registry_response
from .config import RegistryConfig
from .register import register
from .store import RegistryStore


class FeedPatients:
    """What the ITI-8 feed needs of the registry: accept and merge patient ids."""

    def __init__(self, store: RegistryStore):
        self.store = store

    def add(self, patient_id: str) -> None:
        self.store.add_patient(patient_id)

    def merge(self, subsumed_id: str, surviving_id: str) -> None:
        self.store.merge_patient(subsumed_id, surviving_id)


class RegistryActor:
    def __init__(self, store: RegistryStore, config: RegistryConfig | None = None):
        self.store = store
        self.config = config or RegistryConfig()

    def endpoint(self, path: str = "/xds/registry") -> Endpoint:
        return Endpoint(path, self.operations(), wsdl="registry.wsdl")

    def operations(self) -> dict[str, Operation]:
        return {
            C.ACTION_REGISTER: Operation(self.register, C.response_action(C.ACTION_REGISTER)),
            C.ACTION_QUERY: Operation(self.query, C.response_action(C.ACTION_QUERY),
                                      error_payload=lambda errors: adhoc_query_response(errors=errors)),
        }

    def register(self, req: SoapRequest) -> SoapResponse:
        warnings = register(self.store, req.body, self.config)
        return SoapResponse(registry_response(warnings))

    def register_element(self, request) -> list:
        """In-process ITI-42, for a repository running in the same process."""
        return register(self.store, request, self.config)

    def query(self, req: SoapRequest) -> SoapResponse:
        from .query import stored_query

        return SoapResponse(stored_query(self.store, req.body, self.config))

    def feed_handler(self):
        from .feed import handle_adt

        patients = FeedPatients(self.store)
        return lambda message: handle_adt(message, patients)
