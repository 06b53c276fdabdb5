"""Bookkeeping of a run: seconds per stage and peak memory."""

from __future__ import annotations

import contextlib
import resource
import sys
import time

import jax


class StageClock:
    """Accumulates wall-clock seconds per named stage.

    Timers nest: time spent in an inner timer (e.g. loading an expert in the middle of
    Stage I) counts for the inner stage only and is taken off the enclosing one.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._open: list[str] = []

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()
            elapsed = time.perf_counter() - start
            self.add(name, elapsed)
            if self._open:
                self.add(self._open[-1], -elapsed)


def peak_memory() -> tuple[int, str]:
    """(peak bytes, source): the accelerators' peak_bytes_in_use when the backend reports it
    (summed over local devices), else this process's peak resident set size."""
    total, reported = 0, False
    for device in jax.local_devices():
        try:
            stats = device.memory_stats()
        except Exception:  # some backends raise instead of returning None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            total += int(stats["peak_bytes_in_use"])
            reported = True
    if reported:
        return total, "device.memory_stats peak_bytes_in_use"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return int(rss) * scale, "process peak RSS"
