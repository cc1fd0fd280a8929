"""Overload protection (``--overload_prot``): when new sessions are refused with E98.

Pure: the shell measures how busy its event loop is (:class:`LoadWindow` turns samples of
its busy seconds into a share over a sliding window) and hands the share to the engine;
:class:`OverloadGuard` decides, with rtpproxy's two thresholds: refuse above the
threshold (0.90 by default), accept again below a lower one (0.85), so that a load
hovering at the threshold does not flip the state on every sample.
"""

from __future__ import annotations

from collections import deque

DEFAULT_THRESHOLD = 0.90
RELEASE_MARGIN = 0.05  # rtpproxy: refuse above 0.90, accept again below 0.85


class OverloadGuard:
    """Whether the relay is overloaded, from the loads it is told (0.0 .. 1.0).

    ``threshold`` None: protection off, never overloaded.
    """

    def __init__(self, threshold: float | None) -> None:
        self.threshold = threshold
        # at least half the threshold, so that a low threshold still has a way out
        self.release = None if threshold is None else max(threshold - RELEASE_MARGIN, threshold / 2)
        self.active = False
        self.load = 0.0

    def update(self, load: float) -> bool:
        """Take the latest load; True if the overload state changed."""
        self.load = load
        if self.threshold is None or self.release is None:
            return False
        if not self.active and load > self.threshold:
            self.active = True
            return True
        if self.active and load < self.release:
            self.active = False
            return True
        return False


class LoadWindow:
    """The busy share of the last ``window`` seconds, from samples of a cumulative busy
    time (the event loop thread's CPU seconds) taken at ``now``."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()

    def sample(self, busy: float, now: float) -> float:
        """Add a sample; the share of time spent busy since the oldest sample kept (0.0
        until there are two)."""
        samples = self._samples
        samples.append((now, busy))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        start, busy_then = samples[0]
        elapsed = now - start
        if elapsed <= 0:
            return 0.0
        return min(1.0, max(0.0, (busy - busy_then) / elapsed))
