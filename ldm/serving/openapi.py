"""`GET /openapi.json`: an OpenAPI 3.1 description of every route (ours here, A1111's and OpenAI's in
openapi_layers.py, /healthz), built when the app is made, from its limits and whether it needs a token.

Why a plain dict and no library: the bodies' schemas already come from the parsers' own field lists
(api_schemas.py); what is left is the paths, their answers and the security schemes, data that a framework
(flask-openapi3 with pydantic models, apispec with marshmallow schemas) would only make us restate as
classes beside the parsers: a second source of truth, and a rewrite of the routes. The document is readable
without the token, like /healthz: it holds the route shapes and the limits, which a client needs before it
can authenticate, and no job, prompt, host name or secret.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify

from ldm.generation.settings import Limits
from ldm.serving import api_schemas as s
from ldm.serving.auth import TOKEN_COOKIE
from ldm.serving.openapi_layers import layer_paths
from ldm.serving.openapi_ops import BUSY, ISSUED, JOB_ID, JSON, OWNER, OWNER_ONLY, PNG, Describer, Schema, answer

ROUTE = "/openapi.json"
SECURITY = [{"bearerAuth": []}, {"basicAuth": []}, {"cookieAuth": []}]


def openapi_document(limits: Limits, *, token: bool) -> Schema:
    """The description of this app's routes under `limits` (`token`: whether auth.token is set)."""
    d = Describer(token)
    job = s.JOB_STATUS
    job_body = {
        JSON: {"schema": s.job_request(limits)},
        "application/x-www-form-urlencoded": {"schema": s.job_request(limits, form=True)},
        "multipart/form-data": {"schema": s.job_request(limits, form=True)},
    }
    refused = "a field out of range or unknown, a blank prompt, a cost over limits.max_seconds, or a short owner token"
    unknown = "no such job for this client (unknown, someone else's, or forgotten)"
    links = {
        name: {"operationId": op_id, "parameters": {"job_id": "$response.body#/id"}}
        for name, op_id in (
            ("status", "job_status"),
            ("cancel", "cancel_job"),
            ("events", "job_events"),
            ("preview", "job_preview"),
            ("image", "job_image"),
        )
    }
    created = answer(
        "queued",
        s.JOB_CREATED,
        {"Location": {"required": True, "schema": {"type": "string"}}, **ISSUED},
    )
    created["links"] = links
    png_headers = {
        "X-Seed": {"required": True, "schema": {"type": "string", "pattern": r"^\d+$"}},
        "X-Job-Id": {"required": True, "schema": {"type": "string"}},
    }
    index_params = [{"name": "token", "in": "query", "required": False, "schema": {"type": "string"}}]
    index_answers = {"200": answer("the page", content={"text/html": {"schema": {"type": "string"}}})}
    if token:
        index_answers["303"] = answer("the right ?token=: it becomes a cookie, and the page is / again")
    paths: dict[str, Schema] = {
        "/": {"get": d.op("index", "the page", index_answers, params=index_params if token else None, tag="page")},
        "/jobs": {
            "post": d.op(
                "create_job",
                "queue a render",
                {"202": created},
                errors={"400": refused, "503": BUSY},
                body=job_body,
                params=[OWNER],
                writes=True,
            ),
            "get": d.op(
                "list_jobs",
                "this client's jobs, newest first, live and on disk",
                {"200": answer("the jobs", s.closed({"jobs": {"type": "array", "items": job}}))},
                errors={"400": OWNER_ONLY},
                params=[OWNER],
            ),
        },
        "/jobs/{job_id}": {
            "get": d.op(
                "job_status",
                "a job's state, step, time left",
                {"200": answer("the job", job)},
                errors={"400": OWNER_ONLY, "404": unknown},
                params=[JOB_ID, OWNER],
            ),
            "delete": d.op(
                "cancel_job",
                "stop a job (a running one at the end of its step)",
                {"200": answer("the job, as the cancel left it", job)},
                errors={"400": OWNER_ONLY, "404": unknown},
                params=[JOB_ID, OWNER],
                writes=True,
            ),
        },
        "/jobs/{job_id}/events": {
            "get": d.op(
                "job_events",
                "the job's snapshots as Server-Sent Events (`step`, `state`), ending after the last state",
                {"200": answer("the stream", content={"text/event-stream": {"schema": s.JOB_EVENT}})},
                errors={"400": OWNER_ONLY, "404": unknown, "503": "limits.streams streams are open: poll instead"},
                params=[JOB_ID, OWNER],
            )
        },
        "/jobs/{job_id}/preview.png": {
            "get": d.op(
                "job_preview",
                "the latest step preview (1/8 of the size) while the job runs",
                {"200": answer("the preview", content=PNG)},
                errors={"400": OWNER_ONLY, "404": f"{unknown}; or no preview (yet, or any more)"},
                params=[JOB_ID, OWNER],
            )
        },
        "/jobs/{job_id}/image.png": {
            "get": d.op(
                "job_image",
                "the finished image, with its settings in PNG text chunks",
                {"200": answer("the image", content=PNG, headers=png_headers)},
                errors={"400": OWNER_ONLY, "404": f"{unknown}; or not done"},
                params=[JOB_ID, OWNER],
            )
        },
        "/generate": {
            "post": d.op(
                "generate_image",
                "render and wait: the PNG (cancelled when the client goes away)",
                {"200": answer("the image", content=PNG, headers={**png_headers, **ISSUED})},
                errors={"400": refused, "409": "cancelled meanwhile", "503": BUSY},
                body=job_body,
                params=[OWNER],
                writes=True,
            )
        },
        "/healthz": {
            "get": d.op(
                "healthz",
                "counts only (never an id or a prompt); needs no token",
                {"200": answer("ready", s.HEALTH), "503": answer("loading, or the worker stopped", s.HEALTH)},
                open_=True,
                tag="server",
            )
        },
        ROUTE: {
            "get": d.op(
                "openapi",
                "this description; needs no token",
                {"200": answer("OpenAPI 3.1", {"type": "object"})},
                open_=True,
                tag="server",
            )
        },
    }
    document: Schema = {
        "openapi": "3.1.0",
        "info": {
            "title": "ldm: Stable Diffusion with a fine-tuned text encoder, on a CPU",
            "version": "1",
            "description": "Jobs, AUTOMATIC1111's API and OpenAI's images API on one queue (docs/serving.md). "
            + ("Every route but /healthz and /openapi.json needs the token." if token else "No token is set."),
        },
        "servers": [{"url": "/"}],
        "paths": {**paths, **layer_paths(d, limits)},
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "auth.token / LDM_APP_TOKEN"},
                "basicAuth": {"type": "http", "scheme": "basic", "description": "any user, the token as password"},
                "cookieAuth": {"type": "apiKey", "in": "cookie", "name": TOKEN_COOKIE, "description": "from /?token="},
            }
        },
    }
    if token:
        document["security"] = SECURITY
    return document


def install_openapi(app: Flask, limits: Limits, token: bool) -> None:
    """`GET /openapi.json`, built once (the limits and the token are fixed while the app runs)."""
    document = openapi_document(limits, token=token)

    @app.get(ROUTE)
    def openapi() -> Response:
        return jsonify(document)
