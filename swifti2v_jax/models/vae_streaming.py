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


def _tiled_step(step, caches: list, x, tiling, scale_in: int, scale_out: int, offload: bool):
    """One streaming step on every tile of x [B, t, H, W, C], each tile with its own cache in
    `caches` (updated in place; host memory between steps when `offload`), outputs blended
    like the whole-video tiled encode / decode. Tiles are in latent pixels: the input is
    `scale_in` times larger, the output `scale_out` times."""
    _, weights, total = _tile_arrays(tiling, scale_out)
    out = None
    for k, (y, x0) in enumerate(tiling.origins):
        tile = _take_tile(
            x, y * scale_in, x0 * scale_in, tiling.tile_h * scale_in, tiling.tile_w * scale_in
        )
        cache = caches[k]
        if offload and cache is not None:
            cache = jax.device_put(cache)
        values, cache = step(cache, tile)
        caches[k] = jax.device_get(cache) if offload else cache
        if out is None:
            shape = (x.shape[0], values.shape[1], *total.shape, values.shape[-1])
            out = jnp.zeros(shape, jnp.float32)
        out = _add_tile(out, values, weights[k], y * scale_out, x0 * scale_out)
    return out / total[None, None, :, :, None]


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
        if first:
            self._cache = [None] * len(self._tiling.origins)
        step = functools.partial(_decode_step, self.params, self.config, first=first)
        s = spatial_factor(self.config)
        return _tiled_step(step, self._cache, frame, self._tiling, 1, s, self.offload_cache)


class StreamingEncoder:
    """Encode a video pushed in any grouping of frames; same latents as `encode`.

    Frames are buffered until they complete a chunk ([frame 0], then groups of
    `temporal_factor`); `push` returns the latent frames completed so far (possibly none).
    `finish()` checks that no frames are left over (the total must be 4k+1).

    With `tile_size` (latent pixels), every spatial tile keeps its own encoder cache and each
    chunk is encoded tile by tile and blended, like `encode(tile_size=...)` (the same latents,
    exactly when one tile covers the frame); `offload_cache=True` keeps the tiles' caches in
    host memory, one tile's on the device at a time.
    """

    def __init__(
        self, params, config, *, tile_size=None, tile_overlap: int = 4, offload_cache=False
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
        self._pending = None
        self._shape = None
        self._tiling = None
        self.frames_in = 0

    @property
    def pending_frames(self) -> int:
        return 0 if self._pending is None else self._pending.shape[1]

    def push(self, frames) -> jax.Array | None:
        _check_video(self.config, frames, what="frames")
        b, t, h, w, _ = frames.shape
        if self._shape is None:
            if self.tile_size is not None:
                s = spatial_factor(self.config)
                self._tiling = make_tiling(h // s, w // s, self.tile_size, self.tile_overlap)
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
            first = self._cache is None
            if self._tiling is None:
                latent, self._cache = _encode_step(
                    self.params, self.config, self._cache, chunk, first
                )
            else:
                if first:
                    self._cache = [None] * len(self._tiling.origins)
                step = functools.partial(_encode_step, self.params, self.config, first=first)
                s = spatial_factor(self.config)
                latent = _tiled_step(
                    step, self._cache, chunk, self._tiling, s, 1, self.offload_cache
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
