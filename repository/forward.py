"""How the repository reaches its registry: the ITI-42 half of ITI-41, and the settlement lookup
(registry/lookup.py) that says which of its documents the registry holds."""
from __future__ import annotations

import datetime as _dt
from typing import Protocol, Sequence

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds.client import RegistryUnreachable, registry_call
from xds.ebrim import read_response_errors
from xds import registered as wire
from xds.errors import XdsError, XdsException
from xds.registered import Registered


class RegistryUnanswered(XdsException):
    """The ITI-42 got no RegistryResponse (timeout, lost connection, HTTP error without one): the
    registry may or may not have committed it, and only the settlement lookup can say which."""


class RegistryLink(Protocol):
    def register(self, request: etree._Element, commit_before: _dt.datetime,
                 forward: Sequence[etree._Element] = (), principal=None) -> list[XdsError]:
        """Register a SubmitObjectsRequest: warnings on Success; RegistryUnanswered when the outcome is
        unknown; XdsException when the registry refused it. forward: SOAP headers passed on (the
        caller's wsse:Security); principal: the ITI-41 caller, for a registry in the same process."""

    def registered(self, repository_id: str, unique_ids: Sequence[str] = (), after: str | None = None,
                   limit: int | None = None) -> Registered:
        """Which of these uniqueIds (or, with none given, which page of all its documents) the registry
        holds for this repository, whatever their status. XdsException when it cannot be asked."""


class InProcessRegistry:
    """Both actors in one process: no HTTP, no XML round trip for ITI-42."""

    def __init__(self, actor):
        self.actor = actor

    def register(self, request: etree._Element, commit_before: _dt.datetime,
                 forward: Sequence[etree._Element] = (), principal=None, registered: dict | None = None) -> list[XdsError]:
        # The caller was authenticated by this very process: its principal goes to the registry's policy.
        return self.actor.register_element(request, commit_before, principal, registered)

    def registered(self, repository_id: str, unique_ids: Sequence[str] = (), after: str | None = None,
                   limit: int | None = None) -> Registered:
        return wire.read_response(self.actor.registered_element(wire.request(repository_id, unique_ids, after,
                                                                             limit)))


class RemoteRegistry:
    def __init__(self, url: str, timeout: float = 30.0, ssl_context=None):
        self.url = url
        self.timeout = timeout
        self.ssl_context = ssl_context

    def register(self, request: etree._Element, commit_before: _dt.datetime,
                 forward: Sequence[etree._Element] = (), principal=None) -> list[XdsError]:
        deadline = etree.Element(C.COMMIT_DEADLINE, nsmap={"srv": C.NS_SERVER})
        deadline.text = wire.utc_text(commit_before)
        try:
            response = registry_call(self.url, C.ACTION_REGISTER, request, self.timeout, self.ssl_context,
                                     extra_headers=[deadline, *forward])
        except RegistryUnreachable:
            raise  # nothing was sent: a plain refusal
        except XdsException as exc:
            raise RegistryUnanswered.of(exc.errors) from None
        status, errors = read_response_errors(response)
        if status == C.RESPONSE_SUCCESS:
            return errors
        if not any(e.is_error for e in errors):
            # The submitter needs a coded error even when the registry sent none.
            errors = errors + [XdsError(E.REGISTRY_ERROR, f"the registry answered status {status or '(none)'} "
                                        "with no RegistryError", self.url)]
        # Passed back as they came: the Document Source must see the registry's own codes.
        raise XdsException.of(errors)

    def registered(self, repository_id: str, unique_ids: Sequence[str] = (), after: str | None = None,
                   limit: int | None = None) -> Registered:
        response = registry_call(self.url, C.ACTION_REGISTERED_DOCUMENTS,
                                 wire.request(repository_id, unique_ids, after, limit), self.timeout,
                                 self.ssl_context)
        return wire.read_response(response)


class AuditedRegistry:
    """A registry link whose every ITI-42 leaves an audit record of this repository's side of the hop
    (xds/audit/auditor.py); for a registry in the same process, the registry's side too, since that
    call passes no SOAP layer of its own."""

    def __init__(self, link: RegistryLink, auditor, destination: str):
        self.link = link
        self.auditor = auditor
        self.destination = destination
        self.in_process = isinstance(link, InProcessRegistry)

    def register(self, request: etree._Element, commit_before: _dt.datetime,
                 forward: Sequence[etree._Element] = (), principal=None) -> list[XdsError]:
        registered: dict = {}
        try:
            if self.in_process:  # what the registry stored, for the registry's side of the record
                errors = self.link.register(request, commit_before, forward, principal, registered)
            else:
                errors = self.link.register(request, commit_before, forward, principal)
        except XdsException as exc:
            self._record(request, principal, 12 if isinstance(exc, (RegistryUnanswered, RegistryUnreachable)) else 8,
                         " ".join(sorted({e.code for e in exc.errors if e.is_error}))[:200] or None)
            raise
        except Exception:
            self._record(request, principal, 12, "internal error")
            raise
        self._record(request, principal, 0, None, registered)
        return errors

    def _record(self, request, principal, outcome: int, description: str | None,
                registered: dict | None = None) -> None:
        from xds.audit.facts import of_request
        from xds.security.principal import Principal

        facts = of_request("ITI-42", request)
        self.auditor.hop("ITI-42", principal=principal or Principal(mode="tls"), destination=self.destination,
                         outcome=outcome, description=description, patient_id=facts.patient_id,
                         submission_set_uid=facts.submission_set_uid,
                         registry_side=self.in_process, request=request if principal is not None else None,
                         registered=registered)

    def registered(self, repository_id: str, unique_ids: Sequence[str] = (), after: str | None = None,
                   limit: int | None = None) -> Registered:
        return self.link.registered(repository_id, unique_ids, after, limit)
