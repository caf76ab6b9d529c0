"""JSON Schemas of the request and response bodies, for /openapi.json (openapi.py).

Why built here from the code's own definitions rather than written out by hand: the request schemas come
from the field lists the parsers read (forms.FIELDS, a1111.READ/NEUTRAL, openai_images.READ/NEUTRAL), the
schedulers and samplers they map, and the `Limits` the server was started with, so a field added to a parser
or a limit changed in conf/app.yaml changes the description too. What the parsers check in code (a prompt
must not be blank, sizes are multiples of 8) is said here in JSON Schema; tests/test_serving_fuzz.py sends
what these schemas allow and what they do not, and fails when the server and the schemas disagree.
"""

from __future__ import annotations

from typing import Any

from ldm.generation.schedulers import SCHEDULERS
from ldm.generation.settings import MAX_SEED, Limits
from ldm.serving import a1111, forms, openai_images
from ldm.serving.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING

Schema = dict[str, Any]
STATES = [QUEUED, RUNNING, DONE, FAILED, CANCELLED]
NOT_BLANK = r"\S"  # validate_settings: "prompt is empty" for one of only spaces


def nullable(schema: Schema) -> Schema:
    """`schema` or null (null means "not given": the default applies)."""
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*kinds, "null"]}


def closed(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    """A closed object (every field required unless `required` says which): a field the code adds to an answer
    without adding it here breaks the fuzz test's schema check."""
    names = list(properties) if required is None else required
    return {"type": "object", "properties": properties, "required": names, "additionalProperties": False}


def prompt(limits: Limits) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": limits.max_prompt_chars, "pattern": NOT_BLANK}


def size(limits: Limits) -> Schema:
    return {"type": "integer", "minimum": limits.min_size, "maximum": limits.max_size, "multipleOf": 8}


def field_schemas(limits: Limits) -> dict[str, Schema]:
    """Each field `forms.parse_request` reads, with the range `validate_settings` checks against `limits`."""
    return {
        "prompt": prompt(limits),
        "negative_prompt": {"type": "string", "maxLength": limits.max_prompt_chars},
        "scheduler": {"type": "string", "enum": list(SCHEDULERS)},
        "steps": {"type": "integer", "minimum": 1, "maximum": limits.max_steps},
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "description": "null or left out: random"},
        "height": {**size(limits), "description": "null or left out: the model's own size"},
        "width": {**size(limits), "description": "null or left out: the model's own size"},
        "guidance_scale": {"type": "number", "minimum": 0, "maximum": limits.max_guidance},
    }


def job_request(limits: Limits, *, form: bool = False) -> Schema:
    """`POST /jobs` and `POST /generate`: forms.FIELDS, prompt required; in a form, no nulls (leave it out)."""
    fields = field_schemas(limits)
    properties = {name: fields[name] if form or name == "prompt" else nullable(fields[name]) for name in forms.FIELDS}
    return closed(properties, ["prompt"])


def a1111_request(limits: Limits) -> Schema:
    """`POST /sdapi/v1/txt2img`: the fields read, those accepted only at their neutral value (an enum of it),
    the hires ones (ignored, since enable_hr must be false), and any other field only as null."""
    fields = field_schemas(limits)
    samplers = {"type": "string", "enum": [*a1111.SAMPLERS, ""]}
    read = {
        "prompt": fields["prompt"],
        "negative_prompt": fields["negative_prompt"],
        "steps": fields["steps"],
        "cfg_scale": fields["guidance_scale"],
        "seed": {"type": "integer", "minimum": -1, "maximum": MAX_SEED, "description": "-1: random"},
        "width": fields["width"],
        "height": fields["height"],
        "sampler_name": samplers,
        "sampler_index": samplers,
    }
    assert set(read) == set(a1111.READ), "a1111.READ and its schema differ"
    properties = {name: nullable(schema) for name, schema in read.items()}
    properties["prompt"] = read["prompt"]
    for name, values in a1111.NEUTRAL.items():
        properties[name] = {"enum": [*_json_values(values), None]}
    for name in a1111.ANY_VALUE:
        properties[name] = {"description": "accepted, and ignored"}
    return {
        **closed(properties, ["prompt"]),
        "patternProperties": {f"^(?:{'|'.join(a1111.HIRES)})": {"description": "hires fix: ignored"}},
        "additionalProperties": {"type": "null", "description": "any other field only as null"},
    }


def _json_values(values: tuple[Any, ...]) -> list[Any]:
    """Neutral values as JSON sees them, each once: 1 and 1.0 are one value there."""
    unique: list[Any] = []
    for value in values:
        value = int(value) if isinstance(value, float) and value.is_integer() else value
        if not any(value == u and type(value) is type(u) for u in unique):
            unique.append(value)
    return unique


def size_pattern(limits: Limits) -> str:
    """'WIDTHxHEIGHT' with each side a multiple of 8 within the limits (an alternation: exact, and short for
    the few dozen sizes a server allows)."""
    sides = "|".join(str(n) for n in range(limits.min_size, limits.max_size + 1) if n % 8 == 0)
    return f"^(?:{sides})x(?:{sides})$"


def openai_request(limits: Limits) -> Schema:
    """`POST /v1/images/generations`: openai_images.READ, NEUTRAL fields at their neutral values, others null."""
    read = {
        "prompt": prompt(limits),
        "n": {"type": ["integer", "null"], "minimum": 1, "maximum": openai_images.MAX_N},
        "size": {
            "anyOf": [{"type": "string", "pattern": size_pattern(limits)}, {"enum": ["auto", None]}],
            "description": f"'WIDTHxHEIGHT', each {limits.min_size} to {limits.max_size} in steps of 8, or 'auto'",
        },
        "response_format": {"enum": ["b64_json", None], "description": "only b64_json: no hosted URLs"},
        "model": {"type": ["string", "null"], "description": "ignored"},
        "user": {"type": ["string", "null"], "description": "ignored"},
    }
    assert set(read) == set(openai_images.READ), "openai_images.READ and its schema differ"
    properties = {**read}
    for name, values in openai_images.NEUTRAL.items():
        properties[name] = {"enum": [*_json_values(values), None]}
    return {**closed(properties, ["prompt"]), "additionalProperties": {"type": "null"}}


# --- responses ----------------------------------------------------------------------------------------------
INT0 = {"type": "integer", "minimum": 0}
NUMBER0 = {"type": "number", "minimum": 0}


def _job_status() -> Schema:
    """What `Job.snapshot()` (and a stored image's sidecar) answers."""
    settings = closed(
        {
            "negative_prompt": {"type": "string"},
            "steps": {"type": "integer", "minimum": 1},
            "guidance_scale": {"type": "number"},
            "scheduler": {"type": "string", "enum": list(SCHEDULERS)},
            "height": {"type": ["integer", "null"]},
            "width": {"type": ["integer", "null"]},
        },
    )
    properties = {
        "id": {"type": "string"},
        "state": {"type": "string", "enum": STATES},
        "position": {**INT0, "description": "1: next to run; 0 once it runs or ends"},
        "step": INT0,
        "steps": {"type": "integer", "minimum": 1},
        "elapsed_s": NUMBER0,
        "eta_s": {"type": ["number", "null"], "minimum": 0},
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
        "error": {"type": ["string", "null"]},
        "preview_step": INT0,
        "prompt": {"type": "string"},
        "settings": settings,
    }
    return closed(properties)


JOB_STATUS = _job_status()
# one Server-Sent Event of GET /jobs/<id>/events (OpenAPI 3.1: a text/event-stream schema describes each event)
JOB_EVENT = {
    **closed(
        {
            "event": {"type": "string", "enum": ["step", "state"]},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": JOB_STATUS},
        }
    ),
    "description": "`step` once per denoising step, `state` once per state change; the last state ends it",
}
JOB_CREATED = closed(
    {
        "id": {"type": "string"},
        "state": {"type": "string", "enum": STATES},
        "position": INT0,
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
        "owner_token": {"type": "string", "description": "only when the request carried none: keep it"},
    },
    ["id", "state", "position", "seed"],
)
ERROR = closed({"error": {"type": "string", "description": "what was wrong, in words"}}, ["error"])
A1111_ERROR = closed({"error": {"type": "string"}, "detail": {"type": "string"}})
OPENAI_ERROR = closed(
    {
        "error": closed(
            {
                "message": {"type": "string"},
                "type": {"type": "string", "enum": ["invalid_request_error", "server_error"]},
                "param": {"type": ["string", "null"]},
                "code": {"type": "null"},
            },
        )
    }
)
HEALTH = closed(
    {
        "status": {"type": "string", "enum": ["ok", "loading", "worker stopped"]},
        "model_loaded": {"type": "boolean"},
        "worker_alive": {"type": "boolean"},
        "queue_length": INT0,
        "queue_size": INT0,
        "running": {"oneOf": [closed({"step": INT0, "steps": {"type": "integer", "minimum": 1}}), {"type": "null"}]},
        "jobs_kept": INT0,
        "streams_open": INT0,
        "streams_max": INT0,
        "images_stored": {"type": ["integer", "null"], "minimum": 0, "description": "null: keep_images=false"},
        "seconds_per_step_512": {"type": ["number", "null"], "minimum": 0},
        "model": {"type": ["string", "null"]},
        "checkpoint": {"type": ["string", "null"]},
    }
)
BASE64 = {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"}
A1111_IMAGES = closed(
    {
        "images": {"type": "array", "items": BASE64, "maxItems": 1, "description": "empty when interrupted"},
        "parameters": {"type": "object", "description": "the request's fields, as sent"},
        "info": {"type": "string", "description": "a JSON object: prompt, seed, sampler_name, infotexts, ..."},
    }
)
A1111_STATE = closed(
    {
        "skipped": {"type": "boolean"},
        "interrupted": {"type": "boolean"},
        "job_timestamp": {"type": "string", "pattern": r"^\d{14}$"},
        "job": {"type": "string", "description": "the job's id; empty when none"},
        "job_count": INT0,
        "job_no": INT0,
        "sampling_step": INT0,
        "sampling_steps": INT0,
    },
)
A1111_PROGRESS = closed(
    {
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "eta_relative": NUMBER0,
        "state": A1111_STATE,
        "current_image": {"type": ["string", "null"], "contentEncoding": "base64", "description": "live preview"},
        "textinfo": {"type": ["string", "null"]},
    }
)
A1111_SAMPLERS = {
    "type": "array",
    "items": closed(
        {
            "name": {"type": "string", "enum": list(a1111.SAMPLERS)},
            "aliases": {"type": "array", "items": {"type": "string"}},
            "options": {"type": "object"},
        }
    ),
}
A1111_SCRIPTS = closed({"txt2img": {"type": "array", "maxItems": 0}, "img2img": {"type": "array", "maxItems": 0}})
OPENAI_IMAGES = closed(
    {
        "created": {"type": "integer", "description": "Unix time"},
        "data": {
            "type": "array",
            "minItems": 1,
            "maxItems": openai_images.MAX_N,
            "items": closed({"b64_json": BASE64, "revised_prompt": {"type": "null"}}),
        },
    },
)
