"""sample.py --manifest (swifti2v_jax/manifest.py): many clips in one run. Each row's mp4 has
the bytes of a lone run; programs compile once per shape; a rerun skips finished rows and redoes
partial ones; bad rows are reported by line; rows spread over local devices and over processes
under the launcher (the 2 x 2 case with a kill and a rerun is `slow`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swifti2v_jax import generation, launch, manifest

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    {"name": "a", "seed": 1},
    {"name": "b", "seed": 2, "prompt": "a red fox runs through snow"},
    {"name": "c", "seed": 3, "stage2_steps": 2},
]


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _lone(tmp_path: Path, row: dict) -> bytes:
    """The mp4 of one row made alone: generate() with no resident models, as sample.py does."""
    row = dict(row)
    fields = {manifest.ROW_FIELDS.get(k, k): v for k, v in row.items()}
    config = manifest.row_config(
        generation.sample_config("demo"), manifest.Row(0, 0, fields.pop("name"), fields), tmp_path
    )
    prepared = generation.prepare(config)
    generation.generate(prepared)
    return prepared.output.read_bytes()


def _env(devices: int = 1) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{launch.DEVICE_COUNT_FLAG}={devices}"
    return env


def test_bad_rows_are_reported_by_line(tmp_path):
    path = _write(
        tmp_path / "jobs.jsonl",
        [
            {"name": "ok", "frames": 9, "stage1.steps": 2},
            "not json",
            "",
            "# a comment",
            {"seed": 1},
            {"name": "ok"},
            {"name": "../x"},
            {"name": "y", "colour": "red"},
            {"name": "z", "output": "elsewhere.mp4"},
        ],
    )
    rows, failures = manifest.read_rows(path, generation.sample_config("demo"))
    assert [(r.line, r.name, r.fields) for r in rows] == [
        (1, "ok", {"frames": 9, "stage1.steps": 2})
    ]
    assert [f.line for f in failures] == [2, 5, 6, 7, 8, 9]
    messages = [f.message for f in failures]
    assert messages[0].startswith("not JSON")
    assert "'name'" in messages[1] and "line 1" in messages[2] and "plain file" in messages[3]
    assert "unknown field 'colour'" in messages[4] and "set by the manifest" in messages[5]
    # Positions count every row, good or bad: the split over processes is fixed by the file.
    assert [r.index for r in rows] + [f.index for f in failures] == [0, 1, 2, 3, 4, 5, 6]


def test_process_share_is_the_data_preparation_rule():
    from swifti2v_jax.data.shards import shards_of

    shares = [list(shards_of(i, 2, 6)) for i in range(2)]
    assert shares == [[0, 2, 4], [1, 3, 5]]


def _config():
    config = generation.sample_config("demo")
    # No cached embeddings: every row's prompt goes through the text encoder's program.
    generation.override(config, {"text_cache_dir": "none"})
    return config


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A manifest of three rows of one shape, a bad image and a bad line, run in process."""
    tmp = tmp_path_factory.mktemp("manifest")
    jobs = _write(
        tmp / "jobs.jsonl",
        [ROWS[0], ROWS[1], {"name": "bad", "image": str(tmp / "missing.png")}, "{", ROWS[2]],
    )
    out = tmp / "out"
    out.mkdir()
    report = manifest.run(_config(), jobs, out, log=lambda m: None)
    return tmp, jobs, out, report


def test_manifest_rows_equal_lone_runs_and_compile_once(first_run, tmp_path):
    tmp, jobs, out, report = first_run
    result = json.loads((out / "manifest-report.json").read_text())
    assert (result["done"], result["failed"], result["skipped"]) == (3, 2, 0)
    assert [(f["line"], f["name"]) for f in result["failures"]] == [(3, "bad"), (4, None)]
    assert "missing.png" in result["failures"][0]["error"]
    # a and b share every program; c (other Stage II steps) only its Stage II loop's.
    assert result["shapes"] == 2
    compiles = {d["name"]: d["xla_compilations"] for d in result["outputs"]}
    assert compiles["b"] == 0  # same shape as a: nothing compiles again
    assert result["xla_compilations"] == sum(compiles.values())
    assert (out / "b.mp4").read_bytes() == _lone(tmp_path, ROWS[1])


def test_rerun_skips_finished_rows_and_redoes_partial_ones(first_run):
    tmp, jobs, out, report = first_run
    before = (out / "a.mp4").read_bytes()
    (out / "a.mp4").unlink()
    partial = out / ".a.mp4.p999999s1.x1y2.partial.mp4"  # left by a killed process
    partial.write_bytes(b"half")
    again = manifest.run(_config(), jobs, out, log=lambda m: None)
    assert [d["name"] for d in again.done] == ["a"]
    assert sorted(again.skipped) == ["b", "c"] and len(again.failed) == 2
    assert (out / "a.mp4").read_bytes() == before and not partial.exists()


def test_two_local_devices_one_clip_each(first_run, tmp_path):
    """sample.py --manifest on a process with 2 CPU devices: rows alternate between them."""
    tmp, _, out, _ = first_run
    jobs = _write(tmp_path / "jobs.jsonl", ROWS[:2])
    result = subprocess.run(
        [sys.executable, "sample.py", "--manifest", str(jobs), "--output-dir", str(tmp_path / "o"),
         "--config.progress=False"],
        cwd=ROOT, env=_env(devices=2), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "o" / "manifest-report.json").read_text())
    assert report["devices"] == 2 and report["done"] == 2
    for row in ROWS[:2]:
        name = f"{row['name']}.mp4"
        assert (tmp_path / "o" / name).read_bytes() == (out / name).read_bytes()


def test_exit_status_counts_failed_rows(tmp_path):
    jobs = _write(tmp_path / "jobs.jsonl", ["[1]", {"name": "x", "frames": "many"}, {"name": "y"}])
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "y.mp4").write_bytes(b"done before")  # finished: skipped, not redone
    result = subprocess.run(
        [sys.executable, "sample.py", "--manifest", str(jobs), "--output-dir", str(tmp_path / "o")],
        cwd=ROOT, env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "manifest line 1: a row must be a JSON object; skipped" in result.stderr
    assert "manifest line 2 (x):" in result.stderr
    assert "0 done, 2 failed, 1 skipped of 3 rows" in result.stderr.splitlines()[-1]


@pytest.mark.slow
def test_two_processes_of_two_devices_killed_and_rerun(tmp_path):
    """6 rows under the launcher (2 processes x 2 CPU devices) equal 6 lone sample.py runs; a
    kill after the first finished clip, then a rerun, makes only the unfinished rows."""
    rows = [{"name": f"r{i}", "seed": 10 + i} for i in range(6)]
    jobs = _write(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "swifti2v_jax.launch", "--processes", "2",
        "--devices-per-process", "2", "--", "sample.py", "--manifest", str(jobs),
        "--output-dir", str(out), "--config.progress=False",
    ]  # fmt: skip
    env = dict(_env(), PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS")
    first = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)

    def finished():  # not the writers' partial files (.NAME.mp4.*.partial.mp4)
        return sorted(p.stem for p in out.glob("*.mp4") if not p.name.startswith("."))

    while not finished() and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGTERM)
    first.wait()
    finished = finished()
    assert 0 < len(finished) < 6
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    reports = [json.loads((out / f"manifest-report-p{i}.json").read_text()) for i in range(2)]
    assert sorted(n for r in reports for n in r["skipped_names"]) == finished
    made = sorted(d["name"] for r in reports for d in r["outputs"])
    assert made == sorted(set(f"r{i}" for i in range(6)) - set(finished))
    assert [r["this_process"] for r in reports] == [3, 3]
    for row in rows:
        lone = tmp_path / f"lone-{row['name']}.mp4"
        subprocess.run(
            [sys.executable, "sample.py", "--seed", str(row["seed"]), "--output", str(lone)],
            cwd=ROOT, env=_env(), check=True,
        )  # fmt: skip
        assert (out / f"{row['name']}.mp4").read_bytes() == lone.read_bytes(), row
