"""The web app's pieces that need no browser: what the page shows of a run (app/view.py) and
how a request becomes a checked sample config (app/engine.py)."""

from __future__ import annotations

import numpy as np
import pytest

from swifti2v_jax import generation
from swifti2v_jax.app import view
from swifti2v_jax.app.engine import Engine
from swifti2v_jax.sampling.orchestrator import Progress


def _progress(stage, elapsed, segment=-1, segments=10, chunk=1, frames_written=0):
    return Progress(
        stage, elapsed, chunk=chunk, chunks=2, segment=segment, segments=segments,
        frames_written=frames_written, frames=41,
    )  # fmt: skip


def test_time_left_follows_the_segments_pace():
    pace = view.Pace()
    text = _progress("text", 0.5)
    assert pace.seconds_left(text) is None
    assert view.status_line(text, None) == "Text encoder · 0.5 s elapsed · estimating the time left"
    stage1 = _progress("stage1", 1.0, chunk=2)
    assert view.status_line(stage1, None).startswith("Stage I: chunk 2 of 2 · 1.0 s elapsed")
    for event in (_progress("stage2", 3.0, segment=0, frames_written=1),):
        pace.update(event)
        assert pace.seconds_left(event) is None  # no segment finished yet
    fourth = _progress("stage2", 11.0, segment=4, frames_written=17)
    pace.update(fourth)
    assert pace.seconds_left(fourth) == pytest.approx(2.0 * 6)  # 2 s per segment, 6 to go
    assert view.status_line(fourth, pace.seconds_left(fourth)) == (
        "Stage II: segment 4 of 10 (17 of 41 frames written) · 11.0 s elapsed · about 12 s left"
    )


def test_preview_grid_holds_the_frames_so_far():
    preview = view.Preview()
    assert preview.image() is None
    frames = np.arange(3 * 4 * 6 * 3, dtype=np.uint8).reshape(3, 4, 6, 3)
    preview.add(frames[:1])
    assert np.array_equal(preview.image(), frames[0])
    preview.add(frames[1:])
    grid = preview.image()
    assert grid.shape == (4, 3 * 6 + 2 * 2, 3)
    assert np.array_equal(grid[:, 8:14], frames[1]) and np.all(grid[:, 6:8] == 255)
    # Many large frames: at most PREVIEW_MAX_FRAMES thumbnails, subsampled, newest included.
    big = view.Preview()
    width = 4 * view.PREVIEW_THUMB_WIDTH
    frames = np.zeros((100, 8, width, 3), np.uint8)
    frames[-1] = 7
    big.add(frames)
    grid = big.image()
    rows = -(-view.PREVIEW_MAX_FRAMES // view.PREVIEW_COLUMNS)
    assert grid.shape == (rows * 4 - 2, view.PREVIEW_COLUMNS * (width // 4 + 2) - 2, 3)
    assert np.all(grid[-2:, -(width // 4) :] == 7)


def test_summary_shows_stages_memory_and_compilations():
    summary = dict(
        frames=17, width=128, height=64, segments=15, seed=0, backend="cpu",
        seconds=dict(load=0.5, text=0.1, stage1=1, reference_encode=0.2, stage2=2, decode=0.4,
                     total=4.2),
        first_frame_seconds=1.5, peak_memory_bytes=2**30, peak_memory_source="process peak RSS",
        xla_compilations=0, stage1_compilations=0, stage2_compilations=0,
    )  # fmt: skip
    text = view.summary_markdown(summary)
    assert "| Stage II | 2.00 |" in text and "| **total** | **4.20** |" in text
    assert "Peak memory 1.00 GiB" in text and "XLA compilations this run: 0 " in text


def test_engine_checks_requests_like_sample_py(tmp_path):
    engine = Engine("demo", {"checkpoints.root": None}, tmp_path / "videos")
    assert engine.config({"frames": 21, "stage2.steps": 2}).stage2.steps == 2
    text = tmp_path / "notes.txt"
    text.write_text("no image")
    with pytest.raises(generation.prepare_errors(), match="cannot read image"):
        engine.prepare({"image": str(text)})
    with pytest.raises(generation.prepare_errors(), match="frames must be"):
        engine.prepare({"frames": 1})  # the demo VAE's temporal stride is 1: k >= 1 needed
    prepared = engine.prepare({"frames": 21})
    assert prepared.output.parent == tmp_path / "videos" and prepared.plan.frames == 21
    assert list((tmp_path / "videos").iterdir()) == []  # nothing written before a run
