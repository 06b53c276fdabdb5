"""sample.py as a user runs it: a subprocess, tiny random models saved as real checkpoints.

End to end: a playable mp4 with the requested frame count and size and a summary JSON with
one Stage II compilation; doubling --frames keeps the tokens per forward. Bad inputs: one
line on stderr, a non-zero exit, and no output file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swifti2v_jax.demo import build as demo_build
from swifti2v_jax.io.video import read_video

SAMPLE = Path(__file__).resolve().parents[1] / "sample.py"
TIMEOUT = 600

# The test process runs JAX; starting sample.py from it is a fork+exec, which JAX warns about.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork")


def _env(cache: Path) -> dict:
    # The cache (random demo models, prompt embeddings) goes to a temporary directory.
    return dict(os.environ, SWIFTI2V_JAX_CACHE=str(cache), JAX_PLATFORMS="cpu")


def _command(*args) -> list[str]:
    return [sys.executable, str(SAMPLE), "--config.progress=False", *map(str, args)]


def _start(cache: Path, *args) -> subprocess.Popen:
    return subprocess.Popen(
        _command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(cache),
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_cli")
    demo = demo_build.build(root / "models", stage1="ti2v")
    return root, demo


def _rgba_image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (100, 180, 4), np.uint8)
    pixels[..., 3] = np.where(np.arange(180) < 90, 255, 0)  # right half transparent
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def _start_end_to_end(workspace, name: str, frames: int, *extra):
    root, demo = workspace
    out_dir = root / name
    out_dir.mkdir()
    output, summary = out_dir / "video.mp4", out_dir / "summary.json"
    proc = _start(
        root / "cache",
        "--checkpoints", demo,
        "--frames", frames,
        "--resolution", "256x128",
        "--output", output,
        "--summary", summary,
        "--seed", 7,
        "--config.stage2.noisy_blocks=2",
        *extra,
    )  # fmt: skip
    return proc, output, summary


@pytest.fixture(scope="module")
def end_to_end_runs(workspace):
    """The 17- then the 33-frame run; the second reuses the first's persistent compilation
    cache (in the temporary cache directory) for every program whose shapes did not change."""
    image = _rgba_image(workspace[0] / "input.png")
    runs = {}
    for name, frames, extra in [
        ("short", 17, ("--image", image, "--prompt", "a lake")),
        ("long", 33, ()),  # the bundled example image and prompt
    ]:
        proc, output, summary = _start_end_to_end(workspace, name, frames, *extra)
        _, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, stderr[-3000:]
        runs[name] = (stderr, output, json.loads(summary.read_text()))
    return runs


@pytest.fixture(scope="module")
def short_run(end_to_end_runs):
    return end_to_end_runs["short"]


@pytest.fixture(scope="module")
def long_run(end_to_end_runs):
    return end_to_end_runs["long"]


def test_end_to_end_mp4_and_summary(short_run):
    stderr, output, summary = short_run
    frames, fps = read_video(output)
    assert frames.shape == (17, 128, 256, 3) and fps == 16
    assert sorted(p.name for p in output.parent.iterdir()) == ["summary.json", "video.mp4"]
    assert summary["stage2_compilations"] == 1
    assert (summary["frames"], summary["height"], summary["width"]) == (17, 128, 256)
    assert (summary["stage1_width"], summary["stage1_height"]) == (64, 32)
    assert summary["segments"] == 2 and summary["stage2_tokens_per_forward"] == 4 * 8 * 4
    for stage in ("text", "stage1", "reference_encode", "stage2", "decode", "total"):
        assert summary["seconds"][stage] >= 0
    assert summary["seconds"]["total"] >= summary["seconds"]["stage2"] > 0
    assert summary["peak_memory_bytes"] > 0 and summary["peak_memory_source"]
    assert summary["backend"] == "cpu" and summary["prompt"] == "a lake"
    stderr = stderr.strip().splitlines()
    assert any("RGBA image composited on a white background" in line for line in stderr)
    assert stderr[-1].startswith(f"wrote {output}: 17 frames 256x128")
    assert "peak memory" in stderr[-1]


def test_doubling_frames_keeps_tokens_per_forward(short_run, long_run):
    _, _, short = short_run
    _, output, long = long_run
    assert long["stage2_tokens_per_forward"] == short["stage2_tokens_per_forward"]
    assert long["segments"] > short["segments"]
    assert long["stage2_compilations"] == 1
    assert read_video(output)[0].shape == (33, 128, 256, 3)
    assert long["image"].endswith("example.png") and long["frames"] == 33


# --------------------------------------------------------------------------------------------
# Bad inputs: every case is checked before any model runs.


def _bad_cases(root: Path, demo: Path) -> dict[str, tuple[list, str]]:
    """name -> (arguments, expected error text)."""
    garbage = root / "garbage.png"
    garbage.write_text("this is not an image")
    float_image = root / "float.tiff"
    Image.fromarray(np.ones((64, 64), np.float32), "F").save(float_image)
    a_file = root / "a_file"
    a_file.write_text("")
    broken = root / "broken_models"
    shutil.copytree(demo, broken)
    shutil.rmtree(broken / "stage2" / "params")
    unwritable = Path("/proc") if os.geteuid() == 0 else root / "read_only"
    if os.geteuid() != 0:
        unwritable.mkdir()
        unwritable.chmod(0o500)
    return {
        "missing_image": (["--image", root / "nope.png"], "does not exist"),
        "unreadable_image": (["--image", garbage], "cannot read image"),
        "unsupported_mode": (["--image", float_image], "mode 'F'"),
        "frames_not_4k1": (["--frames", 16], "4k+1"),
        "resolution_not_32": (["--resolution", "250x128"], "multiples of 32"),
        "resolution_malformed": (["--resolution", "wide"], "WIDTHxHEIGHT"),
        "output_dir_missing": (["--output", root / "missing" / "out.mp4"], "does not exist"),
        "output_parent_is_file": (["--output", a_file / "out.mp4"], "not a directory"),
        "output_unwritable": (["--output", unwritable / "out.mp4"], "cannot create a file"),
        "checkpoint_files_missing": (["--checkpoints", broken], "stage2"),
    }


@pytest.fixture(scope="module")
def bad_runs(workspace):
    """Runs every bad case (a few at a time: they exit after the checks)."""
    root, demo = workspace
    base = root / "bad"
    base.mkdir()
    cases = _bad_cases(base, demo)
    results, running = {}, []
    for name, (args, _) in cases.items():
        out_dir = base / f"out_{name}"
        out_dir.mkdir()
        output = out_dir / "video.mp4"
        default = ["--output", output, "--checkpoints", demo]
        # A case's own --output/--checkpoints come last and win.
        proc = _start(root / "cache", *default, "--summary", out_dir / "summary.json", *args)
        running.append((name, proc, out_dir))
        if len(running) >= 4:
            _collect(running.pop(0), results)
    while running:
        _collect(running.pop(0), results)
    return cases, results


def _collect(item, results):
    name, proc, out_dir = item
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    results[name] = (proc.returncode, stdout, stderr, out_dir)


@pytest.mark.parametrize(
    "case",
    [
        "missing_image",
        "unreadable_image",
        "unsupported_mode",
        "frames_not_4k1",
        "resolution_not_32",
        "resolution_malformed",
        "output_dir_missing",
        "output_parent_is_file",
        "output_unwritable",
        "checkpoint_files_missing",
    ],
)
def test_bad_input_fails_cleanly(bad_runs, case):
    cases, results = bad_runs
    returncode, stdout, stderr, out_dir = results[case]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode != 0
    assert len(lines) == 1, stderr
    assert lines[0].startswith("sample.py: error: ") and "Traceback" not in stderr
    assert cases[case][1] in lines[0], lines[0]
    assert list(out_dir.iterdir()) == []  # no video, no summary, no temporary file
