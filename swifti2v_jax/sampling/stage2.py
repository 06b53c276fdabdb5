"""The Stage II sampler: Conditional Segment-wise Generation, a few latent blocks at a time.

Every window holds W = 1 + N + M blocks (anchor, neighbours, noisy; csg/layout.py) and runs
ALL sampling steps in one jitted function whose shapes do not depend on the clip length or on
which segment it is: the block layout (is_noisy, positions) is a traced argument, so the first
and last segments reuse the program compiled for the first one.

Inside a window (docs/design.md, "CSG rules"; the model input is csg/inputs.py, shared with
training):
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

`ensemble` > 1 runs each segment's window once per noise draw and keeps the mean
(docs/design.md, "Samplers"; `ensemble_keys`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.csg import inputs, layout
from swifti2v_jax.models.dit import DiTConfig, WanDiT
from swifti2v_jax.sampling import guidance as guidance_lib
from swifti2v_jax.sampling import schedules, solvers

NEIGHBOUR_NOISE_STREAM = 1  # fold_in tag: neighbour noise never reuses a noisy block's x_T
ENSEMBLE_STREAM = 2  # fold_in tag of the extra noise draws of `Stage2SamplerConfig.ensemble`
ATTENTION_MODES = ("bidirectional", "read_only")


@dataclasses.dataclass(frozen=True)
class Stage2SamplerConfig(layout.WindowLayout):
    """The window layout (noisy_blocks M, neighbours N, end_to_end) and the sampler."""

    conditioning: str = "concat"
    attention: str = "bidirectional"
    solver: str = "unipc"
    schedule: str = "unipc"  # sigma grid: unipc (official), unipc_diffusers, euler, dpm++
    steps: int = 20
    shift: float = 5.0
    guide_scale: float = 1.0
    sigma_start: float = 1.0  # < 1: start from z_ref noised to exactly this level, then
    # follow the grid's sigmas below it (img2img style; steps=1 is one x0 prediction)
    neighbour_sigma: float = 0.0  # > 0: neighbours enter noised to this level (see above)
    # > 1: each segment's output is the mean of this many samples (noise draws): with one
    # step from sigma_start, a Monte-Carlo estimate of the conditional mean (see `ensemble_keys`)
    ensemble: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.conditioning not in inputs.CONDITIONING_MODES:
            raise ValueError(f"conditioning must be one of {inputs.CONDITIONING_MODES}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 < self.sigma_start <= 1.0:
            raise ValueError(f"sigma_start must be in (0, 1], got {self.sigma_start}")
        if not 0.0 <= self.neighbour_sigma < 1.0:
            raise ValueError(f"neighbour_sigma must be in [0, 1), got {self.neighbour_sigma}")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {self.ensemble}")
        solvers.make_solver(self.solver)
        self.sampling_schedule  # noqa: B018 -- built (and so validated) once, now

    @functools.cached_property
    def sampling_schedule(self) -> schedules.Schedule:
        """The sigma grid, built once per config and shared by everything that reads it."""
        schedule = schedules.make_schedule(self.schedule, self.steps, self.shift)
        if self.sigma_start < 1.0:
            # img2img-style: start exactly at sigma_start, then the grid below it.
            schedule = schedule.start_at(self.sigma_start)
        return schedule


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
    """The compiled per-window program: all sampling steps of one window, shared by segments.

    Build it once per (model config, CSG config) and pass it to every `generate` call: each
    new denoiser is a new jit, i.e. a new compilation.
    """

    def __init__(self, model_config: DiTConfig, config: Stage2SamplerConfig):
        inputs.check_conditioning(config.conditioning, model_config.in_dim, model_config.out_dim)
        self.model = WanDiT(model_config)
        self.model_config = model_config
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
            model_input, per_block_t = inputs.window_model_input(
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

    def __call__(self, params, latents, z_ref, window: layout.Window, context, uncond, schedule):
        blocks, is_noisy = window.as_arrays()
        sigmas, timesteps = solvers.as_schedule_arrays(schedule)
        if uncond is None:
            uncond = jnp.zeros_like(context)
        return self._jitted(
            params, latents, z_ref, is_noisy, blocks, context, uncond, sigmas, timesteps
        )


def ensemble_keys(key: jax.Array, count: int) -> list[jax.Array]:
    """The keys of a segment's `count` noise draws: `key` itself first (so ensemble=1 is the
    plain sampler), then draws from their own stream.

    Why average: the demo samples one Euler step from z_ref noised to sigma_start, i.e. the
    model's x0 prediction from one noise draw. Each draw errs in its own way, and with one
    draw per block those errors flicker from frame to frame; their mean estimates the
    conditional mean, the output closest to the truth in squared error. With many steps the
    samples are sharp and differ in detail, and their mean blurs instead.
    """
    extra = jax.random.fold_in(key, ENSEMBLE_STREAM)
    return [key] + [jax.random.fold_in(extra, draw) for draw in range(1, count)]


def noise_neighbours(window_latents, is_noisy, sigma: float, key, blocks) -> jax.Array:
    """The window's neighbour blocks (context, not slot 0) noised to `sigma`; others as given.

    The noise depends only on (key, block index), like `block_noise`, from its own stream.
    """
    block_shape = (window_latents.shape[0], *window_latents.shape[2:])
    noise = block_noise(jax.random.fold_in(key, NEIGHBOUR_NOISE_STREAM), blocks, block_shape)
    is_neighbour = layout.neighbour_mask(is_noisy)
    noised = (1.0 - sigma) * window_latents + sigma * noise
    return jnp.where(is_neighbour[None, :, None, None, None], noised, window_latents)


@dataclasses.dataclass
class SegmentResult:
    index: int
    window: layout.Window
    blocks: tuple[int, ...]  # the block indices generated by this segment
    latents: jax.Array  # [B, len(blocks), h, w, C]


def _check_inputs(config: Stage2SamplerConfig, anchor, uncond_context) -> None:
    if anchor.ndim != 5 or anchor.shape[1] != 1:
        raise ValueError(f"need anchor [B, 1, h, w, C], got {anchor.shape}")
    if config.guide_scale != 1.0 and uncond_context is None:
        raise ValueError("guide_scale != 1 needs uncond_context (the negative prompt embedding)")


class SegmentRunner:
    """Stage II segment by segment, as the hybrid reference arrives block by block.

    `push(z_ref_blocks)` takes the next latent blocks of z_ref (block 0 first) and yields, in
    order, every segment whose window is now complete. Only the blocks a later window still
    needs are kept (the anchor, z_ref from the next window's first block on, generated blocks
    from the next window's first neighbour on), so memory is one window plus what the caller
    pushes at once, whatever the clip length. `context` is one text embedding, or one per block
    (a prompt timeline: `_context`). Noise depends only on (key, block index)
    (`block_noise`), so any grouping of pushes gives the same segments bit for bit.
    """

    def __init__(
        self, denoiser: WindowDenoiser, params, *, num_blocks: int, anchor: jax.Array,
        context: jax.Array, uncond_context: jax.Array | None = None, key: jax.Array,
    ):  # fmt: skip
        _check_inputs(denoiser.config, anchor, uncond_context)
        self.denoiser, self.params, self.key = denoiser, params, key
        self.context, self.uncond = context, uncond_context
        self.num_blocks = num_blocks
        self.windows = denoiser.config.plan(num_blocks)
        self.schedule = denoiser.config.sampling_schedule
        self.received = 0  # z_ref blocks pushed so far
        self.next_segment = 0
        self._refs: dict[int, jax.Array] = {}  # block -> z_ref [B, 1, h, w, C]
        self._latents: dict[int, jax.Array] = {0: anchor}  # block -> generated latent

    @property
    def done(self) -> bool:
        return self.next_segment == len(self.windows)

    @property
    def held_blocks(self) -> int:
        """How many z_ref and latent blocks are held (bounded by the window, not the clip)."""
        return len(self._refs) + len(self._latents)

    def push(self, z_ref_blocks: jax.Array):
        """z_ref_blocks [B, n, h, w, C]: the next n blocks -> yields `SegmentResult`s."""
        anchor = self._latents[0]
        if z_ref_blocks.ndim != 5 or z_ref_blocks.shape[2:] != anchor.shape[2:]:
            raise ValueError(
                f"z_ref blocks must be [B, n, {', '.join(map(str, anchor.shape[2:]))}], "
                f"got {z_ref_blocks.shape}"
            )
        if self.received + z_ref_blocks.shape[1] > self.num_blocks:
            raise ValueError(f"more z_ref blocks than the clip's {self.num_blocks}")
        for i in range(z_ref_blocks.shape[1]):
            self._refs[self.received + i] = z_ref_blocks[:, i : i + 1]
        self.received += z_ref_blocks.shape[1]
        while not self.done and self.windows[self.next_segment].blocks[-1] < self.received:
            yield self._run(self.next_segment)
            self.next_segment += 1
            self._forget()

    def _forget(self) -> None:
        """Drops blocks no later window reads (windows only move forward; block 0 stays)."""
        keep_from = self.windows[self.next_segment].blocks[1] if not self.done else self.received
        for store in (self._refs, self._latents):
            for block in [b for b in store if 0 < b < keep_from]:
                del store[block]

    def _run(self, index: int) -> SegmentResult:
        config, window = self.denoiser.config, self.windows[index]
        blocks, is_noisy = window.as_arrays()
        anchor = self._latents[0]
        empty = jnp.zeros_like(anchor)  # noisy slots: replaced by their start below
        current = jnp.concatenate([self._latents.get(int(b), empty) for b in blocks], axis=1)
        ref = jnp.concatenate([self._refs[int(b)] for b in blocks], axis=1)
        total = None  # a running sum: one draw's window output held at a time
        for key in ensemble_keys(self.key, config.ensemble):
            draw = self._sample(window, current, ref, key)
            total = draw if total is None else total + draw
        out = total / config.ensemble
        noisy_positions = np.flatnonzero(is_noisy)
        new_blocks = out[:, noisy_positions]
        for i, block in enumerate(blocks[noisy_positions]):
            self._latents[int(block)] = new_blocks[:, i : i + 1]
        return SegmentResult(index, window, window.noisy_blocks, new_blocks)

    def _sample(self, window: layout.Window, current, ref, key) -> jax.Array:
        """One sample of the window from the noise of `key` (noisy blocks and neighbours)."""
        config = self.denoiser.config
        blocks, is_noisy = window.as_arrays()
        block_shape = (current.shape[0], *current.shape[2:])
        noise = block_noise(key, blocks, block_shape)
        if config.conditioning == "refine" or config.sigma_start < 1.0:
            sigma0 = float(self.schedule.sigmas[0])
            start = (1.0 - sigma0) * ref + sigma0 * noise
        else:
            start = noise
        if config.neighbour_sigma > 0:
            current = noise_neighbours(current, is_noisy, config.neighbour_sigma, key, blocks)
        init = jnp.where(is_noisy[None, :, None, None, None], start, current)
        return self.denoiser(self.params, init, ref, window, self._context(window), self.uncond,
                             self.schedule)  # fmt: skip

    def _context(self, window: layout.Window) -> jax.Array:
        """The text embedding of a window: with a prompt timeline (one embedding per block),
        that of the first block the window makes."""
        if isinstance(self.context, (list, tuple)):
            return self.context[window.noisy_blocks[0]]
        return self.context


def generate(
    denoiser: WindowDenoiser,
    params,
    *,
    z_ref: jax.Array,
    anchor: jax.Array,
    context: jax.Array,
    uncond_context: jax.Array | None = None,
    key: jax.Array,
    on_segment: Callable[[SegmentResult], None] | None = None,
) -> jax.Array:
    """Stage II over a whole clip: returns latents [B, T, h, w, C] with block 0 = anchor.

    z_ref: [B, T, h, w, C] latent of the hybrid reference; anchor: [B, 1, h, w, C] latent of
    the input image (== z_ref[:, :1] for a causal VAE). Segments run in order; `on_segment`
    receives each segment's finished blocks (for streaming decode and progress bars).
    `denoiser` carries the model and CSG configs (and the compiled window program). This is
    `SegmentRunner` with the whole z_ref pushed at once.
    """
    if z_ref.ndim != 5 or anchor.shape != (z_ref.shape[0], 1, *z_ref.shape[2:]):
        raise ValueError(
            f"need z_ref [B, T, h, w, C] and anchor [B, 1, h, w, C], "
            f"got {z_ref.shape} and {anchor.shape}"
        )
    stream = SegmentRunner(
        denoiser, params, num_blocks=z_ref.shape[1], anchor=anchor, context=context,
        uncond_context=uncond_context, key=key,
    )  # fmt: skip
    parts = [anchor]
    for result in stream.push(z_ref):
        parts.append(result.latents)
        if on_segment is not None:
            on_segment(result)
    return jnp.concatenate(parts, axis=1)


def tokens_per_forward(model_config: DiTConfig, window_blocks: int, latent_hw: tuple[int, int]):
    _, ph, pw = model_config.patch_size
    return window_blocks * (latent_hw[0] // ph) * (latent_hw[1] // pw)
