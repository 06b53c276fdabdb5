"""Grain input pipeline: records -> CSG training windows -> per-host batches.

Each record is a whole clip; a random segment start is drawn per example with exactly the
sampling layout (`csg.layout.WindowLayout.sample`, or the end-to-end window for Stage I
training) and the window's blocks are gathered on the host (`csg.inputs.gather_window`, as
sampling gathers them on the device), so the device sees fixed shapes:

    latents, reference [B, W, h, w, z] float32    positions [B, W] int32
    is_noisy [B, W] bool                           context [B, text_len, d] float32

With `generated_neighbours` = p > 0, an example's neighbour blocks (context blocks but the
anchor) come with probability p from the record's `generated` latents (a Stage II model's
own output, data/rollout.py) instead of the true ones, as at sampling time; the anchor and
the noisy blocks (the targets) stay true.

The window draw uses grain's per-record generator, so it is part of the (checkpointable)
iterator state: a resumed run sees the same windows as an uninterrupted one.

Several processes (hosts): there is one global sequence of examples (grain's IndexSampler over
all records, with its per-example random generator) and global batch n is its positions
[n*B, (n+1)*B). Each process reads only its rows of every global batch (`GlobalBatchRows`), so
the global batches, and the loss, do not depend on the number of processes, and every example
is read by exactly one process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import grain
import jax
import numpy as np

from swifti2v_jax.csg import inputs, layout
from swifti2v_jax.data import records

SHARD_PATTERN = "*.array_record"


@dataclasses.dataclass(frozen=True)
class WindowSpec(layout.WindowLayout):
    """The window layout (noisy_blocks M, neighbours N, end_to_end) and what fills it."""

    text_len: int = 512
    generated_neighbours: float = 0.0  # probability of neighbours from record["generated"]

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.generated_neighbours <= 1.0:
            raise ValueError(
                f"generated_neighbours must be in [0, 1], got {self.generated_neighbours}"
            )


def window_example(
    record: dict, window: layout.Window, text_len: int, generated_neighbours: bool = False
) -> dict:
    latents, reference, blocks, is_noisy = inputs.gather_window(
        record["latents"], record["reference"], window
    )
    latents = np.asarray(latents, np.float32)
    if generated_neighbours:
        own = np.asarray(record["generated"][blocks], np.float32)
        latents = inputs.window_neighbours(latents, own, is_noisy)
    return {
        "latents": latents,
        "reference": np.asarray(reference, np.float32),
        "positions": blocks.astype(np.int32),
        "is_noisy": is_noisy,
        "context": records.pad_context(np.asarray(record["context"], np.float32), text_len),
    }


class ToWindow(grain.transforms.RandomMap):
    """A record (bytes or dict) -> one training window at a random segment start."""

    def __init__(self, spec: WindowSpec, expected_blocks: int | None = None):
        self.spec = spec
        self.expected_blocks = expected_blocks

    def random_map(self, element, rng: np.random.Generator) -> dict:
        record = records.as_record(element)
        num_blocks = record["latents"].shape[0]
        if self.expected_blocks is not None and num_blocks != self.expected_blocks:
            raise ValueError(
                f"record {record['name']!r} has {num_blocks} latent blocks, the data set "
                f"promised {self.expected_blocks}: windows would change size"
            )
        window = self.spec.sample(num_blocks, rng)
        use_generated = False
        if self.spec.generated_neighbours > 0:  # no extra draw otherwise: old runs unchanged
            if "generated" not in record:
                raise ValueError(
                    f"record {record['name']!r} has no generated latents, which "
                    "generated_neighbours > 0 needs: add them with `python -m "
                    "swifti2v_jax.data.rollout`"
                )
            use_generated = bool(rng.random() < self.spec.generated_neighbours)
        return window_example(record, window, self.spec.text_len, use_generated)


def find_shards(data_dir: str | os.PathLike) -> list[str]:
    data_dir = Path(data_dir)
    shards = sorted(str(p) for p in data_dir.glob(SHARD_PATTERN))
    if not shards:
        raise ValueError(
            f"no {SHARD_PATTERN} shards in {data_dir}; prepare them with "
            f"`python -m swifti2v_jax.data.prepare --videos DIR --out {data_dir}`"
        )
    return shards


def array_record_source(data_dir: str | os.PathLike):
    """All shards of a prepared folder as one source; a shard that cannot be opened or read
    (garbage, truncated) is named in a one-line ValueError before training starts."""
    shards = find_shards(data_dir)
    for shard in shards:
        try:
            one = grain.sources.ArrayRecordDataSource([shard])
            if len(one):
                one[0]
        except Exception as e:  # noqa: BLE001 - the reader's errors name no file
            detail = " ".join(str(e).split())[:160] or type(e).__name__
            raise ValueError(
                f"{shard} is not a readable ArrayRecord shard ({detail}); prepare the data "
                "again or remove the file"
            ) from None
    return grain.sources.ArrayRecordDataSource(shards)


def tfds_source(dataset_dir: str | os.PathLike, split: str = "train"):
    """The records of a dataset written by tfds_builder.VideoFolderBuilder, read back from its
    folder (DATA_DIR/video_folder_builder/1.0.0) without the builder or its encoders."""
    import tensorflow_datasets as tfds

    if not (Path(dataset_dir) / "dataset_info.json").is_file():
        raise ValueError(f"{dataset_dir} is not a prepared tfds dataset (no dataset_info.json)")
    return tfds.builder_from_directory(str(dataset_dir)).as_data_source()[split]


class GlobalBatchRows:
    """A grain sampler: this process's `rows` (ascending) of every global batch of
    `global_batch` positions of `sampler`'s sequence.

    grain's DataLoader batches worker w's local indices w, w + W, w + 2W, ... and returns
    workers' batches in turn, so local index i belongs to local batch (i // W // rows) * W + w:
    the mapping keeps that batch = the global batch of the same number, for any worker count.
    """

    def __init__(self, sampler, global_batch: int, rows, worker_count: int):
        self.rows = tuple(int(row) for row in rows)
        if not self.rows or list(self.rows) != sorted(set(self.rows)):
            raise ValueError(f"rows must be ascending and distinct, got {self.rows}")
        if self.rows[0] < 0 or self.rows[-1] >= global_batch:
            raise ValueError(f"rows {self.rows} outside a batch of {global_batch}")
        self.sampler, self.global_batch = sampler, global_batch
        self.workers = max(1, worker_count)

    def __getitem__(self, index: int):
        worker, in_worker = index % self.workers, index // self.workers
        batch, row = divmod(in_worker, len(self.rows))
        position = (batch * self.workers + worker) * self.global_batch + self.rows[row]
        return self.sampler[position]

    def __repr__(self) -> str:  # grain checks it against the checkpointed iterator
        return (
            f"GlobalBatchRows({self.sampler!r}, global_batch={self.global_batch}, "
            f"rows={list(self.rows)}, workers={self.workers})"
        )


def make_loader(
    source,
    *,
    batch_size: int,
    window: WindowSpec,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    worker_count: int = 0,
    rows: Sequence[int] | None = None,
    expected_blocks: int | None = None,
) -> grain.DataLoader:
    """A grain DataLoader of this process's batches.

    `batch_size` is the global batch; `rows`: the rows of each global batch this process
    reads (training/sharding.process_rows); None: all of them (one process).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = tuple(range(batch_size)) if rows is None else tuple(rows)
    count = len(rows)
    sample = lambda shard_options: grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=shard_options,
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=seed,
    )
    if rows == tuple(range(batch_size)) and worker_count <= 1:
        # The slicing would be the identity: the plain sampler. With one process,
        # ShardByJaxProcess is no sharding and keeps the sampler's repr (grain checks it on
        # restore) that of checkpoints written before GlobalBatchRows existed.
        one = jax.process_count() == 1
        sampler = sample(
            grain.sharding.ShardByJaxProcess(drop_remainder=True)
            if one
            else grain.sharding.NoSharding()
        )
    else:
        sampler = GlobalBatchRows(
            sample(grain.sharding.NoSharding()), batch_size, rows, worker_count
        )
    operations = [
        ToWindow(window, expected_blocks),
        grain.transforms.Batch(batch_size=count, drop_remainder=True),
    ]
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=worker_count,
        shard_options=grain.sharding.NoSharding(),
    )
