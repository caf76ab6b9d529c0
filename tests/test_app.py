"""The Flask app on the tiny model: each route, each bad input, the bounded queue, and a load test."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image
from werkzeug.serving import make_server

from ldm.generation.checkpoints import build_model
from ldm.generation.loading import prepare_for_inference
from ldm.generation.settings import Limits, SampleSettings
from ldm.serving.app import QueueFull, RenderQueue, create_app
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def app_cfg(cache_dir: Path):
    return compose_config("app", ["model=tiny", f"paths.cache_dir={cache_dir}"])


@pytest.fixture(scope="module")
def model(app_cfg):
    module = build_model(app_cfg.model)
    prepare_for_inference(module, torch.device("cpu"), app_cfg.attention_slicing)
    return module


def make_app(model, cfg, **changes):
    settings = {"queue_size": cfg.queue_size, "retry_after": cfg.retry_after, **changes}
    defaults = SampleSettings.from_config(cfg, prompts=(), num_images=1, batch_size=1)
    return create_app(model, defaults, Limits(**cfg.limits), **settings)


@pytest.fixture(scope="module")
def client(model, app_cfg):
    app = make_app(model, app_cfg)
    yield app.test_client()
    app.extensions["ldm_queue"].close()


def test_index_has_the_form(client) -> None:
    page = client.get("/").get_data(as_text=True)
    for element in ('id="prompt"', 'id="negative_prompt"', 'id="steps"', 'id="guidance_scale"', 'id="seed"'):
        assert element in page
    assert ">Generate</button>" in page and 'max="50"' in page  # the app's step limit


def test_generate_from_json_returns_a_png_with_the_seed(client) -> None:
    response = client.post("/generate", json={"prompt": "a red circle", "steps": 2, "seed": 11, "guidance_scale": 3})
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["X-Seed"] == "11"
    image = Image.open(io.BytesIO(response.data))
    assert image.size == (64, 64) and image.text["prompt"] == "a red circle" and image.text["steps"] == "2"
    again = client.post("/generate", json={"prompt": "a red circle", "steps": 2, "seed": 11, "guidance_scale": 3})
    assert again.data == response.data


def test_generate_from_a_form_without_a_seed_picks_one(client) -> None:
    form = {"prompt": "a blue square", "negative_prompt": "", "steps": "2", "guidance_scale": "7.5", "seed": ""}
    response = client.post("/generate", data=form)
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert int(response.headers["X-Seed"]) >= 0


def test_healthz(client) -> None:
    body = client.get("/healthz").get_json()
    assert body["model_loaded"] is True and body["queue_length"] == 0 and body["queue_size"] == 4


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 501}, "prompt of 501 characters: expected at most 500"),
        ({"prompt": "a", "steps": 0}, "steps=0: expected an integer ≥ 1"),
        ({"prompt": "a", "steps": 51}, "steps=51: expected at most 50"),
        ({"prompt": "a", "steps": "many"}, "steps=many: expected a number"),
        ({"prompt": "a", "steps": 2.5}, "steps=2.5: expected an integer"),
        ({"prompt": "a", "height": 60}, "height=60: expected null (the model's size) or a positive multiple of 8"),
        ({"prompt": "a", "width": 1024}, "width=1024: expected 64 to 768 pixels"),
        ({"prompt": "a", "guidance_scale": 21}, "guidance_scale=21.0: expected at most 20"),
        ({"prompt": "a", "guidance_scale": -1}, "guidance_scale=-1.0: expected a number ≥ 0"),
        ({"prompt": "a", "guidance_scale": "nan"}, "expected a finite number"),
        ({"prompt": "a", "seed": -1}, "seed=-1"),
        ({"prompt": "a", "scheduler": "lms"}, "scheduler='lms'"),
        ({"prompt": ["a", "b"]}, "prompt must be a string"),
    ],
)
def test_bad_input_is_a_400_with_the_reason(client, fields: dict, reason: str) -> None:
    responses = [client.post("/generate", json=fields)]
    if not isinstance(fields.get("prompt"), list):  # a form has no lists
        responses.append(client.post("/generate", data={k: str(v) for k, v in fields.items()}))
    for response in responses:
        assert response.status_code == 400, response.get_data(as_text=True)
        assert reason in response.get_json()["error"]


def test_a_body_that_is_not_an_object_is_a_400(client) -> None:
    response = client.post("/generate", json=["a dog"])
    assert response.status_code == 400 and "JSON object" in response.get_json()["error"]
    assert client.get("/generate").status_code == 405


def test_a_full_queue_answers_503_with_retry_after(model, app_cfg, monkeypatch) -> None:
    app = make_app(model, app_cfg, retry_after=7)
    monkeypatch.setattr(app.extensions["ldm_queue"], "submit", _raise_queue_full)
    response = app.test_client().post("/generate", json={"prompt": "a dog", "steps": 1})
    assert response.status_code == 503 and response.headers["Retry-After"] == "7"
    assert "busy" in response.get_json()["error"]
    app.extensions["ldm_queue"].close()


def _raise_queue_full(settings):
    raise QueueFull


def test_render_queue_runs_one_job_at_a_time_and_holds_at_most_size() -> None:
    gate, running, active, peak = threading.Event(), threading.Event(), [0], [0]

    def render(settings):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        running.set()
        gate.wait(10)
        active[0] -= 1
        return settings

    jobs = RenderQueue(render, size=2)
    first = jobs.submit("first")
    running.wait(10)  # the worker took it: 2 places are free again
    waiting = [jobs.submit("second"), jobs.submit("third")]
    with pytest.raises(QueueFull):
        jobs.submit("fourth")
    assert jobs.busy and jobs.waiting == 2
    gate.set()
    assert [f.result(10) for f in (first, *waiting)] == ["first", "second", "third"]
    assert peak[0] == 1
    jobs.close()


# --- load: a real threaded server on a free loopback port ------------------------------------------
@pytest.fixture(scope="module")
def live_url(model, app_cfg) -> Iterator[str]:
    app = make_app(model, app_cfg, queue_size=4)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    app.extensions["ldm_queue"].close()


def fetch(url: str, payload: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET, or of a JSON POST when `payload` is given; errors included."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_twenty_concurrent_requests_against_a_queue_of_four(live_url: str) -> None:
    start = threading.Barrier(20)

    def post(i: int) -> tuple[int, dict[str, str], bytes]:
        start.wait(10)
        return fetch(f"{live_url}/generate", {"prompt": f"a dog {i}", "steps": 30})

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(post, range(20)))
    codes = sorted(status for status, _, _ in answers)
    for status, headers, body in answers:
        if status == 200:
            assert headers["Content-Type"] == "image/png"
            assert Image.open(io.BytesIO(body)).size == (64, 64)
        else:
            assert status == 503 and headers["Retry-After"] == "30", codes
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes  # 1 rendering + 4 waiting at most at once
    status, _, body = fetch(f"{live_url}/healthz")
    assert status == 200 and json.loads(body)["model_loaded"] is True
