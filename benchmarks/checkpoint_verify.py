"""What checkpoint verification (`--config.checkpoint.verify`, docs/faults.md) costs.

For the tiny Stage II training state (configs/stage2.py:tiny: params, Adam moments, EMA) and a
~1 GiB state, on this machine's disk: the time of a synchronous save + close with and without
checksums (sealing runs in a background thread that close() waits for), of checking the
checksums alone, and of `restore_newest` with and without verification. Medians of round-robin
repeats (benchmarks/common.py conventions); results as JSON in
benchmarks/results/checkpoint_verify/.

    python benchmarks/checkpoint_verify.py [--repeats 3] [--gib 1.0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grain
import jax
import numpy as np

from swifti2v_jax import checksums
from swifti2v_jax.training import checkpointing, experiment, optim
from swifti2v_jax.training import state as state_lib

RESULTS = Path(__file__).resolve().parent / "results" / "checkpoint_verify"


def tiny_state():
    from configs import stage2

    config = stage2.get_config("tiny")
    model_config = experiment.model_config(config)
    optimizer = optim.make_optimizer(experiment.optimizer_config(config), config.num_steps)
    params = state_lib.init_dit_params(model_config, None, 0)
    return state_lib.create_state(params, optimizer, 0, use_ema=True)


def large_state(gib: float):
    leaves = max(1, round(gib * 256))  # 4 MiB float32 arrays
    rng = np.random.default_rng(0)
    return {f"w{i:04d}": rng.standard_normal((1024, 1024), np.float32) for i in range(leaves)}


def _iterator():
    return iter(grain.MapDataset.range(16).to_iter_dataset())


def _nbytes(state) -> int:
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))


def _save(directory: Path, state, verify: bool) -> float:
    shutil.rmtree(directory, ignore_errors=True)
    start = time.perf_counter()
    checkpointer = checkpointing.Checkpointer(directory, use_async=False, verify=verify)
    checkpointer.save(1, state, _iterator())
    checkpointer.close()
    return time.perf_counter() - start


def _restore(directory: Path, abstract, verify: bool) -> float:
    start = time.perf_counter()
    checkpointer = checkpointing.Checkpointer(directory, use_async=False, verify=verify)
    step, _ = checkpointer.restore_newest(abstract, _iterator())
    checkpointer.close()
    assert step == 1
    return time.perf_counter() - start


def measure(name: str, state, repeats: int, scratch: Path) -> dict:
    state = jax.device_put(state)
    abstract = checkpointing.abstract_like(state)
    directory = scratch / name
    times = {k: [] for k in ("save", "save_verify", "check", "restore", "restore_verify")}
    for _ in range(repeats):  # round-robin: load from other processes hits all alike
        times["save"].append(_save(directory, state, verify=False))
        times["save_verify"].append(_save(directory, state, verify=True))
        start = time.perf_counter()
        assert checksums.problem(directory / "1") is None
        times["check"].append(time.perf_counter() - start)
        times["restore"].append(_restore(directory, abstract, verify=False))
        times["restore_verify"].append(_restore(directory, abstract, verify=True))
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "state": name,
        "bytes": _nbytes(state),
        "repeats": repeats,
        "seconds": medians,
        "all_seconds": times,
        "save_overhead_ratio": medians["save_verify"] / medians["save"],
        "restore_overhead_ratio": medians["restore_verify"] / medians["restore"],
        "check_gb_per_s": _nbytes(state) / medians["check"] / 1e9,
    }
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="checkpoint-verify-") as scratch:
        results = [
            measure("tiny", tiny_state(), args.repeats, Path(scratch)),
            measure(f"{args.gib:g}gib", large_state(args.gib), args.repeats, Path(scratch)),
        ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"backend": jax.default_backend(), "results": results}
    (RESULTS / "results.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
