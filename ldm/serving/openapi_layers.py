"""The A1111 and OpenAI layers' routes in /openapi.json: their bodies from a1111.py's and openai_images.py's
field lists (api_schemas.py), their errors in their own shapes.

Why apart from our routes (openapi.py): each layer is a separate API with its own error body and clients;
its description changes with its module, not with ours.
"""

from __future__ import annotations

from ldm.generation.settings import Limits
from ldm.serving import api_schemas as s
from ldm.serving.openapi_ops import BUSY, OWNER, OWNER_ONLY, Describer, Schema, answer, json_content


def layer_paths(d: Describer, limits: Limits) -> dict[str, Schema]:
    """`/sdapi/v1/...` and `/v1/images/generations` under `limits`."""
    return {
        "/sdapi/v1/txt2img": {
            "post": d.op(
                "a1111_txt2img",
                "AUTOMATIC1111's txt2img: render and wait",
                {"200": answer("the image (none when interrupted) and its info", s.A1111_IMAGES)},
                error=s.A1111_ERROR,
                errors={"400": "a field this server cannot honour, named; or one out of range", "503": BUSY},
                body=json_content(s.a1111_request(limits)),
                params=[OWNER],
                writes=True,
                tag="a1111",
            )
        },
        "/sdapi/v1/progress": {
            "get": d.op(
                "a1111_progress",
                "the caller's running (else next) job: progress, time left, live preview",
                {"200": answer("progress", s.A1111_PROGRESS)},
                error=s.A1111_ERROR,
                errors={"400": OWNER_ONLY},
                params=[
                    {"name": "skip_current_image", "in": "query", "required": False, "schema": {"type": "boolean"}},
                    OWNER,
                ],
                tag="a1111",
            )
        },
        "/sdapi/v1/interrupt": {
            "post": d.op(
                "a1111_interrupt",
                "stop the caller's jobs",
                {"200": answer("done", s.closed({}))},
                error=s.A1111_ERROR,
                errors={"400": OWNER_ONLY},
                params=[OWNER],
                writes=True,
                tag="a1111",
            )
        },
        "/sdapi/v1/samplers": {
            "get": d.op(
                "a1111_samplers",
                "the samplers txt2img takes",
                {"200": answer("samplers", s.A1111_SAMPLERS)},
                error=s.A1111_ERROR,
                tag="a1111",
            )
        },
        "/sdapi/v1/scripts": {
            "get": d.op(
                "a1111_scripts",
                "none",
                {"200": answer("no scripts", s.A1111_SCRIPTS)},
                error=s.A1111_ERROR,
                tag="a1111",
            )
        },
        "/v1/images/generations": {
            "post": d.op(
                "openai_images_generations",
                "OpenAI's images.generate: n images, as b64_json",
                {"200": answer("the images", s.OPENAI_IMAGES)},
                error=s.OPENAI_ERROR,
                errors={"400": "a field this server cannot honour, named (param)", "409": "cancelled", "503": BUSY},
                body=json_content(s.openai_request(limits)),
                params=[OWNER],
                writes=True,
                tag="openai",
            )
        },
    }
