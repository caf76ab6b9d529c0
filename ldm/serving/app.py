"""The Flask app: the page, the jobs API (submit, watch, preview, fetch, cancel), sync `POST /generate`
for curl, and `/healthz`. The page uses the same JSON API as scripts do (docs/serving.md).

Why jobs rather than one blocking request: a 512 px image takes minutes on a CPU, so a client needs to
see its place in the queue, the step, the time left and a preview, and to stop a render it no longer wants.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace

from flask import Flask, Response, jsonify, render_template, request
from omegaconf import DictConfig, OmegaConf

from ldm.errors import ConfigError, SamplingError, expect, is_int
from ldm.generation.pipeline import generate, native_size
from ldm.generation.preview import latent_preview_for
from ldm.generation.progress import OnStep, step_callback
from ldm.generation.settings import Limits, SampleSettings, validate_settings
from ldm.serving.forms import parse_request
from ldm.serving.jobs import CANCELLED, DONE, FINAL, Job, QueueFull
from ldm.serving.security import install_protections, json_error
from ldm.serving.worker import RenderQueue
from ldm.training.module import TextEncoderFineTuner

log = logging.getLogger(__name__)


class UnknownJob(Exception):
    """An id the app does not know (never given, or forgotten after `jobs.keep_s`)."""


def app_from_config(cfg: DictConfig, model: TextEncoderFineTuner | None = None, **overrides: object) -> Flask:
    """The app conf/app.yaml describes (`overrides`: a test's hooks and bounds), its values checked first."""
    limits = OmegaConf.to_container(cfg.limits, resolve=True)
    max_seconds = limits.pop("max_seconds", None)
    counts = {"queue_size": 1, "preview_every": 0, "jobs.keep_count": 0, "max_request_bytes": 1}  # key: minimum
    for key, low in counts.items():
        value = OmegaConf.select(cfg, key)
        expect(is_int(value) and value >= low, key, value, f"an integer ≥ {low}", ConfigError)
    expect(
        isinstance(cfg.jobs.keep_s, int | float) and cfg.jobs.keep_s >= 0, "jobs.keep_s", cfg.jobs.keep_s, "seconds ≥ 0"
    )
    ok = max_seconds is None or (isinstance(max_seconds, int | float) and max_seconds > 0)
    expect(ok, "limits.max_seconds", max_seconds, "null (no bound) or seconds > 0")
    options = {
        "queue_size": cfg.queue_size,
        "retry_after": cfg.retry_after,
        "checkpoint": cfg.checkpoint,
        "max_seconds": max_seconds,
        "preview_every": cfg.preview_every,
        "keep_s": cfg.jobs.keep_s,
        "keep_count": cfg.jobs.keep_count,
        "max_request_bytes": cfg.max_request_bytes,
    }
    defaults = SampleSettings.from_config(cfg, prompts=(), num_images=1, batch_size=1)
    return create_app(model, defaults, Limits(**limits), **{**options, **overrides})


def create_app(
    model: TextEncoderFineTuner | None,
    defaults: SampleSettings,
    limits: Limits,
    *,
    queue_size: int,
    retry_after: int,
    checkpoint: str | None = None,
    max_seconds: float | None = None,
    preview_every: int = 1,
    keep_s: float = 600,
    keep_count: int = 50,
    max_request_bytes: int = 65536,
    step_hook: Callable[[Job], None] | None = None,
    calibrate: bool = True,
) -> Flask:
    """The app; `model=None` serves at once and renders after `app.extensions["ldm_attach"](model)`
    (app.py loads the model while /healthz already answers `model_loaded: false`)."""
    app = Flask(__name__)
    app.json.ensure_ascii = False  # reasons such as "steps=0: expected an integer ≥ 1" stay readable
    install_protections(app, max_request_bytes)
    jobs = RenderQueue(
        queue_size, keep_s=keep_s, keep_count=keep_count, preview_every=preview_every, step_hook=step_hook
    )
    app.extensions["ldm_queue"] = jobs
    loaded: dict[str, TextEncoderFineTuner] = {}

    def attach(model: TextEncoderFineTuner) -> None:
        def render(settings: SampleSettings, on_step: OnStep):
            return generate(model, settings, checkpoint=checkpoint, on_step=step_callback(on_step))[0]

        calibration = replace(defaults, prompts=("calibration",), seed=0) if calibrate else None
        jobs.start(render, latent_preview_for(model), native_size(model), calibration)
        loaded["model"] = model

    app.extensions["ldm_attach"] = attach
    if model is not None:
        attach(model)

    def submit() -> Job | Response:
        fields = request.get_json(silent=True) if request.is_json else request.form.to_dict()
        try:
            settings = parse_request(fields, defaults)
            validate_settings(settings, limits)
        except SamplingError as err:
            return json_error(str(err), 400)
        estimate = jobs.estimate_s(settings)
        if max_seconds is not None and estimate is not None and estimate > max_seconds:
            return json_error(
                f"this job would take about {estimate:.0f} s ({settings.steps} steps at the measured speed), "
                f"over limits.max_seconds={max_seconds:g}: use fewer steps or a smaller size",
                400,
            )
        try:
            return jobs.submit(settings)
        except QueueFull:
            return json_error(
                f"busy: {jobs.size} jobs are already waiting; retry in {retry_after} s", 503, Retry_After=retry_after
            )

    def find(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    @app.errorhandler(UnknownJob)
    def unknown_job(err: UnknownJob) -> Response:
        return json_error(f"no job {err.args[0]!r} (unknown, or finished long enough ago to be forgotten)", 404)

    @app.get("/")
    def index() -> str:
        return render_template("index.html", defaults=defaults, limits=limits)

    @app.post("/jobs")
    def create_job() -> Response:
        job = submit()
        if isinstance(job, Response):
            return job
        snapshot = job.snapshot()
        response = jsonify(id=job.id, state=snapshot["state"], position=snapshot["position"], seed=snapshot["seed"])
        response.status_code, response.headers["Location"] = 202, f"/jobs/{job.id}"
        return response

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Response:
        return jsonify(find(job_id).snapshot())

    @app.delete("/jobs/<job_id>")
    def cancel_job(job_id: str) -> Response:
        find(job_id)
        return jsonify(jobs.cancel(job_id).snapshot())

    @app.get("/jobs/<job_id>/events")
    def job_events(job_id: str) -> Response:
        job = find(job_id)

        def stream() -> Iterator[str]:
            sent = 0
            while True:
                events = jobs.events(job, sent, timeout=15)
                if not events:
                    yield ": keep-alive\n\n"
                for kind, data in events:
                    sent += 1
                    yield f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
                    if kind == "state" and data["state"] in FINAL:
                        return

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return Response(stream(), mimetype="text/event-stream", headers=headers)

    @app.get("/jobs/<job_id>/preview.png")
    def job_preview(job_id: str) -> Response:
        job = find(job_id)
        if job.preview is None:
            return json_error(f"job {job_id} has no preview yet (state {job.state}, step {job.step})", 404)
        return Response(job.preview, mimetype="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/jobs/<job_id>/image.png")
    def job_image(job_id: str) -> Response:
        job = find(job_id)
        if job.image is None:
            return json_error(f"job {job_id} has no image (state {job.state})", 404)
        return png_response(job)

    @app.post("/generate")
    def generate_image() -> Response:
        """Sync: the PNG once done; cancelled when the client goes away (under waitress, which tells)."""
        job = submit()
        if isinstance(job, Response):
            return job
        gone = request.environ.get("waitress.client_disconnected")
        while not jobs.wait_final(job, 0.2):
            if gone is not None and gone():
                log.info("client of job %s went away: cancelling it", job.id)
                jobs.cancel(job.id)
                return json_error("client went away; job cancelled", 499)
        if job.state == DONE:
            return png_response(job)
        if job.state == CANCELLED:
            return json_error(f"job {job.id} was cancelled", 409)
        return json_error(job.error or "render failed", 500)

    @app.get("/healthz")
    def healthz() -> Response:
        status = jobs.status()
        ready = status["model_loaded"] and status["worker_alive"]
        model = loaded.get("model")
        response = jsonify(
            status="ok" if ready else "loading" if not status["model_loaded"] else "worker stopped",
            **status,
            model=None if model is None else model.hparams.get("pretrained"),
            checkpoint=checkpoint,
        )
        response.status_code = 200 if ready else 503
        return response

    return app


def png_response(job: Job) -> Response:
    headers = {"X-Seed": str(job.settings.seed), "X-Job-Id": job.id, "Cache-Control": "no-store"}
    return Response(job.image, mimetype="image/png", headers=headers)
