"""The metadata rules of the French DMP profile that have error codes of their own (PROFILE.md B-7, B-9,
B-10, B-12, B-14, B-15, B-27, B-32) and the value sets behind them (xds/validation/valuesets).

Each rule: a conformant submission (tests/dmp_messages.py) passes, and each variant that breaks it gets that
code and no other, in a codeContext that names the object and the attribute. The official TD2.1 feeding
message passes the metadata rules when the shared test kit is on this machine.
"""
from __future__ import annotations

import configparser
import json
import os

import pytest
from lxml import etree

from xds import builder
from xds import constants as C
from xds.ebrim import parse_submission
from xds.validation import Mode, dmp, validate_submission, valuesets
from tests import dmp_messages as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = os.path.join(ROOT, "..", "shared", "testkits", "dmp")
PACK = os.path.join(KIT, "k-jefferson", "Dehempe", "docs", "package_dmp",
                    "DMP_LPS_Exemple_de_messages_1.0.1_1_-_v02.05.00")
TD21 = os.path.join(PACK, "TD2.1_-_Alimentation_requete.xml")
SVS = os.path.join(KIT, "ansforge", "TestContenuCDA-3-0", "jeuxDeValeurs")

RIM = f"{{{C.NS_RIM}}}"
DOC, SIG, SS = "Document01", "Signature01", M.SS
PATIENT = M.patient_id(M.ins(41), date=M.INS_DATE)
LOINC = M.LOINC


# --- helpers ------------------------------------------------------------------------------------------

def errors_of(request: etree._Element, mode: Mode = Mode.PROVIDE) -> list:
    return validate_submission(parse_submission(request), mode, "dmp").items


def clean(request: etree._Element, mode: Mode = Mode.PROVIDE) -> None:
    assert [(e.code, e.location, e.message) for e in errors_of(request, mode)] == []


def only(request: etree._Element, code: str, location: str, attribute: str, mode: Mode = Mode.PROVIDE):
    """The submission has exactly one problem: ``code`` at ``location``, whose codeContext names the object
    (its kind and id) and the attribute."""
    found = errors_of(request, mode)
    assert [(e.code, e.location) for e in found] == [(code, location)], [(e.code, e.message) for e in found]
    message = found[0].message
    assert f"'{location}'" in message and f" {attribute}" in message, message
    assert message.split(" ")[0] in ("DocumentEntry", "SubmissionSet", "Association"), message
    return message


def submission(*docs: M.Document, **kw) -> etree._Element:
    return M.submission(PATIENT, *docs, **kw).request


def doc(**kw) -> M.Document:
    return M.Document(patient=PATIENT, **kw)


def obj(request: etree._Element, ident: str) -> etree._Element:
    found = [el for el in request.iter(RIM + "ExtrinsicObject", RIM + "RegistryPackage", RIM + "Association")
             if el.get("id") == ident]
    assert len(found) == 1, ident
    return found[0]


def classifications(request: etree._Element, ident: str, scheme: str) -> list[etree._Element]:
    return [c for c in obj(request, ident).iter(RIM + "Classification") if c.get("classificationScheme") == scheme]


def recode(request: etree._Element, ident: str, scheme: str, code: M.Code) -> etree._Element:
    """Give the one classification of ``scheme`` of ``ident`` another code."""
    (c,) = classifications(request, ident, scheme)
    c.set("nodeRepresentation", code[0])
    c.find(f"{RIM}Slot[@name='codingScheme']/{RIM}ValueList/{RIM}Value").text = code[1]
    return request


def drop(request: etree._Element, ident: str, scheme: str) -> etree._Element:
    for c in classifications(request, ident, scheme):
        c.getparent().remove(c)
    return request


def set_slot(parent: etree._Element, name: str, values: list[str]) -> None:
    for s in parent.findall(RIM + "Slot"):
        if s.get("name") == name:
            parent.remove(s)
    slot = etree.Element(RIM + "Slot", name=name)
    value_list = etree.SubElement(slot, RIM + "ValueList")
    for v in values:
        etree.SubElement(value_list, RIM + "Value").text = v
    parent.insert(0, slot)


def author_of(request: etree._Element, ident: str) -> etree._Element:
    scheme = C.SS_AUTHOR if ident == SS else C.DE_AUTHOR
    (c,) = classifications(request, ident, scheme)
    return c


def registered(request: etree._Element) -> etree._Element:
    """The ITI-42 the repository forwards: hash, size and repositoryUniqueId filled in."""
    sor = request if request.tag == C.q(C.NS_LCM, "SubmitObjectsRequest") else \
        request.find(C.q(C.NS_LCM, "SubmitObjectsRequest"))
    for eo in sor.iter(RIM + "ExtrinsicObject"):
        set_slot(eo, "repositoryUniqueId", [M.DMP_REPOSITORY])
        set_slot(eo, "size", ["10"])
        set_slot(eo, "hash", ["da39a3ee5e6b4b0d3255bfef95601890afd80709"])
    return sor


# --- a conformant submission ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [Mode.PROVIDE, Mode.REGISTER])
def test_a_conformant_submission_passes_every_rule(mode):
    request = submission(doc(), doc(type_code=M.TYPE_SUMMARY))
    clean(registered(request) if mode == Mode.REGISTER else request, mode)


def test_the_rules_are_the_dmp_profile_s():
    names = {rule.__name__ for rule in dmp.RULES}
    assert {"author_national_id_rule", "author_code_rule", "value_set_rule", "signature_rule"} <= names


def test_an_iti57_update_needs_no_signature_document():
    """TD3.3a: a new version of one entry and its SubmissionSet, no signature (B-32 is about whole
    submissions); the other rules still hold."""
    d = doc()
    update = M.metadata_update(d, "urn:uuid:5b8d8a0c-2f3e-4d7a-9b1c-6e2f0a4d8c11", "1", M.DMP_REPOSITORY)
    clean(update, Mode.UPDATE)
    status = M.status_update(PATIENT, "urn:uuid:5b8d8a0c-2f3e-4d7a-9b1c-6e2f0a4d8c11", C.STATUS_APPROVED,
                             C.STATUS_ARCHIVED)
    clean(status, Mode.UPDATE)
    # The same metadata as a whole submission lacks its signature.
    only(registered(update), dmp.SIGNATURE_MISSING, SS, "signature", Mode.REGISTER)
    bad = M.metadata_update(doc(format_code=("PDF-LOCAL", "1.2.250.1.999.4", "PDF")),
                            "urn:uuid:5b8d8a0c-2f3e-4d7a-9b1c-6e2f0a4d8c11", "1", M.DMP_REPOSITORY)
    only(bad, dmp.FORMAT_CODE, DOC, "formatCode", Mode.UPDATE)


# --- DMPAuthorNationalId (B-9, B-10) ------------------------------------------------------------------

ACCEPTED_AUTHORS = {
    "RPPS": M.xcn("899900063480"),
    "ADELI": M.xcn("0123456789"),
    "FINESS + internal id": M.xcn("3750100125/88"),
    "SIRET + internal id": M.xcn("512345678901234/DR-7"),
    "system of a structure": M.xcn("3750100125/IRM-2", "IRM", "SALLE 2", id_type="U", type_code="RI"),
    "digital service (SNR)": M.xcn("1.2.250.1.999.77.1", "SERVICE", "", authority="1.2.250.1.999.77", id_type="U",
                                   type_code="RI"),
    "the patient": M.xcn(M.ins(41), "PATIENT", "PAUL", authority=M.INS_NIR_TEST, type_code="NH"),
}

REFUSED_AUTHORS = {
    "a local id, no XCN.13": (M.xcn("LOC4711", authority="1.2.250.1.999.1.1.7898.3", type_code=None), "XCN.13"),
    "RPPS one digit short": (M.xcn("89990006348"), "XCN.1"),
    "letters in an RPPS": (M.xcn("8999000634AB"), "XCN.1"),
    "an internal id without its structure": (M.xcn("3/88"), "XCN.1"),
    "another authority": (M.xcn(authority="1.2.250.1.999.1.1.7898.3"), "XCN.9"),
    "no authority": (M.xcn(authority=None), "XCN.9"),
    "XCN.10 L": (M.xcn(id_type="L"), "XCN.10"),
    "the retired EI type": (M.xcn(type_code="EI"), "XCN.13"),
    "a system typed D": (M.xcn("3750100125/IRM-2", id_type="D", type_code="RI"), "XCN.10"),
    "a system under no structure": (M.xcn("IRM-2", id_type="U", type_code="RI"), "XCN.1"),
    "a patient under the PS authority": (M.xcn(M.ins(41), type_code="NH"), "XCN.9"),
    "a patient with a short INS": (M.xcn("12345", authority=M.INS_NIR_TEST, type_code="NH"), "XCN.1"),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED_AUTHORS))
def test_author_national_id_forms_accepted(name):
    author = ACCEPTED_AUTHORS[name]
    clean(submission(doc(author=author), ss_author=author))
    assert dmp.check_author_person(author) == []


@pytest.mark.parametrize("name", sorted(REFUSED_AUTHORS))
@pytest.mark.parametrize("where", [DOC, SS])
def test_author_national_id_refused(name, where):
    author, component = REFUSED_AUTHORS[name]
    request = submission(doc(author=author)) if where == DOC else submission(ss_author=author)
    if where == DOC:
        # The signature document is written by the document's author: put the good one back there.
        author_of(request, SIG).find(f"{RIM}Slot[@name='authorPerson']/{RIM}ValueList/{RIM}Value").text = M.xcn()
    message = only(request, dmp.AUTHOR_NATIONAL_ID, where, "authorPerson")
    assert component in message and author in message, message


def test_every_author_of_every_object_is_checked():
    request = submission()
    bad = M.xcn("89990006348")
    for ident in (DOC, SIG, SS):
        author_of(request, ident).find(f"{RIM}Slot[@name='authorPerson']/{RIM}ValueList/{RIM}Value").text = bad
    found = errors_of(request)
    assert sorted((e.code, e.location) for e in found) == sorted((dmp.AUTHOR_NATIONAL_ID, i) for i in (DOC, SIG, SS))


# --- DMPTypeCode (B-14, JDV_J07) -----------------------------------------------------------------------

@pytest.mark.parametrize("code", [M.TYPE_CONSULTATION, M.TYPE_SUMMARY, ("27899-4", LOINC, "CR d'acte (TD2.1)"),
                                  ("CERT_DECL", "1.2.250.1.213.1.1.4.12", "Certificat, déclaration")])
def test_type_codes_of_j07_accepted(code):
    clean(submission(doc(type_code=code)))


@pytest.mark.parametrize("code", [("CR-LOCAL", "1.2.250.1.999.1.1.7898.5", "local"), ("55107-7", LOINC, "Addendum"),
                                  ("11488-4", "1.2.250.1.213.1.1.4.12", "a LOINC code under TRE_A05")])
def test_type_codes_outside_j07_refused(code):
    message = only(submission(doc(type_code=code)), dmp.TYPE_CODE, DOC, "typeCode")
    assert f"'{code[0]}' from '{code[1]}' is not in JDV_J07" in message
    assert message.startswith(f"DocumentEntry '{DOC}'")


def test_the_signature_document_is_typed_e1762():
    request = submission()
    assert [(c.get("nodeRepresentation")) for c in classifications(request, SIG, C.DE_TYPE_CODE)] == ["E1762"]
    clean(request)


# --- DMPFormatCode (B-15, JDV_J60) ---------------------------------------------------------------------

@pytest.mark.parametrize("code", [
    M.FORMAT_PDF, ("urn:ihe:iti:xds-sd:text:2008", "1.3.6.1.4.1.19376.1.2.3", "texte"),
    ("urn:ihe:lab:xd-lab:2008", "1.3.6.1.4.1.19376.1.2.3", "biologie"),
    ("urn:asip:ci-sis:vac:2019", "1.2.250.1.213.1.1.4.2.282", "vaccinations"),
    ("urn:ans:ci-sis:trod:2024", "1.2.250.1.213.1.1.4.2.282", "TROD"),
    ("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1", "KOS"),
])
def test_format_codes_of_j60_accepted(code):
    clean(submission(doc(format_code=code)))


@pytest.mark.parametrize("code", [
    ("PDF-LOCAL", "1.2.250.1.999.1.1.7898.4", "local"),
    ("urn:ihe:pcc:xphr:2007", "1.3.6.1.4.1.19376.1.2.3", "an IHE format the DMP does not list"),
    ("urn:ihe:iti:xds-sd:pdf:2008", "1.2.250.1.213.1.1.4.2.282", "the right code under the wrong system"),
    ("urn:asip:ci-sis:unknown:2099", "1.2.250.1.213.1.1.4.2.282", "no such CI-SIS model"),
])
def test_format_codes_outside_j60_refused(code):
    message = only(submission(doc(format_code=code)), dmp.FORMAT_CODE, DOC, "formatCode")
    assert f"'{code[0]}' from '{code[1]}' is not in JDV_J60" in message


# --- DMPContentTypeCode (B-7, JDV_J59) ------------------------------------------------------------------

@pytest.mark.parametrize("code", [M.CONTENT_DAY_HOSPITAL, ("07", "1.2.250.1.213.2.2", "Consultations soins externes"),
                                  ("SA07", "1.2.250.1.71.4.2.4", "Cabinet individuel"),
                                  ("05", "1.2.250.1.213.1.6.1.128", "HAD"),
                                  ("EXP_PATIENT", "1.2.250.1.213.1.1.4.6", "Expression personnelle du patient")])
def test_content_type_codes_of_j59_accepted(code):
    clean(submission(content_type=code))


@pytest.mark.parametrize("code", [("HOSPIT", "1.2.250.1.999.1.1.7898.6", "local"),
                                  ("04", "1.2.250.1.213.1.1.4.12", "the right code under TRE_A05"),
                                  ("SA01", "1.2.250.1.71.4.2.4", "a SecteurActivite J59 leaves out"),
                                  ("99", "1.2.250.1.213.2.2", "no such TypeActivite")])
def test_content_type_codes_outside_j59_refused(code):
    message = only(submission(content_type=code), dmp.CONTENT_TYPE_CODE, SS, "contentTypeCode")
    assert message.startswith(f"SubmissionSet '{SS}'") and "JDV_J59" in message


# --- DMPAuthorSpecialty and DMPAuthorRole (B-12, JDV_J01, JDV_J47) -------------------------------------------

def with_author_slot(name: str, values: list[str], where: str = DOC, person: str | None = None) -> etree._Element:
    request = submission(doc(author=person) if person else doc(), ss_author=person)
    author = author_of(request, where)
    set_slot(author, name, values)
    return request


@pytest.mark.parametrize("value", [M.SPECIALTY, "G15_10/SM04^Cardiologie^1.2.250.1.213.1.1.4.5",
                                   "G15_10/SM26^^^&1.2.250.1.213.1.1.4.5&ISO",
                                   "SECRETARIAT_MEDICAL^x^1.2.250.1.213.1.1.4.6"])
def test_specialties_of_j01_accepted(value):
    clean(with_author_slot("authorSpecialty", [value]))


@pytest.mark.parametrize("value,problem", [("G15_10/XX99^inconnue^1.2.250.1.213.1.1.4.5", "is not in JDV_J01"),
                                           ("Medecine generale", "is not coded"),
                                           ("G15_10/SM26^Medecine generale", "is not coded"),
                                           ("NEW_CODE^x^1.2.250.1.213.1.1.4.6", "is not in JDV_J01")])
@pytest.mark.parametrize("where", [DOC, SS])
def test_specialties_outside_j01_refused(value, problem, where):
    message = only(with_author_slot("authorSpecialty", [value], where), dmp.AUTHOR_SPECIALTY, where, "authorSpecialty")
    assert problem in message


def test_a_non_professional_author_may_use_any_tre_a00_code():
    system = ACCEPTED_AUTHORS["system of a structure"]
    clean(with_author_slot("authorSpecialty", ["NEW_CODE^x^1.2.250.1.213.1.1.4.6"], person=system))
    # Not a code of another system, though.
    only(with_author_slot("authorSpecialty", ["NEW_CODE^x^1.2.250.1.213.1.1.4.5"], person=system),
         dmp.AUTHOR_SPECIALTY, DOC, "authorSpecialty")


@pytest.mark.parametrize("value", ["ATTPHYS^Médecin responsable^2.16.840.1.113883.5.88",
                                   "PCP^^^&2.16.840.1.113883.5.88&ISO",
                                   "CORRE^Correspondant^1.2.250.1.213.1.1.4.2.280"])
def test_roles_of_j47_accepted(value):
    clean(with_author_slot("authorRole", [value]))


@pytest.mark.parametrize("value,problem", [("Medecin", "is not coded"),
                                           ("XYZ^x^2.16.840.1.113883.5.88", "is not in JDV_J47"),
                                           ("ATTPHYS^x^1.2.250.1.213.1.1.4.2.280", "is not in JDV_J47")])
@pytest.mark.parametrize("where", [DOC, SS])
def test_roles_outside_j47_refused(value, problem, where):
    message = only(with_author_slot("authorRole", [value], where), dmp.AUTHOR_ROLE, where, "authorRole")
    assert problem in message


# --- DMPReferenceIdType (B-27, JDV_J231) -------------------------------------------------------------------

def with_reference_ids(*values: str) -> etree._Element:
    request = submission()
    set_slot(obj(request, DOC), C.REFERENCE_ID_LIST_SLOT, list(values))
    return request


def test_reference_id_types_of_j231_accepted():
    clean(with_reference_ids("ACC1^^^&1.2.250.1.999.8&ISO^urn:ihe:iti:xds:2013:accession",
                             "ORD1^^^&1.2.250.1.999.8&ISO^urn:ihe:iti:xds:2013:order",
                             "1.2.3.4.5^^^&1.2.250.1.999.8&ISO^urn:ihe:iti:xds:2016:studyInstanceUID"))


@pytest.mark.parametrize("kind", ["urn:ihe:iti:xds:2013:uniqueId", "urn:ihe:iti:xds:2013:referral",
                                  "urn:ihe:iti:xds:2015:encounterId", "accession"])
def test_reference_id_types_outside_j231_refused(kind):
    message = only(with_reference_ids(f"R1^^^&1.2.250.1.999.8&ISO^{kind}"), dmp.REFERENCE_ID_TYPE, DOC,
                   "referenceIdList")
    assert f"CX.5 '{kind}' is not in JDV_J231" in message


# --- the signature document (B-32) --------------------------------------------------------------------

@pytest.mark.parametrize("mode", [Mode.PROVIDE, Mode.REGISTER])
@pytest.mark.parametrize("variant", ["none", "unlinked"])
def test_a_submission_without_its_signature_is_refused(variant, mode):
    request = submission(signature=variant)
    message = only(registered(request) if mode == Mode.REGISTER else request, dmp.SIGNATURE_MISSING, SS,
                   "signature", mode)
    assert ("no signature DocumentEntry" if variant == "none" else f"'{SIG}' has no") in message


def test_a_signature_that_signs_something_else_is_refused():
    # A registered entry: the IHE rules allow a signs association to it, the DMP does not.
    request = submission()
    obj(request, "signs").set("targetObject", "urn:uuid:0b6f7c1e-3d2a-4c5b-8e9f-1a2b3c4d5e6f")
    message = only(request, dmp.SIGNATURE_TARGET, "signs", "targetObject")
    assert f"'{SIG}'" in message
    # The document of the same submission: the DMP code (next to IHE's own on signs in a submission).
    found = errors_of(submission(signature="document"))
    assert [(e.code, e.location) for e in found if e.code.startswith("DMP")] == [(dmp.SIGNATURE_TARGET, "signs")]


def test_a_signs_association_from_an_ordinary_document_is_not_the_signature():
    request = submission(signature="unlinked")
    objects = request.find(C.q(C.NS_LCM, "SubmitObjectsRequest")).find(RIM + "RegistryObjectList")
    objects.append(builder.association(DOC, SS, C.ASSOC_SIGNS, id="signs"))
    only(request, dmp.SIGNATURE_MISSING, SS, "signature")


SIGNATURE_BREAKS = {
    "another typeCode": ("typeCode", lambda r: recode(r, SIG, C.DE_TYPE_CODE, M.TYPE_CONSULTATION)),
    "another formatCode": ("formatCode", lambda r: recode(r, SIG, C.DE_FORMAT_CODE, M.FORMAT_PDF)),
    "no eventCode": ("eventCodeList", lambda r: drop(r, SIG, C.DE_EVENT_CODE)),
    "another eventCode": ("eventCodeList",
                          lambda r: recode(r, SIG, C.DE_EVENT_CODE, ("DEKA001", "1.2.250.1.213.2.5", "ECG"))),
}


@pytest.mark.parametrize("case", sorted(SIGNATURE_BREAKS))
def test_signature_metadata_codes(case):
    attribute, breaking = SIGNATURE_BREAKS[case]
    message = only(breaking(submission()), dmp.SIGNATURE_METADATA, SIG, attribute)
    assert "a signature document has" in message


@pytest.mark.parametrize("codes", [
    [M.NORMAL],
    [M.NORMAL, M.MASQUE_PS],
    [M.NORMAL, M.INVISIBLE_PATIENT],
    [M.RESTRICTED, M.MASQUE_PS, M.INVISIBLE_PATIENT],
])
def test_signature_confidentiality(codes):
    only(submission(signature_confidentiality=codes), dmp.SIGNATURE_METADATA, SIG, "confidentialityCode")


def test_signature_confidentiality_may_add_the_legal_representatives_code():
    extra = ("INVISIBLE_REPRESENTANTS_LEGAUX", M.TRE_A07, "Non visible par les représentants légaux")
    clean(submission(signature_confidentiality=[*M.SIGNATURE_CONFIDENTIALITY, extra]))


# --- the official TD2.1 feeding message ------------------------------------------------------------------

def td21_request() -> etree._Element:
    raw = open(TD21, "rb").read()
    end = b"</soap:Envelope>"
    envelope = etree.fromstring(raw[raw.find(b"<soap:Envelope"):raw.find(end) + len(end)])
    return next(envelope.iter(C.q(C.NS_XDSB, "ProvideAndRegisterDocumentSetRequest")))


@pytest.mark.skipif(not os.path.exists(TD21), reason="the shared DMP test kit is not on this machine")
def test_the_official_td21_metadata_passes_every_rule():
    request = td21_request()
    clean(request, Mode.PROVIDE)
    clean(registered(request), Mode.REGISTER)
    sub = parse_submission(request)
    signature = next(de for de in sub.document_entries if dmp.is_signature(de))
    assert signature.id == SIG and [(a.source, a.target) for a in sub.associations
                                    if a.type == C.ASSOC_SIGNS] == [(SIG, "SubmissionSet01")]


# --- the value sets --------------------------------------------------------------------------------------

USED = {"JDV_J01": "1.2.250.1.213.1.1.5.461", "JDV_J07": "1.2.250.1.213.1.1.5.471",
        "JDV_J231": "1.2.250.1.213.1.1.5.693", "JDV_J47": "1.2.250.1.213.1.1.5.124",
        "JDV_J59": "1.2.250.1.213.1.1.5.2", "JDV_J60": "1.2.250.1.213.1.1.5.8"}


def test_every_value_set_loads_once_with_its_oid():
    assert set(USED) <= set(valuesets.names())
    for name, oid in USED.items():
        vs = valuesets.get(name)
        assert (vs.name, vs.oid, vs.official) == (name, oid, True)
        assert vs.concepts and valuesets.get(name) is vs
    with pytest.raises(KeyError):
        valuesets.get("JDV_J999")


def test_contains_by_system_and_code_and_by_prefix():
    vs = valuesets.parse({"name": "T", "concepts": [["1.2.3", "A"]], "systems": [["9.9", "urn:x:"]],
                          "extra": {"source": "s", "concepts": [["1.2.3", "B"]]}})
    assert vs.contains("A", "1.2.3") and vs.contains("B", "1.2.3") and vs.contains("urn:x:y", "9.9")
    assert not vs.contains("A", "1.2.4") and not vs.contains("urn:y", "9.9") and not vs.contains("", "1.2.3")
    assert vs.contains("A") and vs.contains("urn:x:z") and not vs.contains("C")
    assert vs.codes("1.2.3") == ["A", "B"]
    with pytest.raises(ValueError):
        valuesets.parse({"name": "T", "concepts": [["only one"]]})


def test_the_value_sets_ship_as_package_data():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg["options.package_data"]["xds.validation"].strip() == "valuesets/*.json"
    folder = os.path.join(ROOT, "xds", "validation", "valuesets")
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            data = json.load(f)
        assert data["name"] + ".json" == name and data["source"]


SVS_FILES = {"JDV_J01": "JDV_J01_XdsAuthorSpecialty_CISIS.xml", "JDV_J07": "JDV_J07_XdsTypeCode_CISIS.xml",
             "JDV_J231": "JDV_J231_XdsTypesIdentifiantsReferenceId_DMP.xml",
             "JDV_J47": "JDV_J47_FunctionCode_CISIS.xml"}


@pytest.mark.skipif(not os.path.isdir(SVS), reason="the shared DMP test kit is not on this machine")
@pytest.mark.parametrize("name", sorted(SVS_FILES))
def test_official_value_sets_are_the_svs_exports(name):
    tree = etree.parse(os.path.join(SVS, SVS_FILES[name]))
    ns = {"svs": "urn:ihe:iti:svs:2008"}
    exported = {(c.get("codeSystem"), c.get("code")) for c in tree.iterfind(".//svs:Concept", ns)}
    vs = valuesets.get(name)
    assert vs.concepts == exported
    assert vs.oid == tree.find(".//svs:ValueSet", ns).get("id")
