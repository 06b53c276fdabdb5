"""The memory plan against a real run at the scales this machine runs (CPU: device = host).

    python -m benchmarks.memory_check --out benchmarks/results/memory_check

For each case, `sample.py --plan --json` (target local) and then `sample.py --summary` with
the same settings, each a fresh process: the plan's peak of host + device bytes over the
phases against the run's process peak RSS, and the plan's VAE stream bytes (tile caches
carried / offloaded, tile-major pixels) against the bytes the streams moved
(models/vae_streaming.py MOVED, in the summary). Cases: the demo preset as shipped, the
demo models at a mid size (512x256, 33 frames) with the tile-major VAE options of the 2K
presets, and 1001 vs 81 frames with those options (memory flat in the length).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "sample.py"


def tile_major(tile: int, overlap: int) -> tuple[str, ...]:
    """The 2K presets' VAE options at demo scale (the demo VAE: 4 pixels per latent)."""
    return (
        f"--config.memory.decode_tile_size={tile}",
        f"--config.memory.decode_tile_overlap={overlap}",
        "--config.memory.decode_chunk_latents=8", f"--config.memory.encode_tile_size={tile}",
        f"--config.memory.encode_tile_overlap={overlap}",
        "--config.memory.encode_tile_major=True", "--config.memory.vae_cache_dtype=bfloat16",
    )  # fmt: skip


TILE_MAJOR = tile_major(12, 4)  # 8 tiles at 128x64
CASES = {
    "demo (as shipped)": (),
    "demo tile-major VAE": TILE_MAJOR,
    "mid 512x256 33 frames tile-major VAE": (
        "--resolution",
        "512x256",
        "--frames",
        "33",
        *tile_major(48, 8),  # 6 tiles
    ),  # fmt: skip
    "81 frames tile-major VAE": ("--frames", "81", *TILE_MAJOR),
    "1001 frames tile-major VAE": ("--frames", "1001", *TILE_MAJOR),
}


def run(args, tmp: Path) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    base = [sys.executable, str(SAMPLE), "--config.progress=False", *args]
    plan_file, summary = tmp / "plan.json", tmp / "summary.json"
    subprocess.run([*base, "--plan", "--json", str(plan_file)], check=True, env=env,
                   capture_output=True, text=True)  # fmt: skip
    subprocess.run([*base, "--output", str(tmp / "out.mp4"), "--summary", str(summary)],
                   check=True, env=env, capture_output=True, text=True)  # fmt: skip
    plan, measured = json.loads(plan_file.read_text()), json.loads(summary.read_text())
    total = max(p["host_bytes"] + p["device_bytes"] for p in plan["phases"])
    return dict(
        planned_total_bytes=total, planned_host_bytes=plan["host_peak_bytes"],
        measured_peak_rss_bytes=measured["peak_memory_bytes"],
        rss_ratio=round(measured["peak_memory_bytes"] / total, 3),
        planned_vae_stream_bytes=plan["vae_stream_bytes"],
        measured_vae_stream_bytes=measured["vae_stream_bytes"],
        seconds=measured["seconds"]["total"],
    )  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_check"))
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in [n for n in args.cases.split(",") if n]:
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = run(CASES[name], Path(tmp))
        print(name, results[name], flush=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
    mib = lambda b: f"{b / 2**20:.0f}"
    lines = [
        "# Memory plan vs measured (CPU, `python -m benchmarks.memory_check`)", "",
        "MiB. planned = the plan's largest host + device phase (target local: on a CPU the "
        "device is host memory); measured = the run's process peak RSS. VAE stream bytes: "
        "planned vs counted host<->device bytes of the tiled VAE streams.", "",
        "| case | planned | measured RSS | measured / planned | VAE bytes planned | counted |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, r in results.items():
        lines.append(
            f"| {name} | {mib(r['planned_total_bytes'])} | {mib(r['measured_peak_rss_bytes'])} "
            f"| {r['rss_ratio']:.2f} | {mib(r['planned_vae_stream_bytes'])} | "
            f"{mib(r['measured_vae_stream_bytes'])} |"
        )
    if "81 frames tile-major VAE" in results and "1001 frames tile-major VAE" in results:
        a = results["81 frames tile-major VAE"]["measured_peak_rss_bytes"]
        b = results["1001 frames tile-major VAE"]["measured_peak_rss_bytes"]
        lines += [
            "",
            f"Peak RSS 1001 vs 81 frames (tile-major VAE): {b / a:.3f}x (target <= 1.10).",
        ]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m benchmarks.memory_check")
