"""Multi-process pieces, fast: each process's rows of the global batch, the launcher, and data
preparation split over processes (resumable). Training under the launcher for real:
tests/test_multihost_train.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from swifti2v_jax import launch
from swifti2v_jax.data import loader, prepare, records, shards, synthetic
from swifti2v_jax.training import checkpointing, sharding
from tests.test_data import CLIP, fake_encoders, write_video

WINDOW = loader.WindowSpec(noisy_blocks=2, neighbours=1, text_len=8)


def _batches(source, rows, worker_count=0, count=3, batch_size=8):
    iterator = iter(
        loader.make_loader(
            source, batch_size=batch_size, window=WINDOW, seed=1, rows=rows,
            worker_count=worker_count,
        )
    )  # fmt: skip
    return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("processes", [2, 4])
def test_process_rows_rebuild_the_one_process_batches(processes):
    """Each process reads its rows of one global sequence: concatenated in row order they
    are the one-process batches (records and random windows), across epochs (12 records)."""
    source = synthetic.SyntheticSource(synthetic.SyntheticSpec(num_records=12, num_blocks=5))
    whole = _batches(source, None, count=4)
    rows = 8 // processes
    parts = [_batches(source, range(p * rows, (p + 1) * rows), count=4) for p in range(processes)]
    for step, batch in enumerate(whole):
        for name, value in batch.items():
            glued = np.concatenate([part[step][name] for part in parts])
            np.testing.assert_array_equal(glued, value, err_msg=f"{name} at step {step}")
    with pytest.raises(ValueError, match="outside a batch"):
        _batches(source, (6, 8))


def test_rows_need_not_be_one_block():
    """A TPU mesh may give a process rows that are not one block: any ascending rows work,
    as jax.make_array_from_process_local_data takes them (rows in ascending order)."""
    source = synthetic.SyntheticSource(synthetic.SyntheticSpec(num_records=12, num_blocks=5))
    whole = _batches(source, None, count=2)
    odd = _batches(source, (1, 3, 5, 7), count=2)
    for batch, part in zip(whole, odd):
        np.testing.assert_array_equal(part["latents"], batch["latents"][1::2])


def test_process_rows_do_not_depend_on_grain_workers():
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (train.py parses)
    source = synthetic.SyntheticSource(synthetic.SyntheticSpec(num_records=12, num_blocks=5))
    whole = _batches(source, None, count=3)
    second_half = _batches(source, range(4, 8), worker_count=2, count=3)  # process 1 of 2
    for batch, part in zip(whole, second_half):
        np.testing.assert_array_equal(part["latents"], batch["latents"][4:])


def test_process_rows_of_a_one_process_mesh():
    mesh = sharding.make_mesh(1)
    assert sharding.process_rows(mesh, 4) == (0, 1, 2, 3)
    assert sharding.check_batch_size(4, mesh) == (0, 1, 2, 3)


def test_resume_needs_the_same_process_count(tmp_path):
    data = tmp_path / "7" / "data"
    data.mkdir(parents=True)
    checkpointing.check_process_count(tmp_path / "7")  # no iterator state: nothing to check
    for index in range(2):
        (data / f"process_{index}-of-2.json").write_text("{}")
    with pytest.raises(ValueError, match="written by 2 process"):
        checkpointing.check_process_count(tmp_path / "7")


def test_launcher_environment_exit_codes_and_prefixes(tmp_path):
    env = launch.child_env(1, 3, 1234, 4, base={"XLA_FLAGS": f"{launch.DEVICE_COUNT_FLAG}=8 -x"})
    assert env[launch.COORDINATOR] == "localhost:1234" and env[launch.PROCESS_ID] == "1"
    assert env["XLA_FLAGS"] == f"-x {launch.DEVICE_COUNT_FLAG}=4"
    script = (
        "import os, sys; i = int(os.environ['SWIFTI2V_PROCESS_ID']); "
        "print('hello', os.environ['SWIFTI2V_NUM_PROCESSES']); sys.exit(5 if i == 1 else 0)"
    )
    run = subprocess.run(
        [sys.executable, "-m", "swifti2v_jax.launch", "--processes", "2", "--", "-c", script],
        capture_output=True, text=True, timeout=60, cwd=os.getcwd(),
    )  # fmt: skip
    assert run.returncode == 5, run.stderr
    assert sorted(run.stdout.splitlines()) == ["[0] hello 2", "[1] hello 2"]
    bad = dict(os.environ, SWIFTI2V_NUM_PROCESSES="2")
    bad.pop(launch.COORDINATOR, None)
    check = "from swifti2v_jax import launch; launch.initialize()"
    run = subprocess.run([sys.executable, "-c", check], env=bad, capture_output=True, text=True)
    assert run.returncode != 0 and "JAX_COORDINATOR_ADDRESS" in run.stderr


# ---------------------------------------------------------------------------------------------
# Data preparation split over processes


@pytest.fixture(scope="module")
def seven_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for index in range(6):
        write_video(folder / f"v{index}.mp4", 13, seed=index)
        (folder / f"v{index}.txt").write_text(f"clip number {index}")
    (folder / "v3b.mp4").write_bytes(b"not a video")  # sorted 5th: shard 2 has a skip
    return folder


class CountingEncoders:
    """The test stand-in encoders, counting videos encoded; `fail_after`: raise mid-run."""

    def __init__(self, fail_after: int | None = None):
        self.base, self.calls, self.fail_after = fake_encoders(), 0, fail_after

    def encoders(self, batch: int = 1) -> prepare.Encoders:
        def encode_video(video):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise KeyboardInterrupt("killed")
            self.calls += len(video)
            return self.base.encode_video(video)

        return prepare.Encoders(encode_video, self.base.encode_text, batch=batch)


def _prepare(videos, out, counter, index=0, count=1, batch=1):
    return prepare.prepare(
        videos, out, clip_spec=CLIP, encoders=counter.encoders(batch), records_per_shard=2,
        process_index=index, process_count=count,
    )  # fmt: skip


def _decoded(out) -> dict:
    source = loader.array_record_source(out)
    found = {}
    for index in range(len(source)):
        record = records.as_record(source[index])
        found[record["name"]] = record
    return found


def _same_records(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for name in a:
        for field, value in a[name].items():
            np.testing.assert_array_equal(value, b[name][field], err_msg=f"{name}.{field}")


def test_prepare_with_three_processes_equals_one_and_resumes(seven_videos, tmp_path):
    """3 processes (run one after the other: the split is a pure function of the index),
    encoding 2 clips per call, write the records, shard files and manifest of 1 process.
    Then a 3-process run is interrupted (process 1 dies inside its shard, process 2 never
    ran): the rerun encodes only the unfinished videos and leaves finished shards untouched."""
    one = tmp_path / "one"
    report = _prepare(seven_videos, one, CountingEncoders())
    assert report.written == 6 and list(report.skipped) == ["v3b.mp4"]
    three = tmp_path / "three"
    for index in (1, 2, 0):  # process 0 writes the manifest once all shards are done
        _prepare(seven_videos, three, CountingEncoders(), index, 3, batch=2)  # 2 clips a call
    _same_records(_decoded(one), _decoded(three))
    listing = lambda out: sorted(p.name for p in out.glob("train-*"))
    assert listing(one) == listing(three) == [shards.shard_name(k, 4) for k in range(4)]
    assert (one / "dataset.json").read_text() == (three / "dataset.json").read_text()
    assert json.loads((three / "dataset.json").read_text())["num_records"] == 6

    resumed = tmp_path / "interrupted"
    with pytest.raises(ValueError, match=r"shards \[1, 2\] are unfinished"):  # no manifest
        _prepare(seven_videos, resumed, CountingEncoders(), 0, 3)  # shards 0 and 3 finished
    with pytest.raises(KeyboardInterrupt):  # process 1 dies in shard 1; 2 never started
        _prepare(seven_videos, resumed, CountingEncoders(fail_after=1), 1, 3)
    assert not list(resumed.glob(".*tmp*")) and not (resumed / "dataset.json").exists()
    times = {p.name: p.stat().st_mtime_ns for p in resumed.glob("train-*")}
    assert sorted(times) == [shards.shard_name(k, 4) for k in (0, 3)]
    counters = [CountingEncoders() for _ in range(3)]
    for index in (1, 2, 0):
        _prepare(seven_videos, resumed, counters[index], index, 3)
    # Two encodes per video (clip, reference): shard 1's 2 videos, shard 2's one usable video.
    assert [c.calls for c in counters] == [0, 4, 2]
    for name, mtime in times.items():
        assert (resumed / name).stat().st_mtime_ns == mtime, name
    _same_records(_decoded(one), _decoded(resumed))
    with pytest.raises(ValueError, match="other settings"):
        prepare.prepare(
            seven_videos, resumed, clip_spec=CLIP, encoders=fake_encoders(), records_per_shard=3
        )


@pytest.mark.slow
def test_prepare_cli_on_three_processes(seven_videos, tmp_path):
    """Real processes under the launcher: the prepare command (tiny converted models) on 3
    processes with 2 devices each (2 clips per VAE call, one per device) writes the records
    of the same command on 1 process with 1 device."""
    pytest.importorskip("torch")
    from tests.test_data import _save_tiny_models

    _save_tiny_models(tmp_path)
    args = [
        "-m", "swifti2v_jax.data.prepare", f"--videos={seven_videos}", f"--vae={tmp_path / 'vae'}",
        f"--t5={tmp_path / 't5'}", "--text-len=16", "--num-frames=13", "--height=32",
        "--width=32", "--dtype=float32", "--records-per-shard=2",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    one = subprocess.run(
        [sys.executable, *args, f"--out={tmp_path / 'one'}"], capture_output=True, text=True,
        env=env, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    three = subprocess.run(
        [sys.executable, "-m", "swifti2v_jax.launch", "--processes", "3",
         "--devices-per-process", "2", "--", *args,
         f"--out={tmp_path / 'three'}"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert three.returncode == 0, three.stderr[-3000:]
    assert "[0] prepared 6 clips into 4 shards" in three.stdout, three.stdout
    _same_records(_decoded(tmp_path / "one"), _decoded(tmp_path / "three"))
