"""The hybrid reference and the anchor latent that condition Stage II: the one builder.

Hybrid reference (docs/design.md, "Data flow"): a low-resolution video (the decoded Stage I
output at sampling; a degraded downsampled clip in training data, csg/degradation.py)
upsampled to the target size (bicubic, `jax.image.resize`), with frame 0 replaced by the
full-resolution input image,
encoded with the Stage II (Wan2.2) VAE -> z_ref [B, T, h, w, C]. The anchor is the VAE
latent of the input image alone; the VAE is causal, so it equals z_ref[:, :1]. Sampling,
data preparation and the demo data set all call `encode_hybrid_reference`, so a model is
trained on exactly the references it is sampled with.

`encode_hybrid_reference` never materialises the full-resolution video on the device: it
upsamples one encoder chunk ([frame 0], then 4 frames at a time) and streams it into the VAE
encoder (or, tiled, into a host-memory video that is encoded one spatial tile at a time).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.models import vae as vae_lib

RESIZE_METHOD = "bicubic"  # every pixel-space resize of a reference (up and down)


@functools.partial(jax.jit, static_argnames=("height", "width"))
def resize_frames(frames: jax.Array, height: int, width: int) -> jax.Array:
    """[B, n, h, w, 3] in [-1, 1] -> [B, n, height, width, 3], bicubic, clipped to [-1, 1].

    Also used to downsample (jax.image.resize antialiases then)."""
    batch, count, _, _, channels = frames.shape
    resized = jax.image.resize(
        frames.astype(jnp.float32), (batch, count, height, width, channels), method=RESIZE_METHOD
    )
    return jnp.clip(resized, -1.0, 1.0)


def _check(video_low: jax.Array, image: jax.Array) -> None:
    if video_low.ndim != 5 or video_low.shape[-1] != 3:
        raise ValueError(f"video_low must be [B, F, h, w, 3], got {video_low.shape}")
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[0] != video_low.shape[0]:
        raise ValueError(
            f"image must be [B, H, W, 3] with the video's batch {video_low.shape[0]}, "
            f"got {image.shape}"
        )


def hybrid_reference(video_low: jax.Array, image: jax.Array) -> jax.Array:
    """The whole hybrid reference video [B, F, H, W, 3] (H, W from `image`).

    Frame 0 is `image` exactly; frames 1.. are video_low upsampled. Memory: the whole
    full-resolution clip; the pipeline uses `encode_hybrid_reference` instead.
    """
    _check(video_low, image)
    height, width = image.shape[1:3]
    rest = resize_frames(video_low[:, 1:], height, width)
    return jnp.concatenate([image[:, None].astype(jnp.float32), rest], axis=1)


def encode_hybrid_reference(
    vae_params,
    vae_config,
    video_low: jax.Array,
    image: jax.Array,
    on_chunk: Callable[[int], None] | None = None,
    tiles: tuple[int, int] | None = None,
) -> jax.Array:
    """z_ref = VAE-encode(hybrid_reference(video_low, image)), chunk by chunk.

    video_low: [B, F, h, w, 3] decoded Stage I video in [-1, 1], F = 4k + 1.
    image: [B, H, W, 3] input image at the target size in [-1, 1].
    on_chunk(latent_frames_done) is called after every encoder chunk (progress).
    tiles: (tile_size, tile_overlap) in latent pixels: the hybrid reference is assembled in
    host memory chunk by chunk and encoded tile by tile (models/vae_tiling.py), so the device
    holds one tile's video and encoder state.
    """
    _check(video_low, image)
    config = vae_lib.as_config(vae_config)
    step = vae_lib.temporal_factor(config)
    frames = video_low.shape[1]
    if (frames - 1) % step:
        raise ValueError(f"video_low needs {step}k+1 frames, got {frames}")
    height, width = image.shape[1:3]
    if tiles is not None:
        video = np.empty((image.shape[0], frames, height, width, 3), np.float32)
        video[:, 0] = np.asarray(image, np.float32)
        for start in range(1, frames, step):
            chunk = resize_frames(video_low[:, start : start + step], height, width)
            video[:, start : start + step] = np.asarray(chunk)
        latents = vae_lib.encode(
            vae_params, config, video, tile_size=tiles[0], tile_overlap=tiles[1]
        )
        if on_chunk is not None:
            on_chunk(latents.shape[1])
        return latents
    encoder = vae_lib.StreamingEncoder(vae_params, config)
    latents = [encoder.push(image[:, None].astype(jnp.float32))]
    if on_chunk is not None:
        on_chunk(1)
    for start in range(1, frames, step):
        chunk = resize_frames(video_low[:, start : start + step], height, width)
        latents.append(encoder.push(chunk))
        if on_chunk is not None:
            on_chunk(len(latents))
    encoder.finish()
    return jnp.concatenate(latents, axis=1)


def encode_anchor(vae_params, vae_config, image: jax.Array, tiles=None) -> jax.Array:
    """The anchor z_x: the VAE latent of the input image alone -> [B, 1, h, w, C].
    tiles: None or (tile_size, tile_overlap), as in `encode_hybrid_reference`."""
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must be [B, H, W, 3], got {image.shape}")
    tile_size, tile_overlap = tiles if tiles is not None else (None, 4)
    return vae_lib.encode(
        vae_params, vae_config, image[:, None].astype(jnp.float32), tile_size=tile_size,
        tile_overlap=tile_overlap,
    )  # fmt: skip
