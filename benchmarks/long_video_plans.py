"""XLA memory plans of every program of the streamed 2K pipeline, for 81, 481 and 1001 frames.

    python -m benchmarks.long_video_plans --out benchmarks/results/long_video

No weights, no data: the real model architectures (presets/dit.py, presets/vae.py), the 2K
sample presets, and every program `sampling/orchestrator.run` compiles, lowered with
abstract inputs (sampling/programs.py) and compiled on the CPU backend;
`compiled.memory_analysis()` gives argument / output / temp / code bytes. For each preset and
frame count the programs' input signatures are listed; each distinct signature is compiled
once (XLA's plan is a function of the program and its signature), so a plan is "the same
for 81, 481 and 1001 frames" exactly when the signatures are.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

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


def signatures(presets=PRESETS, frames=FRAMES) -> tuple[list[dict], dict]:
    """Every (preset, frame count, program) row with its input signature (no compiling), and
    the distinct programs to compile."""
    rows, distinct = [], {}
    for preset in presets:
        raw = sample_presets.get_config(preset)
        config = pipeline_config(raw)
        specs = specs_for(preset, config)
        width, height = (int(v) for v in raw.resolution.split("x"))
        for count in frames:
            plan = plan_sizes(specs, config, width, height, count)
            for program in programs_lib.streamed_programs(specs, config, plan):
                key = f"{program.name}|{program.signature()}"
                distinct.setdefault(key, program)
                rows.append(
                    dict(
                        preset=preset, frames=count, program=program.name, key=key,
                        segments=plan.segments,
                    )
                )  # fmt: skip
    return rows, distinct


def measure(out: Path, presets=PRESETS, frames=FRAMES) -> dict:
    """Compiles each distinct program once, writing the report after every one (a slow
    compile cut short still leaves every signature and the plans done so far)."""
    rows, distinct = signatures(presets, frames)
    report = dict(rows=rows, plans={}, seconds={}, frames=list(frames), presets=list(presets))
    write(out, report)
    for key, program in distinct.items():
        start = time.perf_counter()
        report["plans"][key] = programs_lib.memory_plan(program)
        report["seconds"][key] = round(time.perf_counter() - start, 1)
        print(f"{program.name}: {report['seconds'][key]} s", flush=True)
        write(out, report)
    return report


def write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "plans.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "plans.md").write_text(markdown(report))


def same_for_every_length(report: dict) -> dict[str, bool]:
    """preset/program -> whether its input signature (hence its plan) is identical for every
    frame count."""
    seen: dict[str, set] = {}
    for r in report["rows"]:
        seen.setdefault(f"{r['preset']}/{r['program']}", set()).add(r["key"])
    return {name: len(keys) == 1 for name, keys in seen.items()}


def _mib(plan: dict | None, field: str) -> str:
    return "not compiled" if plan is None else f"{plan[field] / 2**20:.1f}"


def markdown(report: dict) -> str:
    same = same_for_every_length(report)
    frames = report["frames"]
    lines = [
        "# XLA memory plans of the streamed 2K pipeline (CPU compile, abstract inputs)",
        "",
        "`python -m benchmarks.long_video_plans`: every program `sampling/orchestrator.run` "
        "compiles (sampling/programs.py) for the 2K presets at 2560x1408, with the public "
        "models' architectures (fp32 parameters as the presets define them) and no weights. "
        "MiB per program (XLA CPU `memory_analysis`). `same` = identical input signature for "
        f"{', '.join(map(str, frames))} frames, hence one compiled program and one memory "
        "plan for every length (each distinct signature is compiled once).",
        "",
        "| preset | program | arguments | outputs | temp | compile (s) | same |",
        "|---|---|---:|---:|---:|---:|:---:|",
    ]
    for r in (r for r in report["rows"] if r["frames"] == frames[0]):
        plan = report["plans"].get(r["key"])
        name = f"{r['preset']}/{r['program']}"
        lines.append(
            f"| {r['preset']} | {r['program']} | {_mib(plan, 'argument_size_in_bytes')} | "
            f"{_mib(plan, 'output_size_in_bytes')} | {_mib(plan, 'temp_size_in_bytes')} | "
            f"{report['seconds'].get(r['key'], '')} | {'yes' if same[name] else 'NO'} |"
        )
    segments = sorted({(r["preset"], r["frames"], r["segments"]) for r in report["rows"]})
    lines += [
        "",
        "Segments (runs of the one Stage II window program) per clip: "
        + ", ".join(f"{p} {f} frames: {s}" for p, f, s in segments)
        + ".",
        f"Every program the same for every length: {all(same.values())}. Compiled "
        f"{len(report['plans'])} of {len({r['key'] for r in report['rows']})} distinct programs.",
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
