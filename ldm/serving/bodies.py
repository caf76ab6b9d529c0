"""A request's JSON body, or a 400 that says what is wrong with it, for all three APIs.

Why not `request.get_json(silent=True)` alone: it raises RecursionError (a 500) for a body nested a few
thousand levels deep, and it takes a lone surrogate ("\\ud800", valid JSON but not Unicode text) into a
prompt, whose job then fails in the tokenizer and whose status no longer encodes as UTF-8, so the client's
`GET /jobs` answered 500 from then on. Both came from fuzzing the server (tests/test_serving_fuzz.py).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Request

from ldm.errors import SamplingError


def json_body(request: Request) -> Any:
    """The parsed body of a JSON request (None when it is not one, or empty); SamplingError for one that cannot
    be parsed, or holds what is not text."""
    if not request.is_json:
        return None
    data = request.get_data(cache=True)  # bounded by max_request_bytes (a 413 past it)
    if not data.strip():
        return None  # the caller says what it expected
    try:
        value = json.loads(data)
    except RecursionError:
        raise SamplingError("the JSON body nests too deeply") from None
    except ValueError as err:  # also bytes that are not UTF-8
        raise SamplingError(f"the body is not valid JSON ({err}): expected a JSON object") from None
    text_only(value)
    return value


def text_only(value: Any) -> None:
    """Every string (and key) in `value` is Unicode text: no lone surrogate (SamplingError naming it)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                bad = item[err.start : err.end]
                raise SamplingError(
                    f"the body holds {bad!r}, a lone surrogate: not Unicode text (send each character once, "
                    "a pair as one)"
                ) from None
