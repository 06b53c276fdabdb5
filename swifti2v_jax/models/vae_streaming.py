"""Streaming encode / decode: push frames in any grouping, get the pixels `decode` would give."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from swifti2v_jax.models.vae_chunks import _decode_step, _encode_step
from swifti2v_jax.models.vae_config import (
    _check_latents,
    _check_video,
    as_config,
    spatial_factor,
    temporal_factor,
)
from swifti2v_jax.models.vae_tiling import _add_tile, _tile_arrays, make_tiling

# ---------------------------------------------------------------------------------------------
# Streaming


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _take_tile(latent, y, x, height, width):
    b, t, _, _, z = latent.shape
    return lax.dynamic_slice(latent, (0, 0, y, x, 0), (b, t, height, width, z))


class StreamingDecoder:
    """Decode a latent video pushed in any grouping of frames; same pixels as `decode`.

    `push(latents [B, t, h, w, z])` returns the pixel frames those latent frames complete
    (1 for the very first latent frame, `temporal_factor` for every later one). The decoder
    cache is carried between calls (one compiled step, so memory does not grow with length).

    With `tile_size`, every spatial tile keeps its own cache and runs the same compiled step,
    one tile after the other, blended like `decode(tile_size=...)`: per-step activations shrink
    to one tile's, the caches of all tiles stay. `offload_cache=True` keeps those caches in host
    memory and moves one tile's cache to the device at a time, so the device holds a single
    tile's state (at the cost of host transfers).
    """

    def __init__(
        self, params, config, *, tile_size=None, tile_overlap: int = 2, offload_cache=False
    ):
        if offload_cache and tile_size is None:
            raise ValueError("offload_cache needs tile_size (it moves one tile's cache at a time)")
        self.params = params
        self.config = as_config(config)
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self.offload_cache = offload_cache
        self.reset()

    def reset(self):
        self._cache = None
        self._shape = None
        self._tiling = None
        self.latent_frames = 0

    def push(self, latents) -> jax.Array:
        _check_latents(self.config, latents)
        b, t, h, w, _ = latents.shape
        if self._shape is None:
            self._shape = (b, h, w)
            if self.tile_size is not None:
                self._tiling = make_tiling(h, w, self.tile_size, self.tile_overlap)
        elif (b, h, w) != self._shape:
            raise ValueError(
                f"latents of shape {latents.shape} do not continue the stream of batch/size "
                f"{self._shape}; call reset() to start a new video"
            )
        latents = jnp.asarray(latents)
        outputs = []
        for i in range(t):
            first = self.latent_frames == 0
            frame = latents[:, i : i + 1]
            if self._tiling is None:
                pixels, self._cache = _decode_step(
                    self.params, self.config, self._cache, frame, first
                )
            else:
                pixels = self._decode_tiles(frame, first)
            outputs.append(pixels)
            self.latent_frames += 1
        return jnp.concatenate(outputs, axis=1)

    def _decode_tiles(self, frame, first: bool):
        tiling, s = self._tiling, spatial_factor(self.config)
        _, weights, total = _tile_arrays(tiling, s)
        if first:
            self._cache = [None] * len(tiling.origins)
        b, _, h, w, _ = frame.shape
        out = None
        for k, (y, x) in enumerate(tiling.origins):
            tile = _take_tile(frame, y, x, tiling.tile_h, tiling.tile_w)
            cache = self._cache[k]
            if self.offload_cache and cache is not None:
                cache = jax.device_put(cache)
            pixels, cache = _decode_step(self.params, self.config, cache, tile, first)
            self._cache[k] = jax.device_get(cache) if self.offload_cache else cache
            if out is None:
                out = jnp.zeros((b, pixels.shape[1], h * s, w * s, 3), jnp.float32)
            out = _add_tile(out, pixels, weights[k], y * s, x * s)
        return out / total[None, None, :, :, None]


class StreamingEncoder:
    """Encode a video pushed in any grouping of frames; same latents as `encode`.

    Frames are buffered until they complete a chunk ([frame 0], then groups of
    `temporal_factor`); `push` returns the latent frames completed so far (possibly none).
    `finish()` checks that no frames are left over (the total must be 4k+1).
    """

    def __init__(self, params, config):
        self.params = params
        self.config = as_config(config)
        self.reset()

    def reset(self):
        self._cache = None
        self._pending = None
        self._shape = None
        self.frames_in = 0

    @property
    def pending_frames(self) -> int:
        return 0 if self._pending is None else self._pending.shape[1]

    def push(self, frames) -> jax.Array | None:
        _check_video(self.config, frames, what="frames")
        b, t, h, w, _ = frames.shape
        if self._shape is None:
            self._shape = (b, h, w)
        elif (b, h, w) != self._shape:
            raise ValueError(
                f"frames of shape {frames.shape} do not continue the stream of batch/size "
                f"{self._shape}; call reset() to start a new video"
            )
        frames = jnp.asarray(frames, jnp.float32)
        self._pending = (
            frames if self._pending is None else jnp.concatenate([self._pending, frames], 1)
        )
        self.frames_in += t
        outputs = []
        while True:
            need = 1 if self._cache is None else temporal_factor(self.config)
            if self.pending_frames < need:
                break
            chunk, self._pending = self._pending[:, :need], self._pending[:, need:]
            latent, self._cache = _encode_step(
                self.params, self.config, self._cache, chunk, self._cache is None
            )
            outputs.append(latent)
        return jnp.concatenate(outputs, axis=1) if outputs else None

    def finish(self):
        if self.pending_frames:
            raise ValueError(
                f"{self.pending_frames} frame(s) left over after {self.frames_in} frames: the "
                f"VAE needs {temporal_factor(self.config)}k+1 frames in total"
            )


def cache_bytes(cache) -> int:
    """Size of a cache pytree in bytes (for memory reports)."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache))
