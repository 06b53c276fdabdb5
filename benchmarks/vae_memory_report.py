"""The VAE memory benchmark's report (benchmarks/vae_memory.py): results.json and results.md."""

from __future__ import annotations

from pathlib import Path

from benchmarks import common

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
