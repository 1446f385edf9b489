"""The web app's batch worklist (grouped by disposition, then risk), case view (disposition,
overlay, feedback, questions), the untrained mark and neutral styling on every list and card,
and mobile layout, in Chromium against the real API, Postgres and S3. Cases are finished analyses written to
the database and object store as the worker writes them (tests/e2e/seeding.py), so their
risk order is chosen, not left to an untrained model."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.clinical import disposition
from shared.clock import utcnow
from shared.db import session_scope
from shared.tables import Batch
from tests.e2e.browser import (
    DISCLAIMER,
    GREEN_OR_RED,
    browser_page_fixture,  # noqa: F401 (the browser_page fixture)
    green_or_red,
    screenshot,
    sign_in,
    wait_until,
)
from tests.e2e.seeding import result_for, seed_analysis, seed_batch, seed_queued

COLOURS = "(e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor])"
# What a row shows of its result: the diagnosis or band (text), the disposition, the risk pill.
ROW_OUTPUT = ".case[data-status='succeeded']"


def _client(api_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture
def trained_batch(context, tenant_key):
    """Seven cases: six results with trained weights (one urgent referral, three for clinician
    review, one routine, one stored before dispositions existed, whose high probability must not
    lift it above the others) and one rejected."""
    tenant_id, _ = tenant_key
    batch_id = seed_batch(context, tenant_id, "Tuesday clinic")
    cases = {
        "case-low": result_for(0.22, disposition="clinician_review"),
        "case-legacy": result_for(0.97),
        "case-high": result_for(0.93, skin_group="brown", ita=4.0, disposition="urgent_referral",
                                reasons=["high_probability", "brown_or_dark_skin"]),
        "case-routine": result_for(0.04, disposition="routine"),
        "case-near": result_for(0.55, disposition="clinician_review", reasons=["near_threshold", "above_rule_out"]),
        "case-medium": result_for(0.71, uncertainty=0.2, disposition="clinician_review",
                                  reasons=["high_uncertainty", "above_rule_out"]),
    }
    for seed, (ref, result) in enumerate(cases.items()):
        seed_analysis(
            context, tenant_id, result=result, weights="trained", batch_id=batch_id, external_id=ref, seed=seed
        )
    seed_analysis(
        context, tenant_id, status="rejected", batch_id=batch_id, external_id="case-blurry",
        rejection={"code": "blurry", "detail": "blur score 14.0 below 100.0"},
    )
    return batch_id


def _rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#worklist > li.case",
        "rows => rows.map(r => ({id: r.dataset.id, status: r.dataset.status, selected: r.getAttribute('aria-selected'),"
        " disposition: r.dataset.disposition, neutral: r.dataset.neutral, text: r.innerText,"
        " marks: [...r.querySelectorAll('.untrained-mark')].map(m => m.dataset.weights)}))",
    )


def _groups(page) -> list[list]:
    return page.eval_on_selector_all(
        "#worklist > li.group-head", "heads => heads.map(h => [h.dataset.group, h.textContent])"
    )


def _words(client: httpx.Client) -> dict[str, str]:
    """The dispositions in the API's words (GET /v1/dispositions)."""
    body = client.get("/v1/dispositions").json()
    assert [d["code"] for d in body["dispositions"]] == list(disposition.DISPOSITIONS)
    return {d["code"]: d["text"] for d in body["dispositions"]}


def test_batch_worklist_grouped_by_disposition_then_risk_and_keyboard_opens_cases(
    browser_page, api_url, tenant_key, trained_batch
):
    page = browser_page
    _, key = tenant_key
    with _client(api_url, key) as client:
        triage = client.get(f"/v1/batches/{trained_batch}/results", params={"format": "json"}).json()
        words = _words(client)

    sign_in(page, api_url, key, "/#/batches")
    page.click(f"#batches a[data-id='{trained_batch}']")
    page.wait_for_selector("#worklist > li.case")
    assert page.inner_text("#batch-heading") == "Tuesday clinic"
    assert "7 of 7 done (100%)" in page.inner_text("#batch-progress-text")
    assert page.locator("#batch-weights").is_hidden()
    assert DISCLAIMER in page.inner_text("#disclaimer")

    rows = _rows(page)
    assert [r["id"] for r in rows] == [item["analysis_id"] for item in triage["items"]]
    refs = [r["text"].split("\n")[1] for r in rows]
    assert refs == [
        "case-high", "case-medium", "case-near", "case-low", "case-routine", "case-legacy", "case-blurry"
    ], refs
    assert [r["disposition"] for r in rows] == [item["disposition"] or "" for item in triage["items"]]
    assert [r["disposition"] for r in rows] == ["urgent_referral"] + ["clinician_review"] * 3 + ["routine", "", ""]
    assert _groups(page) == [
        ["urgent_referral", f"{words['urgent_referral']} (1)"],
        ["clinician_review", f"{words['clinician_review']} (3)"],
        ["routine", f"{words['routine']} (1)"],
        ["", "No disposition (2)"],
    ]
    for row in rows[:5]:
        assert words[row["disposition"]] in row["text"], row
        assert row["marks"] == [] and row["neutral"] == "false", "trained weights: no untrained mark"
    assert (triage["summary"]["dispositions"] == triage["batch"]["dispositions"]
            == {"urgent_referral": 1, "clinician_review": 3, "routine": 1})
    counts = page.eval_on_selector_all("#batch-dispositions dt", "ts => ts.map(t => [t.dataset.disposition, "
                                       "t.textContent, t.nextElementSibling.textContent, t.className])")
    assert [c[:3] for c in counts] == [
        ["urgent_referral", words["urgent_referral"], "1"], ["clinician_review", words["clinician_review"], "3"],
        ["routine", words["routine"], "1"],
    ]
    assert all("disp-neutral" not in c[3] for c in counts), "trained weights: the dispositions keep their colours"
    assert rows[0]["selected"] == "true"
    review_text = [r["text"] for r in rows if "Review:" in r["text"]]
    assert len(review_text) == sum(1 for item in triage["items"] if item["needs_review"]) >= 3
    blurry = next(item for item in triage["items"] if item["status"] == "rejected")
    if blurry.get("retake_advice"):
        assert blurry["retake_advice"] in rows[-1]["text"]

    groups = page.eval_on_selector_all("#equity-table tbody tr", "rows => rows.map(r => r.dataset.group)")
    assert groups == [g["skin_group"] for g in triage["summary"]["equity"]]
    screenshot(page, "worklist")

    page.click("#filter-review")
    assert {r["id"] for r in _rows(page)} == {i["analysis_id"] for i in triage["items"] if i["needs_review"]}
    page.click("#filter-rejected")
    assert [r["status"] for r in _rows(page)] == ["rejected"]
    page.click("#filter-all")

    page.focus("#worklist")
    page.keyboard.press("j")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("k")
    page.keyboard.press("j")
    assert [r["selected"] for r in _rows(page)][:3] == ["false", "false", "true"]
    page.keyboard.press("Enter")
    third = triage["items"][2]["analysis_id"]
    page.wait_for_selector("#analysis-body[data-status='succeeded']")
    wait_until(page, f"document.getElementById('analysis-id').textContent === '{third}'")
    assert page.url.endswith(f"#/analyses/{third}")
    assert page.inner_text("#case-position") == "Case 3 of 7"
    assert page.inner_text("#analysis-ref") == "Ref case-near"
    # The card says what should happen next, and why, in the API's words.
    wait_until(page, f"document.getElementById('disposition-text').textContent === {words['clinician_review']!r}")
    with _client(api_url, key) as client:
        reasons = {r["code"]: r["text"] for r in client.get("/v1/dispositions").json()["reasons"]}
    shown = page.eval_on_selector_all("#disposition-reasons li", "items => items.map(i => i.textContent)")
    assert shown == [reasons["near_threshold"], reasons["above_rule_out"]]
    assert page.locator("#safety-netting").is_hidden() and page.locator("#diagnosis-mark .untrained-mark").count() == 0

    page.keyboard.press("j")
    fourth = triage["items"][3]["analysis_id"]
    wait_until(page, f"document.getElementById('analysis-id').textContent === '{fourth}'")
    assert page.inner_text("#case-position") == "Case 4 of 7"
    # Trained weights: the colours mean something.
    assert "risk-low" in page.get_attribute("#risk-band", "class")

    page.keyboard.press("j")
    fifth = triage["items"][4]["analysis_id"]
    wait_until(page, f"document.getElementById('analysis-id').textContent === '{fifth}'")
    wait_until(page, f"document.getElementById('disposition-text').textContent === {words['routine']!r}")
    assert page.inner_text("#safety-netting-text") == disposition.SAFETY_NETTING
    assert "disp-routine" in page.get_attribute("#disposition-text", "class")
    assert page.locator("#result-notice").is_hidden(), "trained weights: no notice"
    screenshot(page, "case-routine")

    page.keyboard.press("Escape")
    page.wait_for_selector("#view-batch:not([hidden]) #worklist > li.case")
    assert page.url.endswith(f"#/batches/{trained_batch}")


def test_a_canceled_batch_does_not_look_finished(browser_page, api_url, context, tenant_key):
    """Issue 25: a canceled batch read "60 of 60 done · COMPLETED"; its canceled items never ran."""
    page = browser_page
    tenant_id, key = tenant_key
    batch_id = seed_batch(context, tenant_id, "canceled backlog")
    seed_analysis(context, tenant_id, result=result_for(0.3), batch_id=batch_id, external_id="ran")
    for n in range(2):
        seed_analysis(context, tenant_id, status="canceled", batch_id=batch_id, external_id=f"never-{n}", seed=n)
    with session_scope(context.session_factory) as session:
        batch = session.get(Batch, batch_id)
        batch.sealed_at = batch.canceled_at = batch.completed_at = utcnow()

    sign_in(page, api_url, key, f"/#/batches/{batch_id}")
    page.wait_for_selector("#worklist > li.case")
    wait_until(page, "document.getElementById('batch-progress-text').dataset.state === 'canceled'")
    assert page.inner_text("#batch-progress-text") == "1 of 3 analysed, 2 canceled · canceled"
    assert "2 unfinished items were canceled and not analysed" in page.inner_text("#batch-eta")
    assert "All items finished" not in page.inner_text("#batch-eta")

    page.goto(api_url + "/#/batches")
    page.wait_for_selector(f"#batches a[data-id='{batch_id}'] .pill")
    assert page.inner_text(f"#batches a[data-id='{batch_id}'] .pill").lower() == "canceled"


def test_the_batch_page_follows_progress_over_the_event_stream(browser_page, api_url, context, tenant_key):
    """Issue 25: the batch page shows a change as the API streams it (fetch() with the key in the
    Authorization header), not by polling, and stops following once the batch ended."""
    page = browser_page
    tenant_id, key = tenant_key
    batch_id = seed_batch(context, tenant_id, "live backlog")
    seed_analysis(context, tenant_id, result=result_for(0.3), batch_id=batch_id, external_id="ran")
    for _ in range(2):
        seed_queued(context, tenant_id, batch_id)
    answers = []
    page.on("response", lambda answer: answers.append(answer))
    sign_in(page, api_url, key, f"/#/batches/{batch_id}")
    page.wait_for_selector("#worklist > li.case")
    wait_until(page, "document.getElementById('view-batch').dataset.eventId")
    assert page.get_attribute("#view-batch", "data-live") == "sse"
    assert page.inner_text("#batch-progress-text") == "1 of 3 done (33%) · open"

    with _client(api_url, key) as client:
        assert client.post(f"/v1/batches/{batch_id}/cancel").json()["canceled_now"] == 2
        streamed = client.get(f"/v1/batches/{batch_id}/events").text  # its progress now; it has ended
    wait_until(page, "document.getElementById('batch-progress-text').dataset.state === 'canceled'", timeout=15)
    assert page.inner_text("#batch-progress-text") == "1 of 3 analysed, 2 canceled · canceled"
    final_id = [line[4:] for line in streamed.splitlines() if line.startswith("id: ")][-1]
    assert page.get_attribute("#view-batch", "data-event-id") == final_id
    streams = [a for a in answers if a.url == f"{api_url}/v1/batches/{batch_id}/events"]
    assert len(streams) == 1 and streams[0].headers["content-type"].startswith("text/event-stream")
    assert streams[0].request.all_headers()["authorization"] == f"Bearer {key}"


def test_untrained_results_are_neutral_and_marked_in_every_list_and_card(browser_page, api_url, context, tenant_key):
    """Every row and card that shows a diagnosis, band or disposition from untrained weights
    carries the untrained mark and wears no green or red (computed styles); a disposition stored
    as urgent or routine beside untrained weights is shown as clinician review."""
    page = browser_page
    tenant_id, key = tenant_key
    batch_id = seed_batch(context, tenant_id, "untrained backlog")
    high = seed_analysis(
        context, tenant_id, result=result_for(0.95, disposition="urgent_referral"), weights="untrained",
        batch_id=batch_id, external_id="u-high",
    )
    seed_analysis(
        context, tenant_id, result=result_for(0.1), weights="untrained", batch_id=batch_id, external_id="u-low", seed=2
    )
    seed_analysis(
        context, tenant_id, result=result_for(0.489, disposition="routine"), weights="synthetic", batch_id=batch_id,
        external_id="s-mid", seed=3,
    )
    with _client(api_url, key) as client:
        words = _words(client)
        triage = client.get(f"/v1/batches/{batch_id}/results", params={"format": "json"}).json()
    assert {item["disposition"] for item in triage["items"]} == {"clinician_review"}
    assert triage["summary"]["dispositions"] == {"urgent_referral": 0, "clinician_review": 3, "routine": 0}

    sign_in(page, api_url, key, f"/#/batches/{batch_id}")
    page.wait_for_selector("#worklist > li.case")
    assert page.locator("#batch-weights").is_visible()
    assert "NOT FOR CLINICAL USE" in page.inner_text("#batch-weights")
    rows = _rows(page)
    assert len(rows) == 3
    for row in rows:
        assert row["disposition"] == "clinician_review" and words["clinician_review"] in row["text"], row
        assert row["neutral"] == "true" and len(row["marks"]) == 1, row
    assert sorted(r["marks"][0] for r in rows) == ["synthetic", "untrained", "untrained"]
    assert _groups(page) == [["clinician_review", f"{words['clinician_review']} (3)"]]
    pills = page.eval_on_selector_all(".risk-pill", f"els => els.map(e => [e.className, ...{COLOURS}(e)])")
    assert len(pills) == 3
    for class_name, color, background in pills:
        assert "risk-neutral" in class_name
        assert color not in GREEN_OR_RED and background not in GREEN_OR_RED
    assert green_or_red(page, ROW_OUTPUT) == []
    assert green_or_red(page, "#batch-counts") == [] and green_or_red(page, "#batch-dispositions") == []
    assert page.locator("#batch-dispositions .untrained-mark").count() == 1
    assert page.locator("#batch-dispositions dt.disp-neutral").count() == 1
    screenshot(page, "worklist-untrained")

    page.keyboard.press("Enter")
    wait_until(page, f"document.getElementById('analysis-id').textContent === '{rows[0]['id']}'")
    page.wait_for_selector("#result:not([hidden])")
    with _client(api_url, key) as client:
        analysis = client.get(f"/v1/analyses/{rows[0]['id']}").json()
    assert analysis["id"] == str(high) and analysis["result"]["disposition"] == "clinician_review"
    badge = page.locator("#untrained-badge")
    assert badge.is_visible()
    assert "UNTRAINED MODEL" in badge.inner_text() and "NOT FOR CLINICAL USE" in badge.inner_text()
    if analysis["model"].get("banner"):
        assert analysis["model"]["banner"] in badge.inner_text()
    for selector in ("#diagnosis", "#risk-band"):
        assert page.get_attribute(selector, "data-neutral") == "true"
        color, background = page.eval_on_selector(selector, f"e => {COLOURS}(e)")
        assert color not in GREEN_OR_RED and background not in GREEN_OR_RED, (selector, color, background)
    assert page.inner_text("#result-notice") == analysis["result"]["notice"]
    assert page.inner_text("#disposition-text") == words["clinician_review"]
    assert page.get_attribute("#disposition", "data-neutral") == "true"
    assert page.locator("#diagnosis-mark .untrained-mark").is_visible()
    assert page.locator("#disposition-mark .untrained-mark").is_visible()
    assert page.locator("#disposition-note").is_visible() and page.locator("#safety-netting").is_hidden()
    assert green_or_red(page, "#result") == [] and green_or_red(page, "#timeline") == []
    assert green_or_red(page, "#untrained-badge") == []
    screenshot(page, "case-untrained")

    # The recent list: every row with a result is marked and neutral (no green SUCCEEDED badge).
    page.goto(f"{api_url}/#/")
    page.wait_for_selector("#recent button")
    recent = page.eval_on_selector_all(
        "#recent button", "bs => bs.map(b => [b.dataset.neutral, b.querySelectorAll('.untrained-mark').length,"
        " b.querySelector('.pill').className, (b.querySelector('[data-disposition]') || {}).textContent])",
    )
    assert len(recent) == 3
    for neutral, marks, pill, shown in recent:
        assert (neutral, marks, pill, shown) == ("true", 1, "pill pill-neutral", words["clinician_review"])
    assert green_or_red(page, "#recent") == []
    screenshot(page, "recent-untrained")


@pytest.fixture
def one_case(context, tenant_key):
    result = result_for(0.64, skin_group="tan", ita=20.0)
    return seed_analysis(context, tenant_key[0], result=result, weights="untrained", external_id="solo")


def test_feedback_is_saved_and_shown_after_reload(browser_page, api_url, tenant_key, one_case):
    page = browser_page
    _, key = tenant_key
    sign_in(page, api_url, key, f"/#/analyses/{one_case}")
    page.wait_for_selector("#feedback:not([hidden])")
    page.click("#feedback-submit")
    page.wait_for_selector("#problem:not([hidden])")
    assert "Agree or Disagree" in page.inner_text("#problem-detail")

    page.check("#agrees-no")
    page.fill("#final-diagnosis", "dysplastic naevus")
    page.fill("#histopathology", "compound naevus with mild atypia")
    page.fill("#feedback-notes", "excised 2026-11-20")
    page.click("#feedback-submit")
    page.wait_for_selector("#feedback-list li")
    assert page.inner_text("#feedback-state") == "Feedback saved."

    page.reload()
    page.wait_for_selector("#feedback-list li")
    shown = page.inner_text("#feedback-list")
    assert "Disagrees with the AI assessment" in shown
    assert "Final diagnosis: dysplastic naevus" in shown
    assert "Histopathology: compound naevus with mild atypia" in shown
    assert "Notes: excised 2026-11-20" in shown
    with _client(api_url, key) as client:
        feedback = client.get(f"/v1/analyses/{one_case}").json()["feedback"]
    assert len(feedback) == 1 and feedback[0]["agrees"] is False
    screenshot(page, "case-feedback")


def test_question_answer_is_shown_with_citations(browser_page, api_url, tenant_key, one_case):
    page = browser_page
    _, key = tenant_key
    sign_in(page, api_url, key, f"/#/analyses/{one_case}")
    page.wait_for_selector("#result:not([hidden])")
    page.fill("#question", "How irregular is the border, and is it melanoma?")
    page.click("#ask")
    page.wait_for_selector("#qa-list .qa")
    with _client(api_url, key) as client:
        stored = client.get(f"/v1/analyses/{one_case}/questions").json()["data"]
    assert len(stored) == 1
    answer = stored[0]["answer"]
    assert page.inner_text("#qa-list .qa-question") == "How irregular is the border, and is it melanoma?"
    assert page.inner_text("#qa-list .qa-answer .qa-text") == answer["text"]
    assert "UNTRAINED" in answer["text"]
    cited = page.eval_on_selector_all("#qa-list .qa-cited code", "els => els.map(e => e.textContent)")
    assert cited == answer["cited"] and "result.concepts.border" in cited

    page.fill("#question", "Does it itch?")
    page.keyboard.press("Enter")
    wait_until(page, "document.querySelectorAll('#qa-list .qa').length === 2")
    assert page.text_content("#qa-list .qa:first-child .qa-source") == "Outside what was measured"

    page.reload()
    wait_until(page, "document.querySelectorAll('#qa-list .qa').length === 2")
    screenshot(page, "case-questions")


def _cyan_pixels(png: bytes) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(((r < 90) & (g > 150) & (b > 170)).sum())


def test_overlay_outline_by_default_toggles_to_fill_with_opacity(browser_page, api_url, tenant_key, one_case):
    page = browser_page
    _, key = tenant_key
    sign_in(page, api_url, key, f"/#/analyses/{one_case}")
    wait_until(
        page,
        "(() => { const m = document.getElementById('mask-layer'), p = document.getElementById('original');"
        " return !m.hidden && m.complete && m.naturalWidth > 0 && p.complete && p.naturalWidth > 0; })()"
    )
    stage = page.locator("#viewer-stage")
    assert stage.get_attribute("data-mode") == "outline"
    assert page.get_attribute("#overlay-outline", "aria-checked") == "true"
    assert "mask-outline" in page.eval_on_selector("#mask-layer", "e => getComputedStyle(e).filter")
    outline = _cyan_pixels(stage.screenshot())

    page.click("#overlay-fill")
    assert stage.get_attribute("data-mode") == "fill"
    assert "mask-fill" in page.eval_on_selector("#mask-layer", "e => getComputedStyle(e).filter")
    fill = _cyan_pixels(stage.screenshot())
    # The outline is a thin ring; the fill covers the whole lesion.
    assert outline > 50, outline
    assert fill > 4 * outline, (outline, fill)
    screenshot(page, "overlay-fill")

    page.fill("#overlay-opacity", "0")
    assert page.eval_on_selector("#mask-layer", "e => getComputedStyle(e).opacity") == "0"
    assert _cyan_pixels(stage.screenshot()) < outline / 5
    assert page.inner_text("#overlay-opacity-value") == "0%"
    page.fill("#overlay-opacity", "40")
    assert page.eval_on_selector("#mask-layer", "e => getComputedStyle(e).opacity") == "0.4"
    page.click("#overlay-outline")
    assert stage.get_attribute("data-mode") == "outline"
    screenshot(page, "overlay-outline")


@pytest.mark.parametrize("width", [360, 390, 414])
def test_mobile_layout_has_no_horizontal_overflow(browser_page, api_url, context, tenant_key, width):
    page = browser_page
    tenant_id, key = tenant_key
    batch_id = seed_batch(context, tenant_id, "a batch with a rather long name for a narrow phone screen")
    case = seed_analysis(
        context, tenant_id, result=result_for(0.82, skin_group="dark", ita=-40.0), weights="untrained",
        batch_id=batch_id, external_id="a-long-client-reference-0123456789",
    )
    seed_analysis(
        context, tenant_id, status="rejected", batch_id=batch_id, external_id="rejected-one",
        rejection={"code": "no_lesion", "detail": "lesion covers 0.2% of the image, below 1.0%"}, seed=3,
    )
    page.set_viewport_size({"width": width, "height": 800})
    overflow = "document.documentElement.scrollWidth - window.innerWidth"

    sign_in(page, api_url, key, f"/#/analyses/{case}")
    page.wait_for_selector("#result:not([hidden])")
    page.fill("#question", "What is the skin tone and how big is the lesion in millimetres?")
    page.click("#ask")
    page.wait_for_selector("#qa-list .qa")
    assert page.evaluate(overflow) <= 0, f"analysis view overflows by {page.evaluate(overflow)} px at {width}"
    screenshot(page, f"mobile-{width}-case")

    page.goto(f"{api_url}/#/batches/{batch_id}")
    page.wait_for_selector("#worklist > li.case")
    # The case text keeps most of the row: the tags wrap below it rather than squeeze it.
    assert page.evaluate("document.querySelector('#worklist .case-main').getBoundingClientRect().width") > width * 0.6
    assert page.evaluate(overflow) <= 0, f"batch page overflows by {page.evaluate(overflow)} px at {width}"
    screenshot(page, f"mobile-{width}-batch")

    page.goto(f"{api_url}/#/batches")
    page.wait_for_selector("#batches li")
    assert page.evaluate(overflow) <= 0, f"batches list overflows by {page.evaluate(overflow)} px at {width}"
