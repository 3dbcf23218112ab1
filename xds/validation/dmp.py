"""Rules of the French DMP / CI-SIS profile (shared/testkits/dmp/PROFILE.md, Table B).

Only rules that the metadata alone decides are here; the DMP's access rights, the VIHF
cross-checks and the CDA coherence checks (cda.py, run by the repository) need more than a submission.

The rules added for the value sets, the national ids of authors and the signature document report
codes of their own (the ``DMP*`` constants below), so that a source can tell which DMP rule it broke.
"""
from __future__ import annotations

import re

from .. import constants as C
from .. import errors as E
from .. import hl7
from ..model import Classification, DocumentEntry, Folder, RegistryObject, SubmissionSet
from . import valuesets
from .context import Context, Mode

# B-1 and Table C: production INS-NIR and INS-NIA, then the test and demo NIR roots.
INS_OIDS = ("1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11")
# INS-C and INS-A stopped being issued; a DMP cannot know a patient by them any more.
LEGACY_INS_OIDS = ("1.2.250.1.213.1.4.2", "1.2.250.1.213.1.4.1")
INS_LENGTH = 15
INS_TYPE_CODE = "NH"

HL7_CONFIDENTIALITY = "2.16.840.1.113883.5.25"
HL7_CONFIDENTIALITY_CODES = ("N", "R", "V")
DMP_CONFIDENTIALITY = "1.2.250.1.213.1.1.4.13"
# JDV_J58 keeps only these three of TRE_A07 (MASQUE_PSOCIAL and MASQUE_PT are excluded).
DMP_CONFIDENTIALITY_CODES = ("MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX")
MAX_CONFIDENTIALITY = 4

TRE_A00 = "1.2.250.1.213.1.1.4.6"
TRE_A00_CODES = ("EXP_PATIENT", "SNR")
TRE_A01 = "1.2.250.1.213.1.1.4.9"
TRE_A01_CODES = ("AMBULATOIRE", "AMO", "DEPISTAGE", "ESSMS", "ETABLISSEMENT", "HAD", "MAD", "PALLIATIF", "SAD",
                 "SAMU_SMUR")
TRE_R02 = "1.2.250.1.71.4.2.4"
TRE_A03 = "1.2.250.1.213.1.1.4.1"
SIGNATURE_CLASS = ("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN")

# The error codes of the rules below (codeContext: the object, the attribute, the problem).
AUTHOR_NATIONAL_ID = "DMPAuthorNationalId"      # B-9, B-10
TYPE_CODE = "DMPTypeCode"                       # B-14, JDV_J07
FORMAT_CODE = "DMPFormatCode"                   # B-15, JDV_J60
CONTENT_TYPE_CODE = "DMPContentTypeCode"        # B-7, JDV_J59
AUTHOR_SPECIALTY = "DMPAuthorSpecialty"         # B-12, JDV_J01
AUTHOR_ROLE = "DMPAuthorRole"                   # B-12, JDV_J47
REFERENCE_ID_TYPE = "DMPReferenceIdType"        # B-27, JDV_J231
SIGNATURE_MISSING = "DMPSignatureMissing"       # B-32
SIGNATURE_TARGET = "DMPSignatureTarget"         # B-32
SIGNATURE_METADATA = "DMPSignatureMetadata"     # B-32

# B-32: the fixed metadata of the signature document.
SIGNATURE_TYPE = ("E1762", "ASTM")
SIGNATURE_FORMAT = ("http://www.w3.org/2000/09/xmldsig#", "URN")
SIGNATURE_EVENT = ("1.2.840.10065.1.12.1.14", "1.2.840.10065.1.12")
SIGNATURE_CONFIDENTIALITY = (("N", HL7_CONFIDENTIALITY), ("MASQUE_PS", DMP_CONFIDENTIALITY),
                             ("INVISIBLE_PATIENT", DMP_CONFIDENTIALITY))

# B-9, B-10: authorPerson XCN.9 for professionals and systems, XCN.13 for each kind of author.
IDNAT_PS_AUTHORITY = "1.2.250.1.71.4.2.1"
XCN_PS, XCN_SYSTEM, XCN_PATIENT = "IDNPS", "RI", "NH"
# IdNat_PS: 8 + RPPS (11 digits), 0 + ADELI (9 characters), or 1/3/4/5/6 + the id of a structure
# (cabinet ADELI, FINESS, SIREN, SIRET, cabinet RPPS) + "/" + an id internal to that structure.
_IDNAT_PS = re.compile(r"8[0-9]{11}|0[0-9A-Z]{9}|[13456][0-9A-Za-z]+/[^\s/][^\s]*")
# A system of a structure: 3/4/5/… + the structure's id + "/" + the system's internal id.
_IDNAT_SYSTEM = re.compile(r"[13456][0-9A-Za-z]+/[^\s/][^\s]*")


# --- patient identifiers ----------------------------------------------------------------

def _check_after_cx5(value: str) -> list[str]:
    # The DMP examples append the INS's validity date as CX.7 (``^NH^^20100907``).
    other = hl7.parse_cx(value).other
    problems = []
    for number, part in enumerate(other, start=6):
        if not part:
            continue
        if number == 7:
            problems += [f"CX.7 {p}" for p in hl7.check_dtm(part)]
        else:
            problems.append(f"CX.{number} must be empty, got '{part}'")
    return problems


def check_ins_patient_id(value: str) -> list[str]:
    """B-1: ``INS^^^&INS-OID&ISO^NH`` with an optional CX.7 date."""
    core = "^".join(value.split("^")[:4])
    problems = hl7.check_cx(core, require_aa=True, strict=True)
    cx = hl7.parse_cx(value)
    if cx.type_code != INS_TYPE_CODE:
        problems.append(f"CX.5 must be '{INS_TYPE_CODE}' for an INS, got '{cx.type_code}'")
    if cx.id and len(cx.id) != INS_LENGTH:
        problems.append(f"CX.1 INS '{cx.id}' has {len(cx.id)} characters, an INS has {INS_LENGTH}")
    authority = cx.aa_universal_id
    # Legacy roots get their own rule and error code (legacy_ins_rule).
    if authority and authority not in INS_OIDS and authority not in LEGACY_INS_OIDS:
        problems.append(f"CX.4 '{authority}' is not an INS assigning authority ({', '.join(INS_OIDS)})")
    return problems + _check_after_cx5(value)


def check_source_patient_id(value: str) -> list[str]:
    """B-3: the producer's local id (``^PI``) or the INS, which may carry its CX.7 date."""
    core = "^".join(value.split("^")[:5])
    return hl7.check_cx(core, require_aa=True, strict=False) + _check_after_cx5(value)


# B-11: XON.7 says which national register XON.10 comes from.
XON_ID_TYPES = ("IDNST", "SIREN")


def check_author_institution(value: str) -> list[str]:
    parts = value.split("^")
    id_type = parts[6] if len(parts) > 6 else ""
    problems = []
    if id_type:
        if id_type not in XON_ID_TYPES:
            problems.append(f"XON.7 '{id_type}' is not one of {', '.join(XON_ID_TYPES)}")
        parts[6] = ""
    return problems + hl7.check_xon("^".join(parts))


def legacy_ins_rule(ctx: Context) -> None:
    for obj in ctx.sub.objects:
        if not isinstance(obj, (SubmissionSet, DocumentEntry, Folder)) or not obj.patient_id:
            continue
        authority = hl7.parse_cx(obj.patient_id).aa_universal_id
        if authority in LEGACY_INS_OIDS:
            ctx.report(obj, "patientId", f"assigning authority {authority} is a retired INS-C/INS-A root; "
                                         "the DMP knows patients by INS-NIR or INS-NIA only", E.UNKNOWN_PATIENT_ID)


# --- SubmissionSet ------------------------------------------------------------------------

def submission_set_author_rule(ctx: Context) -> None:
    """B-8: exactly one author, and it names a person."""
    for ss in ctx.sub.submission_sets:
        authors = ss.authors()
        if len(authors) != 1:
            ctx.report(ss, "author", f"the DMP requires exactly one SubmissionSet author, found {len(authors)}")
        elif not authors[0].person:
            ctx.report(ss, "author authorPerson", "is required on the DMP SubmissionSet author")


# --- DocumentEntry ------------------------------------------------------------------------

def document_entry_rule(ctx: Context) -> None:
    for de in ctx.sub.document_entries:
        _required_attributes(ctx, de)
        _confidentiality(ctx, de)
        _coded_in(ctx, de, C.DE_CLASS_CODE, "classCode (JDV_J57)",
                  lambda code, scheme: scheme == TRE_A03 or (code, scheme) == SIGNATURE_CLASS)
        _coded_in(ctx, de, C.DE_PRACTICE_SETTING_CODE, "practiceSettingCode (JDV_J62)",
                  lambda code, scheme: (scheme == TRE_A01 and code in TRE_A01_CODES)
                  or (scheme == TRE_A00 and code in TRE_A00_CODES))
        _coded_in(ctx, de, C.DE_HEALTHCARE_FACILITY_TYPE_CODE, "healthcareFacilityTypeCode (JDV_J61)",
                  lambda code, scheme: scheme == TRE_R02 or (scheme == TRE_A00 and code in TRE_A00_CODES))


def _required_attributes(ctx: Context, de: DocumentEntry) -> None:
    # B-6, B-21, B-22: optional in IHE, required by the DMP.
    for slot in ("legalAuthenticator", "serviceStartTime"):
        if not de.slot(slot):
            ctx.report(de, f"slot {slot}", "is required by the DMP")
    if not de.name:
        ctx.report(de, "Name (title)", "is required by the DMP")


def _confidentiality(ctx: Context, de: DocumentEntry) -> None:
    """B-16: one HL7 level, plus up to three DMP visibility codes."""
    codes = de.codes(C.DE_CONFIDENTIALITY_CODE)
    if len(codes) > MAX_CONFIDENTIALITY:
        ctx.report(de, "confidentialityCode", f"has {len(codes)} codes, the DMP allows at most {MAX_CONFIDENTIALITY}")
    levels = 0
    for code in codes:
        if code.scheme == HL7_CONFIDENTIALITY and code.code in HL7_CONFIDENTIALITY_CODES:
            levels += 1
        elif not (code.scheme == DMP_CONFIDENTIALITY and code.code in DMP_CONFIDENTIALITY_CODES):
            ctx.report(de, "confidentialityCode", f"'{code.code}' from '{code.scheme}' is not in JDV_J58")
    if levels != 1:
        ctx.report(de, "confidentialityCode", f"needs exactly one HL7 level (N, R or V from {HL7_CONFIDENTIALITY}), "
                                              f"has {levels}")


def _coded_in(ctx: Context, de: DocumentEntry, scheme: str, attribute: str, accepts) -> None:
    for code in de.codes(scheme):
        if code.code and not accepts(code.code, code.scheme):
            ctx.report(de, attribute, f"'{code.code}' from '{code.scheme}' is not in the DMP value set")


# --- authors (B-9, B-10, B-12) ----------------------------------------------------------

def _xcn(value: str) -> list[str]:
    return (value.replace("&amp;", "&").split("^") + [""] * 13)[:13]


def _hd(value: str) -> tuple[str, str, str]:
    parts = (value.split("&") + ["", "", ""])[:3]
    return parts[0], parts[1], parts[2]


def author_kind(person: str | None) -> str:
    """XCN.13 of an authorPerson: IDNPS (a professional), RI (a system, a device, a digital service),
    NH (the patient); empty when there is no authorPerson."""
    return _xcn(person)[12] if person else ""


def check_author_person(value: str) -> list[str]:
    """B-9 and B-10: what is wrong with an authorPerson for the DMP (empty: nothing)."""
    parts = _xcn(value)
    ident, authority, id_type, kind = parts[0], parts[8], parts[9], parts[12]
    namespace, oid, oid_type = _hd(authority)
    iso_oid = not namespace and oid_type == hl7.ISO and hl7.is_oid(oid)
    problems = []

    def need_authority(expected: str | None, what: str) -> None:
        # XCN.9 is &OID&ISO: the OID given (expected), or any OID (None).
        if not iso_oid or (expected is not None and oid != expected):
            problems.append(f"XCN.9 must be &{expected or '<OID>'}&ISO ({what}), got '{authority}'")

    def need_id_type(expected: str) -> None:
        if id_type != expected:
            problems.append(f"XCN.10 must be '{expected}', got '{id_type}'")

    if kind == XCN_PS:
        if not _IDNAT_PS.fullmatch(ident):
            problems.append(f"XCN.1 '{ident}' is not an IdNat_PS (8 + RPPS, 0 + ADELI, or 1/3/4/5/6 + "
                            "a structure id + '/' + an internal id)")
        need_authority(IDNAT_PS_AUTHORITY, "the national ids of professionals")
        need_id_type("D")
    elif kind == XCN_SYSTEM:
        if oid == IDNAT_PS_AUTHORITY:
            if not _IDNAT_SYSTEM.fullmatch(ident):
                problems.append(f"XCN.1 '{ident}' is not a system id (3/4/5/… + the structure's id + '/' + "
                                "an internal id)")
            need_authority(IDNAT_PS_AUTHORITY, "the national ids of systems")
        else:
            # A referenced digital service (SNR): its instance OID, under its vendor's OID.
            if not hl7.is_oid(ident):
                problems.append(f"XCN.1 '{ident}' is neither a system id under {IDNAT_PS_AUTHORITY} nor the "
                                "OID of a referenced digital service")
            need_authority(None, "the vendor of a digital service")
        need_id_type("U")
    elif kind == XCN_PATIENT:
        if len(ident) != INS_LENGTH:
            problems.append(f"XCN.1 INS '{ident}' has {len(ident)} characters, an INS has {INS_LENGTH}")
        if not iso_oid or oid not in INS_OIDS:
            problems.append(f"XCN.9 must be &<INS OID>&ISO with an INS OID ({', '.join(INS_OIDS)}), "
                            f"got '{authority}'")
        need_id_type("D")
    else:
        problems.append(f"XCN.13 '{kind}' is not {XCN_PS} (a professional), {XCN_SYSTEM} (a system or a "
                        f"digital service) or {XCN_PATIENT} (the patient)")
    return problems


def _authored(ctx: Context) -> list[RegistryObject]:
    return [*ctx.sub.document_entries, *ctx.sub.submission_sets]


def _author_classifications(obj: RegistryObject) -> list[tuple[str, Classification]]:
    found = obj.classifications_by(obj.author_scheme) if obj.author_scheme else []
    return [(f"author '{c.id}'" if c.id else "author", c) for c in found]


def author_national_id_rule(ctx: Context) -> None:
    for obj in _authored(ctx):
        for where, c in _author_classifications(obj):
            for person in c.slot("authorPerson") or []:
                problems = check_author_person(person)
                if problems:
                    ctx.report(obj, f"{where} authorPerson", f"'{person}' is not a DMP author id: "
                                                            + "; ".join(problems), AUTHOR_NATIONAL_ID)


def _coded(value: str) -> tuple[str, str]:
    """(code, coding scheme) of ``code^display^OID`` (the CI-SIS form) or ``code^^^&OID&ISO``."""
    parts = value.replace("&amp;", "&").split("^")
    code = parts[0].strip()
    scheme = parts[2].strip() if len(parts) > 2 else ""
    if not scheme and len(parts) > 3:
        _, oid, _ = _hd(parts[3])
        scheme = oid.strip()
    return code, scheme


def author_code_rule(ctx: Context) -> None:
    """B-12: authorSpecialty from JDV_J01 (a non-professional author may use any TRE_A00 code),
    authorRole from JDV_J47."""
    specialties, roles = valuesets.get("JDV_J01"), valuesets.get("JDV_J47")
    for obj in _authored(ctx):
        for where, c in _author_classifications(obj):
            person = (c.slot("authorPerson") or [None])[0]
            professional = author_kind(person) == XCN_PS
            for value in c.slot("authorSpecialty") or []:
                code, scheme = _coded(value)
                if not (code and scheme):
                    ctx.report(obj, f"{where} authorSpecialty", f"'{value}' is not coded (code^display^codeSystem "
                                                               f"from {specialties})", AUTHOR_SPECIALTY)
                elif not (specialties.contains(code, scheme) or (scheme == TRE_A00 and not professional)):
                    ctx.report(obj, f"{where} authorSpecialty", f"'{code}' from '{scheme}' is not in {specialties}"
                               + ("" if professional else f" nor in TRE_A00 ({TRE_A00})"), AUTHOR_SPECIALTY)
            for value in c.slot("authorRole") or []:
                code, scheme = _coded(value)
                if not (code and scheme):
                    ctx.report(obj, f"{where} authorRole", f"'{value}' is not coded (code^display^codeSystem from "
                                                          f"{roles})", AUTHOR_ROLE)
                elif not roles.contains(code, scheme):
                    ctx.report(obj, f"{where} authorRole", f"'{code}' from '{scheme}' is not in {roles}", AUTHOR_ROLE)


# --- coded attributes (B-7, B-14, B-15, B-27) ------------------------------------------------

def is_signature(de: DocumentEntry) -> bool:
    """The DMP's signature document (B-32) is the entry classed as a digital signature."""
    return any((c.code, c.scheme) == SIGNATURE_CLASS for c in de.codes(C.DE_CLASS_CODE))


def value_set_rule(ctx: Context) -> None:
    types, formats, contents, references = (valuesets.get(n) for n in ("JDV_J07", "JDV_J60", "JDV_J59", "JDV_J231"))
    for de in ctx.sub.document_entries:
        signature = is_signature(de)
        for code in de.codes(C.DE_TYPE_CODE):
            accepted = types.contains(code.code, code.scheme) or (signature and (code.code, code.scheme)
                                                                      == SIGNATURE_TYPE)
            if not accepted:
                ctx.report(de, "typeCode", f"'{code.code}' from '{code.scheme}' is not in {types}", TYPE_CODE)
        for code in de.codes(C.DE_FORMAT_CODE):
            if not formats.contains(code.code, code.scheme):
                ctx.report(de, "formatCode", f"'{code.code}' from '{code.scheme}' is not in {formats}", FORMAT_CODE)
        for value in de.slot(C.REFERENCE_ID_LIST_SLOT) or []:
            kind = hl7.parse_cx(value).type_code
            if kind and not references.contains(kind):
                ctx.report(de, "referenceIdList", f"'{value}': CX.5 '{kind}' is not in {references} "
                                                  f"({', '.join(sorted(c for _, c in references.concepts))})",
                           REFERENCE_ID_TYPE)
    for ss in ctx.sub.submission_sets:
        for code in ss.codes(C.SS_CONTENT_TYPE_CODE):
            if not contents.contains(code.code, code.scheme):
                ctx.report(ss, "contentTypeCode", f"'{code.code}' from '{code.scheme}' is not in {contents}",
                           CONTENT_TYPE_CODE)


# --- the signature document (B-32) ------------------------------------------------------------

def signature_rule(ctx: Context) -> None:
    """A whole submission (ITI-41, ITI-42) carries the signature document, which signs the SubmissionSet.
    An ITI-57 changes one entry's metadata and carries no signature: nothing is asked of it here.

    One problem, one code: a signature document whose signs association aims elsewhere is a
    DMPSignatureTarget (not also a DMPSignatureMissing); DMPSignatureMissing is a submission with no
    signature document, or with one that has no signs association at all."""
    if ctx.mode == Mode.UPDATE:
        return
    signatures = [de for de in ctx.sub.document_entries if is_signature(de)]
    signature_ids = {de.id for de in signatures}
    signs = [a for a in ctx.sub.associations if a.type == C.ASSOC_SIGNS and a.source in signature_ids]
    for a in signs:
        if not ctx.is_submission_set(a.target):
            ctx.report(a, "targetObject", f"signature DocumentEntry '{a.source}' signs '{a.target}'; the DMP "
                                          "signature signs the SubmissionSet", SIGNATURE_TARGET)
    if not signs:
        for ss in ctx.sub.submission_sets:
            found = (f"signature DocumentEntry {', '.join(repr(i) for i in sorted(signature_ids))} has no "
                     f"{C.ASSOC_SIGNS} association" if signatures else "there is no signature DocumentEntry")
            ctx.report(ss, "signature", f"{found}; the DMP requires a signature DocumentEntry (classCode "
                                        f"{SIGNATURE_CLASS[0]}, {SIGNATURE_CLASS[1]}) linked to the SubmissionSet by "
                                        f"a {C.ASSOC_SIGNS} association", SIGNATURE_MISSING)
    for de in signatures:
        _signature_metadata(ctx, de)


def _signature_metadata(ctx: Context, de: DocumentEntry) -> None:
    def pairs(scheme: str) -> list[tuple[str, str]]:
        return [(c.code, c.scheme) for c in de.codes(scheme)]

    def show(codes) -> str:
        return ", ".join(f"{c}/{s}" for c, s in codes) or "none"

    for attribute, scheme, expected in (("typeCode", C.DE_TYPE_CODE, SIGNATURE_TYPE),
                                        ("formatCode", C.DE_FORMAT_CODE, SIGNATURE_FORMAT)):
        found = pairs(scheme)
        if found != [expected]:
            ctx.report(de, attribute, f"is {show(found)}; a signature document has {show([expected])}",
                       SIGNATURE_METADATA)
    events = pairs(C.DE_EVENT_CODE)
    if SIGNATURE_EVENT not in events:
        ctx.report(de, "eventCodeList", f"is {show(events)}; a signature document has {show([SIGNATURE_EVENT])} "
                                        "(Source)", SIGNATURE_METADATA)
    confidentiality = pairs(C.DE_CONFIDENTIALITY_CODE)
    levels = [c for c in confidentiality if c[1] == HL7_CONFIDENTIALITY]
    missing = [c for c in SIGNATURE_CONFIDENTIALITY if c not in confidentiality]
    if missing or levels != [SIGNATURE_CONFIDENTIALITY[0]]:
        ctx.report(de, "confidentialityCode", f"is {show(confidentiality)}; a signature document is "
                                              f"{show(SIGNATURE_CONFIDENTIALITY)}", SIGNATURE_METADATA)


RULES = (legacy_ins_rule, submission_set_author_rule, document_entry_rule, author_national_id_rule,
         author_code_rule, value_set_rule, signature_rule)
