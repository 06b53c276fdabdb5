"""Wan2.2 (z=48, 4x16x16) and Wan2.1 (z=16, 4x8x8) causal 3D VAEs (reference/wan22.md section 2).

Video is `[B, F, H, W, 3]` in [-1, 1] with F = 4k + 1; latents are normalised,
`(mu - latents_mean) / latents_std`, `[B, (F - 1) / 4 + 1, H / s, W / s, z]`.

Everything runs chunk by chunk with an explicit cache pytree (the flax `cache` collection):
encoding takes pixel frames [0], [1..4], [5..8], ... and decoding one latent frame at a time,
exactly like the reference implementation. Chunk 0 is its own program (it creates the cache,
whose shapes never change afterwards); the remaining chunks are a `lax.scan` over one compiled
step, writing into a preallocated output, so working memory does not grow with frame count.

Public entry points (params = the plain parameter tree, config = `VAEConfig` or a mapping):
    encode(params, config, video) -> latents
    decode(params, config, latents, tile_size=None, tile_overlap=2) -> video
    encode_chunk / decode_chunk (one step with a carried cache), StreamingEncoder,
    StreamingDecoder (feed any grouping of latent frames, get the same pixels as `decode`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from swifti2v_jax.models.vae_blocks import (
    CausalConv3d,
    ChannelRMSNorm,
    Downsample,
    MidBlock,
    ResidualBlock,
    Upsample,
    avg_down,
    dup_up,
    patchify,
    unpatchify,
)

# Latent normalisation constants (official vae2_2.py / vae2_1.py; wan22.md 2.5 and 2.8).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

VARIANTS = ("wan22", "wan21")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture of a Wan VAE. Defaults are the Wan2.2 VAE; see configs/vae.py for presets.

    wan22: residual stages with AvgDown3D/DupUp3D shortcuts, upsample convs keep channels.
    wan21: plain stages, upsample convs halve channels. The decoder's stage dims are
    dec_dim * reversed(dim_mult) (dec_dim = base_dim in the original Wan2.1 VAE).
    """

    variant: str = "wan22"
    base_dim: int = 160
    dec_dim: int = 256
    z_dim: int = 48
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    patch_size: int = 2
    latents_mean: tuple[float, ...] = WAN22_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN22_LATENTS_STD
    dtype: str = "float32"

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        set_("dim_mult", tuple(int(m) for m in self.dim_mult))
        set_("temporal_downsample", tuple(bool(t) for t in self.temporal_downsample))
        set_("latents_mean", tuple(float(m) for m in self.latents_mean))
        set_("latents_std", tuple(float(s) for s in self.latents_std))
        if self.variant not in VARIANTS:
            raise ValueError(f"VAE variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"VAE dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample needs {len(self.dim_mult) - 1} entries (one per "
                f"downsampling stage), got {self.temporal_downsample}"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(
                f"latents_mean/latents_std need z_dim={self.z_dim} entries, got "
                f"{len(self.latents_mean)}/{len(self.latents_std)}"
            )
        if min(self.latents_std) <= 0:
            raise ValueError("latents_std must be positive")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")

    @property
    def in_channels(self) -> int:
        return 3 * self.patch_size**2

    @property
    def spatial_factor(self) -> int:
        return spatial_factor(self)

    @property
    def temporal_factor(self) -> int:
        return temporal_factor(self)

    @classmethod
    def from_dict(cls, fields: Mapping) -> VAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = dict(fields)
        unknown = set(fields) - names
        if unknown:
            raise ValueError(f"unknown VAE config fields {sorted(unknown)}")
        return cls(**fields)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
            out[key] = list(out[key])
        return out

    def replace(self, **changes) -> VAEConfig:
        return dataclasses.replace(self, **changes)


def as_config(config) -> VAEConfig:
    """A VAEConfig from a VAEConfig, a dict or an ml_collections ConfigDict."""
    if isinstance(config, VAEConfig):
        return config
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return VAEConfig.from_dict(config)
    raise TypeError(f"expected a VAEConfig or a mapping, got {type(config).__name__}")


def spatial_factor(config) -> int:
    """Pixels per latent pixel along H and W (16 for Wan2.2, 8 for Wan2.1)."""
    config = as_config(config)
    return config.patch_size * 2 ** (len(config.dim_mult) - 1)


def temporal_factor(config) -> int:
    """Pixel frames per latent frame after the first (4 for both VAEs)."""
    return 2 ** sum(as_config(config).temporal_downsample)


def num_latent_frames(config, num_frames: int) -> int:
    return (num_frames - 1) // temporal_factor(config) + 1


def num_pixel_frames(config, num_latent: int) -> int:
    return (num_latent - 1) * temporal_factor(config) + 1


# ---------------------------------------------------------------------------------------------
# Modules


class EncoderStage(nn.Module):
    """Residual blocks, then a (2d or 3d) downsample; Wan2.2 adds the AvgDown3D shortcut."""

    features: int
    num_blocks: int
    down: bool
    temporal: bool
    residual: bool

    @nn.compact
    def __call__(self, x, first: bool):
        x_in = x
        for j in range(self.num_blocks):
            x = ResidualBlock(self.features, name=f"resnets_{j}")(x)
        if self.down:
            x = Downsample(self.temporal, name="downsampler")(x, first)
        if self.residual:
            factor_t = 2 if self.temporal else 1
            factor_s = 2 if self.down else 1
            x = x + avg_down(x_in, self.features, factor_t, factor_s)
        return x


class DecoderStage(nn.Module):
    """Residual blocks, then a (2d or 3d) upsample; Wan2.2 adds the DupUp3D shortcut."""

    features: int
    num_blocks: int
    up: bool
    temporal: bool
    residual: bool
    up_features: int

    @nn.compact
    def __call__(self, x, first: bool):
        x_in = x
        for j in range(self.num_blocks):
            x = ResidualBlock(self.features, name=f"resnets_{j}")(x)
        if self.up:
            x = Upsample(self.temporal, self.up_features, name="upsampler")(x, first)
            if self.residual:
                factor_t = 2 if self.temporal else 1
                x = x + dup_up(x_in, self.features, factor_t, 2, first)
        return x


def _encoder_front_stages(config: VAEConfig) -> int:
    """Encoder stages before the first temporal downsample: they work frame by frame."""
    return next((i for i, t in enumerate(config.temporal_downsample) if t), 0)


def decoder_segments(config: VAEConfig) -> tuple[tuple[int, ...], ...]:
    """Decoder stages grouped so that every group but the last ends with a time-doubling stage.

    Each group runs on ONE input frame at a time (a scan over the frames the previous group
    produced), which keeps full-resolution activations to one frame; exact thanks to the cache.
    """
    temporal_up = tuple(reversed(config.temporal_downsample))
    stages = len(config.dim_mult)
    segments = [[]]
    for i in range(stages):
        segments[-1].append(i)
        if i != stages - 1 and temporal_up[i]:
            segments.append([])
    return tuple(tuple(segment) for segment in segments)


class Encoder(nn.Module):
    config: VAEConfig

    def setup(self):
        cfg = self.config
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        stages = len(cfg.dim_mult)
        self.conv_in = CausalConv3d(dims[0])
        self.down_blocks = [
            EncoderStage(
                features=dims[i + 1],
                num_blocks=cfg.num_res_blocks,
                down=i != stages - 1,
                temporal=i != stages - 1 and cfg.temporal_downsample[i],
                residual=cfg.variant == "wan22",
            )
            for i in range(stages)
        ]
        self.mid_block = MidBlock()
        self.norm_out = ChannelRMSNorm()
        self.conv_out = CausalConv3d(2 * cfg.z_dim)

    def front(self, x, first: bool):
        """conv_in and the spatial-only stages (frame by frame is exact here)."""
        x = self.conv_in(x)
        for stage in self.down_blocks[: _encoder_front_stages(self.config)]:
            x = stage(x, first)
        return x

    def back(self, x, first: bool):
        for stage in self.down_blocks[_encoder_front_stages(self.config) :]:
            x = stage(x, first)
        x = self.mid_block(x)
        return self.conv_out(nn.silu(self.norm_out(x)))

    def __call__(self, x, first: bool):
        return self.back(self.front(x, first), first)


class Decoder(nn.Module):
    config: VAEConfig

    def setup(self):
        cfg = self.config
        dims = [cfg.dec_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_up = tuple(reversed(cfg.temporal_downsample))
        stages = len(cfg.dim_mult)
        self.conv_in = CausalConv3d(dims[0])
        self.mid_block = MidBlock()
        self.up_blocks = [
            DecoderStage(
                features=dims[i + 1],
                num_blocks=cfg.num_res_blocks + 1,
                up=i != stages - 1,
                temporal=i != stages - 1 and temporal_up[i],
                residual=cfg.variant == "wan22",
                up_features=dims[i + 1] if cfg.variant == "wan22" else dims[i + 1] // 2,
            )
            for i in range(stages)
        ]
        self.norm_out = ChannelRMSNorm()
        self.conv_out = CausalConv3d(cfg.in_channels)

    def segment(self, x, first: bool, index: int):
        """One group of `decoder_segments` (the first also runs conv_in and the middle block,
        the last the output head)."""
        segments = decoder_segments(self.config)
        if index == 0:
            x = self.mid_block(self.conv_in(x))
        for i in segments[index]:
            x = self.up_blocks[i](x, first)
        if index == len(segments) - 1:
            x = self.conv_out(nn.silu(self.norm_out(x)))
        return x

    def __call__(self, x, first: bool):
        for index in range(len(decoder_segments(self.config))):
            x = self.segment(x, first, index)
        return x


class WanVAE(nn.Module):
    """The whole VAE, applied one temporal chunk at a time (`first` marks chunk 0).

    `encode_segment` / `decode_segment` expose the pieces that the chunk functions below run
    frame by frame; `encode_chunk` / `decode_chunk` run a chunk in one piece (same result).
    """

    config: VAEConfig

    def setup(self):
        z = self.config.z_dim
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.quant_conv = CausalConv3d(2 * z, (1, 1, 1))
        self.post_quant_conv = CausalConv3d(z, (1, 1, 1))

    def encode_segment(self, x, first: bool, index: int):
        """index 0: pixels [B, t, H, W, 3] -> front features; 1: -> normalised latent means."""
        cfg = self.config
        if index == 0:
            x = patchify(x.astype(DTYPES[cfg.dtype]), cfg.patch_size)
            return self.encoder.front(x, first)
        moments = self.quant_conv(self.encoder.back(x, first))
        mean = moments[..., : cfg.z_dim].astype(jnp.float32)
        return (mean - jnp.asarray(cfg.latents_mean)) / jnp.asarray(cfg.latents_std)

    def decode_segment(self, x, first: bool, index: int):
        """index 0 takes normalised latents; the last returns pixels in [-1, 1] (fp32)."""
        cfg = self.config
        if index == 0:
            mean = x.astype(jnp.float32) * jnp.asarray(cfg.latents_std)
            mean = mean + jnp.asarray(cfg.latents_mean)
            x = self.post_quant_conv(mean.astype(DTYPES[cfg.dtype]))
        x = self.decoder.segment(x, first, index)
        if index == len(decoder_segments(cfg)) - 1:
            x = jnp.clip(unpatchify(x.astype(jnp.float32), cfg.patch_size), -1.0, 1.0)
        return x

    def encode_chunk(self, video, first: bool):
        """[B, t, H, W, 3] pixels -> [B, t', H/s, W/s, z] normalised latent means."""
        return self.encode_segment(self.encode_segment(video, first, 0), first, 1)

    def decode_chunk(self, latents, first: bool):
        """Normalised latents [B, t, h, w, z] -> pixels in [-1, 1] (fp32)."""
        for index in range(len(decoder_segments(self.config))):
            latents = self.decode_segment(latents, first, index)
        return latents

    def __call__(self, video):
        return self.decode_chunk(self.encode_chunk(video, True), True)


def init_params(config, rng):
    """Random parameters (shapes do not depend on the input size)."""
    config = as_config(config)
    s = spatial_factor(config)
    video = jnp.zeros((1, 1, s, s, 3), jnp.float32)
    return WanVAE(config).init(rng, video)["params"]


def abstract_params(config):
    """Parameter ShapeDtypeStructs without allocating (for lowering the full-size model)."""
    config = as_config(config)
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


# ---------------------------------------------------------------------------------------------
# Chunk steps


def _apply(params, config: VAEConfig, cache, x, first: bool, method: str, *args):
    variables = {"params": params}
    if cache is not None:
        variables["cache"] = cache
    model = WanVAE(config)
    method = getattr(WanVAE, method)
    y, state = model.apply(variables, x, first, *args, method=method, mutable=["cache"])
    return y, state["cache"]


def _scan_frames(step, cache, x):
    """Runs `step(cache, frame) -> (y, cache)` on each frame of x in turn; outputs concatenated
    along time into a preallocated buffer (no stacked copy)."""
    frames = x.shape[1]
    if frames == 1:
        return step(cache, x)
    y = jax.eval_shape(lambda c, f: step(c, f)[0], cache, x[:, :1])
    per_frame = y.shape[1]
    out = jnp.zeros((y.shape[0], frames * per_frame, *y.shape[2:]), y.dtype)

    def body(carry, i):
        cache, out = carry
        y, cache = step(cache, lax.dynamic_slice_in_dim(x, i, 1, axis=1))
        return (cache, lax.dynamic_update_slice_in_dim(out, y, i * per_frame, axis=1)), None

    (cache, out), _ = lax.scan(body, (cache, out), jnp.arange(frames))
    return out, cache


def _encode_chunk_fn(params, config: VAEConfig, cache, frames, first: bool):
    """One encoder chunk; the full-resolution front stages go frame by frame."""

    def front(cache, frame):
        return _apply(params, config, cache, frame, first, "encode_segment", 0)

    features, cache = _scan_frames(front, cache, frames)
    return _apply(params, config, cache, features, first, "encode_segment", 1)


def _decode_chunk_fn(params, config: VAEConfig, cache, latents, first: bool):
    """One decoder chunk; after each time-doubling stage the rest runs one frame at a time."""
    last = len(decoder_segments(config)) - 1

    def run(index, cache, x):
        y, cache = _apply(params, config, cache, x, first, "decode_segment", index)
        if index == last:
            return y, cache
        return _scan_frames(functools.partial(run, index + 1), cache, y)

    return run(0, cache, latents)


@functools.partial(jax.jit, static_argnames=("config", "first"), donate_argnames=("cache",))
def _encode_step(params, config, cache, frames, first):
    return _encode_chunk_fn(params, config, cache, frames, first)


@functools.partial(jax.jit, static_argnames=("config", "first"), donate_argnames=("cache",))
def _decode_step(params, config, cache, latents, first):
    return _decode_chunk_fn(params, config, cache, latents, first)


def encode_chunk(params, config, frames, cache=None):
    """One encoder step: (latents, new cache). cache=None starts a video (frames = [frame 0]);
    later calls take `temporal_factor` frames each and produce one latent frame. The cache
    passed in is donated (do not reuse it)."""
    config = as_config(config)
    expected = 1 if cache is None else temporal_factor(config)
    _check_video(config, frames, what="frames")
    if frames.shape[1] != expected:
        raise ValueError(
            f"this encoder chunk takes {expected} frame(s) ({'first' if cache is None else 'later'}"
            f" chunk), got {frames.shape[1]}"
        )
    return _encode_step(params, config, cache, jnp.asarray(frames), cache is None)


def decode_chunk(params, config, latents, cache=None):
    """One decoder step on ONE latent frame: (pixels, new cache). cache=None starts a video
    (1 pixel frame out); later steps give `temporal_factor` frames. The cache is donated."""
    config = as_config(config)
    _check_latents(config, latents)
    if latents.shape[1] != 1:
        raise ValueError(f"decode_chunk takes one latent frame, got {latents.shape[1]}")
    return _decode_step(params, config, cache, jnp.asarray(latents), cache is None)


# ---------------------------------------------------------------------------------------------
# Input checks (before any expensive work)


def _check_video(config: VAEConfig, video, what="video"):
    if getattr(video, "ndim", None) != 5:
        raise ValueError(
            f"{what} must be [B, F, H, W, 3], got shape {getattr(video, 'shape', None)}"
        )
    b, f, h, w, c = video.shape
    if c != 3:
        raise ValueError(f"{what} must have 3 (RGB) channels last, got {c} in shape {video.shape}")
    s = spatial_factor(config)
    if h % s or w % s or h == 0 or w == 0:
        raise ValueError(
            f"{what} height and width must be positive multiples of {s} for the {config.variant} "
            f"VAE, got {h}x{w}; resize or crop first"
        )
    if b == 0 or f == 0:
        raise ValueError(f"{what} has an empty batch or no frames: shape {video.shape}")


def _check_frame_count(config: VAEConfig, frames: int):
    t = temporal_factor(config)
    if frames % t != 1 % t:
        raise ValueError(
            f"the VAE needs {t}k+1 frames (1, {t + 1}, {2 * t + 1}, ...), got {frames}; "
            f"trim to {((frames - 1) // t) * t + 1}"
        )


def _check_latents(config: VAEConfig, latents):
    if getattr(latents, "ndim", None) != 5:
        raise ValueError(
            f"latents must be [B, T, h, w, {config.z_dim}], "
            f"got shape {getattr(latents, 'shape', None)}"
        )
    if latents.shape[-1] != config.z_dim:
        raise ValueError(
            f"latents must have z_dim={config.z_dim} channels last for the {config.variant} VAE, "
            f"got {latents.shape[-1]} in shape {latents.shape}"
        )
    if min(latents.shape[:4]) == 0:
        raise ValueError(f"latents are empty: shape {latents.shape}")


# ---------------------------------------------------------------------------------------------
# Whole-video encode / decode: chunk 0, then a scan over the remaining chunks.


def _encode_rest(params, config: VAEConfig, cache, first, rest):
    """Latent frame 0 and the cache after chunk 0, plus pixel frames 1.. -> (all latent frames,
    final cache). Returning the cache lets the donated input cache be updated in place."""
    t = temporal_factor(config)
    chunks = rest.shape[1] // t
    b, _, h, w, z = first.shape
    out = jnp.zeros((b, 1 + chunks, h, w, z), first.dtype)
    out = lax.dynamic_update_slice_in_dim(out, first, 0, axis=1)

    def step(carry, i):
        cache, out = carry
        frames = lax.dynamic_slice_in_dim(rest, i * t, t, axis=1)
        latent, cache = _encode_chunk_fn(params, config, cache, frames, False)
        return (cache, lax.dynamic_update_slice_in_dim(out, latent, 1 + i, axis=1)), None

    (cache, out), _ = lax.scan(step, (cache, out), jnp.arange(chunks))
    return out, cache


def _decode_rest(params, config: VAEConfig, cache, first, rest):
    """Pixel frame 0 and the cache after latent frame 0, plus latent frames 1.. -> (all pixels,
    final cache)."""
    t = temporal_factor(config)
    steps = rest.shape[1]
    b, _, h, w, c = first.shape
    out = jnp.zeros((b, 1 + steps * t, h, w, c), first.dtype)
    out = lax.dynamic_update_slice_in_dim(out, first, 0, axis=1)

    def step(carry, i):
        cache, out = carry
        latent = lax.dynamic_slice_in_dim(rest, i, 1, axis=1)
        pixels, cache = _decode_chunk_fn(params, config, cache, latent, False)
        return (cache, lax.dynamic_update_slice_in_dim(out, pixels, 1 + i * t, axis=1)), None

    (cache, out), _ = lax.scan(step, (cache, out), jnp.arange(steps))
    return out, cache


def _decode_frames(params, config: VAEConfig, latents):
    """Whole-video decode inside one traced function (used per tile by the tiled decode)."""
    first, cache = _decode_chunk_fn(params, config, None, latents[:, :1], True)
    if latents.shape[1] == 1:
        return first
    return _decode_rest(params, config, cache, first, latents[:, 1:])[0]


def encode_frames(params, config: VAEConfig, video):
    """Whole-video encode for training: each temporal chunk in one piece, chunks unrolled.

    Same result as `encode`; no scans, so its gradient keeps no per-step copies of an output
    buffer (meant for short training clips: the program grows with the frame count)."""
    t = temporal_factor(config)
    latents, cache = _apply(params, config, None, video[:, :1], True, "encode_chunk")
    outputs = [latents]
    for start in range(1, video.shape[1], t):
        latents, cache = _apply(
            params, config, cache, video[:, start : start + t], False, "encode_chunk"
        )
        outputs.append(latents)
    return jnp.concatenate(outputs, axis=1)


def decode_frames(params, config: VAEConfig, latents):
    """Whole-video decode for training (see `encode_frames`)."""
    pixels, cache = _apply(params, config, None, latents[:, :1], True, "decode_chunk")
    outputs = [pixels]
    for index in range(1, latents.shape[1]):
        pixels, cache = _apply(
            params, config, cache, latents[:, index : index + 1], False, "decode_chunk"
        )
        outputs.append(pixels)
    return jnp.concatenate(outputs, axis=1)


# Chunk 0 is its own program (compiled once per frame size, it creates the cache); the scan
# over the remaining chunks is a second one (compiled per chunk count), which consumes the cache.
_encode_rest_program = jax.jit(_encode_rest, static_argnums=1, donate_argnums=2)
_decode_rest_program = jax.jit(_decode_rest, static_argnums=1, donate_argnums=2)


def encode(params, config, video):
    """Video [B, F, H, W, 3] in [-1, 1], F = 4k+1 -> normalised latents [B, k+1, H/s, W/s, z]."""
    config = as_config(config)
    _check_video(config, video)
    _check_frame_count(config, video.shape[1])
    video = jnp.asarray(video, jnp.float32)
    first, cache = _encode_step(params, config, None, video[:, :1], True)
    if video.shape[1] == 1:
        return first
    return _encode_rest_program(params, config, cache, first, video[:, 1:])[0]


# ---------------------------------------------------------------------------------------------
# Spatial tiling (decode): overlapping latent tiles, each decoded on its own, blended with
# linear ramps over the overlaps. Seams differ from the untiled decode (less context).


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Static tile layout in latent pixels: equal-sized tiles at the given starts."""

    tile_h: int
    tile_w: int
    starts_h: tuple[int, ...]
    starts_w: tuple[int, ...]

    @property
    def origins(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.starts_h for x in self.starts_w]


def _tile_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    if tile >= length:
        return (0,)
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return tuple(round(i * (length - tile) / (count - 1)) for i in range(count))


def make_tiling(latent_h: int, latent_w: int, tile_size, tile_overlap: int) -> Tiling | None:
    """Tile layout for a latent of latent_h x latent_w; None when one tile covers everything."""
    tile_h, tile_w = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)
    if min(tile_h, tile_w) < 1 or tile_overlap < 0 or tile_overlap >= min(tile_h, tile_w):
        raise ValueError(
            f"need tile_size >= 1 and 0 <= tile_overlap < tile_size (latent pixels), got "
            f"tile_size={tile_size}, tile_overlap={tile_overlap}"
        )
    tile_h, tile_w = min(tile_h, latent_h), min(tile_w, latent_w)
    tiling = Tiling(
        tile_h,
        tile_w,
        _tile_starts(latent_h, tile_h, tile_overlap),
        _tile_starts(latent_w, tile_w, tile_overlap),
    )
    return None if len(tiling.origins) == 1 else tiling


def _ramp_weights(starts, tile: int, scale: int) -> np.ndarray:
    """[n_tiles, tile*scale] weights: linear ramps where a tile overlaps its neighbours."""
    weights = np.ones((len(starts), tile * scale), np.float32)
    for i, start in enumerate(starts):
        if i > 0:
            overlap = (starts[i - 1] + tile - start) * scale
            if overlap > 0:
                weights[i, :overlap] = np.arange(1, overlap + 1) / (overlap + 1)
        if i < len(starts) - 1:
            overlap = (start + tile - starts[i + 1]) * scale
            if overlap > 0:
                weights[i, -overlap:] = np.arange(overlap, 0, -1) / (overlap + 1)
    return weights


def _tile_arrays(tiling: Tiling, scale: int):
    """Per-tile latent origins [n, 2] and pixel weights [n, TH, TW], plus the total weight."""
    wh = _ramp_weights(tiling.starts_h, tiling.tile_h, scale)
    ww = _ramp_weights(tiling.starts_w, tiling.tile_w, scale)
    origins = np.array(tiling.origins, np.int32)
    weights = np.stack(
        [wh[i][:, None] * ww[j][None, :] for i in range(len(wh)) for j in range(len(ww))]
    )
    height = (tiling.starts_h[-1] + tiling.tile_h) * scale
    width = (tiling.starts_w[-1] + tiling.tile_w) * scale
    total = np.zeros((height, width), np.float32)
    for (y, x), weight in zip(origins * scale, weights):
        total[y : y + weight.shape[0], x : x + weight.shape[1]] += weight
    return origins, weights, total


def _latent_tile(latents, origin, tiling: Tiling):
    b, t, _, _, z = latents.shape
    start = (0, 0, origin[0], origin[1], 0)
    return lax.dynamic_slice(latents, start, (b, t, tiling.tile_h, tiling.tile_w, z))


def _place(out, pixels, origin, scale):
    """Adds (already weighted) tile pixels into `out` at the tile's pixel origin."""
    start = (0, 0, origin[0] * scale, origin[1] * scale, 0)
    region = lax.dynamic_slice(out, start, pixels.shape)
    return lax.dynamic_update_slice(out, region + pixels, start)


def _decode_tiled(params, config: VAEConfig, latents, tiling: Tiling):
    """Tile by tile over the whole video: one tile's decoder state in memory at a time."""
    s = spatial_factor(config)
    origins, weights, total = _tile_arrays(tiling, s)
    b, t, h, w, _ = latents.shape
    out = jnp.zeros((b, num_pixel_frames(config, t), h * s, w * s, 3), jnp.float32)

    def one_tile(out, xs):
        origin, weight = xs
        pixels = _decode_frames(params, config, _latent_tile(latents, origin, tiling))
        return _place(out, pixels * weight[None, None, :, :, None], origin, s), None

    out, _ = lax.scan(one_tile, out, (jnp.asarray(origins), jnp.asarray(weights)))
    return out / jnp.asarray(total)[None, None, :, :, None]


_decode_tiled_program = jax.jit(_decode_tiled, static_argnums=(1, 3))


def decode(params, config, latents, *, tile_size=None, tile_overlap: int = 2):
    """Normalised latents [B, T, h, w, z] -> video [B, 4(T-1)+1, h*s, w*s, 3] in [-1, 1].

    tile_size (latent pixels, int or (h, w)) decodes overlapping spatial tiles one after the
    other and blends them over `tile_overlap` latent pixels: less memory, small seam errors.
    """
    config = as_config(config)
    _check_latents(config, latents)
    tiling = None
    if tile_size is not None:
        tiling = make_tiling(latents.shape[2], latents.shape[3], tile_size, tile_overlap)
    latents = jnp.asarray(latents, jnp.float32)
    if tiling is not None:
        return _decode_tiled_program(params, config, latents, tiling)
    first, cache = _decode_step(params, config, None, latents[:, :1], True)
    if latents.shape[1] == 1:
        return first
    return _decode_rest_program(params, config, cache, first, latents[:, 1:])[0]


# ---------------------------------------------------------------------------------------------
# Streaming


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _take_tile(latent, y, x, height, width):
    b, t, _, _, z = latent.shape
    return lax.dynamic_slice(latent, (0, 0, y, x, 0), (b, t, height, width, z))


@jax.jit
def _add_tile(out, pixels, weight, y, x):
    """out += pixels * weight at pixel offset (y, x) (dynamic offsets: one program)."""
    start = (0, 0, y, x, 0)
    region = lax.dynamic_slice(out, start, pixels.shape)
    return lax.dynamic_update_slice(out, region + pixels * weight[None, None, :, :, None], start)


class StreamingDecoder:
    """Decode a latent video pushed in any grouping of frames; same pixels as `decode`.

    `push(latents [B, t, h, w, z])` returns the pixel frames those latent frames complete
    (1 for the very first latent frame, `temporal_factor` for every later one). The decoder
    cache is carried between calls (one compiled step, so memory does not grow with length).

    With `tile_size`, every spatial tile keeps its own cache and runs the same compiled step,
    one tile after the other, blended like `decode(tile_size=...)`: per-step activations shrink
    to one tile's, the caches of all tiles stay. `offload_cache=True` keeps those caches in host
    memory and moves one tile's cache to the device at a time, so the device holds a single
    tile's state (at the cost of host transfers).
    """

    def __init__(
        self, params, config, *, tile_size=None, tile_overlap: int = 2, offload_cache=False
    ):
        if offload_cache and tile_size is None:
            raise ValueError("offload_cache needs tile_size (it moves one tile's cache at a time)")
        self.params = params
        self.config = as_config(config)
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self.offload_cache = offload_cache
        self.reset()

    def reset(self):
        self._cache = None
        self._shape = None
        self._tiling = None
        self.latent_frames = 0

    def push(self, latents) -> jax.Array:
        _check_latents(self.config, latents)
        b, t, h, w, _ = latents.shape
        if self._shape is None:
            self._shape = (b, h, w)
            if self.tile_size is not None:
                self._tiling = make_tiling(h, w, self.tile_size, self.tile_overlap)
        elif (b, h, w) != self._shape:
            raise ValueError(
                f"latents of shape {latents.shape} do not continue the stream of batch/size "
                f"{self._shape}; call reset() to start a new video"
            )
        latents = jnp.asarray(latents)
        outputs = []
        for i in range(t):
            first = self.latent_frames == 0
            frame = latents[:, i : i + 1]
            if self._tiling is None:
                pixels, self._cache = _decode_step(
                    self.params, self.config, self._cache, frame, first
                )
            else:
                pixels = self._decode_tiles(frame, first)
            outputs.append(pixels)
            self.latent_frames += 1
        return jnp.concatenate(outputs, axis=1)

    def _decode_tiles(self, frame, first: bool):
        tiling, s = self._tiling, spatial_factor(self.config)
        _, weights, total = _tile_arrays(tiling, s)
        if first:
            self._cache = [None] * len(tiling.origins)
        b, _, h, w, _ = frame.shape
        out = None
        for k, (y, x) in enumerate(tiling.origins):
            tile = _take_tile(frame, y, x, tiling.tile_h, tiling.tile_w)
            cache = self._cache[k]
            if self.offload_cache and cache is not None:
                cache = jax.device_put(cache)
            pixels, cache = _decode_step(self.params, self.config, cache, tile, first)
            self._cache[k] = jax.device_get(cache) if self.offload_cache else cache
            if out is None:
                out = jnp.zeros((b, pixels.shape[1], h * s, w * s, 3), jnp.float32)
            out = _add_tile(out, pixels, weights[k], y * s, x * s)
        return out / total[None, None, :, :, None]


class StreamingEncoder:
    """Encode a video pushed in any grouping of frames; same latents as `encode`.

    Frames are buffered until they complete a chunk ([frame 0], then groups of
    `temporal_factor`); `push` returns the latent frames completed so far (possibly none).
    `finish()` checks that no frames are left over (the total must be 4k+1).
    """

    def __init__(self, params, config):
        self.params = params
        self.config = as_config(config)
        self.reset()

    def reset(self):
        self._cache = None
        self._pending = None
        self._shape = None
        self.frames_in = 0

    @property
    def pending_frames(self) -> int:
        return 0 if self._pending is None else self._pending.shape[1]

    def push(self, frames) -> jax.Array | None:
        _check_video(self.config, frames, what="frames")
        b, t, h, w, _ = frames.shape
        if self._shape is None:
            self._shape = (b, h, w)
        elif (b, h, w) != self._shape:
            raise ValueError(
                f"frames of shape {frames.shape} do not continue the stream of batch/size "
                f"{self._shape}; call reset() to start a new video"
            )
        frames = jnp.asarray(frames, jnp.float32)
        self._pending = (
            frames if self._pending is None else jnp.concatenate([self._pending, frames], 1)
        )
        self.frames_in += t
        outputs = []
        while True:
            need = 1 if self._cache is None else temporal_factor(self.config)
            if self.pending_frames < need:
                break
            chunk, self._pending = self._pending[:, :need], self._pending[:, need:]
            latent, self._cache = _encode_step(
                self.params, self.config, self._cache, chunk, self._cache is None
            )
            outputs.append(latent)
        return jnp.concatenate(outputs, axis=1) if outputs else None

    def finish(self):
        if self.pending_frames:
            raise ValueError(
                f"{self.pending_frames} frame(s) left over after {self.frames_in} frames: the "
                f"VAE needs {temporal_factor(self.config)}k+1 frames in total"
            )


def cache_bytes(cache) -> int:
    """Size of a cache pytree in bytes (for memory reports)."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache))


__all__: list[Any] = [
    "VAEConfig",
    "WanVAE",
    "StreamingDecoder",
    "StreamingEncoder",
    "abstract_params",
    "as_config",
    "decode",
    "decode_chunk",
    "encode",
    "encode_chunk",
    "init_params",
    "make_tiling",
    "num_latent_frames",
    "num_pixel_frames",
    "spatial_factor",
    "temporal_factor",
]
