"""Stage I with Wan2.2-I2V-A14B (docs/design.md, "Models"), whole clip or in chunks.

The model input is [noisy latent (16) | mask (4) | conditioning latent (16)] on channels: the
conditioning latent encodes (Wan2.1 VAE) a video whose known frames are given and whose other
frames are zeros; the mask says, per pixel frame, which frames are known (4 channels per
latent frame: the VAE's temporal stride, frame 0's entry repeated 4 times). For one clip the
known frame is the image. Two experts: t >= boundary * 1000 runs the high-noise one.
Few-step (Lightning LoRAs merged at conversion): 4 Euler steps, shift 5, guidance 1.

Long clips (`stage1.chunk_latents`): chunk k + 1 is conditioned on the last `overlap` latent
frames of chunk k through that same input: their pixel frames (chunk k decoded) are the
known frames of its conditioning video and mask. Every chunk has one length, so one program
serves them all.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models.dit import DiTConfig, WanDiT
from swifti2v_jax.sampling import guidance as guidance_lib
from swifti2v_jax.sampling import solvers
from swifti2v_jax.sampling.stage1 import (
    TRACES,
    Stage1Config,
    _uncond,
    chunk_length,
    chunk_plan,
    decoded_chunk,
    initial_noise,
)

MASK_CHANNELS = 4  # the pixel-frame mask folded over the VAE's 4-frame temporal stride


def condition_mask(num_known: int, num_frames: int, stride: int = MASK_CHANNELS) -> np.ndarray:
    """[T, stride] mask of latent frames: 1 where the pixel frame is one of the first
    `num_known` (latent 0 = frame 0 repeated; latent j >= 1 = frames 4j-3 .. 4j)."""
    known = np.arange(num_frames) < num_known
    padded = np.concatenate([np.repeat(known[:1], stride), known[1:]])
    return padded.reshape(-1, stride).astype(np.float32)


def a14b_condition(vae_params, vae_config, known: jax.Array, num_frames: int) -> jax.Array:
    """The 20 conditioning channels [mask (4) | latent (16)] -> [B, T, h, w, 20].

    known: [B, H, W, 3] (the image) or [B, n, H, W, 3] (the first n frames) in [-1, 1] at
    the Stage I size; the latent encodes them followed by zero frames (num_frames in all).
    """
    if known.ndim == 4:
        known = known[:, None]
    if known.ndim != 5 or not 1 <= known.shape[1] <= num_frames:
        raise ValueError(f"known frames must be [B, H, W, 3] or [B, n, H, W, 3], got {known.shape}")
    batch, count, height, width, _ = known.shape
    video = jnp.zeros((batch, num_frames, height, width, 3), jnp.float32)
    video = video.at[:, :count].set(known.astype(jnp.float32))
    latent = vae_lib.encode(vae_params, vae_config, video)
    mask = jnp.asarray(condition_mask(count, num_frames), latent.dtype)
    mask = jnp.broadcast_to(mask[None, :, None, None], (*latent.shape[:4], MASK_CHANNELS))
    return jnp.concatenate([mask, latent], axis=-1)


def _model_fn(model: WanDiT, condition, name: str, log_experts: bool):
    """The DiT as a guidance model_fn: [noisy latent | mask | latent], scalar t."""

    def model_fn(p, x, timestep, text):
        if log_experts:  # runs on the host only when this expert's branch runs
            jax.debug.callback(functools.partial(_record_expert, name), timestep)
        model_input = jnp.concatenate([x, condition.astype(x.dtype)], axis=-1)
        t = jnp.broadcast_to(timestep, (x.shape[0],))
        return model.apply({"params": p}, model_input, t, text).astype(jnp.float32)

    return model_fn


@functools.cache
def _program(model_config: DiTConfig, config: Stage1Config, log_experts: bool):
    """All steps, both experts resident; lax.cond picks one per step."""
    model = WanDiT(model_config)
    solver = solvers.make_solver(config.solver)
    guidance = config.guidance()

    def run(high, low, x_init, condition, context, uncond, sigmas, timesteps):
        TRACES["a14b"] += 1
        velocity_fn = guidance_lib.make_guided_velocity_fn(
            _model_fn(model, condition, "high_noise", log_experts),
            high,
            context=context,
            uncond_context=uncond if config.uses_cfg else None,
            guidance=guidance,
            low_noise_params=low,
            low_noise_model_fn=_model_fn(model, condition, "low_noise", log_experts),
        )
        return solvers.sample_loop(solver, velocity_fn, x_init, sigmas, timesteps)

    return jax.jit(run)


@functools.cache
def _phase_program(model_config: DiTConfig, config: Stage1Config, name: str, log: bool):
    """Steps [start, stop) with ONE expert, carrying the solver state in and out."""
    model = WanDiT(model_config)
    solver = solvers.make_solver(config.solver)
    low, high = config.guidance().scales
    scale = high if name == "high_noise" else low

    def run(params, x, state, condition, context, uncond, sigmas, timesteps, start, stop):
        TRACES["a14b"] += 1
        velocity_fn = guidance_lib.make_guided_velocity_fn(
            _model_fn(model, condition, name, log),
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


def _check(model_config: DiTConfig, config: Stage1Config, condition) -> None:
    if config.backbone != "a14b":
        raise ValueError("I2V-A14B sampling needs a Stage1Config with backbone 'a14b'")
    channels = model_config.out_dim
    if model_config.in_dim != 2 * channels + MASK_CHANNELS:
        raise ValueError(
            f"an I2V-A14B expert takes {2 * channels + MASK_CHANNELS} input channels "
            f"(latent, mask, image latent) for out_dim {channels}, got in_dim {model_config.in_dim}"
        )
    if condition.ndim != 5 or condition.shape[-1] != channels + MASK_CHANNELS:
        raise ValueError(
            f"condition must be [B, T, h, w, {channels + MASK_CHANNELS}], got {condition.shape}"
        )


def a14b_image_to_video(
    high,
    low,
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
    """I2V-A14B sampling with the expert switch -> latents [B, T, h, w, out_dim].

    high, low: the experts' parameters (both stay on the device: one compiled program), or
    zero-argument callables that load them: then one expert is resident at a time (half the
    weight memory): load_high() runs the high-noise steps (a prefix of the schedule),
    release(params) frees it, then load_low() runs the rest. The solver state crosses over,
    so both ways agree (up to float reassociation).
    condition: [B, T, h, w, 20] from `a14b_condition`. on_expert(name, timestep) is called on
    the host for every expert forward ('high_noise' or 'low_noise'), e.g. to count them.
    """
    _check(model_config, config, condition)
    uncond = _uncond(config, context, uncond_context)
    x = initial_noise(key, (*condition.shape[:4], model_config.out_dim))
    schedule = config.sampling_schedule
    sigmas, timesteps = solvers.as_schedule_arrays(schedule)
    log = on_expert is not None
    with _expert_logging(on_expert):
        if not callable(high):
            program = _program(model_config, config, log)
            x = program(high, low, x, condition, context, uncond, sigmas, timesteps)
        else:
            switch = config.guidance().num_high_noise_steps(schedule.timesteps)
            state = solvers.make_solver(config.solver).init(x)
            phases = [("high_noise", high, 0, switch), ("low_noise", low, switch, len(timesteps))]
            for name, load, start, stop in phases:
                if start == stop:
                    continue
                params = load()
                program = _phase_program(model_config, config, name, log)
                x, state = program(
                    params, x, state, condition, context, uncond, sigmas, timesteps, start, stop
                )
                if release is not None:
                    jax.block_until_ready(x)
                    release(params)
                del params
        if log:
            jax.block_until_ready(x)
    return x


def a14b_chunks(
    high, low, vae_params, vae_config, model_config: DiTConfig, config: Stage1Config, *,
    image: jax.Array, frames: int, **sampling,
):  # fmt: skip
    """I2V-A14B Stage I chunk by chunk: a generator of `stage1.Chunk`s (see `chunk_plan`).

    image: [B, H, W, 3] at the Stage I size; `sampling`: the keyword arguments of
    `a14b_image_to_video` but `condition` (key: chunk 0's; chunk k draws fold_in(key, k)).
    Chunk k + 1's known frames are the pixel frames of chunk k's last `overlap` latents
    (chunk k decoded on its own, `stage1.Chunk`). A clip that fits one chunk is exactly the
    single pass, decoded.
    """
    num_latent = vae_lib.num_latent_frames(vae_config, frames)
    length = chunk_length(num_latent, config)
    chunk_frames = vae_lib.num_pixel_frames(vae_config, length)
    key = sampling.pop("key")
    previous = None
    for index, (start, num_known) in enumerate(chunk_plan(num_latent, config.chunk_latents,
                                                          config.overlap)):  # fmt: skip
        known = image if previous is None else previous.last_frames(vae_config, num_known)
        condition = a14b_condition(vae_params, vae_config, known, chunk_frames)
        chunk_key = key if index == 0 else jax.random.fold_in(key, index)
        latents = a14b_image_to_video(
            high, low, model_config, config, condition=condition, key=chunk_key, **sampling
        )
        previous = decoded_chunk(
            vae_params, vae_config, index, start, num_known, latents, num_latent
        )
        yield previous
