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

Verification (docs/faults.md): once a step is complete on disk, process 0 writes its checksums
(swifti2v_jax/checksums.py) from a background thread. `restore_newest` checks them and falls
back past any step that fails the check or cannot be read, newest first, saying so in one line
each; such steps are moved to WORKDIR/checkpoints.skipped/ (nothing is deleted) so new saves
can take their step numbers.

Preemption: SIGTERM sets a flag (single host), or the JAX preemption sync point is reached
(multi-host, after `jax.distributed.initialize()`, where all hosts agree on the step). The
loop then saves at the current step, waits for the write and exits cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from swifti2v_jax import checksums, cli, launch

SKIPPED_DIR = "checkpoints.skipped"  # beside WORKDIR/checkpoints: steps that failed to restore
_POLL_SECONDS = 0.2


class NoIntactCheckpoint(ValueError):
    """Every checkpoint in the directory failed verification or could not be read."""


class Checkpointer:
    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        use_async: bool = True,
        verify: bool = True,
    ):
        self.directory = Path(directory).absolute()
        self.verify = verify
        self._sealers: list[threading.Thread] = []
        self._closing = threading.Event()
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
        started = self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
            force=True,
        )
        if started and self.verify and jax.process_index() == 0:
            sealer = threading.Thread(target=self._seal_when_done, args=(step,), daemon=True)
            sealer.start()
            self._sealers.append(sealer)
        return started

    def _seal_when_done(self, step: int) -> None:
        """Orbax renames the finished step into place as its last act: seal it then."""
        final = self.directory / str(step)
        while not final.is_dir():
            if self._closing.is_set() and not final.is_dir():
                return  # the save failed (close() re-raises its error)
            self._closing.wait(_POLL_SECONDS)
        try:
            checksums.seal(final)
        except OSError as e:  # removed meanwhile (keep=1 and a newer step): nothing to seal
            if final.is_dir():
                logging.warning("could not write the checksums of %s: %s", final, e)

    def restore_newest(self, abstract_state, data_iterator) -> tuple[int | None, object]:
        """-> (step, state) of the newest checkpoint that verifies and restores, or (None, None)
        without checkpoints. Steps skipped on the way are reported and moved aside."""
        skipped = []
        for step in sorted(self.all_steps(), reverse=True):
            trouble = self.problem(step)
            if trouble is None:
                try:
                    state = self.restore(step, abstract_state, data_iterator)
                except ProcessCountError:
                    raise
                except Exception as e:  # noqa: BLE001 - any unreadable step is skipped
                    trouble = f"cannot be read ({type(e).__name__}: {cli.one_line(e)[:200]})"
            if trouble is not None:
                logging.warning("checkpoint step %d %s: skipping it", step, trouble)
                skipped.append(step)
                continue
            if skipped:
                logging.warning(
                    "resuming from step %d, the newest intact checkpoint (skipped step %s; "
                    "moved to %s)",
                    step,
                    ", ".join(map(str, skipped)),
                    self.directory.parent / SKIPPED_DIR,
                )
                self._move_aside(skipped)
            return step, state
        if skipped:
            raise NoIntactCheckpoint(
                f"no intact checkpoint in {self.directory}: step(s) "
                f"{', '.join(map(str, skipped))} failed (see above); move them away to start "
                "afresh, or restore a copy"
            )
        return None, None

    def problem(self, step: int) -> str | None:
        """One line on what is wrong with a step's files, or None (unsealed: unverified)."""
        path = self.directory / str(step)
        for item in ("state", "data"):
            if not (path / item).is_dir():
                return f"has no {item}/ folder"
        if not (path / "state" / "_METADATA").is_file():
            return "is missing state/_METADATA (incomplete or damaged)"
        if not self.verify:
            return None
        if not checksums.is_sealed(path):
            logging.warning(
                "checkpoint step %d has no %s (written before verification existed, or "
                "stopped before sealing): restoring it unverified",
                step,
                checksums.MANIFEST,
            )
            return None
        return checksums.problem(path)

    def _move_aside(self, steps: list[int]) -> None:
        launch.barrier("checkpoint-fallback-restored")  # every process has read its step
        if jax.process_index() == 0:
            for step in steps:
                target = self.directory.parent / SKIPPED_DIR / str(step)
                n = 1
                while target.exists():
                    target, n = target.with_name(f"{step}-{n}"), n + 1
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(self.directory / str(step), target)
        launch.barrier("checkpoint-fallback-moved")
        self.manager.reload()

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
        """Waits for the last save and its checksums."""
        try:
            self.manager.wait_until_finished()
            self.manager.close()
        finally:
            self._closing.set()
            for sealer in self._sealers:
                sealer.join()


class ProcessCountError(ValueError):
    """A checkpoint written by another number of processes."""


def check_process_count(checkpoint: Path) -> None:
    """Each process resumes its own data position (data/process_I-of-N.json): a checkpoint
    written by N processes resumes only with N."""
    written = sorted((checkpoint / "data").glob("process_*-of-*.json"))
    if written:
        count = int(written[0].stem.rsplit("-of-", 1)[1])
        if count != jax.process_count():
            raise ProcessCountError(
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
