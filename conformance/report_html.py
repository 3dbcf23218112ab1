"""One self-contained HTML page: the summary, then each test; for a failed step, the
request, the response and the expectations it missed."""
from __future__ import annotations

import html
import os

from .results import FAILED, PASSED, RunResult, StepResult, TestResult

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} table{border-collapse:collapse} td,th{padding:2px 8px;text-align:left;vertical-align:top}
.passed{color:#1a7f37}.failed{color:#cf222e}.skipped{color:#9a6700}.notrun{color:#888}
details{margin:.3em 0 .3em 1em} summary{cursor:pointer}
pre{background:#f6f8fa;padding:.6em;overflow:auto;max-height:30em;font-size:12px;white-space:pre-wrap}
.problem{color:#cf222e;margin:.2em 0} .note{color:#555}
"""


def _e(text: str) -> str:
    return html.escape(text or "", quote=True)


def _cls(status: str) -> str:
    return status.replace(" ", "")


def _step(s: StepResult) -> str:
    head = (f"<b>{_e(s.id)}</b> {_e(s.transaction)} — expected {_e(s.expected)} — "
            f"<span class='{_cls(s.status)}'>{_e(s.status)}</span>")
    if s.endpoint:
        head += f" <span class='note'>→ {_e(s.endpoint)} ({s.elapsed:.2f}s)</span>"
    body = []
    body.extend(f"<div class='problem'>✗ {_e(p)}</div>" for p in s.problems)
    body.extend(f"<div class='note'>{_e(n.splitlines()[0] if n else '')}</div>" for n in s.notes
                if not n.startswith("Traceback"))
    if s.status == FAILED:
        tb = [n for n in s.notes if n.startswith("Traceback")]
        if tb:
            body.append(f"<details open><summary>harness traceback</summary><pre>{_e(tb[0])}</pre></details>")
        if s.request:
            body.append(f"<details open><summary>request</summary><pre>{_e(s.request)}</pre></details>")
        if s.response:
            body.append(f"<details open><summary>response</summary><pre>{_e(s.response)}</pre></details>")
    elif s.status == PASSED and (s.request or s.response):
        body.append(f"<details><summary>request/response</summary><pre>{_e(s.request)}</pre>"
                    f"<pre>{_e(s.response)}</pre></details>")
    return f"<li>{head}{''.join(body)}</li>"


def _test(t: TestResult) -> str:
    tag = " <span class='note'>[setup]</span>" if t.setup else ""
    title = (f"<span class='{_cls(t.status)}'>{_e(t.status.upper())}</span> <b>{_e(t.id)}</b>{tag} "
             f"{_e(t.title)} <span class='note'>({_e(' '.join(t.collections))})</span>")
    parts = []
    if t.reason:
        parts.append(f"<div class='{'problem' if t.status == FAILED else 'note'}'>{_e(t.reason)}</div>")
    for sec in t.sections:
        steps = "".join(_step(s) for s in sec.steps)
        err = f"<div class='problem'>✗ {_e(sec.error)}</div>" if sec.error else ""
        state = "passed" if sec.passed else "failed"
        parts.append(f"<details {'open' if not sec.passed else ''}><summary>section <b>{_e(sec.name or t.id)}</b> "
                     f"<span class='{state}'>{state}</span></summary>{err}<ul>{steps}</ul></details>")
    opened = "open" if t.status == FAILED else ""
    return f"<details {opened} id='{_e(t.id)}'><summary>{title}</summary>{''.join(parts)}</details>"


def render(run: RunResult) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in run.target.items())
    notes = "".join(f"<li class='note'>{_e(n)}</li>" for n in run.notes)
    index = "".join(
        f"<tr><td class='{_cls(t.status)}'>{_e(t.status)}</td><td><a href='#{_e(t.id)}'>{_e(t.id)}</a>"
        f"{' [setup]' if t.setup else ''}</td><td>{_e(t.title)}</td><td>{_e(t.reason[:200])}</td></tr>"
        for t in run.tests)
    tests = "".join(_test(t) for t in run.tests)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>XDS conformance report</title>"
            f"<style>{_STYLE}</style></head><body><h1>XDS.b conformance report</h1>"
            f"<p><b>{_e(run.summary_line())}</b> — started {_e(run.started)}, {run.elapsed:.1f}s</p>"
            f"<table>{rows}</table><ul>{notes}</ul><h2>Tests</h2><table>{index}</table>"
            f"<h2>Details</h2>{tests}</body></html>")


def write_html(run: RunResult, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render(run))

