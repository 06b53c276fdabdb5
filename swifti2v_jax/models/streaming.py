"""Layer streaming: the DiT's stacked block weights live in host memory, one layer at a time on
the device.

`place(params)` puts `params['blocks']` (the [num_layers, ...] stack) in the `pinned_host`
memory kind and everything else on the device; a DiT whose config has `stream_layers=True`
copies each layer to the device inside its layer scan (`to_device`, in models/dit.py
`apply_blocks`), so the device holds about one layer of weights instead of all of them, and XLA
can overlap the next layer's copy with this layer's compute. Outputs equal the resident run's:
the copy moves bytes, it changes no value. Works for any weight format (models/quant.py).
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding, SingleDeviceSharding

HOST = "pinned_host"
STREAMED_SCOPE = "blocks"


def host_sharding(sharding):
    """The same sharding in host memory (device memory kind -> pinned_host)."""
    return sharding.with_memory_kind(HOST)


def supports_host_memory(device=None) -> bool:
    device = device or jax.devices()[0]
    return HOST in {m.kind for m in device.addressable_memories()}


def place(params, device=None):
    """Device arrays for `params`, with params['blocks'] in pinned host memory."""
    device = device or jax.devices()[0]
    if not supports_host_memory(device):
        raise ValueError(
            f"layer streaming needs the {HOST!r} memory kind, which {device.platform} device "
            f"{device} does not offer; turn stream_layers off"
        )
    on_device = SingleDeviceSharding(device)
    on_host = host_sharding(on_device)
    return {
        name: jax.device_put(tree, on_host if name == STREAMED_SCOPE else on_device)
        for name, tree in params.items()
    }


def abstract(params, sharding: NamedSharding):
    """ShapeDtypeStructs of `params` for lowering: blocks on host, the rest with `sharding`."""
    on_host = host_sharding(sharding)
    return {
        name: jax.tree.map(
            lambda a, s=(on_host if name == STREAMED_SCOPE else sharding): jax.ShapeDtypeStruct(
                a.shape, a.dtype, sharding=s
            ),
            tree,
        )
        for name, tree in params.items()
    }


def to_device(layer):
    """Inside a jitted scan body: this layer's weights host -> device memory."""
    return jax.device_put(layer, jax.memory.Space.Device)
