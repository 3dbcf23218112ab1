"""The layers every SOAP request passes once the SOAP layer has parsed it, in this order:

    audit -> authenticate -> answer errors -> authorise -> the transaction's handler

- authenticate turns the TLS peer and the wsse:Security header into a Principal (xds/security), or
  refuses with a WS-Security fault before anything is read or stored;
- answer errors turns an XdsException from the layers inside it into the operation's own failure
  message (RegistryResponse, AdhocQueryResponse, RetrieveDocumentSetResponse);
- authorise gives the handler a request-scoped policy object to ask for filters and decisions: the
  endpoint's actor makes it from the Principal (registry/guard.py, repository/guard.py, deciding with
  xds/security/policy.py); an endpoint without one gets the application's, else AllowAll;
- audit records every outcome, refusals included, before the answer leaves (xds/audit/auditor.py).

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
        operation = getattr(req, "operation", None)
        if getattr(req, "authenticated", None) is not None:
            req.principal = req.authenticated  # an in-process caller's own sign-in (XdsApp.call)
        elif getattr(operation, "certificate_alone", False) and req.peer_subject and not _has_security(req):
            from .security.principal import Principal

            req.principal = Principal(mode="tls", subject=req.peer_subject, tls_subject=req.peer_subject)
        else:
            req.principal = self.authenticator.authenticate(req.envelope.headers, req.peer_subject)
        return call_next(req)


def _has_security(req) -> bool:
    from .soap import WSSE_SECURITY

    return any(h.tag == WSSE_SECURITY for h in req.envelope.headers)


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
    """Records each request's outcome (xds/audit/auditor.py): the response, or the exception that ended
    it, before the answer leaves. A read (ITI-18, ITI-43) whose record cannot be written is not
    answered: nothing is disclosed without its trace. A change already made keeps its answer (the
    caller would otherwise make it again) and the failure is logged."""

    def __init__(self, auditor=None):
        self.auditor = auditor

    def __call__(self, req, call_next: Handler):
        if self.auditor is None:
            return call_next(req)
        try:
            self.auditor.before(req)
        except Exception:
            log.exception("request %s: the audit layer could not read what the request touches", req.request_id)
        with self.auditor.holding():
            try:
                resp = call_next(req)
            except BaseException as exc:
                self._record(req, None, exc)
                raise
            return self._record(req, resp, None) or resp

    def _record(self, req, resp, exc):
        from .app import SoapResponse

        try:
            self.auditor.soap(req, resp, exc)
        except Exception:
            log.exception("request %s: its audit record could not be written", req.request_id)
            if exc is None and self.auditor.must_record(req):
                if resp.cleanup is not None:
                    resp.cleanup()
                return SoapResponse(req.operation.error_payload([XdsError(
                    REGISTRY_ERROR, f"the access could not be recorded, so it is not answered (request id "
                    f"{req.request_id}); try again later")]))
        return None


def default_layers(authenticator, policy_for=None, auditor=None) -> list[Layer]:
    return [Audit(auditor), Authenticate(authenticator), AnswerErrors(), Authorise(policy_for)]
