"""Bounded under load: at most `limits.streams` open progress streams (503 + Retry-After past that) while
/healthz and job status still answer, enough server threads checked at start, finished jobs forgotten on a
timer, and ETAs that count unguided steps as half. Real app, waitress on loopback."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from ldm.errors import ConfigError
from ldm.generation.settings import SampleSettings
from ldm.serving.estimates import guided_fraction
from ldm.serving.server import check_server
from tests.conftest import compose_config
from tests.live_app import OWNER, Live, StepHook, fetch, final, get_json, make_app, submit, tiny_model, wait_for


@pytest.fixture(scope="module")
def app_cfg(cache_dir: Path):
    return compose_config("app", ["model=tiny", f"paths.cache_dir={cache_dir}", "keep_images=false"])


@pytest.fixture(scope="module")
def model(app_cfg):
    return tiny_model(app_cfg)


def open_stream(live: Live, job_id: str):
    request = urllib.request.Request(f"{live.url}/jobs/{job_id}/events", headers={"X-Owner-Token": OWNER})
    stream = urllib.request.urlopen(request, timeout=30)
    assert stream.readline().startswith(b"event: ")  # the server is in the generator: the slot is taken
    return stream


def test_streams_past_the_limit_get_503_while_healthz_and_status_answer(model, app_cfg) -> None:
    hook = StepHook()
    hook.delay = 0.1
    server = Live(make_app(model, app_cfg, streams=2, step_hook=hook, calibrate=False))
    try:
        job_id = submit(server, steps=30)
        streams = [open_stream(server, job_id) for _ in range(2)]
        status, headers, body = fetch(f"{server.url}/jobs/{job_id}/events")
        assert status == 503 and headers["Retry-After"] == "30" and "limits.streams" in json.loads(body)["error"]
        assert get_json(f"{server.url}/healthz")["streams_open"] == 2
        started = time.monotonic()
        assert fetch(f"{server.url}/healthz")[0] == 200 and get_json(f"{server.url}/jobs/{job_id}")["id"] == job_id
        assert time.monotonic() - started < 1
        for stream in streams:
            stream.close()
        # a closed client is noticed within a second (the stream checks waitress's client_disconnected)
        wait_for(lambda: get_json(f"{server.url}/healthz")["streams_open"] == 0, timeout=10)
        third = open_stream(server, job_id)
        third.close()
        fetch(f"{server.url}/jobs/{job_id}", method="DELETE")
        final(server, job_id)
    finally:
        server.close()


def test_too_few_server_threads_for_the_streams_and_queue_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"server_threads=8: expected an integer ≥ 15 \(limits.streams=8 \+ queue"):
        check_server("waitress", 8, streams=8, queue_size=4)
    check_server("waitress", 15, streams=8, queue_size=4)
    cfg = compose_config("app", [])
    check_server(cfg.server, cfg.server_threads, cfg.limits.streams, cfg.queue_size)  # the defaults fit


def test_finished_jobs_are_forgotten_on_a_timer_with_no_request(model, app_cfg) -> None:
    server = Live(make_app(model, app_cfg, keep_s=0.2, prune_every_s=0.1, calibrate=False))
    try:
        job_id = submit(server, steps=1)
        final(server, job_id)
        assert get_json(f"{server.url}/healthz")["jobs_kept"] == 1  # /healthz itself forgets nothing
        time.sleep(0.6)
        assert get_json(f"{server.url}/healthz")["jobs_kept"] == 0
        status, _, body = fetch(f"{server.url}/jobs/{job_id}", method="DELETE")  # pruned: 404, not 500
        assert status == 404 and "forgotten" in json.loads(body)["error"]
    finally:
        server.close()


@pytest.fixture(scope="module")
def base(app_cfg) -> SampleSettings:
    return SampleSettings.from_config(app_cfg, prompts=("a dog",), num_images=1, batch_size=1)


def test_the_eta_counts_unguided_steps_as_half(model, app_cfg, base: SampleSettings) -> None:
    server = Live(make_app(model, app_cfg))
    try:
        queue = wait_for(lambda: server.queue.estimate_s(base) and server.queue)  # after the start-up timing
    finally:
        server.close()
    every = replace(base, steps=15, guidance_interval=(0.0, 1.0))
    interval = replace(base, steps=15, guidance_interval=(0.2, 0.8))  # 9 of 15 guided
    assert guided_fraction(interval) == pytest.approx(9 / 15) and guided_fraction(replace(base, guidance_scale=1)) == 0
    assert queue.estimate_s(interval) / queue.estimate_s(every) == pytest.approx((1 + 9 / 15) / 2)
    unguided = replace(every, guidance_scale=1.0)
    assert queue.estimate_s(unguided) / queue.estimate_s(every) == pytest.approx(0.5)
