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


class _TiledStream:
    """What the streaming decoder and encoder share: the tile settings, the check that pushed
    arrays continue the stream, and one cached step over the whole frame or tile by tile (one
    cache per tile, in host memory between steps with `offload_cache`)."""

    def __init__(self, params, config, tile_size, tile_overlap: int, offload_cache: bool):
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

    def _continue_stream(self, x, latent_h: int, latent_w: int, what: str) -> None:
        """Fixes (batch, height, width) and the tiling on the first push; later pushes must
        match."""
        b, _, h, w, _ = x.shape
        if self._shape is None:
            self._shape = (b, h, w)
            if self.tile_size is not None:
                self._tiling = make_tiling(latent_h, latent_w, self.tile_size, self.tile_overlap)
        elif (b, h, w) != self._shape:
            raise ValueError(
                f"{what} of shape {x.shape} do not continue the stream of batch/size "
                f"{self._shape}; call reset() to start a new video"
            )

    def _step(self, step_fn, x, first: bool, scale_in: int, scale_out: int):
        """step_fn(params, config, cache, x, first) -> (out, cache), on the whole frame or on
        every tile (`_tiled_step`); the cache (or the tiles' caches) is kept here."""
        if self._tiling is None:
            out, self._cache = step_fn(self.params, self.config, self._cache, x, first)
            return out
        if first:
            self._cache = [None] * len(self._tiling.origins)
        step = functools.partial(step_fn, self.params, self.config, first=first)
        return _tiled_step(
            step, self._cache, x, self._tiling, scale_in, scale_out, self.offload_cache
        )


class StreamingDecoder(_TiledStream):
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
        super().__init__(params, config, tile_size, tile_overlap, offload_cache)

    def reset(self):
        super().reset()
        self.latent_frames = 0

    def push(self, latents) -> jax.Array:
        _check_latents(self.config, latents)
        t, h, w = latents.shape[1:4]
        self._continue_stream(latents, h, w, "latents")
        latents = jnp.asarray(latents)
        s = spatial_factor(self.config)
        outputs = []
        for i in range(t):
            first = self.latent_frames == 0
            outputs.append(self._step(_decode_step, latents[:, i : i + 1], first, 1, s))
            self.latent_frames += 1
        return jnp.concatenate(outputs, axis=1)


class StreamingEncoder(_TiledStream):
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
        super().__init__(params, config, tile_size, tile_overlap, offload_cache)

    def reset(self):
        super().reset()
        self._pending = None
        self.frames_in = 0

    @property
    def pending_frames(self) -> int:
        return 0 if self._pending is None else self._pending.shape[1]

    def push(self, frames) -> jax.Array | None:
        _check_video(self.config, frames, what="frames")
        t, h, w = frames.shape[1:4]
        s = spatial_factor(self.config)
        self._continue_stream(frames, h // s, w // s, "frames")
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
            outputs.append(self._step(_encode_step, chunk, self._cache is None, s, 1))
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
