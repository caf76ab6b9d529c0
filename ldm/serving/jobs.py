"""One render request as the API shows it: its state, its step, its timings, its preview and image.

Why an event log per job: the SSE stream must give one event per step and per state change even when
the reader is slower than the render, so each change is appended (a few dozen per job) and a reader
replays from the last one it sent.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ldm.generation.settings import SampleSettings

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINAL = (DONE, FAILED, CANCELLED)


class Cancelled(Exception):
    """Raised from the step callback to stop a render at once (see worker.py for why not only the flag)."""


class QueueFull(RuntimeError):
    """Every place in the queue is taken."""


@dataclass(eq=False)
class Job:
    """Mutated only under the queue's lock; `snapshot()` is what the API returns."""

    settings: SampleSettings
    owner: str = ""  # the hash of the owner token of the client that submitted it (owners.py)
    id: str = field(default_factory=lambda: secrets.token_urlsafe(16))  # 128 random bits: not guessable
    state: str = QUEUED
    position: int = 0  # 1 = next to run; 0 once it runs or ends
    step: int = 0
    steps: int = 0
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    eta_s: float | None = None
    error: str | None = None
    cancel_requested: bool = False
    preview: bytes | None = None
    preview_step: int = 0
    image: bytes | None = None
    step_times: list[float] = field(default_factory=list)  # seconds of each step
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.steps = self.settings.steps

    @property
    def elapsed_s(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    def snapshot(self) -> dict[str, Any]:
        s = self.settings
        return {
            "id": self.id,
            "state": self.state,
            "position": self.position,
            "step": self.step,
            "steps": self.steps,
            "elapsed_s": round(self.elapsed_s, 3),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "seed": s.seed,
            "error": self.error,
            "preview_step": self.preview_step,
            "prompt": s.prompts[0],
            "settings": {
                "negative_prompt": s.negative_prompt,
                "steps": s.steps,
                "guidance_scale": s.guidance_scale,
                "scheduler": s.scheduler,
                "height": s.height,
                "width": s.width,
            },
        }

    def record(self, kind: str) -> None:
        """Append a `state` or `step` event (the caller holds the lock and notifies)."""
        self.events.append((kind, self.snapshot()))
