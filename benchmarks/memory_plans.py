"""Whole-run memory plans of the 2K workstation presets (the README's and docs/memory.md's tables).

    python -m benchmarks.memory_plans                      # every row below
    python -m benchmarks.memory_plans --rows swifti2v_2k_24gb@gpu-24gb

Each row is `sample.py --config=configs/sample.py:PRESET --plan --plan_target TARGET`
(sampling/memory_plan.py): no weights; device programs compiled for the target (XLA:CPU as
the GPU proxy; with --compile-tpu compile-only libtpu for v5e / v6e: the 2K VAE steps take
10-40 minutes each on 2 cores, cached per program, so a cut-short sweep resumes; without it
programs not yet compiled for the TPU use XLA:CPU's figures, named in the plan's notes).
The figures of every compiled
program are copied into swifti2v_jax/sampling/program_memory.json, so `--plan` for a TPU
target reads them instead of compiling. Results: benchmarks/results/memory_plans/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from swifti2v_jax.presets import sample as sample_presets
from swifti2v_jax.sampling import memory_plan, program_memory
from swifti2v_jax.sampling import programs as programs_lib
from swifti2v_jax.sampling.config import pipeline_config
from swifti2v_jax.sampling.models import public_specs
from swifti2v_jax.sampling.plan import plan_sizes

OUT = Path("benchmarks/results/memory_plans")
# (preset, target, memory overrides, label)
ROWS = {
    "swifti2v_2k_24gb@gpu-24gb": ("swifti2v_2k_24gb", "gpu-24gb", {}),
    "swifti2v_2k_24gb@v6e-1": ("swifti2v_2k_24gb", "v6e-1", {}),
    "swifti2v_2k_16gb@v5e-1": ("swifti2v_2k_16gb", "v5e-1", {}),
    # the previous 24 GB preset: frame-major tiles, caches offloaded, expert streamed
    "before@gpu-24gb": (
        "swifti2v_2k_24gb",
        "gpu-24gb",
        dict(
            stream_layers="stage1",
            encode_tile_major=False,
            encode_offload_cache=True,
            decode_chunk_latents=0,
            decode_offload_cache=True,
            vae_cache_dtype="float32",
        ),
    ),  # fmt: skip
    "swifti2v_2k_24gb@gpu-24gb 1001 frames": ("swifti2v_2k_24gb", "gpu-24gb", dict(frames=1001)),
}


def plan_row(name: str, compile_tpu: bool):
    preset, target, overrides = ROWS[name]
    raw = sample_presets.get_config(preset)
    overrides = dict(overrides)
    frames = overrides.pop("frames", raw.frames)
    raw.memory.update(overrides)
    config = pipeline_config(raw)
    specs = public_specs(config)
    width, height = (int(v) for v in raw.resolution.split("x"))
    sizes = plan_sizes(specs, config, width, height, frames)
    log = lambda program: print(f"  compiling {program} for {target}", flush=True)
    plan = memory_plan.whole_run(
        specs, config, sizes, target, on_compile=log, compile_missing=compile_tpu
    )
    compiler = memory_plan.TARGETS[target].compiler
    if compiler in ("v5e", "v6e"):
        programs = programs_lib.streamed_programs(specs, config, sizes)
        program_memory.ship(programs, compiler, memory_plan.program_context(specs, config))
    return plan


def markdown(plans: dict) -> str:
    gb = lambda b: f"{b / 1e9:.2f}"
    lines = [
        "# Whole-run memory plans (`sample.py --plan`, sampling/memory_plan.py)",
        "",
        "GB = 1e9 bytes; device = resident arrays + the running program (XLA's memory "
        "plan); host includes 2 GB of runtime; moved = host<->device bytes per clip.",
        "",
    ]
    lines += [
        "| row | device peak (phase) | host peak (phase) | moved per clip | fits |",
        "|---|---|---|---|---|",
    ]
    for name, plan in plans.items():
        d = plan.as_dict()
        try:
            plan.check()
            fits = "yes"
        except memory_plan.PlanError:
            fits = "**no**"
        lines.append(
            f"| {name} | {gb(d['device_peak_bytes'])} ({d['device_peak_phase']}) | "
            f"{gb(d['host_peak_bytes'])} ({d['host_peak_phase']}) | {gb(d['transfer_bytes'])} "
            f"| {fits} |"
        )
    for name, plan in plans.items():
        lines += ["", f"## {name}", "", "```", plan.table(), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"of {list(ROWS)}")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--compile-tpu", action="store_true",
        help="compile the TPU programs with libtpu (slow); else XLA:CPU figures for those missing",
    )  # fmt: skip
    args = parser.parse_args(argv)
    names = [n for n in args.rows.split(",") if n]
    unknown = set(names) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {list(ROWS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    plans = {}
    for name in names:
        start = time.perf_counter()
        print(f"{name}:", flush=True)
        plans[name] = plan_row(name, args.compile_tpu)
        print(plans[name].table(), f"({time.perf_counter() - start:.0f} s)", flush=True)
    results = {name: plan.as_dict() for name, plan in plans.items()}
    path = args.out / "results.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(results)
    path.write_text(json.dumps(old, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(plans))
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m benchmarks.memory_plans")
