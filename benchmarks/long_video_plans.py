"""XLA memory plans of every program of the streamed 2K pipeline, for 81, 481 and 1001 frames.

    python -m benchmarks.long_video_plans --out benchmarks/results/long_video

No weights, no data: the real model architectures (presets/dit.py, presets/vae.py), the 2K
sample presets, and every program `sampling/orchestrator.run` compiles, lowered with
abstract inputs (sampling/programs.py) and compiled on the CPU backend;
`compiled.memory_analysis()` gives argument / output / temp / code bytes. Every program is
compiled afresh for every preset and frame count, and its input signature (hashed) and memory
plan are compared across the frame counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import jax

from swifti2v_jax.presets import dit as dit_presets
from swifti2v_jax.presets import sample as sample_presets
from swifti2v_jax.presets import t5 as t5_presets
from swifti2v_jax.presets import vae as vae_presets
from swifti2v_jax.sampling import programs as programs_lib
from swifti2v_jax.sampling.config import pipeline_config
from swifti2v_jax.sampling.models import ModelSpecs
from swifti2v_jax.sampling.plan import plan_sizes

PRESETS = ("swifti2v_2k", "swifti2v_2k_ti2v")
FRAMES = (81, 481, 1001)


def specs_for(preset: str, config) -> ModelSpecs:
    """The public models each preset runs (what `inspect_models` reads from checkpoints)."""
    a14b = config.stage1.backbone == "a14b"
    stage2 = "ti2v_5b_concat" if config.stage2.conditioning == "concat" else "ti2v_5b"
    return ModelSpecs(
        stage1=dit_presets.config("i2v_a14b" if a14b else "ti2v_5b"),
        stage1_vae=vae_presets.config("wan21" if a14b else "wan22"),
        stage2=dit_presets.config(stage2),
        vae=vae_presets.config("wan22"),
        t5=t5_presets.config("umt5_xxl"),
    )


def signatures(presets=PRESETS, frames=FRAMES) -> list[tuple[dict, programs_lib.Program]]:
    """Every (preset, frame count, program) row with its input signature's hash (no
    compiling), and the program."""
    rows = []
    for preset in presets:
        raw = sample_presets.get_config(preset)
        config = pipeline_config(raw)
        specs = specs_for(preset, config)
        width, height = (int(v) for v in raw.resolution.split("x"))
        for count in frames:
            plan = plan_sizes(specs, config, width, height, count)
            for program in programs_lib.streamed_programs(specs, config, plan):
                signature = hashlib.sha1(program.signature().encode()).hexdigest()[:16]
                row = dict(
                    preset=preset, frames=count, program=program.name, signature=signature,
                    segments=plan.segments,
                )  # fmt: skip
                rows.append((row, program))
    return rows


def measure(out: Path, presets=PRESETS, frames=FRAMES) -> dict:
    """Compiles every program for every frame count afresh (jax's caches cleared between
    lengths), writing the report after every one (a slow compile cut short still leaves
    every signature and the plans done so far)."""
    rows = signatures(presets, frames)
    report = dict(rows=[row for row, _ in rows], frames=list(frames), presets=list(presets))
    write(out, report)
    current = None
    for row, program in rows:
        if (row["preset"], row["frames"]) != current:
            current = (row["preset"], row["frames"])
            jax.clear_caches()  # each length compiles its own programs
        start = time.perf_counter()
        row.update(programs_lib.memory_plan(program))
        row["compile_seconds"] = round(time.perf_counter() - start, 1)
        print(f"{current} {program.name}: {row['compile_seconds']} s", flush=True)
        write(out, report)
    return report


def write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "plans.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "plans.md").write_text(markdown(report))


def same_for_every_length(report: dict) -> dict[str, bool]:
    """preset/program -> whether its input signature and its compiled memory plan are
    identical for every frame count (a program not compiled yet counts as not the same)."""
    seen: dict[str, set] = {}
    for r in report["rows"]:
        plan = tuple(r.get(f) for f in programs_lib.MEMORY_FIELDS)
        seen.setdefault(f"{r['preset']}/{r['program']}", set()).add((r["signature"], plan))
    return {
        name: len(values) == 1 and None not in next(iter(values))[1]
        for name, values in seen.items()
    }


def _mib(row: dict, field: str) -> str:
    return "not compiled" if field not in row else f"{row[field] / 2**20:.1f}"


def markdown(report: dict) -> str:
    same = same_for_every_length(report)
    frames = report["frames"]
    lines = [
        "# XLA memory plans of the streamed 2K pipeline (CPU compile, abstract inputs)",
        "",
        "`python -m benchmarks.long_video_plans`: every program `sampling/orchestrator.run` "
        "compiles (sampling/programs.py) for the 2K presets at 2560x1408, with the public "
        "models' architectures (fp32 parameters as the presets define them) and no weights. "
        "MiB per program (XLA CPU `memory_analysis`, at the first length). `same` = identical "
        f"input signature and identical memory plan for {', '.join(map(str, frames))} frames, "
        "each length compiled afresh (jax caches cleared); compile seconds for "
        f"{', '.join(map(str, frames))}.",
        "",
        "| preset | program | arguments | outputs | temp | compile (s) | same |",
        "|---|---|---:|---:|---:|---:|:---:|",
    ]
    for r in (r for r in report["rows"] if r["frames"] == frames[0]):
        name = f"{r['preset']}/{r['program']}"
        seconds = " / ".join(
            str(o.get("compile_seconds", "-"))
            for o in report["rows"]
            if (o["preset"], o["program"]) == (r["preset"], r["program"])
        )
        lines.append(
            f"| {r['preset']} | {r['program']} | {_mib(r, 'argument_size_in_bytes')} | "
            f"{_mib(r, 'output_size_in_bytes')} | {_mib(r, 'temp_size_in_bytes')} | "
            f"{seconds} | {'yes' if same[name] else 'NO'} |"
        )
    segments = sorted({(r["preset"], r["frames"], r["segments"]) for r in report["rows"]})
    lines += [
        "",
        "Segments (runs of the one Stage II window program) per clip: "
        + ", ".join(f"{p} {f} frames: {s}" for p, f, s in segments)
        + ".",
        f"Every program the same for every length: {all(same.values())}. Compiled "
        f"{sum('compile_seconds' in r for r in report['rows'])} of {len(report['rows'])}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/long_video"))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--frames", type=int, nargs="+", default=list(FRAMES))
    args = parser.parse_args()
    report = measure(args.out, args.presets, args.frames)
    print(markdown(report))


if __name__ == "__main__":
    main()
