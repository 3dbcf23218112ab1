import pytest

from xds.hl7 import (
    CX, check_cx, check_cxi, check_dtm, check_language_code, check_oid, check_xcn, check_xon, check_xtn,
    dtm_padded, is_oid, is_uuid_urn, normalize_dtm, parse_cx,
)

OID = "1.3.6.1.4.1.21367.2005.3.7"


def has(problems, *fragments):
    """True when some single problem mentions every fragment."""
    return any(all(f in p for f in fragments) for p in problems)


# --- OID / UUID ---------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1.2", "2.16.840.1.113883", "0.0", "1.3.6.1.4.1.21367.2005.3.7", "1." + "1" * 62])
def test_oid_valid(value):
    assert is_oid(value)
    assert check_oid(value) == []


@pytest.mark.parametrize("value", [
    "", "1", "1.", ".1", "1..2", "01.2", "1.02", "1.2a", "a.b", " 1.2", "1.2\n", "1.2.3-4",
    "1." + "1" * 63,  # 65 characters
    None, 12,
])
def test_oid_invalid(value):
    assert not is_oid(value)
    assert check_oid(value)


def test_oid_problem_says_why():
    assert has(check_oid("1." + "1" * 63, "uniqueId"), "uniqueId", "at most 64")
    assert has(check_oid("1.02"), "'1.02'", "not an OID")


@pytest.mark.parametrize("value,ok", [
    ("urn:uuid:a4ba6f40-ab4b-4ea8-b8e7-a0ca3d00a0b1", True),
    ("urn:uuid:A4BA6F40-AB4B-4EA8-B8E7-A0CA3D00A0B1", False),  # upper case is not canonical
    ("a4ba6f40-ab4b-4ea8-b8e7-a0ca3d00a0b1", False),
    ("urn:uuid:a4ba6f40ab4b4ea8b8e7a0ca3d00a0b1", False),
    ("urn:uuid:a4ba6f40-ab4b-4ea8-b8e7-a0ca3d00a0b", False),
    ("urn:uuid:a4ba6f40-ab4b-4ea8-b8e7-a0ca3d00a0b1 ", False),
    ("Document01", False),
    (None, False),
])
def test_uuid_urn(value, ok):
    assert is_uuid_urn(value) is ok


# --- CX -----------------------------------------------------------------------------------

def test_parse_and_format_cx():
    cx = parse_cx(f"pat1^^^&{OID}&ISO")
    assert (cx.id, cx.aa_namespace, cx.aa_universal_id, cx.aa_universal_id_type) == ("pat1", "", OID, "ISO")
    assert cx.format() == f"pat1^^^&{OID}&ISO"
    assert CX.iso("pat1", OID).format() == f"pat1^^^&{OID}&ISO"


def test_parse_cx_keeps_everything_for_round_trip():
    text = "id^1^M10^NS&1.2&ISO^PI^FAC"
    cx = parse_cx(text)
    assert (cx.check_digit, cx.check_digit_scheme, cx.aa_namespace, cx.type_code, cx.other) == (
        "1", "M10", "NS", "PI", ["FAC"])
    assert cx.format() == text
    assert parse_cx("justid").format() == "justid"


def test_parse_cx_reads_double_escaped_ampersand():
    cx = parse_cx(f"pat1^^^&amp;{OID}&amp;ISO")
    assert (cx.aa_universal_id, cx.aa_universal_id_type) == (OID, "ISO")
    assert check_cx(f"pat1^^^&amp;{OID}&amp;ISO") == []


def test_check_cx_valid():
    assert check_cx(f"pat1^^^&{OID}&ISO") == []
    assert check_cx("pat1", require_aa=False) == []


@pytest.mark.parametrize("value,fragments", [
    ("", ("empty",)),
    (f"^^^&{OID}&ISO", ("CX.1", "empty")),
    (f"pat1^3^^&{OID}&ISO", ("CX.2", "'3'")),
    (f"pat1^^M10^&{OID}&ISO", ("CX.3", "'M10'")),
    ("pat1", ("CX.4", "missing")),
    ("pat1^^^", ("CX.4", "missing")),
    (f"pat1^^^NS&{OID}&ISO", ("CX.4", "namespace", "'NS'")),
    ("pat1^^^&&ISO", ("CX.4", "universal id", "empty")),
    ("pat1^^^&1.02&ISO", ("CX.4", "'1.02'", "not a valid OID")),
    (f"pat1^^^&{OID}&X", ("CX.4 universal id type is 'X', expected 'ISO'",)),
    (f"pat1^^^&{OID}", ("CX.4 universal id type is '', expected 'ISO'",)),
    (f"pat1^^^&{OID}&ISO&x", ("CX.4", "subcomponents")),
    (f"pat1^^^&{OID}&ISO^PI", ("CX.5", "'PI'")),
    (f"pat1^^^&{OID}&ISO^^FAC", ("CX.6", "'FAC'")),
    (f" pat1^^^&{OID}&ISO", ("whitespace",)),
    (f"pat1^^^&{OID}&ISO~pat2^^^&{OID}&ISO", ("repetition",)),
    (f"pa&t1^^^&{OID}&ISO", ("CX.1", "subcomponent")),
])
def test_check_cx_invalid(value, fragments):
    assert has(check_cx(value), *fragments), check_cx(value)


def test_check_cx_reports_every_problem():
    problems = check_cx("pat1^x^y^NS&bad&IS")
    assert [p.split()[0] for p in problems] == ["CX.2", "CX.3", "CX.4", "CX.4", "CX.4"]


def test_check_cx_source_patient_id_allows_type_code():
    value = f"pat1^^^&{OID}&ISO^PI"
    assert check_cx(value, strict=False) == []
    assert check_cx(value, strict=True)
    assert has(check_cx(f"pat1^^^&{OID}&ISO^PI^FAC", strict=False), "CX.6")


def test_check_cx_without_required_aa_still_checks_a_given_one():
    assert has(check_cx("pat1^^^&1.2&L", require_aa=False), "expected 'ISO'")


# --- CXi ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    f"ref1^^^&{OID}&ISO^urn:ihe:iti:xds:2013:uniqueId",
    "ACC-7^^^LOCAL^urn:ihe:iti:xds:2013:accession",
    "ord^^^NS&1.2.3&ISO^urn:ihe:iti:xds:2013:order",
    "wf^^^&http://example.org/x&URI^urn:ihe:iti:xds:2013:workflowInstanceId^^^^urn:oid:1.2.3",
])
def test_check_cxi_valid(value):
    assert check_cxi(value) == []


@pytest.mark.parametrize("value,fragments", [
    ("", ("empty",)),
    ("^^^LOCAL^urn:ihe:iti:xds:2013:accession", ("CX.1",)),
    ("ref^1^^LOCAL^urn:ihe:iti:xds:2013:accession", ("CX.2",)),
    ("ref^^x^LOCAL^urn:ihe:iti:xds:2013:accession", ("CX.3",)),
    ("ref^^^^urn:ihe:iti:xds:2013:accession", ("CX.4", "required")),
    ("ref^^^LOCAL", ("CX.5", "required")),
    ("ref^^^&&ISO^urn:ihe:iti:xds:2013:order", ("CX.4", "universal id is empty")),
    ("ref^^^&1.2.3^urn:ihe:iti:xds:2013:order", ("CX.4", "no universal id type")),
    ("ref^^^&abc&ISO^urn:ihe:iti:xds:2013:order", ("CX.4", "'abc'", "OID")),
])
def test_check_cxi_invalid(value, fragments):
    assert has(check_cxi(value), *fragments), check_cxi(value)


# --- XCN ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "^Welby^Marcus^^^Dr^MD",
    "11375^Welby^Marcus^J^Jr. MD^Dr^^^&1.2.840.113619.6.197&ISO",
    "11375",
    "^Smith&van",
    "11375^^^^^^^^&amp;1.2.840.113619.6.197&amp;ISO",
])
def test_check_xcn_valid(value):
    assert check_xcn(value) == []


@pytest.mark.parametrize("value,fragments", [
    ("", ("empty",)),
    ("^^Marcus", ("XCN.1", "XCN.2", "required")),
    ("^Welby^^^^^^^&1.2.3&ISO", ("XCN.9", "XCN.1 id is empty")),
    ("11375^Welby^^^^^^^1.2.3", ("XCN.9", "namespace")),
    ("11375^Welby^^^^^^^&1.2.3&L", ("XCN.9 universal id type is 'L', expected 'ISO'",)),
    ("11375^Welby^^^^^^^&x.y&ISO", ("XCN.9", "'x.y'")),
])
def test_check_xcn_invalid(value, fragments):
    assert has(check_xcn(value), *fragments), check_xcn(value)


# --- XON --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "Some Hospital",
    "Some Hospital^^^^^^^^^1.2.3.4.5.6.7.8.9.1789.45",
    "Some Hospital^^^^^&1.2.3.4.5.6.7.8.9.1789&ISO^^^^45",
    "Some Hospital^^^^^^^^^local-id",
])
def test_check_xon_valid(value):
    assert check_xon(value) == []


@pytest.mark.parametrize("value,fragments", [
    ("", ("empty",)),
    ("^^^^^^^^^1.2.3", ("XON.1", "required")),
    ("Hosp^x", ("XON.2", "'x'")),
    ("Hosp^^^^5", ("XON.5",)),
    ("Hosp^^^^^^7", ("XON.7",)),
    ("Hosp^^^^^^^^9", ("XON.9",)),
    ("Hosp^^^^^NS^^^^1", ("XON.6", "namespace")),
    ("Hosp^^^^^&1.2&L^^^^1", ("XON.6 universal id type is 'L', expected 'ISO'",)),
    ("Hosp^^^^^^^^^10^11", ("at most 10",)),
])
def test_check_xon_invalid(value, fragments):
    assert has(check_xon(value), *fragments), check_xon(value)


# --- XTN ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "^^Internet^radiology@healthcare.example.org",
    "^NET^Internet^a@b.c",
    "^WPN^PH^^1^555^5551234^12",
    "^PRN^CP^^^^^^^^^+1 555 555 1234",
    "(555)555-1234^WPN^PH",
    "^^X.400^C=US;O=Hosp",
])
def test_check_xtn_valid(value):
    assert check_xtn(value) == []


@pytest.mark.parametrize("value,fragments", [
    ("", ("empty",)),
    ("^^^a@b.c", ("XTN.3", "required")),
    ("^^Email^a@b.c", ("XTN.3", "'Email'")),
    ("^^Internet", ("XTN.4", "required")),
    ("^^Internet^not an address", ("XTN.4", "e-mail")),
    ("^XXX^Internet^a@b.c", ("XTN.2", "'XXX'")),
    ("^WPN^PH", ("telephone number", "'PH'")),
    ("^WPN^PH^^1^55a^5551234", ("XTN.6", "numeric")),
])
def test_check_xtn_invalid(value, fragments):
    assert has(check_xtn(value), *fragments), check_xtn(value)


# --- DTM ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "2004", "200412", "20041225", "2004122512", "200412251259", "20041225125959",
    "20000229", "20240229", "19991231235959", "20040131", "20040430",
])
def test_check_dtm_valid(value):
    assert check_dtm(value) == []


@pytest.mark.parametrize("value,fragments", [
    ("", ("empty",)),
    ("20041", ("5 digits",)),
    ("200412251", ("9 digits",)),
    ("200412251259591", ("15 digits",)),
    ("2004-12-25", ("digits only",)),
    ("20041225125959+0100", ("digits only",)),
    ("20041225125959.5", ("digits only",)),
    (" 20041225", ("digits only",)),
    ("２００４", ("digits only",)),  # full-width digits are digits to str.isdigit, not to HL7
    ("200413", ("month 13",)),
    ("200400", ("month 00",)),
    ("20040100", ("day 00",)),
    ("20040132", ("day 32", "01-31")),
    ("20040431", ("day 31", "01-30")),
    ("19000229", ("day 29", "01-28")),
    ("20230229", ("day 29", "01-28")),
    ("2004122524", ("hour 24",)),
    ("200412252360", ("minute 60",)),
    ("20041225235960", ("second 60",)),
])
def test_check_dtm_invalid(value, fragments):
    assert has(check_dtm(value), *fragments), check_dtm(value)


def test_check_dtm_reports_several_fields():
    assert len(check_dtm("20041332256161")) == 5


def test_dtm_padding():
    assert normalize_dtm(" 2004 ") == "2004"
    assert dtm_padded("2004") == "20040000000000"
    assert dtm_padded("2004", high=True) == "20049999999999"
    assert dtm_padded(" 200412251259 ", high=True) == "20041225125999"
    assert dtm_padded("20041225125959", high=True) == "20041225125959"
    # What padding is for: a coarse bound still orders correctly against full times.
    assert dtm_padded("2004") <= dtm_padded("20041231235959") <= dtm_padded("2004", high=True)


# --- language -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["en", "en-US", "de-CH", "i-klingon", "zh-Hant-TW", "x-private1"])
def test_language_valid(value):
    assert check_language_code(value) == []


@pytest.mark.parametrize("value", ["", "en_US", "en-", "-US", "toolonglang", "en-toolongsub", "en US", "e1", None])
def test_language_invalid(value):
    assert check_language_code(value)
