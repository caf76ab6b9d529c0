"""OpenAI's images API (`POST /v1/images/generations`), which `openai`'s client (`client.images.generate`
with `base_url` at this server) and tools built on it (Open WebUI) speak, as a thin layer over the job queue.

Why: such a tool needs only a base URL and a key to use this server. `n` images are `n` jobs with seeds
seed, seed+1, ...; `size` is "WxH" within `limits`; images come back as `b64_json` (there are no hosted
URLs to hand out). A field this project cannot honour is a 400 in OpenAI's error shape that names it.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import replace
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from ldm.errors import SamplingError
from ldm.generation.settings import SampleSettings
from ldm.serving.bodies import json_body
from ldm.serving.forms import parse_request
from ldm.serving.jobs import DONE, FAILED, Job
from ldm.serving.owners import owner_hash, owner_or_issue
from ldm.serving.security import json_error, register_error_shape
from ldm.serving.submission import ClientGone, Refused, Submitter

MAX_N = 4
SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
# fields read, and those accepted only at the values that change nothing here
READ = ("prompt", "n", "size", "response_format", "model", "user")
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "quality": ("auto", "standard"),
    "output_format": ("png",),
    "background": ("auto", "opaque"),
    "moderation": ("auto", "low"),
    "stream": (False,),
}


class BadField(SamplingError):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def openai_settings(fields: Any, defaults: SampleSettings) -> tuple[SampleSettings, int]:
    """An images.generate body -> (settings, n); what cannot be honoured -> BadField naming it."""
    if not isinstance(fields, dict):
        raise BadField("expected a JSON object with at least 'prompt'", None)
    for name, value in fields.items():
        if name in READ or value is None:
            continue
        if name not in NEUTRAL:
            raise BadField(f"unsupported field {name!r}: this server reads {', '.join(READ)}", name)
        if not any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in NEUTRAL[name]):
            raise BadField(f"{name}={value!r}: supported {' or '.join(map(repr, NEUTRAL[name]))}", name)
    fmt = fields.get("response_format")
    if fmt not in (None, "b64_json"):
        raise BadField(f"response_format={fmt!r}: only 'b64_json' (this server hosts no image URLs)", "response_format")
    n = fields.get("n")
    n = 1 if n is None else int(n) if isinstance(n, float) and n.is_integer() else n  # JSON's 1.0 is an integer
    if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_N):
        raise BadField(f"n={n!r}: expected an integer from 1 to {MAX_N}", "n")
    ours: dict[str, Any] = {"prompt": fields.get("prompt")}
    size = fields.get("size")
    if size not in (None, "auto"):
        # ASCII digits only: "²x²" passed str.isdigit() and then int() raised (a 500, found by hand after the
        # fuzzer's first finds); at most 5 each, since int() of a 5000-digit string raises too
        match = SIZE.fullmatch(size) if isinstance(size, str) else None
        if match is None:
            raise BadField(f"size={size!r}: expected 'WIDTHxHEIGHT' such as '512x512', or 'auto'", "size")
        ours.update(width=int(match[1]), height=int(match[2]))
    try:
        return parse_request(ours, defaults), n
    except SamplingError as err:
        raise BadField(str(err), None) from None


def install_openai_images(app: Flask, defaults: SampleSettings) -> None:
    api = Blueprint("openai_images", __name__, url_prefix="/v1")
    submitter: Submitter = app.extensions["ldm_submitter"]

    def error(message: str, status: int, param: str | None = None, retry_after: int | None = None) -> Response:
        return json_error(message, status, openai_error(message, status, param), Retry_After=retry_after)

    @api.post("/images/generations")
    def generations() -> Response:
        try:
            settings, n = openai_settings(json_body(request), defaults)
        except BadField as err:
            return error(str(err), 400, err.param)
        except SamplingError as err:  # the body itself (json_body)
            return error(str(err), 400)
        token, _ = owner_or_issue(request)
        jobs: list[Job] = []
        try:
            for i in range(n):  # seeds seed, seed+1, ...: the first job draws the seed when none is given
                first = jobs[0].settings.seed if jobs else settings.seed
                wanted = settings if first is None else replace(settings, seed=first + i)
                jobs.append(submitter.submit(wanted, owner_hash(token)))
            submitter.wait(jobs, request)
        except Refused as err:
            for job in jobs:
                submitter.queue.cancel(job.id)
            return error(str(err), err.status, retry_after=err.retry_after)
        except ClientGone:
            return error("client went away; jobs cancelled", 499)
        failed = [job for job in jobs if job.state != DONE]
        if failed:
            job = failed[0]
            reason = job.error if job.state == FAILED else f"job {job.id} was cancelled"
            return error(reason or "render failed", 500 if job.state == FAILED else 409)
        data = [{"b64_json": base64.b64encode(job.image).decode(), "revised_prompt": None} for job in jobs]
        return jsonify(created=int(time.time()), data=data)

    app.register_blueprint(api)
    register_error_shape(app, api.name, openai_error)


def openai_error(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body, which its client turns into `APIStatusError.message`, `.type` and `.param`."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}
