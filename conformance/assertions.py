"""XPath over the logs: `<Report>` values a step publishes, and `<Assert>` checks."""
from __future__ import annotations

from datetime import date

from lxml import etree

from .logstore import SectionLog, StepLog
from .plan import Assertion, ReportSpec
from .substitute import replace_text


def evaluate_reports(specs: list[ReportSpec], entry: StepLog) -> tuple[dict[str, str], list[str]]:
    """Each Report is XPath string() over the named part of this step's log."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for spec in specs:
        source = entry.element(spec.section)
        if source is None:
            problems.append(f"Report {spec.name}: this step has no {spec.section} to read")
            continue
        try:
            values[spec.name] = str(source.xpath(f"string({spec.xpath.strip()})"))
        except etree.XPathError as exc:
            problems.append(f"Report {spec.name}: XPath {spec.xpath.strip()!r} is invalid: {exc}")
    return values, problems


def assertion_document(log: SectionLog) -> etree._Element:
    """<Data><output>the whole section log so far</output></Data>, which DataRef file="THIS" names."""
    data = etree.Element("Data")
    etree.SubElement(data, "output").append(log.to_xml())
    return data


def prepare_expression(text: str, links: dict[str, str], today: date | None = None) -> str:
    expr = replace_text(text, links)
    return expr.replace("$DATE$", (today or date.today()).strftime("%Y%m%d")).strip()


def _truth(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        if not value:
            return False
        first = value[0]
        text = first if isinstance(first, str) else "".join(first.itertext()) if hasattr(first, "itertext") \
            else str(first)
        return text.strip().lower() == "true"
    if isinstance(value, float):
        return str(value) == "true"
    return str(value).strip().lower() == "true"


def evaluate_asserts(asserts: list[Assertion], log: SectionLog, links: dict[str, str]) -> list[str]:
    if not asserts:
        return []
    doc = assertion_document(log)
    problems = []
    for a in asserts:
        expr = prepare_expression(a.xpath, links)
        try:
            ok = _truth(doc.xpath(expr))
        except etree.XPathError as exc:
            problems.append(f"Assert {a.id}: XPath error {exc} in {expr!r}")
            continue
        if not ok:
            problems.append(f"Assert {a.id} is false: {' '.join(expr.split())}")
    return problems
