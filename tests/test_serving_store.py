"""Nothing lost on restart: finished images written atomically to `out_dir` (a PNG with its settings, as
sample.py writes them, and a sidecar), listed and served to their owner by the next start; a kill -9 during a
render leaves no partial file. Real app, waitress on loopback; the restart test runs app.py itself."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ldm.generation.output import METADATA_KEYS
from tests.conftest import compose_config
from tests.live_app import (
    OTHER,
    REPO,
    Live,
    fetch,
    fetch_or_none,
    final,
    free_port,
    get_json,
    make_app,
    submit,
    tiny_model,
    wait_for,
)


@pytest.fixture(scope="module")
def app_cfg(cache_dir: Path):
    return compose_config("app", ["model=tiny", f"paths.cache_dir={cache_dir}"])


@pytest.fixture(scope="module")
def model(app_cfg):
    return tiny_model(app_cfg)


def test_finished_images_are_on_disk_and_the_next_start_serves_them_to_their_owner(model, app_cfg, tmp_path) -> None:
    first = Live(make_app(model, app_cfg, out_dir=str(tmp_path), calibrate=False))
    try:
        job_id = submit(first, steps=2, seed=9, prompt="a red circle")
        final(first, job_id)
        png = fetch(f"{first.url}/jobs/{job_id}/image.png")[2]
    finally:
        first.close()
    [stored] = tmp_path.glob("*.png")
    assert stored.name == f"a-red-circle-9-{job_id}.png" and stored.read_bytes() == png
    written = set(METADATA_KEYS) - {"guidance_rescale"}  # written only where it is not 0 (the app's default)
    assert set(Image.open(stored).text) == written  # the same text chunks as sample.py's files
    (tmp_path / f".{stored.name}.x.partial").write_bytes(b"\x89PNG half")  # a write a kill -9 interrupted
    second = Live(make_app(model, app_cfg, out_dir=str(tmp_path), calibrate=False))
    try:
        assert not list(tmp_path.glob(".*.partial"))  # removed at start
        listed = get_json(f"{second.url}/jobs")["jobs"]
        assert [(j["id"], j["state"], j["seed"], j["prompt"]) for j in listed] == [(job_id, "done", 9, "a red circle")]
        assert fetch(f"{second.url}/jobs/{job_id}/image.png")[2] == png
        assert get_json(f"{second.url}/jobs/{job_id}")["state"] == "done"
        other = {"X-Owner-Token": OTHER}
        assert fetch(f"{second.url}/jobs/{job_id}/image.png", headers=other)[0] == 404
        assert json.loads(fetch(f"{second.url}/jobs", headers=other)[2]) == {"jobs": []}
        assert get_json(f"{second.url}/healthz")["images_stored"] == 1
    finally:
        second.close()


def test_keep_images_false_writes_nothing(model, cache_dir: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        "app", ["model=tiny", f"paths.cache_dir={cache_dir}", "keep_images=false", f"out_dir={tmp_path}"]
    )
    server = Live(make_app(model, cfg, calibrate=False))
    try:
        final(server, submit(server, steps=1))
    finally:
        server.close()
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_kill_9_during_a_render_leaves_no_partial_file_and_the_restart_serves_what_was_done(
    cache_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "images"
    port = free_port()
    command = [sys.executable, "app.py", "model=tiny", f"port={port}", f"paths.cache_dir={cache_dir}",
               f"hydra.run.dir={tmp_path}", f"out_dir={out}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_for(lambda: (r := fetch_or_none(f"{url}/healthz")) and r[0] == 200, timeout=120, every=0.3)
        return process

    process = start()
    try:
        done = json.loads(fetch(f"{url}/jobs", {"prompt": "a blue square", "steps": 2, "seed": 4})[2])["id"]
        wait_for(lambda: get_json(f"{url}/jobs/{done}")["state"] == "done")
        png = fetch(f"{url}/jobs/{done}/image.png")[2]
        body = {"prompt": "a big render", "steps": 50, "width": 768, "height": 768}
        killed = json.loads(fetch(f"{url}/jobs", body)[2])["id"]
        wait_for(lambda: get_json(f"{url}/jobs/{killed}")["step"] >= 1, every=0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert get_json_or_none(f"{url}/healthz") is None
        files = sorted(p.name for p in out.iterdir())
        assert files == sorted([f"a-blue-square-4-{done}.png", f"a-blue-square-4-{done}.json"]), files
        process = start()
        assert [j["id"] for j in get_json(f"{url}/jobs")["jobs"]] == [done]
        assert fetch(f"{url}/jobs/{done}/image.png")[2] == png
        assert Image.open(io.BytesIO(png)).text["prompt"] == "a blue square"
        assert fetch(f"{url}/jobs/{killed}")[0] == 404
    finally:
        process.kill()
        process.wait(timeout=30)


def get_json_or_none(url: str):
    answer = fetch_or_none(url)
    return None if answer is None else json.loads(answer[2])
