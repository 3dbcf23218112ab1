"""The registry actor: its SOAP operations and its patient identity feed."""
from __future__ import annotations

import logging

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds.app import Endpoint, Operation, SoapRequest, SoapResponse
from xds.ebrim import adhoc_query_response, registry_response
from xds.errors import XdsException
from xds.registered import parse_utc
from xds.security.callers import caller_of
from xds.validation import Mode
from .config import RegistryConfig
from .guard import RegistryGuard
from .lookup import registered_documents
from .register import register
from .store import RegistryStore

log = logging.getLogger(__name__)


class FeedPatients:
    """What the ITI-8 feed needs of the registry: accept and merge patient ids."""

    def __init__(self, store: RegistryStore):
        self.store = store

    def add(self, patient_id: str) -> None:
        self.store.add_patient(patient_id)

    def merge(self, subsumed_id: str, surviving_id: str) -> None:
        self.store.merge_patient(subsumed_id, surviving_id)

    def relink(self, change):
        """ITI-64 (ADT^A43): re-file the entries of a local patient id under its new XAD-PID."""
        from .xadpid import relink

        return relink(self.store, change)


class RegistryActor:
    def __init__(self, store: RegistryStore, config: RegistryConfig | None = None, client_ssl_context=None,
                 spool_dir: str | None = None, max_document_bytes: int | None = None):
        self.store = store
        self.config = config or RegistryConfig()
        self.client_ssl_context = client_ssl_context  # presented to repository hosts when forwarding ITI-43
        self.spool_dir = spool_dir
        # The largest document a repository host may send back through ITI-43 routing (None: the default).
        self.max_document_bytes = max_document_bytes
        self._router = None  # the ITI-43 RetrieveRouter, made with the first operations() that routes

    def endpoint(self, path: str = "/xds/registry") -> Endpoint:
        return Endpoint(path, self.operations(), wsdl="registry.wsdl", policy_for=self.guard_for,
                        actor="Document Registry")

    def guard_for(self, req: SoapRequest) -> RegistryGuard:
        """The access policy of one request (the pipeline's authorise layer)."""
        return self.guard_of(req.principal)

    def guard_of(self, principal) -> RegistryGuard:
        return RegistryGuard(caller_of(principal, self.config.callers), self.config.policy, self.store,
                             hidden_statuses=self.config.rules.hidden_statuses)

    def _guard(self, req: SoapRequest) -> RegistryGuard:
        return req.policy if isinstance(req.policy, RegistryGuard) else self.guard_for(req)

    def operations(self) -> dict[str, Operation]:
        ops = {
            C.ACTION_REGISTER: Operation(self.register, C.response_action(C.ACTION_REGISTER)),
            C.ACTION_QUERY: Operation(self.query, C.response_action(C.ACTION_QUERY),
                                      error_payload=lambda errors: adhoc_query_response(errors=errors)),
        }
        ops[C.ACTION_REGISTERED_DOCUMENTS] = Operation(self.registered_documents,
                                                       C.response_action(C.ACTION_REGISTERED_DOCUMENTS))
        ops[C.ACTION_DELETE] = Operation(self.delete, C.response_action(C.ACTION_DELETE))
        ops[C.ACTION_UPDATE] = Operation(self.update, C.response_action(C.ACTION_UPDATE))
        ops[C.ACTION_MPQ] = Operation(lambda req: self.query(req, "ITI-51"), C.response_action(C.ACTION_MPQ),
                                      error_payload=lambda errors: adhoc_query_response(errors=errors))
        ops[C.ACTION_RESTRICTED_UPDATE] = Operation(lambda req: self.update(req, restricted=True),
                                                    C.response_action(C.ACTION_RESTRICTED_UPDATE))
        ops[C.ACTION_REGISTER_ON_DEMAND] = Operation(self.register_on_demand,
                                                     C.response_action(C.ACTION_REGISTER_ON_DEMAND))
        from .feed_v3 import operations as feed_v3_operations  # ITI-44 (self.feed_sources: who may feed)

        ops.update(feed_v3_operations(self))
        if self.config.route_retrieve:
            from xds.xdsb import retrieve_response
            from .route import RetrieveRouter

            if self._router is None:
                self._router = RetrieveRouter(self.store, self.config.forward_timeout, self.client_ssl_context,
                                              self.spool_dir, self.max_document_bytes)
            router = self._router
            ops[C.ACTION_RETRIEVE] = Operation(lambda req: router.retrieve(req, self._guard(req)),
                                               C.response_action(C.ACTION_RETRIEVE),
                                               error_payload=lambda errors: retrieve_response(errors),
                                               mtom_response=True)
        return ops

    def close(self) -> None:
        """Release what the actor holds for its lifetime: the ITI-43 router's forwarding threads."""
        if self._router is not None:
            self._router.close()

    def register(self, req: SoapRequest) -> SoapResponse:
        if self.config.require_known_repositories:
            self._check_submitter(req)
        deadline = req.envelope.header(C.COMMIT_DEADLINE)
        commit_before = parse_utc(deadline.text, "CommitDeadline") if deadline is not None else None
        req.registered = {}  # the audit layer's facts of the new entries (xds/audit/auditor.py)
        warnings = register(self.store, req.body, self.config, commit_before=commit_before, guard=self._guard(req),
                            registered=req.registered)
        return SoapResponse(registry_response(warnings))

    def register_on_demand(self, req: SoapRequest) -> SoapResponse:
        """ITI-61: ITI-42's registration in its On-Demand mode. The On-Demand Document Source answers the
        ITI-43 of its entries through their repositoryUniqueId, so with require_known_repositories it is
        held to ITI-42's rule: a host of the directory, registering for its own repositories only."""
        if self.config.require_known_repositories:
            self._check_submitter(req, "ITI-61")
        req.registered = {}
        warnings = register(self.store, req.body, self.config, mode=Mode.ON_DEMAND, guard=self._guard(req),
                            registered=req.registered)
        return SoapResponse(registry_response(warnings))

    def registered_documents(self, req: SoapRequest) -> SoapResponse:
        """The repositories' settlement lookup (registry/lookup.py): as open as ITI-42 is, no more."""
        allowed = self.repositories_of(req.peer_subject) if self.config.require_known_repositories else None
        return SoapResponse(registered_documents(self.store, req.body, allowed))

    def repositories_of(self, subject: str | None) -> set[str]:
        """The repositoryUniqueIds of the directory whose host presents this certificate subject."""
        if subject is None:
            return set()
        return {uid for uid, (_, subj) in self.store.repositories().items() if subj == subject}

    def _check_submitter(self, req: SoapRequest, tx: str = "ITI-42") -> None:
        """Only a known repository host may register, and only documents it holds."""
        subject = req.peer_subject
        peer = req.environ.get("REMOTE_ADDR")
        if subject is None:
            log.warning("request %s: %s from %s refused: no verified client certificate", req.request_id, tx, peer)
            raise XdsException(E.REGISTRY_ERROR, f"{tx} is accepted only from repository hosts presenting a "
                               "client certificate", "TLS")
        mine = self.repositories_of(subject)
        if not mine:
            log.warning("request %s: %s from %s refused: certificate subject %r is not in the repository "
                        "directory", req.request_id, tx, peer, subject)
            raise XdsException(E.REGISTRY_ERROR, f"certificate subject {subject} is not a repository in this "
                               f"registry's directory", "TLS")
        for eo in req.body.iter(C.q(C.NS_RIM, "ExtrinsicObject")):
            for slot in eo.findall(C.q(C.NS_RIM, "Slot")):
                if slot.get("name") == "repositoryUniqueId":
                    value = (slot.findtext(f"{{{C.NS_RIM}}}ValueList/{{{C.NS_RIM}}}Value") or "").strip()
                    if value not in mine:
                        log.warning("request %s: %s from %r refused: repositoryUniqueId %s is not its own",
                                    req.request_id, tx, subject, value)
                        raise XdsException(E.UNKNOWN_REPOSITORY_ID, f"DocumentEntry {eo.get('id')} names "
                                           f"repositoryUniqueId {value}, which is not a repository of certificate "
                                           f"subject {subject}", eo.get("id") or "")

    def delete(self, req: SoapRequest) -> SoapResponse:
        from .delete import delete_document_set

        delete_document_set(self.store, req.body, self._guard(req))
        return SoapResponse(registry_response())

    def update(self, req: SoapRequest, restricted: bool = False) -> SoapResponse:
        """ITI-57, or with restricted ITI-92 (Restricted Update Document Set): one transaction, two modes."""
        from .update import update_document_set

        return SoapResponse(registry_response(update_document_set(self.store, req.body, self.config,
                                                                  self._guard(req), restricted)))

    def register_element(self, request, commit_before=None, principal=None, registered: dict | None = None) -> list:
        """In-process ITI-42, for a repository running in the same process: principal is the ITI-41 caller's;
        registered: filled with what was registered (register.register), for the audit of the hop."""
        guard = self.guard_of(principal) if principal is not None else None
        return register(self.store, request, self.config, commit_before=commit_before, guard=guard,
                        registered=registered)

    def retrievable(self, principal, unique_ids: list[str]) -> set[str]:
        """For a repository in the same process: which of these documents the caller may retrieve."""
        with self.store.reading() as conn:
            return self.guard_of(principal).retrievable(conn, unique_ids)

    def registered_element(self, request) -> etree._Element:
        """In-process settlement lookup, for a repository running in the same process."""
        return registered_documents(self.store, request, None)

    def query(self, req: SoapRequest, transaction: str = "ITI-18") -> SoapResponse:
        """ITI-18, and ITI-51 (the Multi-Patient Stored Query action: its two queries only)."""
        from .query import query_answer

        payload, parts = query_answer(self.store, req.body, self.config, self._guard(req), transaction)
        return SoapResponse(payload, parts=parts)

    def feed_handler(self):
        from .feed import feed_handler

        return feed_handler(FeedPatients(self.store))
