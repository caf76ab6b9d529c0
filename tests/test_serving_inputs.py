"""What the fuzz test (tests/test_serving_fuzz.py) found, and what probing its families by hand found next,
each pinned by a deterministic request: a 400 (or 405) with the reason, in the error shape of the API it was
sent to, where the server once answered 500 or broke its description. Flask's test client, no model: every
request here is refused before anything renders."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from ldm.errors import ConfigError
from ldm.generation.settings import SampleSettings
from ldm.serving.configure import app_from_config
from ldm.serving.openai_images import BadField, openai_settings
from tests.conftest import compose_config

OWNER = {"X-Owner-Token": "inputs-owner-token-0001"}
HUGE = "1" + "0" * 400  # a JSON integer no float holds


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    app = app_from_config(compose_config("app", ["model=tiny", "keep_images=false"]), None)
    yield app
    app.extensions["ldm_queue"].close()


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()  # not `with`: that keeps a context the thread in post() cannot share


def post(client: FlaskClient, path: str, body: bytes | str, headers: dict | None = None):
    """The answer to a JSON POST, or a failure after 10 s. Why the thread: a sync route that took the body
    waits for a render that never comes here (no model), and a test of a broken server must fail, not hang."""
    data = body.encode() if isinstance(body, str) else body
    answers = []
    thread = threading.Thread(
        target=lambda: answers.append(
            client.post(path, data=data, content_type="application/json", headers={**OWNER, **(headers or {})})
        ),
        daemon=True,
    )
    thread.start()
    thread.join(10)
    assert answers, f"POST {path} took the body and waits for a render: expected a 400"
    return answers[0]


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/jobs", f'{{"prompt": "a", "steps": {HUGE}}}', "steps=1000"),
        ("/jobs", f'{{"prompt": "a", "guidance_scale": {HUGE}}}', "expected a finite number"),
        ("/generate", f'{{"prompt": "a", "seed": {HUGE}}}', "seed=1000"),
        ("/sdapi/v1/txt2img", f'{{"prompt": "a", "seed": {HUGE}}}', "seed=1000"),
        ("/v1/images/generations", f'{{"prompt": "a", "n": {HUGE}}}', "n=1000"),
    ],
)
def test_an_integer_too_large_for_a_float_is_a_400_not_a_500(client, path: str, body: str, reason: str) -> None:
    response = post(client, path, body)
    assert response.status_code == 400 and reason in response.get_data(as_text=True)


@pytest.mark.parametrize("size", ["\u00b2x\u00b2", "9" * 5000 + "x64", "64x", 512])
def test_an_openai_size_that_is_not_ascii_digits_is_a_400_naming_size(client, size) -> None:
    response = post(client, "/v1/images/generations", json.dumps({"prompt": "a", "size": size}))
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["param"] == "size" and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs", r'{"prompt": "a\ud800"}'),
        ("/generate", r'{"prompt": "a", "negative_prompt": "\udfff"}'),
        ("/sdapi/v1/txt2img", r'{"prompt": "a", "save_images": "\udfff"}'),  # a field echoed in `parameters`
        ("/v1/images/generations", r'{"prompt": "\ud800 a"}'),
    ],
)
def test_a_lone_surrogate_is_a_400_and_the_clients_jobs_still_list(client, path: str, body: str) -> None:
    response = post(client, path, body)
    assert response.status_code == 400 and "lone surrogate" in response.get_data(as_text=True)
    assert client.get("/jobs", headers=OWNER).status_code == 200  # once a 500 for good: the job held it


def test_a_surrogate_pair_is_one_character_and_welcome(client) -> None:
    assert post(client, "/jobs", r'{"prompt": "a \ud83d\ude00"}').status_code == 202


@pytest.mark.parametrize("path", ["/jobs", "/sdapi/v1/txt2img", "/v1/images/generations"])
def test_a_body_nested_thousands_deep_is_a_400(client, path: str) -> None:
    response = post(client, path, '{"prompt": ' + "[" * 5000 + "]" * 5000 + "}")
    assert response.status_code == 400 and "nests too deeply" in response.get_data(as_text=True)


@pytest.mark.parametrize("sampler", [[None, None], {"a": 1}, 7])
def test_an_a1111_sampler_that_is_not_a_string_is_a_400(client, sampler) -> None:
    response = post(client, "/sdapi/v1/txt2img", json.dumps({"prompt": "a", "sampler_index": sampler}))
    assert response.status_code == 400 and set(response.get_json()) == {"error", "detail"}


def test_an_undeclared_method_is_a_405_that_says_which_are_allowed(client) -> None:
    response = client.open("/jobs", method="TRACE")
    assert response.status_code == 405 and set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert response.is_json


def test_each_api_answers_errors_in_its_own_shape_even_before_its_route_runs(client) -> None:
    short = {"X-Owner-Token": "short"}
    ours = client.get("/jobs", headers=short)
    a1111 = client.get("/sdapi/v1/progress", headers=short)
    openai = post(client, "/v1/images/generations", '{"prompt": "a"}', short)
    assert ours.status_code == a1111.status_code == openai.status_code == 400
    assert set(ours.get_json()) == {"error"}
    assert a1111.get_json()["detail"] == a1111.get_json()["error"]
    assert set(openai.get_json()["error"]) == {"message", "type", "param", "code"}
    foreign = client.get("/sdapi/v1/samplers", headers={"Host": "evil.example"})  # the Host check, app-wide
    assert foreign.status_code == 403 and "detail" in foreign.get_json()


def test_openai_n_as_a_json_float_that_is_whole_counts_and_zero_does_not() -> None:
    cfg = compose_config("app", ["model=tiny"])
    defaults = SampleSettings.from_config(cfg, prompts=(), num_images=1, batch_size=1)
    assert openai_settings({"prompt": "a", "n": 2.0}, defaults)[1] == 2
    for n in (0, False, 1.5):
        with pytest.raises(BadField, match="expected an integer from 1 to 4"):
            openai_settings({"prompt": "a", "n": n}, defaults)


def test_a_request_default_outside_the_limits_is_refused_at_start() -> None:
    cfg = compose_config("app", ["model=tiny", "keep_images=false", "limits.max_steps=2"])  # default steps: 15
    with pytest.raises(ConfigError, match=r"a request default .* is outside limits: steps=15: expected at most 2"):
        app_from_config(cfg, None)
