"""The Wan2.2 diffusion transformer (TI2V-5B, A14B experts) as a Flax linen module.

Channels-last: `WanDiT(config).apply({'params': p}, latents [B, F, H, W, C], timesteps,
context [B, Lt, text_dim], positions=None, attention_mask=None) -> velocity [B, F, H, W, out]`.

Timesteps are per sample [B] or per latent frame [B, F]. Modulation is computed per frame and
broadcast over a frame's tokens, never materialised per token (that costs 2 GB at 720p).

Parameter names follow the original Wan release (`blocks/self_attn/q`, `norm3`, `ffn_0`, ...);
block parameters are stacked on a leading layer axis in every mode, so checkpoints do not
depend on `scan_layers` (which only decides whether XLA sees a loop or an unrolled body).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from swifti2v_jax.models import layer_streaming, layers, partitioning, quant

# Rematerialisation of each DiT block in training (configs/stage2.py `model_overrides.remat`):
#   none       save every activation (small models only);
#   full       save only the block input (the fp32 residual stream, one per layer) and recompute
#              the block in the backward: the least memory;
#   attention  also save each block's self-attention output (bf16, as computed, so exact):
#              the backward skips recomputing the attention forward, +dim x 2 bytes per token
#              per layer;
#   dots       save every matmul output without batch dims (XLA's default trade-off).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "attention": jax.checkpoint_policies.save_only_these_names("self_attention_out"),
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int
    out_dim: int
    model_type: str = "ti2v"
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    rope_theta: float = 10000.0
    compute_dtype: str = "bfloat16"
    param_dtype: str = "float32"
    attention_backend: str = "chunked"
    scan_layers: bool = True
    remat: str = "none"
    # Layer streaming (models/layer_streaming.py): the stacked block weights stay in host memory and
    # each layer is copied to the device inside the layer scan (a memory option for sampling).
    stream_layers: bool = False

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.attention_backend not in layers.ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {layers.ATTENTION_BACKENDS}, "
                f"got {self.attention_backend!r}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_dict(cls, fields: Mapping) -> DiTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - names
        if unknown:
            raise ValueError(f"unknown DiT config fields {sorted(unknown)}")
        return cls(**dict(fields))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        return out

    def replace(self, **changes) -> DiTConfig:
        return dataclasses.replace(self, **changes)


def sinusoidal_embedding(timesteps: jax.Array, dim: int) -> jax.Array:
    """[...] -> [..., dim] with [cos, sin] halves and exponents i/(dim/2), in fp32."""
    half = dim // 2
    freqs = np.power(10000.0, -np.arange(half, dtype=np.float64) / half).astype(np.float32)
    angles = timesteps.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class WanAttention(nn.Module):
    """q/k/v/o projections with qk RMSNorm across all heads; RoPE only for self-attention."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x, source, rope=None, frame_mask=None, tokens_per_frame=1):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.compute_dtype), jnp.dtype(cfg.param_dtype)
        dense = lambda name: quant.Dense(cfg.dim, dtype=dtype, param_dtype=pdtype, name=name)
        q = layers.RMSNorm(cfg.eps, name="norm_q")(dense("q")(x))
        k = layers.RMSNorm(cfg.eps, name="norm_k")(dense("k")(source))
        v = dense("v")(source)
        split = lambda t: t.reshape(t.shape[:-1] + (cfg.num_heads, cfg.head_dim))
        q, k, v = split(q), split(k), split(v)
        if rope is not None:
            cos, sin = rope
            q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
        out = layers.attention(
            q, k, v, frame_mask=frame_mask, tokens_per_frame=tokens_per_frame,
            backend=cfg.attention_backend,
        )  # fmt: skip
        if rope is not None:
            out = checkpoint_name(out, "self_attention_out")
        return dense("o")(out.reshape(out.shape[:-2] + (cfg.dim,)))


class WanBlock(nn.Module):
    """One DiT block. x: [B, F, S, dim] fp32 residual stream; e0: [B, F, 6, dim] per frame."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x, e0, context, rope, frame_mask):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.compute_dtype), jnp.dtype(cfg.param_dtype)
        batch, frames, tokens, dim = x.shape
        table = self.param(
            "modulation", nn.initializers.normal(dim**-0.5), (1, 6, dim), jnp.float32
        )
        mod = (table[None] + e0)[:, :, :, None, :]  # [B, F, 6, 1, dim]
        shift_msa, scale_msa, gate_msa = mod[:, :, 0], mod[:, :, 1], mod[:, :, 2]
        shift_ffn, scale_ffn, gate_ffn = mod[:, :, 3], mod[:, :, 4], mod[:, :, 5]
        flat = lambda t: t.reshape(batch, frames * tokens, dim)
        unflat = lambda t: t.reshape(batch, frames, tokens, dim).astype(jnp.float32)

        h = layers.layer_norm(x, cfg.eps) * (1 + scale_msa) + shift_msa
        attn = WanAttention(cfg, name="self_attn")
        h = flat(h.astype(dtype))
        attended = attn(h, h, rope=rope, frame_mask=frame_mask, tokens_per_frame=tokens)
        x = x + unflat(attended) * gate_msa

        h = flat(layers.AffineLayerNorm(cfg.eps, name="norm3")(x).astype(dtype))
        x = x + unflat(WanAttention(cfg, name="cross_attn")(h, context))

        h = layers.layer_norm(x, cfg.eps) * (1 + scale_ffn) + shift_ffn
        h = quant.Dense(cfg.ffn_dim, dtype=dtype, param_dtype=pdtype, name="ffn_0")(h.astype(dtype))
        h = quant.Dense(dim, dtype=dtype, param_dtype=pdtype, name="ffn_2")(
            nn.gelu(h, approximate=True)
        )
        x = x + h.astype(jnp.float32) * gate_ffn
        return x


class WanDiT(nn.Module):
    config: DiTConfig

    @nn.compact
    def __call__(self, latents, timesteps, context, positions=None, attention_mask=None):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.compute_dtype), jnp.dtype(cfg.param_dtype)
        batch, frames, height, width, channels = latents.shape
        pt, ph, pw = cfg.patch_size
        if channels != cfg.in_dim:
            raise ValueError(f"latents have {channels} channels, the model expects {cfg.in_dim}")
        if frames % pt or height % ph or width % pw:
            raise ValueError(
                f"latent grid {(frames, height, width)} is not divisible by the patch "
                f"{cfg.patch_size}"
            )
        grid = (frames // pt, height // ph, width // pw)
        tokens_per_frame = grid[1] * grid[2]

        # Patch embedding: a (pt, ph, pw) conv with stride = kernel, written as one matmul.
        patches = latents.reshape(batch, grid[0], pt, grid[1], ph, grid[2], pw, channels)
        patches = patches.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(
            batch, grid[0], tokens_per_frame, pt * ph * pw * channels
        )
        kernel = self.param(
            "patch_embedding_kernel",
            nn.initializers.lecun_normal(),
            (pt, ph, pw, channels, cfg.dim),
            pdtype,
        )
        bias = self.param("patch_embedding_bias", nn.initializers.zeros, (cfg.dim,), pdtype)
        x = jnp.einsum(
            "bfsk,kd->bfsd", patches.astype(dtype), kernel.reshape(-1, cfg.dim).astype(dtype)
        )
        x = (x + bias.astype(dtype)).astype(jnp.float32)

        # Time: per-frame sinusoid -> MLP (e, used by the head) -> projection (e0, by blocks).
        timesteps = jnp.asarray(timesteps)
        if timesteps.ndim == 1:
            timesteps = jnp.broadcast_to(timesteps[:, None], (batch, grid[0]))
        elif timesteps.shape == (batch, frames):
            timesteps = timesteps[:, ::pt]
        else:
            raise ValueError(f"timesteps must be [B] or [B, F], got shape {timesteps.shape}")
        f32 = dict(dtype=jnp.float32, param_dtype=jnp.float32)
        e = nn.Dense(cfg.dim, name="time_embedding_0", **f32)(
            sinusoidal_embedding(timesteps, cfg.freq_dim)
        )
        e = nn.Dense(cfg.dim, name="time_embedding_2", **f32)(nn.silu(e))
        e0 = nn.Dense(6 * cfg.dim, name="time_projection", **f32)(nn.silu(e))
        e0 = e0.reshape(batch, grid[0], 6, cfg.dim)

        text = nn.Dense(cfg.dim, dtype=dtype, param_dtype=pdtype, name="text_embedding_0")(
            context.astype(dtype)
        )
        text = nn.Dense(cfg.dim, dtype=dtype, param_dtype=pdtype, name="text_embedding_2")(
            nn.gelu(text, approximate=True)
        )

        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(grid[0]), (batch, grid[0]))
        elif positions.shape != (batch, frames):
            raise ValueError(f"positions must be [B, F] = {(batch, frames)}, got {positions.shape}")
        else:
            positions = positions[:, ::pt]
        angles = layers.rope_angles(positions, grid[1:], cfg.head_dim, cfg.rope_theta)
        rope = (jnp.cos(angles), jnp.sin(angles))

        frame_mask = None
        if attention_mask is not None:
            if attention_mask.shape != (batch, frames, frames):
                raise ValueError(
                    f"attention_mask must be [B, F, F] = {(batch, frames, frames)}, "
                    f"got {attention_mask.shape}"
                )
            frame_mask = attention_mask[:, ::pt, ::pt].astype(bool)

        def init_blocks(rng):  # the same stacked layout nn.scan produced
            keys = jax.random.split(rng, cfg.num_layers)
            one = lambda key: WanBlock(cfg, parent=None).init(key, x, e0, text, rope, frame_mask)
            return jax.vmap(one)(keys)["params"]

        # A quantized stack (models/quant.py) has other leaves than the initializer makes, so an
        # existing stack is read as is (flax would compare it with the initializer's shapes).
        if self.has_variable("params", "blocks"):
            stacked = self.get_variable("params", "blocks")
        else:
            stacked = self.param("blocks", init_blocks)
        x = apply_blocks(cfg, stacked, partitioning.constrain_batch(x), e0, text, rope, frame_mask)

        # Head: modulated LayerNorm (shift, scale from the time MLP output e) and a linear, fp32.
        head_table = self.param(
            "head_modulation", nn.initializers.normal(cfg.dim**-0.5), (1, 2, cfg.dim), jnp.float32
        )
        shift_scale = head_table[None] + e[:, :, None, :]  # [B, F, 2, dim]
        shift, scale = shift_scale[:, :, 0, None], shift_scale[:, :, 1, None]
        h = layers.layer_norm(x, cfg.eps) * (1 + scale) + shift
        out = nn.Dense(pt * ph * pw * cfg.out_dim, name="head", **f32)(h)

        # Unpatchify: each token's vector is (pt, ph, pw, c) with the channel fastest.
        out = out.reshape(batch, grid[0], grid[1], grid[2], pt, ph, pw, cfg.out_dim)
        out = out.transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return out.reshape(batch, frames, height, width, cfg.out_dim)


def apply_blocks(cfg: DiTConfig, stacked, x, e0, text, rope, frame_mask):
    """The layer stack: one WanBlock applied to stacked parameters by `lax.scan`.

    The parameters live under 'blocks' with a leading layer axis. Each iteration casts its
    layer's matmul kernels to the compute dtype before use, so under FSDP the per-layer
    all-gather inside the loop moves bf16, and autodiff's transpose reduce-scatters that
    layer's gradient inside the backward loop: per-chip memory never holds the whole
    gathered stack (docs/sharding.md). Quantized kernels (`qkernel`, models/quant.py) stay
    in their storage dtype until their matmul.
    """
    dtype = jnp.dtype(cfg.compute_dtype)

    def body(h, layer):
        h = partitioning.constrain_batch(h)
        if cfg.stream_layers:  # this layer only: host -> device, inside the loop
            layer = layer_streaming.to_device(layer)
        layer = jax.tree_util.tree_map_with_path(
            lambda path, p: p.astype(dtype) if path[-1].key == "kernel" else p, layer
        )
        out = WanBlock(cfg, parent=None).apply({"params": layer}, h, e0, text, rope, frame_mask)
        return out, None

    if cfg.remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    if cfg.scan_layers:
        return jax.lax.scan(body, x, stacked)[0]
    for i in range(cfg.num_layers):
        x, _ = body(x, jax.tree.map(lambda p, i=i: p[i], stacked))
    return x


def init_params(config: DiTConfig, rng, latent_shape=(1, 1, 2, 2), text_len: int = 8):
    """Random parameters for `config` (parameter shapes do not depend on the dummy input)."""
    frames, height, width = latent_shape[1:] if len(latent_shape) == 4 else latent_shape
    pt, ph, pw = config.patch_size
    latents = jnp.zeros((1, frames * pt, height * ph, width * pw, config.in_dim))
    context = jnp.zeros((1, text_len, config.text_dim))
    return WanDiT(config).init(rng, latents, jnp.zeros((1,)), context)["params"]


def abstract_params(config: DiTConfig):
    """Parameter ShapeDtypeStructs without allocating anything (for lowering full-size models)."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
