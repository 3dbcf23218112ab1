"""The patient portal's pages (registry/portal, under /portal) in a real browser: headless Chromium driven by
selenium through Debian's chromium-driver, against the DMP deployment of tests/portal_world.py (plain http on
127.0.0.1, security = vihf, the development identity provider).

A patient signs in at the provider, reads her documents newest first, downloads one (a real browser download,
compared byte for byte), reads and filters her access log, blocks and unblocks a professional, masks and
unmasks a document, objects to break-the-glass access and withdraws it, switches language, and fails to open
another patient's record or to use a removed or forged session cookie. What each change does to the
professionals is checked where it matters: over HTTP, with ITI-18 FindDocuments under their own VIHF tokens.

Every page is also checked for the basics of accessibility (lang, one h1, a labelled control for every
input, the block form reachable with the keyboard) at desktop (1280x900) and phone (390x844) width; with
XDS_PORTAL_SCREENSHOTS=<dir> each page is saved there as <page>-desktop.png and <page>-phone.png.

Chromium and chromedriver: `.ci/run` installs Debian's `chromium` and `chromium-driver`; with CI set their
absence fails the module, elsewhere it is skipped with the reason.
"""
from __future__ import annotations

import datetime as _dt
import http.client
import os
import shutil
import time
from urllib.parse import quote, unquote, urljoin, urlsplit

import pytest

from tests import portal_world as W

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DESKTOP, PHONE = (1280, 900), (390, 844)
WAIT = 10  # seconds any one page may take to appear


def _browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return f"{' and '.join(missing)} missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    reason = _browser_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the portal's browser tests need Chromium: {reason}; .ci/run installs them")
        pytest.skip(f"no headless browser here: {reason}")
    w = W.build(str(tmp_path_factory.mktemp("portal-browser")))
    yield w
    w.close()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return str(tmp_path_factory.mktemp("downloads"))


@pytest.fixture(scope="module")
def driver(world, downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start; the pages come from this test only.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--lang=fr-FR",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": downloads, "download.prompt_for_download": False,
        "download.directory_upgrade": True, "plugins.always_open_pdf_externally": True,
        "safebrowsing.enabled": True})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    d.set_page_load_timeout(WAIT * 2)
    # Headless Chromium saves downloads only where the browser is told to (the prefs alone are not always read).
    d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
    viewport(d, DESKTOP)
    yield d
    d.quit()


# --- driving the browser ----------------------------------------------------------------------------------

def viewport(d, size: tuple[int, int]) -> None:
    """The page's viewport exactly (a phone's as a mobile device: the meta viewport applies)."""
    width, height = size
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": size == PHONE})


def wait_for(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def css(d, selector: str):
    from selenium.webdriver.common.by import By

    return d.find_elements(By.CSS_SELECTOR, selector)


def one(d, selector: str):
    found = css(d, selector)
    assert len(found) == 1, f"{selector}: {len(found)} elements on {d.current_url}"
    return found[0]


def loaded(d, url_part: str) -> None:
    """Wait until the browser shows a page whose URL contains url_part and whose document is complete."""
    wait_for(lambda: url_part in d.current_url and d.execute_script("return document.readyState") == "complete",
             f"a page at {url_part} (now {d.current_url})")


def click_and_wait(d, element) -> None:
    """Click something that navigates, and wait for the new document."""
    marker = d.execute_script("window.__before_click = true; return true;")
    assert marker
    element.click()
    wait_for(lambda: d.execute_script("return window.__before_click === undefined && "
                                      "document.readyState === 'complete'"), "the next page")


def on_sign_in_form(d, w: W.World) -> bool:
    return d.current_url.startswith(w.idp.issuer + "/authorize") and bool(css(d, "input[name=login]"))


def sign_in(d, w: W.World, login: str = "marie") -> None:
    """The sign-in as a patient does it: /portal/ sends to the provider's form, the form back to the portal."""
    d.get(w.base + "/portal/")
    wait_for(lambda: on_sign_in_form(d, w) or "/portal/record/" in d.current_url, "the sign-in form or a record")
    if not on_sign_in_form(d, w):
        return
    one(d, "input[name=login]").send_keys(login)
    one(d, "input[name=password]").send_keys(W.PASSWORD)
    one(d, "button[name=action][value=signin]").click()
    wait_for(lambda: "/portal/record/" in d.current_url and d.execute_script("return document.readyState") ==
             "complete", f"the portal after signing in (now at {d.current_url}; browser log: {d.get_log('browser')})")


def open_page(d, w: W.World, patient: str, page: str) -> None:
    """The record's page, signed in as marie first when the browser is not."""
    url = w.record_url(patient, page)
    d.get(url)
    if on_sign_in_form(d, w) or "/portal/record/" not in d.current_url:
        sign_in(d, w)
        d.get(url)
    loaded(d, "/" + page)


def browser_cookie(d, w: W.World, name: str) -> str | None:
    """A cookie the browser holds for the portal, whatever page it shows (an error page has no cookies)."""
    for c in d.execute_cdp_cmd("Network.getCookies", {"urls": [w.base + "/portal/"]})["cookies"]:
        if c["name"] == name:
            return c["value"]
    return None


def session_cookie(d, w: W.World) -> str | None:
    return browser_cookie(d, w, "xds_session")


def fetch(w: W.World, path: str, cookie: str | None = None, method: str = "GET"):
    """One request outside the browser, redirects not followed: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(w.base).port, timeout=30)
    try:
        headers = {"Cookie": f"xds_session={cookie}"} if cookie is not None else {}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def cell(row, name: str) -> str:
    from selenium.webdriver.common.by import By

    found = row.find_elements(By.CSS_SELECTOR, f"td.{name}, th.{name}")
    assert len(found) == 1, f"one cell .{name} per row, not {len(found)}"
    return found[0].text.strip()


def document_rows(d) -> list:
    return css(d, "table#documents tr[data-entry]")


def row_of(d, title: str):
    rows = [r for r in document_rows(d) if cell(r, "title").startswith(title)]
    assert len(rows) == 1, f"one row titled {title!r}, not {len(rows)}"
    return rows[0]


LOG_ROWS = """
return Array.from(document.querySelectorAll('table#access-log tr.access')).map(tr => {
  const cells = {};
  for (const name of ['at', 'professional', 'organisation', 'action', 'document']) {
    const found = tr.querySelectorAll('td.' + name + ', th.' + name);
    cells[name] = found.length === 1 ? found[0].innerText.trim() : null;
  }
  return {classes: Array.from(tr.classList), cells: cells, text: tr.innerText};
});
"""


def log_rows(d) -> list[dict]:
    """The access log's rows, read in one call: {classes, cells: {at, professional, ...}, text}."""
    return d.execute_script(LOG_ROWS)


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).date().isoformat()


# --- what every page must have ----------------------------------------------------------------------------

UNLABELLED = """
return Array.from(document.querySelectorAll('input, select, textarea'))
  .filter(el => el.type !== 'hidden')
  .filter(el => !(el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || el.closest('label')
                  || (el.id && document.querySelector('label[for="' + CSS.escape(el.id) + '"]'))))
  .map(el => el.outerHTML);
"""
NAMELESS_BUTTONS = """
return Array.from(document.querySelectorAll('button, input[type=submit]'))
  .filter(el => !((el.textContent || el.value || '').trim() || el.getAttribute('aria-label')))
  .map(el => el.outerHTML);
"""


def check_basics(d) -> str:
    """lang set, one h1, every input labelled, every button named; returns the page's language."""
    lang = d.execute_script("return document.documentElement.getAttribute('lang')")
    assert lang in ("fr", "en"), f"<html lang> is {lang!r} on {d.current_url}"
    assert len(css(d, "h1")) == 1, f"{len(css(d, 'h1'))} h1 on {d.current_url}"
    assert d.execute_script(UNLABELLED) == [], f"inputs without a label on {d.current_url}"
    assert d.execute_script(NAMELESS_BUTTONS) == [], f"buttons without a name on {d.current_url}"
    return lang


def check_portal_page(d, w: W.World, patient: str | None = W.MARIE) -> str:
    """The contract of every portal page: main#main, nav#nav (on a record's pages), #lang-switch, the
    logout form, a csrf field in every form that posts."""
    lang = check_basics(d)
    one(d, "main#main")
    switch = one(d, "a#lang-switch")
    assert switch.text.strip() == {"fr": "English", "en": "Français"}[lang]
    logout = one(d, "form#logout")
    assert logout.get_attribute("method").lower() == "post"
    assert path_of(logout.get_attribute("action")) == "/portal/logout"
    assert css(d, "form#logout button[type=submit], form#logout input[type=submit]")
    for form in css(d, "form"):
        if (form.get_attribute("method") or "get").lower() == "post":
            from selenium.webdriver.common.by import By

            fields = form.find_elements(By.CSS_SELECTOR, "input[type=hidden][name=csrf]")
            assert len(fields) == 1 and fields[0].get_attribute("value"), \
                f"a POST form without its csrf field: {form.get_attribute('outerHTML')[:300]}"
    if patient is not None:
        links = {unquote(path_of(a.get_attribute("href"))) for a in css(d, "nav#nav a")}
        for page in ("documents", "log", "access"):
            assert f"/portal/record/{patient}/{page}" in links, (page, links)
    return lang


def screenshot(d, name: str, size: tuple[int, int]) -> None:
    """With XDS_PORTAL_SCREENSHOTS=<dir>: the whole page (not only the viewport) as <dir>/<name>-<size>.png."""
    folder = os.environ.get("XDS_PORTAL_SCREENSHOTS")
    if not folder:
        return
    import base64

    os.makedirs(folder, exist_ok=True)
    width, _ = size
    content = d.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    height = max(int(content["height"]), size[1])
    shot = d.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    label = "desktop" if size == DESKTOP else "phone"
    with open(os.path.join(folder, f"{name}-{label}.png"), "wb") as f:
        f.write(base64.b64decode(shot["data"]))


# --- the deployment itself, without the pages ----------------------------------------------------------

def test_the_deployment_serves_professionals_and_sends_the_signed_out_to_sign_in(world):
    w = world
    visible = {d.entry_uuid for d in w.docs[W.MARIE]}
    assert W.professional_finds(w, W.DR_X, W.MARIE) == visible
    assert W.professional_finds(w, W.DR_Y, W.MARIE) == set()           # not authorised, no emergency
    assert W.professional_finds(w, W.DR_X, W.PAUL) == set()
    status, headers, _ = fetch(w, "/portal/")
    assert status in (302, 303) and urlsplit(headers["location"]).path == "/portal/login", (status, headers)


# --- signing in ---------------------------------------------------------------------------------------------

def test_signing_in_lands_on_the_patients_own_documents(world, driver):
    w, d = world, driver
    d.delete_all_cookies()
    d.get(w.base + "/portal/")
    wait_for(lambda: on_sign_in_form(d, w), "the provider's sign-in form")
    check_basics(d)
    sign_in(d, w)
    assert unquote(urlsplit(d.current_url).path) == f"/portal/record/{W.MARIE}/documents"
    assert session_cookie(d, w)
    # /portal/ of a signed-in patient: 303 to her documents, by the URL-encoded id.
    status, headers, _ = fetch(w, "/portal/", session_cookie(d, w))
    assert status == 303
    assert urlsplit(urljoin(w.base + "/portal/", headers["location"])).path == \
        f"/portal/record/{quote(W.MARIE, safe='')}/documents"


# --- every page at both widths (early, while the log is still short for the screenshots) ---------------

@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_every_page_at_desktop_and_phone_width(world, driver, size):
    w, d = world, driver
    viewport(d, size)
    try:
        for page in ("documents", "log", "access"):
            open_page(d, w, W.MARIE, page)
            check_portal_page(d, w)
            overflow = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{page} is {overflow}px wider than a {size[0]}px screen"
            screenshot(d, page, size)
        d.get(w.record_url(W.PAUL, "documents"))
        loaded(d, "/documents")
        check_portal_page(d, w, patient=None)
        screenshot(d, "not-found", size)
        # The sign-in page: the provider's form, reached from the portal (a session or not).
        d.get(w.base + "/portal/login")
        wait_for(lambda: on_sign_in_form(d, w), "the sign-in form")
        check_basics(d)
        screenshot(d, "sign-in", size)
    finally:
        viewport(d, DESKTOP)


# --- documents ------------------------------------------------------------------------------------------------

def test_her_documents_newest_first_with_their_details(world, driver):
    w, d = world, driver
    open_page(d, w, W.MARIE, "documents")
    lang = check_portal_page(d, w)
    assert lang == "fr" and d.execute_script("return document.documentElement.lang") == "fr"
    rows = document_rows(d)
    newest_first = sorted(w.docs[W.MARIE], key=lambda doc: doc.created, reverse=True)
    assert [r.get_attribute("data-entry") for r in rows] == [doc.entry_uuid for doc in newest_first]
    assert [cell(r, "title") for r in rows] == [doc.title for doc in newest_first]
    for r, doc in zip(rows, newest_first):
        assert cell(r, "type") and doc.created[:4] in cell(r, "date")
        assert "AUTEUR" in cell(r, "author").upper() and cell(r, "organisation") == "CENTRE HOSPITALIER A"
        assert "masked" not in (r.get_attribute("class") or "").split()
        from selenium.webdriver.common.by import By

        link = r.find_element(By.CSS_SELECTOR, "a.download")
        assert unquote(path_of(link.get_attribute("href"))) == \
            f"/portal/record/{W.MARIE}/documents/{doc.entry_uuid}/file"
        button = r.find_element(By.CSS_SELECTOR, "form.mask button[name=masked]")
        assert button.get_attribute("value") == "on" and button.text.strip() == "Masquer aux professionnels"
        form = r.find_element(By.CSS_SELECTOR, "form.mask")
        assert unquote(path_of(form.get_attribute("action"))) == \
            f"/portal/record/{W.MARIE}/documents/{doc.entry_uuid}/mask"
    # Nothing of the signature documents (INVISIBLE_PATIENT for a month) nor of paul's.
    assert "Signature" not in d.find_element("tag name", "main").text
    assert "paul" not in d.find_element("tag name", "main").text.lower()


def test_a_download_is_the_documents_bytes(world, driver, downloads):
    w, d = world, driver
    pdf = next(doc for doc in w.docs[W.MARIE] if doc.mime_type == "application/pdf")
    open_page(d, w, W.MARIE, "documents")
    before = set(os.listdir(downloads))
    from selenium.webdriver.common.by import By

    row_of(d, pdf.title).find_element(By.CSS_SELECTOR, "a.download").click()

    def arrived():
        new = [f for f in set(os.listdir(downloads)) - before if not f.endswith((".crdownload", ".tmp"))]
        return new[0] if len(new) == 1 else None

    name = wait_for(arrived, "the downloaded file")
    with open(os.path.join(downloads, name), "rb") as f:
        assert f.read() == pdf.content == W.PDF_BYTES
    assert name.endswith(".pdf"), name
    # The answer itself: the bytes, as an attachment.
    status, headers, body = fetch(w, f"/portal/record/{quote(W.MARIE, safe='')}/documents/"
                                     f"{quote(pdf.entry_uuid, safe='')}/file", session_cookie(d, w))
    assert status == 200 and body == W.PDF_BYTES
    assert headers["content-disposition"].startswith("attachment")
    # A CDA too, byte for byte.
    cda = w.docs[W.MARIE][0]
    status, headers, body = fetch(w, f"/portal/record/{quote(W.MARIE, safe='')}/documents/"
                                     f"{quote(cda.entry_uuid, safe='')}/file", session_cookie(d, w))
    assert status == 200 and body == cda.content


def test_masking_hides_a_document_from_an_authorised_professional_not_from_its_author(world, driver):
    w, d = world, driver
    target = w.docs[W.MARIE][1]
    assert target.unique_id in W.professional_finds_unique_ids(w, W.DR_X, W.MARIE)
    open_page(d, w, W.MARIE, "documents")
    from selenium.webdriver.common.by import By

    click_and_wait(d, row_of(d, target.title).find_element(By.CSS_SELECTOR, "form.mask button[name=masked][value=on]"))
    try:
        loaded(d, "/documents")
        row = row_of(d, target.title)
        assert "masked" in row.get_attribute("class").split()
        button = row.find_element(By.CSS_SELECTOR, "form.mask button[name=masked]")
        assert button.get_attribute("value") == "off" and button.text.strip() == "Ne plus masquer"
        # A masked document is a new version (ITI-57): the row names it.
        masked_entry = row.get_attribute("data-entry")
        # DR_X, authorised, neither treating doctor nor of the author's structure: no longer given it; the
        # author's structure and the treating doctor still are.
        assert target.unique_id not in W.professional_finds_unique_ids(w, W.DR_X, W.MARIE)
        assert masked_entry not in W.professional_finds(w, W.DR_X, W.MARIE)
        assert masked_entry in W.professional_finds(w, W.DR_A, W.MARIE)
        assert masked_entry in W.professional_finds(w, W.DR_MT, W.MARIE)
        # The others are untouched.
        others = {doc.unique_id for doc in w.docs[W.MARIE]} - {target.unique_id}
        assert others <= W.professional_finds_unique_ids(w, W.DR_X, W.MARIE)
    finally:
        open_page(d, w, W.MARIE, "documents")
        buttons = row_of(d, target.title).find_elements(By.CSS_SELECTOR, "form.mask button[name=masked][value=off]")
        if buttons:
            click_and_wait(d, buttons[0])
    loaded(d, "/documents")
    row = row_of(d, target.title)
    assert "masked" not in (row.get_attribute("class") or "").split()
    assert target.unique_id in W.professional_finds_unique_ids(w, W.DR_X, W.MARIE)


# --- the access log ---------------------------------------------------------------------------------------

def test_the_log_shows_who_accessed_and_marks_emergencies(world, driver):
    w, d = world, driver
    W.professional_finds(w, W.DR_X, W.MARIE)  # one more access, just now
    open_page(d, w, W.MARIE, "log")
    check_portal_page(d, w)
    rows = log_rows(d)
    assert rows
    for r in rows:
        missing = [name for name, text in r["cells"].items() if text is None]
        assert not missing, f"a log row without one cell of each of {missing}: {r['text']}"
    by_who = lambda name: [r for r in rows if name in r["cells"]["professional"]]  # noqa: E731
    assert by_who(W.NAMES[W.DR_X]) and by_who(W.NAMES[W.DR_A])
    assert any(W.DR_X in r["cells"]["professional"] for r in by_who(W.NAMES[W.DR_X])), "the national id is shown"
    glass = by_who(W.NAMES[W.DR_B])
    assert glass and all("break-glass" in r["classes"] for r in glass), glass
    assert all("bris de glace" in r["text"].lower() for r in glass), glass
    samu = by_who(W.NAMES[W.DR_SAMU])
    assert samu and all("centre-15" in r["classes"] for r in samu), samu
    assert all("centre 15" in r["text"].lower() for r in samu), samu
    normal = [r for r in rows if r not in glass and r not in samu]
    assert normal and not any({"break-glass", "centre-15"} & set(r["classes"]) for r in normal)
    # Newest first: the consultation of a moment ago leads.
    assert W.NAMES[W.DR_X] in rows[0]["cells"]["professional"]


def test_the_log_names_no_document_hidden_from_her(world, driver):
    """Her signature documents are INVISIBLE_PATIENT for a month: the log names them by neither title nor
    uniqueId (README, "The patient's access log")."""
    w, d = world, driver
    open_page(d, w, W.MARIE, "log")
    documents = [r["cells"]["document"] for r in log_rows(d)]
    assert any(documents), "the submissions of her visible documents are named"
    assert "Signature" not in documents, documents


def test_the_log_filters_by_professional_and_by_date(world, driver):
    w, d = world, driver
    open_page(d, w, W.MARIE, "log")
    everything = len(log_rows(d))
    form = one(d, "form#log-filter")
    assert (form.get_attribute("method") or "get").lower() == "get"
    for name, kind in (("from", "date"), ("to", "date"), ("professional", "text")):
        assert one(d, f"form#log-filter input[name={name}]").get_attribute("type") == kind

    def apply(professional: str = "", since: str = "", until: str = "") -> list:
        for name, value in (("from", since), ("to", until)):
            # A date input takes its value in the browser's locale when typed; set it as ISO, as the form sends it.
            d.execute_script("arguments[0].value = arguments[1];", one(d, f"form#log-filter input[name={name}]"), value)
        field = one(d, "form#log-filter input[name=professional]")
        field.clear()
        if professional:
            field.send_keys(professional)
        click_and_wait(d, one(d, "form#log-filter button[type=submit], form#log-filter input[type=submit]"))
        loaded(d, "/log")
        return log_rows(d)

    # By name (part of it, any case) and by national id.
    rows = apply(professional="xenakis")
    assert rows and all(W.NAMES[W.DR_X] in r["cells"]["professional"] for r in rows)
    assert "professional=xenakis" in d.current_url
    rows = apply(professional=W.DR_B)
    assert rows and all(W.NAMES[W.DR_B] in r["cells"]["professional"] for r in rows)
    assert all("break-glass" in r["classes"] for r in rows)
    # By date: everything happened today (UTC).
    day = _dt.date.fromisoformat(today())
    assert len(apply(since=today(), until=today())) == everything
    assert apply(since=(day + _dt.timedelta(days=1)).isoformat()) == []
    assert apply(until=(day - _dt.timedelta(days=1)).isoformat()) == []
    rows = apply(professional=W.DR_SAMU, since=today(), until=today())
    assert rows and all("centre-15" in r["classes"] for r in rows)
    check_portal_page(d, w)


# --- professionals' access ----------------------------------------------------------------------------------

def test_blocking_with_the_keyboard_stops_a_professional_and_unblocking_lets_him_in_again(world, driver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    w, d = world, driver
    visible = {doc.unique_id for doc in w.docs[W.MARIE]}
    assert W.professional_finds_unique_ids(w, W.DR_X, W.MARIE) == visible
    open_page(d, w, W.MARIE, "access")
    check_portal_page(d, w)
    assert css(d, f"table#authorised tr[data-person='{W.DR_X}']")
    assert not css(d, f"table#blocked tr[data-person='{W.DR_X}']")
    assert W.DR_MT in one(d, "p#treating-doctor").text
    # The block form's field has a label, and Tab reaches it from the top of the page.
    label = one(d, "label[for=block-person]")
    assert label.text.strip()
    field = one(d, "form#block-form input#block-person")
    assert field.get_attribute("name") == "person"
    form = one(d, "form#block-form")
    assert form.get_attribute("method").lower() == "post"
    assert unquote(path_of(form.get_attribute("action"))) == f"/portal/record/{W.MARIE}/access"
    assert form.find_element(By.CSS_SELECTOR, "input[type=hidden][name=action]").get_attribute("value") == "block"
    d.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0);")
    for presses in range(1, 61):
        ActionChains(d).send_keys(Keys.TAB).perform()
        if d.execute_script("return document.activeElement && document.activeElement.id") == "block-person":
            break
    else:
        raise AssertionError("60 presses of Tab never reached #block-person")
    ActionChains(d).send_keys(W.DR_X).perform()
    d.execute_script("window.__before_click = true;")
    ActionChains(d).send_keys(Keys.ENTER).perform()
    wait_for(lambda: d.execute_script("return window.__before_click === undefined && document.readyState === "
                                      "'complete'"), "the page after blocking")
    try:
        loaded(d, "/access")
        assert css(d, f"table#blocked tr[data-person='{W.DR_X}']")
        assert not css(d, f"table#authorised tr[data-person='{W.DR_X}']")
        # Blocked: ITI-18 gives him nothing, and he cannot authorise himself again.
        assert W.professional_finds(w, W.DR_X, W.MARIE) == set()
        assert W.self_grant(w, W.DR_X, W.MARIE) == 403
        # The others are unaffected.
        assert visible <= W.professional_finds_unique_ids(w, W.DR_A, W.MARIE)
        row = one(d, f"table#blocked tr[data-person='{W.DR_X}']")
        click_and_wait(d, row.find_element(By.CSS_SELECTOR, "button[name=action][value=unblock]"))
        loaded(d, "/access")
        assert not css(d, f"table#blocked tr[data-person='{W.DR_X}']")
    finally:
        if W.DR_X in w.access.state(W.MARIE).blocked:
            w.access.remove_person(W.MARIE, "blocked", W.DR_X)
    # Blocking withdrew his authorisation (README, "Access policy"): unblocked, he may record it again
    # himself (TD0.3), which the block refused, and then he finds her documents again.
    assert W.professional_finds(w, W.DR_X, W.MARIE) == set()
    assert W.self_grant(w, W.DR_X, W.MARIE) == 200
    assert W.professional_finds_unique_ids(w, W.DR_X, W.MARIE) == visible
    d.refresh()
    loaded(d, "/access")
    assert css(d, f"table#authorised tr[data-person='{W.DR_X}'] button[name=action][value=block]")


def test_an_objection_to_break_the_glass_is_shown_and_applied(world, driver):
    from selenium.webdriver.common.by import By

    w, d = world, driver
    open_page(d, w, W.MARIE, "access")
    form = one(d, "form#objections")
    assert unquote(path_of(form.get_attribute("action"))) == f"/portal/record/{W.MARIE}/objections"
    assert one(d, "span#objection-break-glass").text.strip() == "non"
    assert one(d, "span#objection-centre-15").text.strip() == "non"
    click_and_wait(d, form.find_element(By.CSS_SELECTOR, "button[name=break_glass][value=on]"))
    try:
        loaded(d, "/access")
        assert one(d, "span#objection-break-glass").text.strip() == "oui"
        assert one(d, "span#objection-centre-15").text.strip() == "non"
        assert w.access.state(W.MARIE).objects_break_glass
        # Break-the-glass now gives nothing; centre 15 still consults.
        assert W.professional_finds(w, W.DR_B, W.MARIE, mode="directe", purpose="bris_de_glace") == set()
        assert W.professional_finds(w, W.DR_SAMU, W.MARIE, purpose="centre_15")
        click_and_wait(d, one(d, "form#objections button[name=break_glass][value=off]"))
        loaded(d, "/access")
        assert one(d, "span#objection-break-glass").text.strip() == "non"
    finally:
        if w.access.state(W.MARIE).objects_break_glass:
            w.access.set_flag(W.MARIE, "object_break_glass", False)
    assert W.professional_finds(w, W.DR_B, W.MARIE, mode="directe", purpose="bris_de_glace")


# --- what she may not open --------------------------------------------------------------------------------

def test_another_patients_record_and_an_unknown_one_are_the_same_not_found_page(world, driver):
    w, d = world, driver
    open_page(d, w, W.MARIE, "documents")
    seen = {}
    for who, pid in (("paul", W.PAUL), ("unknown", W.M.patient_id(W.M.ins(999), nh=False))):
        for page in ("documents", "log", "access"):
            d.get(w.record_url(pid, page))
            loaded(d, "/" + page)
            check_portal_page(d, w, patient=None)
            assert one(d, "h1").text.strip() == "Page introuvable"
            assert not css(d, "table#documents, table#access-log, table#authorised, form#block-form")
            status, _, body = fetch(w, path_of(w.record_url(pid, page)), session_cookie(d, w))
            assert status == 404 and b"Page introuvable" in body
            seen[(who, page)] = one(d, "main#main").text
    assert len(set(seen.values())) == 1, seen
    # Nor his document's file by its entryUUID under her record, nor under his.
    paul_doc = w.docs[W.PAUL][0]
    for pid in (W.MARIE, W.PAUL):
        status, _, body = fetch(w, f"/portal/record/{quote(pid, safe='')}/documents/"
                                   f"{quote(paul_doc.entry_uuid, safe='')}/file", session_cookie(d, w))
        assert status == 404 and paul_doc.content not in body


def test_a_removed_or_forged_session_cookie_sends_back_to_sign_in(world, driver):
    w, d = world, driver
    open_page(d, w, W.MARIE, "documents")
    real = session_cookie(d, w)
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    for value in (None, forged, "not-a-session"):
        d.execute_cdp_cmd("Network.deleteCookies", {"name": "xds_session", "url": w.base + "/"})
        if value is not None:
            d.execute_cdp_cmd("Network.setCookie", {"name": "xds_session", "value": value, "url": w.base + "/",
                                                    "path": "/", "httpOnly": True, "sameSite": "Lax"})
        assert session_cookie(d, w) == value
        status, headers, _ = fetch(w, path_of(w.record_url(W.MARIE, "documents")), value)
        assert status == 303 and urlsplit(headers["location"]).path == "/portal/login", (value, status, headers)
        d.get(w.record_url(W.MARIE, "documents"))
        wait_for(lambda: on_sign_in_form(d, w), f"the sign-in form with cookie {value!r}")
        assert "Marie" not in d.page_source and "Masquer" not in d.page_source
    sign_in(d, w)
    assert session_cookie(d, w) not in (real, forged)


def test_signing_out_ends_the_session(world, driver):
    w, d = world, driver
    open_page(d, w, W.MARIE, "documents")
    token = session_cookie(d, w)
    one(d, "form#logout button[type=submit], form#logout input[type=submit]").click()
    try:
        # The browser leaves her record: the answer's redirects (logout -> /portal/ -> sign-in) are followed.
        wait_for(lambda: "/portal/record/" not in d.current_url,
                 f"the browser to leave her record after 'logout' (browser log: {d.get_log('browser')})")
    finally:
        # Whatever the browser shows, the session is over on the server.
        status, _, _ = fetch(w, path_of(w.record_url(W.MARIE, "documents")), token)
        assert status == 303
    assert "Masquer" not in d.page_source
    d.get(w.record_url(W.MARIE, "documents"))
    wait_for(lambda: on_sign_in_form(d, w), "the sign-in form after signing out")
    sign_in(d, w)


# --- languages ----------------------------------------------------------------------------------------------

def test_switching_to_english_and_back_keeps_the_page(world, driver):
    w, d = world, driver
    for page, french, english in (("documents", "Mes documents", "My documents"),
                                  ("access", "Qui peut accéder à mon dossier", "Who may access my record")):
        open_page(d, w, W.MARIE, page)
        assert one(d, "h1").text.strip() == french
        click_and_wait(d, one(d, "a#lang-switch"))
        loaded(d, "/" + page)
        assert check_portal_page(d, w) == "en"
        assert unquote(urlsplit(d.current_url).path) == f"/portal/record/{W.MARIE}/{page}"
        assert one(d, "h1").text.strip() == english
        assert one(d, "a#lang-switch").text.strip() == "Français"
        assert browser_cookie(d, w, "xds_lang") == "en"
        if page == "access":
            assert one(d, "span#objection-break-glass").text.strip() == "no"
        if page == "documents":
            assert css(d, "form.mask button[name=masked]")[0].text.strip() != "Masquer aux professionnels"
        d.refresh()
        loaded(d, "/" + page)
        assert one(d, "h1").text.strip() == english  # the cookie keeps it
        click_and_wait(d, one(d, "a#lang-switch"))
        loaded(d, "/" + page)
        assert check_portal_page(d, w) == "fr"
        assert one(d, "h1").text.strip() == french
        assert browser_cookie(d, w, "xds_lang") == "fr"
