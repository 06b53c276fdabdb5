"""GPU-time of 2K image-to-video: end-to-end generation vs the SwiftI2V pipeline, on any backend.

    python -m benchmarks.gpu_time --preset small --out benchmarks/results/gpu_time

Three parts, all written to OUT/results.json, OUT/results.md and OUT/gpu_time.png:

1. Measured on the current backend, for the preset's DiT forwards (`tiny` and `small` run on a
   CPU; `ti2v_5b` and `a14b` are the real 2K shapes and run where they fit, e.g. on an 80 GB
   GPU): median time per forward (round-robin, after warm-up), XLA FLOPs / bytes / memory plan,
   peak memory of a fresh process, achieved FLOP/s and model FLOP utilisation against a matmul
   peak measured in the same run, and the same forward in PyTorch (diffusers
   WanTransformer3DModel with the same weights, converted by conversion.dit) as a JAX/PyTorch
   time ratio. For presets with a CSG window, the per-clip end-to-end/CSG ratio measured from
   those times is compared with the ratio XLA's FLOPs predict.
2. The full-size 2K forwards, lowered from abstract arrays (no weights are allocated): tokens,
   FLOPs and the XLA memory plan of TI2V-5B end-to-end (73,920 tokens), the 14B Wan model
   end-to-end with the Wan2.1 VAE (295,680), the Stage II CSG window (17,600, M=3, N=1) and
   Stage I (A14B at 640x352, 18,480), plus the Wan VAEs' encode/decode work.
3. Per-clip FLOPs and device-seconds of the two end-to-end baselines and of SwiftI2V
   (Stage I + Stage II segments x steps x guidance + VAE), and their ratios. Device-seconds use
   the times measured in part 1 where this run measured that exact program, else FLOPs divided
   by the FLOP rate achieved in part 1 (or the matmul peak x --assumed-mfu).

FLOPs of a scanned DiT are loop-corrected (see benchmarks/common.py). Attention FLOPs are
always counted on the XLA attention path; cuDNN/splash kernels are opaque custom calls to XLA's
cost analysis.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.gpu_time_costs import (  # noqa: F401  (tests use these names from here)
    PRESETS,
    TARGET_FRAMES,
    TARGET_HEIGHT,
    TARGET_WIDTH,
    TEXT_LEN,
    VAE_WORK,
    ClipSettings,
    analyse_programs,
    analyse_vae,
    full_2k_programs,
    latent_frames,
    per_clip,
)
from benchmarks.gpu_time_measure import (  # noqa: F401
    _torch_forward,
    clip_comparison,
    diffusers_twin,
    make_preset,
    measure_preset,
    memory_worker,
)
from benchmarks.gpu_time_report import markdown, plot

# --------------------------------------------------------------------------------------------
# Report


def build_report(args, settings: ClipSettings) -> dict:
    preset = make_preset(args.preset, settings)
    attention = args.attention or common.default_attention_backend()
    report = dict(
        benchmark="gpu_time",
        command=" ".join(["python -m benchmarks.gpu_time"] + sys.argv[1:]),
        backend=common.backend_info(),
        preset=dict(name=preset.name, description=preset.description),
    )
    print("matmul peak ...")
    report["matmul_peak"] = common.matmul_peak()
    peak = report["matmul_peak"]["flops_per_second"]

    print(f"XLA cost analysis of the {preset.name} forwards ...")
    preset_analysis = analyse_programs(preset.programs, compile_memory=False, attention=attention)
    flops = {name: entry["xla"]["flops"] for name, entry in preset_analysis.items()}

    measure = args.measure if args.measure is not None else (preset.runs_on_cpu or not
                                                             common.on_cpu())  # fmt: skip
    measured_seconds: dict[str, float] = {}
    if measure:
        print(f"measuring {preset.name} on {report['backend']['platform']} ...")
        with_torch = args.torch if args.torch is not None else preset.runs_on_cpu
        timing = measure_preset(preset, attention, args.rounds, with_torch)
        for name, entry in preset_analysis.items():
            worker = common.run_worker(
                "benchmarks.gpu_time",
                dict(task="memory", preset=preset.name, program=name, attention=attention,
                     settings=dataclasses.asdict(settings)),
            )  # fmt: skip
            seconds = timing["timings"][f"jax:{name}"]["median"]
            measured_seconds[name] = seconds
            entry["measured"] = dict(
                seconds_per_forward=timing["timings"][f"jax:{name}"],
                achieved_flops_per_second=flops[name] / seconds,
                model_flop_utilisation=flops[name] / seconds / peak,
                memory_analysis=worker["memory_analysis"],
                peak_rss_bytes=worker["peak_rss_bytes"],
                peak_rss_before_compile_bytes=worker["peak_rss_before_compile_bytes"],
                device_peak_bytes=worker["device_peak_bytes"],
            )
            if f"torch:{name}" in timing["timings"]:
                entry["measured"]["pytorch_seconds_per_forward"] = timing["timings"][
                    f"torch:{name}"
                ]
        report["measurement"] = {k: v for k, v in timing.items() if k != "timings"}
    else:
        report["measurement"] = dict(
            skipped=f"preset {preset.name} does not run on this backend (pass --measure to try)"
        )
    report["preset"]["programs"] = preset_analysis
    if measure and preset.clip:
        stats = {n: e["measured"]["seconds_per_forward"] for n, e in preset_analysis.items()}
        report["preset"]["per_clip"] = clip_comparison(preset, settings, stats, flops)

    if not args.skip_2k:
        print("full-size 2K programs (abstract, no weights allocated) ...")
        programs = full_2k_programs(settings)
        analysis = analyse_programs(programs, compile_memory=args.compile_2k, attention=attention)
        print("VAE work per clip ...")
        vae = analyse_vae()
        work = {f"dit:{n}": e["xla"]["flops"] for n, e in analysis.items()}
        if "error" not in vae:
            work.update({f"vae:{n}": e["flops"] for n, e in vae.items()})
        rates = [flops[n] / s for n, s in measured_seconds.items()]
        if rates:
            rate, rate_source = float(np.median(rates)), f"achieved by the {preset.name} forwards"
        else:
            rate = peak * args.assumed_mfu
            rate_source = f"matmul peak x assumed MFU {args.assumed_mfu}"
        measured_2k = {f"dit:{n}": s for n, s in measured_seconds.items() if n in programs}
        clip = per_clip(settings, work, 1.0 / rate, measured_2k)
        clip["flop_rate_for_predictions"] = dict(flops_per_second=rate, source=rate_source)
        report["full_2k"] = dict(
            target=dict(width=TARGET_WIDTH, height=TARGET_HEIGHT, frames=TARGET_FRAMES,
                        latent_frames=latent_frames(), text_len=TEXT_LEN),
            programs=analysis,
            vae=vae,
            per_clip=clip,
        )  # fmt: skip
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="small")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_time"))
    parser.add_argument("--rounds", type=int, default=7, help="timed runs per forward")
    parser.add_argument("--attention", choices=("xla", "cudnn", "splash"), default=None,
                        help="attention backend for measured/compiled programs "
                        "(default: the platform's fastest)")  # fmt: skip
    parser.add_argument("--measure", action=argparse.BooleanOptionalAction, default=None,
                        help="run the preset's forwards (default: small presets everywhere, "
                        "the real ones only off-CPU)")  # fmt: skip
    parser.add_argument(
        "--torch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compare with diffusers (default: on for tiny/small)",
    )
    parser.add_argument("--skip-2k", action="store_true", help="skip the full-size analysis")
    parser.add_argument(
        "--compile-2k",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile the full-size programs for their memory plans",
    )
    parser.add_argument(
        "--assumed-mfu",
        type=float,
        default=0.4,
        help="utilisation used when nothing was measured in this run",
    )
    for field in dataclasses.fields(ClipSettings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if not 0.0 < args.assumed_mfu <= 1.0:
        parser.error("--assumed-mfu must be in (0, 1]")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        task = json.loads(args.worker)
        if task.get("task") != "memory":
            raise ValueError(f"unknown worker task {task!r}")
        common.emit_worker_result(memory_worker(task))
        return
    try:
        settings = ClipSettings(**{f.name: getattr(args, f.name)
                                   for f in dataclasses.fields(ClipSettings)})  # fmt: skip
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    args.out.mkdir(parents=True, exist_ok=True)  # before the work: fail early
    report = build_report(args, settings)
    common.write_outputs(args.out, report, markdown, plot, "gpu_time.png")


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m benchmarks.gpu_time")
