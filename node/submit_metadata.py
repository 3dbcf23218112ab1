"""What `xds submit` says about each file and its SubmissionSet: the flags, then the TOML file of
`--metadata`, then defaults that fit the file (its MIME type; a CDA document's own header).

The TOML file:

    [document]                    # every file
    class_code = "11488-4^Consult note^2.16.840.1.113883.6.1"
    confidentiality_code = ["N^Normal^2.16.840.1.113883.5.25"]
    author_person = "123^Martin^Paul^^^^^^&1.2.250.1.71.4.2.1&ISO"

    [submission_set]
    source_id = "1.2.250.1.999.7"
    content_type_code = "04^Hospitalisation^1.2.250.1.213.1.1.4.12"

    [files."report.pdf"]          # one file, by the name given on the command line or its base name
    title = "Discharge letter"

A code is written CODE^DISPLAY^SCHEME, or CODE^^SCHEME as `xds query` takes it (the display is then the
code). Unknown keys are refused with their place, so that a misspelt key never silently falls back to a
default.
"""
from __future__ import annotations

import datetime as _dt
import os
import tomllib
from dataclasses import dataclass, field

from xds import xmlsafe

LOINC = "2.16.840.1.113883.6.1"
IHE_FORMATS = "1.3.6.1.4.1.19376.1.2.3"
# ITI TF-3 4.2.3.2.11: the formatCode of a document whose mimeType says all a consumer needs.
MIME_SUFFICIENT = ("urn:ihe:iti:xds:2017:mimeTypeSufficient", IHE_FORMATS, "mimeType Sufficient")
# LOINC document ontology codes: a generic one, and one for images, when nothing better is known.
GENERIC_TYPE = ("55188-7", LOINC, "Patient data Document")
IMAGE_TYPE = ("18748-4", LOINC, "Diagnostic imaging study")
CDA_NS = "urn:hl7-org:v3"
CDA_TYPES = {"text/xml", "application/xml", "application/hl7-v3+xml"}
MAX_SNIFF = 64 * 1024 * 1024  # a CDA header is read only from files no larger than this

Code = tuple[str, str, str]  # code, scheme, display

# key -> (kind, one of "document" / "submission_set" / both); kinds: code, codes (a list), text, texts
DOCUMENT_KEYS = {
    "title": "text", "mime_type": "text", "language": "text", "creation_time": "text", "comments": "text",
    "service_start": "text", "service_stop": "text", "legal_authenticator": "text",
    "class_code": "code", "type_code": "code", "format_code": "code", "practice_setting_code": "code",
    "facility_type_code": "code", "confidentiality_code": "codes", "event_code": "codes",
    "author_person": "text", "author_institution": "texts", "author_role": "texts", "author_specialty": "texts",
}
SUBMISSION_KEYS = {
    "title": "text", "source_id": "text", "content_type_code": "code", "author_person": "text",
    "author_institution": "texts",
}


class MetadataError(ValueError):
    """A flag or the --metadata file says something the command cannot use: exit 2 with this message."""


def parse_code(text: str, where: str) -> Code:
    parts = text.split("^")
    if len(parts) != 3 or not parts[0].strip() or not parts[2].strip():
        raise MetadataError(f"{where}: {text!r} is not a code: write CODE^DISPLAY^SCHEME or CODE^^SCHEME")
    code, display, scheme = (p.strip() for p in parts)
    return code, scheme, display or code  # the order of xds.builder's codes


def _value(kind: str, value, where: str):
    if kind in ("text", "code"):
        if not isinstance(value, str) or not value.strip():
            raise MetadataError(f"{where} must be a non-empty string")
        return parse_code(value, where) if kind == "code" else value.strip()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise MetadataError(f"{where} must be a string or a list of non-empty strings")
    return [parse_code(v, where) for v in items] if kind == "codes" else [v.strip() for v in items]


def _table(data, keys: dict, where: str) -> dict:
    if not isinstance(data, dict):
        raise MetadataError(f"{where} must be a table")
    out = {}
    for key, value in data.items():
        if key not in keys:
            raise MetadataError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(keys))})")
        out[key] = _value(keys[key], value, f"{where}.{key}")
    return out


@dataclass
class MetadataFile:
    document: dict = field(default_factory=dict)
    submission_set: dict = field(default_factory=dict)
    files: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str) -> "MetadataFile":
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise MetadataError(f"{path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise MetadataError(f"{path}: not TOML: {exc}") from None
        unknown = set(data) - {"document", "submission_set", "files"}
        if unknown:
            raise MetadataError(f"{path}: unknown table {sorted(unknown)[0]!r} (known: document, submission_set, "
                                "files)")
        files = data.get("files", {})
        if not isinstance(files, dict):
            raise MetadataError(f"{path}: files must be a table of tables, e.g. [files.\"report.pdf\"]")
        return cls(_table(data.get("document", {}), DOCUMENT_KEYS, f"{path}: document"),
                   _table(data.get("submission_set", {}), SUBMISSION_KEYS, f"{path}: submission_set"),
                   {name: _table(t, DOCUMENT_KEYS, f"{path}: files.{name}") for name, t in files.items()})

    def for_file(self, path: str) -> dict:
        return {**self.document, **self.files.get(os.path.basename(path), {}), **self.files.get(path, {})}


def flags_of(args, keys: dict, prefix: str = "") -> dict:
    """The metadata flags the user gave (argparse dest = prefix + key)."""
    out = {}
    for key, kind in keys.items():
        value = getattr(args, prefix + key, None)
        if value is not None and value != []:
            out[key] = _value(kind, value, "--" + (prefix + key).replace("_", "-"))
    return out


@dataclass
class CdaHeader:
    title: str | None = None
    type_code: Code | None = None
    creation_time: str | None = None
    language: str | None = None


def cda_header(path: str) -> CdaHeader | None:
    """The header of a CDA document (title, code, effectiveTime, languageCode), or None for another file."""
    if os.path.getsize(path) > MAX_SNIFF:
        return None
    with open(path, "rb") as f:
        data = f.read()
    try:
        root = xmlsafe.parse(data, path)
    except Exception:
        return None
    if root.tag != f"{{{CDA_NS}}}ClinicalDocument":
        return None
    header = CdaHeader()
    title = root.find(f"{{{CDA_NS}}}title")
    if title is not None and (title.text or "").strip():
        header.title = " ".join(title.text.split())[:256]
    code = root.find(f"{{{CDA_NS}}}code")
    if code is not None and code.get("code") and code.get("codeSystem"):
        header.type_code = (code.get("code"), code.get("codeSystem"), code.get("displayName") or code.get("code"))
    when = root.find(f"{{{CDA_NS}}}effectiveTime")
    if when is not None and when.get("value"):
        header.creation_time = utc_dtm(when.get("value"))
    lang = root.find(f"{{{CDA_NS}}}languageCode")
    if lang is not None and lang.get("code"):
        header.language = lang.get("code")
    return header


def utc_dtm(value: str) -> str | None:
    """An HL7 TS (YYYYMMDDhhmmss[.fff][+zzzz]) as the UTC DTM XDS wants; None when it cannot be read."""
    text = value.strip()
    zone = None
    for sign in ("+", "-"):
        if sign in text[8:]:
            at = text.rindex(sign)
            text, zone = text[:at], text[at:]
    text = text.split(".", 1)[0]
    if not text.isdigit() or len(text) < 4:
        return None
    if zone is None:
        return text[:14]
    if len(text) < 12 or len(zone) != 5 or not zone[1:].isdigit():
        return text[:8]
    try:
        local = _dt.datetime.strptime(text[:14].ljust(14, "0"), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    offset = _dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])) * (1 if zone[0] == "+" else -1)
    return (local - offset).strftime("%Y%m%d%H%M%S")[:len(text[:14])]


def document_defaults(path: str, mime: str) -> dict:
    """What fits a file when nothing says otherwise."""
    header = cda_header(path) if mime in CDA_TYPES else None
    kind = IMAGE_TYPE if mime.startswith("image/") else GENERIC_TYPE
    type_code = header.type_code if header and header.type_code else kind
    out = {"title": (header.title if header and header.title else os.path.basename(path)[:128] or "Document"),
           "type_code": type_code, "class_code": type_code, "format_code": MIME_SUFFICIENT}
    if header and header.creation_time:
        out["creation_time"] = header.creation_time
    if header and header.language:
        out["language"] = header.language
    return out


_FLAG_HELP = {
    "title": "the title of each DocumentEntry (default: a CDA's title, else the file name)",
    "mime_type": None,  # --mime, defined by the command
    "language": "languageCode (default: a CDA's, else fr-FR)",
    "creation_time": "creationTime, UTC YYYYMMDDhhmmss (default: a CDA's effectiveTime, else the file's mtime)",
    "comments": "the DocumentEntry's comments (its Description)",
    "service_start": "serviceStartTime (UTC YYYYMMDDhhmm[ss])",
    "service_stop": "serviceStopTime",
    "legal_authenticator": "legalAuthenticator (XCN)",
    "class_code": "classCode CODE^DISPLAY^SCHEME (default: the typeCode)",
    "type_code": "typeCode (default: a CDA's code, else LOINC 18748-4 for an image, 55188-7 for others)",
    "format_code": "formatCode (default urn:ihe:iti:xds:2017:mimeTypeSufficient; a CDA's names its template)",
    "practice_setting_code": "practiceSettingCode",
    "facility_type_code": "healthcareFacilityTypeCode",
    "confidentiality_code": "confidentialityCode (repeatable; default N^Normal^2.16.840.1.113883.5.25)",
    "event_code": "eventCodeList entry (repeatable)",
    "author_person": "authorPerson of each DocumentEntry (XCN), e.g. 123^Martin^Paul^^^^^^&1.2.250.1.71.4.2.1&ISO",
    "author_institution": "authorInstitution (XON, repeatable), e.g. Hopital^^^^^^^^^1.2.3.4",
    "author_role": "authorRole (repeatable)",
    "author_specialty": "authorSpecialty (repeatable)",
}
_SS_HELP = {
    "title": "the SubmissionSet's title",
    "source_id": "sourceId: the OID of the submitting system",
    "content_type_code": "the SubmissionSet's contentTypeCode",
    "author_person": "the SubmissionSet's authorPerson (default: the documents')",
    "author_institution": "the SubmissionSet's authorInstitution (repeatable; default: the documents')",
}
SS_PREFIX = "ss_"


def add_metadata_arguments(p) -> None:
    doc = p.add_argument_group("metadata of every DocumentEntry (flags win over --metadata, which wins over "
                               "the defaults)")
    for key, kind in DOCUMENT_KEYS.items():
        if _FLAG_HELP.get(key) is None:
            continue
        many = kind in ("codes", "texts")
        doc.add_argument("--" + key.replace("_", "-"), dest=key, action="append" if many else "store",
                         metavar="CODE" if "code" in kind else "TEXT", help=_FLAG_HELP[key])
    ss = p.add_argument_group("metadata of the SubmissionSet")
    for key, kind in SUBMISSION_KEYS.items():
        flag = ("--ss-" if key in DOCUMENT_KEYS else "--") + key.replace("_", "-")
        ss.add_argument(flag, dest=SS_PREFIX + key, action="append" if kind in ("codes", "texts") else "store",
                        metavar="CODE" if "code" in kind else "TEXT", help=_SS_HELP[key])
    p.add_argument("--metadata", metavar="FILE", help="TOML file of metadata: [document], [submission_set], "
                                                      "[files.\"NAME\"] (README: Submitting documents)")


def resolve(args, paths: list[str]) -> tuple[dict[str, dict], dict]:
    """(path -> that file's metadata, the SubmissionSet's) from the flags over the --metadata file."""
    from_file = MetadataFile.load(args.metadata) if getattr(args, "metadata", None) else MetadataFile()
    flags = flags_of(args, DOCUMENT_KEYS)
    per_file = {p: {**from_file.for_file(p), **flags} for p in paths}
    ss = {**from_file.submission_set, **flags_of(args, SUBMISSION_KEYS, SS_PREFIX)}
    # The SubmissionSet's author, when none is named for it, is the documents' (one author for one sending).
    first = per_file[paths[0]] if paths else {}
    for key in ("author_person", "author_institution"):
        if key not in ss and key in first:
            ss[key] = first[key]
    return per_file, ss
