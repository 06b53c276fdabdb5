"""Multi-process training for real: train.py under swifti2v_jax/launch.py on CPU devices.

One test, four launches sharing a compilation cache (the tiny Stage II preset, FSDP on):
1 process x 8 devices, 2 processes x 4 devices uninterrupted, 2 x 4 with SIGTERM sent to
process 1 only, and that run resumed. The fast checks of the pieces (the loader's rows of the
global batch, the launcher) are in tests/test_multihost.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from swifti2v_jax import checkpoints
from tests.test_training import REPO, _env, _losses, _train_command

STEPS = 6


def _command(workdir: Path) -> list[str]:
    """train.py's arguments (no interpreter), FSDP on, a checkpoint only at the end."""
    return [*_train_command(workdir, STEPS)[1:], "--config.mesh.fsdp=True"]


def _launch(workdir: Path, env: dict) -> subprocess.Popen:
    launcher = [sys.executable, "-m", "swifti2v_jax.launch", "--processes", "2"]
    return subprocess.Popen(
        [*launcher, "--devices-per-process", "4", "--", *_command(workdir)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def _kill_if_running(launcher: subprocess.Popen) -> None:
    """After a failure or timeout: the launcher and its children (one process group)."""
    if launcher.poll() is None:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()


def _run_launch(workdir: Path, env: dict) -> str:
    process = _launch(workdir, env)
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        _kill_if_running(process)
    assert process.returncode == 0, output[-4000:]
    return output


def _state(checkpoint: Path) -> dict:
    """A checkpointed TrainState as host numpy arrays (whatever devices wrote it)."""
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(checkpoint / "state").item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(checkpoint / "state", restore_args=args)


def _max_difference(a: dict, b: dict) -> float:
    differences = jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)
    return max(jax.tree.leaves(differences))


def test_two_processes_match_one_and_resume_exactly(tmp_path):
    env = _env(tmp_path / "jax-cache")

    one = tmp_path / "one"  # 1 process x 8 devices
    run = subprocess.run(
        [sys.executable, *_command(one)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    two = tmp_path / "two"  # 2 processes x 4 devices, uninterrupted
    output = _run_launch(two, env)
    # The same 8-device mesh, spread over 1 process and over 2 processes (train.py logs it).
    mesh = "mesh {'data': 1, 'fsdp': 8} (fsdp=True), global batch 8"
    assert f"{mesh}, process 0 of 1 reads rows [0, 1, 2, 3, 4, 5, 6, 7]" in run.stderr
    assert f"{mesh}, process 0 of 2 reads rows [0, 1, 2, 3]" in output
    assert f"{mesh}, process 1 of 2 reads rows [4, 5, 6, 7]" in output
    reference = _losses(two)
    assert sorted(reference) == list(range(1, STEPS + 1))  # written once, by process 0
    np.testing.assert_allclose(list(reference.values()), list(_losses(one).values()), rtol=1e-6)
    state_one = _state(one / "checkpoints" / str(STEPS))
    state_two = _state(two / "checkpoints" / str(STEPS))
    assert _max_difference(state_one["params"], state_two["params"]) < 1e-6
    assert len(list((two / "tb").iterdir())) == 1  # one event file: process 0's
    _, exported = checkpoints.load(two / "model", kind="dit")  # gathered from both processes
    assert _max_difference(exported, state_two["ema_params"]) == 0

    # SIGTERM to process 1 only, once process 0 has logged step 1: both save the same step.
    interrupted = tmp_path / "interrupted"
    launch = _launch(interrupted, env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(launch.stdout.readline, "")))
    reader.start()
    metrics_file, deadline = interrupted / "metrics.jsonl", time.time() + 400
    while time.time() < deadline and launch.poll() is None:
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 1:
            break
        time.sleep(0.05)
    pids = dict(re.findall(r"launch: process (\d) pid (\d+)", "".join(lines)))
    os.kill(int(pids["1"]), signal.SIGTERM)
    try:
        launch.wait(timeout=300)
    finally:
        _kill_if_running(launch)
    reader.join()
    output = "".join(lines)
    assert launch.returncode == 0, output[-4000:]
    saved = [int(s) for s in re.findall(r"preempted: saved the checkpoint at step (\d+)", output)]
    assert len(saved) == 2 and saved[0] == saved[1], output[-4000:]
    step = saved[0]
    assert 1 <= step < STEPS, step
    data = interrupted / "checkpoints" / str(step) / "data"  # each process's iterator state
    data_files = sorted(p.name for p in data.glob("process_*"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"], data_files
    assert max(_losses(interrupted)) == step

    output = _run_launch(interrupted, env)
    assert output.count(f"resuming from the checkpoint at step {step}") == 2, output[-4000:]
    losses = _losses(interrupted)
    assert sorted(losses) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert losses[s] == reference[s], (s, step, losses[s], reference[s])
    final = _state(interrupted / "checkpoints" / str(STEPS))
    assert _max_difference(final["params"], state_two["params"]) == 0
