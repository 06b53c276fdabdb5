"""The Wan VAE's Flax modules (encoder and decoder stages, `WanVAE`) and its parameter init.

`WanVAE` methods run one temporal chunk (or one segment of the stages of a chunk) with the
`cache` collection carried between calls; vae_chunks.py turns them into compiled programs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

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
from swifti2v_jax.models.vae_config import DTYPES, VAEConfig, as_config, spatial_factor

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
