"""The one training loop (DiT stages and the demo VAE): resume, step, log, checkpoint, export.

A run plugs in a `Task`: its state layout, fresh initial state, data iterator, batch placement,
jitted step and export. Everything else is shared: the newest complete checkpoint in
WORKDIR/checkpoints is resumed (state and grain iterator), metrics go to stdout,
WORKDIR/metrics.jsonl and WORKDIR/tb, checkpoints are written every `checkpoint.every` steps
and at the end, SIGTERM (or the multi-host preemption sync point) saves and stops cleanly, and
a finished run exports its model directory to WORKDIR/model once.

Faults (docs/faults.md): the newest checkpoint that passes its checksums and restores is
resumed, older ones standing in for damaged ones (training/checkpointing.py). A step whose loss,
gradient norm or updated parameters are not finite keeps the previous parameters
(state.guard_nonfinite); the loop then stops with one line, saving that last finite state
(`NonFiniteError`, exit 1), or skips the batch up to `max_nonfinite_skips` times in a run.

Config fields read here: num_steps, log_every, batch_size, max_nonfinite_skips,
checkpoint.{every, keep, use_async, verify}.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from swifti2v_jax.training import checkpointing, metrics
from swifti2v_jax.training import state as state_lib

# Fault injection for tests and drills: comma-separated steps whose batch becomes NaN.
INJECT_NAN_ENV = "SWIFTI2V_INJECT_NAN_STEPS"


class NonFiniteError(ValueError):
    """Training stopped at a step whose loss, gradient norm or parameters were not finite."""


MODEL_DIR = "model"  # WORKDIR/model: the finished run's model directory (checkpoints.save)


@dataclasses.dataclass
class Task:
    """What one kind of training brings to `run`."""

    abstract_state: Any  # the TrainState's ShapeDtypeStructs (with shardings): restore target
    init_state: Callable[[], Any]  # a fresh TrainState; called only without a checkpoint
    data_iterator: Iterator  # a grain iterator (its position is checkpointed)
    train_step: Callable[[Any, Any], tuple[Any, dict]]  # (state, host batch) -> (state, metrics)
    learning_rate: Callable[[int], float]  # the schedule, logged per step
    export: Callable[[Any, int, Path], None]  # (final state, step, WORKDIR/model)
    tokens_per_batch: int = 0  # > 0: also log tokens_per_sec
    multi_host: bool = False


def check_config(config) -> None:
    """The loop's own settings; call before any expensive work."""
    if config.num_steps < 1 or config.log_every < 1 or config.checkpoint.every < 1:
        raise ValueError("num_steps, log_every and checkpoint.every must be >= 1")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.get("max_nonfinite_skips", 0) < 0:
        raise ValueError("max_nonfinite_skips must be >= 0")
    _injected_nan_steps()


def _injected_nan_steps() -> set[int]:
    value = os.environ.get(INJECT_NAN_ENV, "").strip()
    try:
        return {int(s) for s in value.split(",") if s.strip()}
    except ValueError:
        raise ValueError(f"{INJECT_NAN_ENV}={value!r}: expected step numbers like 4,7") from None


def _poisoned(batch):
    """The batch with every floating-point array replaced by NaN (fault injection)."""

    def poison(x):
        x = np.asarray(x)
        return np.full_like(x, np.nan) if np.issubdtype(x.dtype, np.floating) else x

    return jax.tree.map(poison, batch)


def describe_nonfinite(code: int, values: dict) -> str:
    parts = []
    if code & state_lib.NONFINITE_LOSS:
        parts.append(f"loss ({float(values['loss'])})")
    if code & state_lib.NONFINITE_GRAD_NORM:
        parts.append(f"gradient norm ({float(values['grad_norm'])})")
    if code & state_lib.NONFINITE_PARAMS:
        parts.append("updated parameters")
    return "non-finite " + ", ".join(parts)


def run(task: Task, config, workdir: Path) -> int:
    """Trains to `config.num_steps` (or until preempted); returns the last step reached."""
    workdir = Path(workdir)
    checkpointer = checkpointing.Checkpointer(
        workdir / "checkpoints",
        keep=config.checkpoint.keep,
        use_async=config.checkpoint.use_async,
        verify=config.checkpoint.get("verify", True),
    )
    latest, state = checkpointer.restore_newest(task.abstract_state, task.data_iterator)
    if latest is not None:
        logging.info("resuming from the checkpoint at step %d", latest)
    else:
        state = task.init_state()
    step = int(jax.device_get(state.step))

    # Rows logged after the resumed step are about to be computed again.
    writer = metrics.MetricsWriter(workdir, resume_step=step)
    watcher = checkpointing.PreemptionWatcher(checkpointer, multi_host=task.multi_host)
    max_skips, skips = config.get("max_nonfinite_skips", 0), 0
    inject = _injected_nan_steps()
    last_time, last_step = time.time(), step
    while step < config.num_steps:
        batch = next(task.data_iterator)
        if step + 1 in inject:
            batch = _poisoned(batch)
        state, step_metrics = task.train_step(state, batch)
        step += 1
        # One scalar read per step: the step is not allowed to go on from a non-finite state.
        nonfinite = int(jax.device_get(step_metrics.pop("nonfinite", 0)))
        if nonfinite:
            problem = describe_nonfinite(nonfinite, jax.device_get(step_metrics))
            skips += 1
            if skips > max_skips:
                checkpointer.save(step, state, task.data_iterator)
                checkpointer.close()
                watcher.close()
                writer.close()
                raise NonFiniteError(
                    f"step {step}: {problem}; stopped. The checkpoint at step {step} holds the "
                    f"last finite parameters (after step {step - 1}); see docs/faults.md"
                )
            logging.warning(
                "step %d: %s; skipped this batch (%d of %d allowed)",
                step, problem, skips, max_skips,
            )  # fmt: skip
        elif step % config.log_every == 0 or step == config.num_steps:
            values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
            elapsed = max(time.time() - last_time, 1e-9)
            values["learning_rate"] = float(task.learning_rate(step - 1))
            values["samples_per_sec"] = (step - last_step) * config.batch_size / elapsed
            if task.tokens_per_batch:
                values["tokens_per_sec"] = (step - last_step) * task.tokens_per_batch / elapsed
            writer.write(step, values)
            last_time, last_step = time.time(), step
        if step % config.checkpoint.every == 0 or step == config.num_steps:
            checkpointer.save(step, state, task.data_iterator)
        if watcher.should_stop(step):
            checkpointer.save(step, state, task.data_iterator)
            logging.warning("preempted: saved the checkpoint at step %d, stopping", step)
            break

    checkpointer.close()  # waits for the last async save (and its checksums) on disk
    watcher.close()
    writer.close()
    logging.info("done at step %d (checkpoints in %s)", step, checkpointer.directory)
    out_dir = workdir / MODEL_DIR
    if step < config.num_steps:
        return step
    if out_dir.exists():
        logging.info("%s exists: not exporting again", out_dir)
    else:
        task.export(state, step, out_dir)
    return step
