"""Stage I: the low-resolution motion reference, with either Wan2.2 image-to-video backbone.

* TI2V-5B image-to-video mode (docs/design.md, "Models"): latent frame 0 is the clean image
  latent with timestep 0, every other frame is noise with the step's timestep; frame 0 is
  re-imposed after every solver step (here: never updated, via the loop's update mask).
* I2V-A14B (docs/design.md, "Models"): the model input is [noisy latent (16) | mask (4) |
  image latent (16)] on channels; the image latent encodes [image, 0, 0, ...] with the Wan2.1
  VAE, the mask is 1 on latent frame 0. Two experts: t >= boundary * 1000 runs the high-noise one.
  Few-step (Lightning LoRAs merged at conversion): 4 Euler steps, shift 5, guidance 1.

Each sampler is one jitted program (all steps in a `lax.fori_loop`), cached per model config
and Stage I settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.io import image as image_io
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models.dit import DiTConfig, WanDiT
from swifti2v_jax.sampling import guidance as guidance_lib
from swifti2v_jax.sampling import schedules, solvers

BACKBONES = ("ti2v", "a14b")
A14B_MASK_CHANNELS = 4  # the frame-0 mask repeated over the VAE's 4-frame temporal stride


@dataclasses.dataclass(frozen=True)
class Stage1Config:
    """Stage I sampler settings.

    guide_scale: the CFG scale (of the high-noise expert for A14B); guide_scale_low: the
    low-noise expert's scale (None or < 0 = the same). 1.0 skips the unconditional forward.
    Stage I's size: `resolution` WIDTHxHEIGHT if given, else the target / `divisor` per side
    (rounded, sampling/plan.py).
    """

    backbone: str = "ti2v"
    steps: int = 4
    shift: float = 5.0
    solver: str = "euler"
    schedule: str = "euler"
    guide_scale: float = 1.0
    guide_scale_low: float | None = None
    boundary: float = 0.9
    divisor: int = 4
    resolution: str = ""  # '' = target / divisor
    # Long clips (TI2V): Stage I in chunks of this many latent frames (0 = one pass), each
    # chunk after the first continuing from the previous chunk's last `overlap` latent frames.
    chunk_latents: int = 0
    overlap: int = 1

    def __post_init__(self):
        if self.guide_scale_low is not None and self.guide_scale_low < 0:
            object.__setattr__(self, "guide_scale_low", None)  # config files write -1 for None
        if self.divisor < 1:
            raise ValueError(f"stage1.divisor must be >= 1, got {self.divisor}")
        self.size  # noqa: B018 -- validates the resolution now
        if self.backbone not in BACKBONES:
            raise ValueError(f"Stage I backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.steps < 1:
            raise ValueError(f"Stage I steps must be >= 1, got {self.steps}")
        if self.chunk_latents and not 1 <= self.overlap < self.chunk_latents:
            raise ValueError(
                f"stage1.overlap must be in [1, chunk_latents={self.chunk_latents}), "
                f"got {self.overlap}"
            )
        if self.chunk_latents < 0 or (self.chunk_latents and self.chunk_latents < 2):
            raise ValueError(f"stage1.chunk_latents must be 0 or >= 2, got {self.chunk_latents}")
        if self.chunk_latents and self.backbone != "ti2v":
            raise ValueError("stage1.chunk_latents (chunked Stage I) needs the ti2v backbone")
        solvers.make_solver(self.solver)
        schedules.make_schedule(self.schedule, self.steps, self.shift)  # validates grid/shift
        self.guidance()

    def make_schedule(self) -> schedules.Schedule:
        return schedules.make_schedule(self.schedule, self.steps, self.shift)

    @property
    def size(self) -> tuple[int, int] | None:
        """The explicit Stage I (width, height), or None to derive it from the divisor."""
        if not self.resolution:
            return None
        try:
            return image_io.parse_size(self.resolution)
        except ValueError as e:
            raise ValueError(f"stage1.resolution: {e}") from None

    def guidance(self) -> guidance_lib.Guidance:
        low = self.guide_scale if self.guide_scale_low is None else self.guide_scale_low
        if self.backbone == "a14b":
            return guidance_lib.Guidance(
                guide_scale=(low, self.guide_scale), boundary=self.boundary
            )
        if low != self.guide_scale:
            raise ValueError("guide_scale_low only applies to the two-expert a14b backbone")
        return guidance_lib.Guidance(guide_scale=self.guide_scale)

    @property
    def uses_cfg(self) -> bool:
        return any(s != 1.0 for s in self.guidance().scales)


def initial_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(key, shape, jnp.float32)


# --------------------------------------------------------------------------------------------
# TI2V-5B image-to-video


TRACES = {"ti2v": 0}  # how often the TI2V program was traced (= compiled), for tests/summaries


@functools.cache
def _ti2v_program(model_config: DiTConfig, config: Stage1Config):
    """num_known (how many leading frames are given, held clean) is traced: chunk 0 (the
    image) and every later chunk (`overlap` frames) of a clip run one compiled program."""
    model = WanDiT(model_config)
    solver = solvers.make_solver(config.solver)
    guidance = config.guidance()

    def run(params, x_init, num_known, context, uncond, sigmas, timesteps):
        TRACES["ti2v"] += 1
        batch, frames = x_init.shape[:2]
        is_image = jnp.arange(frames) < num_known

        def model_fn(p, x, timestep, text):
            per_frame = jnp.where(is_image, 0.0, timestep)  # timestep 0 on the known frames
            per_frame = jnp.broadcast_to(per_frame, (batch, frames))
            return model.apply({"params": p}, x, per_frame, text).astype(jnp.float32)

        velocity_fn = guidance_lib.make_guided_velocity_fn(
            model_fn,
            params,
            context=context,
            uncond_context=uncond if config.uses_cfg else None,
            guidance=guidance,
        )
        # Known frames keep their x_init values (clean latents) bit for bit at every step.
        update_mask = ~is_image[None, :, None, None, None]
        return solvers.sample_loop(
            solver, velocity_fn, x_init, sigmas, timesteps, update_mask=update_mask
        )

    return jax.jit(run)


def ti2v_image_to_video(
    params,
    model_config: DiTConfig,
    config: Stage1Config,
    *,
    image_latent: jax.Array,
    num_latent_frames: int,
    context: jax.Array,
    uncond_context: jax.Array | None = None,
    key: jax.Array,
) -> jax.Array:
    """TI2V-5B image-to-video sampling -> latents [B, T, h, w, C] with [:, 0] == image_latent.

    image_latent: [B, 1, h, w, C] normalised VAE latent of the (Stage I size) image.
    """
    if config.backbone != "ti2v":
        raise ValueError("ti2v_image_to_video needs a Stage1Config with backbone 'ti2v'")
    if image_latent.ndim != 5 or image_latent.shape[1] != 1:
        raise ValueError(f"image_latent must be [B, 1, h, w, C], got {image_latent.shape}")
    if image_latent.shape[-1] != model_config.in_dim or model_config.in_dim != model_config.out_dim:
        raise ValueError(
            f"the TI2V backbone needs in_dim == out_dim == the latent channels "
            f"({image_latent.shape[-1]}), got in_dim {model_config.in_dim}, "
            f"out_dim {model_config.out_dim}"
        )
    if num_latent_frames < 2:
        raise ValueError(f"need at least 2 latent frames, got {num_latent_frames}")
    chunks = ti2v_chunks(
        params, model_config, config, image_latent=image_latent,
        num_latent_frames=num_latent_frames, context=context, uncond_context=uncond_context,
        key=key,
    )  # fmt: skip
    return assemble(list(chunks))


def assemble(chunks) -> jax.Array:
    """The clip's latents from its chunks: chunk 0 whole, then each chunk's new frames."""
    parts = [chunks[0].latents, *(chunk.new for chunk in chunks[1:])]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One Stage I chunk: latents [B, L, h, w, C] over clip latent frames [start, start + L);
    the first `known` of them were given (held clean), `new` are the frames it adds."""

    index: int
    start: int
    known: int
    latents: jax.Array

    @property
    def new(self) -> jax.Array:
        return self.latents[:, self.known :]


def chunk_plan(num_latent_frames: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """(start, known) of each chunk of `chunk` latent frames covering the clip.

    chunk 0 starts at 0 with 1 known frame (the image); each next chunk starts `overlap`
    frames before the previous one ends. The last chunk may run past the clip (its surplus
    frames are dropped), so every chunk has the same length. chunk 0 or >= the clip: one pass.
    """
    if not chunk or chunk >= num_latent_frames:
        return [(0, 1)]
    plan, end = [(0, 1)], chunk
    while end < num_latent_frames:
        plan.append((end - overlap, overlap))
        end += chunk - overlap
    return plan


def chunk_length(num_latent_frames: int, config: Stage1Config) -> int:
    """Latent frames of every Stage I chunk (the one program's length): the clip for a single
    pass, else `chunk_latents` whatever the clip length."""
    plan = chunk_plan(num_latent_frames, config.chunk_latents, config.overlap)
    return num_latent_frames if len(plan) == 1 else config.chunk_latents


def ti2v_chunks(
    params, model_config: DiTConfig, config: Stage1Config, *, image_latent: jax.Array,
    num_latent_frames: int, context: jax.Array, uncond_context: jax.Array | None = None,
    key: jax.Array,
):  # fmt: skip
    """TI2V Stage I chunk by chunk (a generator of `Chunk`s; see `chunk_plan`).

    Latent continuation: chunk k's known frames are the previous chunk's last latents, at
    timestep 0 with per-frame timesteps exactly as the image frame is in chunk 0. Only the
    previous chunk is held, so memory does not grow with the clip. Chunk 0 with the whole
    clip is exactly the single pass.
    """
    uncond = _uncond(config, context, uncond_context)
    batch, _, h, w, c = image_latent.shape
    plan = chunk_plan(num_latent_frames, config.chunk_latents, config.overlap)
    length = chunk_length(num_latent_frames, config)
    sigmas, timesteps = solvers.as_schedule_arrays(config.make_schedule())
    previous = None
    for index, (start, num_known) in enumerate(plan):
        if previous is None:
            known = image_latent.astype(jnp.float32)
        else:  # the previous chunk's last `overlap` latents
            known = previous.latents[:, start - previous.start :]
        chunk_key = key if index == 0 else jax.random.fold_in(key, index)
        noise = initial_noise(chunk_key, (batch, length, h, w, c))
        x_init = noise.at[:, :num_known].set(known)
        program = _ti2v_program(model_config, config)
        latents = program(params, x_init, jnp.int32(num_known), context, uncond, sigmas, timesteps)
        previous = Chunk(index=index, start=start, known=num_known, latents=latents)
        # The clip's part of the chunk (the last chunk may run past the clip's end).
        yield dataclasses.replace(previous, latents=latents[:, : num_latent_frames - start])


# --------------------------------------------------------------------------------------------
# I2V-A14B


def a14b_condition(vae_params, vae_config, image: jax.Array, num_frames: int) -> jax.Array:
    """The 20 conditioning channels [mask (4) | image latent (16)] -> [B, T, h, w, 20].

    image: [B, H, W, 3] in [-1, 1] at the Stage I size. The latent encodes a video whose
    frame 0 is the image and whose other frames are zeros (Wan2.1 VAE); the mask is 1 on
    latent frame 0 (frame 0's entry repeated over the 4-frame stride) and 0 elsewhere.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be [B, H, W, 3], got {image.shape}")
    batch, height, width, _ = image.shape
    video = jnp.zeros((batch, num_frames, height, width, 3), jnp.float32)
    video = video.at[:, 0].set(image.astype(jnp.float32))
    latent = vae_lib.encode(vae_params, vae_config, video)
    mask = jnp.zeros((*latent.shape[:4], A14B_MASK_CHANNELS), latent.dtype).at[:, 0].set(1.0)
    return jnp.concatenate([mask, latent], axis=-1)


def _a14b_model_fn(model: WanDiT, condition, name: str, log_experts: bool):
    """The DiT as a guidance model_fn: [noisy latent | mask | image latent], scalar t."""

    def model_fn(p, x, timestep, text):
        if log_experts:  # runs on the host only when this expert's branch runs
            jax.debug.callback(functools.partial(_record_expert, name), timestep)
        model_input = jnp.concatenate([x, condition.astype(x.dtype)], axis=-1)
        t = jnp.broadcast_to(timestep, (x.shape[0],))
        return model.apply({"params": p}, model_input, t, text).astype(jnp.float32)

    return model_fn


@functools.cache
def _a14b_program(model_config: DiTConfig, config: Stage1Config, log_experts: bool):
    """All steps, both experts resident; lax.cond picks one per step."""
    model = WanDiT(model_config)
    solver = solvers.make_solver(config.solver)
    guidance = config.guidance()

    def run(high, low, x_init, condition, context, uncond, sigmas, timesteps):
        velocity_fn = guidance_lib.make_guided_velocity_fn(
            _a14b_model_fn(model, condition, "high_noise", log_experts),
            high,
            context=context,
            uncond_context=uncond if config.uses_cfg else None,
            guidance=guidance,
            low_noise_params=low,
            low_noise_model_fn=_a14b_model_fn(model, condition, "low_noise", log_experts),
        )
        return solvers.sample_loop(solver, velocity_fn, x_init, sigmas, timesteps)

    return jax.jit(run)


@functools.cache
def _a14b_phase_program(model_config: DiTConfig, config: Stage1Config, name: str, log: bool):
    """Steps [start, stop) with ONE expert, carrying the solver state in and out."""
    model = WanDiT(model_config)
    solver = solvers.make_solver(config.solver)
    low, high = config.guidance().scales
    scale = high if name == "high_noise" else low

    def run(params, x, state, condition, context, uncond, sigmas, timesteps, start, stop):
        velocity_fn = guidance_lib.make_guided_velocity_fn(
            _a14b_model_fn(model, condition, name, log),
            params,
            context=context,
            uncond_context=uncond if scale != 1.0 else None,
            guidance=guidance_lib.Guidance(guide_scale=scale),
        )

        def body(i, carry):
            x, state = carry
            v = velocity_fn(x, sigmas[i], timesteps[i], i)
            return solver.step(state, x, v, sigmas, i)

        return jax.lax.fori_loop(start, stop, body, (x, state))

    return jax.jit(run)


ExpertLog = Callable[[str, float], None]
_EXPERT_LOG: list[ExpertLog] = []


def _record_expert(name, timestep) -> None:
    for callback in _EXPERT_LOG:
        callback(str(name), float(timestep))


@contextlib.contextmanager
def _expert_logging(on_expert: ExpertLog | None):
    if on_expert is None:
        yield
        return
    _EXPERT_LOG.append(on_expert)
    try:
        yield
        jax.effects_barrier()  # every debug callback has run
    finally:
        _EXPERT_LOG.remove(on_expert)


def _check_a14b(model_config: DiTConfig, config: Stage1Config, condition) -> None:
    if config.backbone != "a14b":
        raise ValueError("I2V-A14B sampling needs a Stage1Config with backbone 'a14b'")
    channels = model_config.out_dim
    if model_config.in_dim != 2 * channels + A14B_MASK_CHANNELS:
        raise ValueError(
            f"an I2V-A14B expert takes {2 * channels + A14B_MASK_CHANNELS} input channels "
            f"(latent, mask, image latent) for out_dim {channels}, got in_dim {model_config.in_dim}"
        )
    if condition.ndim != 5 or condition.shape[-1] != channels + A14B_MASK_CHANNELS:
        raise ValueError(
            f"condition must be [B, T, h, w, {channels + A14B_MASK_CHANNELS}], "
            f"got {condition.shape}"
        )


def a14b_image_to_video(
    high_params,
    low_params,
    model_config: DiTConfig,
    config: Stage1Config,
    *,
    condition: jax.Array,
    context: jax.Array,
    uncond_context: jax.Array | None = None,
    key: jax.Array,
    on_expert: ExpertLog | None = None,
) -> jax.Array:
    """I2V-A14B sampling with the expert switch -> latents [B, T, h, w, out_dim].

    Both experts stay on the device (one compiled program). condition: [B, T, h, w, 20] from
    `a14b_condition`. on_expert(name, timestep) is called on the host for every expert
    forward ('high_noise' or 'low_noise'), e.g. to count them.
    """
    _check_a14b(model_config, config, condition)
    uncond = _uncond(config, context, uncond_context)
    noise = initial_noise(key, (*condition.shape[:4], model_config.out_dim))
    sigmas, timesteps = solvers.as_schedule_arrays(config.make_schedule())
    program = _a14b_program(model_config, config, on_expert is not None)
    with _expert_logging(on_expert):
        out = program(high_params, low_params, noise, condition, context, uncond, sigmas, timesteps)
        if on_expert is not None:
            jax.block_until_ready(out)
    return out


def a14b_image_to_video_swapping(
    load_high: Callable[[], object],
    load_low: Callable[[], object],
    model_config: DiTConfig,
    config: Stage1Config,
    *,
    condition: jax.Array,
    context: jax.Array,
    uncond_context: jax.Array | None = None,
    key: jax.Array,
    on_expert: ExpertLog | None = None,
    release: Callable[[object], None] | None = None,
) -> jax.Array:
    """`a14b_image_to_video` with one expert in memory at a time (half the weight memory).

    The high-noise steps are a prefix of the schedule: load_high() runs them, release(params)
    frees it, then load_low() runs the rest. The solver state crosses over, so the result
    equals the single-program version (up to float reassociation).
    """
    _check_a14b(model_config, config, condition)
    uncond = _uncond(config, context, uncond_context)
    x = initial_noise(key, (*condition.shape[:4], model_config.out_dim))
    schedule = config.make_schedule()
    sigmas, timesteps = solvers.as_schedule_arrays(schedule)
    switch = config.guidance().num_high_noise_steps(schedule.timesteps)
    state = solvers.make_solver(config.solver).init(x)
    phases = [("high_noise", load_high, 0, switch), ("low_noise", load_low, switch, len(timesteps))]
    with _expert_logging(on_expert):
        for name, load, start, stop in phases:
            if start == stop:
                continue
            params = load()
            program = _a14b_phase_program(model_config, config, name, on_expert is not None)
            x, state = program(
                params, x, state, condition, context, uncond, sigmas, timesteps, start, stop
            )
            if release is not None:
                jax.block_until_ready(x)
                release(params)
            del params
        jax.block_until_ready(x)
    return x


def expert_steps(config: Stage1Config) -> dict[str, int]:
    """How many of the schedule's steps each expert runs (host-side, from the timesteps)."""
    timesteps = config.make_schedule().timesteps
    if config.backbone != "a14b":
        return {"dit": int(timesteps.shape[0])}
    high = config.guidance().num_high_noise_steps(timesteps)
    return {"high_noise": high, "low_noise": int(np.size(timesteps)) - high}


def _uncond(config: Stage1Config, context, uncond_context):
    if not config.uses_cfg:
        return jnp.zeros_like(context)  # unused: the unconditional forward is skipped
    if uncond_context is None:
        raise ValueError("a Stage I guide scale != 1 needs uncond_context (negative prompt)")
    return uncond_context
