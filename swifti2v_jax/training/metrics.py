"""Training metrics to stdout, JSON lines and TensorBoard event files (tensorboardX).

One logged step is one TensorBoard event holding all its scalars
(`tensorboard --logdir WORKDIR/tb`). Only the primary host writes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
from tensorboardX import FileWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary


class MetricsWriter:
    """Writes one dict of scalars per logged step to stdout, metrics.jsonl and tb/."""

    def __init__(self, workdir: str | os.PathLike, resume_step: int | None = None):
        """resume_step: rows of later steps (logged after the checkpoint the run resumes
        from) are dropped from metrics.jsonl, so each step appears once; TensorBoard gets a
        session start at the next step, which makes it purge those points from older files."""
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            drop_rows_after(workdir / "metrics.jsonl", resume_step)
        self._jsonl = open(workdir / "metrics.jsonl", "a")
        self._events = FileWriter(str(workdir / "tb"), flush_secs=10)
        if resume_step:
            start = SessionLog(status=SessionLog.START)
            self._events.add_event(Event(step=resume_step + 1, session_log=start))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = {name: float(value) for name, value in values.items()}
        print(f"step {step}: " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(values.items())))
        sys.stdout.flush()
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        scalars = [Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
        self._events.add_summary(Summary(value=scalars), step)
        self._events.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._events.close()


def drop_rows_after(path: Path, step: int) -> None:
    """Rewrites a metrics.jsonl without the rows of steps after `step` (atomically)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _row_step(line) <= step]
    if len(kept) == len(lines):
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _row_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a line torn by a kill mid-write: dropped
