"""How the repository reaches its registry for the ITI-42 half of ITI-41."""
from __future__ import annotations

from typing import Protocol

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds.client import registry_call
from xds.ebrim import read_response_errors
from xds.errors import XdsError, XdsException


class RegistryLink(Protocol):
    def register(self, request: etree._Element) -> list[XdsError]:
        """Register a SubmitObjectsRequest: warnings on Success, XdsException on anything else."""


class InProcessRegistry:
    """Both actors in one process: no HTTP, no XML round trip."""

    def __init__(self, actor):
        self.actor = actor

    def register(self, request: etree._Element) -> list[XdsError]:
        return self.actor.register_element(request)


class RemoteRegistry:
    def __init__(self, url: str, timeout: float = 30.0, ssl_context=None):
        self.url = url
        self.timeout = timeout
        self.ssl_context = ssl_context

    def register(self, request: etree._Element) -> list[XdsError]:
        response = registry_call(self.url, C.ACTION_REGISTER, request, self.timeout, self.ssl_context)
        status, errors = read_response_errors(response)
        if status == C.RESPONSE_SUCCESS:
            return errors
        if not any(e.is_error for e in errors):
            # The submitter needs a coded error even when the registry sent none.
            errors = errors + [XdsError(E.REGISTRY_ERROR, f"the registry answered status {status or '(none)'} "
                                        "with no RegistryError", self.url)]
        # Passed back as they came: the Document Source must see the registry's own codes.
        raise XdsException.of(errors)
