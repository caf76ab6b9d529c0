"""What to render and the ranges accepted from users: checked before any model loads.

Why apart from the pipeline: sample.py, the app and the training callback validate settings (and the app
parses request fields into them) without importing diffusers' pipeline or loading a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ldm.errors import SamplingError, is_int, require
from ldm.generation.schedulers import SCHEDULERS

MAX_SEED = 2**32 - 1  # seeds people can type; image i of a prompt uses seed + i


def _require(ok: bool, message: str) -> None:
    require(ok, message, SamplingError)


@dataclass(frozen=True)
class SampleSettings:
    """What to render. No defaults here: they live in conf/ (conf/sampling/)."""

    prompts: tuple[str, ...]
    negative_prompt: str
    steps: int
    guidance_scale: float
    scheduler: str
    seed: int | None  # None: a random one, recorded in each image
    height: int | None  # None: the model's native size (512 for SD1.5, 64 for the tiny model)
    width: int | None
    num_images: int  # per prompt
    batch_size: int
    # fractions of the schedule guided; (0, 1) = every step for code that builds settings itself; sample.py's
    # default, [0.2, 0.8], lives in conf/sampling/image.yaml
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    # diffusers' guidance_rescale (Lin et al. 2024, sec. 3.4): the guided prediction's std rescaled towards the
    # conditional one's; fixes the over-exposed colours of guided zero-terminal-SNR models. 0 = plain CFG
    guidance_rescale: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any, prompts: Sequence[str], **fixed: Any) -> SampleSettings:
        """The settings of sample.yaml/app.yaml for `prompts`; `fixed` sets fields a config has no key for
        (the app renders one image per request)."""
        names = [f.name for f in fields(cls) if f.name != "prompts"]
        values = {name: fixed[name] if name in fixed else cfg[name] for name in names}
        values["negative_prompt"] = str(values["negative_prompt"] or "")
        if isinstance(values["guidance_interval"], Sequence) and not isinstance(values["guidance_interval"], str):
            values["guidance_interval"] = tuple(values["guidance_interval"])
        return cls(prompts=tuple(prompts), **values)


@dataclass(frozen=True)
class Limits:
    """Ranges accepted from users (conf `limits:`); the app's are tighter than sample.py's."""

    min_size: int
    max_size: int
    max_steps: int
    max_guidance: float
    max_prompt_chars: int


def validate_settings(s: SampleSettings, limits: Limits | None = None) -> None:
    """Raise `SamplingError` for settings that can't render; with `limits`, also for those out of range."""
    _require(bool(s.prompts), "no prompt: give prompt=... or prompts_file=...")
    for prompt in s.prompts:
        _require(isinstance(prompt, str) and bool(prompt.strip()), "prompt is empty: describe the image to render")
    _require(s.scheduler in SCHEDULERS, f"scheduler={s.scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
    _require(is_int(s.steps) and s.steps >= 1, f"steps={s.steps!r}: expected an integer ≥ 1")
    _require(
        isinstance(s.guidance_scale, int | float) and s.guidance_scale >= 0,
        f"guidance_scale={s.guidance_scale!r}: expected a number ≥ 0 (≤ 1 turns guidance off)",
    )
    _require(
        s.seed is None or (is_int(s.seed) and 0 <= s.seed <= MAX_SEED),
        f"seed={s.seed!r}: expected null (random) or an integer in [0, {MAX_SEED}]",
    )
    interval = s.guidance_interval
    _require(
        isinstance(interval, tuple)
        and len(interval) == 2
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in interval)
        and 0 <= interval[0] <= interval[1] <= 1,
        f"guidance_interval={list(interval) if isinstance(interval, tuple) else interval!r}: "
        "expected [start, end] with 0 ≤ start ≤ end ≤ 1 (fractions of the schedule; [0, 1] guides every step)",
    )
    _require(
        isinstance(s.guidance_rescale, int | float) and not isinstance(s.guidance_rescale, bool)
        and 0 <= s.guidance_rescale <= 1,
        f"guidance_rescale={s.guidance_rescale!r}: expected a number in [0, 1] (0: plain classifier-free guidance)",
    )  # fmt: skip
    for key in ("num_images", "batch_size"):
        value = getattr(s, key)
        _require(is_int(value) and value >= 1, f"{key}={value!r}: expected an integer ≥ 1")
    for key in ("height", "width"):
        value = getattr(s, key)
        _require(
            value is None or (is_int(value) and value > 0 and value % 8 == 0),
            f"{key}={value!r}: expected null (the model's size) or a positive multiple of 8 (the VAE's cell)",
        )
        if limits is not None and value is not None:
            _require(
                limits.min_size <= value <= limits.max_size,
                f"{key}={value}: expected {limits.min_size} to {limits.max_size} pixels",
            )
    if limits is None:
        return
    _require(s.steps <= limits.max_steps, f"steps={s.steps}: expected at most {limits.max_steps}")
    _require(
        s.guidance_scale <= limits.max_guidance,
        f"guidance_scale={s.guidance_scale}: expected at most {limits.max_guidance}",
    )
    for text in (*s.prompts, s.negative_prompt):
        _require(
            len(text) <= limits.max_prompt_chars,
            f"prompt of {len(text)} characters: expected at most {limits.max_prompt_chars}",
        )


def read_prompts(prompt: str | Iterable[str] | None, prompts_file: str | None) -> list[str]:
    """`prompt` (one string or a list) followed by the non-empty lines of `prompts_file`."""
    if prompt is None:
        prompts = []
    elif isinstance(prompt, str | int | float):
        prompts = [str(prompt)]
    else:
        prompts = [str(p) for p in prompt]
    if prompts_file is not None:
        path = Path(prompts_file)
        _require(path.is_file(), f"prompts_file={prompts_file!r} does not exist")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts
