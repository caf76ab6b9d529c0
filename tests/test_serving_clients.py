"""The clients people already use, with their own libraries against the app on the tiny model (waitress on
loopback): AUTOMATIC1111's API through `webuiapi` (txt2img, then progress with a live preview and an
interrupt while a slow job runs) and OpenAI's images API through `openai` (`client.images.generate`)."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import compose_config
from tests.live_app import Live, StepHook, make_app, tiny_model, wait_for

webuiapi = pytest.importorskip("webuiapi", reason="pip install -e '.[dev]' installs webuiapi")
openai = pytest.importorskip("openai", reason="pip install -e '.[dev]' installs openai")
TOKEN = "a-test-token-with-enough-characters"


@pytest.fixture(scope="module")
def app_cfg(cache_dir: Path):
    return compose_config("app", ["model=tiny", f"paths.cache_dir={cache_dir}", "keep_images=false"])


@pytest.fixture(scope="module")
def model(app_cfg):
    return tiny_model(app_cfg)


@pytest.fixture(scope="module")
def hook() -> StepHook:
    return StepHook()


@pytest.fixture(scope="module")
def live(model, app_cfg, hook) -> Iterator[Live]:
    server = Live(make_app(model, app_cfg, step_hook=hook, calibrate=False))
    yield server
    server.close()


def a1111(live: Live) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.server.effective_port, sampler="Euler a", steps=2)


def test_webuiapi_txt2img_returns_the_image_and_its_info(live: Live) -> None:
    result = a1111(live).txt2img(
        prompt="a red circle", negative_prompt="blur", seed=7, cfg_scale=5, width=64, height=64
    )
    assert result.image.size == (64, 64) and result.image.text["prompt"] == "a red circle"
    assert result.image.text["scheduler"] == "euler_a" and result.image.text["seed"] == "7"
    assert result.info["seed"] == 7 and result.info["sampler_name"] == "Euler a" and result.info["steps"] == 2
    assert "Steps: 2, Sampler: Euler a, CFG scale: 5" in result.info["infotexts"][0]
    again = a1111(live).txt2img(prompt="a red circle", negative_prompt="blur", seed=7, cfg_scale=5, width=64, height=64)
    assert again.image.tobytes() == result.image.tobytes()  # the seed is honoured


def test_webuiapi_fields_this_server_cannot_honour_are_a_400_naming_them(live: Live) -> None:
    with pytest.raises(RuntimeError) as err:
        a1111(live).txt2img(prompt="a dog", width=64, height=64, restore_faces=True, tiling=True)
    status, text = err.value.args
    assert status == 400 and "restore_faces=True" in text and "tiling=True" in text
    with pytest.raises(RuntimeError) as err:
        a1111(live).txt2img(prompt="a dog", width=64, height=64, sampler_name="LMS")
    assert err.value.args[0] == 400 and "sampler_name='LMS': expected one of Euler a" in err.value.args[1]


def test_webuiapi_progress_shows_a_live_preview_and_interrupt_stops_the_job(live: Live, hook: StepHook) -> None:
    hook.delay = 0.1
    api, results = a1111(live), []
    try:
        worker = threading.Thread(
            target=lambda: results.append(api.txt2img(prompt="a dog", steps=40, width=64, height=64))
        )
        worker.start()
        progress = wait_for(lambda: (p := a1111(live).get_progress())["state"]["sampling_step"] >= 2 and p)
        assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 40
        assert progress["eta_relative"] > 0
        preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
        assert preview.size == (8, 8)  # the latent preview, 1/8 of the image
        assert a1111(live).interrupt() == {}
        worker.join(30)
        [result] = results
        assert result.images == [] and result.info["interrupted"] is True
        assert a1111(live).get_progress()["state"]["job_count"] == 0
    finally:
        hook.delay = 0.0


def test_openai_images_generate_returns_b64_json_images(live: Live) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    response = client.images.generate(prompt="a red circle", n=2, size="64x64", response_format="b64_json")
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in response.data]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert int(images[1].text["seed"]) == int(images[0].text["seed"]) + 1  # n images: seed, seed+1
    refused = [(dict(style="vivid"), "style"), (dict(response_format="url"), "response_format"),
               (dict(size="64"), "size"), (dict(n=9), "n"),
               (dict(size="1024x1024"), "=1024: expected 64 to 768")]  # fmt: skip
    for bad, named in refused:
        with pytest.raises(openai.BadRequestError) as err:
            client.images.generate(prompt="a dog", **bad)
        assert named in err.value.message, (bad, err.value.message)


def test_openai_client_with_the_servers_token(model, app_cfg) -> None:
    server = Live(make_app(model, app_cfg, token=TOKEN, calibrate=False))
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
        assert len(client.images.generate(prompt="a dog", size="64x64").data) == 1
        wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-the-token", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.images.generate(prompt="a dog", size="64x64")
        webui = webuiapi.WebUIApi(port=server.server.effective_port, username="me", password=TOKEN, steps=1)
        assert webui.txt2img(prompt="a dog", width=64, height=64).image.size == (64, 64)
    finally:
        server.close()
