"""generation.py, the entry point behind sample.py and the web app, run in process: resident
models compile nothing the second time, progress reaches the caller, and a callback that raises
cancels the run without leaving a file."""

from __future__ import annotations

import numpy as np
import pytest

from swifti2v_jax import generation
from swifti2v_jax.io.video import read_video
from swifti2v_jax.sampling.residency import WarmModels

FRAMES = 17  # the demo preset's length (its programs are shared with the other demo runs)


class Cancelled(Exception):
    pass


def _prepare(tmp_path, name: str, **fields):
    config = generation.sample_config("demo")
    generation.override(
        config, {"output": str(tmp_path / f"{name}.mp4"), "frames": FRAMES, "seed": 3, **fields}
    )
    return generation.prepare(config)


def _warm(prepared) -> WarmModels:
    return WarmModels(prepared.pipeline.paths, prepared.pipeline.config)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _warm(_prepare(tmp_path_factory.mktemp("warm"), "unused"))


def test_second_run_on_warm_models_compiles_nothing_and_matches(tmp_path, models):
    first = _prepare(tmp_path, "first")
    events = []
    summary = generation.generate(first, models=models, on_progress=events.append)
    # Progress: the text encoder, Stage I, then every written piece in order.
    assert [e.stage for e in events[:2]] == ["text", "stage1"]
    written = [e for e in events if e.stage == "stage2"]
    assert [e.segment for e in written] == list(range(summary["segments"] + 1))
    assert written[-1].frames_written == FRAMES == sum(len(e.new_frames) for e in written)
    assert all(e.segments == summary["segments"] for e in events)
    assert np.all(np.diff([e.elapsed for e in events]) >= 0)

    second = _prepare(tmp_path, "second")
    assert models.serves(second.pipeline.paths, second.pipeline.config)
    again = generation.generate(second, models=models)
    assert again["xla_compilations"] == 0
    assert again["stage2_compilations"] == 0 and again["stage1_compilations"] == 0
    assert again["seconds"]["load"] == 0
    # Same settings, same frames: the warm models are the checkpoints' models.
    assert second.output.read_bytes() == first.output.read_bytes()
    assert read_video(second.output)[0].shape == (FRAMES, 64, 128, 3)
    assert np.concatenate([e.new_frames for e in written]).shape == (FRAMES, 64, 128, 3)


def test_progress_callback_that_raises_cancels_without_a_file(tmp_path, models):
    prepared = _prepare(tmp_path, "cancelled")

    def cancel_in_stage2(event):
        if event.stage == "stage2" and event.segment == 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        generation.generate(prepared, models=models, on_progress=cancel_in_stage2)
    assert list(tmp_path.iterdir()) == []  # no mp4, no temporary file
    # The next run on the same models works.
    retry = _prepare(tmp_path, "retry")
    summary = generation.generate(retry, models=models)
    assert summary["frames"] == FRAMES and read_video(retry.output)[0].shape[0] == FRAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retry.mp4"]


def test_warm_models_refuse_other_memory_settings(tmp_path, models):
    other = _prepare(tmp_path, "b", **{"memory.text_encoder_on_host": False})
    assert not models.serves(other.pipeline.paths, other.pipeline.config)
    with pytest.raises(ValueError, match="other checkpoints or memory settings"):
        generation.generate(other, models=models)
    assert list(tmp_path.iterdir()) == []
