"""The portal's HTML: one layout, server-rendered, no JavaScript. Every value from the record goes through
``e`` (html.escape); the stylesheet is a file of its own, so the pages' Content-Security-Policy needs no
inline style."""
from __future__ import annotations

import html
from urllib.parse import quote

from .text import text

CSS = """
:root { --ink: #161616; --muted: #4a4a4a; --line: #c8c8c8; --accent: #000091; --accent-ink: #fff;
        --warn: #8a1c00; --warn-bg: #fff1ec; --ok-bg: #e9f6ec; --focus: #ffbf47; }
* { box-sizing: border-box; }
body { margin: 0; font: 1rem/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; color: var(--ink);
       background: #fff; }
a { color: var(--accent); }
a:focus, button:focus, input:focus { outline: 3px solid var(--focus); outline-offset: 2px; }
.skip { position: absolute; left: -999px; top: 0; background: var(--accent); color: var(--accent-ink); padding: .5rem; }
.skip:focus { left: .5rem; }
header { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; justify-content: space-between;
         padding: .75rem 1rem; border-bottom: 1px solid var(--line); }
header .app { font-weight: 700; margin: 0; font-size: 1.1rem; }
header .who { color: var(--muted); font-size: .9rem; }
header form { display: inline; margin: 0; }
nav ul { list-style: none; display: flex; flex-wrap: wrap; gap: .25rem 1.25rem; margin: 0; padding: .5rem 1rem;
         border-bottom: 1px solid var(--line); }
nav a[aria-current="page"] { font-weight: 700; text-decoration-thickness: 3px; }
main { max-width: 72rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; margin: .5rem 0 1rem; }
h2 { font-size: 1.2rem; margin: 1.5rem 0 .5rem; }
table { width: 100%; border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { text-align: left; vertical-align: top; padding: .5rem; border-bottom: 1px solid var(--line); }
th { background: #f2f2f2; }
tr.masked td { background: #f6f6f6; }
.badge { display: inline-block; padding: 0 .4rem; border: 1px solid var(--warn); color: var(--warn);
         background: var(--warn-bg); border-radius: .25rem; font-size: .85rem; }
button { font: inherit; padding: .35rem .8rem; border: 2px solid var(--accent); background: var(--accent);
         color: var(--accent-ink); border-radius: .25rem; cursor: pointer; }
button.secondary { background: #fff; color: var(--accent); }
form.inline { display: inline; margin: 0; }
label { display: block; font-weight: 600; margin-bottom: .25rem; }
input[type=text], input[type=date] { font: inherit; padding: .35rem; border: 2px solid var(--muted); border-radius: .25rem;
                                     max-width: 100%; }
.field { margin: 0 0 .75rem; }
.help { color: var(--muted); font-size: .9rem; margin: .1rem 0 .4rem; }
.filters { display: flex; flex-wrap: wrap; gap: .75rem 1rem; align-items: flex-end; }
.message { padding: .6rem .8rem; border-left: 4px solid #18753c; background: var(--ok-bg); }
.message.error { border-color: var(--warn); background: var(--warn-bg); }
@media (max-width: 40rem) {
  table.cards thead { position: absolute; left: -999px; }
  table.cards, table.cards tbody, table.cards tr, table.cards td { display: block; width: 100%; }
  table.cards tr { border: 1px solid var(--line); border-radius: .25rem; margin-bottom: .75rem; padding: .25rem .5rem; }
  table.cards td { border: 0; padding: .2rem 0; }
  table.cards td::before { content: attr(data-label) " : "; font-weight: 600; }
}
"""


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def record_url(patient: str, page: str = "documents") -> str:
    return f"/portal/record/{quote(patient, safe='')}/{page}"


def hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{e(name)}" value="{e(value)}">'


def page(lang: str, title: str, body: str, *, csrf: str | None = None, who: str | None = None,
         patient: str | None = None, current: str | None = None, self_path: str = "/portal/",
         message: str | None = None, error: bool = False) -> bytes:
    """The whole page: header (who is signed in, language switch, sign-out), the record's navigation when a
    record is open, one h1, the message of the last change, the body."""
    t = lambda key, *a: text(lang, key, *a)  # noqa: E731
    switch = f"/portal/lang?to={t('switch_lang')}&next={quote(self_path, safe='')}"
    header = [f'<p class="app">{e(t("app"))}</p>', "<div>"]
    if who:
        header.append(f'<span class="who">{e(t("signed_in_as", who))}</span> ')
    header.append(f'<a id="lang-switch" href="{e(switch)}" lang="{t("switch_lang")}" '
                  f'hreflang="{t("switch_lang")}">{e(t("switch"))}</a>')
    if csrf:
        header.append(f' <form id="logout" method="post" action="/portal/logout">{hidden("csrf", csrf)}'
                      f'<button type="submit" class="secondary">{e(t("logout"))}</button></form>')
    header.append("</div>")
    nav = ""
    if patient:
        links = []
        for key in ("documents", "log", "access"):
            cur = ' aria-current="page"' if key == current else ""
            links.append(f'<li><a href="{e(record_url(patient, key))}"{cur}>{e(t(key))}</a></li>')
        nav = f'<nav id="nav" aria-label="{e(t("nav"))}"><ul>{"".join(links)}</ul></nav>'
    note = ""
    if message:
        note = f'<p class="message{" error" if error else ""}" role="{"alert" if error else "status"}">{e(message)}</p>'
    doc = (f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">'
           f'<meta name="viewport" content="width=device-width, initial-scale=1">'
           f'<title>{e(title)} – {e(t("app"))}</title><link rel="stylesheet" href="/portal/style.css"></head>'
           f'<body><a class="skip" href="#main">{e(t("skip"))}</a><header>{"".join(header)}</header>{nav}'
           f'<main id="main" tabindex="-1"><h1>{e(title)}</h1>{note}{body}</main></body></html>')
    return doc.encode("utf-8")
