"""Wan VAE presets (reference/wan22.md sections 2.1 and 2.8) and tiny test variants.

Each function returns an ml_collections ConfigDict whose fields are those of
`swifti2v_jax.models.vae.VAEConfig` (turn it into one with `vae.as_config(cfg)`);
`get_config('wan22')` picks one by name.
"""

import ml_collections

from swifti2v_jax.models.vae import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    WAN22_LATENTS_MEAN,
    WAN22_LATENTS_STD,
)


def _make(**fields) -> ml_collections.ConfigDict:
    common = dict(
        dim_mult=[1, 2, 4, 4],
        temporal_downsample=[False, True, True],
        dtype="float32",  # the original runs the VAE in fp32
    )
    return ml_collections.ConfigDict({**common, **fields})


def wan22() -> ml_collections.ConfigDict:
    """Wan2.2 VAE (TI2V-5B): z=48, 2x2 patchify, 4x16x16 compression, 704.7 M parameters."""
    return _make(
        variant="wan22",
        base_dim=160,
        dec_dim=256,
        z_dim=48,
        num_res_blocks=2,
        patch_size=2,
        latents_mean=list(WAN22_LATENTS_MEAN),
        latents_std=list(WAN22_LATENTS_STD),
    )


def wan21() -> ml_collections.ConfigDict:
    """Wan2.1 VAE (used by the A14B models): z=16, 4x8x8 compression, 126.9 M parameters."""
    return _make(
        variant="wan21",
        base_dim=96,
        dec_dim=96,
        z_dim=16,
        num_res_blocks=2,
        patch_size=1,
        latents_mean=list(WAN21_LATENTS_MEAN),
        latents_std=list(WAN21_LATENTS_STD),
    )


def tiny_wan22() -> ml_collections.ConfigDict:
    """Wan2.2 structure (residual stages, patch 2, z=48) with tiny widths, for tests."""
    config = wan22()
    config.base_dim = 16
    config.dec_dim = 8
    config.num_res_blocks = 1
    return config


def tiny_wan21() -> ml_collections.ConfigDict:
    """Wan2.1 structure (z=16, no patchify) with tiny widths, for tests."""
    config = wan21()
    config.base_dim = 8
    config.dec_dim = 8
    config.num_res_blocks = 1
    return config


PRESETS = {
    "wan22": wan22,
    "wan21": wan21,
    "tiny_wan22": tiny_wan22,
    "tiny_wan21": tiny_wan21,
}


def get_config(preset: str = "wan22") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown VAE preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]()
