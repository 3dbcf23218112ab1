"""Content-Type values: media type and parameters, and what makes a request MTOM."""
from __future__ import annotations

XOP_TYPE = "application/xop+xml"
SOAP12_TYPE = "application/soap+xml"


def parse_content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into a lowercased media type and its parameters.

    Parameter names are lowercased; values keep their case because a boundary is
    case-sensitive. Quoted values may contain ';', '=' and backslash escapes.
    """
    if not value:
        return "", {}
    text = value.strip()
    n = len(text)
    i = text.find(";")
    if i < 0:
        return text.lower().strip(), {}
    mime = text[:i].strip().lower()
    params: dict[str, str] = {}
    i += 1
    while i < n:
        while i < n and text[i] in " \t;":
            i += 1
        start = i
        while i < n and text[i] not in "=;":
            i += 1
        name = text[start:i].strip().lower()
        if i >= n or text[i] == ";":
            # A bare word without '=' carries no value; skipping it keeps the rest usable.
            continue
        i += 1  # '='
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            buf = []
            # Runs between escapes are sliced, not walked a character at a time: the boundary and the
            # action are long, and every MTOM request and answer is read through here several times.
            while i < n:
                quote = text.find('"', i)
                end = quote if quote >= 0 else n
                escape = text.find("\\", i, end)
                if escape < 0:
                    buf.append(text[i:end])
                    i = end
                    break
                buf.append(text[i:escape])
                if escape + 1 < n:
                    buf.append(text[escape + 1])
                    i = escape + 2
                else:
                    buf.append("\\")
                    i = n
            i += 1  # closing quote (or end of an unterminated string, which we tolerate)
            val = "".join(buf)
            while i < n and text[i] != ";":
                i += 1
        else:
            start = i
            while i < n and text[i] != ";":
                i += 1
            val = text[start:i].strip()
            # Some senders single-quote values; no legitimate boundary starts and ends with one.
            if len(val) >= 2 and val[0] == val[-1] == "'":
                val = val[1:-1]
        if name and name not in params:
            params[name] = val
    return mime, params


def is_mtom(content_type: str | None) -> bool:
    """True for multipart/related carrying XOP.

    A missing type parameter is accepted because several toolkits omit it while
    still sending an xop+xml root part; an explicit other type (plain SwA) is not.
    """
    mime, params = parse_content_type(content_type)
    if mime != "multipart/related":
        return False
    t = params.get("type")
    return t is None or t.strip().lower() == XOP_TYPE


def strip_cid(value: str) -> str:
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


# --------------------------------------------------------------------------------------------
