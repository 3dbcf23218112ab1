"""testplan.xml → steps. Only what the engine acts on is kept; Goal, Rule and
InteractionSequence are documentation for people."""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from . import substitute

# Elements a TestStep may hold besides its transaction.
_STEP_META = {"ExpectedStatus", "ExpectedErrorCode", "ExpectedErrorMessage", "NewPatientId", "AltPatientId",
              "Goal", "Rule", "Assertion"}
TRANSACTIONS = (
    "RegisterTransaction", "ProvideAndRegisterTransaction", "StoredQueryTransaction", "RetrieveTransaction",
    "MuTransaction", "RmuTransaction", "RemoveMetadataTransaction", "RdTransaction", "MPQTransaction",
    "RegisterODDETransaction", "PatientIdentityFeedTransaction", "PatientMoveTransaction", "HttpTransaction",
    "NullTransaction",
)
# Bare marker elements inside a transaction, kept by name.
_FLAGS = {"XDSb", "NoPatientId", "NoMetadata", "CleanParams", "ASync", "NoMTOM", "SOAP11", "NoConvert",
          "CreateNewPatientId"}


class PlanError(ValueError):
    """The test plan cannot be run as written."""


@dataclass
class UseId:
    testdir: str
    step: str
    section: str     # AssignedUids, AssignedUuids, AssignedPatientId, AssignedSourceId
    id: str
    symbol: str
    value: str | None = None  # a literal substitution


@dataclass
class UseReport:
    test: str | None
    section: str | None
    step: str
    name: str
    use_as: str


@dataclass
class ReportSpec:
    name: str
    section: str  # InputMetadata | Result
    xpath: str


@dataclass
class Assertion:
    id: str
    xpath: str


@dataclass
class Transaction:
    kind: str
    element: etree._Element
    metadata_file: str | None = None
    documents: list[tuple[str, str]] = field(default_factory=list)
    flags: set[str] = field(default_factory=set)
    parse_metadata: bool = True
    assign_uids: bool = True                 # a bare <NoAssignUids/> turns it off
    no_assign_ids: set[str] = field(default_factory=set)   # <NoAssignUids id="X"/> spares object X
    assign_uuids: bool = False
    uuid_excludes: set[str] = field(default_factory=set)
    use_ids: list[UseId] = field(default_factory=list)
    use_reports: list[UseReport] = field(default_factory=list)
    use_repository_ids: list[UseId] = field(default_factory=list)
    reports: list[ReportSpec] = field(default_factory=list)
    assertions: list[Assertion] = field(default_factory=list)
    expected_contents: etree._Element | None = None
    reference_documents: list[tuple[str, str]] = field(default_factory=list)
    reference_metadata: tuple[str, str] | None = None  # (testdir, step)
    expected_mime_type: str | None = None
    wait_before_ms: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body_file: str | None = None
    patient_id: str | None = None   # PIF <PatientID>
    http_type: str | None = None
    unknown: list[str] = field(default_factory=list)

    def has(self, flag: str) -> bool:
        return flag in self.flags


@dataclass
class Step:
    id: str
    expected: list[str] = field(default_factory=lambda: ["Success"])
    error_codes: list[str] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)
    new_patient_id: bool = False
    alt_patient_id: bool = False
    transaction: Transaction | None = None


@dataclass
class Plan:
    name: str
    steps: list[Step]
    patient_id: str | None = None


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True)


def parse_xml_file(path: str) -> etree._Element:
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise PlanError(f"{path}: not well-formed XML: {exc}") from None


def load_plan(path: str, params: dict[str, str] | None = None) -> Plan:
    """Read a testplan.xml, with the run parameters already written into it."""
    root = parse_xml_file(path)
    substitute.replace_in_tree(root, params or {})
    return parse_plan(root)


def _text(el: etree._Element | None) -> str:
    return "".join(el.itertext()).strip() if el is not None else ""


def parse_plan(root: etree._Element) -> Plan:
    if etree.QName(root).localname != "TestPlan":
        raise PlanError(f"root element is {etree.QName(root).localname}, not TestPlan")
    plan = Plan(_text(root.find("Test")), [])
    pid = root.find("PatientId")
    if pid is not None:
        plan.patient_id = _text(pid) or None
    for n, el in enumerate(root.iterfind("TestStep"), 1):
        plan.steps.append(parse_step(el, n))
    return plan


def parse_step(el: etree._Element, position: int = 0) -> Step:
    step = Step(el.get("id") or f"step{position}")
    statuses = [s.strip() for e in el.iterfind("ExpectedStatus") for s in _text(e).split(",") if s.strip()]
    if statuses:
        step.expected = statuses
    step.error_codes = [_text(e) for e in el.iterfind("ExpectedErrorCode") if _text(e)]
    step.error_messages = [_text(e) for e in el.iterfind("ExpectedErrorMessage") if _text(e)]
    step.new_patient_id = el.find("NewPatientId") is not None
    step.alt_patient_id = el.find("AltPatientId") is not None
    for child in el:
        if isinstance(child.tag, str) and child.tag in TRANSACTIONS:
            if step.transaction is not None:
                raise PlanError(f"step {step.id} holds two transactions")
            step.transaction = parse_transaction(child)
    return step


def _use_id(e: etree._Element) -> UseId:
    return UseId(e.get("testdir", ""), e.get("step", ""), e.get("section", ""), e.get("id", ""),
                 e.get("symbol", ""), e.get("value"))


def parse_transaction(el: etree._Element) -> Transaction:
    t = Transaction(el.tag, el)
    for c in el:
        if not isinstance(c.tag, str):
            continue
        tag = c.tag
        if tag in _FLAGS:
            t.flags.add(tag)
        elif tag == "MetadataFile":
            t.metadata_file = _text(c)
        elif tag == "Document":
            t.documents.append((c.get("id", ""), _text(c)))
        elif tag == "ParseMetadata":
            t.parse_metadata = _text(c).lower() != "false"
        elif tag == "NoAssignUids":
            if c.get("id"):
                t.no_assign_ids.add(c.get("id"))
            else:
                t.assign_uids = False
        elif tag == "AssignUuids":
            t.assign_uuids = True
            t.uuid_excludes |= {x.get("value", "") for x in c.iterfind("Exclude")}
        elif tag == "UseId":
            t.use_ids.append(_use_id(c))
        elif tag == "UseRepositoryUniqueId":
            t.use_repository_ids.append(_use_id(c))
        elif tag == "UseReport":
            t.use_reports.append(UseReport(c.get("test") or None, c.get("section") or None, c.get("step", ""),
                                           c.get("reportName", ""), c.get("useAs", "")))
        elif tag == "Report":
            t.reports.append(ReportSpec(c.get("name", ""), c.get("section", "Result"), _text(c)))
        elif tag == "Assertions":
            t.assertions.extend(Assertion(a.get("id", ""), _text(a)) for a in c.iterfind("Assert"))
        elif tag == "ExpectedContents":
            t.expected_contents = c
        elif tag == "ReferenceDocument":
            t.reference_documents.append((c.get("uid", ""), _text(c)))
        elif tag == "ReferenceMetadata":
            t.reference_metadata = (c.get("testdir", ""), c.get("step", ""))
        elif tag == "ExpectedMimeType":
            t.expected_mime_type = _text(c)
        elif tag == "WaitBefore":
            try:
                t.wait_before_ms = int(_text(c))
            except ValueError:
                raise PlanError(f"WaitBefore {_text(c)!r} is not a number of milliseconds") from None
        elif tag == "Headers":
            for line in _text(c).splitlines():
                if ":" in line:
                    name, value = line.split(":", 1)
                    t.headers[name.strip()] = value.strip()
        elif tag == "BodyFile":
            t.body_file = _text(c)
        elif tag == "PatientID":
            t.patient_id = _text(c)
        elif tag in ("InteractionSequence", "Goal", "Rule"):
            continue
        else:
            t.unknown.append(tag)
    if el.get("type"):
        t.http_type = el.get("type")
    return t
