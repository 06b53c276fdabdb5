"""umT5 encoder (the text encoder of Wan2.2) in Flax linen.

umT5 differs from the original T5 encoder in one way that matters here: every layer owns its
own relative position bias table (T5 shares the first layer's). The rest is T5 v1.1: pre-norm
residual blocks with an RMS norm (no mean, no bias), attention without the 1/sqrt(d) scale,
a gated-GELU(tanh) feed-forward, no biases anywhere, and a final RMS norm.

Precision follows the original (`t5_dtype=bf16`): matmuls and the residual stream in
`config.dtype`, norms and softmax in fp32. Norm scales are stored in fp32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax import config_fields

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Encoder hyper-parameters; defaults are umT5-XXL as used by Wan2.2."""

    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    num_heads: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    dtype: str = "bfloat16"  # compute dtype of matmuls and of the residual stream
    param_dtype: str = "bfloat16"  # dtype of freshly initialised weights (norm scales stay fp32)

    def __post_init__(self):
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"T5Config.{name} must be one of {sorted(_DTYPES)}")
        if self.num_buckets % 4:
            raise ValueError(
                "T5Config.num_buckets must be a multiple of 4 (two directions, 2 halves)"
            )

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return _DTYPES[self.param_dtype]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> T5Config:
        """From a dict or an ml_collections ConfigDict; unknown keys are an error."""
        return config_fields.from_fields(cls, d, "T5")


def relative_position_buckets(
    query_len: int, key_len: int, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Bidirectional T5 bucket index [Lq, Lk] of (key position - query position).

    Half the buckets per direction (offset num_buckets/2 for keys to the right); within a
    direction, distances below a quarter of the buckets are exact and larger ones are
    log-spaced up to max_distance. Computed in float32 like the PyTorch originals so the
    floor at the bucket edges (distances 16, 32, 64) lands on the same side.
    """
    rel = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    dist = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        log_ratio = np.log(dist.astype(np.float32) / np.float32(max_exact))
    scaled = (
        log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    )
    large = max_exact + np.where(dist < max_exact, 0, scaled).astype(np.int64)
    large = np.minimum(large, half - 1)
    return buckets + np.where(dist < max_exact, dist, large)


class RMSNorm(nn.Module):
    """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale, in fp32, cast to the compute dtype."""

    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (x32 * scale.astype(jnp.float32)).astype(self.dtype)


def _dense(features: int, config: T5Config, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=False,
        dtype=config.compute_dtype,
        param_dtype=config.weight_dtype,
        name=name,
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention with this layer's relative position bias and a key mask."""

    config: T5Config

    @nn.compact
    def __call__(self, x, key_mask):
        cfg = self.config
        b, length, _ = x.shape

        def heads(t):
            return t.reshape(b, length, cfg.num_heads, cfg.d_kv)

        q = heads(_dense(cfg.inner_dim, cfg, "q")(x))
        k = heads(_dense(cfg.inner_dim, cfg, "k")(x))
        v = heads(_dense(cfg.inner_dim, cfg, "v")(x))

        table = self.param(
            "relative_bias",
            nn.initializers.normal(1.0),
            (cfg.num_buckets, cfg.num_heads),
            cfg.weight_dtype,
        )
        buckets = relative_position_buckets(length, length, cfg.num_buckets, cfg.max_distance)
        bias = jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))  # [H, Lq, Lk]

        # No 1/sqrt(d_kv) scale: T5 folds it into the initialisation of q.
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) + bias[None]
        masked_value = jnp.finfo(cfg.compute_dtype).min
        logits = jnp.where(key_mask[:, None, None, :], logits, masked_value)
        weights = jax.nn.softmax(logits, axis=-1).astype(cfg.compute_dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, cfg.inner_dim)
        return _dense(cfg.d_model, cfg, "o")(out)


class GatedGeluFFN(nn.Module):
    """fc2(fc1(x) * gelu_tanh(gate(x))), no biases."""

    config: T5Config

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        gate = jax.nn.gelu(_dense(cfg.d_ff, cfg, "gate")(x), approximate=True)
        return _dense(cfg.d_model, cfg, "fc2")(_dense(cfg.d_ff, cfg, "fc1")(x) * gate)


class UMT5Block(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x, key_mask):
        cfg = self.config
        x = x + SelfAttention(cfg, name="attn")(
            RMSNorm(cfg.eps, cfg.compute_dtype, name="norm1")(x), key_mask
        )
        x = x + GatedGeluFFN(cfg, name="ffn")(RMSNorm(cfg.eps, cfg.compute_dtype, name="norm2")(x))
        return x


class UMT5Encoder(nn.Module):
    """input_ids [B, L] int, attention_mask [B, L] (1 = token, 0 = padding) -> [B, L, d_model].

    Every position gets an output; padded positions are garbage that callers cut off
    (see `swifti2v_jax.text.encode_prompts`).
    """

    config: T5Config

    @nn.compact
    def __call__(self, input_ids, attention_mask):
        cfg = self.config
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be [B, L]; got {input_ids.shape} "
                f"and {attention_mask.shape}"
            )
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            embedding_init=nn.initializers.normal(1.0),
            name="token_embedding",
        )
        x = embed(input_ids.astype(jnp.int32))  # no embedding scale in T5
        key_mask = attention_mask.astype(bool)
        for i in range(cfg.num_layers):
            x = UMT5Block(cfg, name=f"blocks_{i}")(x, key_mask)
        return RMSNorm(cfg.eps, cfg.compute_dtype, name="norm")(x)


def init_params(config: T5Config, rng: jax.Array, seq_len: int = 8):
    """Random parameters (for tests and shape checks)."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return UMT5Encoder(config).init(rng, ids, jnp.ones_like(ids))["params"]
