"""Conditional Segment-wise Generation: Stage II denoising a few latent blocks at a time.

Every window holds W = 1 + N + M blocks (anchor, neighbours, noisy; see segments.py) and runs
ALL sampling steps in one jitted function whose shapes do not depend on the clip length or on
which segment it is: the block layout (is_noisy, positions) is a traced argument, so the first
and last segments reuse the program compiled for the first one.

Inside a window (docs/design.md, "CSG rules"):
- context blocks (anchor, neighbours) are never updated; the anchor is clean with timestep 0,
  neighbours too unless `neighbour_sigma` > 0: then they are noised to that level and get
  its timestep, as a model trained with `loss.neighbour_noise` expects (generated
  neighbours are imperfect; the noise keeps their errors from being copied forward);
- noisy blocks get the step's timestep and the solver update;
- RoPE temporal positions are the blocks' absolute latent frame indices;
- `concat` conditioning feeds [latent, z_ref] on channels; `refine` feeds the latent alone
  (plain TI2V-5B). With sigma_start < 1 (either mode) the noisy blocks start from z_ref
  noised to sigma_start instead of pure noise;
- `bidirectional` attention is full; `read_only` stops context queries attending noisy keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.models.dit import DiTConfig, WanDiT
from swifti2v_jax.sampling import guidance as guidance_lib
from swifti2v_jax.sampling import schedules, segments, solvers

CONDITIONING_MODES = ("concat", "refine")
NEIGHBOUR_NOISE_STREAM = 1  # fold_in tag: neighbour noise never reuses a noisy block's x_T
ATTENTION_MODES = ("bidirectional", "read_only")


@dataclasses.dataclass(frozen=True)
class CSGConfig:
    noisy_blocks: int = 3  # M
    neighbours: int = 1  # N
    conditioning: str = "concat"
    attention: str = "bidirectional"
    end_to_end: bool = False  # one window over the whole clip (the baseline)
    solver: str = "unipc"
    schedule: str = "unipc"  # sigma grid: unipc (official), unipc_diffusers, euler, dpm++
    steps: int = 20
    shift: float = 5.0
    guide_scale: float = 1.0
    sigma_start: float = 1.0  # < 1: start from z_ref noised to exactly this level, then
    # follow the grid's sigmas below it (img2img style; steps=1 is one x0 prediction)
    neighbour_sigma: float = 0.0  # > 0: neighbours enter noised to this level (see above)

    def __post_init__(self):
        if self.conditioning not in CONDITIONING_MODES:
            raise ValueError(f"conditioning must be one of {CONDITIONING_MODES}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}")
        if self.noisy_blocks < 1 or self.neighbours < 0:
            raise ValueError("CSG needs noisy_blocks >= 1 and neighbours >= 0")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 < self.sigma_start <= 1.0:
            raise ValueError(f"sigma_start must be in (0, 1], got {self.sigma_start}")
        if not 0.0 <= self.neighbour_sigma < 1.0:
            raise ValueError(f"neighbour_sigma must be in [0, 1), got {self.neighbour_sigma}")

    def plan(self, num_blocks: int) -> list[segments.Window]:
        if self.end_to_end:
            return [segments.end_to_end_window(num_blocks)]
        return segments.plan_segments(num_blocks, self.noisy_blocks, self.neighbours)

    def make_schedule(self) -> schedules.Schedule:
        schedule = schedules.make_schedule(self.schedule, self.steps, self.shift)
        if self.sigma_start < 1.0:
            # img2img-style: start exactly at sigma_start, then the grid below it.
            schedule = schedule.start_at(self.sigma_start)
        return schedule


def window_model_input(
    latents, z_ref, is_noisy, timestep, conditioning: str, neighbour_timestep=0.0
):
    """The DiT input and per-block timesteps of a window.

    latents, z_ref: [B, W, h, w, C]; is_noisy: [W] or [B, W] bool; timestep and
    neighbour_timestep: scalars or [B, 1]. Window slot 0 is the anchor (timestep 0), other
    context slots are neighbours. Returns (model_input [B, W, h, w, C or 2C], timesteps [B, W]).
    """
    if conditioning == "concat":
        model_input = jnp.concatenate([latents, z_ref.astype(latents.dtype)], axis=-1)
    elif conditioning == "refine":
        model_input = latents
    else:
        raise ValueError(f"conditioning must be one of {CONDITIONING_MODES}, got {conditioning!r}")
    context_t = jnp.where(
        segments.neighbour_mask(is_noisy), jnp.asarray(neighbour_timestep, jnp.float32), 0.0
    )
    per_block = jnp.where(is_noisy, jnp.asarray(timestep, jnp.float32), context_t)
    return model_input, jnp.broadcast_to(per_block, latents.shape[:2])


def read_only_mask(is_noisy: jax.Array, batch: int) -> jax.Array:
    """[B, W, W] frame mask: context queries may not attend noisy keys; noisy queries see all."""
    context_query = ~is_noisy[:, None]
    noisy_key = is_noisy[None, :]
    return jnp.broadcast_to(~(context_query & noisy_key), (batch,) + is_noisy.shape * 2)


def block_noise(key: jax.Array, blocks: np.ndarray, block_shape: tuple[int, ...]) -> jax.Array:
    """Gaussian noise [B, len(blocks), h, w, C] that depends only on (key, block index).

    The same block gets the same noise whatever window it is generated in, so CSG and the
    end-to-end baseline start from the same x_T.
    """
    batch = block_shape[0]
    per_block = jax.vmap(lambda b: jax.random.normal(jax.random.fold_in(key, b), block_shape))
    noise = per_block(jnp.asarray(blocks))  # [n, B, h, w, C]
    assert noise.shape[1] == batch
    return jnp.moveaxis(noise, 0, 1)


class WindowDenoiser:
    """The compiled per-window program: all sampling steps of one window, shared by segments."""

    def __init__(self, model_config: DiTConfig, config: CSGConfig):
        expected_in = 2 if config.conditioning == "concat" else 1
        if model_config.in_dim != expected_in * model_config.out_dim:
            raise ValueError(
                f"{config.conditioning} conditioning needs a DiT with in_dim = "
                f"{expected_in} x out_dim, got in_dim {model_config.in_dim}, "
                f"out_dim {model_config.out_dim}"
            )
        self.model = WanDiT(model_config)
        self.config = config
        self.solver = solvers.make_solver(config.solver)
        self.traces = 0  # how many times the window program was traced (= compiled)
        self._jitted = jax.jit(self._denoise)

    def _denoise(self, params, latents, z_ref, is_noisy, positions, context, uncond, sigmas, ts):
        self.traces += 1  # Python side effect: runs once per trace, i.e. per compilation
        cfg = self.config
        batch = latents.shape[0]
        positions = jnp.broadcast_to(positions, latents.shape[:2])
        mask = read_only_mask(is_noisy, batch) if cfg.attention == "read_only" else None

        def model_fn(p, x, timestep, text):
            model_input, per_block_t = window_model_input(
                x, z_ref, is_noisy, timestep, cfg.conditioning, 1000.0 * cfg.neighbour_sigma
            )
            return self.model.apply(
                {"params": p}, model_input, per_block_t, text, positions, mask
            ).astype(jnp.float32)

        velocity_fn = guidance_lib.make_guided_velocity_fn(
            model_fn,
            params,
            context=context,
            uncond_context=uncond if cfg.guide_scale != 1.0 else None,
            guidance=guidance_lib.Guidance(guide_scale=cfg.guide_scale),
        )
        update_mask = is_noisy[None, :, None, None, None]
        return solvers.sample_loop(
            self.solver, velocity_fn, latents, sigmas, ts, update_mask=update_mask
        )

    def __call__(self, params, latents, z_ref, window: segments.Window, context, uncond, schedule):
        blocks, is_noisy = window.as_arrays()
        sigmas, timesteps = solvers.as_schedule_arrays(schedule)
        if uncond is None:
            uncond = jnp.zeros_like(context)
        return self._jitted(
            params, latents, z_ref, is_noisy, blocks, context, uncond, sigmas, timesteps
        )


def noise_neighbours(window_latents, is_noisy, sigma: float, key, blocks) -> jax.Array:
    """The window's neighbour blocks (context, not slot 0) noised to `sigma`; others as given.

    The noise depends only on (key, block index), like `block_noise`, from its own stream.
    """
    block_shape = (window_latents.shape[0], *window_latents.shape[2:])
    noise = block_noise(jax.random.fold_in(key, NEIGHBOUR_NOISE_STREAM), blocks, block_shape)
    is_neighbour = segments.neighbour_mask(is_noisy)
    noised = (1.0 - sigma) * window_latents + sigma * noise
    return jnp.where(is_neighbour[None, :, None, None, None], noised, window_latents)


@dataclasses.dataclass
class SegmentResult:
    index: int
    window: segments.Window
    blocks: tuple[int, ...]  # the block indices generated by this segment
    latents: jax.Array  # [B, len(blocks), h, w, C]


def generate(
    params,
    model_config: DiTConfig,
    config: CSGConfig,
    *,
    z_ref: jax.Array,
    anchor: jax.Array,
    context: jax.Array,
    uncond_context: jax.Array | None = None,
    key: jax.Array,
    on_segment: Callable[[SegmentResult], None] | None = None,
    denoiser: WindowDenoiser | None = None,
) -> jax.Array:
    """Stage II over a whole clip: returns latents [B, T, h, w, C] with block 0 = anchor.

    z_ref: [B, T, h, w, C] latent of the hybrid reference; anchor: [B, 1, h, w, C] latent of
    the input image (== z_ref[:, :1] for a causal VAE). Segments run in order; `on_segment`
    receives each segment's finished blocks (for streaming decode and progress bars).
    """
    if z_ref.ndim != 5 or anchor.shape != (z_ref.shape[0], 1, *z_ref.shape[2:]):
        raise ValueError(
            f"need z_ref [B, T, h, w, C] and anchor [B, 1, h, w, C], "
            f"got {z_ref.shape} and {anchor.shape}"
        )
    if config.guide_scale != 1.0 and uncond_context is None:
        raise ValueError("guide_scale != 1 needs uncond_context (the negative prompt embedding)")
    denoiser = denoiser or WindowDenoiser(model_config, config)
    schedule = config.make_schedule()
    batch, num_blocks = z_ref.shape[:2]
    block_shape = (batch, *z_ref.shape[2:])
    buffer = jnp.zeros_like(z_ref).at[:, 0].set(anchor[:, 0])
    for index, window in enumerate(config.plan(num_blocks)):
        blocks, is_noisy = window.as_arrays()
        current = buffer[:, blocks]
        ref = z_ref[:, blocks]
        noise = block_noise(key, blocks, block_shape)
        if config.conditioning == "refine" or config.sigma_start < 1.0:
            sigma0 = float(schedule.sigmas[0])
            start = (1.0 - sigma0) * ref + sigma0 * noise
        else:
            start = noise
        if config.neighbour_sigma > 0:
            current = noise_neighbours(current, is_noisy, config.neighbour_sigma, key, blocks)
        init = jnp.where(is_noisy[None, :, None, None, None], start, current)
        out = denoiser(params, init, ref, window, context, uncond_context, schedule)
        noisy_positions = np.flatnonzero(is_noisy)
        new_blocks = out[:, noisy_positions]
        buffer = buffer.at[:, blocks[noisy_positions]].set(new_blocks)
        if on_segment is not None:
            on_segment(SegmentResult(index, window, window.noisy_blocks, new_blocks))
    return buffer


def tokens_per_forward(model_config: DiTConfig, window_blocks: int, latent_hw: tuple[int, int]):
    _, ph, pw = model_config.patch_size
    return window_blocks * (latent_hw[0] // ph) * (latent_hw[1] // pw)
