"""Long clips: Stage I in chunks by latent continuation (sampling/stage1.py `ti2v_chunks`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swifti2v_jax import checkpoints
from swifti2v_jax.demo import build as demo_build
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.sampling import stage1

SETTINGS = stage1.Stage1Config(backbone="ti2v", steps=2, solver="unipc", schedule="unipc")


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    root = demo_build.build(tmp_path_factory.mktemp("demo") / "ti2v", stage1="ti2v")
    config, params = checkpoints.load(root / "dit", "dit")
    return DiTConfig.from_dict(config), params


def _inputs(config: DiTConfig):
    rng = np.random.default_rng(0)
    context = jnp.asarray(rng.standard_normal((1, 6, config.text_dim)), jnp.float32)
    image_latent = jnp.asarray(rng.uniform(-2, 2, (1, 1, 2, 4, config.in_dim)), jnp.float32)
    return dict(image_latent=image_latent, context=context, key=jax.random.key(3))


def _chunks(dit, frames, **settings):
    config, params = dit
    settings = dataclasses.replace(SETTINGS, **settings)
    return list(
        stage1.ti2v_chunks(params, config, settings, num_latent_frames=frames, **_inputs(config))
    )


def test_chunk_plan_covers_the_clip_with_fixed_length_chunks():
    assert stage1.chunk_plan(9, 0, 1) == [(0, 1)]
    assert stage1.chunk_plan(9, 9, 1) == [(0, 1)]
    assert stage1.chunk_plan(9, 5, 1) == [(0, 1), (4, 1)]
    assert stage1.chunk_plan(10, 5, 1) == [(0, 1), (4, 1), (8, 1)]
    assert stage1.chunk_plan(13, 5, 2) == [(0, 1), (3, 2), (6, 2), (9, 2)]
    for frames, chunk, overlap in [(13, 5, 2), (1001, 17, 1), (1001, 17, 4), (50, 21, 3)]:
        plan = stage1.chunk_plan(frames, chunk, overlap)
        new = [chunk - 1] + [chunk - overlap] * (len(plan) - 1)
        assert sum(new) >= frames - 1 > sum(new) - (chunk - overlap)  # no spare chunk
        for (start, _), (next_start, _) in zip(plan, plan[1:], strict=False):
            assert next_start == start + chunk - overlap


def test_one_chunk_equals_the_single_pass_exactly(dit):
    whole = _chunks(dit, 5)
    assert len(whole) == 1 and whole[0].latents.shape[1] == 5
    one = _chunks(dit, 5, chunk_latents=5)
    np.testing.assert_array_equal(np.asarray(one[0].latents), np.asarray(whole[0].latents))
    # Chunk 0 of a long clip is the single pass over one chunk's length.
    long = _chunks(dit, 13, chunk_latents=5, overlap=2)
    np.testing.assert_array_equal(np.asarray(long[0].latents), np.asarray(whole[0].latents))


@pytest.mark.parametrize("overlap", [1, 2])
def test_chunks_continue_from_the_previous_chunks_last_latents(dit, overlap):
    config, params = dit
    before = stage1.TRACES["ti2v"]
    chunks = _chunks(dit, 13, chunk_latents=5, overlap=overlap)
    assert [(c.start, c.known) for c in chunks] == stage1.chunk_plan(13, 5, overlap)
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        assert chunk.known == overlap and chunk.start == previous.start + 5 - overlap
        np.testing.assert_array_equal(
            np.asarray(chunk.latents[:, :overlap]), np.asarray(previous.latents[:, -overlap:])
        )
        # The test can fail: the new frames are generated, not copied.
        assert float(jnp.abs(chunk.new[:, :1] - previous.latents[:, -1:]).max()) > 1e-3
    latents = stage1.assemble(chunks)
    assert latents.shape[1] == 13 and bool(jnp.isfinite(latents).all())
    np.testing.assert_array_equal(
        np.asarray(latents[:, :1]), np.asarray(_inputs(config)["image_latent"])
    )
    # The same through the one-call API.
    settings = dataclasses.replace(SETTINGS, chunk_latents=5, overlap=overlap)
    direct = stage1.ti2v_image_to_video(
        params, config, settings, num_latent_frames=13, **_inputs(config)
    )
    np.testing.assert_array_equal(np.asarray(direct), np.asarray(latents))
    # One compiled program for every chunk: a longer clip compiles nothing new.
    traced = stage1.TRACES["ti2v"] - before
    assert traced <= 1
    _chunks(dit, 29, chunk_latents=5, overlap=overlap)
    assert stage1.TRACES["ti2v"] - before == traced


def test_chunk_settings_are_checked():
    with pytest.raises(ValueError, match="overlap"):
        stage1.Stage1Config(chunk_latents=5, overlap=5)
    with pytest.raises(ValueError, match="overlap"):
        stage1.Stage1Config(chunk_latents=5, overlap=0)
    with pytest.raises(ValueError, match="chunk_latents"):
        stage1.Stage1Config(chunk_latents=-1)


def test_long_video_report_from_stored_results(tmp_path):
    from benchmarks import long_video

    assert long_video.r_squared([1, 2, 3, 4], [3, 5, 7, 9]) == pytest.approx(1.0)
    assert long_video.r_squared([1, 2, 3, 4], [1, 4, 9, 30]) < 0.9
    stored = json.loads(Path("benchmarks/results/long_video/results.json").read_text())
    text = long_video.markdown(stored)
    assert "| 1001 |" in text and "ratio (target <= 1.5)" in text
    long_video.plot(stored, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


# --------------------------------------------------------------------------------------------
# I2V-A14B: the known frames go into the conditioning video and mask


A14B = stage1.Stage1Config(backbone="a14b", steps=2)


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    from swifti2v_jax.models import vae as vae_lib

    root = demo_build.build(tmp_path_factory.mktemp("demo") / "a14b", stage1="a14b")
    config, high = checkpoints.load(root / "high_noise", "dit")
    low = checkpoints.load(root / "low_noise", "dit")[1]
    vae_config, vae = checkpoints.load(root / "vae", "vae")
    return DiTConfig.from_dict(config), high, low, vae_lib.as_config(vae_config), vae


def _a14b_chunks(a14b, frames, **settings):
    from swifti2v_jax.sampling import stage1_a14b

    config, high, low, vae_config, vae = a14b
    rng = np.random.default_rng(1)
    image = jnp.asarray(rng.uniform(-0.9, 0.9, (1, 32, 32, 3)), jnp.float32)
    context = jnp.asarray(rng.standard_normal((1, 6, config.text_dim)), jnp.float32)
    settings = dataclasses.replace(A14B, **settings)
    chunks = stage1_a14b.a14b_chunks(
        high, low, vae, vae_config, config, settings, image=image, frames=frames,
        context=context, key=jax.random.key(4),
    )  # fmt: skip
    return list(chunks), dict(image=image, context=context, settings=settings)


def test_a14b_condition_mask_marks_the_known_pixel_frames():
    from swifti2v_jax.sampling import stage1_a14b

    mask = stage1_a14b.condition_mask(1, 9)  # the image: latent 0 only
    np.testing.assert_array_equal(mask, [[1] * 4, [0] * 4, [0] * 4])
    mask = stage1_a14b.condition_mask(5, 9)  # overlap 2: frames 0..4 = latents 0 and 1
    np.testing.assert_array_equal(mask, [[1] * 4, [1] * 4, [0] * 4])
    mask = stage1_a14b.condition_mask(3, 9)  # a partial latent frame
    np.testing.assert_array_equal(mask, [[1] * 4, [1, 1, 0, 0], [0] * 4])


def test_a14b_chunk_zero_is_the_single_pass_and_one_program_serves_every_chunk(a14b):
    from swifti2v_jax.sampling import stage1_a14b

    config, high, low, vae_config, vae = a14b
    whole, inputs = _a14b_chunks(a14b, 9)  # 3 latents, one pass
    one, _ = _a14b_chunks(a14b, 9, chunk_latents=3)  # fits one chunk: the same
    assert len(whole) == len(one) == 1
    np.testing.assert_array_equal(np.asarray(one[0].latents), np.asarray(whole[0].latents))
    condition = stage1_a14b.a14b_condition(vae, vae_config, inputs["image"], 9)
    direct = stage1_a14b.a14b_image_to_video(
        high, low, config, inputs["settings"], condition=condition,
        context=inputs["context"], key=jax.random.key(4),
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(direct), np.asarray(whole[0].latents))

    before = stage1.TRACES["a14b"]
    chunks, _ = _a14b_chunks(a14b, 25, chunk_latents=3, overlap=1)  # 7 latents: 3 chunks
    assert [(c.start, c.known) for c in chunks] == stage1.chunk_plan(7, 3, 1)
    traced = stage1.TRACES["a14b"] - before
    assert traced <= 1
    # Chunk 0 of a long clip is the single pass over one chunk's length.
    np.testing.assert_array_equal(np.asarray(chunks[0].latents), np.asarray(whole[0].latents))
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        np.testing.assert_array_equal(
            np.asarray(chunk.latents[:, :1]), np.asarray(previous.latents[:, -1:])
        )
        assert float(jnp.abs(chunk.new - previous.latents[:, -1:]).max()) > 1e-3
    assert sum(c.latents.shape[1] - (c.known if c.index else 0) for c in chunks) == 7
    _a14b_chunks(a14b, 41, chunk_latents=3, overlap=1)  # longer: nothing new to compile
    assert stage1.TRACES["a14b"] - before == traced
