"""Wan VAE configuration: latent constants, `VAEConfig`, frame/size arithmetic, input checks.

Latent normalisation constants are those of the official Wan2.2 / Wan2.1 VAEs
(docs/design.md, "Models"); presets live in swifti2v_jax/presets/vae.py.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax.numpy as jnp

from swifti2v_jax import config_fields

# Latent normalisation constants (official vae2_2.py / vae2_1.py; docs/design.md, "Models").
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
    """Architecture of a Wan VAE. Defaults are the Wan2.2 VAE; presets: swifti2v_jax/presets/vae.py.

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
        """From a mapping or ConfigDict (config_fields.from_fields: unknown names are errors)."""
        return config_fields.from_fields(cls, fields, "VAE")

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


def frame_count_problem(frames: int, stride: int, min_latents: int = 1) -> str | None:
    """The one frame-count rule: a causal VAE of temporal `stride` t encodes t*k + 1 frames
    (frame 0 alone, then t per latent frame), k + 1 >= `min_latents`. None if `frames` obeys
    it, else the reason (to follow the quantity's name) with the nearest count that does."""
    least = (min_latents - 1) * stride + 1
    if frames >= least and (frames - 1) % stride == 0:
        return None
    bound = f" with k >= {min_latents - 1}" if min_latents > 1 else ""
    nearest = max(least, (frames - 1) // stride * stride + 1)
    return (
        f"must be {stride}k+1{bound} for the VAE's temporal stride {stride} "
        f"({least}, {least + stride}, ...), got {frames}; try {nearest}"
    )


def check_frame_count(frames: int, stride: int, what: str = "frames") -> None:
    """ValueError unless `frames` obeys `frame_count_problem`'s rule."""
    problem = frame_count_problem(frames, stride)
    if problem:
        raise ValueError(f"{what} {problem}")


def num_latent_frames(config, num_frames: int) -> int:
    return (num_frames - 1) // temporal_factor(config) + 1


def num_pixel_frames(config, num_latent: int) -> int:
    return (num_latent - 1) * temporal_factor(config) + 1


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
    check_frame_count(frames, temporal_factor(config), "the video's frame count")


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
