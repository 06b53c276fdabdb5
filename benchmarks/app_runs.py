"""The web app's engine at demo scale (issue 31): a cold run, warm runs of the same settings,
and how fast a cancel takes effect in the middle of Stage II.

    python -m benchmarks.app_runs --out benchmarks/results/app_runs

In one fresh process, through app/engine.py (what the page runs, without the browser):
1. one cold run, then --repeats warm runs of the same settings (the models and compiled
   programs kept by WarmModels): total seconds, seconds to the first frame, XLA compilations;
2. --repeats runs of --cancel_frames frames, each cancelled when segment --cancel_at has been
   written: seconds from `Job.cancel()` to the end of the job, and whether any file is left.
The persistent compilation cache is off here, so the cold run compiles everything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from swifti2v_jax import generation
from swifti2v_jax.app.engine import Engine, Finished, Stopped
from swifti2v_jax.sampling.orchestrator import Progress


def run_once(engine: Engine, frames: int) -> dict:
    job = engine.start(engine.prepare({"frames": frames}))
    outcome = [e for e in job.updates() if not isinstance(e, Progress)][-1]
    assert isinstance(outcome, Finished), outcome
    s = outcome.summary
    return dict(
        total_seconds=s["seconds"]["total"],
        first_frame_seconds=s["first_frame_seconds"],
        load_seconds=s["seconds"]["load"],
        xla_compilations=s["xla_compilations"],
    )


def cancel_once(engine: Engine, frames: int, at_segment: int) -> dict:
    job = engine.start(engine.prepare({"frames": frames}))
    cancelled_at = None
    for event in job.updates():
        if isinstance(event, Progress):
            if event.stage == "stage2" and event.segment == at_segment and cancelled_at is None:
                cancelled_at = time.perf_counter()
                job.cancel()
        else:
            outcome, ended = event, time.perf_counter()
    assert isinstance(outcome, Stopped), outcome
    return dict(
        stop_seconds=ended - cancelled_at, files_left=len(list(engine.output_dir.iterdir()))
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.app_runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cancel_frames", type=int, default=65)
    parser.add_argument("--cancel_at", type=int, default=10)
    args = parser.parse_args(argv)
    generation.enable_compilation_cache("none")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as videos:
        engine = Engine("demo", {}, Path(videos))
        cold = run_once(engine, args.frames)
        warm = [run_once(engine, args.frames) for _ in range(args.repeats)]
        for path in Path(videos).iterdir():  # keep the cancel check's directory empty
            path.unlink()
        cancels = [
            cancel_once(engine, args.cancel_frames, args.cancel_at) for _ in range(args.repeats)
        ]
    median = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    results = dict(
        backend=common.backend_info(),
        load_average=dict(before=load_before, after=os.getloadavg()[0]),  # a shared machine
        settings=vars(args) | {"out": str(args.out)},
        cold=cold,
        warm=warm,
        cancels=cancels,
        summary=dict(
            cold_total_seconds=cold["total_seconds"],
            warm_total_seconds_median=median(warm, "total_seconds"),
            warm_first_frame_seconds_median=median(warm, "first_frame_seconds"),
            cold_xla_compilations=cold["xla_compilations"],
            warm_xla_compilations=sorted({w["xla_compilations"] for w in warm}),
            cancel_stop_seconds_median=median(cancels, "stop_seconds"),
            cancel_stop_seconds_max=max(c["stop_seconds"] for c in cancels),
            cancel_files_left=sum(c["files_left"] for c in cancels),
        ),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    s = results["summary"]
    table = (
        f"`python -m benchmarks.app_runs` ({results['backend']['platform']}, "
        f"{results['backend']['cpu_count']} CPUs, load average {load_before:.0f} before and "
        f"{results['load_average']['after']:.0f} after; demo preset, {args.frames} frames; one "
        f"process, persistent compilation cache off)\n\n"
        "| | seconds total | to first frame | XLA compilations |\n|---|---|---|---|\n"
        f"| cold run | {s['cold_total_seconds']:.2f} | {cold['first_frame_seconds']:.2f} | "
        f"{s['cold_xla_compilations']} |\n"
        f"| warm runs (median of {args.repeats}) | {s['warm_total_seconds_median']:.2f} | "
        f"{s['warm_first_frame_seconds_median']:.2f} | {s['warm_xla_compilations']} |\n\n"
        f"Cancel after Stage II segment {args.cancel_at} of a {args.cancel_frames}-frame run: "
        f"the job ends {s['cancel_stop_seconds_median']:.3f} s (median; max "
        f"{s['cancel_stop_seconds_max']:.3f} s) after `cancel()`; files left: "
        f"{s['cancel_files_left']}.\n"
    )
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
