"""Many clips at demo size (issue 33): `sample.py --manifest` on 1 and on 2 processes under the
launcher, against one `sample.py` process per row.

    python -m benchmarks.manifest_throughput --rows 4 --out benchmarks/results/manifest_throughput

Every run starts from a fresh process with the persistent compilation cache off, so each
process loads the models and compiles its programs once, as on a new machine:
1. `sample.py --manifest` (one process, one device): clips per minute, seconds per row;
2. the same under `python -m swifti2v_jax.launch --processes 2` (one device each);
3. one `sample.py` process per row (a shell loop): load and compile paid by every row.
The mp4s of 1 and 2 are checked to equal those of 3 byte for byte. Wall-clock times on a
shared machine: compare the ratios of one run, not the absolute seconds.
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
NO_CACHE = "--config.compilation_cache_dir=none"


def _timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    rows = [{"name": f"clip{i}", "seed": 100 + i, "frames": args.frames} for i in range(args.rows)]
    results = dict(settings=vars(args) | {"out": str(args.out)}, backend=common.backend_info())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = tmp / "jobs.jsonl"
        jobs.write_text("".join(json.dumps(r) + "\n" for r in rows))
        manifest = [sys.executable, "sample.py", "--manifest", str(jobs), NO_CACHE]
        manifest += ["--config.progress=False", "--output-dir"]
        one = _timed([*manifest, str(tmp / "one")], env)
        launch = [sys.executable, "-m", "swifti2v_jax.launch", "--processes", "2", "--"]
        two = _timed([*launch, *manifest[1:], str(tmp / "two")], env)
        loop = 0.0
        for row in rows:
            loop += _timed(
                [sys.executable, "sample.py", NO_CACHE, "--config.progress=False",
                 "--seed", str(row["seed"]), "--frames", str(args.frames),
                 "--output", str(tmp / f"alone-{row['name']}.mp4")],
                env,
            )  # fmt: skip
        same = all(
            (tmp / d / f"{r['name']}.mp4").read_bytes()
            == (tmp / f"alone-{r['name']}.mp4").read_bytes()
            for d in ("one", "two")
            for r in rows
        )
        report = json.loads((tmp / "one" / "manifest-report.json").read_text())
    n = args.rows
    results.update(
        manifest_1_process=dict(
            seconds=round(one, 2), clips_per_minute=round(60 * n / one, 2),
            seconds_per_row=round(one / n, 2), xla_compilations=report["xla_compilations"],
        ),
        manifest_2_processes=dict(seconds=round(two, 2), clips_per_minute=round(60 * n / two, 2)),
        one_process_per_row=dict(seconds=round(loop, 2), seconds_per_row=round(loop / n, 2)),
        speedup_2_vs_1_process=round(one / two, 2),
        speedup_manifest_vs_loop=round(loop / one, 2),
        outputs_byte_identical=same,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    m1, m2 = results["manifest_1_process"], results["manifest_2_processes"]
    table = (
        f"# sample.py --manifest, {args.rows} rows of {args.frames} frames (demo), "
        f"{results['backend']['platform']}, {os.cpu_count()} CPU cores\n\n"
        "| run | wall s | clips/min | s/row |\n|---|---|---|---|\n"
        f"| manifest, 1 process | {m1['seconds']} | {m1['clips_per_minute']} | "
        f"{m1['seconds_per_row']} |\n"
        f"| manifest, 2 processes (launcher) | {m2['seconds']} | {m2['clips_per_minute']} | "
        f"{round(m2['seconds'] / args.rows, 2)} |\n"
        f"| one sample.py per row | {round(loop, 2)} | {round(60 * n / loop, 2)} | "
        f"{round(loop / n, 2)} |\n"
        f"\nmp4s byte-identical across the three: {same}\n"
    )
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
