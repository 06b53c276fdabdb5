"""Tile-major VAE streams (models/vae_streaming.py): one tile's causal cache alive at a time.

float32 carried caches: bit for bit the frame-major tiled stream, in any push grouping and
across chunks; bfloat16 caches: close, not equal (the rounding is measured here, the seam
errors at 2K scale in benchmarks/results/vae_tile_major).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swifti2v_jax.csg import reference as reference_lib
from swifti2v_jax.models import vae
from swifti2v_jax.presets import vae as vae_configs


def _tiny(variant="wan22"):
    config = vae.as_config(vae_configs.get(f"tiny_{variant}"))
    params = vae.init_params(config, jax.random.key(3))
    return config, params


def _frame_major(params, config, latents, **tiles):
    decoder = vae.StreamingDecoder(params, config, **tiles)
    return np.concatenate([np.asarray(decoder.push(latents[:, i : i + 1]))
                           for i in range(latents.shape[1])], axis=1)  # fmt: skip


@pytest.mark.parametrize(
    "chunk", [pytest.param(2, marks=pytest.mark.slow), 3, pytest.param(7, marks=pytest.mark.slow)]
)
def test_tile_major_decode_is_bitwise_the_frame_major_decode(chunk):
    config, params = _tiny("wan21")
    latents = jax.random.normal(jax.random.key(2), (1, 7, 3, 4, config.z_dim))
    tiles = dict(tile_size=2, tile_overlap=1)
    expected = _frame_major(params, config, latents, **tiles)
    for total in (7, None):  # known length (last caches dropped) or flushed by finish()
        decoder = vae.StreamingDecoder(
            params, config, chunk_latents=chunk, total_latents=total, **tiles
        )
        pieces = [decoder.push(latents[:, :2]), decoder.push(latents[:, 2:5]),
                  decoder.push(latents[:, 5:])]  # fmt: skip
        pieces.append(decoder.finish())
        out = np.concatenate([np.asarray(p) for p in pieces], axis=1)
        np.testing.assert_array_equal(out, expected)
        if total is not None:  # every chunk came out as soon as it was complete
            assert pieces[-1].shape[1] == 0
            assert all(c is None for c in decoder._cache)  # nothing kept after the end


def test_tile_major_decode_with_bfloat16_caches_is_close_not_equal():
    config, params = _tiny("wan21")
    latents = jax.random.normal(jax.random.key(4), (1, 6, 3, 4, config.z_dim))
    tiles = dict(tile_size=2, tile_overlap=1)
    expected = _frame_major(params, config, latents, **tiles)
    decoder = vae.StreamingDecoder(
        params, config, chunk_latents=2, total_latents=6, cache_dtype="bfloat16", **tiles
    )
    out = np.concatenate([np.asarray(decoder.push(latents[:, i : i + 2])) for i in (0, 2, 4)], 1)
    first_chunk = 1 + 4  # pixel frames before the first carried cache is used
    np.testing.assert_array_equal(out[:, :first_chunk], expected[:, :first_chunk])
    error = np.abs(out - expected).max()
    assert 0 < error < 0.05, error
    with pytest.raises(ValueError, match="cache_dtype"):
        vae.StreamingDecoder(params, config, tile_size=2, cache_dtype="float16")


def _smooth(shape, seed):
    low = jax.random.uniform(jax.random.key(seed), (*shape[:2], shape[2] // 8, shape[3] // 8, 3))
    return jnp.clip(jax.image.resize(2 * low - 1, shape, "bicubic"), -1, 1)


@pytest.mark.slow  # ~25 s on 2 idle cores
def test_tile_major_encode_and_hybrid_reference_are_bitwise_frame_major():
    config, params = _tiny("wan22")
    image = _smooth((1, 1, 64, 96, 3), 5)[:, 0]
    video_low = _smooth((1, 13, 32, 48, 3), 6)
    frame_major = reference_lib.HybridReferenceEncoder(params, config, image, (4, 2, False))
    tile_major = reference_lib.HybridReferenceEncoder(
        params, config, image, (4, 2, False), tile_major=True, total_frames=13
    )
    for encoder in (frame_major, tile_major):
        pieces = [encoder.push(video_low[:, :5]), encoder.push(video_low[:, 5:])]
        encoder.finish()
        encoder.z_ref = np.concatenate([np.asarray(p) for p in pieces], axis=1)
    np.testing.assert_array_equal(tile_major.z_ref, frame_major.z_ref)
    assert all(c is None for c in tile_major.encoder._cache)
