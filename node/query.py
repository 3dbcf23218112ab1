"""`xds query`: the fourteen ITI-18 Registry Stored Queries (ITI TF-2 3.18.4.1.2.3.7) and the two ITI-51
Multi-Patient Stored Queries (ITI TF-2 3.51.4.1.2) by name, each parameter a flag, against any XDS.b
registry over SOAP.

Flag values are written as a user writes them (`approved`, `2024-01-31`, `CODE^^SCHEME`, a bare
UUID) and sent in the syntax of ITI TF-2 3.18.4.1.2.3 (quoted strings, parenthesised lists, bare
times); the registry, not this client, judges them, so a bad value comes back as the registry's
error with its code. Only the core (xds/) is used: no actor, no database.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field

from lxml import etree

from xds import constants as C
from xds.builder import adhoc_query_request
from xds.client import SoapClient, TransportError
from xds.ebrim import read_response_errors
from xds.errors import XdsError

from .transfer import (ClientSetupError, _print_errors, add_client_arguments, client_identity, default_url,
                       endpoint_url, soap_envelope)
from .transfer import _status as reply_status

REGISTRY_PATH = "/xds/registry"
RIM = C.NS_RIM

# The value kinds, each written its own way in a Slot (quoted, bare, or a name mapped to its URN).
STRING, CODE, STATUS, DTM, INT, ENTRY_TYPE, ASSOC_TYPE, UUID = (
    "string", "code", "status", "dtm", "int", "entry_type", "assoc_type", "uuid")

STATUS_NAMES = {"approved": C.STATUS_APPROVED, "deprecated": C.STATUS_DEPRECATED, "submitted": C.STATUS_SUBMITTED}
ENTRY_TYPE_NAMES = {"stable": C.OBJECT_TYPE_STABLE, "on-demand": C.OBJECT_TYPE_ON_DEMAND,
                    "ondemand": C.OBJECT_TYPE_ON_DEMAND}
ASSOC_TYPE_NAMES = {C.last_segment(t).lower(): t for t in (
    C.ASSOC_HAS_MEMBER, *C.RELATIONSHIP_TYPES, C.ASSOC_UPDATE_AVAILABILITY_STATUS, C.ASSOC_SUBMIT_ASSOCIATION)}

_BARE_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ISO_TIME = re.compile(r"\d{4}(-\d\d(-\d\d([T ]\d\d(:\d\d(:\d\d)?)?)?)?)?Z?")


@dataclass(frozen=True)
class Param:
    flag: str
    slot: str | None      # None: a flag that only supplies other flags' defaults
    kind: str = STRING
    multi: bool = False
    # Each use of the flag is one Slot, the Slots ANDed, the values of one use ORed (ITI TF-2 3.18.4.1.2.3).
    and_or: bool = False
    required: bool = False
    default: tuple[str, ...] | None = None
    fallback: str | None = None   # the dest whose value is used when this flag is not given
    split: bool = True            # a comma separates values (free text such as a person's name keeps its commas)
    one_of: str | None = None     # flags of one group: exactly one of them is given
    metavar: str | None = None
    help: str = ""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class StoredQuery:
    command: str
    name: str
    id: str
    params: tuple[Param, ...]
    help: str
    action: str = C.ACTION_QUERY   # ITI-18's, or ITI-51's (C.ACTION_MPQ)

    @property
    def transaction(self) -> str:
        return C.TRANSACTIONS[self.action]

    def slot_names(self) -> set[str]:
        return {p.slot for p in self.params if p.slot}


def _p(flag, slot, kind=STRING, **kw) -> Param:
    return Param(flag, slot, kind, **kw)


_CODE_HELP = "CODE^^SCHEME; several (comma or repeated) match any"
_AND_OR_HELP = "CODE^^SCHEME; commas: any of them; repeated: each group must match"
_TIME_HELP = "YYYY[MM[DD[hh[mm[ss]]]]] or YYYY-MM-DD[Thh:mm[:ss]], UTC"
_STATUS_HELP = "approved, deprecated, submitted (or the URN); several match any"


def _status_param(slot: str, what: str, **kw) -> Param:
    kw.setdefault("default", ("approved",))
    return _p("--status", slot, STATUS, multi=True, required=True, metavar="STATUS",
              help=f"{what} status: {_STATUS_HELP} (default approved)", **kw)


def _entry_type() -> Param:
    return _p("--entry-type", "$XDSDocumentEntryType", ENTRY_TYPE, multi=True, metavar="TYPE",
              help="stable, on-demand (or the objectType UUID)")


def _association_status() -> Param:
    return _p("--association-status", "$XDSAssociationStatus", STATUS, multi=True, metavar="STATUS",
              help=f"status of the associations returned: {_STATUS_HELP}")


def _format_code() -> Param:
    return _p("--format-code", "$XDSDocumentEntryFormatCode", CODE, multi=True, metavar="CODE", help=_CODE_HELP)


def _confidentiality_code() -> Param:
    return _p("--confidentiality-code", "$XDSDocumentEntryConfidentialityCode", CODE, and_or=True,
              metavar="CODE", help=_AND_OR_HELP)


def _de_filters() -> tuple[Param, ...]:
    de = "$XDSDocumentEntry"
    times = tuple(_p(f"--{flag}-{edge.lower()}", f"{de}{stem}{edge}", DTM, metavar="TIME",
                     help=f"{what} {'at or after' if edge == 'From' else 'before'}: {_TIME_HELP}")
                  for flag, stem, what in (("creation", "CreationTime", "creationTime"),
                                           ("service-start", "ServiceStartTime", "serviceStartTime"),
                                           ("service-stop", "ServiceStopTime", "serviceStopTime"))
                  for edge in ("From", "To"))
    return (
        _p("--class-code", f"{de}ClassCode", CODE, multi=True, metavar="CODE", help=_CODE_HELP),
        _p("--type-code", f"{de}TypeCode", CODE, multi=True, metavar="CODE", help=_CODE_HELP),
        _p("--practice-setting-code", f"{de}PracticeSettingCode", CODE, multi=True, metavar="CODE", help=_CODE_HELP),
        _p("--facility-type-code", f"{de}HealthcareFacilityTypeCode", CODE, multi=True, metavar="CODE",
           help="healthcareFacilityTypeCode: " + _CODE_HELP),
        _p("--event-code", f"{de}EventCodeList", CODE, and_or=True, metavar="CODE", help=_AND_OR_HELP),
        _confidentiality_code(),
        _format_code(),
        _p("--author-person", f"{de}AuthorPerson", multi=True, split=False, metavar="XCN",
           help="authorPerson, %% and _ as wildcards; repeated: any"),
        *times,
        _status_param(f"{de}Status", "DocumentEntry"),
        _entry_type(),
    )


def _content_filters() -> tuple[Param, ...]:
    return _format_code(), _confidentiality_code(), _entry_type()


def _patient(slot: str) -> Param:
    return _p("--patient", slot, required=True, metavar="CX", help="patient id, id^^^&OID&ISO")


def _by_id(kind: str, what: str, *, lid: bool = False, multi: bool = False) -> tuple[Param, ...]:
    """--uuid/--uid (and --lid) of one kind of object: exactly one of them."""
    many = "; several: comma or repeated" if multi else ""
    out = [_p("--uuid", f"${kind}EntryUUID", UUID, multi=multi, one_of="id", metavar="UUID",
              help=f"{what} entryUUID (urn:uuid:..., or the bare UUID){many}"),
           _p("--uid", f"${kind}UniqueId", multi=multi, one_of="id", metavar="UID", help=f"{what} uniqueId{many}")]
    if lid:
        out.append(_p("--lid", f"${kind}LogicalID", UUID, multi=True, one_of="id", metavar="UUID",
                      help=f"{what} logicalId (every version){many}"))
    return tuple(out)


def _uuids(what: str) -> Param:
    return _p("--uuid", "$uuid", UUID, multi=True, required=True, metavar="UUID",
              help=f"entryUUID of {what}; several: comma or repeated")


_METADATA_LEVEL = _p("--metadata-level", "$MetadataLevel", INT, metavar="N", help="1 (default) or 2")


def _q(command, name, query_id, params, help, action=C.ACTION_QUERY) -> StoredQuery:
    return StoredQuery(command, name, query_id, tuple(params) + (_METADATA_LEVEL,), help, action)


def _patients(slot: str) -> Param:
    return _p("--patient", slot, multi=True, metavar="CX",
              help="patient id, id^^^&OID&ISO; several: comma or repeated (none: every patient, which "
                   "registries allow to administrators only)")


QUERIES: tuple[StoredQuery, ...] = (
    _q("find-documents", "FindDocuments", C.SQ_FIND_DOCUMENTS,
       (_patient("$XDSDocumentEntryPatientId"), *_de_filters()),
       "a patient's DocumentEntries, filtered by codes, times, author, status"),
    _q("find-documents-by-reference-id", "FindDocumentsByReferenceId", C.SQ_FIND_DOCUMENTS_BY_REFERENCE_ID,
       (_patient("$XDSDocumentEntryPatientId"),
        _p("--reference-id", "$XDSDocumentEntryReferenceIdList", and_or=True, required=True, metavar="CXI",
           help="a referenceIdList value (CXi); commas: any of them; repeated: each group must match"),
        *_de_filters()),
       "a patient's DocumentEntries that carry a referenceIdList value"),
    _q("find-submission-sets", "FindSubmissionSets", C.SQ_FIND_SUBMISSION_SETS,
       (_patient("$XDSSubmissionSetPatientId"),
        _p("--source-id", "$XDSSubmissionSetSourceId", multi=True, metavar="OID", help="sourceId; several: any"),
        _p("--submission-from", "$XDSSubmissionSetSubmissionTimeFrom", DTM, metavar="TIME",
           help=f"submissionTime at or after: {_TIME_HELP}"),
        _p("--submission-to", "$XDSSubmissionSetSubmissionTimeTo", DTM, metavar="TIME",
           help=f"submissionTime before: {_TIME_HELP}"),
        _p("--author-person", "$XDSSubmissionSetAuthorPerson", split=False, metavar="XCN",
           help="authorPerson, %% and _ as wildcards"),
        _p("--content-type-code", "$XDSSubmissionSetContentType", CODE, multi=True, metavar="CODE", help=_CODE_HELP),
        _status_param("$XDSSubmissionSetStatus", "SubmissionSet")),
       "a patient's SubmissionSets"),
    _q("find-folders", "FindFolders", C.SQ_FIND_FOLDERS,
       (_patient("$XDSFolderPatientId"),
        _p("--last-update-from", "$XDSFolderLastUpdateTimeFrom", DTM, metavar="TIME",
           help=f"lastUpdateTime at or after: {_TIME_HELP}"),
        _p("--last-update-to", "$XDSFolderLastUpdateTimeTo", DTM, metavar="TIME",
           help=f"lastUpdateTime before: {_TIME_HELP}"),
        _p("--code-list", "$XDSFolderCodeList", CODE, and_or=True, metavar="CODE", help=_AND_OR_HELP),
        _status_param("$XDSFolderStatus", "Folder")),
       "a patient's Folders"),
    _q("get-all", "GetAll", C.SQ_GET_ALL,
       (_patient("$patientId"),
        _p("--status", None, STATUS, multi=True, default=("approved",), metavar="STATUS",
           help=f"status of every kind of object not given below: {_STATUS_HELP} (default approved)"),
        _p("--document-status", "$XDSDocumentEntryStatus", STATUS, multi=True, required=True, fallback="status",
           metavar="STATUS", help="DocumentEntry status (default: --status)"),
        _p("--submission-set-status", "$XDSSubmissionSetStatus", STATUS, multi=True, required=True,
           fallback="status", metavar="STATUS", help="SubmissionSet status (default: --status)"),
        _p("--folder-status", "$XDSFolderStatus", STATUS, multi=True, required=True, fallback="status",
           metavar="STATUS", help="Folder status (default: --status)"),
        *_content_filters(), _association_status()),
       "everything of a patient: DocumentEntries, SubmissionSets, Folders and their Associations"),
    _q("get-documents", "GetDocuments", C.SQ_GET_DOCUMENTS,
       _by_id("XDSDocumentEntry", "DocumentEntry", lid=True, multi=True),
       "DocumentEntries by entryUUID, uniqueId or logicalId"),
    _q("get-folders", "GetFolders", C.SQ_GET_FOLDERS,
       _by_id("XDSFolder", "Folder", lid=True, multi=True),
       "Folders by entryUUID, uniqueId or logicalId"),
    _q("get-associations", "GetAssociations", C.SQ_GET_ASSOCIATIONS,
       (_uuids("the objects (DocumentEntries, Folders, SubmissionSets)"), _association_status()),
       "the Associations whose source or target is one of the objects"),
    _q("get-documents-and-associations", "GetDocumentsAndAssociations", C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS,
       (*_by_id("XDSDocumentEntry", "DocumentEntry", multi=True), _association_status()),
       "DocumentEntries and the Associations that reach them"),
    _q("get-submission-sets", "GetSubmissionSets", C.SQ_GET_SUBMISSION_SETS,
       (_uuids("the DocumentEntries or Folders"), _association_status()),
       "the SubmissionSets that hold the objects, with those HasMember Associations"),
    _q("get-submission-set-and-contents", "GetSubmissionSetAndContents", C.SQ_GET_SUBMISSION_SET_AND_CONTENTS,
       (*_by_id("XDSSubmissionSet", "SubmissionSet"), *_content_filters(), _association_status()),
       "one SubmissionSet with its DocumentEntries, Folders and Associations"),
    _q("get-folder-and-contents", "GetFolderAndContents", C.SQ_GET_FOLDER_AND_CONTENTS,
       (*_by_id("XDSFolder", "Folder"), *_content_filters(), _association_status()),
       "one Folder with its DocumentEntries and Associations"),
    _q("get-folders-for-document", "GetFoldersForDocument", C.SQ_GET_FOLDERS_FOR_DOCUMENT,
       (*_by_id("XDSDocumentEntry", "DocumentEntry"), _association_status()),
       "the Folders that hold a DocumentEntry"),
    _q("get-related-documents", "GetRelatedDocuments", C.SQ_GET_RELATED_DOCUMENTS,
       (*_by_id("XDSDocumentEntry", "DocumentEntry"),
        _p("--association-type", "$AssociationTypes", ASSOC_TYPE, multi=True, required=True,
           default=tuple(C.last_segment(t) for t in C.RELATIONSHIP_TYPES), metavar="TYPE",
           help="RPLC, XFRM, APND, XFRM_RPLC, signs, IsSnapshotOf, HasMember (or the URN); several: any "
                "(default: every relationship type but HasMember)"),
        _entry_type(), _association_status()),
       "the DocumentEntries related to one (replaced, transformed, appended, signed, snapshot) and the "
       "Associations between them"),
    _q("find-documents-for-multiple-patients", "FindDocumentsForMultiplePatients",
       C.SQ_FIND_DOCUMENTS_FOR_MULTIPLE_PATIENTS,
       (_patients("$XDSDocumentEntryPatientId"), *_de_filters()),
       "ITI-51: the DocumentEntries of several patients (at least one of --class-code, --event-code, "
       "--facility-type-code)", C.ACTION_MPQ),
    _q("find-folders-for-multiple-patients", "FindFoldersForMultiplePatients",
       C.SQ_FIND_FOLDERS_FOR_MULTIPLE_PATIENTS,
       (_patients("$XDSFolderPatientId"),
        _p("--last-update-from", "$XDSFolderLastUpdateTimeFrom", DTM, metavar="TIME",
           help=f"lastUpdateTime at or after: {_TIME_HELP}"),
        _p("--last-update-to", "$XDSFolderLastUpdateTimeTo", DTM, metavar="TIME",
           help=f"lastUpdateTime before: {_TIME_HELP}"),
        _p("--code-list", "$XDSFolderCodeList", CODE, and_or=True, required=True, metavar="CODE",
           help=_AND_OR_HELP),
        _status_param("$XDSFolderStatus", "Folder")),
       "ITI-51: the Folders of several patients", C.ACTION_MPQ),
)
BY_COMMAND = {q.command: q for q in QUERIES}


# --- the request -----------------------------------------------------------------------------------

def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _normal(kind: str, value: str) -> str:
    """A flag's value as ITI-18 names it; anything not recognised is left for the registry to judge."""
    v = value.strip()
    if kind == STATUS:
        return STATUS_NAMES.get(v.lower(), v)
    if kind == ENTRY_TYPE:
        return ENTRY_TYPE_NAMES.get(v.lower(), v)
    if kind == ASSOC_TYPE:
        return ASSOC_TYPE_NAMES.get(v.lower(), v)
    if kind == UUID and _BARE_UUID.fullmatch(v):
        return "urn:uuid:" + v.lower()
    if kind == DTM and _ISO_TIME.fullmatch(v):
        return re.sub(r"[-:T Z]", "", v)
    return v


def slot_text(kind: str, values: list[str], as_list: bool) -> str:
    """One Slot's Value: `'a'`, `('a','b')`, or bare digits for times and numbers."""
    items = [_normal(kind, v) for v in values]
    written = [v if kind in (DTM, INT) else _quote(v) for v in items]
    return "(" + ",".join(written) + ")" if as_list else written[0]


def _values(param: Param, given) -> list[list[str]]:
    """The Slots (each a list of values) that a flag's uses make."""
    uses = given if isinstance(given, list) else [given]
    groups = [[v for v in use.split(",") if v.strip()] if param.split and (param.multi or param.and_or)
              else [use] for use in uses]
    if param.and_or:
        return [g for g in groups if g]
    flat = [v for g in groups for v in g]
    return [flat] if flat else []


def request_slots(query: StoredQuery, args) -> list[tuple[str, str]]:
    """(Slot name, Value text) of each parameter the command line gives, defaults included."""
    by_dest = {p.dest: p for p in query.params}

    def value(param: Param):
        given = getattr(args, param.dest, None)
        if given is None and param.fallback:
            given = value(by_dest[param.fallback])
        if given is None and param.default is not None:
            given = list(param.default)
        return given

    out = []
    for param in query.params:
        given = value(param) if param.slot else None
        if given is None:
            continue
        for group in _values(param, given):
            out.append((param.slot, slot_text(param.kind, group, param.multi or param.and_or)))
    for raw in getattr(args, "param", None) or ():
        name, _, value = raw.partition("=")
        out.append((name.strip(), value))
    return out


# --- the answer ------------------------------------------------------------------------------------

@dataclass
class QueryResult:
    status: str                          # the response's status URN, or "SOAP Fault", "HTTP 502", ...
    errors: list[XdsError] = field(default_factory=list)
    objects: list[dict] = field(default_factory=list)
    body: bytes = b""                    # the AdhocQueryResponse (or Fault) element as received

    @property
    def ok(self) -> bool:
        return self.status == C.RESPONSE_SUCCESS


def run_query(url: str, query_id: str, slots: list[tuple[str, str]], return_type: str = "LeafClass", *,
              home: str | None = None, assertion: bytes | None = None, ssl_context=None,
              timeout: float = 60.0, action: str = C.ACTION_QUERY) -> QueryResult:
    """Send one ITI-18 (or, with action C.ACTION_MPQ, ITI-51) request to url (a registry endpoint, or
    http(s)://host:port) and read its answer."""
    client = SoapClient(endpoint_url(url, REGISTRY_PATH), timeout, ssl_context)
    envelope = soap_envelope(client, action, adhoc_query_request(query_id, slots, return_type, home), assertion)
    reply = client.send_raw(envelope, {"Content-Type": f'application/soap+xml; charset=UTF-8; '
                                                       f'action="{action}"'})
    if reply.envelope is None:
        status, errors = reply_status(None, reply.status, reply.raw)
        return QueryResult(status, errors, body=reply.raw)
    body = reply.envelope.body
    alone = etree.fromstring(etree.tostring(body))
    # The envelope's declarations come along with the element and mean nothing outside it.
    etree.cleanup_namespaces(alone)
    raw = etree.tostring(alone)
    if etree.QName(body).localname == "Fault":
        status, errors = reply_status(body, reply.status, reply.raw)
        return QueryResult(status, errors, body=raw)
    if body.tag != C.q(C.NS_QUERY, "AdhocQueryResponse"):
        what = etree.QName(body).localname
        return QueryResult(f"HTTP {reply.status}", [XdsError("HTTP", f"the answer is a {what}, not a "
                                                                     "query:AdhocQueryResponse")], body=raw)
    status, errors = read_response_errors(body)
    return QueryResult(status, errors, read_objects(body), raw)


def _first_string(el: etree._Element, tag: str) -> str | None:
    ls = el.find(f"{{{RIM}}}{tag}/{{{RIM}}}LocalizedString")
    return ls.get("value") if ls is not None else None


def _slots(el: etree._Element) -> dict[str, list[str]]:
    return {s.get("name"): [(v.text or "").strip() for v in s.iterfind(f"{{{RIM}}}ValueList/{{{RIM}}}Value")]
            for s in el.iterfind(f"{{{RIM}}}Slot")}


def _code(c: etree._Element) -> dict:
    scheme = _slots(c).get("codingScheme", [None])
    return {"code": c.get("nodeRepresentation"), "scheme": scheme[0] if scheme else None,
            "display": _first_string(c, "Name")}


_CODES = {
    C.DE_CLASS_CODE: ("classCode", False), C.DE_TYPE_CODE: ("typeCode", False),
    C.DE_FORMAT_CODE: ("formatCode", False), C.DE_PRACTICE_SETTING_CODE: ("practiceSettingCode", False),
    C.DE_HEALTHCARE_FACILITY_TYPE_CODE: ("healthcareFacilityTypeCode", False),
    C.DE_CONFIDENTIALITY_CODE: ("confidentialityCode", True), C.DE_EVENT_CODE: ("eventCodeList", True),
    C.SS_CONTENT_TYPE_CODE: ("contentTypeCode", False), C.FOLDER_CODE_LIST: ("codeList", True),
}
_IDENTIFIERS = {
    C.DE_UNIQUE_ID: "uniqueId", C.SS_UNIQUE_ID: "uniqueId", C.FOLDER_UNIQUE_ID: "uniqueId",
    C.DE_PATIENT_ID: "patientId", C.SS_PATIENT_ID: "patientId", C.FOLDER_PATIENT_ID: "patientId",
    C.SS_SOURCE_ID: "sourceId",
}
_PACKAGE_KIND = {C.SS_CLASSIFICATION_NODE: "SubmissionSet", C.FOLDER_CLASSIFICATION_NODE: "Folder",
                 C.SS_UNIQUE_ID: "SubmissionSet", C.SS_PATIENT_ID: "SubmissionSet", C.SS_SOURCE_ID: "SubmissionSet",
                 C.FOLDER_UNIQUE_ID: "Folder", C.FOLDER_PATIENT_ID: "Folder"}
_TIMES = ("creationTime", "serviceStartTime", "serviceStopTime", "submissionTime", "lastUpdateTime")
_SINGLE_SLOTS = ("creationTime", "serviceStartTime", "serviceStopTime", "submissionTime", "lastUpdateTime",
                 "languageCode", "hash", "size", "repositoryUniqueId", "sourcePatientId", "legalAuthenticator",
                 "documentAvailability", "URI")


def read_objects(response: etree._Element) -> list[dict]:
    """What an AdhocQueryResponse holds, one dict per object, in the registry's order; plain names
    (the ITI TF-3 metadata attribute names) so that JSON readers need no ebRIM."""
    rol = response.find(f"{{{RIM}}}RegistryObjectList")
    if rol is None:
        return []
    # Some registries return the SubmissionSet and Folder markers as objects of their own.
    markers = {c.get("classifiedObject"): _PACKAGE_KIND[c.get("classificationNode")]
               for c in rol.iterfind(f"{{{RIM}}}Classification") if c.get("classificationNode") in _PACKAGE_KIND}
    out = []
    for el in rol:
        if not isinstance(el.tag, str):
            continue
        local = etree.QName(el).localname
        if local == "Classification" and el.get("classifiedObject") in markers:
            continue
        out.append(_read_object(el, local, markers))
    return out


def _read_object(el: etree._Element, local: str, markers: dict[str, str]) -> dict:
    obj: dict = {"type": local, "id": el.get("id")}
    for key in ("lid", "home"):
        if el.get(key):
            obj[key] = el.get(key)
    if el.get("status"):
        obj["status"] = C.last_segment(el.get("status"))
    if local == "ObjectRef":
        return obj
    if local == "Association":
        obj["associationType"] = C.last_segment(el.get("associationType"), "")
        obj["sourceObject"], obj["targetObject"] = el.get("sourceObject"), el.get("targetObject")
        obj["slots"] = _slots(el)
        return obj
    kind = local
    for c in el.iterfind(f"{{{RIM}}}Classification"):
        kind = _PACKAGE_KIND.get(c.get("classificationNode"), kind)
    for e in el.iterfind(f"{{{RIM}}}ExternalIdentifier"):
        if local == "RegistryPackage":
            kind = _PACKAGE_KIND.get(e.get("identificationScheme"), kind)
    if local == "RegistryPackage":
        kind = markers.get(el.get("id"), kind)
    if local == "ExtrinsicObject":
        kind = "DocumentEntry"
        obj["entryType"] = {C.OBJECT_TYPE_STABLE: "stable", C.OBJECT_TYPE_ON_DEMAND: "on-demand"}.get(
            el.get("objectType"), el.get("objectType"))
        obj["mimeType"] = el.get("mimeType")
    obj["type"] = kind
    for e in el.iterfind(f"{{{RIM}}}ExternalIdentifier"):
        name = _IDENTIFIERS.get(e.get("identificationScheme"))
        if name:
            obj[name] = e.get("value")
    obj["title"] = _first_string(el, "Name")
    if _first_string(el, "Description"):
        obj["comments"] = _first_string(el, "Description")
    slots = _slots(el)
    for name in _SINGLE_SLOTS:
        if slots.get(name):
            obj[name] = slots[name][0]
    authors = []
    for c in el.iterfind(f"{{{RIM}}}Classification"):
        scheme = c.get("classificationScheme")
        if scheme in (C.DE_AUTHOR, C.SS_AUTHOR):
            a = _slots(c)
            authors.append({k: a[k] if k != "authorPerson" else (a[k] or [None])[0]
                            for k in ("authorPerson", "authorInstitution", "authorRole", "authorSpecialty")
                            if k in a})
        elif scheme in _CODES:
            name, many = _CODES[scheme]
            if many:
                obj.setdefault(name, []).append(_code(c))
            else:
                obj[name] = _code(c)
    if authors:
        obj["authors"] = authors
    obj["slots"] = slots
    return obj


# --- showing it ------------------------------------------------------------------------------------

TITLE_WIDTH = 40


def _when(dtm: str | None) -> str:
    if not dtm or not dtm.isdigit():
        return dtm or ""
    parts = [dtm[0:4], dtm[4:6], dtm[6:8], dtm[8:10], dtm[10:12], dtm[12:14]]
    date = "-".join(p for p in parts[:3] if p)
    clock = ":".join(p for p in parts[3:] if p)
    return date + (" " + clock if clock else "")


def _code_text(code) -> str:
    if isinstance(code, list):
        code = code[0] if code else None
    if not code or not code.get("code"):
        return ""
    return f"{code['code']}^^{code['scheme']}" if code.get("scheme") else code["code"]


def _short(text: str | None, width: int = TITLE_WIDTH) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def table_rows(objects: list[dict]) -> list[list[str]]:
    names = {o["id"]: o.get("uniqueId") or o["id"] for o in objects if o.get("id")}
    rows = []
    for o in objects:
        kind = o["type"]
        if kind == "Association":
            # The ends are named by uniqueId when the answer holds them: that is what the user typed.
            rows.append(["Association", "", o.get("status", ""), "", o.get("associationType", ""), o.get("id") or "",
                         f"{names.get(o.get('sourceObject'), o.get('sourceObject'))} -> "
                         f"{names.get(o.get('targetObject'), o.get('targetObject'))}"])
            continue
        when = next((o[t] for t in _TIMES if o.get(t)), None)
        code = o.get("classCode") or o.get("contentTypeCode") or o.get("codeList")
        label = kind + (" (on-demand)" if o.get("entryType") == "on-demand" else "")
        rows.append([label, o.get("uniqueId", ""), o.get("status", ""), _when(when), _code_text(code),
                     o.get("id") or "", _short(o.get("title"))])
    return rows


# TITLE last: an Association's two ends, long, then widen no other column.
HEADER = ["TYPE", "UNIQUEID", "STATUS", "TIME", "CODE", "ENTRYUUID", "TITLE"]


def format_table(objects: list[dict]) -> str:
    """One line per object; a column that no object fills is left out (an ObjectRef answer has ids only)."""
    rows = table_rows(objects)
    keep = [i for i in range(len(HEADER)) if i == 0 or any(r[i] for r in rows)]
    lines = [[HEADER[i] for i in keep]] + [[r[i] or "-" for i in keep] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(keep))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def result_json(result: QueryResult) -> dict:
    return {"status": C.last_segment(result.status, ""),
            "errors": [{"code": e.code, "severity": C.last_segment(e.severity, ""), "message": e.message,
                        "location": e.location} for e in result.errors],
            "objects": result.objects}


# --- the command -----------------------------------------------------------------------------------

def add_arguments(p) -> None:
    """`xds query NAME --flags`: one subcommand per stored query, each with every common flag, so
    that flags may come in any order after the query's name."""
    sub = p.add_subparsers(dest="query_command", required=True, metavar="QUERY")
    for q in QUERIES:
        qp = sub.add_parser(q.command, help=f"{q.name}: {q.help}", description=f"{q.transaction} {q.name} "
                            f"({q.id}): {q.help}.")
        qp.set_defaults(stored_query=q.command)
        params = qp.add_argument_group(f"{q.name} parameters")
        groups = {}
        for param in q.params:
            kw = {"dest": param.dest, "metavar": param.metavar, "help": param.help}
            if param.multi or param.and_or:
                kw["action"] = "append"
            if param.kind == INT:
                kw["type"] = int
            target = params
            if param.one_of:
                if param.one_of not in groups:
                    groups[param.one_of] = params.add_mutually_exclusive_group(required=True)
                target = groups[param.one_of]
            elif param.required and param.default is None and param.fallback is None:
                kw["required"] = True
            target.add_argument(param.flag, **kw)
        _common(qp)


def _common(p) -> None:
    p.add_argument("--config", help="TOML settings file (also XDS_CONFIG)")
    p.add_argument("--url", help=f"registry endpoint (default http://HOST:PORT of the settings + {REGISTRY_PATH}; "
                                 "https when they name tls_cert)")
    p.add_argument("--return", dest="return_type", type=str.lower, choices=("leafclass", "objectref"),
                   default="leafclass", help="LeafClass: the objects (default); ObjectRef: their entryUUIDs only")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", dest="output", action="store_const", const="json",
                     help="print status, errors and objects as JSON")
    out.add_argument("--xml", dest="output", action="store_const", const="xml",
                     help="print the registry's AdhocQueryResponse as received")
    p.add_argument("--home", metavar="URN", help="homeCommunityId of the AdhocQuery (XCA)")
    p.add_argument("--param", action="append", metavar="'$NAME=VALUE'",
                   help="one more Slot, its Value written in ITI-18 syntax as given (e.g. "
                        "\"$XDSDocumentEntryTypeCode=('X^^Y')\"); repeatable")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer (default 60)")
    add_client_arguments(p)


def command(args, settings) -> int:
    query = BY_COMMAND[args.stored_query]
    url = args.url or default_url(settings) + REGISTRY_PATH
    try:
        context, assertion = client_identity(args, settings, getattr(args, "patient", None))
    except ClientSetupError as exc:
        print(f"xds: {exc}", file=sys.stderr)
        return exc.exit_code
    return_type = "ObjectRef" if args.return_type == "objectref" else "LeafClass"
    try:
        result = run_query(url, query.id, request_slots(query, args), return_type, home=args.home,
                           assertion=assertion, ssl_context=context, timeout=args.timeout, action=query.action)
    except (TransportError, OSError, ValueError) as exc:
        print(f"xds: query to {url} failed: {exc}", file=sys.stderr)
        return 1
    if args.output == "xml":
        sys.stdout.buffer.write(result.body + b"\n")
        sys.stdout.flush()
    elif args.output == "json":
        print(json.dumps(result_json(result), indent=2, ensure_ascii=False))
    elif result.objects:
        print(format_table(result.objects))
    elif result.ok:
        print(f"no objects match ({query.name})")
    if not result.ok:
        print(f"xds: {query.name}: {C.last_segment(result.status, '')}", file=sys.stderr)
    _print_errors(result.errors)
    return 0 if result.ok else 1
