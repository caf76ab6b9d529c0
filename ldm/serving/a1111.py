"""AUTOMATIC1111's web UI API (`/sdapi/v1/...`), the one most Stable Diffusion tools speak (webuiapi,
SillyTavern, Open WebUI, Krita plugins), as a thin layer over this app's job queue.

Why a layer and not a second server: the same queue, limits, cost bound, progress and cancel apply; only the
request and answer shapes differ. A1111's clients send every field of its form, mostly at its defaults, so a
field this project cannot honour is accepted at its neutral value (what A1111 itself does with it there) and
refused with a 400 that names it otherwise, never ignored in silence.
A1111 has no owner token: its progress and interrupt are global. Here they cover the caller's own jobs: those
of its `X-Owner-Token` (or cookie) when it sends one, else of its address and credentials.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from ldm.errors import SamplingError
from ldm.generation.settings import SampleSettings
from ldm.serving.bodies import json_body
from ldm.serving.forms import parse_request
from ldm.serving.jobs import CANCELLED, DONE, FAILED, FINAL, Job
from ldm.serving.owners import owner_hash, presented_owner
from ldm.serving.security import json_error, register_error_shape
from ldm.serving.submission import ClientGone, Refused, Submitter

# A1111's sampler names (and their old k-diffusion aliases) -> this project's schedulers
SAMPLERS = {
    "Euler a": "euler_a",
    "k_euler_a": "euler_a",
    "Euler": "euler",
    "k_euler": "euler",
    "DPM++ 2M": "dpm++",
    "k_dpmpp_2m": "dpm++",
    "DPM++ 2M Karras": "dpm++_karras",
    "k_dpmpp_2m_ka": "dpm++_karras",
    "UniPC": "unipc",
    "DDIM": "ddim",
    "PLMS": "pndm",
}
# the fields read; and those accepted only at the values where A1111 renders as this project does
READ = ("prompt", "negative_prompt", "steps", "cfg_scale", "seed", "width", "height", "sampler_name", "sampler_index")
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "enable_hr": (False,),
    "styles": ([],),
    "subseed": (-1, 0),
    "subseed_strength": (0, 0.0),
    "seed_resize_from_h": (-1, 0),
    "seed_resize_from_w": (-1, 0),
    "batch_size": (1,),
    "n_iter": (1,),
    "scheduler": ("automatic", "Automatic"),
    "restore_faces": (False,),
    "tiling": (False,),
    "eta": (1, 1.0),
    "s_churn": (0,),
    "s_tmax": (0,),
    "s_tmin": (0,),
    "s_noise": (1,),
    "override_settings": ({},),
    "script_args": ([],),
    "script_name": ("",),
    "send_images": (True,),
    "alwayson_scripts": ({},),
    "disable_extra_networks": (False,),
}
ANY_VALUE = ("do_not_save_samples", "do_not_save_grid", "save_images", "override_settings_restore_afterwards")
HIRES = ("hr_", "denoising_strength", "firstphase_")  # used only with enable_hr, which must be false


def settings_from_a1111(fields: Any, defaults: SampleSettings) -> SampleSettings:
    """A `/sdapi/v1/txt2img` body -> settings; a field this project cannot honour -> SamplingError naming it."""
    if not isinstance(fields, dict):
        raise SamplingError("expected a JSON object with at least 'prompt'")
    refused = []
    for name, value in fields.items():
        if name in READ or name in ANY_VALUE or value is None or name.startswith(HIRES):
            continue
        if name not in NEUTRAL:
            refused.append(f"{name} (not supported)")
        elif not any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in NEUTRAL[name]):
            refused.append(f"{name}={value!r} (supported: {' or '.join(map(repr, NEUTRAL[name]))})")
    if refused:
        raise SamplingError(f"unsupported A1111 fields: {', '.join(refused)}")
    ours: dict[str, Any] = {"prompt": fields.get("prompt"), "negative_prompt": fields.get("negative_prompt")}
    for theirs, name in (("steps", "steps"), ("cfg_scale", "guidance_scale"), ("width", "width"), ("height", "height")):
        ours[name] = fields.get(theirs)
    seed = fields.get("seed")
    ours["seed"] = None if seed in (-1, "-1") else seed
    sampler = fields.get("sampler_name") or fields.get("sampler_index")
    if sampler:
        if not isinstance(sampler, str) or sampler not in SAMPLERS:  # a list is unhashable: a 500 before
            raise SamplingError(f"sampler_name={sampler!r}: expected one of {', '.join(SAMPLERS)}")
        ours["scheduler"] = SAMPLERS[sampler]
    return parse_request({k: v for k, v in ours.items() if v is not None}, defaults)


def sampler_name(scheduler: str) -> str:
    return next(name for name, ours in SAMPLERS.items() if ours == scheduler and not name.startswith("k_"))


def caller() -> str:
    """The owner hash of an A1111 client: its owner token if it sends one, else its address and credentials."""
    token = presented_owner(request)
    if token is None:
        token = f"a1111:{request.remote_addr}:{request.headers.get('Authorization', '')}"
    return owner_hash(token)


def install_a1111(app: Flask, defaults: SampleSettings) -> None:
    """`POST /sdapi/v1/txt2img`, `GET /sdapi/v1/progress`, `POST /sdapi/v1/interrupt` and the listings its
    clients read first (samplers, scripts)."""
    api = Blueprint("a1111", __name__, url_prefix="/sdapi/v1")
    submitter: Submitter = app.extensions["ldm_submitter"]
    queue = submitter.queue

    def error(message: str, status: int, retry_after: int | None = None) -> Response:
        return json_error(message, status, Retry_After=retry_after)

    @api.post("/txt2img")
    def txt2img() -> Response:
        try:
            fields = json_body(request)
            settings = settings_from_a1111(fields, defaults)
            job = submitter.submit(settings, caller())
        except SamplingError as err:
            return error(str(err), 400)
        except Refused as err:
            return error(str(err), err.status, err.retry_after)
        try:
            submitter.wait([job], request)
        except ClientGone:
            return error("client went away; job cancelled", 499)
        if job.state == FAILED:
            return error(job.error or "render failed", 500)
        s = job.settings
        size = (s.width or queue.native_size, s.height or queue.native_size)
        info = {
            "prompt": s.prompts[0],
            "all_prompts": [s.prompts[0]],
            "negative_prompt": s.negative_prompt,
            "seed": s.seed,
            "all_seeds": [s.seed],
            "width": size[0],
            "height": size[1],
            "sampler_name": sampler_name(s.scheduler),
            "cfg_scale": s.guidance_scale,
            "steps": s.steps,
            "batch_size": 1,
            "job_id": job.id,
            "interrupted": job.state == CANCELLED,
            "infotexts": [infotext(s, size)],
        }
        images = [base64.b64encode(job.image).decode()] if job.state == DONE else []
        return jsonify(images=images, parameters=fields, info=json.dumps(info, ensure_ascii=False))

    def current(owner: str) -> tuple[Job | None, int]:
        """The caller's job to report on (the running one, else the next queued), and how many are unfinished."""
        mine = [job for job in queue.owned(owner) if job.state not in FINAL]
        running = [job for job in mine if job.started is not None]
        return (running or mine or [None])[0], len(mine)

    @api.get("/progress")
    def progress() -> Response:
        job, count = current(caller())
        skip_image = request.args.get("skip_current_image", "false").lower() == "true"
        if job is None:
            state = {"job": "", "job_count": 0, "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
            return jsonify(progress=0.0, eta_relative=0.0, state=_state(state), current_image=None, textinfo=None)
        snapshot = job.snapshot()
        fraction = snapshot["step"] / snapshot["steps"] if snapshot["steps"] else 0.0
        state = {
            "job": job.id,
            "job_count": count,
            "job_no": 0,
            "sampling_step": snapshot["step"],
            "sampling_steps": snapshot["steps"],
            "interrupted": job.cancel_requested,
        }
        preview = None if skip_image or job.preview is None else base64.b64encode(job.preview).decode()
        return jsonify(
            progress=round(fraction, 4),
            eta_relative=snapshot["eta_s"] or 0.0,
            state=_state(state),
            current_image=preview,
            textinfo=f"step {snapshot['step']}/{snapshot['steps']}" if job.started else "queued",
        )

    @api.post("/interrupt")
    def interrupt() -> Response:
        for job in queue.owned(caller()):
            if job.state not in FINAL:
                queue.cancel(job.id)
        return jsonify({})

    @api.get("/samplers")
    def samplers() -> Response:
        names = [name for name in SAMPLERS if not name.startswith("k_")]
        return jsonify([{"name": name, "aliases": [SAMPLERS[name]], "options": {}} for name in names])

    @api.get("/scripts")
    def scripts() -> Response:
        return jsonify(txt2img=[], img2img=[])

    app.register_blueprint(api)
    register_error_shape(app, api.name, lambda message, status: {"error": message, "detail": message})


def _state(fields: dict[str, Any]) -> dict[str, Any]:
    return {"skipped": False, "interrupted": False, "job_timestamp": time.strftime("%Y%m%d%H%M%S"), **fields}


def infotext(s: SampleSettings, size: tuple[int, int]) -> str:
    """A1111's one-paragraph description of an image (its clients parse it)."""
    negative = f"\nNegative prompt: {s.negative_prompt}" if s.negative_prompt else ""
    return (
        f"{s.prompts[0]}{negative}\nSteps: {s.steps}, Sampler: {sampler_name(s.scheduler)}, "
        f"CFG scale: {s.guidance_scale}, Seed: {s.seed}, Size: {size[0]}x{size[1]}"
    )
