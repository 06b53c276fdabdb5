"""Bookkeeping of a run: seconds per stage, peak memory and XLA compilations."""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
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


# JAX records this event once per XLA executable it builds: compiled, or fetched from the
# persistent compilation cache (jax/_src/interpreters/pxla.py); eager ops count too.
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compilations = 0
_listening = threading.Lock()
_listener_registered = False


def _count(event: str, duration: float, **metadata) -> None:
    global _compilations
    if event == _BACKEND_COMPILE_EVENT:
        _compilations += 1


def compilations() -> int:
    """XLA programs built in this process since the first call (take differences: a run that
    reuses every program it needs builds none)."""
    global _listener_registered
    with _listening:
        if not _listener_registered:
            jax.monitoring.register_event_duration_secs_listener(_count)
            _listener_registered = True
    return _compilations


# The events of one compilation (tracing, lowering to MLIR, the XLA build above).
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    _BACKEND_COMPILE_EVENT,
)


class CompileMeter:
    """While active: compile seconds and XLA builds per stage of `clock` open at the time
    ('outside stages' otherwise), so a stage's run time is its seconds minus its compiles
    (benchmarks/gpu_check_pipeline.py)."""

    def __init__(self, clock: StageClock):
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self.compilations: dict[str, int] = {}

    def _listen(self, event: str, duration: float, **metadata) -> None:
        if event not in _COMPILE_EVENTS:
            return
        stage = self.clock._open[-1] if self.clock._open else "outside stages"
        self.seconds[stage] = self.seconds.get(stage, 0.0) + duration
        if event == _BACKEND_COMPILE_EVENT:
            self.compilations[stage] = self.compilations.get(stage, 0) + 1

    def __enter__(self) -> CompileMeter:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)
