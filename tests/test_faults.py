"""Faults (docs/faults.md): damaged checkpoints, non-finite training, dying processes, signals
at any moment and leftovers of killed runs. Entry points run as subprocesses, as a user runs
them; the pieces they rely on are also tested in process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import pytest

from swifti2v_jax import checksums
from tests import tb_events

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300
pytestmark = pytest.mark.filterwarnings("ignore:os.fork")


def _env(cache: Path, **extra) -> dict:
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        # identical programs across the runs of this module compile once
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        **extra,
    )


def _one_error_line(stderr: str, prog: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if f"{prog}: error:" in line]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


# --------------------------------------------------------------------------------------------
# Training: verified checkpoints with fallback, non-finite guards (tiny preset, 1 device)

STEPS = 8


def _train(workdir: Path, cache: Path, *overrides, env=None) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config=configs/stage2.py:tiny",
        f"--workdir={workdir}",
        f"--config.num_steps={STEPS}",
        "--config.log_every=1",
        "--config.checkpoint.every=3",
        *overrides,
    ]
    return subprocess.run(
        command,
        cwd=ROOT,
        env=_env(cache, **(env or {})),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _losses(workdir: Path) -> list[tuple]:
    return [(row["step"], row["loss"], row["grad_norm"]) for row in _metrics(workdir)]


def _largest_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=os.path.getsize)


def _copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model", "tb"))
    return target


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory):
    """An uninterrupted run, the same run resumed from damaged copies of its checkpoints, and
    a run with NaN batches injected at steps 2 (skipped) and 4 (stops it)."""
    root = tmp_path_factory.mktemp("faults_training")
    cache = root / "jax-cache"
    full, nan = root / "full", root / "nan"
    nan_env = {"SWIFTI2V_INJECT_NAN_STEPS": "2,4"}
    with ThreadPoolExecutor(2) as pool:
        nan_run = pool.submit(_train, nan, cache, "--config.max_nonfinite_skips=1", env=nan_env)
        runs = {"full": _train(full, cache)}
        runs["nan"] = nan_run.result()
    assert runs["full"].returncode == 0, runs["full"].stderr[-3000:]
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["3", "6", "8"]

    # Step 8: one flipped byte (its checksum fails). Step 6: truncated and unsealed, as if
    # killed before its checksums were written (found by the restore itself). Step 3: intact.
    damaged = _copy_run(full, root / "damaged")
    path = _largest_file(damaged / "checkpoints" / "8")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    path = _largest_file(damaged / "checkpoints" / "6")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (damaged / "checkpoints" / "6" / checksums.MANIFEST).unlink()
    runs["nan_metrics"] = _metrics(nan)
    runs["nan_checkpoints"] = sorted(p.name for p in (nan / "checkpoints").iterdir())
    with ThreadPoolExecutor(2) as pool:
        damaged_run = pool.submit(_train, damaged, cache)
        runs["nan_resumed"] = _train(nan, cache)
        runs["damaged"] = damaged_run.result()
    return root, runs


def test_damaged_checkpoints_fall_back_to_the_newest_intact_step(training_runs):
    root, runs = training_runs
    run = runs["damaged"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if "checkpoint step" in line]
    assert len(lines) == 3, run.stderr[-3000:]
    assert "checkpoint step 8 has state/" in lines[0] and "wrong checksum" in lines[0]
    assert "checkpoint step 6 has no checksums.json" in lines[1]  # unverified: tried
    assert "checkpoint step 6 cannot be read" in lines[2]
    assert "resuming from step 3, the newest intact checkpoint (skipped step 8, 6" in run.stderr
    # every step once, losses and gradient norms equal to the uninterrupted run's
    assert _losses(root / "damaged") == _losses(root / "full")
    for step in ("8", "6"):  # kept, not deleted
        assert (root / "damaged" / "checkpoints.skipped" / step).is_dir()
    assert checksums.problem(root / "damaged" / "checkpoints" / "8") is None  # saved again
    assert (root / "damaged" / "model").is_dir()
    # TensorBoard: a session start at step 4 makes it drop the older files' points from there
    (events,) = (root / "damaged" / "tb").glob("events.out.tfevents.*")
    rows = tb_events.read_events(events)
    assert [(r["step"], r["session_log"]) for r in rows if "session_log" in r] == [(4, 1)]


def test_nan_batches_are_skipped_then_stop_the_run_with_a_finite_checkpoint(training_runs):
    from swifti2v_jax import checkpoints

    root, runs = training_runs
    run = runs["nan"]
    assert run.returncode == 1, run.stderr[-3000:]
    assert "step 2: non-finite loss (nan)" in run.stderr and "skipped this batch" in run.stderr
    line = _one_error_line(run.stderr, "train.py")
    assert "step 4: non-finite loss (nan)" in line and "checkpoint at step 4" in line
    logged = runs["nan_metrics"]
    assert [row["step"] for row in logged] == [1, 3]  # bad steps are not logged
    assert all(np.isfinite(v) for row in logged for v in row.values())
    assert runs["nan_checkpoints"] == ["3", "4"]
    # Resumed without the fault: from step 4's (finite) state to the end and a finite export.
    resumed = runs["nan_resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint at step 4" in resumed.stderr
    assert [row["step"] for row in _metrics(root / "nan")] == [1, 3, 5, 6, 7, 8]
    _, params = checkpoints.load(root / "nan" / "model")
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


# --------------------------------------------------------------------------------------------
# The pieces, in process


def test_checksums_find_changed_truncated_missing_and_extra_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(bytes(range(256)) * 100)
    (tmp_path / "b.json").write_text("{}")
    checksums.seal(tmp_path)
    assert checksums.problem(tmp_path) is None
    data = bytearray((tmp_path / "sub" / "a.bin").read_bytes())
    data[1234] ^= 1
    (tmp_path / "sub" / "a.bin").write_bytes(bytes(data))
    assert "sub/a.bin with a wrong checksum" in checksums.problem(tmp_path)
    (tmp_path / "sub" / "a.bin").write_bytes(bytes(data[:100]))
    assert "truncated" in checksums.problem(tmp_path)
    (tmp_path / "sub" / "a.bin").unlink()
    assert checksums.problem(tmp_path) == "is missing sub/a.bin"
    checksums.seal(tmp_path)
    (tmp_path / "c").write_text("")
    assert "not written with (c)" in checksums.problem(tmp_path)


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
    from swifti2v_jax.training import metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)))
    path.write_text(path.read_text() + '{"step": 6, "lo')  # torn by a kill
    metrics.drop_rows_after(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_model_export_refuses_non_finite_params_and_names_a_missing_metadata(tmp_path):
    from swifti2v_jax import checkpoints

    params = {"a": np.ones((3,), np.float32), "b": {"w": np.array([1.0, np.nan], np.float32)}}
    with pytest.raises(checkpoints.CheckpointError, match=r"\['b'\]\['w'\] holds 1 non-finite"):
        checkpoints.save(tmp_path / "model", "dit", {}, params)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    params["b"]["w"][1] = 2.0
    checkpoints.save(tmp_path / "model", "dit", {}, params)
    (tmp_path / "model" / "params" / "_METADATA").unlink()
    with pytest.raises(checkpoints.CheckpointError, match="_METADATA is missing"):
        checkpoints.load(tmp_path / "model")


def test_a_step_without_metadata_is_named(tmp_path):
    from swifti2v_jax.training import checkpointing

    for item in ("state", "data"):
        (tmp_path / "checkpoints" / "5" / item).mkdir(parents=True)
    checkpointer = checkpointing.Checkpointer(tmp_path / "checkpoints")
    try:
        assert checkpointer.problem(5) == "is missing state/_METADATA (incomplete or damaged)"
    finally:
        checkpointer.close()


# --------------------------------------------------------------------------------------------
# No hangs: the launcher's children die with it; a process whose peer died stops in one line

PEER = str(ROOT / "tests" / "peer_check.py")


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its dead parent's reaper) counts as gone
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return True


@pytest.mark.parametrize("victim", ["launcher", "child 1"])
def test_nothing_outlives_a_killed_launcher_or_child(tmp_path, victim):
    """SIGKILL of the launcher: its children die with it. SIGKILL of one child: the other
    stops (its peer watchdog, or the launcher's grace period) and the launcher exits."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "swifti2v_jax.launch", "--processes", "2", "--", PEER],
        cwd=ROOT, env=_env(tmp_path / "cache"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines, pids = [], []
    try:
        while sum(line.endswith("] ready") for line in lines) < 2:
            line = launcher.stdout.readline()
            assert line, "\n".join(lines)
            lines.append(line.rstrip("\n"))
            if line.startswith("launch: process"):
                pids.append(int(line.split()[-1]))
        if victim == "launcher":
            launcher.kill()
        else:
            os.kill(pids[1], signal.SIGKILL)
        assert len(pids) == 2 and _gone_within([launcher.pid, *pids], 30), "\n".join(lines)
        lines += launcher.stdout.read().splitlines()
        launcher.wait()
    finally:
        launcher.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    assert not any("[Gloo]" in line for line in lines), lines  # chatter dropped
    if victim != "launcher":
        assert launcher.returncode != 0, lines


def test_a_process_whose_peer_died_stops_with_one_line(tmp_path):
    from swifti2v_jax import launch

    port = launch.free_port()
    procs = []
    try:
        for index in range(2):
            env = launch.child_env(index, 2, port, 1, base=_env(tmp_path / "cache"))
            del env[launch.LAUNCHER_PID]  # started by hand, as on two hosts
            procs.append(
                subprocess.Popen(
                    [sys.executable, PEER],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
            )
        for proc in procs:  # (Gloo's connection line comes first)
            while (line := proc.stdout.readline()) and line.strip() != "ready":
                pass
            assert line, f"exited with {proc.wait()}"
        procs[1].kill()
        assert _gone_within([procs[0].pid], 30)
        stderr = procs[0].stderr.read()
        procs[0].wait()
    finally:
        for proc in procs:
            proc.kill()
    assert procs[0].returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and "[Gloo]" not in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    # found by the watchdog (a silent peer) or by a collective that lost its peer
    assert lines[0].startswith("peer_check.py: error: ") and "a peer process died" in lines[0]


# --------------------------------------------------------------------------------------------
# Signals at any moment of start-up; a main thread stuck in C code


def _sample_env(space: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", TMPDIR=str(space))


def test_sigint_at_any_moment_of_start_up_exits_130_and_leaves_nothing(tmp_path):
    """SIGINT 1, 2, 4 and 8 s after `python sample.py` starts (imports, loading, compiles);
    measured here: each stopped within 0.1 s of the signal."""
    # A long clip, so that even with warm compilation caches every run is still going when its
    # signal comes (the default 17 frames can finish within 8 s).
    command = [sys.executable, str(ROOT / "sample.py"), "--frames", "257"]
    runs = {}
    for delay in (1, 2, 4, 8):
        out = tmp_path / f"after_{delay}s"
        out.mkdir()
        runs[delay] = (
            out,
            subprocess.Popen(
                [*command, "--output", str(out / "v.mp4")],
                cwd=ROOT,
                env=_sample_env(out),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            ),  # fmt: skip
        )
    start = time.monotonic()
    for delay in sorted(runs):
        time.sleep(max(0.0, start + delay - time.monotonic()))
        runs[delay][1].send_signal(signal.SIGINT)
    for delay, (out, proc) in runs.items():
        _, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 130, (delay, stderr[-3000:])
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines[-1] == "sample.py: interrupted by SIGINT" and "Traceback" not in stderr
        assert "wrote" not in stderr  # stopped, not run to the end
        assert list(out.iterdir()) == [], (delay, list(out.iterdir()))  # nothing left behind


def test_a_signal_ends_a_main_thread_stuck_in_c_code(tmp_path):
    partial = tmp_path / "partial"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "stuck_check.py"), str(partial)],
        cwd=ROOT, env=_sample_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "compressing\n"
        time.sleep(0.5)  # inside zlib.compress
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.splitlines() == ["stuck_check.py: interrupted by SIGTERM"]
    assert "finished" not in stdout and not partial.exists()  # cut short, cleaned up


# --------------------------------------------------------------------------------------------
# Leftovers of killed runs: removed by the next run of the same command


def _dead_tag() -> str:
    """The leftovers tag a killed process had."""
    proc = subprocess.Popen(["sleep", "30"])
    start = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    proc.kill()
    proc.wait()
    return f"p{proc.pid}s{start}"


def test_stale_partial_videos_and_conversion_folders_are_removed(tmp_path):
    from swifti2v_jax import leftovers

    out = tmp_path / "out"
    out.mkdir()
    dead, alive = _dead_tag(), leftovers.tag()
    stale = out / f".v.mp4.{dead}.k2j4x9q1.partial.mp4"
    running = out / f".v.mp4.{alive}.a8d7s6f5.partial.mp4"  # a run still writing: kept
    other = out / f".w.mp4.{dead}.k2j4x9q1.partial.mp4"  # another output's: not ours
    stale_conversion = out / f".converted.tmp-{dead}-3kd9"
    stale_conversion.mkdir()
    (stale_conversion / "dit").mkdir()
    for path in (stale, running, other):
        path.write_bytes(b"half")
    (tmp_path / "empty").mkdir()
    sample = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--output", str(out / "v.mp4"),
         "--resolution", "136x64"],
        cwd=ROOT, env=_sample_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    convert = subprocess.run(
        [sys.executable, "-m", "conversion", "--source", str(tmp_path / "empty"),
         "--output", str(out / "converted")],
        cwd=ROOT, env=_sample_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert sample.returncode == 1 and "multiples of 32" in sample.stderr, sample.stderr
    assert f"removed 1 stale partial video(s) left by a killed run in {out}" in sample.stderr
    assert not stale.exists() and running.exists() and other.exists()
    assert convert.returncode == 1, convert.stderr
    assert "removed 1 stale conversion folder(s)" in convert.stdout, convert.stdout
    assert not stale_conversion.exists()


def test_a_conversion_whose_output_appears_meanwhile_is_one_line(tmp_path, monkeypatch):
    import importlib

    from conversion.common import ConversionError

    main = importlib.import_module("conversion.__main__")
    output = tmp_path / "converted"

    class Job:  # converts, while someone else creates --output
        name, description, quantizable = "dit", "a DiT", False

        def validate(self):
            pass

        def convert(self, path, dtype):
            path.mkdir()
            (output / "vae").mkdir(parents=True)  # another conversion writing there

    monkeypatch.setattr(main, "find_jobs", lambda *args: [Job()])
    (tmp_path / "source").mkdir()
    with pytest.raises(ConversionError, match="appeared while converting; nothing was written"):
        main.convert(tmp_path / "source", output, log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "source"]  # no tmp left
    assert [p.name for p in output.iterdir()] == ["vae"]  # theirs, untouched
