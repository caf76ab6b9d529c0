"""Test-only helpers for the web app: the app on the tiny model served by waitress on a free loopback port,
HTTP requests with urllib (as an owner token's client), and waiting for a job to end. The real pipeline
renders every job; a per-step hook only adds a delay (to watch progress) or raises (to see a failing render).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from ldm.generation.checkpoints import build_model
from ldm.generation.loading import prepare_for_inference
from ldm.serving.configure import app_from_config
from ldm.serving.server import make_waitress

REPO = Path(__file__).resolve().parents[1]
OWNER = "tests-owner-token-0001"  # the X-Owner-Token requests carry unless told otherwise
OTHER = "tests-other-owner-0002"  # another client's


def tiny_model(cfg):
    module = build_model(cfg.model)
    prepare_for_inference(module, torch.device("cpu"), cfg.attention_slicing)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StepHook:
    """Called by the worker at each step: sleeps `delay` s; raises for the prompt `fail`."""

    def __init__(self) -> None:
        self.delay, self.fail = 0.0, "boom"

    def __call__(self, job) -> None:
        time.sleep(self.delay)
        if job.settings.prompts[0] == self.fail:
            raise RuntimeError("a render that breaks")


def make_app(model, cfg, **changes):
    return app_from_config(cfg, model, **changes)


class Live:
    """An app served by waitress on a free loopback port."""

    def __init__(self, app) -> None:
        self.app, self.queue = app, app.extensions["ldm_queue"]
        self.server = make_waitress(app, "127.0.0.1", 0, threads=30)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        threading.Thread(target=self.server.run, daemon=True).start()

    def close(self) -> None:
        self.queue.close()
        self.server.close()


def fetch(url: str, payload: dict | None = None, method: str | None = None, headers: dict | None = None):
    """(status, headers, body) of a request (a JSON POST when `payload` is given) as the owner OWNER
    (a header of None leaves it out); errors included."""
    data = None if payload is None else json.dumps(payload).encode()
    every = {"Content-Type": "application/json", "X-Owner-Token": OWNER, **(headers or {})}
    req = urllib.request.Request(
        url, data=data, method=method, headers={k: v for k, v in every.items() if v is not None}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def get_json(url: str) -> dict:
    return json.loads(fetch(url)[2])


def submit(live: Live, **fields) -> str:
    status, _, body = fetch(f"{live.url}/jobs", {"prompt": "a red circle", "steps": 4, **fields})
    assert status == 202, body
    return json.loads(body)["id"]


def wait_for(predicate, timeout: float = 60, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def final(live: Live, job_id: str) -> dict:
    return wait_for(
        lambda: (j := get_json(f"{live.url}/jobs/{job_id}"))["state"] in ("done", "failed", "cancelled") and j
    )


def fetch_or_none(url: str):
    try:
        return fetch(url)
    except OSError:
        return None
