"""Layer streaming: the DiT's stacked block weights live in host memory, one layer at a time on
the device.

`place(params)` puts the stacked matmul kernels of `params['blocks']` ([num_layers, in, out],
`kernel` or quantized `qkernel`: all but a fraction of a percent of the bytes) in the
`pinned_host` memory kind and everything else on the device (TPU cannot slice one layer out of
a host-resident 2-D stack of bf16 biases: "sublane slicing size must be a multiple of the
element packing factor"). One-byte kernels (int8, fp8) travel as uint32 words, four weights
of an output row per word: TPU lays a host int8 stack out in (32, 128) tiles but slices layers
out of (8, 128) ones, and XLA would relayout the whole stack through device memory first;
32-bit words slice in place. `to_device` turns the words back into the stored dtype.

A DiT whose config has `stream_layers=True` copies each layer to the device inside its layer
scan (`to_device`, in models/dit.py `apply_blocks`), so the device holds about one layer of
weights instead of all of them, and XLA can overlap the next layer's copy with this layer's
compute. Outputs equal the resident run's: the copy moves bytes, it changes no value. Works
for any weight format (models/quant.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, make_single_device_sharding

HOST = "pinned_host"
STREAMED_SCOPE = "blocks"
STREAMED_LEAVES = ("kernel", "qkernel")


WORDS = "__u32_"  # leaf-name suffix of a one-byte kernel packed into uint32 words


def _rename(tree, rename):
    """Copies a nested dict, renaming leaves: rename(path, leaf) -> (name, new_leaf)."""

    def walk(node, path):
        out = {}
        for key, value in node.items():
            if isinstance(value, dict):
                out[key] = walk(value, (*path, key))
            else:
                name, leaf = rename((*path, key), value)
                out[name] = leaf
        return out

    return walk(tree, ())


def pack(params, leaf_fn):
    """The streamed layout of `params`: leaf_fn(leaf, streamed, words) for every leaf, where
    streamed = a stacked block kernel (goes to host memory) and words = a streamed one-byte
    kernel (renamed here; its uint32 form is leaf_fn's job)."""

    def rename(path, leaf):
        streamed = path[0] == STREAMED_SCOPE and path[-1] in STREAMED_LEAVES
        words = streamed and jnp.dtype(leaf.dtype).itemsize == 1
        name = f"{path[-1]}{WORDS}{jnp.dtype(leaf.dtype).name}" if words else path[-1]
        return name, leaf_fn(leaf, streamed, words)

    return _rename(params, rename)


def _to_words(array):
    array = np.asarray(array)
    if array.shape[-1] % 4:
        raise ValueError(f"a streamed one-byte kernel needs out % 4 == 0, got {array.shape}")
    return np.ascontiguousarray(array).view(np.uint32)


def host_sharding(sharding):
    """The same sharding in host memory (device memory kind -> pinned_host)."""
    return sharding.with_memory_kind(HOST)


def supports_host_memory(device=None) -> bool:
    device = device or jax.devices()[0]
    return HOST in {m.kind for m in device.addressable_memories()}


def place(params, device=None):
    """Device arrays for `params`, with the stacked block kernels in pinned host memory."""
    device = device or jax.devices()[0]
    if not supports_host_memory(device):
        raise ValueError(
            f"layer streaming needs the {HOST!r} memory kind, which {device.platform} device "
            f"{device} does not offer; turn stream_layers off"
        )
    # jax 0.12 deprecates constructing SingleDeviceSharding; the factory exists since 0.10.
    on_device = make_single_device_sharding(device)
    on_host = host_sharding(on_device)

    def put(leaf, streamed, words):
        return jax.device_put(
            _to_words(leaf) if words else leaf, on_host if streamed else on_device
        )

    return pack(params, put)


def abstract(params, sharding: NamedSharding):
    """ShapeDtypeStructs of `params` for lowering: block kernels on host, the rest `sharding`."""
    on_host = host_sharding(sharding)

    def struct(a, streamed, words):
        shape, dtype = (
            (a.shape[:-1] + (a.shape[-1] // 4,), jnp.uint32) if words else (a.shape, a.dtype)
        )
        return jax.ShapeDtypeStruct(shape, dtype, sharding=on_host if streamed else sharding)

    return pack(params, struct)


def to_device(layer):
    """Inside a jitted scan body: this layer's weights host -> device memory, with packed
    one-byte kernels back in their own dtype and name."""
    layer = jax.device_put(layer, jax.memory.Space.Device)

    def rename(path, leaf):
        name = path[-1]
        if WORDS not in name:
            return name, leaf
        name, dtype = name.split(WORDS)
        unpacked = jax.lax.bitcast_convert_type(leaf, jnp.dtype(dtype))  # [..., out/4, 4]
        return name, unpacked.reshape(leaf.shape[:-1] + (leaf.shape[-1] * 4,))

    return _rename(layer, rename)
