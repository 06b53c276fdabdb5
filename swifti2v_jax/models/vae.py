"""Wan2.2 (z=48, 4x16x16) and Wan2.1 (z=16, 4x8x8) causal 3D VAEs (docs/design.md, "Models").

Video is `[B, F, H, W, 3]` in [-1, 1] with F = 4k + 1; latents are normalised,
`(mu - latents_mean) / latents_std`, `[B, (F - 1) / 4 + 1, H / s, W / s, z]`.

Everything runs chunk by chunk with an explicit cache pytree (the flax `cache` collection):
encoding takes pixel frames [0], [1..4], [5..8], ... and decoding one latent frame at a time,
exactly like the reference implementation.

This module is the public face; the work is split by job:
    vae_config.py     VAEConfig, latent constants, frame/size arithmetic, input checks
    vae_blocks.py     building blocks (causal convs, resampling, attention)
    vae_model.py      the Flax modules and parameter init
    vae_chunks.py     compiled chunk programs, whole-video encode / decode
    vae_tiling.py     spatially tiled encode / decode
    vae_streaming.py  StreamingEncoder / StreamingDecoder

Public entry points (params = the plain parameter tree, config = `VAEConfig` or a mapping):
    encode(params, config, video, tile_size=None, tile_overlap=4) -> latents
    decode(params, config, latents, tile_size=None, tile_overlap=2) -> video
    encode_chunk / decode_chunk (one step with a carried cache), StreamingEncoder,
    StreamingDecoder (feed any grouping of latent frames, get the same pixels as `decode`).
"""

from swifti2v_jax.models.vae_chunks import (  # noqa: F401  (benchmarks/tests use the programs)
    _decode_rest_program,
    _decode_step,
    _encode_rest_program,
    _encode_step,
    decode_chunk,
    decode_frames,
    encode_chunk,
    encode_frames,
)
from swifti2v_jax.models.vae_config import (
    DTYPES,
    VARIANTS,
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    WAN22_LATENTS_MEAN,
    WAN22_LATENTS_STD,
    VAEConfig,
    as_config,
    check_frame_count,
    frame_count_problem,
    num_latent_frames,
    num_pixel_frames,
    spatial_factor,
    temporal_factor,
)
from swifti2v_jax.models.vae_model import WanVAE, abstract_params, decoder_segments, init_params
from swifti2v_jax.models.vae_streaming import StreamingDecoder, StreamingEncoder, cache_bytes
from swifti2v_jax.models.vae_tiling import (  # noqa: F401
    Tiling,
    _place,
    _tile_arrays,
    decode,
    encode,
    make_tiling,
)

__all__ = [
    "DTYPES",
    "VARIANTS",
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
    "WAN22_LATENTS_MEAN",
    "WAN22_LATENTS_STD",
    "StreamingDecoder",
    "StreamingEncoder",
    "Tiling",
    "VAEConfig",
    "WanVAE",
    "abstract_params",
    "as_config",
    "check_frame_count",
    "frame_count_problem",
    "cache_bytes",
    "decode",
    "decode_chunk",
    "decode_frames",
    "decoder_segments",
    "encode",
    "encode_chunk",
    "encode_frames",
    "init_params",
    "make_tiling",
    "num_latent_frames",
    "num_pixel_frames",
    "spatial_factor",
    "temporal_factor",
]
