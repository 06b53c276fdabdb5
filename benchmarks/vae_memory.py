"""Peak memory and time of the Wan VAE (JAX) against frame count; streaming vs whole-video paths.

    python -m benchmarks.vae_memory --out benchmarks/results/vae_memory

What it measures (each case in a fresh worker process, see benchmarks/common.py):
- `jax_full`: `vae.encode` then `vae.decode` of a whole video (chunk 0, then a lax.scan over the
  remaining chunks). The input/output videos are in memory, so the process grows with frames;
  XLA's memory plan of the scanned programs shows that only arguments/outputs grow.
- `jax_stream`: a synthetic video generated chunk by chunk goes through `StreamingEncoder` into
  `StreamingDecoder`; decoded frames are reduced to a checksum and dropped. Nothing is kept
  between chunks except the carried caches, so peak memory must not depend on frame count.
- `diffusers`: AutoencoderKLWan encode + decode of the same video with the same weights.
Peak memory = the process' peak RSS (VmHWM) after a warm-up run, with the high-water mark reset
(`/proc/self/clear_refs`) just before the measured run; "delta" subtracts the RSS at that point
(runtime, compiled programs, weights). Times exclude compilation (measured after a warm-up).
Then, in this process: XLA `memory_analysis()` of the chunk programs at the benchmark size and
of the FULL-SIZE Wan2.2 VAE at 2560x1408 (lowered from abstract shapes, nothing allocated), and
the max difference of the spatially tiled decode against the untiled one.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
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


# --------------------------------------------------------------------------------------------
# Report


def write_report(out: Path, results: dict) -> None:
    common.write_json(out / "results.json", results)
    mb = common.fmt_bytes
    sec = common.fmt_seconds
    rows = []
    for frames in results["frames"]:
        full = results["runs"][str(frames)]["jax_full"]
        stream = results["runs"][str(frames)]["jax_stream"]
        torch_run = results["runs"][str(frames)].get("diffusers")
        ratio = "-"
        if torch_run:
            jax_s = full["encode_s"] + full["decode_s"]
            ratio = f"{jax_s / (torch_run['encode_s'] + torch_run['decode_s']):.2f}"
        rows.append(
            [
                frames,
                sec(full["encode_s"]),
                sec(full["decode_s"]),
                mb(full["peak_rss"]),
                mb(full["peak_rss"] - full["baseline_rss"]),
                sec(stream["seconds"]),
                mb(stream["peak_rss"]),
                mb(stream["peak_rss"] - stream["baseline_rss"]),
                sec(torch_run["encode_s"]) if torch_run else "-",
                sec(torch_run["decode_s"]) if torch_run else "-",
                mb(torch_run["peak_rss"] - torch_run["baseline_rss"]) if torch_run else "-",
                ratio,
            ]
        )
    table = common.markdown_table(
        [
            "frames",
            "JAX encode",
            "JAX decode",
            "JAX full peak RSS",
            "(delta)",
            "JAX stream enc+dec",
            "stream peak RSS",
            "(delta)",
            "diffusers encode",
            "diffusers decode",
            "diffusers peak delta",
            "JAX/diffusers time",
        ],
        rows,
    )
    plan_rows = []
    for frames in results["frames"]:
        plans = results["runs"][str(frames)]["jax_full"]["xla"]
        for name, plan in plans.items():
            plan_rows.append(
                [
                    frames,
                    name,
                    mb(plan["argument"]),
                    mb(plan["output"]),
                    mb(plan["temp"]),
                    mb(plan["peak"]),
                ]
            )
    plan_table = common.markdown_table(
        ["frames", "program", "arguments", "outputs", "temp", "peak (arg+out+temp-alias)"],
        plan_rows,
    )
    step = results["stream_step_plans"]
    step_rows = [
        [name, mb(step[name]["argument"]), mb(step[name]["temp"]), mb(step[name]["peak"])]
        for name in ("encode_first", "encode_step", "decode_first", "decode_step")
    ]
    full = results["full_size_2560x1408"]
    full_rows = []
    for dtype in ("float32", "bfloat16"):
        for name in ("encode_step", "decode_step", "decode_first"):
            plan = full[dtype][name]
            full_rows.append(
                [
                    dtype,
                    name,
                    mb(plan["argument"]),
                    mb(plan["output"]),
                    mb(plan["alias"]),
                    mb(plan["temp"]),
                    mb(plan["peak"]),
                ]
            )
    tiled = full["tiled_stream_float32"]
    step = tiled["step_plan"]
    full_rows.append(
        [
            "float32",
            f"one tile's decode step ({tiled['tile_size']}x{tiled['tile_size']} latent)",
            mb(step["argument"]),
            mb(step["output"]),
            mb(step["alias"]),
            mb(step["temp"]),
            mb(step["peak"]),
        ]
    )
    tiled_text = (
        f"{tiled['tiles']} tiles of {tiled['tile_size']}x{tiled['tile_size']} latent pixels "
        f"(overlap {tiled['tile_overlap']}): one tile's cache is {mb(tiled['tile_cache_bytes'])},"
        f" all tiles' caches {mb(tiled['all_caches_bytes'])}. On the device, a tiled streaming "
        f"decoder needs all caches + one tile step's temporaries and output "
        f"(~{mb(tiled['all_caches_bytes'] + step['temp'] + step['output'] - step['alias'])}); "
        f"with `offload_cache=True` only one tile's step (~{mb(step['peak'])})."
    )
    tiling_rows = [
        [
            f"{r['tile_size']} / {r['tile_overlap']}",
            r["tiles"],
            r["actual_min_overlap"],
            f"{r['max_abs_diff']:.3g}",
            f"{r['mean_abs_diff']:.3g}",
        ]
        for r in results["tiling"]
    ]
    flat = results["stream_flatness"]
    caches = (
        f"{mb(full['float32']['decode_cache_bytes'])} in fp32 "
        f"({mb(full['bfloat16']['decode_cache_bytes'])} in bf16), the encoder cache "
        f"{mb(full['float32']['encode_cache_bytes'])} (fp32)"
    )
    full_table = common.markdown_table(
        ["dtype", "program", "arguments", "outputs", "alias", "temp", "peak"], full_rows
    )
    latent = results["tiling_size"] // 16
    tiling_table = common.markdown_table(
        ["tile / overlap", "tiles", "actual overlap", "max abs diff", "mean abs diff"],
        tiling_rows,
    )
    text = f"""# Wan VAE memory and time vs frame count

Generated by `python -m benchmarks.vae_memory --out {out}` on {results["machine"]["platform"]}
({results["machine"]["cpu_count"]} CPU cores, jax {results["machine"]["jax_version"]}), a shared
machine: times are indicative. Config: Wan2.2 structure {results["config"]}, video
{results["size"]}x{results["size"]}, fp32, random weights (the same for JAX and diffusers).
Benchmark wall time: {sec(results["wall_s"])}.

Peak memory is the worker process' peak RSS (VmHWM) during the measured run, with the
high-water mark reset right before it (after a warm-up that compiled everything); "delta"
subtracts the RSS at that moment (Python/JAX runtime, compiled code, weights, inputs).

{table}

**Streaming path flatness** (StreamingEncoder -> StreamingDecoder, frames generated chunk by
chunk and dropped after decoding): peak RSS largest/smallest over {results["frames"]} frames =
**{flat["peak_rss_ratio"]:.3f}** (target <= 1.1; median of {results["stream_repeats"]} runs per
frame count; the largest/smallest spread among the runs of one frame count is up to
{flat["repeat_spread"]:.3f}, the noise level); delta largest/smallest =
{flat["delta_ratio"]:.2f} (deltas of {mb(flat["delta_min"])} .. {mb(flat["delta_max"])}).
The whole-video path grows with the frames it holds (input video, latents, output video).

XLA memory plans of the whole-video programs (chunk 0 is a separate program; these are the
scans over the remaining chunks): temporaries stay flat, only arguments/outputs grow:

{plan_table}

Streaming chunk programs at this size (the same programs for every frame count):

{common.markdown_table(["program", "arguments", "temp", "peak"], step_rows)}

## Full-size Wan2.2 VAE at 2560x1408 (lowered from abstract shapes on CPU, nothing allocated)

XLA `memory_analysis()` of the chunk programs (batch 1; decode step = one latent frame -> 4
pixel frames; encode step = 4 pixel frames -> one latent frame). The decoder cache alone is
{caches}. The input cache is donated and aliased to
the output cache, so peak = arguments + outputs + temp - alias. Decode step compile time:
{sec(full["float32"]["decode_step_compile_s"])} (fp32). bf16 numbers come from the CPU compiler,
which upcasts bf16 convolutions; treat them as an upper bound for accelerators.

{full_table}

Tiled streaming decode at this size: {tiled_text} Whole-video `decode(tile_size=...)` runs
tile by tile over all frames, so it holds one tile's cache (plus the output video).

## Spatial tiling vs untiled decode (benchmark config, random weights)

Latent {latent}x{latent}, {results["tiling_frames"]} frames; tile size / overlap in latent
pixels, linear blending over the overlap. The middle block's attention is global over each
frame, so a tile never sees what the whole frame sees: tiled decoding is an approximation
whatever the overlap (diffusers' tiling has the same property). Random weights spread
information further than trained ones, so seams with real weights should be smaller; the
untiled output is within [-1, 1].

{tiling_table}
"""
    (out / "README.md").write_text(text)


# --------------------------------------------------------------------------------------------


def _median_run(repeats: list[dict]) -> dict:
    """The repeat with the median peak RSS (its own time and baseline), plus all peaks."""
    ordered = sorted(repeats, key=lambda r: r["peak_rss"])
    median = dict(ordered[len(ordered) // 2])
    median["repeat_peaks"] = [r["peak_rss"] for r in repeats]
    median["repeat_seconds"] = [r["seconds"] for r in repeats]
    return median


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vae_memory"))
    parser.add_argument("--frames", default="17,33,65,129")
    parser.add_argument("--diffusers-frames", default="17", help="diffusers is slow on CPU")
    parser.add_argument("--size", type=int, default=128, help="square video size (pixels)")
    parser.add_argument("--stream-repeats", type=int, default=3, help="streaming runs per count")
    parser.add_argument("--tile", type=int, default=32, help="2K tiled step: tile (latent px)")
    parser.add_argument("--tile-overlap", type=int, default=4)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        task = json.loads(args.worker)
        common.emit_worker_result(WORKERS[task["mode"]](task))
        return
    if args.size % 16:
        parser.error(f"--size must be a multiple of 16, got {args.size}")
    frames = [int(f) for f in args.frames.split(",")]
    torch_frames = {int(f) for f in args.diffusers_frames.split(",") if f}
    bad = [f for f in frames if f % 4 != 1]
    if bad:
        parser.error(f"frame counts must be 4k+1, got {bad}")

    import torch
    from diffusers import AutoencoderKLWan

    started = time.perf_counter()
    config = bench_config()
    scratch = Path(tempfile.mkdtemp(prefix="vae_memory_"))
    try:
        torch.manual_seed(0)
        model = AutoencoderKLWan(**diffusers_kwargs(config)).eval()
        with torch.no_grad():  # non-trivial norms and biases
            for name, p in model.named_parameters():
                if name.endswith("gamma"):
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                elif name.endswith("bias"):
                    p.copy_(0.02 * torch.randn_like(p))
        weights = scratch / "vae.pth"
        torch.save(model.state_dict(), weights)
        base = dict(weights=str(weights), size=args.size, cache_dir=str(scratch / "xla_cache"))
        # Every measured streaming worker must have the same history (compiling in-process
        # leaves more memory mapped than loading from the cache), so fill the cache first.
        print("[vae_memory] priming the compilation cache ...", flush=True)
        common.run_worker("benchmarks.vae_memory", {**base, "mode": "jax_stream", "frames": 17})
        runs = {}
        for f in frames:
            runs[str(f)] = {}
            modes = ["jax_full", "jax_stream"] + (["diffusers"] if f in torch_frames else [])
            for mode in modes:
                print(f"[vae_memory] {mode} {f} frames ...", flush=True)
                task = {**base, "mode": mode, "frames": f}
                if mode != "jax_stream":
                    runs[str(f)][mode] = common.run_worker("benchmarks.vae_memory", task)
                    continue
                # process peak RSS varies by a few % from run to run (allocator): median of N
                repeats = [
                    common.run_worker("benchmarks.vae_memory", task)
                    for _ in range(args.stream_repeats)
                ]
                runs[str(f)][mode] = _median_run(repeats)
        streams = [runs[str(f)]["jax_stream"] for f in frames]
        peaks = [s["peak_rss"] for s in streams]
        deltas = [s["peak_rss"] - s["baseline_rss"] for s in streams]
        print(
            "[vae_memory] XLA plans (benchmark size, full size 2560x1408), tiling ...", flush=True
        )
        _, params = load_params(str(weights))
        results = dict(
            machine=common.backend_info() | {"node": platform.node()},
            config=BENCH_CONFIG,
            size=args.size,
            frames=frames,
            runs=runs,
            stream_repeats=args.stream_repeats,
            stream_flatness=dict(
                peak_rss_ratio=max(peaks) / min(peaks),
                repeat_spread=max(max(s["repeat_peaks"]) / min(s["repeat_peaks"]) for s in streams),
                delta_ratio=max(deltas) / max(min(deltas), 1),
                delta_min=min(deltas),
                delta_max=max(deltas),
            ),
            stream_step_plans=stream_step_plans(params, config, args.size),
            full_size_2560x1408=full_size_plans(1408, 2560, args.tile, args.tile_overlap),
            tiling_size=2 * args.size,
            tiling_frames=5,
            tiling=tiling_errors(params, config, 2 * args.size, 5),
        )
        results["wall_s"] = time.perf_counter() - started
        write_report(args.out, results)
        print(f"[vae_memory] wrote {args.out}/results.json and README.md", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
