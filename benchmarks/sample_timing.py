"""`python sample.py` with no flags, cold and warm, as the README quotes it.

    python -m benchmarks.sample_timing --out benchmarks/results/sample_timing

cold: the first run with an empty persistent compilation cache (a fresh checkout's first
run: every program compiles); warm: the same command again, the programs read from that
cache. Each run is a fresh process; the wall time includes Python and JAX start-up. The load
average of the machine is recorded with the times, since other jobs share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

ROOT = Path(__file__).resolve().parents[1]


def one_run(cache: Path, out: Path) -> dict:
    summary = out.with_suffix(".json")
    command = [
        sys.executable, str(ROOT / "sample.py"), "--output", str(out), "--summary",
        str(summary), f"--config.compilation_cache_dir={cache}", "--config.progress=False",
    ]  # fmt: skip
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    wall = time.perf_counter() - start
    seconds = json.loads(summary.read_text())["seconds"]
    return {"wall_seconds": round(wall, 1), "pipeline_seconds": seconds, "load_average": load}


def markdown(report: dict) -> str:
    rows = [
        f"| {name} | {run['wall_seconds']} | {run['pipeline_seconds']['total']} | "
        f"{run['pipeline_seconds']['stage1']} | {run['load_average']:.1f} |"
        for name, run in report["runs"].items()
    ]
    return "\n".join([
        "# `python sample.py` (the demo), cold and warm",
        "",
        f"{report['backend']['cpu_count']} CPU cores ({report['backend']['platform']}); "
        "cold = an empty "
        "compilation cache, warm = the same command again. Wall time includes start-up.",
        "",
        "| run | wall (s) | pipeline total (s) | Stage I (s) | load average at start |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
    ])  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/sample_timing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        runs = {name: one_run(cache, Path(tmp) / f"{name}.mp4") for name in ("cold", "warm")}
    report = {"runs": runs, "backend": common.backend_info()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "results.json", report)
    (out / "results.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
