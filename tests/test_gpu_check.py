"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check on CPU with tiny shapes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu_check
from benchmarks.gpu_time_costs import ClipSettings

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out"), "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["dry_run"] is True
    expected = {f"{p}/{f}" for p in ("window", "end_to_end") for f in gpu_check.FORMATS}
    expected |= {"stage1/bf16", "stage1/int8"}
    assert set(report["forwards"]) == expected
    for row in report["forwards"].values():
        assert row["seconds"] > 0 and 0 < row["mfu"] < 1.5
    # int8 / fp8 store the block kernels in one byte: fewer weight bytes than bf16.
    forwards = report["forwards"]
    assert forwards["window/int8"]["weights_gb"] < forwards["window/bf16"]["weights_gb"]
    assert set(report["per_clip"]) == set(gpu_check.FORMATS)
    assert "end-to-end / SwiftI2V" in (tmp_path / "out" / "results.md").read_text()


def test_per_clip_ratio_counts_steps_guidance_and_segments():
    settings = ClipSettings()
    seconds = {"end_to_end": 2.0, "window": 0.5, "stage1": 1.0}
    ratio = gpu_check.per_clip_ratio(seconds, settings, num_blocks=21)
    segments = settings.segments(21)
    e2e = settings.baseline_5b_steps * settings.baseline_5b_guidance * 2.0
    swift = settings.stage1_steps * 1.0 + segments * settings.stage2_steps * 2 * 0.5
    assert ratio["segments"] == segments
    assert ratio["ratio"] == pytest.approx(e2e / swift)


def test_gpu_check_refuses_cpu_without_dry_run_and_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="no GPU"):
        gpu_check.run(tmp_path, dry_run=False, rounds=1, formats=["bf16"], with_stage1=False)
    with pytest.raises(SystemExit):
        gpu_check.main([str(tmp_path), "--formats", "int4"])
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "--fast"], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 2
