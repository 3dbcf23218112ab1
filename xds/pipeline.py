"""The layers every SOAP request passes once the SOAP layer has parsed it, in this order:

    audit -> authenticate -> answer errors -> authorise -> the transaction's handler

- authenticate turns the TLS peer and the wsse:Security header into a Principal (xds/security), or
  refuses with a WS-Security fault before anything is read or stored;
- answer errors turns an XdsException from the layers inside it into the operation's own failure
  message (RegistryResponse, AdhocQueryResponse, RetrieveDocumentSetResponse);
- authorise gives the handler a request-scoped policy object to ask for filters and decisions: the
  endpoint's actor makes it from the Principal (registry/guard.py, repository/guard.py, deciding with
  xds/security/policy.py); an endpoint without one gets the application's, else AllowAll;
- audit is told of every outcome, refusals included (the audit layer; until then, nobody).

Each layer is a callable (request, call_next) -> response, so a layer can act before and after the
ones inside it, and the composition is the one place that fixes their order.
"""
from __future__ import annotations

import logging
from typing import Callable, Protocol, Sequence

from .errors import REGISTRY_ERROR, XdsError, XdsException

log = logging.getLogger("xds.app")

Handler = Callable[["SoapRequest"], "SoapResponse"]  # noqa: F821 (xds.app's types; no import cycle)


class Layer(Protocol):
    def __call__(self, req, call_next: Handler):
        ...


def compose(layers: Sequence[Layer], handler: Handler) -> Handler:
    for layer in reversed(layers):
        handler = _bind(layer, handler)
    return handler


def _bind(layer: Layer, inner: Handler) -> Handler:
    def run(req):
        return layer(req, inner)

    return run


class Authenticate:
    def __init__(self, authenticator):
        self.authenticator = authenticator

    def __call__(self, req, call_next: Handler):
        req.principal = self.authenticator.authenticate(req.envelope.headers, req.peer_subject)
        return call_next(req)


class AnswerErrors:
    """XdsException -> the operation's failure payload; anything else -> a coded internal error."""

    def __call__(self, req, call_next: Handler):
        from .app import SoapResponse

        try:
            return call_next(req)
        except XdsException as exc:
            return SoapResponse(req.operation.error_payload(exc.errors))
        except Exception:  # the server keeps serving and the caller gets a coded answer, not a trace
            log.exception("request %s: internal error in %s", req.request_id, req.action)
            return SoapResponse(req.operation.error_payload([XdsError(
                REGISTRY_ERROR, f"internal error while processing the request (request id {req.request_id})")]))


class AllowAll:
    """The policy while none is configured: every decision is yes, every filter keeps everything."""

    def allows(self, *_args, **_kwargs) -> bool:
        return True


class Authorise:
    def __init__(self, policy_for: Callable | None = None):
        self.policy_for = policy_for or (lambda req: AllowAll())

    def __call__(self, req, call_next: Handler):
        make = getattr(req, "policy_for", None) or self.policy_for
        req.policy = make(req)
        return call_next(req)


class Audit:
    """Tells the sink of each request's outcome: the response, or the exception that ended it."""

    def __init__(self, sink: Callable | None = None):
        self.sink = sink

    def __call__(self, req, call_next: Handler):
        if self.sink is None:
            return call_next(req)
        try:
            resp = call_next(req)
        except BaseException as exc:
            self._tell(req, None, exc)
            raise
        self._tell(req, resp, None)
        return resp

    def _tell(self, req, resp, exc) -> None:
        try:
            self.sink(req, resp, exc)
        except Exception:
            # Until the audit layer makes recording a condition of answering, a failing sink is logged.
            log.exception("request %s: the audit sink failed", req.request_id)


def default_layers(authenticator, policy_for=None, audit_sink=None) -> list[Layer]:
    return [Audit(audit_sink), Authenticate(authenticator), AnswerErrors(), Authorise(policy_for)]
