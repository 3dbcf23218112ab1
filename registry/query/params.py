"""Stored-query parameters: reading the AdhocQueryRequest slots and checking them per query.

ITI TF-2 3.18.4.1.2.3 fixes the value syntax (`'string'`, `('a','b')`, bare numbers, coded
values `code^^scheme`) and, per query, which parameters exist, which are required, which take
several values and which may repeat as Slots (AND of ORs). Every problem in a request is
reported at once, each naming its parameter in codeContext and in location.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from xds import constants as C
from xds import errors as E
from xds import hl7
from xds.errors import ErrorList, XdsError, XdsException
from xds.validation import Profile, get_profile

RIM = C.NS_RIM

# --- parameter value kinds ---------------------------------------------------------------
STRING = "string"
CODE = "code"
STATUS = "status"
DTM = "dtm"
INT = "int"
CX = "cx"
ENTRY_TYPE = "entry_type"
ASSOC_TYPE = "assoc_type"

ASSOCIATION_TYPES = frozenset((C.ASSOC_HAS_MEMBER,) + C.RELATIONSHIP_TYPES + (
    C.ASSOC_UPDATE_AVAILABILITY_STATUS, C.ASSOC_SUBMIT_ASSOCIATION))

METADATA_LEVEL = "$MetadataLevel"
ASSOCIATION_STATUS = "$XDSAssociationStatus"


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str = STRING
    required: bool = False
    multi: bool = False
    # May appear in several Slots: each Slot is an OR list, the Slots are ANDed.
    and_or: bool = False


@dataclass(frozen=True)
class QueryDef:
    name: str
    specs: tuple[Spec, ...]
    # Each group: exactly one of these parameters must be given.
    choices: tuple[tuple[str, ...], ...] = ()
    # Each group: at least one of these parameters must be given.
    at_least_one: tuple[tuple[str, ...], ...] = ()
    # The transaction that serves it: ITI-18 (RegistryStoredQuery) or ITI-51 (MultiPatientStoredQuery).
    transaction: str = "ITI-18"

    def spec(self, name: str) -> Spec | None:
        for s in self.specs:
            if s.name == name:
                return s
        return None


def _s(name, kind=STRING, required=False, multi=False, and_or=False) -> Spec:
    return Spec(name, kind, required, multi or and_or, and_or)


# Parameters every stored query accepts.
_COMMON = (_s(METADATA_LEVEL, INT),)
_ASSOC_STATUS = (_s(ASSOCIATION_STATUS, STATUS, multi=True),)

_DE_FILTERS = (
    _s("$XDSDocumentEntryClassCode", CODE, multi=True),
    _s("$XDSDocumentEntryTypeCode", CODE, multi=True),
    _s("$XDSDocumentEntryPracticeSettingCode", CODE, multi=True),
    _s("$XDSDocumentEntryCreationTimeFrom", DTM),
    _s("$XDSDocumentEntryCreationTimeTo", DTM),
    _s("$XDSDocumentEntryServiceStartTimeFrom", DTM),
    _s("$XDSDocumentEntryServiceStartTimeTo", DTM),
    _s("$XDSDocumentEntryServiceStopTimeFrom", DTM),
    _s("$XDSDocumentEntryServiceStopTimeTo", DTM),
    _s("$XDSDocumentEntryHealthcareFacilityTypeCode", CODE, multi=True),
    _s("$XDSDocumentEntryEventCodeList", CODE, and_or=True),
    _s("$XDSDocumentEntryConfidentialityCode", CODE, and_or=True),
    _s("$XDSDocumentEntryAuthorPerson", STRING, multi=True),
    _s("$XDSDocumentEntryFormatCode", CODE, multi=True),
    _s("$XDSDocumentEntryStatus", STATUS, required=True, multi=True),
    _s("$XDSDocumentEntryType", ENTRY_TYPE, multi=True),
)
_CONTENT_FILTERS = (
    _s("$XDSDocumentEntryFormatCode", CODE, multi=True),
    _s("$XDSDocumentEntryConfidentialityCode", CODE, and_or=True),
    _s("$XDSDocumentEntryType", ENTRY_TYPE, multi=True),
)


def _q(name: str, *specs: Spec, choices: tuple[tuple[str, ...], ...] = ()) -> QueryDef:
    return QueryDef(name, tuple(specs) + _COMMON, choices)


QUERIES: dict[str, QueryDef] = {
    C.SQ_FIND_DOCUMENTS: _q(
        "FindDocuments", _s("$XDSDocumentEntryPatientId", CX, required=True), *_DE_FILTERS),
    C.SQ_FIND_DOCUMENTS_BY_REFERENCE_ID: _q(
        "FindDocumentsByReferenceId", _s("$XDSDocumentEntryPatientId", CX, required=True),
        # Repeating Slots are allowed here as for the code lists (IPF and the ITI-18 table agree).
        _s("$XDSDocumentEntryReferenceIdList", STRING, required=True, and_or=True), *_DE_FILTERS),
    C.SQ_FIND_SUBMISSION_SETS: _q(
        "FindSubmissionSets",
        _s("$XDSSubmissionSetPatientId", CX, required=True),
        _s("$XDSSubmissionSetSourceId", STRING, multi=True),
        _s("$XDSSubmissionSetSubmissionTimeFrom", DTM),
        _s("$XDSSubmissionSetSubmissionTimeTo", DTM),
        _s("$XDSSubmissionSetAuthorPerson", STRING),
        _s("$XDSSubmissionSetContentType", CODE, multi=True),
        _s("$XDSSubmissionSetStatus", STATUS, required=True, multi=True)),
    C.SQ_FIND_FOLDERS: _q(
        "FindFolders",
        _s("$XDSFolderPatientId", CX, required=True),
        _s("$XDSFolderLastUpdateTimeFrom", DTM),
        _s("$XDSFolderLastUpdateTimeTo", DTM),
        _s("$XDSFolderCodeList", CODE, and_or=True),
        _s("$XDSFolderStatus", STATUS, required=True, multi=True)),
    C.SQ_GET_ALL: _q(
        "GetAll",
        _s("$patientId", CX, required=True),
        _s("$XDSDocumentEntryStatus", STATUS, required=True, multi=True),
        _s("$XDSSubmissionSetStatus", STATUS, required=True, multi=True),
        _s("$XDSFolderStatus", STATUS, required=True, multi=True),
        *_CONTENT_FILTERS, *_ASSOC_STATUS),
    C.SQ_GET_DOCUMENTS: _q(
        "GetDocuments",
        _s("$XDSDocumentEntryEntryUUID", multi=True),
        _s("$XDSDocumentEntryUniqueId", multi=True),
        _s("$XDSDocumentEntryLogicalID", multi=True),
        choices=(("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId", "$XDSDocumentEntryLogicalID"),)),
    C.SQ_GET_FOLDERS: _q(
        "GetFolders",
        _s("$XDSFolderEntryUUID", multi=True),
        _s("$XDSFolderUniqueId", multi=True),
        _s("$XDSFolderLogicalID", multi=True),
        choices=(("$XDSFolderEntryUUID", "$XDSFolderUniqueId", "$XDSFolderLogicalID"),)),
    C.SQ_GET_ASSOCIATIONS: _q(
        "GetAssociations", _s("$uuid", required=True, multi=True), *_ASSOC_STATUS),
    C.SQ_GET_DOCUMENTS_AND_ASSOCIATIONS: _q(
        "GetDocumentsAndAssociations",
        _s("$XDSDocumentEntryEntryUUID", multi=True),
        _s("$XDSDocumentEntryUniqueId", multi=True),
        *_ASSOC_STATUS,
        choices=(("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"),)),
    C.SQ_GET_SUBMISSION_SETS: _q(
        "GetSubmissionSets", _s("$uuid", required=True, multi=True), *_ASSOC_STATUS),
    C.SQ_GET_SUBMISSION_SET_AND_CONTENTS: _q(
        "GetSubmissionSetAndContents",
        _s("$XDSSubmissionSetEntryUUID"),
        _s("$XDSSubmissionSetUniqueId"),
        *_CONTENT_FILTERS, *_ASSOC_STATUS,
        choices=(("$XDSSubmissionSetEntryUUID", "$XDSSubmissionSetUniqueId"),)),
    C.SQ_GET_FOLDER_AND_CONTENTS: _q(
        "GetFolderAndContents",
        _s("$XDSFolderEntryUUID"),
        _s("$XDSFolderUniqueId"),
        *_CONTENT_FILTERS, *_ASSOC_STATUS,
        choices=(("$XDSFolderEntryUUID", "$XDSFolderUniqueId"),)),
    C.SQ_GET_FOLDERS_FOR_DOCUMENT: _q(
        "GetFoldersForDocument",
        _s("$XDSDocumentEntryEntryUUID"),
        _s("$XDSDocumentEntryUniqueId"),
        *_ASSOC_STATUS,
        choices=(("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"),)),
    C.SQ_GET_RELATED_DOCUMENTS: _q(
        "GetRelatedDocuments",
        _s("$XDSDocumentEntryEntryUUID"),
        _s("$XDSDocumentEntryUniqueId"),
        _s("$AssociationTypes", ASSOC_TYPE, required=True, multi=True),
        _s("$XDSDocumentEntryType", ENTRY_TYPE, multi=True),
        *_ASSOC_STATUS,
        choices=(("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"),)),
}

# ITI-51 (ITI TF-2 3.51.4.1.2): FindDocuments and FindFolders whose patient parameter is optional and takes a
# list (no list: every patient). As the NIST kit (test 12364) and its reference registry check them, the
# documents query needs at least one of classCode, eventCodeList and healthcareFacilityTypeCode, and the
# folders query its codeList.
_MPQ_DE_CODES = ("$XDSDocumentEntryClassCode", "$XDSDocumentEntryEventCodeList",
                 "$XDSDocumentEntryHealthcareFacilityTypeCode")
MPQ_QUERIES: dict[str, QueryDef] = {
    C.SQ_FIND_DOCUMENTS_FOR_MULTIPLE_PATIENTS: QueryDef(
        "FindDocumentsForMultiplePatients",
        (_s("$XDSDocumentEntryPatientId", CX, multi=True),) + _DE_FILTERS + _COMMON,
        at_least_one=(_MPQ_DE_CODES,), transaction="ITI-51"),
    C.SQ_FIND_FOLDERS_FOR_MULTIPLE_PATIENTS: QueryDef(
        "FindFoldersForMultiplePatients",
        (_s("$XDSFolderPatientId", CX, multi=True),
         _s("$XDSFolderLastUpdateTimeFrom", DTM),
         _s("$XDSFolderLastUpdateTimeTo", DTM),
         _s("$XDSFolderCodeList", CODE, required=True, and_or=True),
         _s("$XDSFolderStatus", STATUS, required=True, multi=True)) + _COMMON,
        transaction="ITI-51"),
}
# The parameter naming the patients of each ITI-51 query.
MPQ_PATIENT_PARAMS = {
    C.SQ_FIND_DOCUMENTS_FOR_MULTIPLE_PATIENTS: "$XDSDocumentEntryPatientId",
    C.SQ_FIND_FOLDERS_FOR_MULTIPLE_PATIENTS: "$XDSFolderPatientId",
}
_ACTIONS = {"ITI-18": C.ACTION_QUERY, "ITI-51": C.ACTION_MPQ}

RETURN_LEAF_CLASS = "LeafClass"
RETURN_OBJECT_REF = "ObjectRef"


# --- the request -----------------------------------------------------------------------------

@dataclass
class RawSlot:
    name: str
    values: list[str]  # the text of each <Value>, stripped


@dataclass
class QueryRequest:
    query_id: str
    return_type: str
    home: str | None
    slots: list[RawSlot]


def read_request(request: etree._Element) -> QueryRequest:
    """The parts of an AdhocQueryRequest that a stored query needs; raises on a malformed envelope."""
    if not isinstance(request.tag, str) or request.tag != C.q(C.NS_QUERY, "AdhocQueryRequest"):
        tag = etree.QName(request).localname if isinstance(request.tag, str) else "?"
        raise XdsException(E.REGISTRY_ERROR, f"expected query:AdhocQueryRequest, got {tag}", "AdhocQueryRequest")
    option = request.find(C.q(C.NS_QUERY, "ResponseOption"))
    if option is None:
        raise XdsException(E.REGISTRY_ERROR, "AdhocQueryRequest has no query:ResponseOption element",
                           "ResponseOption")
    return_type = option.get("returnType")
    if return_type not in (RETURN_LEAF_CLASS, RETURN_OBJECT_REF):
        raise XdsException(E.REGISTRY_ERROR,
                           f"ResponseOption returnType must be LeafClass or ObjectRef, got '{return_type or ''}'",
                           "returnType")
    query = request.find(C.q(RIM, "AdhocQuery"))
    if query is None:
        raise XdsException(E.REGISTRY_ERROR, "AdhocQueryRequest has no rim:AdhocQuery element", "AdhocQuery")
    slots = []
    for s in query.findall(C.q(RIM, "Slot")):
        values = [(v.text or "").strip() for v in s.iterfind(f"{{{RIM}}}ValueList/{{{RIM}}}Value")]
        slots.append(RawSlot(s.get("name") or "", values))
    return QueryRequest((query.get("id") or "").strip(), return_type, query.get("home") or None, slots)


# --- value syntax ----------------------------------------------------------------------------

class SyntaxProblem(ValueError):
    pass


@dataclass
class Item:
    text: str
    quoted: bool


@dataclass
class SlotValue:
    items: list[Item]
    is_list: bool  # some value was written in parentheses


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "(),":
            out.append((ch, ch))
            i += 1
        elif ch == "'":
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise SyntaxProblem(f"unterminated quoted string in {text!r}")
                if text[i] == "'":
                    # A doubled quote stands for one quote inside the string.
                    if i + 1 < n and text[i + 1] == "'":
                        buf.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(text[i])
                i += 1
            out.append(("str", "".join(buf)))
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "(),'":
                j += 1
            out.append(("bare", text[i:j]))
            i = j
    return out


def parse_slot_values(values: list[str]) -> SlotValue:
    """Read the <Value> texts of one Slot.

    A list may be written in one Value or split over several (`('a',` then `'b')`), and
    several Values may each hold a list: all of it is one list of items, ORed.
    """
    items: list[Item] = []
    is_list = False
    depth = 0
    expect_item = True  # after an opening parenthesis, a comma or a Value boundary
    for text in values:
        if not text:
            continue
        if depth == 0:
            expect_item = True
        for kind, tok in _tokens(text):
            if kind == "(":
                if depth:
                    raise SyntaxProblem(f"nested parentheses in {text!r}")
                if not expect_item:
                    raise SyntaxProblem(f"missing comma before '(' in {text!r}")
                depth, is_list, expect_item = 1, True, True
            elif kind == ")":
                if not depth:
                    raise SyntaxProblem(f"unbalanced ')' in {text!r}")
                depth, expect_item = 0, False
            elif kind == ",":
                if expect_item and depth:
                    raise SyntaxProblem(f"empty list element in {text!r}")
                expect_item = True
            else:
                if not expect_item:
                    raise SyntaxProblem(f"missing comma between values in {text!r}")
                items.append(Item(tok, kind == "str"))
                expect_item = False
        # A Value boundary inside an open list separates elements like a comma.
        if depth:
            expect_item = True
    if depth:
        raise SyntaxProblem("list opened with '(' is never closed")
    return SlotValue(items, is_list)


# --- per-kind value checks ---------------------------------------------------------------------

def _convert(spec: Spec, item: Item, profile: Profile) -> tuple[Any, str | None]:
    """(value, problem) for one item of a parameter."""
    text = item.text
    if spec.kind in (INT, DTM):
        # The profile writes numbers bare; quoted digits are accepted as the same number.
        if not text.isdigit():
            what = "an integer" if spec.kind == INT else "a DTM timestamp (YYYY[MM[DD[hh[mm[ss]]]]])"
            return None, f"value '{text}' is not {what}"
        if spec.kind == INT:
            return int(text), None
        problems = hl7.check_dtm(text)
        return (text, None) if not problems else (None, problems[0])
    if not item.quoted:
        return None, f"value {text} must be a quoted string ('...')"
    if spec.kind == CODE:
        parts = text.split("^")
        if len(parts) != 3 or not parts[0] or not parts[2]:
            return None, f"coded value '{text}' must have the form code^^codingScheme"
        return f"{parts[0]}^^{parts[2]}", None
    if spec.kind == STATUS:
        known = C.STATUSES + profile.statuses
        if text not in known:
            return None, f"'{text}' is not a status value (expected one of {', '.join(known)})"
        return text, None
    if spec.kind == ENTRY_TYPE:
        if text not in C.DOCUMENT_ENTRY_TYPES:
            return None, (f"'{text}' is not a DocumentEntry type (expected {C.OBJECT_TYPE_STABLE} or "
                          f"{C.OBJECT_TYPE_ON_DEMAND})")
        return text, None
    if spec.kind == ASSOC_TYPE:
        if text not in ASSOCIATION_TYPES:
            return None, f"'{text}' is not an association type"
        return text, None
    if spec.kind == CX:
        problems = profile.checker("queryPatientId")(text)
        # The registry indexes patients by identity (hl7.patient_key), so the query asks by it too.
        return ((hl7.patient_key(text), None) if not problems
                else (None, f"patient id '{text}' is not a valid CX: {problems[0]}"))
    return text, None


# --- the parsed parameters ---------------------------------------------------------------------

@dataclass
class Params:
    query: QueryDef
    values: dict[str, Any] = field(default_factory=dict)
    warnings: list[XdsError] = field(default_factory=list)

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def has(self, name: str) -> bool:
        return name in self.values

    @property
    def metadata_level(self) -> int:
        return self.values.get(METADATA_LEVEL, 1)


def parse_params(query_id: str, slots: list[RawSlot], profile: Profile | None = None,
                 transaction: str = "ITI-18") -> Params:
    """Check the slots against the query's parameter table; raise XdsException listing every problem.

    profile: the validation profile in force (its patient id form, its extra statuses); None is IHE's.
    transaction: ITI-18 or ITI-51; each serves only its own queries (XDSUnknownStoredQuery otherwise)."""
    profile = profile or get_profile("ihe")
    qdef = QUERIES.get(query_id) or MPQ_QUERIES.get(query_id)
    if qdef is None:
        raise XdsException(E.UNKNOWN_STORED_QUERY, f"unknown stored query id '{query_id}'", query_id or "AdhocQuery")
    if qdef.transaction != transaction:
        raise XdsException(E.UNKNOWN_STORED_QUERY,
                           f"{qdef.name} ({query_id}) is not a query of {transaction}: it is an {qdef.transaction} "
                           f"query, sent with the action {_ACTIONS[qdef.transaction]}", query_id)
    found = ErrorList(E.REGISTRY_ERROR)
    params = Params(qdef)
    grouped: dict[str, list[RawSlot]] = {}
    for slot in slots:
        grouped.setdefault(slot.name, []).append(slot)

    for name, group in grouped.items():
        spec = qdef.spec(name)
        if spec is None:
            if not name.startswith("$"):
                found.add(f"{qdef.name}: parameter name '{name}' must start with '$'", name or "Slot")
            elif name.startswith("$urn:"):
                found.warn(f"{qdef.name}: extra-metadata parameter {name} is not supported and was ignored", name)
            else:
                found.warn(f"{qdef.name}: parameter {name} is not defined for this query and was ignored", name)
            continue
        if len(group) > 1 and not spec.and_or:
            found.add(f"{qdef.name}: parameter {name} is given in {len(group)} Slots; only one is allowed",
                      name, E.STORED_QUERY_PARAM_NUMBER)
            continue
        parsed_groups = []
        for slot in group:
            value = _parse_one(qdef, spec, slot, found, profile)
            if value is not None:
                parsed_groups.append(value)
        if len(parsed_groups) == len(group):
            if spec.and_or:
                params.values[name] = parsed_groups
            else:
                params.values[name] = parsed_groups[0]

    for spec in qdef.specs:
        if spec.required and spec.name not in grouped:
            found.add(f"{qdef.name}: required parameter {spec.name} is missing", spec.name,
                      E.STORED_QUERY_MISSING_PARAM)
    for choice in qdef.choices:
        given = [n for n in choice if n in grouped]
        if not given:
            found.add(f"{qdef.name}: one of {', '.join(choice)} is required", choice[0],
                      E.STORED_QUERY_MISSING_PARAM)
        elif len(given) > 1:
            found.add(f"{qdef.name}: only one of {', '.join(choice)} may be given, got {', '.join(given)}",
                      given[1], E.STORED_QUERY_PARAM_NUMBER)
    for group in qdef.at_least_one:
        if not any(n in grouped for n in group):
            found.add(f"{qdef.name}: at least one of {', '.join(group)} is required", group[0],
                      E.STORED_QUERY_MISSING_PARAM)

    level = params.values.get(METADATA_LEVEL)
    if level is not None and level not in (1, 2):
        found.add(f"{qdef.name}: {METADATA_LEVEL} must be 1 or 2, got {level}", METADATA_LEVEL)
    found.raise_if_errors()
    params.warnings = found.warnings
    return params


def _parse_one(qdef: QueryDef, spec: Spec, slot: RawSlot, found: ErrorList, profile: Profile) -> Any:
    name = spec.name
    try:
        sv = parse_slot_values(slot.values)
    except SyntaxProblem as exc:
        found.add(f"{qdef.name}: parameter {name}: {exc}", name)
        return None
    if not sv.items:
        found.add(f"{qdef.name}: parameter {name} has no value" + (" (empty list)" if sv.is_list else ""), name)
        return None
    if not spec.multi and len(sv.items) > 1:
        found.add(f"{qdef.name}: parameter {name} takes a single value, got {len(sv.items)}", name,
                  E.STORED_QUERY_PARAM_NUMBER)
        return None
    out = []
    ok = True
    for item in sv.items:
        value, problem = _convert(spec, item, profile)
        if problem:
            found.add(f"{qdef.name}: parameter {name}: {problem}", name)
            ok = False
        else:
            out.append(value)
    if not ok:
        return None
    if spec.kind == STATUS and profile.hidden_statuses:
        # Asked for or not, these are never answered: the list may end up empty, which finds nothing.
        out = [v for v in out if v not in profile.hidden_statuses]
    if spec.multi:
        return list(dict.fromkeys(out))
    return out[0]
