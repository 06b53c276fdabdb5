"""Spatially tiled encode / decode: overlapping tiles run one by one, blended with ramps.

The tile layout (`make_tiling`) and the blend (`_tile_arrays`, `_add_tile`) are the one rule
for both directions and for the streaming decoder: tiles are given in latent pixels, ramps
blend the overlaps in the output space (pixels for decode, latent pixels for encode).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from swifti2v_jax.models import vae_chunks
from swifti2v_jax.models.vae_chunks import _decode_frames, _decode_rest_program, _decode_step
from swifti2v_jax.models.vae_config import (
    VAEConfig,
    _check_frame_count,
    _check_latents,
    _check_video,
    as_config,
    num_pixel_frames,
    spatial_factor,
)

# ---------------------------------------------------------------------------------------------
# Spatial tiling (decode): overlapping latent tiles, each decoded on its own, blended with
# linear ramps over the overlaps. Seams differ from the untiled decode (less context).


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Static tile layout in latent pixels: equal-sized tiles at the given starts."""

    tile_h: int
    tile_w: int
    starts_h: tuple[int, ...]
    starts_w: tuple[int, ...]

    @property
    def origins(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.starts_h for x in self.starts_w]


def _tile_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    if tile >= length:
        return (0,)
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return tuple(round(i * (length - tile) / (count - 1)) for i in range(count))


def make_tiling(latent_h: int, latent_w: int, tile_size, tile_overlap: int) -> Tiling | None:
    """Tile layout for a latent of latent_h x latent_w; None when one tile covers everything."""
    tile_h, tile_w = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)
    if min(tile_h, tile_w) < 1 or tile_overlap < 0 or tile_overlap >= min(tile_h, tile_w):
        raise ValueError(
            f"need tile_size >= 1 and 0 <= tile_overlap < tile_size (latent pixels), got "
            f"tile_size={tile_size}, tile_overlap={tile_overlap}"
        )
    tile_h, tile_w = min(tile_h, latent_h), min(tile_w, latent_w)
    tiling = Tiling(
        tile_h,
        tile_w,
        _tile_starts(latent_h, tile_h, tile_overlap),
        _tile_starts(latent_w, tile_w, tile_overlap),
    )
    return None if len(tiling.origins) == 1 else tiling


def _ramp_weights(starts, tile: int, scale: int) -> np.ndarray:
    """[n_tiles, tile*scale] weights: linear ramps where a tile overlaps its neighbours."""
    weights = np.ones((len(starts), tile * scale), np.float32)
    for i, start in enumerate(starts):
        if i > 0:
            overlap = (starts[i - 1] + tile - start) * scale
            if overlap > 0:
                weights[i, :overlap] = np.arange(1, overlap + 1) / (overlap + 1)
        if i < len(starts) - 1:
            overlap = (start + tile - starts[i + 1]) * scale
            if overlap > 0:
                weights[i, -overlap:] = np.arange(overlap, 0, -1) / (overlap + 1)
    return weights


def _tile_arrays(tiling: Tiling, scale: int):
    """Per-tile latent origins [n, 2] and pixel weights [n, TH, TW], plus the total weight."""
    wh = _ramp_weights(tiling.starts_h, tiling.tile_h, scale)
    ww = _ramp_weights(tiling.starts_w, tiling.tile_w, scale)
    origins = np.array(tiling.origins, np.int32)
    weights = np.stack(
        [wh[i][:, None] * ww[j][None, :] for i in range(len(wh)) for j in range(len(ww))]
    )
    height = (tiling.starts_h[-1] + tiling.tile_h) * scale
    width = (tiling.starts_w[-1] + tiling.tile_w) * scale
    total = np.zeros((height, width), np.float32)
    for (y, x), weight in zip(origins * scale, weights):
        total[y : y + weight.shape[0], x : x + weight.shape[1]] += weight
    return origins, weights, total


def _latent_tile(latents, origin, tiling: Tiling):
    b, t, _, _, z = latents.shape
    start = (0, 0, origin[0], origin[1], 0)
    return lax.dynamic_slice(latents, start, (b, t, tiling.tile_h, tiling.tile_w, z))


def _place(out, pixels, origin, scale):
    """Adds (already weighted) tile pixels into `out` at the tile's pixel origin."""
    start = (0, 0, origin[0] * scale, origin[1] * scale, 0)
    region = lax.dynamic_slice(out, start, pixels.shape)
    return lax.dynamic_update_slice(out, region + pixels, start)


@jax.jit
def _add_tile(out, values, weight, y, x):
    """out += values * weight at offset (y, x) (dynamic offsets: one program for all tiles)."""
    start = (0, 0, y, x, 0)
    region = lax.dynamic_slice(out, start, values.shape)
    return lax.dynamic_update_slice(out, region + values * weight[None, None, :, :, None], start)


def _decode_tiled(params, config: VAEConfig, latents, tiling: Tiling):
    """Tile by tile over the whole video: one tile's decoder state in memory at a time."""
    s = spatial_factor(config)
    origins, weights, total = _tile_arrays(tiling, s)
    b, t, h, w, _ = latents.shape
    out = jnp.zeros((b, num_pixel_frames(config, t), h * s, w * s, 3), jnp.float32)

    def one_tile(out, xs):
        origin, weight = xs
        pixels = _decode_frames(params, config, _latent_tile(latents, origin, tiling))
        return _place(out, pixels * weight[None, None, :, :, None], origin, s), None

    out, _ = lax.scan(one_tile, out, (jnp.asarray(origins), jnp.asarray(weights)))
    return out / jnp.asarray(total)[None, None, :, :, None]


_decode_tiled_program = jax.jit(_decode_tiled, static_argnums=(1, 3))


def decode(params, config, latents, *, tile_size=None, tile_overlap: int = 2):
    """Normalised latents [B, T, h, w, z] -> video [B, 4(T-1)+1, h*s, w*s, 3] in [-1, 1].

    tile_size (latent pixels, int or (h, w)) decodes overlapping spatial tiles one after the
    other and blends them over `tile_overlap` latent pixels: less memory, small seam errors.
    """
    config = as_config(config)
    _check_latents(config, latents)
    tiling = None
    if tile_size is not None:
        tiling = make_tiling(latents.shape[2], latents.shape[3], tile_size, tile_overlap)
    latents = jnp.asarray(latents, jnp.float32)
    if tiling is not None:
        return _decode_tiled_program(params, config, latents, tiling)
    first, cache = _decode_step(params, config, None, latents[:, :1], True)
    if latents.shape[1] == 1:
        return first
    return _decode_rest_program(params, config, cache, first, latents[:, 1:])[0]


# ---------------------------------------------------------------------------------------------
# Spatial tiling (encode): pixel tiles of the whole video encoded one after the other (each
# with the ordinary chunked encode), latent tiles blended with ramps. Only one tile's video
# and encoder cache are on the device at a time; `video` may be a host (numpy) array. The
# encoder's middle attention is global per frame, so a tile sees less context than the whole
# frame: an approximation that improves with the tile size (tests/test_vae.py measures it),
# exact when one tile covers the frame.


def _encode_tiled(params, config: VAEConfig, video, tiling: Tiling):
    s = spatial_factor(config)
    origins, weights, total = _tile_arrays(tiling, 1)
    out = None
    for (y, x), weight in zip(origins.tolist(), weights):
        pixels = video[:, :, y * s : (y + tiling.tile_h) * s, x * s : (x + tiling.tile_w) * s]
        latents = vae_chunks.encode(params, config, pixels)
        if out is None:
            b, t, _, _, z = latents.shape
            h, w = total.shape
            out = jnp.zeros((b, t, h, w, z), jnp.float32)
        out = _add_tile(out, latents, weight, y, x)
    return out / jnp.asarray(total)[None, None, :, :, None]


def encode(params, config, video, *, tile_size=None, tile_overlap: int = 4):
    """Video [B, F, H, W, 3] in [-1, 1], F = 4k+1 -> normalised latents [B, k+1, H/s, W/s, z].

    tile_size (latent pixels, int or (h, w); pixel tiles are s times larger) encodes
    overlapping spatial tiles of the whole video one after the other and blends their latents
    over `tile_overlap` latent pixels: device memory of one tile; approximate (tiles see less
    context than the whole frame), so use the largest tile that fits.
    """
    config = as_config(config)
    _check_video(config, video)
    _check_frame_count(config, video.shape[1])
    tiling = None
    if tile_size is not None:
        s = spatial_factor(config)
        tiling = make_tiling(video.shape[2] // s, video.shape[3] // s, tile_size, tile_overlap)
    if tiling is None:
        return vae_chunks.encode(params, config, video)
    return _encode_tiled(params, config, video, tiling)
