"""The device mesh, the FSDP parameter layout and global batches.

A 2-D mesh ('data', 'fsdp') (names in models/partitioning.py). The train step is one
`jax.jit` over it (GSPMD, training/step.py): the batch is split over both axes; parameters,
Adam moments and EMA are split over 'fsdp' along one axis (the largest the axis size divides,
never the layer axis of the stacked DiT blocks; small leaves stay replicated) and replicated
over 'data'. Per-chip memory for params + Adam + EMA is 16 bytes x params / fsdp size.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from swifti2v_jax.models.partitioning import BATCH_AXES, DATA, FSDP

__all__ = ["BATCH_AXES", "DATA", "FSDP"]

# Leaves under these keys carry a leading layer axis (the scanned DiT stack): FSDP never
# splits it, so each scan iteration gathers one layer, not a slice of every layer.
STACKED_KEYS = ("blocks",)


def make_mesh(num_devices: int | None = None, fsdp: bool = False, data_size: int = 1) -> Mesh:
    """A ('data', 'fsdp') mesh over the first `num_devices` devices (all by default).

    fsdp=False: every device on 'data' (plain data parallelism). fsdp=True: `data_size`
    replicas of an FSDP group of the remaining devices (data_size=1: one FSDP group of all).
    Axes are Auto (GSPMD propagates shardings), not jax 0.10's default Explicit.
    """
    devices = jax.devices()
    count = len(devices) if num_devices in (None, -1, 0) else int(num_devices)
    if not 1 <= count <= len(devices):
        raise ValueError(f"mesh wants {count} devices, {len(devices)} are available")
    if fsdp and (data_size < 1 or count % data_size):
        raise ValueError(f"mesh.data_size {data_size} must divide the {count} devices")
    shape = (data_size, count // data_size) if fsdp else (count, 1)
    return jax.make_mesh(
        shape, (DATA, FSDP), axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices[:count]
    )


def fsdp_spec(shape: tuple[int, ...], axis_size: int, min_size: int, skip: int = 0) -> P:
    """Shards the largest axis (from `skip` on) that `axis_size` divides over 'fsdp';
    replicated below `min_size` elements or when nothing divides."""
    if axis_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    candidates = [(size, i) for i, size in enumerate(shape) if i >= skip and size % axis_size == 0]
    if not candidates:
        return P()
    _, axis = max(candidates, key=lambda c: (c[0], -c[1]))
    spec = [None] * len(shape)
    spec[axis] = FSDP
    return P(*spec)


def _is_stacked(path) -> bool:
    return any(getattr(key, "key", None) in STACKED_KEYS for key in path)


def tree_specs(tree, mesh: Mesh, fsdp: bool, min_size: int = 2**12):
    """PartitionSpecs for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
    axis_size = mesh.shape[FSDP]
    if not fsdp:
        return jax.tree.map(lambda _: P(), tree)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: fsdp_spec(tuple(x.shape), axis_size, min_size, int(_is_stacked(path))),
        tree,
    )


def sharded_axis(spec: P) -> int | None:
    for axis, name in enumerate(spec):
        if name == FSDP:
            return axis
    return None


def shardings(specs, mesh: Mesh):
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


def put(tree, specs, mesh: Mesh):
    """Places a host or device tree on the mesh with the given specs."""
    return jax.device_put(tree, shardings(specs, mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading batch axis split over ('data', 'fsdp'), the rest of each array local."""
    return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """This process's rows of the batch (numpy, leading batch axis) -> global jax.Arrays.

    Every process passes its own rows, `process_rows(mesh, global size)`: the global batch is
    the same whatever the number of processes (`jax.make_array_from_process_local_data`).
    """
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def process_rows(mesh: Mesh, global_batch_size: int) -> tuple[int, ...]:
    """-> the rows of the global batch held by this process's devices, ascending (the rows its
    data loader reads, in the order `global_batch` expects them). The mesh's device order
    decides them, not the process index: on a TPU slice they need not be one block."""
    indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    rows = sorted({i for index in indices.values() for i in range(global_batch_size)[index[0]]})
    if not rows:
        raise ValueError(
            f"process {jax.process_index()} has no device in the mesh ({dict(mesh.shape)}); "
            "use all devices (mesh.num_devices=-1)"
        )
    return tuple(rows)


def check_batch_size(global_batch_size: int, mesh: Mesh) -> tuple[int, ...]:
    """-> `process_rows`; the global batch must split evenly over the mesh's devices."""
    devices = mesh.size
    if global_batch_size % devices:
        raise ValueError(
            f"batch_size {global_batch_size} must be a multiple of the {devices} devices of the "
            f"mesh (the batch is split over 'data' x 'fsdp')"
        )
    return process_rows(mesh, global_batch_size)
