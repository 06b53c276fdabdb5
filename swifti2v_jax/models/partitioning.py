"""Mesh axis names and sharding hints the models use when traced inside a sharded step.

The train step (training/step.py) is a `jax.jit` over a 2-D mesh ('data', 'fsdp') and traces
the model under `jax.sharding.use_abstract_mesh`. Outside such a context (sampling, tests on
one device) every helper here is a no-op, so the models stay plain functions of their inputs.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

DATA = "data"  # pure data parallelism: parameters replicated over it
FSDP = "fsdp"  # parameters, Adam moments and EMA split over it; the batch too
BATCH_AXES = (DATA, FSDP)  # the global batch is split over both


def context_mesh():
    """The abstract mesh of the enclosing sharded step, or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return None
    return mesh


def batch_axes(batch_size: int) -> tuple[str, ...] | None:
    """The mesh axes a leading batch axis of `batch_size` is split over (None: no mesh)."""
    mesh = context_mesh()
    if mesh is None:
        return None
    shards = mesh.shape[DATA] * mesh.shape[FSDP]
    if batch_size % shards:
        raise ValueError(f"batch {batch_size} does not split over the {shards} mesh devices")
    return BATCH_AXES


def constrain(x: jax.Array, spec: P) -> jax.Array:
    """`with_sharding_constraint` inside a sharded step, identity elsewhere."""
    if context_mesh() is None:
        return x
    return jax.lax.with_sharding_constraint(x, spec)


def constrain_batch(x: jax.Array) -> jax.Array:
    """Activations [B, ...]: batch over ('data', 'fsdp'), everything else local."""
    if context_mesh() is None:
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES))
