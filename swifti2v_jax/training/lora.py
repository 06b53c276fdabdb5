"""LoRA adapters for training on a frozen backbone (the Stage I low-res LoRA).

The adapter tree mirrors the parameter tree but holds only the targeted Dense kernels, each
replaced by {'lora_down': [..., in, r], 'lora_up': [..., r, out]} (leading layer axes of
scanned blocks included). Before every forward the adapters are merged into the frozen
kernels, W + (alpha / r) down @ up, so the model code is untouched and the merged tree is
exactly what `conversion`'s LoRA merge would produce for inference. `lora_up` starts at zero:
at step 0 the adapted model equals the backbone.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

DEFAULT_TARGETS = r"blocks/(self_attn|cross_attn)/(q|k|v|o)/kernel|blocks/ffn_(0|2)/kernel"


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def target_paths(params, targets: str = DEFAULT_TARGETS) -> list[str]:
    pattern = re.compile(targets)
    found = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = _path_name(path)
        if pattern.fullmatch(name) and leaf.ndim >= 2:
            found.append(name)
    return found


def _set(tree: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def _get(tree, keys: list[str]):
    for key in keys:
        tree = tree[key]
    return tree


def init_lora(params, rng, rank: int, targets: str = DEFAULT_TARGETS) -> dict:
    """Adapters for every kernel whose '/'-joined path fully matches the `targets` regex."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    paths = target_paths(params, targets)
    if not paths:
        raise ValueError(f"LoRA targets {targets!r} match no kernel of the model")
    adapters: dict = {}
    for index, name in enumerate(paths):
        kernel = _get(params, name.split("/"))
        *lead, fan_in, fan_out = kernel.shape
        down = jax.random.normal(jax.random.fold_in(rng, index), (*lead, fan_in, rank))
        adapter = {
            "lora_down": (down / fan_in**0.5).astype(jnp.float32),
            "lora_up": jnp.zeros((*lead, rank, fan_out), jnp.float32),
        }
        _set(adapters, name.split("/"), adapter)
    return adapters


def merge(adapters, frozen, alpha: float, rank: int):
    """The backbone tree with every adapted kernel replaced by W + (alpha / rank) down @ up."""
    scale = alpha / rank
    merged = jax.tree.map(lambda x: x, frozen)  # fresh containers, shared leaves

    def visit(node, keys):
        if isinstance(node, dict) and "lora_down" in node:
            kernel = _get(frozen, keys)
            delta = jnp.einsum("...ir,...ro->...io", node["lora_down"], node["lora_up"])
            _set(merged, keys, (kernel + scale * delta).astype(kernel.dtype))
            return
        for key, child in node.items():
            visit(child, [*keys, key])

    visit(adapters, [])
    return merged
