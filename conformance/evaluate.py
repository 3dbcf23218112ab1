"""Judging a reply against ExpectedStatus, ExpectedErrorCode and ExpectedErrorMessage,
plus the transport rules the toolkit enforces (response wsa:Action, MTOM symmetry).

Every function returns a list of problems; each sentence says what was expected and
what came back, because that is what a lab reads in the report.
"""
from __future__ import annotations

from lxml import etree

from xds import constants as C
from xds.ebrim import read_response_errors

from .plan import Step
from .transactions import Exchange, Kind

_STATUS_NAMES = {
    C.RESPONSE_SUCCESS: "Success",
    C.RESPONSE_FAILURE: "Failure",
    C.RESPONSE_PARTIAL_SUCCESS: "PartialSuccess",
}
_RESPONSES = {C.q(C.NS_RS, "RegistryResponse"), C.q(C.NS_QUERY, "AdhocQueryResponse")}
_RETRIEVE_RESPONSE = C.q(C.NS_XDSB, "RetrieveDocumentSetResponse")


def fault_reason(body: etree._Element) -> str:
    texts = [t.strip() for t in body.itertext() if t.strip()]
    return " | ".join(texts)[:500] or "(no reason given)"


def response_status(body: etree._Element) -> tuple[str | None, str]:
    """The raw status attribute and the element that carried it (for messages)."""
    if body.tag in _RESPONSES:
        return body.get("status"), etree.QName(body).localname
    if body.tag == _RETRIEVE_RESPONSE:
        rr = body.find(C.q(C.NS_RS, "RegistryResponse"))
        return (rr.get("status") if rr is not None else None), "RetrieveDocumentSetResponse"
    return None, etree.QName(body).localname


def error_summary(body: etree._Element) -> str:
    _, errors = read_response_errors(body)
    if not errors:
        return "no RegistryError"
    parts = [f"{e.code} ({e.severity.rsplit(':', 1)[-1]}): {e.message[:160]}" for e in errors[:5]]
    more = f" … and {len(errors) - 5} more" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def judge_soap(step: Step, kind: Kind, ex: Exchange, use_mtom: bool) -> list[str]:
    expected = step.expected
    wanted = "/".join(expected)
    if ex.transport_error:
        return [f"expected {wanted}, but no reply: {ex.transport_error}"]
    reply = ex.reply
    if reply is None or reply.envelope is None:
        status = reply.status if reply is not None else "?"
        return [f"expected {wanted}, got HTTP {status} without a SOAP envelope"]
    if reply.is_fault:
        if "Fault" in expected:
            return []
        return [f"expected {wanted}, got a SOAP Fault: {fault_reason(reply.body)}"]
    problems: list[str] = []
    if expected == ["Fault"]:
        problems.append("expected a SOAP Fault, got a normal response")
    want_action = kind.expected_response_action()
    if want_action and kind.action:
        got = reply.envelope.action
        if not got:
            problems.append(f"response has no wsa:Action header (expected {want_action})")
        elif got.strip() != want_action:
            problems.append(f"response wsa:Action is {got.strip()}, expected {want_action}")
    got_mtom = reply.mtom is not None
    if use_mtom and not got_mtom:
        problems.append("the request was MTOM but the response is not (multipart/related expected)")
    elif not use_mtom and got_mtom and ex.endpoint.startswith("http"):
        problems.append("the request was plain SOAP but the response is MTOM")
    problems.extend(judge_status(step, reply.body))
    return problems


def judge_status(step: Step, body: etree._Element) -> list[str]:
    expected = [s for s in step.expected if s != "Fault"] or step.expected
    raw, what = response_status(body)
    if raw is None:
        return [f"{what} carries no status (expected {'/'.join(expected)})"]
    short = _STATUS_NAMES.get(raw)
    if short is None:
        return [f"{what} status {raw!r} is not a full ResponseStatusType URN "
                f"(e.g. {C.RESPONSE_SUCCESS})"]
    problems = []
    if short not in expected:
        problems.append(f"status {short}, expected {'/'.join(expected)} — {error_summary(body)}")
    _, errors = read_response_errors(body)
    if short == "Success" and "Success" in expected:
        bad = [e for e in errors if not e.severity.endswith("Warning")]
        if bad:
            problems.append(f"status Success but {len(bad)} RegistryError(s) of severity Error — "
                            f"{error_summary(body)}")
    codes = [e.code for e in errors]
    for code in step.error_codes:
        if code not in codes:
            problems.append(f"expected error code {code}, got {', '.join(codes) or 'none'}")
    error_texts = [(e.code, e.message) for e in errors if e.severity.endswith("Error")]
    for message in step.error_messages:
        if not any(message in code or message in text for code, text in error_texts):
            problems.append(f"expected an error mentioning {message!r}, got {error_summary(body)}")
    return problems


def judge_feed(step: Step, ex: Exchange, label: str = "ITI-8") -> list[str]:
    wanted = "/".join(step.expected)
    if ex.transport_error:
        return [f"expected {wanted}, but the feed was not acknowledged: {ex.transport_error}"]
    status = "Success" if ex.ack_code in ("AA", "CA") else "Failure"
    if status not in step.expected:
        return [f"{label} acknowledgement {ex.ack_code or '(no MSA)'} means {status}, expected {wanted}"]
    return []
