"""A prompt timeline (--prompts / a manifest row's `prompts`): one prompt per Stage I chunk.
Each chunk's Stage I and the Stage II segments of the frames it makes receive its embedding
(recorded as the programs receive them), a new timeline compiles nothing, and one prompt
repeated is bit-identical to --prompt."""

from __future__ import annotations

import numpy as np
import pytest

from swifti2v_jax import generation
from swifti2v_jax.sampling import orchestrator, stage1, stage2
from swifti2v_jax.sampling.residency import WarmModels

PROMPTS = ["a cat sleeps on a sofa", "the cat wakes and stretches", "the cat jumps off the sofa"]
# 13 frames (the demo VAEs keep every frame); chunks of 5 overlapping by 1: three chunks.
SETTINGS = {"frames": 13, "stage1.chunk_latents": 5, "stage1.overlap": 1, "seed": 5}


def _prepare(tmp_path, name: str, **fields):
    config = generation.sample_config("demo")
    generation.override(
        config,
        {"output": str(tmp_path / f"{name}.mp4"), "text_cache_dir": "none", **SETTINGS, **fields},
    )
    return generation.prepare(config)


@pytest.fixture
def recorded(monkeypatch):
    """The text embedding each Stage I chunk program and each Stage II window receives."""
    calls = {"stage1": [], "stage2": []}
    chunk_program, window_program = stage1._ti2v_chunk, stage2.WindowDenoiser.__call__

    def record_chunk(params, model_config, config, known, length, context, *args, **kwargs):
        calls["stage1"].append(np.asarray(context))
        return chunk_program(params, model_config, config, known, length, context, *args, **kwargs)

    def record_window(self, params, latents, z_ref, window, context, *args):
        calls["stage2"].append((window.noisy_blocks, np.asarray(context)))
        return window_program(self, params, latents, z_ref, window, context, *args)

    monkeypatch.setattr(stage1, "_ti2v_chunk", record_chunk)
    monkeypatch.setattr(stage2.WindowDenoiser, "__call__", record_window)
    return calls


def test_each_chunk_and_its_segments_get_their_prompt_with_no_new_compile(tmp_path, recorded):
    single = _prepare(tmp_path, "single", prompt=PROMPTS[0])
    models = WarmModels(single.pipeline.paths, single.pipeline.config)
    first = generation.generate(single, models=models)
    assert first["stage1_chunks"] == 3 and first["chunk_prompts"] == [PROMPTS[0]] * 3
    assert first["stage1_compilations"] <= 1  # one Stage I program for every chunk

    for calls in recorded.values():
        calls.clear()
    story = _prepare(tmp_path, "story", prompts=PROMPTS)
    summary = generation.generate(story, models=models)
    assert summary["chunk_prompts"] == PROMPTS
    assert summary["xla_compilations"] == 0  # embeddings are arguments, not constants

    encoder = models.get_text_encoder()
    expected = [np.asarray(encoder(p)) for p in PROMPTS]
    assert len(recorded["stage1"]) == 3
    for chunk, context in enumerate(recorded["stage1"]):
        np.testing.assert_array_equal(context, expected[chunk])
    owner = orchestrator.block_chunks(story.pipeline.specs, story.pipeline.config, story.plan)
    assert owner == [0] * 5 + [1] * 4 + [2] * 4
    seen = set()
    for blocks, context in recorded["stage2"]:
        chunk = owner[blocks[0]]
        np.testing.assert_array_equal(context, expected[chunk])
        seen.add(chunk)
    assert seen == {0, 1, 2}

    repeated = _prepare(tmp_path, "repeated", prompts=[PROMPTS[0]] * 3)
    generation.generate(repeated, models=models)
    assert repeated.output.read_bytes() == single.output.read_bytes()
    assert story.output.read_bytes() != single.output.read_bytes()


def test_timeline_length_must_match_the_chunks(tmp_path):
    with pytest.raises(generation.UsageError, match="2 prompt.*3 Stage I chunk"):
        _prepare(tmp_path, "short", prompts=PROMPTS[:2])
    with pytest.raises(generation.UsageError, match="not both"):
        _prepare(tmp_path, "both", prompts=PROMPTS, prompt="x")
