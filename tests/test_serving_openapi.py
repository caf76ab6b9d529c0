"""`GET /openapi.json`: a valid OpenAPI 3.1 document that describes every route the app has (and no other),
readable without the token like /healthz, with the bearer scheme, the error answers and their bodies, and
request schemas that follow the parsers' fields and the configured limits. Flask's test client, no model."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask
from openapi_spec_validator import validate

from ldm.serving import a1111, forms, openai_images
from ldm.serving.configure import app_from_config
from tests.conftest import compose_config

TOKEN = "an-openapi-token-with-enough-characters"
JSON = "application/json"


def make(*overrides: str, token: str | None = None) -> Flask:
    return app_from_config(compose_config("app", ["model=tiny", "keep_images=false", *overrides]), None, token=token)


@pytest.fixture(scope="module")
def guarded() -> Iterator[Flask]:
    app = make(token=TOKEN)
    yield app
    app.extensions["ldm_queue"].close()


@pytest.fixture(scope="module")
def document(guarded: Flask) -> dict:
    response = guarded.test_client().get("/openapi.json")  # no token: readable like /healthz
    assert response.status_code == 200
    return response.get_json()


def test_it_is_a_valid_openapi_3_1_document_with_and_without_a_token(document: dict) -> None:
    validate(document)
    app = make("limits.max_size=128")
    try:
        open_document = app.test_client().get("/openapi.json").get_json()
    finally:
        app.extensions["ldm_queue"].close()
    validate(open_document)
    assert document["openapi"] == "3.1.0" and "security" not in open_document


def test_it_describes_every_route_of_the_app_and_no_other(guarded: Flask, document: dict) -> None:
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in guarded.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    assert described == routes
    assert {"/sdapi/v1/txt2img", "/v1/images/generations", "/healthz", "/jobs/{job_id}/events"} <= set(
        document["paths"]
    )


def test_the_token_guards_every_operation_but_healthz_and_this_description(guarded: Flask, document: dict) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert {"bearerAuth": []} in document["security"]
    client = guarded.test_client()
    for path, item in document["paths"].items():
        for method, op in item.items():
            if path in ("/healthz", "/openapi.json"):
                assert op["security"] == [] and "401" not in op["responses"]
            else:
                assert "security" not in op and "401" in op["responses"], (method, path)
    assert client.get("/jobs").status_code == 401 and client.get("/openapi.json").status_code == 200


def test_errors_are_described_with_the_body_each_api_sends(document: dict) -> None:
    def error_schema(path: str, method: str, status: str) -> dict:
        return document["paths"][path][method]["responses"][status]["content"][JSON]["schema"]

    for status in ("400", "403", "503"):
        assert error_schema("/jobs", "post", status)["required"] == ["error"]
    assert error_schema("/jobs/{job_id}", "get", "404")["properties"]["error"]["type"] == "string"
    assert "Retry-After" in document["paths"]["/jobs"]["post"]["responses"]["503"]["headers"]
    assert set(error_schema("/sdapi/v1/txt2img", "post", "400")["required"]) == {"error", "detail"}
    openai = error_schema("/v1/images/generations", "post", "400")["properties"]["error"]
    assert set(openai["required"]) == {"message", "type", "param", "code"}


def test_request_schemas_follow_the_parsers_fields_and_the_configured_limits() -> None:
    app = make("limits.max_steps=30", "limits.max_size=512", "limits.max_prompt_chars=99")
    try:
        paths = app.test_client().get("/openapi.json").get_json()["paths"]
    finally:
        app.extensions["ldm_queue"].close()

    def body(path: str) -> dict:
        return paths[path]["post"]["requestBody"]["content"][JSON]["schema"]

    ours = body("/jobs")
    assert set(ours["properties"]) == set(forms.FIELDS) and ours["required"] == ["prompt"]
    assert ours["properties"]["steps"]["maximum"] == 30 and ours["properties"]["width"]["maximum"] == 512
    assert ours["properties"]["prompt"]["maxLength"] == 99 and ours["additionalProperties"] is False
    theirs = body("/sdapi/v1/txt2img")["properties"]
    assert set(a1111.READ) | set(a1111.NEUTRAL) | set(a1111.ANY_VALUE) == set(theirs)
    assert theirs["steps"]["maximum"] == 30 and theirs["restore_faces"]["enum"] == [False, None]
    openai = body("/v1/images/generations")["properties"]
    assert set(openai_images.READ) | set(openai_images.NEUTRAL) == set(openai)
    pattern = openai["size"]["anyOf"][0]["pattern"]
    assert re.match(pattern, "512x64") and not re.match(pattern, "520x64") and not re.match(pattern, "60x64")
