"""Reading values out of earlier logs: UseId, UseReport, UseRepositoryUniqueId, ReferenceMetadata."""
from __future__ import annotations

from lxml import etree

from .context import EngineError, SectionContext
from .logstore import StepLog, resolve_testdir
from .plan import UseId, UseReport


def _step_log(ctx: SectionContext, test: str, section: str, step: str, what: str) -> StepLog:
    log = ctx.log if (test, section) == (ctx.test_id, ctx.section_name) else ctx.logs.get(test, section)
    where = f"{test}/{section}" if section else test
    if log is None:
        raise EngineError(f"{what}: no log for {where} (that section has not run in this session)")
    entry = log.step(step)
    if entry is None:
        raise EngineError(f"{what}: log {where} has no step {step!r}")
    return entry


def use_id_value(ctx: SectionContext, use: UseId) -> str:
    if use.value is not None:
        return use.value
    where = resolve_testdir(ctx.test_id, ctx.section_name, use.testdir)
    what = f"UseId {use.symbol} (testdir={use.testdir!r} step={use.step!r} id={use.id!r})"
    if where is None:
        raise EngineError(f"{what}: testdir does not name a section log")
    entry = _step_log(ctx, where[0], where[1], use.step, what)
    values = entry.assigned.get(use.section)
    if values is None:
        raise EngineError(f"{what}: unknown log section {use.section!r}")
    if use.id not in values:
        known = ", ".join(sorted(values)) or "nothing"
        raise EngineError(f"{what}: step {use.step} {use.section} holds {known}")
    return values[use.id]


def use_id_values(ctx: SectionContext, uses: list[UseId], tolerant: bool = False) -> dict[str, str]:
    out: dict[str, str] = {}
    for use in uses:
        try:
            out[use.symbol] = use_id_value(ctx, use)
        except EngineError:
            if not tolerant:
                raise
    return out


def use_report_value(ctx: SectionContext, use: UseReport) -> str:
    test = use.test or ctx.test_id
    section = use.section
    if section is None or section == "THIS":
        section = ctx.section_name if test == ctx.test_id else ""
    what = f"UseReport {use.name} (test={test} section={section} step={use.step})"
    entry = _step_log(ctx, test, section, use.step, what)
    if use.name not in entry.reports:
        known = ", ".join(sorted(entry.reports)) or "none"
        raise EngineError(f"{what}: no such report (it has {known})")
    return entry.reports[use.name]


def use_report_values(ctx: SectionContext, uses: list[UseReport]) -> dict[str, str]:
    return {u.use_as: use_report_value(ctx, u) for u in uses if u.use_as}


def repository_id_values(ctx: SectionContext, uses: list[UseId]) -> dict[str, str]:
    """UseRepositoryUniqueId: the repositoryUniqueId slot of a DocumentEntry in an earlier query result."""
    out: dict[str, str] = {}
    for use in uses:
        where = resolve_testdir(ctx.test_id, ctx.section_name, use.testdir)
        if where is None:
            raise EngineError(f"UseRepositoryUniqueId {use.symbol}: bad testdir {use.testdir!r}")
        entry = _step_log(ctx, where[0], where[1], use.step, f"UseRepositoryUniqueId {use.symbol}")
        values = [v.text for v in (entry.result.iter() if entry.result is not None else [])
                  if isinstance(v.tag, str) and etree.QName(v).localname == "Value"
                  and v.getparent() is not None and v.getparent().getparent() is not None
                  and v.getparent().getparent().get("name") == "repositoryUniqueId"]
        if not values:
            raise EngineError(f"UseRepositoryUniqueId {use.symbol}: no repositoryUniqueId in that result")
        out[use.symbol] = values[0] or ""
    return out


def reference_metadata(ctx: SectionContext, testdir: str, step: str) -> etree._Element:
    where = resolve_testdir(ctx.test_id, ctx.section_name, testdir)
    if where is None:
        raise EngineError(f"ReferenceMetadata: bad testdir {testdir!r}")
    entry = _step_log(ctx, where[0], where[1], step, "ReferenceMetadata")
    if entry.result is None:
        raise EngineError(f"ReferenceMetadata: step {step} of {where[0]}/{where[1]} has no result")
    return entry.result
