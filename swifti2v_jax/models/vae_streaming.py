"""Streaming encode / decode: push frames in any grouping, get the pixels `decode` would give.

Tiled streams run in one of two orders (docs/memory.md, "VAE at 2K"):
- frame-major (default): every chunk of frames goes through every tile, so every tile's
  causal cache is alive at once (on the device, or in host memory with `offload_cache`,
  moved in and out at every chunk);
- tile-major (`StreamingDecoder(chunk_latents=K)`, `StreamingEncoder.push_groups` with
  `tile_major`): a whole chunk of K latent frames (a whole push of frames) goes through one
  tile before the next tile starts, so one tile's cache is alive at a time. Caches carry
  over to the next chunk in host memory (`cache_dtype`: float32 is exact, bfloat16 halves
  them and rounds), or are dropped after the stream's last chunk (`total`). The same
  compiled steps in the same order per tile, blended in the same order: bitwise equal to
  frame-major in float32 (tests/test_vae_tile_major.py).
"""

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


@functools.partial(jax.jit, donate_argnums=0)
def _add_tile_at(out, values, weight, t, y, x):
    """out[:, t:, y:, x:] += values * weight, in place (the frame-major `_add_tile`'s
    arithmetic, at a time offset: tile-major blends a whole chunk at once)."""
    start = (0, t, y, x, 0)
    region = lax.dynamic_slice(out, start, values.shape)
    return lax.dynamic_update_slice(out, region + values * weight[None, None, :, :, None], start)


CACHE_DTYPES = ("float32", "bfloat16")
# Bytes the tiled streams asked to move between host and device memory (carried or offloaded
# caches, tile-major pixels): what benchmarks/memory_check.py compares with the plan.
MOVED = {"bytes": 0}


def _count(tree) -> None:
    MOVED["bytes"] += cache_bytes(tree)


def host_device():
    """Where tile-major decodes blend a chunk's pixels (host memory; the device on CPU)."""
    return jax.devices("cpu")[0]


def _stash(cache, dtype: str):
    """A tile's cache -> host (numpy) in `dtype`; float32 keeps every bit."""
    stashed = jax.tree.map(lambda a: np.asarray(jax.device_get(a)).astype(dtype), cache)
    _count(stashed)
    return stashed


def _restore(cache):
    if cache is None:
        return None
    _count(cache)
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), cache)


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
            _count(cache)
            cache = jax.device_put(cache)
        values, cache = step(cache, tile)
        if offload:
            _count(cache)
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

    def __init__(
        self, params, config, tile_size, tile_overlap: int, offload_cache: bool,
        cache_dtype: str = "float32",
    ):  # fmt: skip
        if offload_cache and tile_size is None:
            raise ValueError("offload_cache needs tile_size (it moves one tile's cache at a time)")
        if cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {CACHE_DTYPES}, got {cache_dtype!r}")
        self.params = params
        self.config = as_config(config)
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self.offload_cache = offload_cache
        self.cache_dtype = cache_dtype
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

    def _tile_major(self, step_fn, inputs, first: bool, scale_in: int, scale_out: int, last, out):
        """Every input (a zero-argument callable giving [B, t, ...]) through tile 0, then tile
        1, ...: one tile's cache alive at a time, carried to the next call in host memory
        (dropped when `last`). Outputs blended into `out` (donated) along time, in tile order
        like `_tiled_step`; -> out / total weight."""
        tiling = self._tiling
        th, tw = tiling.tile_h * scale_in, tiling.tile_w * scale_in
        _, weights, total = _tile_arrays(tiling, scale_out)
        if first:
            self._cache = [None] * len(tiling.origins)
        device = out.sharding.device_set.pop() if hasattr(out, "sharding") else None
        for k, (y, x0) in enumerate(tiling.origins):
            cache, t = _restore(self._cache[k]), 0
            self._cache[k] = None  # the host copy is not needed while the tile runs
            for i, make in enumerate(inputs):
                tile = _take_tile(make(), y * scale_in, x0 * scale_in, th, tw)
                values, cache = step_fn(self.params, self.config, cache, tile, first and i == 0)
                if scale_out > 1:  # pixels to the host blend (the same memory on a CPU)
                    _count(values)
                values = jax.device_put(values, device)
                out = _add_tile_at(out, values, weights[k], t, y * scale_out, x0 * scale_out)
                t += values.shape[1]
            self._cache[k] = None if last else _stash(cache, self.cache_dtype)
            del cache
        return out / total[None, None, :, :, None]


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

    `chunk_latents=K` (with `tile_size`) decodes tile-major: latents are buffered until K have
    arrived (or the stream's `total_latents`, or `finish()`), then the K latent frames go
    through one tile after the other, blended in host memory; `push` returns the frames of
    every chunk completed (possibly none). One tile's cache is alive at a time; the caches
    carry over to the next chunk in host memory as `cache_dtype` (float32: bitwise the
    frame-major decode; bfloat16: half the bytes, rounded), none after the last chunk.
    """

    def __init__(
        self, params, config, *, tile_size=None, tile_overlap: int = 2, offload_cache=False,
        chunk_latents: int = 0, total_latents: int | None = None, cache_dtype="float32",
    ):  # fmt: skip
        if chunk_latents < 0:
            raise ValueError(f"chunk_latents must be >= 0, got {chunk_latents}")
        self.chunk_latents, self.total_latents = chunk_latents, total_latents
        super().__init__(params, config, tile_size, tile_overlap, offload_cache, cache_dtype)

    def reset(self):
        super().reset()
        self.latent_frames = 0
        self._buffer = []

    @property
    def buffered(self) -> int:
        return sum(x.shape[1] for x in self._buffer)

    def push(self, latents) -> jax.Array:
        _check_latents(self.config, latents)
        t, h, w = latents.shape[1:4]
        self._continue_stream(latents, h, w, "latents")
        latents = jnp.asarray(latents)
        if self.chunk_latents and self._tiling is not None:
            return self._push_chunked(latents)
        s = spatial_factor(self.config)
        outputs = []
        for i in range(t):
            first = self.latent_frames == 0
            outputs.append(self._step(_decode_step, latents[:, i : i + 1], first, 1, s))
            self.latent_frames += 1
        return jnp.concatenate(outputs, axis=1)

    def _push_chunked(self, latents) -> jax.Array:
        self._buffer.append(latents)
        outputs = []
        while self.buffered >= self.chunk_latents or self._at_end():
            outputs.append(self._decode_buffer(self.chunk_latents))
        return self._joined(outputs)

    def _at_end(self) -> bool:
        total = self.total_latents
        return (
            bool(self._buffer) and total is not None and self.latent_frames + self.buffered >= total
        )

    def finish(self) -> jax.Array:
        """Decodes what is still buffered (chunked decode; nothing otherwise)."""
        outputs = [self._decode_buffer(self.buffered)] if self._buffer else []
        return self._joined(outputs)

    def _joined(self, outputs) -> jax.Array:
        if outputs:
            return jnp.concatenate(outputs, axis=1) if len(outputs) > 1 else outputs[0]
        b, h, w = self._shape
        s = spatial_factor(self.config)
        return jnp.zeros((b, 0, h * s, w * s, 3), jnp.float32, device=host_device())

    def _decode_buffer(self, count: int) -> jax.Array:
        """The next `count` buffered latent frames, tile-major."""
        latents = (
            jnp.concatenate(self._buffer, axis=1) if len(self._buffer) > 1 else self._buffer[0]
        )
        chunk, rest = latents[:, :count], latents[:, count:]
        self._buffer = [rest] if rest.shape[1] else []
        first = self.latent_frames == 0
        n = chunk.shape[1]
        self.latent_frames += n
        last = self.total_latents is not None and self.latent_frames >= self.total_latents
        s, step = spatial_factor(self.config), temporal_factor(self.config)
        pixels = (1 if first else step) + step * (n - 1)
        b, h, w = self._shape
        out = jnp.zeros((b, pixels, h * s, w * s, 3), jnp.float32, device=host_device())
        inputs = [lambda i=i: chunk[:, i : i + 1] for i in range(n)]
        return self._tile_major(_decode_step, inputs, first, 1, s, last, out)


class StreamingEncoder(_TiledStream):
    """Encode a video pushed in any grouping of frames; same latents as `encode`.

    Frames are buffered until they complete a chunk ([frame 0], then groups of
    `temporal_factor`); `push` returns the latent frames completed so far (possibly none).
    `finish()` checks that no frames are left over (the total must be 4k+1).

    With `tile_size` (latent pixels), every spatial tile keeps its own encoder cache and each
    chunk is encoded tile by tile and blended, like `encode(tile_size=...)` (the same latents,
    exactly when one tile covers the frame); `offload_cache=True` keeps the tiles' caches in
    host memory, one tile's on the device at a time.

    `push_groups(groups)` with `tile_major=True` takes whole chunks (callables that make
    them, so the caller can recompute a chunk per tile instead of holding them all) and runs
    them tile-major: one tile's cache alive at a time, carried over to the next call in host
    memory as `cache_dtype` (float32: the frame-major latents bit for bit), dropped once
    `total_frames` have been encoded.
    """

    def __init__(
        self, params, config, *, tile_size=None, tile_overlap: int = 4, offload_cache=False,
        tile_major: bool = False, total_frames: int | None = None, cache_dtype="float32",
    ):  # fmt: skip
        self.tile_major, self.total_frames = tile_major, total_frames
        super().__init__(params, config, tile_size, tile_overlap, offload_cache, cache_dtype)

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

    def push_groups(self, groups) -> jax.Array:
        """Whole chunks ([frame 0] first in a stream, then `temporal_factor` frames each),
        given as zero-argument callables -> their latent frames [B, len(groups), h, w, z]."""
        if self.pending_frames:
            raise ValueError("push_groups needs whole chunks; frames are pending from push()")
        if not (self.tile_major and self.tile_size is not None):
            return jnp.concatenate([self.push(make()) for make in groups], axis=1)
        sample = groups[0]()
        step, s = temporal_factor(self.config), spatial_factor(self.config)
        first = self._cache is None
        sizes = [1 if first else step] + [step] * (len(groups) - 1)
        if sample.shape[1] != sizes[0]:
            raise ValueError(f"the first group needs {sizes[0]} frame(s), got {sample.shape[1]}")
        _check_video(self.config, sample, what="frames")
        b, _, h, w, _ = sample.shape
        self._continue_stream(sample, h // s, w // s, "frames")
        if self._tiling is None:  # one tile covers the frame
            return jnp.concatenate([self.push(make()) for make in groups], axis=1)
        self.frames_in += sum(sizes)
        last = self.total_frames is not None and self.frames_in >= self.total_frames
        out = jnp.zeros((b, len(groups), h // s, w // s, self.config.z_dim), jnp.float32)
        return self._tile_major(_encode_step, groups, first, s, 1, last, out)

    def finish(self):
        if self.pending_frames:
            raise ValueError(
                f"{self.pending_frames} frame(s) left over after {self.frames_in} frames: the "
                f"VAE needs {temporal_factor(self.config)}k+1 frames in total"
            )


def cache_bytes(cache) -> int:
    """Size of a cache pytree in bytes (for memory reports)."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache))
