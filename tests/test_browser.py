"""End to end in a real headless browser: the app on the tiny model behind waitress on a free loopback port,
driven by Playwright through Debian's chromium (Playwright's own browser download is not possible here).
The real pipeline renders; a per-step delay makes the progress visible (tiny steps take milliseconds)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ldm.generation.checkpoints import build_model
from ldm.generation.loading import prepare_for_inference
from ldm.serving.configure import app_from_config
from ldm.serving.server import make_waitress
from tests.conftest import compose_config

DOCS = Path(__file__).resolve().parents[1] / "docs"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a sandbox with no network: without the background-networking ones chromium keeps
# trying (and failing) to reach Google's hosts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright; .ci/run installs it)"
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK), reason="chromium is not installed (apt-get install chromium; .ci/run does)"
    ),
]


@pytest.fixture(scope="module")
def app_url(cache_dir: Path) -> Iterator[str]:
    cfg = compose_config("app", ["model=tiny", f"paths.cache_dir={cache_dir}", "keep_images=false"])
    model = build_model(cfg.model)
    prepare_for_inference(model, torch.device("cpu"), "off")
    app = app_from_config(cfg, model, step_hook=lambda job: time.sleep(0.15))
    server = make_waitress(app, "127.0.0.1", 0, threads=8)
    threading.Thread(target=server.run, daemon=True).start()
    yield f"http://127.0.0.1:{server.effective_port}"
    app.extensions["ldm_queue"].close()
    server.close()


@pytest.fixture(scope="module")
def playwright() -> Iterator:
    with sync_api.sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def page(playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    profile = tmp_path_factory.mktemp("chromium-profile")
    browser = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    yield browser.pages[0] if browser.pages else browser.new_page()
    browser.close()


def bar_value(page) -> int:
    return int(page.evaluate("document.getElementById('bar').value"))


def test_watch_a_render_cancel_it_then_see_the_next_in_the_history(page, app_url: str) -> None:
    expect = sync_api.expect
    page.set_viewport_size({"width": 900, "height": 1000})
    page.goto(app_url)
    page.fill("#prompt", "a red circle on the left")
    page.fill("#steps", "40")
    page.fill("#seed", "7")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Step ", timeout=30_000)
    page.wait_for_function("document.getElementById('bar').value >= 2", timeout=30_000)
    first_value, first_preview = bar_value(page), page.get_attribute("#preview", "data-step")
    page.wait_for_function(f"document.getElementById('bar').value >= {first_value + 3}", timeout=30_000)
    assert bar_value(page) > first_value  # the progress bar moves
    page.wait_for_function(f"document.getElementById('preview').dataset.step > {first_preview or 0}")
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 8  # a preview image loaded
    expect(page.locator("#status")).to_contain_text("left")
    page.click("#cancel")
    expect(page.locator("#status")).to_contain_text("cancelled", timeout=30_000)
    assert bar_value(page) < 40

    page.fill("#steps", "3")
    page.click("#generate")
    figure = page.locator("#history figure.done-image")
    expect(figure).to_have_count(1, timeout=60_000)
    expect(figure).to_contain_text("a red circle on the left")
    expect(figure).to_contain_text("seed 7 · 3 steps")
    assert figure.locator("a").get_attribute("download") == "image-7.png"
    assert page.evaluate("document.querySelector('#history img').naturalWidth") == 64
    expect(page.locator("#status")).to_contain_text("Done: step 3/3")
    if os.environ.get("LDM_SCREENSHOT"):  # refresh docs/app.png: LDM_SCREENSHOT=1 pytest tests/test_browser.py
        page.fill("#steps", "40")  # mid-render, with the finished image in the gallery below
        page.click("#generate")
        page.wait_for_function("document.getElementById('bar').value >= 5", timeout=30_000)
        page.screenshot(path=str(DOCS / "app.png"), full_page=True)
        page.click("#cancel")
        expect(page.locator("#status")).to_contain_text("cancelled", timeout=30_000)


def test_a_refused_request_shows_a_readable_error(page, app_url: str) -> None:
    page.goto(app_url)
    page.fill("#prompt", "a blue square")
    page.evaluate("document.getElementById('steps').removeAttribute('max')")  # get past the browser's own check
    page.fill("#steps", "500")
    page.click("#generate")
    sync_api.expect(page.locator("#error")).to_contain_text("steps=500: expected at most 50", timeout=30_000)


def test_without_event_source_the_page_polls(page, app_url: str) -> None:
    polling = page.context.new_page()  # a second tab of the same browser
    try:
        polling.add_init_script("delete window.EventSource")
        polling.goto(app_url)
        polling.fill("#prompt", "a blue square")
        polling.fill("#steps", "4")
        polling.fill("#seed", "3")
        polling.click("#generate")
        sync_api.expect(polling.locator("#history figure.done-image")).to_have_count(1, timeout=60_000)
        sync_api.expect(polling.locator("#status")).to_contain_text("Done: step 4/4")
    finally:
        polling.close()


def test_a_second_browser_context_cannot_see_or_cancel_the_first_ones_job(playwright, app_url: str) -> None:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        first, second = browser.new_context().new_page(), browser.new_context().new_page()  # two cookie jars
        first.goto(app_url)
        first.fill("#prompt", "my private prompt")
        first.fill("#steps", "40")
        first.click("#generate")
        sync_api.expect(first.locator("#status")).to_contain_text("Step ", timeout=30_000)
        job_id = first.evaluate("fetch('/jobs').then(r => r.json()).then(b => b.jobs[0].id)")
        second.goto(app_url)
        seen = second.evaluate(
            """async (id) => ({
                status: (await fetch(`/jobs/${id}`)).status,
                events: (await fetch(`/jobs/${id}/events`)).status,
                image: (await fetch(`/jobs/${id}/image.png`)).status,
                cancel: (await fetch(`/jobs/${id}`, {method: "DELETE"})).status,
                list: (await (await fetch('/jobs')).json()).jobs,
            })""",
            job_id,
        )
        assert seen == {"status": 404, "events": 404, "image": 404, "cancel": 404, "list": []}
        assert "my private prompt" not in second.content()
        state = first.evaluate("(id) => fetch(`/jobs/${id}`).then(r => r.json()).then(j => j.state)", job_id)
        assert state == "running"  # the second context's DELETE did nothing
        first.click("#cancel")
        sync_api.expect(first.locator("#status")).to_contain_text("cancelled", timeout=30_000)
    finally:
        browser.close()
