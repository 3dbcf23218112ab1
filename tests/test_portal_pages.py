"""The patients' portal pages over real HTTP, without a browser (tests/test_portal_browser.py drives
Chromium through the same world): a DMP registry (profile dmp, security vihf) with the development
identity provider, from tests/portal_world.py.

Each refusal is shown next to the allowed variant, with what the refusal must not have changed checked
through the registry's own interfaces (ITI-18 by a professional, the access state, the audit outbox).
"""
from __future__ import annotations

import re
from urllib.parse import quote, unquote

import pytest

from registry import schema as RS
from xds.audit import records as R
from tests import portal_world as W
from tests.test_portal_signin import PASSWORD, Browser, hidden_fields


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = W.build(str(tmp_path_factory.mktemp("portal-pages")))
    yield w
    w.close()


def sign_in(w: W.World, login: str) -> Browser:
    b = Browser()
    first = b.get(w.base + "/portal/login?next=/portal/")
    form = b.get(first.location)
    posted = b.post(w.idp.issuer + "/authorize", {**hidden_fields(form.text), "login": login, "password": PASSWORD,
                                                  "action": "signin"})
    assert posted.status == 302, posted.text
    assert b.get(posted.location).status == 303
    return b


def csrf_of(text: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', text).group(1)


def post(w: W.World, b: Browser, url: str, form: dict, *, origin: str | None = None):
    return b.post(url, form, headers={"Origin": origin or w.base})


def rows(text: str) -> list[str]:
    return re.findall(r'<tr data-entry="([^"]+)"', text)


def access_rights_records(w: W.World) -> list:
    out = []
    for seq, stored, *_ in w.services.auditor.store.records(0, 100000):
        event = R.from_stored(stored, seq)
        if isinstance(event, R.AuditEvent) and event.transaction == R.ACCESS_RIGHTS:
            out.append(event)
    return out


def test_signed_out_pages_send_the_browser_to_sign_in(world):
    b = Browser()
    for path in ("/portal/", world.record_url(W.MARIE)[len(world.base):], "/portal/record/x/log"):
        answer = b.get(world.base + path)
        assert answer.status == 303 and answer.location.startswith("/portal/login?next=")
        assert unquote(answer.location.split("next=", 1)[1]) == path


def test_the_patient_sees_her_visible_documents_newest_first(world):
    b = sign_in(world, "marie")
    home = b.get(world.base + "/portal/")
    assert home.status == 303 and home.location == world.record_url(W.MARIE)[len(world.base):]
    page = b.get(world.base + home.location)
    assert page.status == 200 and '<html lang="fr">' in page.text and page.text.count("<h1>") == 1
    newest_first = [d.entry_uuid for d in reversed(world.docs[W.MARIE])]
    assert rows(page.text) == newest_first          # the signature documents (INVISIBLE_PATIENT) are not hers
    for d in world.docs[W.MARIE]:
        assert d.title.replace("'", "&#x27;") in page.text
    assert "Content-Security-Policy" in dict(page.headers)


def test_a_document_downloads_with_its_bytes(world):
    b = sign_in(world, "marie")
    pdf = next(d for d in world.docs[W.MARIE] if d.mime_type == "application/pdf")
    answer = b.get(f"{world.record_url(W.MARIE)}/{quote(pdf.entry_uuid, safe='')}/file")
    assert answer.status == 200 and answer.body == W.PDF_BYTES
    headers = dict(answer.headers)
    assert headers["Content-Type"] == "application/pdf" and headers["Content-Disposition"].startswith("attachment;")


def test_another_patients_record_or_document_answers_as_an_unknown_one(world):
    b = sign_in(world, "marie")
    unknown = b.get(world.record_url(W.M.patient_id(W.M.ins(999), nh=False)))
    for url in (world.record_url(W.PAUL), world.record_url(W.PAUL, "log"), world.record_url(W.PAUL, "access"),
                f"{world.record_url(W.PAUL)}/{quote(world.docs[W.PAUL][0].entry_uuid, safe='')}/file",
                # paul's document under marie's own record
                f"{world.record_url(W.MARIE)}/{quote(world.docs[W.PAUL][0].entry_uuid, safe='')}/file",
                f"{world.record_url(W.MARIE)}/urn:uuid:00000000-0000-4000-8000-000000000000/file"):
        answer = b.get(url)
        assert answer.status == 404 and answer.body == unknown.body, url
    assert unknown.status == 404 and "Page introuvable" in unknown.text
    assert W.PAUL.split("^")[0] not in unknown.text


def test_a_changed_or_removed_cookie_opens_nothing(world):
    b = sign_in(world, "marie")
    jar = b.jars[world.base[len("http://"):]]
    jar["xds_session"] = jar["xds_session"][:-4] + "AAAA"
    assert b.get(world.record_url(W.MARIE)).status == 303
    del jar["xds_session"]
    assert b.get(world.record_url(W.MARIE)).status == 303


def test_blocking_needs_the_forms_token_and_the_same_origin_then_hides_the_record(world):
    b = sign_in(world, "marie")
    url = world.record_url(W.MARIE, "access")
    page = b.get(url)
    assert f'data-person="{W.DR_X}"' in page.text.split('id="blocked"')[0]
    before = len(access_rights_records(world))
    visible = {d.entry_uuid for d in world.docs[W.MARIE]}
    for form, origin in (({"action": "block", "person": W.DR_X}, None),
                         ({"action": "block", "person": W.DR_X, "csrf": "wrong"}, None),
                         ({"action": "block", "person": W.DR_X, "csrf": csrf_of(page.text)}, "http://evil.example")):
        refused = post(world, b, url, form, origin=origin)
        assert refused.status == 403
        assert W.DR_X not in world.access.state(W.MARIE).blocked
        assert W.professional_finds(world, W.DR_X, W.MARIE) >= visible
    done = post(world, b, url, {"action": "block", "person": W.DR_X, "csrf": csrf_of(page.text)})
    assert done.status == 303
    assert W.DR_X in world.access.state(W.MARIE).blocked
    assert W.professional_finds(world, W.DR_X, W.MARIE) == set()
    shown = b.get(world.base + done.location)
    assert f'data-person="{W.DR_X}"' in shown.text.split('id="blocked"')[1] and "bloqué" in shown.text
    records = access_rights_records(world)[before:]
    assert [(r.outcome_description, r.outcome, r.patient_id) for r in records] == [("block", 0, W.MARIE)]
    assert records[0].human is not None and records[0].human.name_id == W.MARIE

    assert W.self_grant(world, W.DR_X, W.MARIE) == 403        # a blocked professional cannot authorise himself
    again = post(world, b, url, {"action": "unblock", "person": W.DR_X, "csrf": csrf_of(page.text)})
    assert again.status == 303 and W.DR_X not in world.access.state(W.MARIE).blocked
    # Blocking withdrew his authorisation; unblocked, he may record it again (TD0.3) and consult.
    assert W.professional_finds(world, W.DR_X, W.MARIE) == set()
    assert W.self_grant(world, W.DR_X, W.MARIE) == 200
    assert W.professional_finds(world, W.DR_X, W.MARIE) >= visible


def test_a_malformed_person_is_refused_and_changes_nothing(world):
    b = sign_in(world, "marie")
    url = world.record_url(W.MARIE, "access")
    token = csrf_of(b.get(url).text)
    before = world.access.state(W.MARIE)
    for person in ("", "two words", "x" * 65, "<script>"):
        answer = post(world, b, url, {"action": "block", "person": person, "csrf": token})
        assert answer.status == 400 and "identifiant du professionnel" in answer.text.lower()
    assert post(world, b, url, {"action": "grant", "person": W.DR_B, "csrf": token}).status == 404
    assert world.access.state(W.MARIE) == before


def test_masking_is_an_iti57_new_version_hidden_from_professionals_but_not_the_author(world):
    b = sign_in(world, "marie")
    doc = world.docs[W.MARIE][0]
    page = b.get(world.record_url(W.MARIE))
    mask = f"{world.record_url(W.MARIE)}/{quote(doc.entry_uuid, safe='')}/mask"
    assert post(world, b, mask, {"masked": "on"}).status == 403     # no CSRF token
    assert doc.unique_id in W.professional_finds_unique_ids(world, W.DR_X, W.MARIE)
    done = post(world, b, mask, {"masked": "on", "csrf": csrf_of(page.text)})
    assert done.status == 303
    assert doc.unique_id not in W.professional_finds_unique_ids(world, W.DR_X, W.MARIE)
    assert doc.unique_id in W.professional_finds_unique_ids(world, W.DR_A, W.MARIE)      # its author
    assert doc.unique_id in W.professional_finds_unique_ids(world, W.DR_MT, W.MARIE)     # treating doctor
    shown = b.get(world.base + done.location)
    masked_rows = re.findall(r'<tr data-entry="([^"]+)" class="masked"', shown.text)
    assert len(masked_rows) == 1 and masked_rows[0] != doc.entry_uuid     # the new version's entryUUID
    unmask = f"{world.record_url(W.MARIE)}/{quote(masked_rows[0], safe='')}/mask"
    assert post(world, b, unmask, {"masked": "off", "csrf": csrf_of(shown.text)}).status == 303
    assert doc.unique_id in W.professional_finds_unique_ids(world, W.DR_X, W.MARIE)


def test_objections_toggle(world):
    b = sign_in(world, "paul")
    url = world.record_url(W.PAUL, "objections")
    page = b.get(world.record_url(W.PAUL, "access"))
    assert 'id="objection-centre-15">non<' in page.text
    assert post(world, b, url, {"centre_15": "on"}).status == 403
    assert not world.access.state(W.PAUL).objects_centre_15
    assert post(world, b, url, {"centre_15": "on", "csrf": csrf_of(page.text)}).status == 303
    assert world.access.state(W.PAUL).objects_centre_15
    assert 'id="objection-centre-15">oui<' in b.get(world.record_url(W.PAUL, "access")).text
    assert post(world, b, url, {"centre_15": "off", "csrf": csrf_of(page.text)}).status == 303
    assert not world.access.state(W.PAUL).objects_centre_15


def test_the_log_marks_emergency_accesses_and_filters(world):
    b = sign_in(world, "marie")
    page = b.get(world.record_url(W.MARIE, "log"))
    assert page.status == 200
    assert re.search(r'<tr class="access break-glass">', page.text) and 'class="access centre-15"' in page.text
    only_x = b.get(world.record_url(W.MARIE, "log") + f"?professional={W.DR_X}")
    assert only_x.text.count('<tr class="access') >= 1 and W.DR_B not in only_x.text
    future = b.get(world.record_url(W.MARIE, "log") + "?from=2999-01-01")
    assert 'id="no-log"' in future.text
    bad = b.get(world.record_url(W.MARIE, "log") + "?from=yesterday")
    assert bad.status == 400 and "AAAA-MM-JJ" in bad.text


def test_english_is_one_click_away(world):
    b = sign_in(world, "paul")
    page = b.get(world.record_url(W.PAUL))
    switch = re.search(r'id="lang-switch" href="([^"]+)"', page.text).group(1).replace("&amp;", "&")
    moved = b.get(world.base + switch)
    assert moved.status == 303 and moved.location == world.record_url(W.PAUL)[len(world.base):]
    english = b.get(world.base + moved.location)
    assert '<html lang="en">' in english.text and "My documents" in english.text
    assert b.get(world.base + "/portal/lang?to=en&next=https://evil.example/").location == "/portal/"


def test_the_stylesheet_is_served_and_pages_need_no_inline_style(world):
    b = sign_in(world, "paul")
    css = b.get(world.base + "/portal/style.css")
    assert css.status == 200 and "@media" in css.text
    page = b.get(world.record_url(W.PAUL, "access"))
    assert "style=" not in page.text and "<script" not in page.text
    # every visible input has a label
    for ident in re.findall(r'<input type="(?:text|date)" id="([^"]+)"', page.text):
        assert f'<label for="{ident}">' in page.text


def test_a_legal_representative_opens_a_minors_record_only_while_the_patient_is_a_minor(world):
    access = world.access
    access.add_person(W.MARIE, RS.ACCESS_REPRESENTATIVE, W.PAUL)
    try:
        b = sign_in(world, "paul")
        adult = b.get(world.record_url(W.MARIE))
        assert adult.status == 404                           # a representative of an adult sees nothing
        assert b.get(world.base + "/portal/").status == 303  # straight to his own record
        access.set_flag(W.MARIE, "minor", True)
        home = b.get(world.base + "/portal/")
        assert home.status == 200 and 'id="records"' in home.text
        assert world.record_url(W.MARIE)[len(world.base):].replace("&", "&amp;") in home.text
        page = b.get(world.record_url(W.MARIE))
        assert page.status == 200 and rows(page.text)       # her documents, as the policy shows them to him
    finally:
        access.set_flag(W.MARIE, "minor", False)
        access.remove_person(W.MARIE, RS.ACCESS_REPRESENTATIVE, W.PAUL)
