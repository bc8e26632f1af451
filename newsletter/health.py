"""Is the delivery worker alive? Its rounds beat; ``/healthz`` reads the beat."""

from __future__ import annotations

import threading
import time


class WorkerHealth:
    """A worker is healthy while it finished a round recently: within a few poll
    intervals (a round that sends a big batch can take a while, hence the margin)."""

    def __init__(self, *, poll_seconds: float, grace_seconds: float = 120.0) -> None:
        self.limit = max(poll_seconds * 5, grace_seconds)
        self._lock = threading.Lock()
        self._last = time.monotonic()  # starting counts as a beat
        self._failures = 0

    def beat(self) -> None:
        with self._lock:
            self._last, self._failures = time.monotonic(), 0

    def failed(self) -> None:
        with self._lock:
            self._failures += 1

    def problem(self) -> str | None:
        """Why the worker is not healthy, or None."""
        with self._lock:
            if self._failures:
                return f"delivery worker died ({self._failures} times in a row); restarting"
            idle = time.monotonic() - self._last
        if idle > self.limit:
            return f"delivery worker stalled: no round for {idle:.0f} s"
        return None
