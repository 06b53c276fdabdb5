"""Preemption-safe training checkpoints: Orbax CheckpointManager (async) + the grain iterator.

These are the resumable state of a run in WORKDIR/checkpoints (training/loop.py). Model
directories, what conversion writes, sample.py loads and a finished run exports to
WORKDIR/model, are a different format: swifti2v_jax/checkpoints.py.

A checkpoint at step S holds two items: `state` (TrainState: params, optimizer state, EMA,
step, RNG key; sharded arrays are saved and restored with their shardings) and `data` (each
host's grain iterator state, after the batch of step S was consumed). Orbax writes into
`S.orbax-checkpoint-tmp-*` and renames to `S` only once every item is complete, so a crash or
a kill mid-save leaves a tmp folder that `latest_step()` ignores: a partial checkpoint is never
taken for a complete one.

Preemption: SIGTERM sets a flag (single host), or the JAX preemption sync point is reached
(multi-host, after `jax.distributed.initialize()`, where all hosts agree on the step). The
loop then saves at the current step, waits for the write and exits cleanly.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, use_async: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=use_async,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data"), options=options
        )
        # Orbax removes leftover temporary folders in a background thread that only its next
        # save waits for (not close()): wait now, or a run interrupted before its first save
        # removes the workdir under that thread, which then dies with a traceback.
        getattr(self.manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_iterator) -> bool:
        """Starts saving (async); the iterator's state is read before this returns."""
        if step in self.manager.all_steps():
            return False
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state, data_iterator):
        """-> state placed like `abstract_state` (ShapeDtypeStructs with shardings); the
        iterator is moved to where it was at `step` in place."""
        check_process_count(self.directory / str(step))
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
        return restored["state"]

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def check_process_count(checkpoint: Path) -> None:
    """Each process resumes its own data position (data/process_I-of-N.json): a checkpoint
    written by N processes resumes only with N."""
    written = sorted((checkpoint / "data").glob("process_*-of-*.json"))
    if written:
        count = int(written[0].stem.rsplit("-of-", 1)[1])
        if count != jax.process_count():
            raise ValueError(
                f"{checkpoint} was written by {count} process(es), this run has "
                f"{jax.process_count()}: resume with {count}, or start a new workdir"
            )


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) for restoring into the layout of `tree`."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


class PreemptionWatcher:
    """Turns SIGTERM into a flag the loop polls (single host); multi-host asks JAX's sync
    manager, which installs its own SIGTERM handling in `jax.distributed.initialize()`."""

    def __init__(self, checkpointer: Checkpointer, multi_host: bool):
        self._event = threading.Event()
        self._checkpointer = checkpointer
        self._multi_host = multi_host
        self._previous = None
        if not multi_host and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        del frame
        logging.warning("received signal %d: saving a checkpoint and stopping", signum)
        self._event.set()

    def should_stop(self, step: int) -> bool:
        if self._multi_host:
            return self._checkpointer.reached_preemption(step)
        return self._event.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
