"""WSDL 1.1 descriptions of the XDS.b endpoints and the XML Schemas they import.

The files in this package are written so that they load straight from the
file system (``zeep.Client("wsdl/registry.wsdl")``): the service address is
the placeholder ``http://localhost:8080`` and every ``schemaLocation`` is a
bare file name next to the importing file.

When the server publishes them it uses:

* ``wsdl_text(name, base_url, endpoint_path=None)`` for ``GET <endpoint>?wsdl``:
  the placeholder becomes ``base_url`` and each ``schemaLocation="X.xsd"``
  becomes ``schemaLocation="<base_url><endpoint_path>?xsd=X.xsd"``;
* ``schema_text(name, base_url, endpoint_path)`` for ``GET <endpoint>?xsd=X.xsd``,
  with the same rewriting of the imports inside the schema.

Both take ``variant=``: ``"zeep"`` (``GET <endpoint>?wsdl=zeep``) serves the
same WSDL with schemas typed for toolkits that do not follow XML Schema
substitution groups (zeep, suds): ``rim-zeep.xsd`` stands in for ``rim.xsd``,
and every import carries ``&variant=zeep`` so that the schemas which import
rim.xsd get the variant too.  The messages on the wire are the same.

Both raise ``ValueError`` for a malformed name, base URL or variant and
``FileNotFoundError`` for a well-formed name that is not one of ours, so a
caller can answer 404 for either.
"""
from __future__ import annotations

import functools
import re
from importlib import resources
from urllib.parse import urlsplit

__all__ = [
    "PLACEHOLDER_BASE_URL",
    "VARIANTS",
    "WSDL_ENDPOINTS",
    "schema_names",
    "schema_text",
    "wsdl_names",
    "wsdl_text",
]

#: The literal base URL written in the packaged WSDL files.
PLACEHOLDER_BASE_URL = "http://localhost:8080"

#: Endpoint path each packaged WSDL describes (the path of its soap12:address).
WSDL_ENDPOINTS = {
    "registry.wsdl": "/xds/registry",
    "repository.wsdl": "/xds/repository",
    "pix.wsdl": "/xds/pix",
}

#: Schema variants: variant name -> {standard file: the file served in its place}.
VARIANTS = {
    "zeep": {"rim.xsd": "rim-zeep.xsd"},
}

# A plain file name: no directory part, no "..", no leading dot.
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
# Only same-directory references are rewritten; absolute URLs are left alone.
_SCHEMA_LOCATION = re.compile(rb"""schemaLocation=(["'])([A-Za-z0-9_][A-Za-z0-9_.-]*\.xsd)\1""")


def _check_name(name: str, suffix: str) -> str:
    if not isinstance(name, str):
        raise ValueError("document name must be a string")
    if "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"document name {name!r} must not contain a path separator")
    if not _FILE_NAME.match(name) or ".." in name:
        raise ValueError(f"invalid document name {name!r}")
    if not name.endswith(suffix):
        raise ValueError(f"document name {name!r} does not end with {suffix!r}")
    return name


@functools.lru_cache(maxsize=None)
def _read(name: str) -> bytes:
    res = resources.files(__name__).joinpath(name)
    if not res.is_file():
        raise FileNotFoundError(f"no such document in the wsdl package: {name!r}")
    return res.read_bytes()


def _list(suffix: str) -> list[str]:
    return sorted(
        r.name for r in resources.files(__name__).iterdir() if r.name.endswith(suffix) and r.is_file()
    )


def wsdl_names() -> list[str]:
    """File names of the packaged WSDL documents."""
    return _list(".wsdl")


def schema_names() -> list[str]:
    """File names of the packaged XML Schema documents."""
    return _list(".xsd")


def _xml_attr_escape(text: str) -> bytes:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
        .encode("utf-8")
    )


def _normalize_base_url(base_url: str) -> str:
    if not isinstance(base_url, str):
        raise ValueError("base_url must be a string")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in base_url):
        raise ValueError(f"invalid base URL {base_url!r}")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"base URL must be an http(s) URL without query or fragment, got {base_url!r}")
    return base_url.rstrip("/")


def _endpoint(base_url: str | None, endpoint_path: str) -> str:
    if not isinstance(endpoint_path, str) or not endpoint_path.startswith("/"):
        raise ValueError(f"endpoint_path must start with '/', got {endpoint_path!r}")
    if "?" in endpoint_path or "#" in endpoint_path:
        raise ValueError(f"endpoint_path must not carry a query or fragment: {endpoint_path!r}")
    return (base_url or "") + endpoint_path


def _check_variant(variant: str | None) -> dict[str, str]:
    if variant is None:
        return {}
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"unknown WSDL variant {variant!r}; known: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[variant]


def _rewrite_schema_locations(data: bytes, endpoint: str, variant: str | None = None) -> bytes:
    prefix = _xml_attr_escape(endpoint + "?xsd=")
    # The variant travels in every import, since query.xsd (say) is the same file in both but
    # must import the variant's rim.xsd when it is read as part of the variant.
    suffix = _xml_attr_escape(f"&variant={variant}") if variant else b""

    def repl(m: re.Match) -> bytes:
        quote, file_name = m.group(1), m.group(2)
        return b"schemaLocation=" + quote + prefix + file_name + suffix + quote

    return _SCHEMA_LOCATION.sub(repl, data)


def wsdl_text(name: str, base_url: str, endpoint_path: str | None = None, variant: str | None = None) -> bytes:
    """The WSDL document ``name`` as served from ``base_url``.

    ``name`` is ``"registry.wsdl"`` or ``"repository.wsdl"`` (the suffix may be
    left off).  ``base_url`` is scheme://host[:port][/prefix]; it replaces the
    literal ``http://localhost:8080``.  ``endpoint_path`` is the path the WSDL
    and its schemas are served under (default: the endpoint the WSDL
    describes, e.g. ``/xds/registry``); schema imports are pointed at
    ``<base_url><endpoint_path>?xsd=NAME`` (``...&variant=V`` with a ``variant``).
    """
    _check_variant(variant)
    if isinstance(name, str) and "." not in name:
        name += ".wsdl"
    name = _check_name(name, ".wsdl")
    data = _read(name)
    base = _normalize_base_url(base_url)
    if endpoint_path is None:
        endpoint_path = WSDL_ENDPOINTS.get(name)
        if endpoint_path is None:
            raise ValueError(f"no default endpoint path for {name!r}; pass endpoint_path")
    endpoint = _endpoint(base, endpoint_path)
    data = data.replace(PLACEHOLDER_BASE_URL.encode("ascii"), _xml_attr_escape(base))
    return _rewrite_schema_locations(data, endpoint, variant)


def schema_text(name: str, base_url: str | None = None, endpoint_path: str | None = None,
                variant: str | None = None) -> bytes:
    """The XML Schema document ``name`` (e.g. ``"rim.xsd"``).

    Without ``endpoint_path`` the file is returned as stored (imports are
    relative file names).  With it, each import is pointed at
    ``<base_url><endpoint_path>?xsd=NAME`` (``base_url`` may be omitted,
    giving a host-relative reference).  With ``variant``, the variant's file
    stands in for ``name`` where it has one, and imports carry the variant.
    """
    replaced = _check_variant(variant)
    name = _check_name(name, ".xsd")
    data = _read(replaced.get(name, name))
    if endpoint_path is None:
        if base_url is not None:
            raise ValueError("base_url given without endpoint_path")
        return data
    base = _normalize_base_url(base_url) if base_url is not None else None
    return _rewrite_schema_locations(data, _endpoint(base, endpoint_path), variant)
