"""One generation at a time on resident models, in a worker thread: the web app without the web.

`Engine.prepare(settings)` checks a request exactly as sample.py does (generation.prepare on a
preset with the app's checkpoint flags and the page's settings); `Engine.start` runs it with
`generation.generate` on `WarmModels` kept from run to run, and `Job.updates()` yields its
`orchestrator.Progress` reports, then one outcome. `Job.cancel()` takes effect at the next
report (before each Stage I chunk, after each written Stage II segment): the run raises
`Cancelled` there and the unfinished mp4 is deleted.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swifti2v_jax import cli, generation

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a run whose job was cancelled."""


@dataclasses.dataclass(frozen=True)
class Finished:
    summary: dict
    output: Path


@dataclasses.dataclass(frozen=True)
class Failed:
    message: str  # one line, no traceback


@dataclasses.dataclass(frozen=True)
class Stopped:
    elapsed: float  # seconds from the start to the cancellation taking effect


class Job:
    """A started run. Its worker puts Progress reports, then one outcome, on `self._events`."""

    def __init__(self, prepared: generation.Prepared, session: str):
        self.prepared, self.session = prepared, session
        self.started = time.perf_counter()
        self.outcome: Finished | Failed | Stopped | None = None
        self.done = threading.Event()
        self._cancel = threading.Event()
        self._events: queue.Queue = queue.Queue()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def report(self, progress) -> None:
        """The run's progress callback: raises Cancelled once the job is cancelled."""
        if self._cancel.is_set():
            raise Cancelled
        self._events.put(progress)

    def finish(self, outcome) -> None:
        self.outcome = outcome
        self._events.put(outcome)
        self.done.set()

    def updates(self, poll: float = 0.1) -> Iterator[Any]:
        """Progress reports as they come, then the outcome (a Finished, Failed or Stopped)."""
        while True:
            try:
                event = self._events.get(timeout=poll)
            except queue.Empty:
                continue
            yield event
            if isinstance(event, Finished | Failed | Stopped):
                return


class Engine:
    """Requests -> jobs, one running at a time, on models kept warm between runs.

    preset: a presets/sample.py preset (the page may pick another); fixed: config fields set
    for every run (the checkpoint flags); output_dir: where finished mp4s are kept.
    """

    def __init__(self, preset: str, fixed: dict[str, Any], output_dir: Path):
        self.preset, self.fixed, self.output_dir = preset, dict(fixed), Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._warm = None
        self._running: Job | None = None
        self._one_at_a_time = threading.Lock()
        self._names = itertools.count(1)
        self._books = threading.Lock()  # guards the two counts below
        self._waiting: dict[str, int] = {}  # session -> its requests waiting in the queue
        self._dropped: dict[str, int] = {}  # session -> how many of those were cancelled

    def config(self, settings: dict[str, Any]):
        """The sample config of a request (preset, then the fixed fields, then `settings`)."""
        config = generation.sample_config(settings.get("preset") or self.preset)
        generation.override(config, self.fixed)
        generation.override(config, {k: v for k, v in settings.items() if k != "preset"})
        return config

    def prepare(self, settings: dict[str, Any]) -> generation.Prepared:
        """Checks a request as sample.py would; raises one of generation.prepare_errors()."""
        config = self.config(settings)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"swifti2v-{stamp}-{next(self._names)}.mp4"
        generation.override(config, {"output": str(self.output_dir / name), "summary": ""})
        return generation.prepare(config)

    def queued(self, session: str) -> None:
        """A request of `session` entered the queue (the page's click)."""
        with self._books:
            self._waiting[session] = self._waiting.get(session, 0) + 1

    def dequeued(self, session: str) -> bool:
        """A request of `session` leaves the queue -> False if it was cancelled meanwhile."""
        with self._books:
            self._waiting[session] = max(0, self._waiting.get(session, 0) - 1)
            if self._dropped.get(session, 0) > 0:
                self._dropped[session] -= 1
                return False
            return True

    def drop_waiting(self, session: str) -> int:
        """Cancels every request of `session` still waiting in the queue -> how many."""
        with self._books:
            self._dropped[session] = self._waiting.get(session, 0)
            return self._dropped[session]

    def start(self, prepared: generation.Prepared, session: str = "") -> Job:
        """Starts the run in a worker thread once the previous one has ended."""
        self._one_at_a_time.acquire()
        job = Job(prepared, session)
        self._running = job
        threading.Thread(target=self._run, args=(job,), name="swifti2v-run", daemon=True).start()
        return job

    def running(self, session: str | None = None) -> Job | None:
        job = self._running
        if job is None or job.done.is_set():
            return None
        return job if session is None or job.session == session else None

    def cancel(self, session: str | None = None, wait: float = 60.0) -> Job | None:
        """Cancels the running job (of `session`, if given) and waits until it has stopped."""
        job = self.running(session)
        if job is not None:
            job.cancel()
            job.done.wait(wait)
        return job

    def _models_for(self, prepared: generation.Prepared):
        from swifti2v_jax.sampling.residency import WarmModels

        paths, config = prepared.pipeline.paths, prepared.pipeline.config
        if self._warm is None or not self._warm.serves(paths, config):
            self._warm = None  # drop the previous models before loading others
            self._warm = WarmModels(paths, config)
        return self._warm

    def _run(self, job: Job) -> None:
        try:
            models = self._models_for(job.prepared)
            summary = generation.generate(job.prepared, models=models, on_progress=job.report)
            job.finish(Finished(summary, job.prepared.output))
        except Cancelled:
            job.finish(Stopped(time.perf_counter() - job.started))
        except generation.generate_errors() as e:
            job.finish(Failed(cli.one_line(e)))
        except Exception as e:  # a bug: its traceback goes to the server's log, not the page
            log.exception("generation failed")
            job.finish(Failed(f"internal error ({type(e).__name__}: {cli.one_line(e)})"))
        finally:
            if not job.done.is_set():  # e.g. KeyboardInterrupt in the worker
                job.finish(Failed("the run was interrupted"))
            self._one_at_a_time.release()

    def shutdown(self, wait: float = 60.0) -> None:
        """Cancels a running job and waits for it, so that no unfinished file is left."""
        self.cancel(None, wait)
