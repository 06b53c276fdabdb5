"""The device mesh, FSDP parameter layout and global batches.

One mesh axis, 'data'. The train step runs under `jax.shard_map` over it: each device sees its
slice of the global batch. Parameters are either replicated (plain data parallelism) or, with
FSDP, split along one axis over 'data' (the largest axis the device count divides; small
leaves stay replicated) and gathered inside the step. Optimizer moments and EMA follow their
parameter's layout, so the per-device memory for params + Adam + EMA drops by the mesh size.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D 'data' mesh over the first `num_devices` devices (all of them by default).

    The axis is Auto, not jax 0.10's default Explicit: the step is a shard_map anyway, and
    Auto keeps plain indexing of the (possibly sharded) state outside it working.
    """
    devices = jax.devices()
    count = len(devices) if num_devices in (None, -1, 0) else int(num_devices)
    if not 1 <= count <= len(devices):
        raise ValueError(f"mesh wants {count} devices, {len(devices)} are available")
    return jax.make_mesh(
        (count,), (DATA,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:count]
    )


def fsdp_spec(shape: tuple[int, ...], axis_size: int, min_size: int) -> P:
    """Shards the largest axis that `axis_size` divides; replicated below `min_size` elements."""
    if axis_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    candidates = [(size, i) for i, size in enumerate(shape) if size % axis_size == 0]
    if not candidates:
        return P()
    _, axis = max(candidates, key=lambda c: (c[0], -c[1]))
    spec = [None] * len(shape)
    spec[axis] = DATA
    return P(*spec)


def tree_specs(tree, mesh: Mesh, fsdp: bool, min_size: int = 2**12):
    """PartitionSpecs for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
    axis_size = mesh.shape[DATA]
    if not fsdp:
        return jax.tree.map(lambda _: P(), tree)
    return jax.tree.map(lambda x: fsdp_spec(tuple(x.shape), axis_size, min_size), tree)


def sharded_axis(spec: P) -> int | None:
    for axis, name in enumerate(spec):
        if name == DATA:
            return axis
    return None


def gather(tree, specs):
    """Inside shard_map: all-gathers FSDP-sharded leaves back to full arrays.

    The transpose of this all_gather is a reduce-scatter, so gradients taken through it come
    back as this device's shard of the gradient summed over devices.
    """

    def one(x, spec):
        axis = sharded_axis(spec)
        return x if axis is None else jax.lax.all_gather(x, DATA, axis=axis, tiled=True)

    return jax.tree.map(one, tree, specs)


def global_sum_of_squares(tree, specs):
    """Inside shard_map: sum of squares of a tree whose leaves are sharded per `specs`.

    Sharded leaves hold disjoint slices (psum their local sums); replicated leaves already hold
    the whole value (count them once).
    """
    sharded, replicated = 0.0, 0.0
    for x, spec in zip(jax.tree.leaves(tree), jax.tree.leaves(specs)):
        local = jax.numpy.sum(jax.numpy.square(x.astype(jax.numpy.float32)))
        if sharded_axis(spec) is None:
            replicated = replicated + local
        else:
            sharded = sharded + local
    if not isinstance(sharded, float):
        sharded = jax.lax.psum(sharded, DATA)
    return sharded + replicated


def shardings(specs, mesh: Mesh):
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


def put(tree, specs, mesh: Mesh):
    """Places a host or device tree on the mesh with the given specs."""
    return jax.device_put(tree, shardings(specs, mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """This host's slice of the batch (numpy, leading batch axis) -> global jax.Arrays.

    Every host passes its own per-host batch; the global batch is their concatenation in
    process order (`jax.make_array_from_process_local_data`).
    """
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """-> the per-host batch size; the global batch must split evenly over devices and hosts."""
    devices = mesh.shape[DATA]
    if global_batch_size % devices:
        raise ValueError(
            f"batch_size {global_batch_size} must be a multiple of the {devices} devices of the "
            f"'data' mesh axis"
        )
    return global_batch_size // jax.process_count()
