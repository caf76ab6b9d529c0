"""One render worker behind a bounded queue of jobs, with progress, previews, cancel and time estimates.

Why one worker: a diffusers pipeline is not thread-safe (diffusers #1606) and a CPU renders one image at a
time anyway, so jobs wait in line, and once `size` wait, new ones get 503 + Retry-After.

Why a timer prunes: finished jobs hold their PNG; an idle server must forget them too (`prune_every_s`).

Why a cancel raises from the step callback instead of only setting the pipeline's `interrupt` flag: in
diffusers 0.42 the flag makes `StableDiffusionPipeline.__call__` skip the remaining steps and then still
VAE-decode the latents, 15-33 s at 512 px on a CPU (benchmarks/results/generation_full-2026-11-27.md),
more than a step, for an image nobody wants. Raising `Cancelled` from `callback_on_step_end` frees the
worker at the step's end.
"""

from __future__ import annotations

import logging
import secrets
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import torch
from PIL import Image

from ldm.generation.output import png_bytes
from ldm.generation.preview import LatentPreview
from ldm.generation.progress import OnStep
from ldm.generation.settings import SampleSettings
from ldm.serving.estimates import step_units
from ldm.serving.jobs import CANCELLED, DONE, FAILED, FINAL, QUEUED, RUNNING, Cancelled, Job, QueueFull

log = logging.getLogger(__name__)
Render = Callable[[SampleSettings, OnStep], Image.Image]


class RenderQueue:
    """Jobs run one at a time on one thread once `start()` gives it a render function; `size` may wait."""

    def __init__(
        self,
        size: int,
        *,
        keep_s: float = 600,
        keep_count: int = 50,
        preview_every: int = 1,
        prune_every_s: float = 10,
        step_hook: Callable[[Job], None] | None = None,
        on_done: Callable[[Job, bytes], None] | None = None,
    ) -> None:
        self.size, self.keep_s, self.keep_count, self.preview_every = size, keep_s, keep_count, preview_every
        self.step_hook = step_hook  # tests: a delay to watch progress, or an exception
        self.on_done = on_done  # called with a finished job's PNG before it shows `done` (store.py persists it)
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._running: Job | None = None
        self._rate: float | None = None  # seconds per step per 512 px U-Net call, of the last job (speed now)
        self._render: Render | None = None
        self._preview: LatentPreview | None = None
        self._native = 512
        self._closed = False
        self._thread: threading.Thread | None = None
        self._stop_pruning = threading.Event()
        self._pruner = threading.Thread(target=self._prune_every, args=(prune_every_s,), name="ldm-prune", daemon=True)
        self._pruner.start()

    # --- set-up ---------------------------------------------------------------------------------------
    def start(self, render: Render, preview: LatentPreview, native_size: int, calibrate: SampleSettings | None) -> None:
        """Begin rendering; with `calibrate`, first time two steps of it, so the first job has an estimate."""
        if self._thread is not None:
            raise RuntimeError("the render worker is already started")
        self._render, self._preview, self._native = render, preview, native_size
        self._thread = threading.Thread(target=self._work, args=(calibrate,), name="ldm-render", daemon=True)
        self._thread.start()

    @property
    def native_size(self) -> int:  # the model's own image size (what height/width null render)
        return self._native

    @property
    def model_loaded(self) -> bool:
        return self._render is not None

    def close(self) -> None:
        """Stop the worker after the job it is on (queued jobs are cancelled)."""
        self._stop_pruning.set()
        with self._lock:
            self._closed = True
            for job in list(self._waiting):
                self._cancel_queued(job)
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(60)

    # --- the API's operations -------------------------------------------------------------------------
    def submit(self, settings: SampleSettings, owner: str = "") -> Job:
        """Queue a job for `owner` (raises `QueueFull`); a missing seed is drawn now, so the job shows it at once."""
        if settings.seed is None:
            settings = replace(settings, seed=secrets.randbelow(2**32))
        with self._lock:
            self._prune()
            if len(self._waiting) >= self.size or self._closed:
                raise QueueFull
            job = Job(settings, owner=owner)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._refresh()
            job.record("state")
            self._lock.notify_all()
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None when unknown, forgotten, or (with `owner`) someone else's."""
        with self._lock:
            self._prune()
            self._refresh()
            job = self._jobs.get(job_id)
            return job if job is not None and (owner is None or job.owner == owner) else None

    def owned(self, owner: str) -> list[Job]:
        """`owner`'s jobs still kept, oldest first."""
        with self._lock:
            self._refresh()
            return sorted((j for j in self._jobs.values() if j.owner == owner), key=lambda j: j.created)

    def cancel(self, job_id: str, owner: str | None = None) -> Job | None:
        """A queued job leaves the queue now; a running one stops at the end of its current step.
        None when the job is unknown, forgotten or someone else's: looked up under the same lock as the
        cancel, so a job pruned meanwhile is a None (a 404), never a crash."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or (owner is not None and job.owner != owner):
                return None
            if job.state == QUEUED:
                self._cancel_queued(job)
            elif job.state == RUNNING:
                job.cancel_requested = True
            return job

    def events(self, job: Job, start: int, timeout: float) -> list[tuple[str, dict]]:
        """The job's events from index `start`, waiting up to `timeout` s for one if there are none yet."""
        with self._lock:
            self._lock.wait_for(lambda: len(job.events) > start, timeout)
            return job.events[start:]

    def wait_final(self, job: Job, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: job.state in FINAL, timeout)

    def estimate_s(self, settings: SampleSettings) -> float | None:
        """Seconds for `settings` from recent jobs' seconds per step, or None before any was measured."""
        with self._lock:
            return self._estimate(settings)

    def status(self) -> dict:
        """Counts only: no id, prompt or owner, since anyone may read /healthz."""
        with self._lock:
            running = self._running
            return {
                "model_loaded": self.model_loaded,
                "worker_alive": self._thread is not None and self._thread.is_alive(),
                "queue_length": len(self._waiting),
                "queue_size": self.size,
                "running": None if running is None else {"step": running.step, "steps": running.steps},
                "jobs_kept": len(self._jobs),
                "seconds_per_step_512": None if self._rate is None else round(self._rate, 3),
            }

    # --- inside the lock --------------------------------------------------------------------------------
    def _units(self, settings: SampleSettings) -> float:
        return step_units(settings, self._native)

    def _estimate(self, settings: SampleSettings) -> float | None:
        if self._rate is None:
            return None
        return self._rate * self._units(settings) * settings.steps

    def _refresh(self) -> None:
        """Positions and time left of every live job."""
        ahead = 0.0
        running = self._running
        if running is not None:
            if running.step_times:
                running.eta_s = statistics.mean(running.step_times) * (running.steps - running.step)
            else:
                running.eta_s = self._estimate(running.settings)
            ahead = running.eta_s or 0.0
        for index, job in enumerate(self._waiting):
            job.position = index + 1
            own = self._estimate(job.settings)
            job.eta_s = None if own is None else ahead + own
            ahead += own or 0.0

    def _prune_every(self, seconds: float) -> None:
        while not self._stop_pruning.wait(seconds):
            with self._lock:
                self._prune()
                for job in self._jobs.values():  # the image (or nothing) supersedes a finished job's preview
                    if job.state in FINAL:
                        job.preview = None

    def _prune(self) -> None:
        """Forget finished jobs older than keep_s, and the oldest beyond keep_count."""
        now = time.monotonic()
        done = sorted((j for j in self._jobs.values() if j.state in FINAL), key=lambda j: j.finished or 0)
        for index, job in enumerate(done):
            if now - (job.finished or now) > self.keep_s or index < len(done) - self.keep_count:
                del self._jobs[job.id]

    def _cancel_queued(self, job: Job) -> None:
        self._waiting.remove(job)
        job.state, job.finished, job.position, job.eta_s = CANCELLED, time.monotonic(), 0, None
        self._refresh()
        job.record("state")
        self._lock.notify_all()

    # --- the worker thread ------------------------------------------------------------------------------
    def _work(self, calibrate: SampleSettings | None) -> None:
        if calibrate is not None:
            self._calibrate(calibrate)
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._waiting or self._closed)
                if self._closed:
                    return
                job = self._waiting.popleft()
                job.state, job.started, job.position = RUNNING, time.monotonic(), 0
                self._running = job
                self._refresh()
                job.record("state")
                self._lock.notify_all()
            self._run(job)

    def _calibrate(self, settings: SampleSettings) -> None:
        """Two steps of `settings`, timed and stopped before the decode (the first step pays the warm-up)."""
        times: list[float] = []

        def on_step(step: int, steps: int, latents: torch.Tensor) -> None:
            times.append(time.monotonic())
            if step >= 2:
                raise Cancelled

        try:
            self._render(replace(settings, steps=2), on_step)
        except Cancelled:
            with self._lock:
                self._rate = (times[1] - times[0]) / self._units(settings)
        except Exception:
            log.exception("calibration render failed; estimates start after the first job")

    def _run(self, job: Job) -> None:
        last = [time.monotonic()]

        def on_step(step: int, steps: int, latents: torch.Tensor) -> None:
            if self.step_hook is not None:
                self.step_hook(job)
            preview = None
            if self.preview_every and (step % self.preview_every == 0 or step == steps):
                preview = png_bytes(self._preview.image(latents[0]))
            with self._lock:
                now = time.monotonic()
                job.step_times.append(now - last[0])
                last[0] = now
                job.step, job.steps = step, steps
                if preview is not None:
                    job.preview, job.preview_step = preview, step
                self._refresh()
                job.record("step")
                self._lock.notify_all()
                if job.cancel_requested:
                    raise Cancelled

        state, image, error = DONE, None, None
        try:
            image = png_bytes(self._render(job.settings, on_step))
            if self.on_done is not None:
                self.on_done(job, image)  # on disk before it shows `done`: a restart after that keeps it
        except Cancelled:
            state = CANCELLED
        except Exception as err:  # the worker lives on: the job fails, the log keeps the traceback
            error_id = secrets.token_hex(4)
            log.exception("render of job %s failed (error id %s)", job.id, error_id)
            state, error = (
                FAILED,
                f"render failed: {type(err).__name__} (error id {error_id}; the server log has the traceback)",
            )
        with self._lock:
            if state == FAILED and job.cancel_requested:  # e.g. an engine that dislikes being stopped
                state, error = CANCELLED, None
            job.state, job.image, job.error, job.finished, job.eta_s = state, image, error, time.monotonic(), None
            if len(job.step_times) >= 2:
                self._rate = statistics.median(job.step_times[1:]) / self._units(job.settings)
            self._running = None
            self._refresh()
            job.record("state")
            self._lock.notify_all()
