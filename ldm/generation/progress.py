"""Watching a render: diffusers' per-step callback in a simpler shape, and sample.py's progress line.

Why our own line instead of diffusers' tqdm bar: that bar restarts for every pipeline call, so a run of
many images shows many bars and no time left for the whole run; one line for the run says image k of n,
the step, and the time left from the steps measured so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import torch

from ldm.errors import SamplingError, expect, is_int
from ldm.generation.preview import LatentPreview

# (step done, 1-based; steps of this call; latents (B, C, h, w)) -> None; may raise to stop the render
OnStep = Callable[[int, int, torch.Tensor], None]


def step_callback(on_step: OnStep) -> Callable[..., dict]:
    """`on_step` as diffusers' `callback_on_step_end(pipe, i, t, kwargs)` (kwargs hold `latents`)."""

    def callback(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict:
        on_step(i + 1, pipe.num_timesteps, kwargs["latents"])
        return {}

    return callback


def check_preview_every(value: object) -> None:
    """`preview_every`: 0 (no previews) or every N steps."""
    expect(is_int(value) and value >= 0, "preview_every", value, "0 (none) or an integer N ≥ 1", SamplingError)


def clock(seconds: float) -> str:
    """83 -> '1:23'; 3725 -> '1:02:05'."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RunProgress:
    """One line for a sample.py run (image k of n, step, elapsed, left), and optional step previews.

    Calls are counted per pipeline call (batch): step 1 again means the next batch has started.
    """

    def __init__(
        self,
        images: int,
        batch_size: int,
        *,
        preview: LatentPreview | None = None,
        preview_every: int = 0,
        out_dir: str | Path = ".",
        stream: TextIO = sys.stderr,
    ) -> None:
        self.images, self.batch_size, self.stream = images, batch_size, stream
        self.preview, self.preview_every, self.out_dir = preview, preview_every, Path(out_dir)
        self.batch, self.started = -1, time.monotonic()
        self.preview_paths: list[Path] = []

    def __call__(self, step: int, steps: int, latents: torch.Tensor) -> None:
        if step == 1:
            self.batch += 1
        first = self.batch * self.batch_size
        calls = -(-self.images // self.batch_size)
        elapsed = time.monotonic() - self.started
        done = self.batch * steps + step  # steps done over the whole run
        left = elapsed / done * (calls * steps - done)
        last = min(first + self.batch_size, self.images)
        which = f"image {first + 1}/{self.images}" if last == first + 1 else f"images {first + 1}-{last}/{self.images}"
        end = "\n" if done == calls * steps else ""
        self.stream.write(f"\r{which} · step {step}/{steps} · {clock(elapsed)} elapsed · {clock(left)} left  {end}")
        self.stream.flush()
        if self.preview is not None and self.preview_every and (step % self.preview_every == 0 or step == steps):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for i, image_latents in enumerate(latents):
                path = self.out_dir / f"preview-image{first + i + 1:02d}-step{step:03d}.png"
                self.preview.image(image_latents).save(path)
                self.preview_paths.append(path)
