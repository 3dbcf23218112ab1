"""Rules of the French DMP / CI-SIS profile (shared/testkits/dmp/PROFILE.md, Table B).

Only rules that the metadata alone decides are here; the DMP's access rights, the VIHF
cross-checks and the CDA coherence checks need more than a submission.
"""
from __future__ import annotations

from .. import constants as C
from .. import errors as E
from .. import hl7
from ..model import DocumentEntry, Folder, SubmissionSet
from .context import Context

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


RULES = (legacy_ins_rule, submission_set_author_rule, document_entry_rule)
