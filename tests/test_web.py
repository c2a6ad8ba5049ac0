"""The web page in headless Debian chromium (Playwright) against the real server: upload a reference,
type a modification, see results, click one to refine, the history of turns; phone width.
Screenshots are kept in ``test-artifacts/``."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CIRLAB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = [pytest.mark.slow,  # a real browser: in make test, not make test-fast
              pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no chromium at {CHROMIUM} (make setup installs it)")]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                              "--disable-background-networking"])
        yield b
        b.close()


def test_upload_search_refine_and_history(served, browser):
    base, _, ds, _ = served
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    page.wait_for_selector("#gallery .card")  # the random pick of references loaded
    assert "sum over 16 images" in page.inner_text("#info")

    page.set_input_files("#upload", str(ds / "images" / "img2.png"))
    page.wait_for_selector("#reference-image")
    assert "uploaded: img2.png" in page.inner_text("#reference")
    page.fill("#text", "make it look like shape 5")
    page.select_option("#k", "8")
    page.click("#search")
    page.wait_for_selector("#results .card .score")
    cards = page.locator("#results .card")
    assert cards.count() == 8
    scores = [float(s) for s in page.locator("#results .card .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    assert "composed search" in page.inner_text("#status")
    # every thumbnail in the grid really loaded
    assert page.evaluate("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")

    picked = cards.nth(1)
    picked_id, picked_name = picked.get_attribute("data-id"), picked.get_attribute("title")
    picked.click()  # refine: the result becomes the next reference
    assert picked_name in page.inner_text("#reference")
    page.fill("#text", "make it look like shape 9")
    page.click("#search")
    page.wait_for_function("document.querySelectorAll('#history li').length === 2")
    ids = page.locator("#results .card").evaluate_all("els => els.map(e => e.dataset.id)")
    assert picked_id not in ids and len(ids) == 8  # the reference is left out of its own results
    history = page.locator("#history li").all_inner_texts()
    assert "make it look like shape 5" in history[0] and "make it look like shape 9" in history[1]
    page.screenshot(path=str(ARTIFACTS / "web-refine.png"), full_page=True)

    page.locator("#history li").first.click()  # back to turn 1
    assert page.input_value("#text") == "make it look like shape 5"
    assert "uploaded: img2.png" in page.inner_text("#reference")

    page.select_option("#history-mode", "mean")  # turn 1 again, reading the two before it
    with page.expect_response("**/search") as answer:
        page.click("#search")
    page.wait_for_function("document.querySelectorAll('#history li').length === 3")
    query = answer.value.json()["query"]
    assert query["history"] == 2 and query["history_mode"] == "mean"
    # turn 1's upload is not sent again (its text is), turn 2's gallery reference is, and this turn's upload
    assert query["searched"] == [{"image": False, "text": "make it look like shape 5"},
                                 {"image": True, "text": "make it look like shape 9"},
                                 {"image": True, "text": "make it look like shape 5"}]
    assert "reading 2 earlier turns (mean)" in page.inner_text("#status")
    page.click("#new-session")
    assert page.locator("#history li").count() == 0

    page.fill("#text", "")
    page.click("#clear-reference")
    page.click("#search")
    assert "Type a modification" in page.inner_text("#status")  # nothing to search: said, not sent
    page.fill("#text", "x" * 1000 + "y")  # maxlength keeps the field to the server's limit
    assert len(page.input_value("#text")) == 1000
    assert not errors, errors
    page.close()


def test_pick_from_gallery_text_only_and_phone_width(served, browser):
    base, *_ = served
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page.goto(base + "/")
    page.wait_for_selector("#gallery .card")
    page.fill("#gallery-q", "shape 12")
    page.wait_for_function("document.querySelectorAll('#gallery .card').length === 1")
    page.click("#gallery .card")
    assert "shape 12" in page.inner_text("#reference")
    page.click("#clear-reference")
    page.fill("#text", "shape number 3")
    page.click("#search")
    page.wait_for_selector("#results .card")
    assert "text search" in page.inner_text("#status")
    page.fill("#text", "shpae number 3")  # a slip: the page says what was searched for
    page.click("#search")
    page.wait_for_function("document.querySelector('#status').textContent.includes('Searched for')")
    assert "Searched for: “shape number 3” (shpae → shape)" in page.inner_text("#status")
    # nothing wider than the phone's screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "web-phone.png"), full_page=True)
    page.close()


def test_the_api_docs_render_offline(served, browser):
    base, *_ = served
    page = browser.new_page()
    page.goto(base + "/docs")
    page.wait_for_selector(".opblock", timeout=20_000)  # Swagger UI drew the operations from /openapi.json
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/search" in paths and "/health" in paths
    page.close()
