"""Compiled chunk programs of the Wan VAE and whole-video encode / decode.

Chunk 0 is its own program (it creates the cache, whose shapes never change afterwards); the
remaining chunks are a `lax.scan` over one compiled step writing into a preallocated output,
so working memory does not grow with frame count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from swifti2v_jax.models.vae_config import (
    VAEConfig,
    _check_frame_count,
    _check_latents,
    _check_video,
    as_config,
    temporal_factor,
)
from swifti2v_jax.models.vae_model import WanVAE, decoder_segments

# ---------------------------------------------------------------------------------------------
# Chunk steps


def _apply(params, config: VAEConfig, cache, x, first: bool, method: str, *args):
    variables = {"params": params}
    if cache is not None:
        variables["cache"] = cache
    model = WanVAE(config)
    method = getattr(WanVAE, method)
    y, state = model.apply(variables, x, first, *args, method=method, mutable=["cache"])
    return y, state["cache"]


def _scan_frames(step, cache, x):
    """Runs `step(cache, frame) -> (y, cache)` on each frame of x in turn; outputs concatenated
    along time into a preallocated buffer (no stacked copy)."""
    frames = x.shape[1]
    if frames == 1:
        return step(cache, x)
    y = jax.eval_shape(lambda c, f: step(c, f)[0], cache, x[:, :1])
    per_frame = y.shape[1]
    out = jnp.zeros((y.shape[0], frames * per_frame, *y.shape[2:]), y.dtype)

    def body(carry, i):
        cache, out = carry
        y, cache = step(cache, lax.dynamic_slice_in_dim(x, i, 1, axis=1))
        return (cache, lax.dynamic_update_slice_in_dim(out, y, i * per_frame, axis=1)), None

    (cache, out), _ = lax.scan(body, (cache, out), jnp.arange(frames))
    return out, cache


def _encode_chunk_fn(params, config: VAEConfig, cache, frames, first: bool):
    """One encoder chunk; the full-resolution front stages go frame by frame."""

    def front(cache, frame):
        return _apply(params, config, cache, frame, first, "encode_segment", 0)

    features, cache = _scan_frames(front, cache, frames)
    return _apply(params, config, cache, features, first, "encode_segment", 1)


def _decode_chunk_fn(params, config: VAEConfig, cache, latents, first: bool):
    """One decoder chunk; after each time-doubling stage the rest runs one frame at a time."""
    last = len(decoder_segments(config)) - 1

    def run(index, cache, x):
        y, cache = _apply(params, config, cache, x, first, "decode_segment", index)
        if index == last:
            return y, cache
        return _scan_frames(functools.partial(run, index + 1), cache, y)

    return run(0, cache, latents)


@functools.partial(jax.jit, static_argnames=("config", "first"), donate_argnames=("cache",))
def _encode_step(params, config, cache, frames, first):
    return _encode_chunk_fn(params, config, cache, frames, first)


@functools.partial(jax.jit, static_argnames=("config", "first"), donate_argnames=("cache",))
def _decode_step(params, config, cache, latents, first):
    return _decode_chunk_fn(params, config, cache, latents, first)


def encode_chunk(params, config, frames, cache=None):
    """One encoder step: (latents, new cache). cache=None starts a video (frames = [frame 0]);
    later calls take `temporal_factor` frames each and produce one latent frame. The cache
    passed in is donated (do not reuse it)."""
    config = as_config(config)
    expected = 1 if cache is None else temporal_factor(config)
    _check_video(config, frames, what="frames")
    if frames.shape[1] != expected:
        raise ValueError(
            f"this encoder chunk takes {expected} frame(s) ({'first' if cache is None else 'later'}"
            f" chunk), got {frames.shape[1]}"
        )
    return _encode_step(params, config, cache, jnp.asarray(frames), cache is None)


def decode_chunk(params, config, latents, cache=None):
    """One decoder step on ONE latent frame: (pixels, new cache). cache=None starts a video
    (1 pixel frame out); later steps give `temporal_factor` frames. The cache is donated."""
    config = as_config(config)
    _check_latents(config, latents)
    if latents.shape[1] != 1:
        raise ValueError(f"decode_chunk takes one latent frame, got {latents.shape[1]}")
    return _decode_step(params, config, cache, jnp.asarray(latents), cache is None)


# ---------------------------------------------------------------------------------------------
# Whole-video encode / decode: chunk 0, then a scan over the remaining chunks.


def _encode_rest(params, config: VAEConfig, cache, first, rest):
    """Latent frame 0 and the cache after chunk 0, plus pixel frames 1.. -> (all latent frames,
    final cache). Returning the cache lets the donated input cache be updated in place."""
    t = temporal_factor(config)
    chunks = rest.shape[1] // t
    b, _, h, w, z = first.shape
    out = jnp.zeros((b, 1 + chunks, h, w, z), first.dtype)
    out = lax.dynamic_update_slice_in_dim(out, first, 0, axis=1)

    def step(carry, i):
        cache, out = carry
        frames = lax.dynamic_slice_in_dim(rest, i * t, t, axis=1)
        latent, cache = _encode_chunk_fn(params, config, cache, frames, False)
        return (cache, lax.dynamic_update_slice_in_dim(out, latent, 1 + i, axis=1)), None

    (cache, out), _ = lax.scan(step, (cache, out), jnp.arange(chunks))
    return out, cache


def _decode_rest(params, config: VAEConfig, cache, first, rest):
    """Pixel frame 0 and the cache after latent frame 0, plus latent frames 1.. -> (all pixels,
    final cache)."""
    t = temporal_factor(config)
    steps = rest.shape[1]
    b, _, h, w, c = first.shape
    out = jnp.zeros((b, 1 + steps * t, h, w, c), first.dtype)
    out = lax.dynamic_update_slice_in_dim(out, first, 0, axis=1)

    def step(carry, i):
        cache, out = carry
        latent = lax.dynamic_slice_in_dim(rest, i, 1, axis=1)
        pixels, cache = _decode_chunk_fn(params, config, cache, latent, False)
        return (cache, lax.dynamic_update_slice_in_dim(out, pixels, 1 + i * t, axis=1)), None

    (cache, out), _ = lax.scan(step, (cache, out), jnp.arange(steps))
    return out, cache


def _decode_frames(params, config: VAEConfig, latents):
    """Whole-video decode inside one traced function (used per tile by the tiled decode)."""
    first, cache = _decode_chunk_fn(params, config, None, latents[:, :1], True)
    if latents.shape[1] == 1:
        return first
    return _decode_rest(params, config, cache, first, latents[:, 1:])[0]


def encode_frames(params, config: VAEConfig, video):
    """Whole-video encode for training: each temporal chunk in one piece, chunks unrolled.

    Same result as `encode`; no scans, so its gradient keeps no per-step copies of an output
    buffer (meant for short training clips: the program grows with the frame count)."""
    t = temporal_factor(config)
    latents, cache = _apply(params, config, None, video[:, :1], True, "encode_chunk")
    outputs = [latents]
    for start in range(1, video.shape[1], t):
        latents, cache = _apply(
            params, config, cache, video[:, start : start + t], False, "encode_chunk"
        )
        outputs.append(latents)
    return jnp.concatenate(outputs, axis=1)


def decode_frames(params, config: VAEConfig, latents):
    """Whole-video decode for training (see `encode_frames`)."""
    pixels, cache = _apply(params, config, None, latents[:, :1], True, "decode_chunk")
    outputs = [pixels]
    for index in range(1, latents.shape[1]):
        pixels, cache = _apply(
            params, config, cache, latents[:, index : index + 1], False, "decode_chunk"
        )
        outputs.append(pixels)
    return jnp.concatenate(outputs, axis=1)


# Chunk 0 is its own program (compiled once per frame size, it creates the cache); the scan
# over the remaining chunks is a second one (compiled per chunk count), which consumes the cache.
_encode_rest_program = jax.jit(_encode_rest, static_argnums=1, donate_argnums=2)
_decode_rest_program = jax.jit(_decode_rest, static_argnums=1, donate_argnums=2)


def encode(params, config, video):
    """Video [B, F, H, W, 3] in [-1, 1], F = 4k+1 -> normalised latents [B, k+1, H/s, W/s, z]."""
    config = as_config(config)
    _check_video(config, video)
    _check_frame_count(config, video.shape[1])
    video = jnp.asarray(video, jnp.float32)
    first, cache = _encode_step(params, config, None, video[:, :1], True)
    if video.shape[1] == 1:
        return first
    return _encode_rest_program(params, config, cache, first, video[:, 1:])[0]
