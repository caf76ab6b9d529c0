"""The pieces of /openapi.json's operations: the parameters and headers many routes share, answers, and
`Describer.op`, which adds the errors every route can give (401, 403, 413, 500) in its layer's error shape.

Why apart from the paths (openapi.py, openapi_layers.py): the rule "every route answers these errors" lives
once, so a new route cannot forget its 403 or 500 in the description.
"""

from __future__ import annotations

from typing import Any

from ldm.serving import api_schemas as s
from ldm.serving.owners import MIN_OWNER_CHARS, OWNER_COOKIE, OWNER_HEADER

Schema = dict[str, Any]
JSON = "application/json"
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
OWNER = {
    "name": OWNER_HEADER,
    "in": "header",
    "required": False,
    "description": f"the client's secret (or the {OWNER_COOKIE} cookie): jobs are private to it; "
    "left out, a submit is issued one",
    "schema": {"type": "string", "minLength": MIN_OWNER_CHARS, "maxLength": 256, "pattern": "^[!-~]+$"},
}
RETRY_AFTER = {"Retry-After": {"description": "seconds", "schema": {"type": "integer", "minimum": 0}}}
ISSUED = {OWNER_HEADER: {"description": "a newly issued owner token: send it back", "schema": {"type": "string"}}}
BUSY = "busy: queue_size jobs already wait (Retry-After)"
OWNER_ONLY = "a short owner token"
PNG = {"image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}}}


def json_content(schema: Schema) -> Schema:
    """A JSON body of `schema`."""
    return {JSON: {"schema": schema}}


def answer(
    description: str, schema: Schema | None = None, headers: Schema | None = None, content: Schema | None = None
) -> Schema:
    """A response: a JSON body of `schema`, or `content` as given, and its `headers`."""
    response: Schema = {"description": description}
    if schema is not None or content is not None:
        response["content"] = content if content is not None else json_content(schema)
    if headers:
        response["headers"] = headers
    return response


class Describer:
    """Operations with the errors every route can give, in the error shape of the layer it belongs to."""

    def __init__(self, token: bool) -> None:
        self.token = token

    def op(
        self,
        op_id: str,
        summary: str,
        answers: dict[str, Schema],
        *,
        error: Schema = s.ERROR,
        errors: dict[str, str] | None = None,
        body: Schema | None = None,
        params: list[Schema] | None = None,
        writes: bool = False,
        open_: bool = False,
        tag: str = "jobs",
    ) -> Schema:
        """One operation: `answers` as given, `errors` (status -> when) in `error`'s shape, and those of the
        protections: 401 (a token is set and the route needs it), 403 (Host; Origin on writes), 413, 500."""
        when = dict(errors or {})
        cross_site = "; or a cross-site request (Origin, Sec-Fetch-Site)" if writes else ""
        when["403"] = f"the Host is not allowed{cross_site}"
        if self.token and not open_:
            when["401"] = "no token, or a wrong one"
        if body is not None:
            when["413"] = "the body is over max_request_bytes"
        when["500"] = "an internal error: the body holds an error id, the server log the traceback"
        responses = dict(answers)
        for status, description in sorted(when.items()):
            headers = RETRY_AFTER if status == "503" else None
            if status == "401":
                headers = {"WWW-Authenticate": {"schema": {"type": "string"}}}
            responses.setdefault(status, answer(description, error, headers))
        op: Schema = {"operationId": op_id, "summary": summary, "tags": [tag], "responses": responses}
        if params:
            op["parameters"] = params
        if body is not None:
            op["requestBody"] = {"required": True, "content": body}
        if open_:
            op["security"] = []
        return op
