"""Every failure is one clear line and leaves nothing behind (swifti2v_jax/cli.py), tested as a
user runs the entry points: subprocesses of sample.py, train.py and `python -m conversion`.

Each case checks the exit status, at most 3 lines on stderr, no traceback, and that no new file
is left in the output folder, the workdir or the temporary folder (TMPDIR of the subprocess).
Signals: the process is stopped once it is demonstrably running (its partial mp4 exists, a
line on stderr, its checkpoint folder exists).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swifti2v_jax.io.video import read_video

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300

# The test process runs JAX; starting a subprocess from it is a fork+exec, which JAX warns about.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork")


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    for name in ("tmp", "cache", "out", "inputs"):
        (root / name).mkdir()
    return root


def _env(space: Path) -> dict:
    return dict(
        os.environ,
        TMPDIR=str(space / "tmp"),
        SWIFTI2V_JAX_CACHE=str(space / "cache"),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )


def _sample(*args) -> list[str]:
    return [sys.executable, str(ROOT / "sample.py"), *map(str, args)]


def _train(*args) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *map(str, args)]


def _convert(*args) -> list[str]:
    return [sys.executable, "-m", "conversion", *map(str, args)]


def _files(*folders: Path) -> set[Path]:
    return {p for folder in folders if folder.exists() for p in folder.rglob("*")}


def _check_clean(returncode, stderr, status, watched, before, max_lines=3):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == status, stderr[-3000:]
    assert len(lines) <= max_lines and "Traceback" not in stderr, stderr[-3000:]
    assert _files(*watched) == before  # nothing new in the output folder, workdir, TMPDIR
    return lines


# --------------------------------------------------------------------------------------------
# Bad configs, flags, inputs and checkpoint files: one line, before any model work.


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_checkpoints(inputs: Path) -> dict[str, Path]:
    import torch
    from safetensors.numpy import save_file

    pth = inputs / "pth"
    pth.mkdir()
    torch.save({"conv1.weight": torch.randn(64, 64)}, pth / "Wan2.2_VAE.pth")
    _truncate(pth / "Wan2.2_VAE.pth")
    dit_config = {"_class_name": "WanModel", "dim": 64, "num_heads": 2}
    shards = inputs / "safetensors"
    shards.mkdir()
    (shards / "config.json").write_text(json.dumps(dit_config))
    save_file({"x": np.zeros((128, 128), np.float32)}, str(shards / "model.safetensors"))
    _truncate(shards / "model.safetensors")
    index = inputs / "index"
    index.mkdir()
    (index / "config.json").write_text(json.dumps(dit_config))
    (index / "model.safetensors.index.json").write_text('{"weight_map": {"x": "model.saf')
    return {
        "pth": pth / "Wan2.2_VAE.pth",
        "safetensors": shards / "model.safetensors",
        "index": index / "model.safetensors.index.json",
    }


def _bad_cases(space: Path) -> dict[str, tuple[list[str], int, str]]:
    """name -> (command, exit status, text of the one line)."""
    inputs, out = space / "inputs", space / "out"
    tiny = Image.new("RGB", (1, 1))
    tiny.save(inputs / "tiny.png")
    (inputs / "a_file").write_text("")
    broken = _corrupt_checkpoints(inputs)
    video = out / "video.mp4"
    existing = inputs / "existing.mp4"
    existing.write_bytes(b"an earlier video")
    garbage = inputs / "garbage_data"
    garbage.mkdir()
    shard = garbage / "train-00000-of-00001.array_record"
    shard.write_bytes(np.random.default_rng(0).bytes(100_000))
    stage2 = "--config=configs/stage2.py:tiny"
    return {
        # docs/faults.md: refused before any model loads
        "sample_seed_out_of_range": (
            _sample("--seed", 2**64, "--output", video),
            1,
            "--seed must be between 0 and 2**63 - 1",
        ),
        "sample_empty_prompt": (_sample("--prompt", "", "--output", video), 1, "--prompt is empty"),
        "sample_no_overwrite": (
            _sample("--no-overwrite", "--output", existing),
            1,
            "exists and --no-overwrite was given",
        ),
        "sample_stray_argument": (_sample("stray", "--output", video), 2, "unexpected arguments"),
        "sample_frames_1": (_sample("--frames", 1, "--output", video), 1, "at least 2, got 1"),
        "sample_unknown_field": (_sample("--config.nope=1"), 2, "unknown config field 'nope'"),
        "sample_missing_config": (
            _sample(f"--config={inputs / 'none.py'}"),
            2,
            "cannot load the config file",
        ),
        "sample_bad_preset": (_sample("--config=configs/sample.py:nope"), 2, "unknown sample"),
        "sample_resolution_136": (
            _sample("--resolution", "136x64", "--output", video),
            1,
            "multiples of 32; try 128x64",
        ),
        "sample_1x1_image": (
            _sample("--image", inputs / "tiny.png", "--output", video),
            1,
            "smaller than the Stage I size",
        ),
        "sample_contradicts_the_trained_window": (  # csg/contract.py
            _sample("--config.stage2.noisy_blocks=2", "--output", video),
            1,
            "was trained with noisy_blocks=1 but the preset sets stage2.noisy_blocks=2",
        ),
        "train_unknown_field": (
            _train(stage2, "--workdir", out / "wd", "--config.nope=1"),
            2,
            "unknown config field 'nope'",
        ),
        "train_missing_config": (
            _train(f"--config={inputs / 'none.py'}", "--workdir", out / "wd"),
            2,
            "cannot load the config file",
        ),
        "train_workdir_is_a_file": (
            _train(stage2, "--workdir", inputs / "a_file"),
            1,
            "is not a directory",
        ),
        "train_garbage_shard": (
            _train(stage2, "--workdir", out / "wd", f"--config.data.path={garbage}"),
            1,
            f"{shard} is not a readable ArrayRecord shard (Corrupted",
        ),
        "train_bad_value_once": (
            _train(stage2, "--workdir", out / "wd", "--config.num_steps=0"),
            1,
            "num_steps",
        ),
        **{
            f"convert_truncated_{kind}": (
                _convert("--source", path.parent, "--output", out / "converted"),
                1,
                f"{path} is corrupt or truncated",
            )
            for kind, path in broken.items()
        },
    }


@pytest.fixture(scope="module")
def bad_runs(space):
    cases = _bad_cases(space)
    watched = (space / "out", space / "tmp")
    before = _files(*watched)

    def run(command):
        return subprocess.run(
            command, capture_output=True, text=True, env=_env(space), cwd=ROOT, timeout=TIMEOUT
        )

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(cases, pool.map(run, [c for c, _, _ in cases.values()])))
    return cases, results, watched, before


@pytest.mark.parametrize(
    "case",
    [
        "sample_seed_out_of_range",
        "sample_empty_prompt",
        "sample_no_overwrite",
        "sample_stray_argument",
        "sample_frames_1",
        "sample_unknown_field",
        "sample_missing_config",
        "sample_bad_preset",
        "sample_resolution_136",
        "sample_1x1_image",
        "sample_contradicts_the_trained_window",
        "train_unknown_field",
        "train_missing_config",
        "train_workdir_is_a_file",
        "train_bad_value_once",
        "train_garbage_shard",
        "convert_truncated_pth",
        "convert_truncated_safetensors",
        "convert_truncated_index",
    ],
)
def test_user_error_is_one_line(bad_runs, case):
    cases, results, watched, before = bad_runs
    _, status, text = cases[case]
    result = results[case]
    lines = _check_clean(result.returncode, result.stderr, status, watched, before)
    assert len(lines) == 1 and ": error: " in lines[0] and text in lines[0], lines


def test_sample_help_exits_0(space):
    result = subprocess.run(
        _sample("--help"), capture_output=True, text=True, env=_env(space), timeout=TIMEOUT
    )
    assert result.returncode == 0 and "--resolution" in result.stdout, result.stderr


# --------------------------------------------------------------------------------------------
# A successful run: umask-respecting mode, the crop notice, no progress-bar control codes.


def test_sample_output_mode_notice_and_plain_stderr(space):
    out = space / "out" / "ok"
    out.mkdir()
    output = out / "video.mp4"
    output.write_bytes(b"old")
    output.chmod(0o600)
    Image.new("RGB", (512, 512), (40, 120, 200)).save(space / "inputs" / "square.png")
    env = _env(space)
    del env["JAX_PLATFORMS"]  # as a user runs it: no libtpu lines without a TPU (startup.py)
    long_prompt = "a cat " * 400
    summary = out / "summary.json"
    result = subprocess.run(
        _sample(
            "--image", space / "inputs" / "square.png", "--output", output,
            "--prompt", long_prompt, "--summary", summary,
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        umask=0o022,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "libtpu" not in result.stderr and "TPU" not in result.stderr, result.stderr[-3000:]
    assert f"--output {output} exists: it is replaced" in result.stderr
    assert "prompt: 2001 tokens, longer than the 64 the text encoder takes" in result.stderr
    assert output.stat().st_mode & 0o777 == 0o644
    assert summary.stat().st_mode & 0o777 == 0o644
    assert read_video(output)[0].shape == (17, 64, 128, 3)
    assert "image: 512x512 downscaled to 128x128 and centre-cropped to 128x64" in result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr  # not a terminal
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "video.mp4"]


# --------------------------------------------------------------------------------------------
# Signals


def _wait_for(condition, proc, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _start(space: Path, command: list[str], stderr_path: Path) -> subprocess.Popen:
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, env=_env(space), cwd=ROOT
        )


@pytest.mark.parametrize(
    "signum, when",
    [(signal.SIGTERM, "partial mp4 written"), (signal.SIGINT, "before the first frame")],
)
def test_signal_during_sampling_cleans_up(space, signum, when):
    out = space / "out" / signum.name
    out.mkdir()
    output = out / "video.mp4"
    output.write_bytes(b"previous video")
    watched = (out, space / "tmp")
    before = _files(*watched)
    log = space / f"{signum.name}.stderr"
    proc = _start(space, _sample("--output", output), log)
    try:
        if when == "partial mp4 written":
            _wait_for(lambda: any(".partial" in p.name for p in out.iterdir()), proc, when)
        else:
            _wait_for(lambda: "SwiftI2V:" in log.read_text(), proc, "the start line")
        proc.send_signal(signum)
        proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill()
    stderr = log.read_text()
    # The existing output is announced first (it is replaced only once the new video is whole).
    lines = _check_clean(proc.returncode, stderr, 128 + signum, watched, before, max_lines=4)
    assert lines[0].startswith(f"--output {output} exists")
    assert lines[-1] == f"sample.py: interrupted by {signum.name}"
    assert output.read_bytes() == b"previous video"


def test_sigterm_during_train_setup_leaves_no_workdir(space):
    workdir = space / "out" / "train_workdir"
    watched = (space / "out", space / "tmp")
    before = _files(*watched)
    log = space / "train.stderr"
    command = _train("--config=configs/stage2.py:tiny", "--workdir", workdir)
    proc = _start(space, command, log)
    try:
        _wait_for((workdir / "checkpoints").is_dir, proc, "the checkpoint folder")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill()
    stderr = log.read_text()
    if proc.returncode == 0:  # the loop's preemption handler was already in place: it saved
        assert any(p.name.isdigit() for p in (workdir / "checkpoints").iterdir()), stderr
        return
    lines = _check_clean(proc.returncode, stderr, 128 + signal.SIGTERM, watched, before)
    assert lines[-1] == "train.py: interrupted by SIGTERM" and not workdir.exists()


# --------------------------------------------------------------------------------------------
# The pieces, in process (fast)


def test_new_outputs_removes_only_what_the_block_made(tmp_path):
    from swifti2v_jax import cli

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "old.txt").write_text("keep me")
    with pytest.raises(RuntimeError), cli.new_outputs(existing, keep=lambda: False):
        (existing / "checkpoints").mkdir()
        (existing / "metrics.jsonl").write_text("")
        raise RuntimeError("setup failed")
    assert [p.name for p in existing.iterdir()] == ["old.txt"]
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt), cli.new_outputs(fresh, keep=lambda: False):
        (fresh / "checkpoints").mkdir(parents=True)
        raise KeyboardInterrupt
    assert not fresh.exists()
    with pytest.raises(RuntimeError), cli.new_outputs(fresh, keep=lambda: True):
        (fresh / "checkpoints" / "10").mkdir(parents=True)
        raise RuntimeError("after a checkpoint")
    assert (fresh / "checkpoints" / "10").is_dir()  # worth resuming from: kept


def test_signals_deferred_acts_after_the_block():
    from swifti2v_jax import cli

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        cli.install_signal_handlers()
        finished = False
        with pytest.raises(cli.Interrupted) as caught:
            with cli.signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler runs here, and must not raise yet
                finished = True
        assert finished and caught.value.signum == signal.SIGTERM
        # after the first signal the handlers ignore more, so cleanup is not cut short
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_config_error_messages_are_one_line():
    from absl import flags

    from swifti2v_jax import cli

    argv = ["sample.py", "--config.stage1.nope=3"]
    assert cli.config_error_message(AttributeError("\"'nope'\""), argv) == (
        "unknown config field 'nope' in --config.stage1.nope"
    )
    wrapped = flags.IllegalFlagValueError(
        "flag --config=c.py:x: Error whilst parsing config file:\n\nTraceback (most recent "
        "call last):\n  File \"c.py\", line 3\nValueError: unknown preset 'x'"
    )
    assert cli.config_error_message(wrapped) == "flag --config=c.py:x: unknown preset 'x'"


def test_progress_is_plain_lines_off_a_terminal(monkeypatch):
    import io

    from swifti2v_jax import progress

    stream = io.StringIO()
    assert list(progress.bar(range(3), desc="work", unit="clip", file=stream)) == [0, 1, 2]
    assert stream.getvalue() == ""  # short work: quiet
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)
    bar = progress.bar(total=2, desc="Stage II", unit="segment", file=stream)
    bar.set_postfix_str("blocks 1-3")
    bar.update()
    bar.close()
    assert stream.getvalue().startswith("Stage II: 1/2 segment (blocks 1-3), ")
    assert "\r" not in stream.getvalue() and stream.getvalue().count("\n") == 1


def test_run_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    from swifti2v_jax import cli

    monkeypatch.setattr(sys, "argv", ["prog"])
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def user_mistake(argv):
        raise ValueError("frames must be 4k+1,\n   got 16")

    def bug(argv):
        raise ZeroDivisionError("a bug")

    try:
        with pytest.raises(SystemExit) as exited:
            cli.run(user_mistake, prog="prog", user_errors=(ValueError,))
        assert exited.value.code == cli.EXIT_USER
        assert capsys.readouterr().err == "prog: error: frames must be 4k+1, got 16\n"
        with pytest.raises(ZeroDivisionError):
            cli.run(bug, prog="prog", user_errors=(ValueError,))
        with pytest.raises(SystemExit) as exited:
            cli.run(lambda argv: 0, prog="prog")
        assert exited.value.code == 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
