"""Submitting a job and waiting for it: what our API, A1111's and OpenAI's layers share, so the three run
on one queue with the same limits, the same cost bound and the same cancel-when-the-client-leaves.

Why one place: each layer only translates its request and response shapes; a bound checked in one layer
and forgotten in another would be a way around it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Request

from ldm.errors import SamplingError
from ldm.generation.settings import Limits, SampleSettings, validate_settings
from ldm.serving.jobs import FINAL, Job, QueueFull
from ldm.serving.worker import RenderQueue

log = logging.getLogger(__name__)


class Refused(Exception):
    """A request the server will not take now: `status` 400 (with the reason) or 503 (busy, Retry-After)."""

    def __init__(self, message: str, status: int, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class ClientGone(Exception):
    """The client of a sync request went away; its job was cancelled."""


@dataclass
class Submitter:
    queue: RenderQueue
    limits: Limits
    max_seconds: float | None
    retry_after: int

    def submit(self, settings: SampleSettings, owner: str) -> Job:
        """Check `settings` against the limits and the cost bound, then queue it (raises `Refused`)."""
        try:
            validate_settings(settings, self.limits)
        except SamplingError as err:
            raise Refused(str(err), 400) from None
        estimate = self.queue.estimate_s(settings)
        if self.max_seconds is not None and estimate is not None and estimate > self.max_seconds:
            raise Refused(
                f"this job would take about {estimate:.0f} s ({settings.steps} steps at the measured speed), "
                f"over limits.max_seconds={self.max_seconds:g}: use fewer steps or a smaller size",
                400,
            )
        try:
            return self.queue.submit(settings, owner)
        except QueueFull:
            raise Refused(
                f"busy: {self.queue.size} jobs are already waiting; retry in {self.retry_after} s",
                503,
                self.retry_after,
            ) from None

    def wait(self, jobs: list[Job], request: Request) -> None:
        """Until every job is final; when the client leaves (waitress tells), cancel them and raise ClientGone."""
        gone = request.environ.get("waitress.client_disconnected")
        for job in jobs:
            while not self.queue.wait_final(job, 0.2):
                if gone is not None and gone():
                    log.info("client of job %s went away: cancelling it", job.id)
                    for other in jobs:
                        if other.state not in FINAL:
                            self.queue.cancel(other.id)
                    raise ClientGone
