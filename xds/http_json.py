"""What the JSON endpoints beside SOAP share (the administration interfaces of access states, patient ids
and audit, the patient's access log): the answer, the request body, the id in the path."""
from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed"}


class BadRequest(Exception):
    """The request is wrong in a way the caller can fix: answered 400 with this message."""


def answer(start_response, code: int, data) -> list[bytes]:
    body = json.dumps(data, default=str).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store")]
    if code == 401:
        headers.append(("WWW-Authenticate", 'Bearer realm="xds"'))
    start_response(f"{code} {REASONS.get(code, 'Error')}", headers)
    return [body]


def read_json(environ, max_body: int, example: str) -> dict:
    """The request's JSON object; BadRequest saying what is wrong. example: what a good body looks like."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadRequest("Content-Length is not a number") from None
    if length <= 0:
        raise BadRequest(f"POST a JSON object, e.g. {example}")
    if length > max_body:
        raise BadRequest(f"the request body is larger than {max_body} bytes")
    stream = environ.get("xds.input") or environ["wsgi.input"]
    raw = stream.read(length)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def path_id(environ, prefix: str) -> str:
    """The id after prefix in the request path, decoded once. PATH_INFO comes decoded already (cheroot keeps
    only %2F), so decoding it again reads an id's own "%41" as "A": the raw target is decoded instead."""
    target = environ.get("REQUEST_URI")
    if target is None:
        return (environ.get("PATH_INFO") or "")[len(prefix):].strip("/")
    return unquote(urlsplit(target).path[len(prefix):].strip("/"))
