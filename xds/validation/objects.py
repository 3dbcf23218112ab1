"""Rules per object type: DocumentEntry, SubmissionSet, Folder (RULES §3.2-3.4; IPF rules 3, 5, 8, 11-29)."""
from __future__ import annotations

import re
from collections import Counter

from .. import constants as C
from .. import errors as E
from .. import hl7
from ..model import DocumentEntry, Folder, RegistryObject, SubmissionSet, UnknownPackage
from .classifications import ClassificationRules, CodeRule, check_classifications
from .context import FOLDER_MARKER, SS_MARKER, Context, Mode
from .slots import (
    Checker, SlotRule, check_availability, check_hash, check_oid, check_recipient, check_service_times,
    check_size, check_slot_names, check_slot_table, check_source_patient_info, check_uri_slot,
)

_MIME_RE = re.compile(r"\w+/[-+.\w]+", re.ASCII)
MAX_TITLE = 128
MAX_UNIQUE_ID = 128
MAX_UNIQUE_ID_EXTENSION = 16

DE_CLASSIFICATIONS = ClassificationRules(
    coded={
        C.DE_CLASS_CODE: CodeRule("classCode", 1, 1),
        C.DE_TYPE_CODE: CodeRule("typeCode", 1, 1),
        C.DE_FORMAT_CODE: CodeRule("formatCode", 1, 1),
        C.DE_HEALTHCARE_FACILITY_TYPE_CODE: CodeRule("healthcareFacilityTypeCode", 1, 1),
        C.DE_PRACTICE_SETTING_CODE: CodeRule("practiceSettingCode", 1, 1),
        C.DE_CONFIDENTIALITY_CODE: CodeRule("confidentialityCode", 1, None),
        C.DE_EVENT_CODE: CodeRule("eventCodeList", 0, None),
    },
    author_scheme=C.DE_AUTHOR,
    limited_metadata_scheme=C.DE_LIMITED_METADATA,
)
SS_CLASSIFICATIONS = ClassificationRules(
    coded={C.SS_CONTENT_TYPE_CODE: CodeRule("contentTypeCode", 1, 1)},
    author_scheme=C.SS_AUTHOR,
    limited_metadata_scheme=C.SS_LIMITED_METADATA,
    markers=(SS_MARKER,),
)
FOLDER_CLASSIFICATIONS = ClassificationRules(
    coded={C.FOLDER_CODE_LIST: CodeRule("codeList", 1, None)},
    author_scheme=None,
    limited_metadata_scheme=C.FOLDER_LIMITED_METADATA,
    markers=(FOLDER_MARKER,),
)


def check_objects(ctx: Context) -> None:
    de_tables = {on_demand: _document_entry_slots(ctx, on_demand) for on_demand in (False, True)}
    for obj in ctx.sub.objects:
        if isinstance(obj, DocumentEntry):
            check_document_entry(ctx, obj, de_tables[obj.is_on_demand])
        elif isinstance(obj, SubmissionSet):
            check_submission_set(ctx, obj)
        elif isinstance(obj, Folder):
            check_folder(ctx, obj)
        elif isinstance(obj, UnknownPackage):
            ctx.report(obj, "classificationNode", "RegistryPackage is classified as neither SubmissionSet nor Folder")


# --- DocumentEntry ------------------------------------------------------------------------

def _document_entry_slots(ctx: Context, on_demand: bool) -> dict[str, SlotRule]:
    repository_filled = 1 if ctx.requires_repository_attributes else 0
    check_local_id = ctx.profile.checker("sourcePatientId")
    # On-demand content does not exist yet, so it has no creation time, hash or size (IPF rule 13).
    return {
        "creationTime": SlotRule(0 if on_demand else 1, 1, hl7.check_dtm),
        "languageCode": SlotRule(1, 1, hl7.check_language_code),
        "sourcePatientId": SlotRule(1, 1, check_local_id),
        "sourcePatientInfo": SlotRule(0, None, lambda v: check_source_patient_info(v, check_local_id)),
        "legalAuthenticator": SlotRule(0, 1, hl7.check_xcn),
        "serviceStartTime": SlotRule(0, 1, hl7.check_dtm),
        "serviceStopTime": SlotRule(0, 1, hl7.check_dtm),
        "hash": SlotRule(0, 0) if on_demand else SlotRule(repository_filled, 1, check_hash),
        "size": SlotRule(0, 0) if on_demand else SlotRule(repository_filled, 1, check_size),
        "repositoryUniqueId": SlotRule(1 if on_demand else repository_filled, 1, check_oid),
        "documentAvailability": SlotRule(0, 1, check_availability),
        C.REFERENCE_ID_LIST_SLOT: SlotRule(0, None, hl7.check_cxi),
    }


def check_document_entry(ctx: Context, de: DocumentEntry, slot_table: dict[str, SlotRule]) -> None:
    _check_entry_type(ctx, de)
    if not de.mime_type:
        ctx.report(de, "mimeType", "is missing")
    elif not _MIME_RE.fullmatch(de.mime_type):
        ctx.report(de, "mimeType", f"'{de.mime_type}' is not of the form type/subtype")
    check_slot_names(ctx, de, C.DE_SLOTS)
    check_slot_table(ctx, de, slot_table)
    check_uri_slot(ctx, de)
    check_service_times(ctx, de)
    _check_title(ctx, de)
    check_classifications(ctx, de, DE_CLASSIFICATIONS)
    check_external_ids(ctx, de, {
        C.DE_PATIENT_ID: ("patientId", ctx.profile.checker("patientId")),
        C.DE_UNIQUE_ID: ("uniqueId", check_document_unique_id),
    })


def _check_entry_type(ctx: Context, de: DocumentEntry) -> None:
    if de.object_type not in C.DOCUMENT_ENTRY_TYPES:
        ctx.report(de, "objectType", f"'{de.object_type}' is neither the stable nor the on-demand DocumentEntry type",
                   E.UNMODIFIABLE_METADATA)
    elif ctx.mode == Mode.ON_DEMAND:
        # ITI-61 registers On-Demand entries only (ITI TF-2b 3.61.4.1.2); stable ones go by ITI-41/42.
        if not de.is_on_demand:
            ctx.report(de, "objectType", f"'{de.object_type}' is a stable DocumentEntry; ITI-61 registers "
                                         f"On-Demand DocumentEntries ({C.OBJECT_TYPE_ON_DEMAND}) only")
    elif de.is_on_demand:
        # On-demand entries are registered by ITI-61, never by the transactions validated here (IPF rule 26).
        # An update makes new versions of registered stable entries, so there it is a change of objectType,
        # which ITI-92 (RMU) answers with UnmodifiableMetadataError.
        ctx.report(de, "objectType", f"an on-demand DocumentEntry cannot be submitted by {ctx.mode}",
                   E.UNMODIFIABLE_METADATA if ctx.mode == Mode.UPDATE else None)


def _check_title(ctx: Context, de: DocumentEntry) -> None:
    for ls in de.names:
        value = ls.value or ""
        if len(value) > MAX_TITLE:
            ctx.report(de, "Name (title)", f"is {len(value)} characters long, at most {MAX_TITLE} allowed")
        charset = ls.charset
        if charset is not None and charset.upper() not in ("UTF-8", "UTF8"):
            ctx.report(de, "Name (title)", f"charset '{charset}' is not UTF-8")


def check_document_unique_id(v: str) -> list[str]:
    """OID, optionally ``^extension`` (NIST), in printable ASCII and at most 128 characters (IPF)."""
    problems = []
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in v):
        problems.append("must contain printable ASCII characters only, without spaces")
    if len(v) > MAX_UNIQUE_ID:
        problems.append(f"is {len(v)} characters long, at most {MAX_UNIQUE_ID} allowed")
    root, sep, extension = v.partition("^")
    problems += hl7.check_oid(root, "the OID part")
    if sep and not extension:
        problems.append("has an empty extension after '^'")
    if len(extension) > MAX_UNIQUE_ID_EXTENSION:
        problems.append(f"extension is {len(extension)} characters long, at most {MAX_UNIQUE_ID_EXTENSION} allowed")
    return problems


# --- SubmissionSet and Folder ------------------------------------------------------------

_SS_SLOTS = {
    "submissionTime": SlotRule(1, 1, hl7.check_dtm),
    "intendedRecipient": SlotRule(0, None, check_recipient),
}
# The registry overwrites lastUpdateTime, so only its form is checked and IPF's demand for
# second precision (which broke NIST tests, IPF issue 151) is not repeated.
_FOLDER_SLOTS = {"lastUpdateTime": SlotRule(0, 1, hl7.check_dtm)}


def check_submission_set(ctx: Context, ss: SubmissionSet) -> None:
    _check_package_status(ctx, ss)
    nodes = {c.classification_node for c in ss.classifications}
    if FOLDER_MARKER in nodes:
        ctx.report(ss, "classificationNode", "the RegistryPackage is classified both as SubmissionSet and as Folder")
    check_slot_names(ctx, ss, C.SS_SLOTS)
    check_slot_table(ctx, ss, _SS_SLOTS)
    check_classifications(ctx, ss, SS_CLASSIFICATIONS)
    check_external_ids(ctx, ss, {
        C.SS_PATIENT_ID: ("patientId", ctx.profile.checker("patientId")),
        C.SS_UNIQUE_ID: ("uniqueId", check_oid),
        C.SS_SOURCE_ID: ("sourceId", check_oid),
    })


def check_folder(ctx: Context, folder: Folder) -> None:
    _check_package_status(ctx, folder)
    check_slot_names(ctx, folder, C.FOLDER_SLOTS)
    check_slot_table(ctx, folder, _FOLDER_SLOTS)
    if not folder.name:
        ctx.report(folder, "Name", "is required on a Folder")
    check_classifications(ctx, folder, FOLDER_CLASSIFICATIONS)
    check_external_ids(ctx, folder, {
        C.FOLDER_PATIENT_ID: ("patientId", ctx.profile.checker("patientId")),
        C.FOLDER_UNIQUE_ID: ("uniqueId", check_oid),
    })


def _check_package_status(ctx: Context, obj: RegistryObject) -> None:
    if obj.status is not None and obj.status != C.STATUS_APPROVED:
        ctx.report(obj, "status", f"'{obj.status}' is not allowed; a submitted {obj.kind} can only be Approved")


# --- external identifiers ---------------------------------------------------------------

def check_external_ids(ctx: Context, obj: RegistryObject, table: dict[str, tuple[str, Checker]]) -> None:
    """Each scheme of the table exactly once, with a well-formed value; no other scheme."""
    counts: Counter[str] = Counter()
    for e in obj.external_ids:
        entry = table.get(e.scheme or "")
        if entry is None:
            if e.scheme:
                ctx.report(obj, f"ExternalIdentifier '{e.id}' identificationScheme",
                           f"'{e.scheme}' is not a {obj.kind} identifier")
            continue
        attribute, check = entry
        counts[e.scheme] += 1
        if e.value:  # an empty value is reported with the identifier's structure
            for problem in check(e.value):
                ctx.report(obj, attribute, f"'{e.value}': {problem}")
    for scheme, (attribute, _) in table.items():
        n = counts[scheme]
        if n == 0:
            ctx.report(obj, attribute, f"is required (ExternalIdentifier with identificationScheme {scheme})")
        elif n > 1:
            ctx.report(obj, attribute, f"appears {n} times, exactly one allowed")
