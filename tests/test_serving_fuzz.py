"""Property-based fuzzing of the real server (waitress on loopback, the tiny model, a token) with schemathesis,
from the OpenAPI description it serves: each operation gets requests the description allows and requests it
does not, and every answer must be no 5xx, a status the description lists, in its content type, with its
headers and a body that fits its schema; what the description allows must be accepted, a route that needs
the token must refuse a request without it, and an undeclared method must be a 405 with `Allow`. A short
stateful run follows the description's links (POST /jobs -> its status, events, preview, image, cancel), so
real jobs' answers are checked too, not only the 404s of made-up ids.

Bounded: the server's limits (and so the description) allow only 2 steps at 64 px (about 0.1 s a render); 20
examples per operation; no boundary-value phase on the three routes that wait for their render; each job the
fuzzer queues is cancelled at once; derandomized (the same requests every run). About 30 s on 2 busy cores;
`python -m pytest tests/test_serving_fuzz.py -p no:xdist` runs it alone (docs/serving.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from ldm.generation.settings import Limits
from ldm.serving.openapi import openapi_document
from tests.conftest import compose_config
from tests.live_app import Live, fetch, make_app, tiny_model

schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[dev]' installs schemathesis")
hypothesis = pytest.importorskip("hypothesis")

TOKEN = "a-fuzz-token-with-enough-characters"
OWNER = "fuzz-owner-token-0001"  # the stateful run's client: the links' requests must be the same client's
MAX_EXAMPLES = 20
FUZZ_OVERRIDES = [
    "limits.min_size=64",
    "limits.max_size=64",
    "limits.max_steps=2",
    "steps=2",  # the default, within the limit (app_from_config refuses a default outside it)
    "limits.max_seconds=null",  # no cost bound: an estimate could refuse what the schema allows
    "limits.max_prompt_chars=200",
    "queue_size=1000",  # never full here, so a 503 would be a finding
]
RENDERING = ["generate_image", "a1111_txt2img", "openai_images_generations"]
CONFIG = {
    "seed": 23,
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "auth": {"openapi": {"bearerAuth": {"bearer": TOKEN}}},
    "checks": {
        # the server is lenient on purpose where the description is strict (a form's "7" is taken in JSON
        # too, and so is an unknown A1111 or OpenAI field at null), so a request outside it may be accepted
        "negative_data_rejection": {"enabled": False},
        # DELETE /jobs/<id> cancels: the job stays readable, as `cancelled`, until it is pruned
        "use_after_free": {"enabled": False},
    },
    # the boundary-value phase sends some 350 bodies to A1111's 35 fields: seconds of renders on a route that waits
    "operations": [{"include-operation-id": RENDERING, "phases": {"coverage": {"enabled": False}}}],
}


def fuzz_config(cache_dir: Path | str):
    overrides = ["model=tiny", f"paths.cache_dir={cache_dir}", "keep_images=false", *FUZZ_OVERRIDES]
    return compose_config("app", overrides)


# The description the fuzz server serves (test_the_server_serves_this_description checks that it does), built
# here since schemathesis makes the tests at collection, before a server runs. Not its `from_fixture`, which
# loads it from the running server: that fails under pytest 9.2 (it sets `node._nodeid`, which is gone).
_limits = fuzz_config("unused").limits
DOCUMENT = openapi_document(Limits(**{f.name: _limits[f.name] for f in fields(Limits)}), token=True)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config.from_dict(CONFIG))


@pytest.fixture(scope="module")
def live(cache_dir: Path) -> Iterator[Live]:
    cfg = fuzz_config(cache_dir)
    server = Live(make_app(tiny_model(cfg), cfg, calibrate=False, token=TOKEN))
    yield server
    server.close()


def test_the_server_serves_this_description_without_the_token(live: Live) -> None:
    status, _, body = fetch(f"{live.url}/openapi.json", headers={"X-Owner-Token": None})
    assert status == 200 and json.loads(body) == DOCUMENT


ANSWERED: dict[str, set[int]] = {}  # operation -> the statuses it answered with, in the two runs below


# Why the one-value parametrize: under pytest 9.2 schemathesis 4.32 gives all 17 operations' items one node id
# (pytest builds it from `originalname`, which schemathesis sets to the bare name), and pytest-xdist, which
# `make test` runs, then ran one of them; a pytest parameter makes it take the name with the operation in it.
@schema.parametrize()
@pytest.mark.parametrize("server", ["waitress"])
def test_no_route_gives_a_5xx_or_breaks_its_description(case, live: Live, server: str) -> None:
    response = case.call_and_validate(base_url=live.url, timeout=30)
    ANSWERED.setdefault(case.operation.label, set()).add(response.status_code)
    if response.status_code == 202:  # a queued job: cancel it, so hundreds of them do not render meanwhile
        issued = response.headers.get("x-owner-token")  # schemathesis: lower-case names, lists of values
        owner = issued[0] if issued else (case.headers or {})["X-Owner-Token"]
        headers = {"Authorization": f"Bearer {TOKEN}", "X-Owner-Token": owner}
        status, _, _ = fetch(f"{live.url}{response.headers['location'][0]}", method="DELETE", headers=headers)
        assert status == 200


def test_jobs_followed_through_their_links_keep_to_the_description(live: Live) -> None:
    class Jobs(schema.as_state_machine()):
        def get_call_kwargs(self, case) -> dict:
            return {"base_url": live.url, "headers": {"X-Owner-Token": OWNER}, "timeout": 30}

        def after_call(self, response, case) -> None:
            ANSWERED.setdefault(case.operation.label, set()).add(response.status_code)

    settings = hypothesis.settings(
        max_examples=10, stateful_step_count=6, deadline=None, derandomize=True, database=None
    )
    Jobs.run(settings=settings)


def test_both_runs_got_past_the_token_and_the_validators_on_every_route() -> None:
    """Why: runs whose every request got a 401, 400 or 404 (documented answers) would pass and test nothing."""
    if not ANSWERED:
        pytest.skip("checks the two runs above (in this file's order), which did not run")
    operations = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in schema.get_all_operations())}
    assert set(ANSWERED) == operations  # each operation's test ran (pytest-xdist once ran 1 of 17)
    assert {op: codes for op, codes in ANSWERED.items() if not any(200 <= c < 300 for c in codes)} == {}
