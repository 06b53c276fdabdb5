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

from benchmarks import common
from benchmarks.vae_memory_cases import (
    BENCH_CONFIG,
    WORKERS,
    bench_config,
    diffusers_kwargs,
    full_size_plans,
    load_params,
    stream_step_plans,
    tiling_errors,
)
from benchmarks.vae_memory_report import write_report
from swifti2v_jax.models import vae_config

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
    for count in frames:
        problem = vae_config.frame_count_problem(count, 4)  # the Wan2.2 VAE's stride
        if problem:
            parser.error(f"--frames {problem}")

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
    from swifti2v_jax import cli

    cli.run(main, prog="python -m benchmarks.vae_memory")
