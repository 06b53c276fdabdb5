"""The one training loop (DiT stages and the demo VAE): resume, step, log, checkpoint, export.

A run plugs in a `Task`: its state layout, fresh initial state, data iterator, batch placement,
jitted step and export. Everything else is shared: the newest complete checkpoint in
WORKDIR/checkpoints is resumed (state and grain iterator), metrics go to stdout,
WORKDIR/metrics.jsonl and WORKDIR/tb, checkpoints are written every `checkpoint.every` steps
and at the end, SIGTERM (or the multi-host preemption sync point) saves and stops cleanly, and
a finished run exports its model directory to WORKDIR/model once.

Config fields read here: num_steps, log_every, batch_size, checkpoint.{every, keep, use_async}.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
from absl import logging

from swifti2v_jax.training import checkpointing, metrics

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


def run(task: Task, config, workdir: Path) -> int:
    """Trains to `config.num_steps` (or until preempted); returns the last step reached."""
    workdir = Path(workdir)
    checkpointer = checkpointing.Checkpointer(
        workdir / "checkpoints", keep=config.checkpoint.keep, use_async=config.checkpoint.use_async
    )
    latest = checkpointer.latest_step()
    if latest is not None:
        logging.info("resuming from the checkpoint at step %d", latest)
        state = checkpointer.restore(latest, task.abstract_state, task.data_iterator)
    else:
        state = task.init_state()
    step = int(jax.device_get(state.step))

    writer = metrics.MetricsWriter(workdir)
    watcher = checkpointing.PreemptionWatcher(checkpointer, multi_host=task.multi_host)
    last_time, last_step = time.time(), step
    while step < config.num_steps:
        state, step_metrics = task.train_step(state, next(task.data_iterator))
        step += 1
        if step % config.log_every == 0 or step == config.num_steps:
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

    checkpointer.close()  # waits for the last async save to be complete on disk
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
