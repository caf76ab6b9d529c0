"""Request fields (an HTML form's strings or a JSON object's values) -> `SampleSettings`.

Why apart from the routes: both `POST /jobs` and `POST /generate` take the same fields, and the rules for
turning '' / null / "7" / 7.0 into "not given" / an int are the same for both.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from ldm.errors import SamplingError
from ldm.generation.settings import SampleSettings

INT_FIELDS = ("steps", "seed", "height", "width")
FLOAT_FIELDS = ("guidance_scale",)
TEXT_FIELDS = ("prompt", "negative_prompt", "scheduler")
FIELDS = TEXT_FIELDS + INT_FIELDS + FLOAT_FIELDS


def _number(name: str, value: Any, kind: type) -> int | float | None:
    """A form string or a JSON number -> int/float; '' and null mean 'not given'."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise SamplingError(f"{name}={value}: expected a number")
    if isinstance(value, int) and kind is int:
        return value  # as it is: float() of a 400-digit JSON integer raises OverflowError (a 500 once)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SamplingError(f"{name}={_short(value)}: expected a number") from None
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SamplingError(f"{name}={_short(value)}: expected a finite number")
    if kind is int:
        if not number.is_integer():
            raise SamplingError(f"{name}={value}: expected an integer")
        return int(number)
    return number


def _short(value: Any, chars: int = 40) -> str:
    """A value for an error message, cut: a 64 KiB number need not come back whole."""
    text = str(value)
    return text if len(text) <= chars else f"{text[:chars]}... ({len(text)} characters)"


def parse_request(fields: Any, defaults: SampleSettings) -> SampleSettings:
    """Form or JSON fields over the configured defaults -> settings (not yet range-checked)."""
    if not isinstance(fields, dict):
        raise SamplingError("expected a form or a JSON object with at least 'prompt'")
    unknown = [name for name in fields if name not in FIELDS]
    if unknown:  # a misspelt field (e.g. "step") would otherwise render with the default, silently
        raise SamplingError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
            f"expected only {', '.join(FIELDS)}"
        )
    changes: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        value = fields.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise SamplingError(f"{name} must be a string")
            changes[name] = value
    for name in INT_FIELDS + FLOAT_FIELDS:
        value = _number(name, fields.get(name), int if name in INT_FIELDS else float)
        if value is not None:
            changes[name] = value
    prompt = changes.pop("prompt", "")
    return replace(defaults, prompts=(prompt,), **changes)
