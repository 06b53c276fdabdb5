"""The hybrid reference and the anchor latent that condition Stage II: the one builder.

Hybrid reference (docs/design.md, "Data flow"): a low-resolution video (the decoded Stage I
output at sampling; a degraded downsampled clip in training data, csg/degradation.py)
upsampled to the target size (bicubic, `jax.image.resize`), with frame 0 replaced by the
full-resolution input image,
encoded with the Stage II (Wan2.2) VAE -> z_ref [B, T, h, w, C]. The anchor is the VAE
latent of the input image alone; the VAE is causal, so it equals z_ref[:, :1]. Sampling,
data preparation and the demo data set all call `encode_hybrid_reference`, so a model is
trained on exactly the references it is sampled with.

`encode_hybrid_reference` never materialises the full-resolution video: it upsamples one
encoder chunk ([frame 0], then 4 frames at a time) and streams it into the VAE encoder;
`HybridReferenceEncoder` does the same for a low-res video that arrives piece by piece (the
streaming pipeline pushes each Stage I chunk as it is decoded).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

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


class HybridReferenceEncoder:
    """z_ref of the hybrid reference, fed the low-res video piece by piece (streaming).

    `push(frames [B, n, h, w, 3])` takes the next decoded low-res frames (clip frame 0 first,
    which is replaced by the image) and returns the z_ref blocks they complete, or None.
    Frames are upsampled and encoded in the groups `encode_hybrid_reference` uses ([frame 0],
    then `temporal_factor` at a time) with the encoder cache carried over, so any grouping of
    pushes gives the same latents bit for bit, holding at most one group of frames.
    tiles: None or (tile_size, tile_overlap, offload_cache) for a spatially tiled encoder
    (vae.StreamingEncoder: one cache per tile, in host memory when offloaded).
    tile_major: each push's groups go through one tile after the other (each group upsampled
    again per tile, so no full-resolution frames are held), the caches carried to the next
    push in host memory as `cache_dtype`, none after `total_frames` (the same latents bit
    for bit in float32; models/vae_streaming.py).
    """

    def __init__(
        self, vae_params, vae_config, image: jax.Array, tiles=None, *, tile_major=False,
        total_frames: int | None = None, cache_dtype: str = "float32",
    ):  # fmt: skip
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"image must be [B, H, W, 3], got {image.shape}")
        self.image = image
        self.config = vae_lib.as_config(vae_config)
        self.step = vae_lib.temporal_factor(self.config)
        self.encoder = vae_lib.StreamingEncoder(
            vae_params, self.config, **_tile_kwargs(tiles), tile_major=tile_major,
            total_frames=total_frames, cache_dtype=cache_dtype,
        )  # fmt: skip
        self.frames_in = 0
        self._pending = None  # low-res frames waiting for a full group

    def push(self, video_low: jax.Array) -> jax.Array | None:
        _check(video_low, self.image)
        if self.encoder.tile_major:
            return self._push_tile_major(video_low)
        height, width = self.image.shape[1:3]
        self.frames_in += video_low.shape[1]
        latents = []
        if self.encoder.frames_in == 0 and video_low.shape[1]:
            latents.append(self.encoder.push(self.image[:, None].astype(jnp.float32)))
            video_low = video_low[:, 1:]  # clip frame 0 is the image
        if self._pending is not None:
            video_low = jnp.concatenate([self._pending, video_low], axis=1)
        usable = video_low.shape[1] // self.step * self.step
        for start in range(0, usable, self.step):
            chunk = resize_frames(video_low[:, start : start + self.step], height, width)
            latents.append(self.encoder.push(chunk))
        self._pending = video_low[:, usable:] if usable < video_low.shape[1] else None
        return jnp.concatenate(latents, axis=1) if latents else None

    def _push_tile_major(self, video_low: jax.Array) -> jax.Array | None:
        height, width = self.image.shape[1:3]
        self.frames_in += video_low.shape[1]
        groups = []
        if self.encoder.frames_in == 0 and video_low.shape[1]:
            groups.append(lambda: self.image[:, None].astype(jnp.float32))
            video_low = video_low[:, 1:]
        if self._pending is not None:
            video_low = jnp.concatenate([self._pending, video_low], axis=1)
        usable = video_low.shape[1] // self.step * self.step
        for start in range(0, usable, self.step):
            low = video_low[:, start : start + self.step]
            groups.append(lambda low=low: resize_frames(low, height, width))
        self._pending = video_low[:, usable:] if usable < video_low.shape[1] else None
        return self.encoder.push_groups(groups) if groups else None

    def finish(self) -> None:
        if self._pending is not None:
            raise ValueError(
                f"video_low needs {self.step}k+1 frames, got {self.frames_in} "
                f"({self._pending.shape[1]} left over)"
            )
        self.encoder.finish()


def encode_hybrid_reference(
    vae_params,
    vae_config,
    video_low: jax.Array,
    image: jax.Array,
    on_chunk: Callable[[int], None] | None = None,
    tiles=None,
) -> jax.Array:
    """z_ref = VAE-encode(hybrid_reference(video_low, image)), chunk by chunk.

    video_low: [B, F, h, w, 3] decoded Stage I video in [-1, 1], F = 4k + 1.
    image: [B, H, W, 3] input image at the target size in [-1, 1].
    on_chunk(latent_frames_done) is called after every encoder chunk (progress).
    tiles: as in `HybridReferenceEncoder`.
    """
    _check(video_low, image)
    config = vae_lib.as_config(vae_config)
    step = vae_lib.temporal_factor(config)
    frames = video_low.shape[1]
    vae_lib.check_frame_count(frames, step, "video_low's frame count")
    encoder = HybridReferenceEncoder(vae_params, config, image, tiles)
    latents = [encoder.push(video_low[:, :1])]
    if on_chunk is not None:
        on_chunk(1)
    for start in range(1, frames, step):
        latents.append(encoder.push(video_low[:, start : start + step]))
        if on_chunk is not None:
            on_chunk(len(latents))
    encoder.finish()
    return jnp.concatenate(latents, axis=1)


def encode_anchor(vae_params, vae_config, image: jax.Array, tiles=None) -> jax.Array:
    """The anchor z_x: the VAE latent of the input image alone -> [B, 1, h, w, C].
    tiles: as in `HybridReferenceEncoder` (one frame: nothing to offload)."""
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must be [B, H, W, 3], got {image.shape}")
    kwargs = _tile_kwargs(tiles)
    kwargs.pop("offload_cache", None)
    return vae_lib.encode(vae_params, vae_config, image[:, None].astype(jnp.float32), **kwargs)


def _tile_kwargs(tiles) -> dict:
    """(tile_size, tile_overlap, offload_cache) or None -> StreamingEncoder keyword arguments."""
    if tiles is None:
        return {}
    tile_size, tile_overlap, offload_cache = tiles
    return dict(tile_size=tile_size, tile_overlap=tile_overlap, offload_cache=offload_cache)
