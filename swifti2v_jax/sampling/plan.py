"""Sizes of a run, checked against the models before any weight is loaded.

Stage II runs at the requested size (multiples of VAE stride x DiT patch), Stage I at that
size / `stage1.divisor` rounded to its own granularity (or `stage1.resolution`); the frame
count must be 4k+1 for the VAE's temporal stride. The plan also lists the CSG windows.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from swifti2v_jax.csg import layout
from swifti2v_jax.io import image as image_io
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.sampling import stage2
from swifti2v_jax.sampling.config import PipelineConfig, PipelineError
from swifti2v_jax.sampling.models import ModelSpecs


@dataclasses.dataclass(frozen=True)
class SizePlan:
    width: int
    height: int
    frames: int
    stage1_width: int
    stage1_height: int
    latent_frames: int
    latent_hw: tuple[int, int]  # Stage II latent (h, w)
    windows: tuple[layout.Window, ...]
    tokens_per_forward: int
    notes: tuple[str, ...] = ()

    @property
    def segments(self) -> int:
        return len(self.windows)


def granularity(dit_config: DiTConfig, vae_config) -> int:
    """Pixel multiple a side must have: VAE stride x DiT patch (32 for TI2V-5B, 16 for A14B)."""
    return vae_lib.spatial_factor(vae_config) * dit_config.patch_size[1]


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def plan_sizes(
    specs: ModelSpecs, config: PipelineConfig, width: int, height: int, frames: int
) -> SizePlan:
    """Checks the requested size and length against the models; derives Stage I's size."""
    step = vae_lib.temporal_factor(specs.vae)
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer):
        raise PipelineError(f"frames must be an integer, got {frames!r}")
    if step == 1 and frames < 2:
        raise PipelineError(f"frames must be at least 2, got {frames}")
    problem = vae_lib.frame_count_problem(frames, step, min_latents=2)
    if problem:
        raise PipelineError(f"frames {problem}")
    # One rule for every model (README, --help): multiples of 32, or of the model's own
    # granularity if that is coarser.
    g2 = int(np.lcm(image_io.RESOLUTION_MULTIPLE, granularity(specs.stage2, specs.vae)))
    if width % g2 or height % g2 or width < g2 or height < g2:
        raise PipelineError(
            f"resolution {width}x{height} must be positive multiples of {g2}; "
            f"try {_round_to(width, g2)}x{_round_to(height, g2)}"
        )
    g1 = granularity(specs.stage1, specs.stage1_vae)
    notes = []
    if config.stage1.size is not None:
        w1, h1 = config.stage1.size
        if w1 % g1 or h1 % g1:
            raise PipelineError(f"stage1.resolution {w1}x{h1} must be multiples of {g1}")
    else:
        d = config.stage1.divisor
        w1, h1 = _round_to(width / d, g1), _round_to(height / d, g1)
        if (w1 * d, h1 * d) != (width, height):
            notes.append(
                f"Stage I runs at {w1}x{h1} (1/{d} of {width}x{height} rounded to multiples "
                f"of {g1})"
            )
    latent_frames = (frames - 1) // step + 1
    s = vae_lib.spatial_factor(specs.vae)
    latent_hw = (height // s, width // s)
    windows = tuple(config.stage2.plan(latent_frames))
    tokens = stage2.tokens_per_forward(specs.stage2, windows[0].size, latent_hw)
    return SizePlan(
        width=width,
        height=height,
        frames=frames,
        stage1_width=w1,
        stage1_height=h1,
        latent_frames=latent_frames,
        latent_hw=latent_hw,
        windows=windows,
        tokens_per_forward=tokens,
        notes=tuple(notes),
    )


def auto_resolution(
    specs: ModelSpecs, config: PipelineConfig, image_size: tuple[int, int], max_area: int
) -> tuple[int, int]:
    """The size with the image's aspect ratio, area <= max_area, whose Stage I size is exact."""
    g1 = granularity(specs.stage1, specs.stage1_vae)
    g2 = granularity(specs.stage2, specs.vae)
    multiple = int(np.lcm.reduce([image_io.RESOLUTION_MULTIPLE, g2, g1 * config.stage1.divisor]))
    return image_io.best_output_size(*image_size, multiple, multiple, max_area)
