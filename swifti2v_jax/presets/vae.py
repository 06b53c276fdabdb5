"""Wan VAE presets (docs/design.md, "Models") and demo / tiny test variants.

Each preset is an ml_collections ConfigDict whose fields are those of
`swifti2v_jax.models.vae.VAEConfig`; `get(name)` picks one, `config(name)` builds the dataclass.
"""

from __future__ import annotations

import ml_collections

from swifti2v_jax import config_fields
from swifti2v_jax.models import vae
from swifti2v_jax.presets import lookup


def _make(variant, base_dim, dec_dim, z_dim, num_res_blocks, patch_size, mean, std, **extra):
    fields = dict(dim_mult=[1, 2, 4, 4], temporal_downsample=[False, True, True]) | extra
    sizes = dict(base_dim=base_dim, dec_dim=dec_dim, z_dim=z_dim, num_res_blocks=num_res_blocks)
    normalisation = dict(latents_mean=list(mean), latents_std=list(std))
    return ml_collections.ConfigDict(
        # the original runs the VAE in fp32
        dict(variant=variant, patch_size=patch_size, dtype="float32", **sizes, **normalisation)
        | fields
    )


_WAN22 = (vae.WAN22_LATENTS_MEAN, vae.WAN22_LATENTS_STD)
_WAN21 = (vae.WAN21_LATENTS_MEAN, vae.WAN21_LATENTS_STD)


def wan22():
    """Wan2.2 VAE (TI2V-5B): z=48, 2x2 patchify, 4x16x16 compression, 704.7 M parameters."""
    return _make("wan22", 160, 256, 48, 2, 2, *_WAN22)


def wan21():
    """Wan2.1 VAE (used by the A14B models): z=16, 4x8x8 compression, 126.9 M parameters."""
    return _make("wan21", 96, 96, 16, 2, 1, *_WAN21)


def tiny_wan22():
    """Wan2.2 structure (residual stages, patch 2, z=48) with tiny widths, for tests."""
    return _make("wan22", 16, 8, 48, 1, 2, *_WAN22)


def tiny_wan21():
    """Wan2.1 structure (z=16, no patchify) with tiny widths, for tests."""
    return _make("wan21", 8, 8, 16, 1, 1, *_WAN21)


def demo():
    """The demo VAE's architecture (configs/demo/vae.py trains it): Wan2.2 blocks, a 4x4
    patchify straight into a z=12 latent grid (no down stages, no temporal downsampling),
    identity normalisation until training measures the latent statistics."""
    return _make(
        "wan22", 48, 48, 12, 1, 4, [0.0] * 12, [1.0] * 12, dim_mult=[1], temporal_downsample=[]
    )


PRESETS = {preset.__name__: preset for preset in (wan22, wan21, tiny_wan22, tiny_wan21, demo)}
DEFAULT = "wan22"


def get(name: str | None = None) -> ml_collections.ConfigDict:
    return lookup(PRESETS, name, "VAE", DEFAULT)


def config(name: str | None = None) -> vae.VAEConfig:
    return config_fields.from_fields(vae.VAEConfig, get(name), "VAE")
