"""The Flask app: the page, the jobs API (submit, list, watch, preview, fetch, cancel), sync `POST /generate`
for curl, `/healthz`, and the A1111 and OpenAI layers over the same queue (docs/serving.md).

Why jobs rather than one blocking request: a 512 px image takes minutes on a CPU, so a client needs to
see its place in the queue, the step, the time left and a preview, and to stop a render it no longer wants.
Who may call what: hosts.py (the Host allow-list), auth.py (the token), owners.py (jobs private to their
client), security.py (cross-site writes, body size, errors).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from flask import Flask, Response, jsonify, render_template, request

from ldm.errors import SamplingError
from ldm.generation.pipeline import generate, native_size
from ldm.generation.preview import latent_preview_for
from ldm.generation.progress import OnStep, step_callback
from ldm.generation.settings import Limits, SampleSettings
from ldm.serving.a1111 import install_a1111
from ldm.serving.auth import install_token_auth
from ldm.serving.bodies import json_body
from ldm.serving.forms import parse_request
from ldm.serving.hosts import HostAllowList, install_host_check
from ldm.serving.jobs import CANCELLED, DONE, FINAL, Job
from ldm.serving.openai_images import install_openai_images
from ldm.serving.openapi import install_openapi
from ldm.serving.owners import hand_over, owner_hash, owner_or_issue, presented_owner
from ldm.serving.security import install_protections, json_error
from ldm.serving.store import ImageStore, StoredImage
from ldm.serving.streams import Slot, StreamSlots
from ldm.serving.submission import ClientGone, Refused, Submitter
from ldm.serving.worker import RenderQueue
from ldm.training.module import TextEncoderFineTuner

log = logging.getLogger(__name__)
KEEPALIVE_S = 15  # an SSE comment this often keeps proxies from closing a quiet stream


class UnknownJob(Exception):
    """An id the app does not know for this client (never given, someone else's, or forgotten)."""


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
    prune_every_s: float = 10,
    max_request_bytes: int = 65536,
    streams: int = 8,
    hosts: HostAllowList | None = None,
    token: str | None = None,
    out_dir: str | None = None,
    step_hook: Callable[[Job], None] | None = None,
    calibrate: bool = True,
) -> Flask:
    """The app; `model=None` serves at once and renders after `app.extensions["ldm_attach"](model)`
    (app.py loads the model while /healthz already answers `model_loaded: false`)."""
    app = Flask(__name__, static_folder=None)  # no static files: the page is one template
    app.json.ensure_ascii = False  # reasons such as "steps=0: expected an integer ≥ 1" stay readable
    install_host_check(app, hosts or HostAllowList("127.0.0.1", 0, []))
    install_token_auth(app, token)
    install_protections(app, max_request_bytes)
    store = None if out_dir is None else ImageStore(out_dir)
    jobs = RenderQueue(
        queue_size,
        keep_s=keep_s,
        keep_count=keep_count,
        preview_every=preview_every,
        prune_every_s=prune_every_s,
        step_hook=step_hook,
        on_done=None if store is None else lambda job, png: store.save(job, png, time.time()),
    )
    submitter = Submitter(jobs, limits, max_seconds, retry_after)
    slots = StreamSlots(streams)
    app.extensions.update(ldm_queue=jobs, ldm_submitter=submitter, ldm_store=store, ldm_streams=slots)
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

    def request_fields() -> Any:
        return json_body(request) if request.is_json else request.form.to_dict()

    def find(job_id: str) -> Job | StoredImage:
        """The caller's job, live or (after a restart or a prune) stored; UnknownJob otherwise."""
        token = presented_owner(request)
        if token is None:
            raise UnknownJob(job_id)
        owner = owner_hash(token)
        job = jobs.get(job_id, owner)
        if job is None and store is not None:
            job = store.get(job_id, owner)
        if job is None:
            raise UnknownJob(job_id)
        return job

    @app.errorhandler(UnknownJob)
    def unknown_job(err: UnknownJob) -> Response:
        return json_error(
            f"no job {err.args[0]!r} for this client (unknown, someone else's, or forgotten since it finished)", 404
        )

    @app.errorhandler(SamplingError)
    def bad_request(err: SamplingError) -> Response:
        return json_error(str(err), 400)

    @app.errorhandler(Refused)
    def refused(err: Refused) -> Response:
        headers = {} if err.retry_after is None else {"Retry_After": err.retry_after}
        return json_error(str(err), err.status, **headers)

    @app.get("/")
    def index() -> Response:
        _, issued = owner_or_issue(request)  # the page's owner cookie, on its first visit
        page = render_template("index.html", defaults=defaults, limits=limits)
        return hand_over(Response(page, mimetype="text/html"), issued)

    @app.post("/jobs")
    def create_job() -> Response:
        token, issued = owner_or_issue(request)
        job = submitter.submit(parse_request(request_fields(), defaults), owner_hash(token))
        snapshot = job.snapshot()
        body = {"id": job.id, "state": snapshot["state"], "position": snapshot["position"], "seed": snapshot["seed"]}
        response = jsonify({**body, **({} if issued is None else {"owner_token": issued})})
        response.status_code, response.headers["Location"] = 202, f"/jobs/{job.id}"
        return hand_over(response, issued)

    @app.get("/jobs")
    def list_jobs() -> Response:
        """The caller's jobs, newest first: the live ones, then those only on disk (the page's gallery)."""
        token = presented_owner(request)
        if token is None:
            return jsonify(jobs=[])
        owner = owner_hash(token)
        live = [job.snapshot() for job in jobs.owned(owner)]
        seen = {job["id"] for job in live}
        stored = [s.snapshot() for s in (store.owned(owner) if store is not None else []) if s.id not in seen]
        return jsonify(jobs=(stored + live)[::-1])

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Response:
        return jsonify(find(job_id).snapshot())

    @app.delete("/jobs/<job_id>")
    def cancel_job(job_id: str) -> Response:
        found = find(job_id)
        if isinstance(found, StoredImage):
            return jsonify(found.snapshot())  # finished: nothing to stop
        job = jobs.cancel(job_id, found.owner)
        if job is None:  # pruned between the two looks
            raise UnknownJob(job_id)
        return jsonify(job.snapshot())

    @app.get("/jobs/<job_id>/events")
    def job_events(job_id: str) -> Response:
        found = find(job_id)
        if isinstance(found, StoredImage):
            body = f"event: state\ndata: {json.dumps(found.snapshot(), ensure_ascii=False)}\n\n"
            return Response(body, mimetype="text/event-stream", headers={"Cache-Control": "no-store"})
        if not slots.take():
            return json_error(
                f"busy: {slots.size} progress streams are open (limits.streams); poll GET /jobs/{job_id} "
                f"instead, or retry in {retry_after} s",
                503,
                Retry_After=retry_after,
            )
        slot = Slot(slots)
        gone = request.environ.get("waitress.client_disconnected")

        def stream() -> Iterator[str]:
            sent, quiet = 0, 0.0
            try:
                while gone is None or not gone():
                    events = jobs.events(found, sent, timeout=1)
                    quiet = 0.0 if events else quiet + 1
                    if quiet >= KEEPALIVE_S:
                        quiet = 0.0
                        yield ": keep-alive\n\n"
                    for kind, data in events:
                        sent += 1
                        yield f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
                        if kind == "state" and data["state"] in FINAL:
                            return
            finally:
                slot.release()

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        response = Response(stream(), mimetype="text/event-stream", headers=headers)
        response.call_on_close(slot.release)  # also when the stream never started
        return response

    @app.get("/jobs/<job_id>/preview.png")
    def job_preview(job_id: str) -> Response:
        found = find(job_id)
        preview = None if isinstance(found, StoredImage) else found.preview
        if preview is None:
            state, step = found.snapshot()["state"], found.snapshot()["step"]
            when = "no preview yet" if state == "queued" or step == 0 else "no preview (kept only while it runs)"
            return json_error(f"job {job_id} has {when} (state {state}, step {step})", 404)
        return Response(preview, mimetype="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/jobs/<job_id>/image.png")
    def job_image(job_id: str) -> Response:
        found = find(job_id)
        if isinstance(found, StoredImage):
            return png_response(found.image(), found.snapshot()["seed"], found.id)
        if found.image is None:
            return json_error(f"job {job_id} has no image (state {found.state})", 404)
        return png_response(found.image, found.settings.seed, found.id)

    @app.post("/generate")
    def generate_image() -> Response:
        """Sync: the PNG once done; cancelled when the client goes away (under waitress, which tells)."""
        token, issued = owner_or_issue(request)
        job = submitter.submit(parse_request(request_fields(), defaults), owner_hash(token))
        try:
            submitter.wait([job], request)
        except ClientGone:
            return json_error("client went away; job cancelled", 499)
        if job.state == DONE:
            return hand_over(png_response(job.image, job.settings.seed, job.id), issued)
        if job.state == CANCELLED:
            return json_error(f"job {job.id} was cancelled", 409)
        return json_error(job.error or "render failed", 500)

    @app.get("/healthz")
    def healthz() -> Response:
        """Counts only (anyone may read it): no id, prompt or owner."""
        status = jobs.status()
        ready = status["model_loaded"] and status["worker_alive"]
        model = loaded.get("model")
        response = jsonify(
            status="ok" if ready else "loading" if not status["model_loaded"] else "worker stopped",
            **status,
            streams_open=slots.open,
            streams_max=slots.size,
            images_stored=None if store is None else len(store),
            model=None if model is None else model.hparams.get("pretrained"),
            checkpoint=checkpoint,
        )
        response.status_code = 200 if ready else 503
        return response

    install_a1111(app, defaults)
    install_openai_images(app, defaults)
    install_openapi(app, limits, token is not None)
    return app


def png_response(image: bytes, seed: int, job_id: str) -> Response:
    headers = {"X-Seed": str(seed), "X-Job-Id": job_id, "Cache-Control": "no-store"}
    return Response(image, mimetype="image/png", headers=headers)
