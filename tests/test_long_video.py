"""Long clips: Stage I in chunks, each a clip of its own (sampling/stage1.py `ti2v_chunks`)."""

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
    from swifti2v_jax.models import vae as vae_lib

    root = demo_build.build(tmp_path_factory.mktemp("demo") / "ti2v", stage1="ti2v")
    config, params = checkpoints.load(root / "dit", "dit")
    vae_config, vae = checkpoints.load(root / "vae", "vae")
    return DiTConfig.from_dict(config), params, vae_lib.as_config(vae_config), vae


def _inputs(config: DiTConfig):
    rng = np.random.default_rng(0)
    context = jnp.asarray(rng.standard_normal((1, 6, config.text_dim)), jnp.float32)
    image_latent = jnp.asarray(rng.uniform(-2, 2, (1, 1, 2, 4, config.in_dim)), jnp.float32)
    return dict(image_latent=image_latent, context=context, key=jax.random.key(3))


def _chunks(dit, frames, **settings):
    config, params, vae_config, vae = dit
    settings = dataclasses.replace(SETTINGS, **settings)
    return list(
        stage1.ti2v_chunks(
            params,
            config,
            settings,
            num_latent_frames=frames,
            vae_params=vae,
            vae_config=vae_config,
            **_inputs(config),
        )  # fmt: skip
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
    from swifti2v_jax.models import vae as vae_lib

    config, params, vae_config, vae = dit
    whole = _chunks(dit, 5)
    assert len(whole) == 1 and whole[0].latents.shape[1] == 5
    direct = stage1.ti2v_image_to_video(
        params, config, SETTINGS, num_latent_frames=5, **_inputs(config)
    )
    np.testing.assert_array_equal(np.asarray(whole[0].latents), np.asarray(direct))
    # ... decoded on its own (streaming decoder = whole-clip decode)
    np.testing.assert_allclose(
        np.asarray(whole[0].video), np.asarray(vae_lib.decode(vae, vae_config, direct)), atol=1e-5
    )
    one = _chunks(dit, 5, chunk_latents=5)
    np.testing.assert_array_equal(np.asarray(one[0].latents), np.asarray(whole[0].latents))
    # Chunk 0 of a long clip is the single pass over one chunk's length.
    long = _chunks(dit, 13, chunk_latents=5, overlap=2)
    np.testing.assert_array_equal(np.asarray(long[0].latents), np.asarray(whole[0].latents))
    # A chunked clip is several clips: the one-pass API refuses it.
    with pytest.raises(ValueError, match="chunks of 5"):
        stage1.ti2v_image_to_video(
            params, config, dataclasses.replace(SETTINGS, chunk_latents=5), num_latent_frames=13,
            **_inputs(config),
        )  # fmt: skip


@pytest.mark.parametrize("overlap", [1, 2])
def test_chunks_continue_from_the_previous_chunks_last_frames_as_a_clip_start(dit, overlap):
    """Chunk k + 1's known latents are chunk k's last pixel frames encoded as the start of a
    clip (not chunk k's own latents of those frames, a mid-clip form); the clip's video is
    chunk 0's video and then each chunk's new frames."""
    from swifti2v_jax.models import vae as vae_lib

    config, params, vae_config, vae = dit
    step = vae_lib.temporal_factor(vae_config)
    before = stage1.TRACES["ti2v"]
    chunks = _chunks(dit, 13, chunk_latents=5, overlap=overlap)
    assert [(c.start, c.known) for c in chunks] == stage1.chunk_plan(13, 5, overlap)
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        assert chunk.known == overlap and chunk.start == previous.start + 5 - overlap
        pixels = vae_lib.decode(vae, vae_config, previous.latents)[:, step * (5 - overlap) :]
        assert pixels.shape[1] == 1 + step * (overlap - 1)
        np.testing.assert_allclose(
            np.asarray(chunk.latents[:, :overlap]),
            np.asarray(vae_lib.encode(vae, vae_config, pixels)), atol=1e-4,
        )  # fmt: skip
        # The test can fail: re-encoding changes the causal VAE's latents, and the new
        # frames are generated, not copied.
        mid_clip = previous.latents[:, -overlap:]
        assert float(jnp.abs(chunk.latents[:, :overlap] - mid_clip).max()) > 1e-3
        assert (
            float(jnp.abs(chunk.new[:, :1] - chunk.latents[:, overlap - 1 : overlap]).max()) > 1e-3
        )
        np.testing.assert_allclose(
            np.asarray(chunk.video),
            np.asarray(vae_lib.decode(vae, vae_config, chunk.latents)), atol=1e-5,
        )  # fmt: skip
    video = jnp.concatenate([c.new_video(vae_config) for c in chunks], axis=1)
    assert video.shape[1] == vae_lib.num_pixel_frames(vae_config, 13)
    assert bool(jnp.isfinite(video).all())
    np.testing.assert_array_equal(np.asarray(chunks[0].latents[:, :1]),
                                  np.asarray(_inputs(config)["image_latent"]))  # fmt: skip
    # One compiled program for every chunk: a longer clip compiles nothing new.
    traced = stage1.TRACES["ti2v"] - before
    assert traced <= 1
    _chunks(dit, 29, chunk_latents=5, overlap=overlap)
    assert stage1.TRACES["ti2v"] - before == traced


def test_regenerated_overlap_is_cross_faded_into_the_previous_chunk(dit):
    """seam_release: chunk k + 1 holds only its first given latent clean; the frames of the
    others are its own decode cross-faded into chunk k's last frames (a linear ramp), chunk k
    leaves those frames to chunk k + 1 (`tail`), and the clip is still every frame once."""
    from swifti2v_jax.models import vae as vae_lib

    config, params, vae_config, vae = dit
    step = vae_lib.temporal_factor(vae_config)
    np.testing.assert_array_equal(stage1.seam_weights(3), np.float32([0.25, 0.5, 0.75]))
    before = stage1.TRACES["ti2v"]
    chunks = _chunks(dit, 13, chunk_latents=5, overlap=3, seam_release=0.5)
    hard = _chunks(dit, 13, chunk_latents=5, overlap=3)
    count = step * 2  # pixel frames of the 2 regenerated latents
    weights = stage1.seam_weights(count)[None, :, None, None, None]
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        assert (chunk.known, chunk.num_held, previous.tail) == (3, 1, count)
        own = np.asarray(vae_lib.decode(vae, vae_config, chunk.latents))
        np.testing.assert_allclose(np.asarray(chunk.video[:, 1 + count :]), own[:, 1 + count :],
                                   atol=1e-5)  # fmt: skip
        faded = weights * own[:, 1 : 1 + count] + (1 - weights) * np.asarray(
            previous.video[:, -count:]
        )
        np.testing.assert_allclose(np.asarray(chunk.video[:, 1 : 1 + count]), faded, atol=1e-5)
        # Regenerated, not held: the latents moved off the re-encoded frames they started from.
        pixels = previous.video[:, step * (5 - 3) :]
        encoded = vae_lib.encode(vae, vae_config, pixels)
        np.testing.assert_allclose(np.asarray(chunk.latents[:, :1]), np.asarray(encoded[:, :1]),
                                   atol=1e-4)  # fmt: skip
        assert float(jnp.abs(chunk.latents[:, 1:3] - encoded[:, 1:3]).max()) > 1e-3
    assert chunks[-1].tail == 0
    video = jnp.concatenate([c.new_video(vae_config) for c in chunks], axis=1)
    assert video.shape[1] == vae_lib.num_pixel_frames(vae_config, 13)
    # Chunk 0 is the same as with held overlaps but for the frames it leaves to chunk 1.
    np.testing.assert_array_equal(np.asarray(chunks[0].latents), np.asarray(hard[0].latents))
    # One program for every chunk, with or without the regenerated overlap.
    assert stage1.TRACES["ti2v"] - before <= 2


@pytest.mark.parametrize("chunk_latents", [0, 5])
def test_input_residual_adds_the_inputs_vae_error_to_every_frame(dit, chunk_latents):
    """input_residual: every frame of every chunk gains image - (chunk 0's decoded frame 0),
    so frame 0 becomes the input image (to rounding); without it the video is as decoded."""
    from swifti2v_jax.sampling import orchestrator
    from swifti2v_jax.sampling.residency import ResidentModels

    config, params, vae_config, vae = dit
    models = ResidentModels(stage1_dits=(params,), stage1_vae=vae, stage2_dit=None, vae=vae)
    rng = np.random.default_rng(5)
    image = jnp.asarray(rng.uniform(-0.9, 0.9, (1, 32, 64, 3)), jnp.float32)
    inputs = _inputs(config)
    settings = dict(chunk_latents=chunk_latents, overlap=2, seam_release=0.5 * bool(chunk_latents))

    def pieces(input_residual):
        chunked = dataclasses.replace(SETTINGS, input_residual=input_residual, **settings)
        return [np.asarray(p) for p in orchestrator.stage1_video_chunks(
            models, vae, config, vae_config, chunked, image, frames=25,
            context=inputs["context"], key=inputs["key"],
        )]  # fmt: skip

    plain, corrected = pieces(False), pieces(True)
    assert len(plain) == (2 if chunk_latents else 1)
    residual = np.asarray(image) - plain[0][:, 0]
    assert np.abs(residual).mean() > 0.05  # the tiny VAE is far from exact: a real correction
    for before, after in zip(plain, corrected, strict=True):
        np.testing.assert_allclose(after, np.clip(before + residual[:, None], -1, 1), atol=1e-6)
    np.testing.assert_allclose(corrected[0][:, 0], np.asarray(image), atol=1e-6)


def test_chunk_settings_are_checked():
    with pytest.raises(ValueError, match="seam_release"):
        stage1.Stage1Config(chunk_latents=5, overlap=2, seam_release=1.0)
    with pytest.raises(ValueError, match="seam_release"):
        stage1.Stage1Config(chunk_latents=5, overlap=2, seam_release=-0.1)
    with pytest.raises(ValueError, match="TI2V-only"):
        stage1.Stage1Config(backbone="a14b", chunk_latents=5, overlap=2, seam_release=0.5)
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
    # Each seam region runs from the chunk's first given frame to its first new one.
    plan = stage1.chunk_plan(40, 17, 4)
    assert plan == [(0, 1), (13, 4), (26, 4)]
    assert long_video.seam_regions(plan, 39) == [[13, 14, 15, 16], [26, 27, 28, 29]]
    assert long_video.seam_regions(plan, 28) == [[13, 14, 15, 16], [26, 27]]
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
    from swifti2v_jax.models import vae as vae_lib
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
    step = vae_lib.temporal_factor(vae_config)
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        # The known frames: the previous chunk's last pixel frames (decoded on its own).
        known = vae_lib.decode(vae, vae_config, previous.latents)[:, step * (3 - 1) :]
        np.testing.assert_allclose(
            np.asarray(previous.last_frames(vae_config, 1)), np.asarray(known), atol=1e-5
        )
        assert float(jnp.abs(chunk.new - previous.latents[:, -1:]).max()) > 1e-3
    assert sum(c.latents.shape[1] - (c.known if c.index else 0) for c in chunks) == 7
    video = jnp.concatenate([c.new_video(vae_config) for c in chunks], axis=1)
    assert video.shape[1] == 25
    _a14b_chunks(a14b, 41, chunk_latents=3, overlap=1)  # longer: nothing new to compile
    assert stage1.TRACES["a14b"] - before == traced
