"""Classifier-free guidance and the Wan2.2 A14B expert switch (docs/design.md, "Models").

For each step with integer timestep t: t >= boundary * 1000 runs the high-noise expert with the
"high" guide scale, otherwise the low-noise expert with the "low" scale. Guide-scale pairs are
ordered (low, high) as in the Wan configs. Models are plain callables
`model_fn(params, x, timestep, context) -> v`, so this works for any network.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.sampling.schedules import NUM_TRAIN_TIMESTEPS

ModelFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


def cfg_velocity(v_cond: jax.Array, v_uncond: jax.Array, scale) -> jax.Array:
    """v_uncond + scale * (v_cond - v_uncond), the order of operations of the original."""
    return v_uncond + scale * (v_cond - v_uncond)


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Guide scale(s) and, for a two-expert MoE, the switch boundary.

    guide_scale: one float, or (low, high) like Wan's `sample_guide_scale`.
    boundary: fraction of the training timesteps (0.9 I2V-A14B, 0.875 T2V-A14B); None for a
    single model, which then always counts as the high-noise expert.
    """

    guide_scale: float | tuple[float, float] = 5.0
    boundary: float | None = None

    def __post_init__(self):
        scales = self.scales
        if not all(math.isfinite(s) for s in scales):
            raise ValueError(f"guide scales must be finite, got {self.guide_scale!r}")
        if self.boundary is not None and not 0.0 <= self.boundary <= 1.0:
            raise ValueError(f"boundary must be in [0, 1], got {self.boundary!r}")

    @property
    def scales(self) -> tuple[float, float]:
        """(low, high) guide scales."""
        if isinstance(self.guide_scale, tuple | list):
            if len(self.guide_scale) != 2:
                raise ValueError(
                    f"guide_scale must be a float or (low, high), got {self.guide_scale}"
                )
            return float(self.guide_scale[0]), float(self.guide_scale[1])
        return float(self.guide_scale), float(self.guide_scale)

    @property
    def boundary_timestep(self) -> int:
        """Smallest integer timestep that runs the high-noise expert (t >= boundary * 1000)."""
        if self.boundary is None:
            return 0
        return math.ceil(self.boundary * NUM_TRAIN_TIMESTEPS)

    def is_high_noise(self, timestep):
        """Whether the high-noise expert runs at this (integer-valued) timestep; numpy or jax."""
        if isinstance(timestep, jax.Array):
            return timestep >= self.boundary_timestep
        return np.asarray(timestep) >= self.boundary_timestep

    def scale_at(self, timestep):
        """The guide scale used at this timestep (host or traced)."""
        low, high = self.scales
        xp = jnp if isinstance(timestep, jax.Array) else np
        return xp.where(self.is_high_noise(timestep), high, low)

    def num_high_noise_steps(self, timesteps) -> int:
        return int(np.sum(self.is_high_noise(np.asarray(timesteps))))


def make_guided_velocity_fn(
    model_fn: ModelFn,
    params: Any,
    *,
    context: Any,
    uncond_context: Any = None,
    guidance: Guidance,
    low_noise_params: Any = None,
    low_noise_model_fn: ModelFn | None = None,
) -> Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]:
    """A `sample_loop` velocity_fn(x, sigma, timestep, i) applying the expert switch and CFG.

    params: the single model's params, or the high-noise expert's when `low_noise_params` is
    given (then `guidance.boundary` is required). `low_noise_model_fn` defaults to `model_fn`.
    The expert is picked with `lax.cond` on the traced timestep, so only one expert runs per
    step. The unconditional forward is skipped (a static choice) for an expert whose scale is
    1.0, and `uncond_context` may then be None.
    """
    two_experts = low_noise_params is not None
    if two_experts and guidance.boundary is None:
        raise ValueError("two experts need guidance.boundary (e.g. 0.9 for I2V-A14B)")
    if not two_experts and low_noise_model_fn is not None:
        raise ValueError("low_noise_model_fn given without low_noise_params")
    low_scale, high_scale = guidance.scales
    if guidance.boundary is None and low_scale != high_scale:
        raise ValueError("two guide scales need guidance.boundary to choose between them")
    if (low_scale != 1.0 or high_scale != 1.0) and uncond_context is None:
        raise ValueError("uncond_context is required when a guide scale differs from 1.0")

    def guided(fn: ModelFn, expert_params, scale: float, x, timestep):
        v_cond = fn(expert_params, x, timestep, context)
        if scale == 1.0:
            return v_cond
        v_uncond = fn(expert_params, x, timestep, uncond_context)
        return cfg_velocity(v_cond, v_uncond, jnp.asarray(scale, v_cond.dtype))

    if guidance.boundary is None:

        def velocity_fn(x, sigma, timestep, i):
            del sigma, i
            return guided(model_fn, params, high_scale, x, timestep)

        return velocity_fn

    # A single model with a boundary switches only its guide scale.
    low_fn = low_noise_model_fn or model_fn
    low_params = low_noise_params if two_experts else params

    def velocity_fn(x, sigma, timestep, i):
        del sigma, i
        # Under vmap lax.cond turns into a select and both branches run: keep the step unbatched.
        return jax.lax.cond(
            guidance.is_high_noise(jnp.asarray(timestep)),
            lambda: guided(model_fn, params, high_scale, x, timestep),
            lambda: guided(low_fn, low_params, low_scale, x, timestep),
        )

    return velocity_fn
