"""The access policy for one repository request.

ITI-86 is accepted from the host's registry (its TLS subject, registry_subjects) or an administrator, in
every deployment. ITI-43 follows the registry's decision, which the host learns one of two ways
(docs/decisions.md, "Who decides what a host serves"):
- registry and repository in one process: the registry's guard says, per document, what the caller may
  retrieve, and the others are answered as unknown documents;
- a separate host under the DMP rules: it serves ITI-43 to its registry only (which decided before
  routing) and to administrators, so no host ever holds a second copy of the patients' access states.
Under the generic rules every authenticated caller may retrieve, as IHE XDS has it.
"""
from __future__ import annotations

from typing import Callable, Iterable

from xds import errors as E
from xds.errors import XdsException
from xds.security import policy as P
from xds.security.policy import Caller


class RepositoryGuard:
    def __init__(self, caller: Caller, registry_subjects: Iterable[str], dmp: bool,
                 registry_decides: Callable[[list[str]], set[str]] | None = None):
        """registry_decides: the in-process registry's answer (uniqueIds -> those the caller may retrieve)."""
        self.caller = caller
        self.registry_subjects = frozenset(registry_subjects)
        self.dmp = dmp
        self.registry_decides = registry_decides

    @property
    def from_registry(self) -> bool:
        return bool(self.caller.subjects & self.registry_subjects)

    def check_remove(self) -> None:
        decision = P.may_remove_documents(self.caller, self.registry_subjects)
        if not decision:
            raise XdsException(E.REPOSITORY_ERROR, f"access denied: {decision.reason}", "RemoveDocumentsRequest")

    def retrievable(self, unique_ids: list[str]) -> set[str]:
        """Of these uniqueIds, those this caller may be sent; the rest are answered as unknown documents."""
        if self.from_registry:
            return set(unique_ids)
        if self.registry_decides is not None:
            # The registry in this process decides for everyone: what it no longer answers for (the DMP's
            # Deleted documents) is not served to an administrator either.
            return self.registry_decides(unique_ids)
        if self.caller.kind == P.ADMIN:
            return set(unique_ids)
        if self.dmp:
            raise XdsException(E.REPOSITORY_ERROR, "access denied: under the DMP rules this host serves ITI-43 to "
                               "its registry only; retrieve through the registry's endpoint", "RetrieveDocumentSet")
        return set(unique_ids)
