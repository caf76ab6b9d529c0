"""The one error type for user mistakes, and the two checks every validator uses.

Why one type: each entry point catches `UserError` alone and prints its message as one line (no
traceback), so a bad value, a missing file or a checkpoint for another model reads the same everywhere,
and no entry point has to import a package (the shapes world, evaluation) just to catch its errors.
"""

from __future__ import annotations

from typing import Any


class UserError(ValueError):
    """Something the user can fix: the message names the value, what was expected and what to change."""


class ConfigError(UserError):
    """A config value that can't work; the message names the key and what was expected."""


class SamplingError(UserError):
    """A sampling setting that can't work; the message names the setting and what is accepted."""


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML's `true` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def require(ok: bool, message: str, error: type[UserError] = ConfigError) -> None:
    """Raise `error(message)` unless `ok`."""
    if not ok:
        raise error(message)


def expect(ok: bool, key: str, value: Any, expected: str, error: type[UserError] = ConfigError) -> None:
    """Raise `error("key=value: expected ...")` unless `ok`."""
    require(ok, f"{key}={value!r}: expected {expected}", error)
