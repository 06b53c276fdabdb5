"""What the VAE memory benchmark runs (benchmarks/vae_memory.py): the benchmark VAE, the worker
cases (each in a fresh process), XLA memory plans of the chunk programs and tiling errors."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common

BENCH_CONFIG = dict(
    variant="wan22", base_dim=32, dec_dim=32, num_res_blocks=2, z_dim=48, patch_size=2
)  # Wan2.2 structure (residual stages, 2x2 patchify, z=48) at 1/5-1/8 of the real widths


# --------------------------------------------------------------------------------------------
# Helpers shared by the workers


def bench_config():
    from swifti2v_jax.models import vae

    return vae.VAEConfig(**BENCH_CONFIG)


def synthetic_frames(start: int, count: int, size: int) -> np.ndarray:
    """Smooth moving pattern in [-1, 1], frames [start, start + count): [1, count, S, S, 3]."""
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    frames = []
    for t in range(start, start + count):
        phase = 0.15 * t
        rgb = [np.sin(6 * x + phase + c) * np.cos(4 * y - 0.5 * phase + 2 * c) for c in range(3)]
        frames.append(np.stack(rgb, -1))
    return np.asarray(frames, np.float32)[None]


def reset_peak_rss() -> int:
    """Resets the kernel's RSS high-water mark; returns the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def diffusers_kwargs(config) -> dict:
    from swifti2v_jax.models import vae

    return dict(
        base_dim=config.base_dim,
        decoder_base_dim=config.dec_dim,
        z_dim=config.z_dim,
        num_res_blocks=config.num_res_blocks,
        is_residual=True,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        patch_size=config.patch_size,
        scale_factor_spatial=vae.spatial_factor(config),
        latents_mean=list(config.latents_mean),
        latents_std=list(config.latents_std),
    )


def load_params(weights: str):
    from conversion.common import open_source
    from conversion.vae import params_from_source

    config, params = params_from_source(open_source(Path(weights)))
    return config, jax.tree.map(jnp.asarray, params)


def use_compile_cache(directory: str):
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# --------------------------------------------------------------------------------------------
# Workers


def worker_jax_full(task: dict) -> dict:
    from swifti2v_jax.models import vae

    use_compile_cache(task["cache_dir"])
    config, params = load_params(task["weights"])
    video = jnp.asarray(synthetic_frames(0, task["frames"], task["size"]))
    start = time.perf_counter()
    latents = common.block(vae.encode(params, config, video))
    common.block(vae.decode(params, config, latents))
    first_call = time.perf_counter() - start
    baseline = reset_peak_rss()
    encode_s = common.time_call(lambda: vae.encode(params, config, video))
    decode_s = common.time_call(lambda: vae.decode(params, config, latents))
    peak = common.peak_rss_bytes()
    # XLA's plan of the two scanned programs for this frame count
    plans = {}
    _, enc_cache = jax.eval_shape(
        lambda p, v: vae._encode_step(p, config, None, v, first=True), params, video[:, :1]
    )
    plans["encode_rest"] = common.memory_of(
        vae._encode_rest_program.lower(
            params, config, enc_cache, latents[:, :1], video[:, 1:]
        ).compile()
    )
    first_pixels, dec_cache = jax.eval_shape(
        lambda p, z: vae._decode_step(p, config, None, z, first=True), params, latents[:, :1]
    )
    plans["decode_rest"] = common.memory_of(
        vae._decode_rest_program.lower(
            params, config, dec_cache, first_pixels, latents[:, 1:]
        ).compile()
    )
    return dict(
        encode_s=encode_s,
        decode_s=decode_s,
        first_call_s=first_call,
        peak_rss=peak,
        baseline_rss=baseline,
        xla=plans,
    )


def _stream_video(encoder, decoder, frames: int, size: int) -> tuple[int, float]:
    """Chunk-by-chunk encode -> decode of a generated video; returns (frames out, checksum)."""
    encoder.reset()
    decoder.reset()
    produced, checksum = 0, 0.0
    start = 0
    while start < frames:
        count = 1 if start == 0 else 4
        latents = encoder.push(synthetic_frames(start, count, size))
        start += count
        if latents is not None:
            pixels = decoder.push(latents)
            checksum += float(jnp.sum(pixels))  # consume (and synchronise), then drop
            produced += pixels.shape[1]
    encoder.finish()
    return produced, checksum


def worker_jax_stream(task: dict) -> dict:
    from swifti2v_jax.models import vae

    use_compile_cache(task["cache_dir"])
    config, params = load_params(task["weights"])
    encoder = vae.StreamingEncoder(params, config)
    decoder = vae.StreamingDecoder(params, config)
    start = time.perf_counter()
    # compiles (or loads) the four chunk programs and brings the allocator to steady state
    _stream_video(encoder, decoder, 17, task["size"])
    warmup = time.perf_counter() - start
    baseline = reset_peak_rss()
    start = time.perf_counter()
    produced, _ = _stream_video(encoder, decoder, task["frames"], task["size"])
    seconds = time.perf_counter() - start
    if produced != task["frames"]:
        raise RuntimeError(f"streamed {produced} frames, expected {task['frames']}")
    return dict(
        seconds=seconds,
        warmup_s=warmup,
        peak_rss=common.peak_rss_bytes(),
        baseline_rss=baseline,
    )


def worker_diffusers(task: dict) -> dict:
    import torch
    from diffusers import AutoencoderKLWan

    config = bench_config()
    torch.manual_seed(0)
    model = AutoencoderKLWan(**diffusers_kwargs(config)).eval()
    model.load_state_dict(torch.load(task["weights"]))
    video = torch.from_numpy(synthetic_frames(0, task["frames"], task["size"]))
    video = video.permute(0, 4, 1, 2, 3).contiguous()
    with torch.no_grad():
        model.decode(model.encode(video[:, :, :1]).latent_dist.mean)  # warm-up
        baseline = reset_peak_rss()
        start = time.perf_counter()
        mean = model.encode(video).latent_dist.mean
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        model.decode(mean)
        decode_s = time.perf_counter() - start
    return dict(
        encode_s=encode_s,
        decode_s=decode_s,
        peak_rss=common.peak_rss_bytes(),
        baseline_rss=baseline,
        torch_threads=torch.get_num_threads(),
    )


WORKERS = {
    "jax_full": worker_jax_full,
    "jax_stream": worker_jax_stream,
    "diffusers": worker_diffusers,
}


# --------------------------------------------------------------------------------------------
# In-process measurements


def stream_step_plans(params, config, size: int) -> dict:
    """XLA memory plans of the four streaming chunk programs (independent of frame count)."""
    from swifti2v_jax.models import vae

    s = vae.spatial_factor(config)
    frame = jax.ShapeDtypeStruct((1, 1, size, size, 3), jnp.float32)
    frames = jax.ShapeDtypeStruct((1, 4, size, size, 3), jnp.float32)
    latent = jax.ShapeDtypeStruct((1, 1, size // s, size // s, config.z_dim), jnp.float32)
    return _chunk_plans(params, config, frame, frames, latent)


def _chunk_plans(params, config, frame, frames, latent) -> dict:
    from swifti2v_jax.models import vae

    plans = {}
    start = time.perf_counter()
    plans["encode_first"] = common.memory_of(
        vae._encode_step.lower(params, config, None, frame, True).compile()
    )
    _, cache = jax.eval_shape(
        lambda p, v: vae._encode_step(p, config, None, v, first=True), params, frame
    )
    plans["encode_step"] = common.memory_of(
        vae._encode_step.lower(params, config, cache, frames, False).compile()
    )
    plans["encode_cache_bytes"] = vae.cache_bytes(cache)
    plans["decode_first"] = common.memory_of(
        vae._decode_step.lower(params, config, None, latent, True).compile()
    )
    _, cache = jax.eval_shape(
        lambda p, z: vae._decode_step(p, config, None, z, first=True), params, latent
    )
    compile_start = time.perf_counter()
    plans["decode_step"] = common.memory_of(
        vae._decode_step.lower(params, config, cache, latent, False).compile()
    )
    plans["decode_step_compile_s"] = time.perf_counter() - compile_start
    plans["decode_cache_bytes"] = vae.cache_bytes(cache)
    plans["total_s"] = time.perf_counter() - start
    return plans


def full_size_plans(height: int, width: int, tile: int, overlap: int) -> dict:
    """The real Wan2.2 VAE at height x width, from abstract shapes only."""
    from swifti2v_jax.models import vae
    from swifti2v_jax.presets import vae as vae_configs

    out = {}
    for dtype in ("float32", "bfloat16"):
        config = vae.as_config(vae_configs.wan22()).replace(dtype=dtype)
        params = vae.abstract_params(config)
        frame = jax.ShapeDtypeStruct((1, 1, height, width, 3), jnp.float32)
        frames = jax.ShapeDtypeStruct((1, 4, height, width, 3), jnp.float32)
        latent = jax.ShapeDtypeStruct((1, 1, height // 16, width // 16, 48), jnp.float32)
        out[dtype] = _chunk_plans(params, config, frame, frames, latent)
        if dtype == "float32":
            # tiled streaming decoder: the same step on one tile at a time, a cache per tile
            tiling = vae.make_tiling(height // 16, width // 16, tile, overlap)
            tile_latent = jax.ShapeDtypeStruct(
                (1, 1, tiling.tile_h, tiling.tile_w, 48), jnp.float32
            )
            _, tile_cache = jax.eval_shape(
                lambda p, z, config=config: vae._decode_step(p, config, None, z, first=True),
                params,
                tile_latent,
            )
            out["tiled_stream_float32"] = dict(
                tile_size=tile,
                tile_overlap=overlap,
                tiles=len(tiling.origins),
                step_plan=common.memory_of(
                    vae._decode_step.lower(params, config, tile_cache, tile_latent, False).compile()
                ),
                tile_cache_bytes=vae.cache_bytes(tile_cache),
                all_caches_bytes=len(tiling.origins) * vae.cache_bytes(tile_cache),
            )
    return out


def tiling_errors(params, config, size: int, frames: int) -> list[dict]:
    """Tiled vs untiled decode of the latents of the synthetic video."""
    from swifti2v_jax.models import vae

    latents = vae.encode(params, config, jnp.asarray(synthetic_frames(0, frames, size)))
    untiled = np.asarray(vae.decode(params, config, latents))
    rows = []
    latent_size = size // vae.spatial_factor(config)
    layouts = ((latent_size // 2 - 2, 2), (latent_size // 2, 4), (3 * latent_size // 4, 4))
    for tile, overlap in layouts:
        tiled = np.asarray(
            vae.decode(params, config, latents, tile_size=tile, tile_overlap=overlap)
        )
        diff = np.abs(tiled - untiled)
        tiling = vae.make_tiling(latent_size, latent_size, tile, overlap)
        rows.append(
            dict(
                tile_size=tile,
                tile_overlap=overlap,
                tiles=len(tiling.origins),
                # tiles are spread evenly, so the real overlap can exceed the requested one
                actual_min_overlap=min(
                    tiling.tile_h - (b - a) for a, b in zip(tiling.starts_h, tiling.starts_h[1:])
                ),
                max_abs_diff=float(diff.max()),
                mean_abs_diff=float(diff.mean()),
                max_abs_ref=float(np.abs(untiled).max()),
            )
        )
    return rows
