"""Building blocks shared by the DiT: fp32 norms, 3D RoPE and the one attention function.

Every attention call in the project goes through `attention`, which has a backend switch:
`xla` (portable reference), `cudnn` (flash attention on NVIDIA GPUs) and `splash` (Pallas
splash attention on TPU).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from swifti2v_jax.models import partitioning
from swifti2v_jax.models.chunked_attention import chunked_attention

ATTENTION_BACKENDS = ("xla", "chunked", "cudnn", "splash")


# The dtype every DiT norm computes its statistics in: fp32, as in Wan2.2 (docs/design.md,
# "Conventions"). A module attribute only so that tests/test_dit.py can force bf16 norms and show
# the bf16 tolerance catches them; nothing else changes it.
NORM_DTYPE = jnp.float32


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without affine parameters, computed in fp32 (returns fp32)."""
    x = x.astype(NORM_DTYPE)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class AffineLayerNorm(nn.Module):
    """LayerNorm with fp32 `scale` and `bias` (the DiT's cross-attention norm)."""

    eps: float

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (dim,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (dim,), jnp.float32)
        return layer_norm(x, self.eps) * scale + bias


class RMSNorm(nn.Module):
    """Wan's qk-norm: normalise in fp32 over the full width, cast back, then scale."""

    eps: float

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(NORM_DTYPE)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return normed.astype(x.dtype) * scale.astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# 3D rotary position embedding (interleaved pairs; head-dim slots split [t, h, w] = [22, 21, 21]
# complex pairs for head_dim 128; each axis uses its own rotary width for its frequencies).


def rope_axis_slots(head_dim: int) -> tuple[int, int, int]:
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


@functools.cache
def _axis_frequencies(slots: int, theta: float) -> np.ndarray:
    # Axis rotary width D = 2*slots; omega_j = theta^(-2j/D), computed in float64 on host.
    return theta ** (-np.arange(slots, dtype=np.float64) * 2.0 / (2 * slots))


def rope_angles(
    positions: jax.Array, grid_hw: tuple[int, int], head_dim: int, theta: float
) -> jax.Array:
    """Rotation angles [B, F*H*W, head_dim/2] for a (F, H, W) token grid.

    positions: [B, F] absolute temporal index of each latent frame (CSG puts the anchor at 0 and
    the window's blocks at their real frame indices); rows and columns always count from 0.
    """
    slots_t, slots_h, slots_w = rope_axis_slots(head_dim)
    height, width = grid_hw
    batch, frames = positions.shape
    ang_t = positions.astype(jnp.float32)[..., None] * _axis_frequencies(slots_t, theta).astype(
        np.float32
    )
    ang_h = np.arange(height)[:, None] * _axis_frequencies(slots_h, theta)
    ang_w = np.arange(width)[:, None] * _axis_frequencies(slots_w, theta)
    shape = (batch, frames, height, width)
    angles = jnp.concatenate(
        [
            jnp.broadcast_to(ang_t[:, :, None, None, :], shape + (slots_t,)),
            jnp.broadcast_to(
                jnp.asarray(ang_h, jnp.float32)[None, None, :, None], shape + (slots_h,)
            ),
            jnp.broadcast_to(
                jnp.asarray(ang_w, jnp.float32)[None, None, None, :], shape + (slots_w,)
            ),
        ],
        axis=-1,
    )
    return angles.reshape(batch, frames * height * width, head_dim // 2)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates adjacent (even, odd) pairs of x [B, L, heads, D]; cos/sin are [B, L, D/2]."""
    x32 = x.astype(jnp.float32).reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    a, b = x32[..., 0], x32[..., 1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rotated = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Attention


def frame_mask_to_token_mask(frame_mask: jax.Array, tokens_per_frame: int) -> jax.Array:
    """[B, Fq, Fk] boolean frame mask -> [B, 1, Fq*S, Fk*S] token mask (True = may attend)."""
    mask = jnp.repeat(jnp.repeat(frame_mask, tokens_per_frame, axis=1), tokens_per_frame, axis=2)
    return mask[:, None]


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    frame_mask: jax.Array | None = None,
    tokens_per_frame: int = 1,
    backend: str = "xla",
) -> jax.Array:
    """Scaled dot-product attention, q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D].

    mask: optional boolean token mask [B, 1, Lq, Lk], True where a query may attend a key.
    frame_mask: optional boolean [B, Fq, Fk] frame mask instead (token i is in frame
    i // tokens_per_frame); every backend but `xla` applies it block by block (chunked) and
    never materialises [Lq, Lk]. Splash takes no per-example dynamic mask, so masked splash
    calls (anchor dropout, read-only CSG) run the chunked kernel.
    """
    if mask is not None and frame_mask is not None:
        raise ValueError("pass a token mask or a frame mask, not both")
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "xla" or mask is not None:  # token masks: the reference path
        if frame_mask is not None:
            mask = frame_mask_to_token_mask(frame_mask.astype(bool), tokens_per_frame)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    if backend == "chunked" or frame_mask is not None:
        return chunked_attention(q, k, v, frame_mask, tokens_per_frame)
    if backend == "cudnn":
        dtype = q.dtype
        if dtype not in (jnp.bfloat16, jnp.float16):
            q, k, v = (t.astype(jnp.bfloat16) for t in (q, k, v))
        out = jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
        return out.astype(dtype)
    return _sharded_splash(q, k, v)


def _sharded_splash(q, k, v):
    """Splash inside a sharded step: its own `shard_map` over the batch axes.

    A Pallas kernel is opaque to GSPMD (it would be replicated), so it runs per batch shard.
    check_vma=False is safe here: this shard_map holds no parameters, only activations split
    over the batch, so no gradient-reduction rule goes through it (training/step.py).
    """
    axes = partitioning.batch_axes(q.shape[0])
    if axes is None:
        return _splash_attention(q, k, v)
    spec = P(axes)
    return jax.shard_map(
        _splash_attention, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False
    )(q, k, v)


def _splash_attention(q, k, v, block: int = 512):
    """Pallas splash attention (TPU). Pads sequences to block multiples and masks padded keys."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as splash_mask,
    )

    batch, len_q, heads, head_dim = q.shape
    len_k = k.shape[1]
    pad_q, pad_k = (-len_q) % block, (-len_k) % block
    scale = head_dim**-0.5
    q = jnp.pad(q * scale, ((0, 0), (0, pad_q), (0, 0), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    shape = (len_q + pad_q, len_k + pad_k)
    mask = splash_mask.MultiHeadMask([splash_mask.FullMask(shape) for _ in range(heads)])
    sizes = splash.BlockSizes(
        block_q=block, block_kv_compute=block, block_kv=block, block_q_dkv=block,
        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes)
    # Segment ids keep padded keys out of every softmax (partial blocks gave NaNs in other ports).
    q_ids = (jnp.arange(shape[0]) >= len_q).astype(jnp.int32)
    kv_ids = (jnp.arange(shape[1]) >= len_k).astype(jnp.int32)
    segments = splash.SegmentIds(q=q_ids, kv=kv_ids)
    per_example = jax.vmap(kernel, in_axes=(0, 0, 0, None))
    out = per_example(
        q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), segments
    )
    return out.transpose(0, 2, 1, 3)[:, :len_q]
