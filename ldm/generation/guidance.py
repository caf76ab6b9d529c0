"""Classifier-free guidance on part of the schedule only (`guidance_interval: [start, end]`).

Why: guidance matters most in the middle of the schedule (Kynkäänniemi et al., 2024, "Applying guidance in
a limited interval"), while each guided step costs a batch-2 U-Net call. Outside the interval one
conditional pass (batch 1) replaces the guided pair, on either engine. Step i of N is guided when
start <= i / N < end: [0, 1] guides every step (the plain image), [a, a] none.
It runs inside diffusers' own loop through `callback_on_step_end`, which may replace `prompt_embeds` and the
pipeline's guidance scale for the next step; nothing of the loop is copied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

FULL = (0.0, 1.0)


class GuidanceInterval:
    """A step-end callback that switches guidance for the next step; `initial_scale` is for the first."""

    def __init__(
        self,
        interval: tuple[float, float],
        steps: int,
        scale: float,
        positive: torch.Tensor,
        negative: torch.Tensor,
        then: Callable[..., dict] | None = None,
    ) -> None:
        self.start, self.end = interval
        self.steps, self.scale, self.then = steps, scale, then
        self.positive, self.guided_embeds = positive, torch.cat([negative, positive])  # diffusers' order
        self.guided_steps: list[int] = [i for i in range(steps) if self.guided(i)]

    def guided(self, step: int, steps: int | None = None) -> bool:
        return self.start <= step / (steps or self.steps) < self.end

    @property
    def initial_scale(self) -> float:
        return self.scale if self.guided(0) else 1.0  # ≤ 1: diffusers runs the conditional pass alone

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        steps = getattr(pipe, "num_timesteps", None) or self.steps  # PNDM's schedule has a step more
        if step + 1 < steps:
            guided = self.guided(step + 1, steps)
            pipe._guidance_scale = self.scale if guided else 1.0
            kwargs["prompt_embeds"] = self.guided_embeds if guided else self.positive
        if self.then is None:
            return kwargs
        # the wrapped callback's changes on top of ours: one that returns {} (sample.py's, the app's) keeps them
        return {**kwargs, **(self.then(pipe, step, timestep, kwargs) or {})}


def is_full(interval: Any) -> bool:
    return tuple(float(x) for x in interval) == FULL
