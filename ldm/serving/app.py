"""The Flask app: a page with a prompt box, `POST /generate` -> PNG, `GET /healthz`.

Why a single worker thread behind a bounded queue: a diffusers pipeline is not thread-safe (diffusers
#1606) and a CPU renders one image at a time anyway, so requests wait in line, and once `queue_size`
wait, new ones get 503 + Retry-After instead of piling up for minutes.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from PIL import Image

from ldm.errors import SamplingError
from ldm.generation.output import png_bytes
from ldm.generation.pipeline import generate
from ldm.generation.settings import Limits, SampleSettings, validate_settings
from ldm.training.module import TextEncoderFineTuner

INT_FIELDS = ("steps", "seed", "height", "width")
FLOAT_FIELDS = ("guidance_scale",)
TEXT_FIELDS = ("prompt", "negative_prompt", "scheduler")


class QueueFull(RuntimeError):
    """Every place in the queue is taken."""


class RenderQueue:
    """Runs `render(settings)` jobs one at a time on one thread; at most `size` jobs wait."""

    def __init__(self, render: Callable[[SampleSettings], Image.Image], size: int) -> None:
        self._render = render
        self._jobs: queue.Queue[tuple[SampleSettings, Future] | None] = queue.Queue(maxsize=size)
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._work, name="ldm-render", daemon=True)
        self._thread.start()

    def submit(self, settings: SampleSettings) -> Future:
        """Queue a job (raises `QueueFull`); the future gives its image or its exception."""
        future: Future = Future()
        try:
            self._jobs.put_nowait((settings, future))
        except queue.Full:
            raise QueueFull from None
        return future

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            settings, future = job
            self._busy.set()
            try:
                if future.set_running_or_notify_cancel():
                    future.set_result(self._render(settings))
            except Exception as err:  # handed to the waiting request, which answers 500
                future.set_exception(err)
            finally:
                self._busy.clear()


def _number(name: str, value: Any, kind: type) -> int | float | None:
    """A form string or a JSON number -> int/float; '' and null mean 'not given'."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise SamplingError(f"{name}={value}: expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SamplingError(f"{name}={value}: expected a number") from None
    if not math.isfinite(number):
        raise SamplingError(f"{name}={value}: expected a finite number")
    if kind is int:
        if not number.is_integer():
            raise SamplingError(f"{name}={value}: expected an integer")
        return int(number)
    return number


def parse_request(fields: dict[str, Any], defaults: SampleSettings) -> SampleSettings:
    """Form or JSON fields over the configured defaults -> settings (not yet range-checked)."""
    changes: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        value = fields.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise SamplingError(f"{name} must be a string")
            changes[name] = value
    for name in INT_FIELDS + FLOAT_FIELDS:
        value = _number(name, fields.get(name), int if name in INT_FIELDS else float)
        if value is not None:
            changes[name] = value
    prompt = changes.pop("prompt", "")
    return replace(defaults, prompts=(prompt,), **changes)


def create_app(
    model: TextEncoderFineTuner,
    defaults: SampleSettings,
    limits: Limits,
    *,
    queue_size: int,
    retry_after: int,
    checkpoint: str | None = None,
) -> Flask:
    """The app around an already loaded model (loaded once, at start-up, by app.py or a test)."""
    app = Flask(__name__)
    app.json.ensure_ascii = False  # reasons such as "steps=0: expected an integer ≥ 1" stay readable

    def render(settings: SampleSettings) -> Image.Image:
        return generate(model, settings, checkpoint=checkpoint)[0]

    jobs = RenderQueue(render, queue_size)
    app.extensions["ldm_queue"] = jobs

    def error(message: str, status: int, **headers: Any) -> Response:
        response = jsonify(error=message)
        response.status_code = status
        response.headers.update({k.replace("_", "-"): str(v) for k, v in headers.items()})
        return response

    @app.get("/")
    def index() -> str:
        return render_template("index.html", defaults=defaults, limits=limits)

    @app.post("/generate")
    def generate_image() -> Response:
        fields = request.get_json(silent=True) if request.is_json else request.form.to_dict()
        if not isinstance(fields, dict):
            return error("expected a form or a JSON object with at least 'prompt'", 400)
        try:
            settings = parse_request(fields, defaults)
            validate_settings(settings, limits)
        except SamplingError as err:
            return error(str(err), 400)
        try:
            future = jobs.submit(settings)
        except QueueFull:
            return error(
                f"busy: {jobs.waiting} requests are already waiting; retry in {retry_after} s",
                503,
                Retry_After=retry_after,
            )
        try:
            image = future.result()
        except Exception as err:
            app.logger.exception("generation failed")
            return error(f"generation failed: {type(err).__name__}: {err}", 500)
        return Response(
            png_bytes(image),
            mimetype="image/png",
            headers={"X-Seed": str(image.info["seed"]), "Cache-Control": "no-store"},
        )

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(
            status="ok",
            model_loaded=True,
            queue_length=jobs.waiting,
            queue_size=queue_size,
            busy=jobs.busy,
            model=model.hparams.get("pretrained"),
            checkpoint=checkpoint,
        )

    return app
