"""End to end in a real headless browser: `python app.py model=tiny` on a free loopback port, driven by
Playwright through Debian's chromium (Playwright's own browser download is not possible here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real entry point in a subprocess, waited for on /healthz, stopped after the module."""
    port, run_dir = free_port(), tmp_path_factory.mktemp("app")
    command = [
        sys.executable, "app.py", "model=tiny", f"port={port}", "threads=1",
        f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    log = (run_dir / "app.out").open("w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    assert json.load(response)["model_loaded"] is True
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"app.py did not start:\n{(run_dir / 'app.out').read_text()}")
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser.pages[0] if browser.pages else browser.new_page()
        browser.close()


def test_type_a_prompt_click_generate_and_see_the_image(page, app_url: str, tmp_path: Path) -> None:
    page.goto(app_url)
    page.fill("#prompt", "a red circle on the left")
    page.fill("#steps", "2")
    page.fill("#seed", "7")
    page.click("#generate")
    image = page.locator("#result")
    sync_api.expect(image).to_have_attribute("src", re.compile(r"^blob:"), timeout=60_000)
    sync_api.expect(image).to_be_visible()
    assert page.evaluate("document.getElementById('result').naturalWidth") == 64
    sync_api.expect(page.locator("#status")).to_contain_text("Seed 7")
    page.screenshot(path=str(tmp_path / "generated.png"))


def test_a_refused_request_shows_a_readable_error(page, app_url: str) -> None:
    page.goto(app_url)
    page.fill("#prompt", "a blue square")
    page.evaluate("document.getElementById('steps').removeAttribute('max')")  # get past the browser's own check
    page.fill("#steps", "500")
    page.click("#generate")
    sync_api.expect(page.locator("#error")).to_contain_text("steps=500: expected at most 50", timeout=30_000)
