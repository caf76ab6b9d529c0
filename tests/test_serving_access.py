"""Who may talk to the app: the Host allow-list, jobs private to their owner token, /healthz with counts
only, the bearer token, and the refusal to serve the network without one. Real app, waitress on loopback."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ldm.errors import UserError
from ldm.serving.auth import check_exposure
from ldm.serving.hosts import HostAllowList
from tests.conftest import compose_config
from tests.live_app import (
    OTHER,
    OWNER,
    REPO,
    Live,
    StepHook,
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
    hosts = HostAllowList("127.0.0.1", 0, ["myhost.lan", "box.lan:8080"])
    server = Live(make_app(model, app_cfg, step_hook=hook, hosts=hosts, calibrate=False))
    yield server
    server.close()


@pytest.fixture(scope="module")
def guarded(model, app_cfg) -> Iterator[Live]:
    server = Live(make_app(model, app_cfg, token=TOKEN, calibrate=False))
    yield server
    server.close()


def test_a_foreign_host_gets_403_with_the_reason(live: Live) -> None:
    port = live.server.effective_port
    for host in ("evil.example", f"evil.example:{port}", "box.lan:9999", "127.0.0.1.evil.example"):
        for route in ("/", "/healthz", "/jobs"):
            status, _, body = fetch(f"{live.url}{route}", headers={"Host": host})
            assert status == 403, (host, route)
            assert f"Host {host!r} is not allowed" in json.loads(body)["error"] and "allowed_hosts" in body.decode()
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "myhost.lan", "box.lan:8080"):
        assert fetch(f"{live.url}/healthz", headers={"Host": host})[0] == 200, host


def test_another_client_cannot_see_or_cancel_a_job(live: Live, hook: StepHook) -> None:
    hook.delay = 0.05
    try:
        job_id = submit(live, steps=20, prompt="a private prompt")
        assert len(job_id) >= 22  # 128 random bits
        for headers in ({"X-Owner-Token": OTHER}, {"X-Owner-Token": None}):
            for suffix in ("", "/events", "/preview.png", "/image.png"):
                status, _, body = fetch(f"{live.url}/jobs/{job_id}{suffix}", headers=headers)
                assert status == 404 and "a private prompt" not in body.decode(), (headers, suffix)
            assert fetch(f"{live.url}/jobs/{job_id}", method="DELETE", headers=headers)[0] == 404
        assert get_json_as(f"{live.url}/jobs", OTHER) == {"jobs": []}
        assert get_json(f"{live.url}/jobs/{job_id}")["state"] in ("queued", "running")  # untouched
        assert get_json(f"{live.url}/jobs")["jobs"][0]["id"] == job_id  # the owner's list
        assert json.loads(fetch(f"{live.url}/jobs/{job_id}", method="DELETE")[2])["id"] == job_id
        assert final(live, job_id)["state"] == "cancelled"
    finally:
        hook.delay = 0.0


def get_json_as(url: str, owner: str) -> dict:
    return json.loads(fetch(url, headers={"X-Owner-Token": owner})[2])


def test_a_client_without_an_owner_token_is_issued_one(live: Live) -> None:
    status, headers, body = fetch(f"{live.url}/jobs", {"prompt": "a dog", "steps": 2}, headers={"X-Owner-Token": None})
    issued = json.loads(body)["owner_token"]
    assert status == 202 and headers["X-Owner-Token"] == issued and len(issued) >= 16
    assert "ldm_owner=" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
    job_id = json.loads(body)["id"]
    assert get_json_as(f"{live.url}/jobs/{job_id}", issued)["id"] == job_id
    final_state = wait_for(lambda: (j := get_json_as(f"{live.url}/jobs/{job_id}", issued))["state"] == "done" and j)
    assert final_state["state"] == "done"
    page_headers = fetch(live.url, headers={"X-Owner-Token": None})[1]  # the page's first visit: a cookie
    assert "ldm_owner=" in page_headers["Set-Cookie"] and "SameSite=Strict" in page_headers["Set-Cookie"]
    status, _, body = fetch(f"{live.url}/jobs/{job_id}", headers={"X-Owner-Token": "short"})
    assert status == 400 and "X-Owner-Token of 5 characters: expected at least 16" in json.loads(body)["error"]


def test_healthz_shows_counts_never_ids_or_prompts(live: Live, hook: StepHook) -> None:
    hook.delay = 0.05
    try:
        job_id = submit(live, steps=10, prompt="a secret garden")
        health = wait_for(lambda: (h := get_json(f"{live.url}/healthz"))["running"] and h)
        text = json.dumps(health)
        assert job_id not in text and "secret garden" not in text and OWNER not in text
        assert health["running"]["steps"] == 10 and health["jobs_kept"] >= 1
        final(live, job_id)
    finally:
        hook.delay = 0.0


@pytest.mark.parametrize(
    "request_",
    [("GET", "/", None), ("POST", "/jobs", {"prompt": "a"}), ("GET", "/jobs", None),
     ("GET", "/sdapi/v1/progress", None), ("POST", "/v1/images/generations", {"prompt": "a"}),
     ("POST", "/generate", {"prompt": "a"})],
)  # fmt: skip
def test_a_token_guards_every_route_but_healthz(guarded: Live, request_) -> None:
    method, route, payload = request_
    for headers, reason in (({}, "no token"), ({"Authorization": "Bearer wrong-token"}, "a wrong token")):
        status, answer, body = fetch(f"{guarded.url}{route}", payload, method=method, headers=headers)
        error = json.loads(body)["error"]  # OpenAI's routes answer in OpenAI's shape: {"error": {"message", ...}}
        message = error["message"] if route.startswith("/v1/") else error
        assert status == 401 and reason in message and "Bearer" in answer["WWW-Authenticate"]
    assert fetch(f"{guarded.url}/healthz")[0] == 200


def test_the_token_works_as_bearer_basic_password_and_the_pages_cookie(guarded: Live) -> None:
    basic = "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    for authorization in (f"Bearer {TOKEN}", basic):
        status, _, body = fetch(
            f"{guarded.url}/jobs", {"prompt": "a dog", "steps": 1}, headers={"Authorization": authorization}
        )
        assert status == 202, body
        job_id = json.loads(body)["id"]
        assert wait_for(lambda: get_json_with(guarded, job_id, authorization)["state"] == "done")  # noqa: B023
    opener_status, headers, _ = fetch_no_redirect(f"{guarded.url}/?token={TOKEN}")
    assert (
        opener_status == 303 and f"ldm_token={TOKEN}" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
    )
    assert fetch(f"{guarded.url}/jobs", headers={"Cookie": f"ldm_token={TOKEN}"})[0] == 200
    assert fetch(f"{guarded.url}/?token=wrong-token-xxxxxxxxxx")[0] == 401


def get_json_with(live: Live, job_id: str, authorization: str) -> dict:
    return json.loads(fetch(f"{live.url}/jobs/{job_id}", headers={"Authorization": authorization})[2])


def fetch_no_redirect(url: str):
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(url, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_a_network_host_without_a_token_is_refused_and_auth_open_warns(capsys) -> None:
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(UserError, match=r"auth\.token=.*LDM_APP_TOKEN=.*auth\.open=true"):
            check_exposure(host, None, False)
    check_exposure("0.0.0.0", None, True)
    assert "warning: host=0.0.0.0 with auth.open=true" in capsys.readouterr().err
    check_exposure("0.0.0.0", TOKEN, False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(host, None, False)
    with pytest.raises(UserError, match=r"auth\.token has 5 characters: expected at least 16"):
        check_exposure("127.0.0.1", "short", False)


@pytest.mark.slow
def test_app_py_on_0000_refuses_without_a_token_and_with_one_serves_only_requests_that_carry_it(
    cache_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    command = [sys.executable, "app.py", "model=tiny", "host=0.0.0.0", f"port={port}", f"paths.cache_dir={cache_dir}",
               f"hydra.run.dir={tmp_path}", f"out_dir={tmp_path}/images"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LDM_APP_TOKEN", None)
    refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2 and "no token is set" in refused.stderr and "LDM_APP_TOKEN=" in refused.stderr
    log = (tmp_path / "app.out").open("w")
    process = subprocess.Popen(
        command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**env, "LDM_APP_TOKEN": TOKEN}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: (r := fetch_or_none(f"{url}/healthz")) and r[0] == 200, timeout=120, every=0.3)
        assert fetch(f"{url}/jobs", {"prompt": "a dog", "steps": 1})[0] == 401
        status, _, body = fetch(
            f"{url}/generate", {"prompt": "a dog", "steps": 1}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200 and body.startswith(b"\x89PNG")
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
