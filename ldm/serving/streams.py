"""A bound on open progress streams (SSE), so they cannot take every server thread.

Why: each open stream holds one of waitress's threads for as long as the job runs. Past `limits.streams`
a new stream is a 503 with Retry-After (the page then polls), and app.py checks at start that the threads
cover the streams, the sync requests the queue can hold, and spares for /healthz and job status.
"""

from __future__ import annotations

import threading


class StreamSlots:
    """At most `size` taken at once; `take()` never waits."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._open = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._open >= self.size:
                return False
            self._open += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self._open -= 1

    @property
    def open(self) -> int:
        return self._open


class Slot:
    """One taken slot, given back once however many times `release()` runs (the stream's end and the
    response's close both call it)."""

    def __init__(self, slots: StreamSlots) -> None:
        self._slots, self._held = slots, True
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._held:
                self._held = False
                self._slots.give_back()
