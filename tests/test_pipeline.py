"""The two-stage pipeline pieces with tiny random models saved as real checkpoints.

Stage I (TI2V first frame, A14B conditioning and expert switch), the hybrid reference and
anchor, checkpoint/size checks, and one in-process run whose streamed frames must equal the
decode of its final latents.
"""

from __future__ import annotations

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import sample as sample_configs
from configs.demo import common as demo_common
from swifti2v_jax import checkpoints
from swifti2v_jax.csg import reference
from swifti2v_jax.demo import build as demo_build
from swifti2v_jax.io.video import frames_to_uint8
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.sampling import pipeline as pipeline_lib
from swifti2v_jax.sampling import stage1, stage1_a14b
from tests import pil_resize


@pytest.fixture(scope="module")
def ti2v_root(tmp_path_factory):
    return demo_build.build(tmp_path_factory.mktemp("demo") / "ti2v", stage1="ti2v")


@pytest.fixture(scope="module")
def a14b_root(tmp_path_factory):
    return demo_build.build(tmp_path_factory.mktemp("demo") / "a14b", stage1="a14b")


def _dit(path):
    config, params = checkpoints.load(path, "dit")
    return DiTConfig.from_dict(config), params


def _vae(path):
    config, params = checkpoints.load(path, "vae")
    return vae_lib.as_config(config), params


def _rand(shape, seed=0, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-scale, scale, shape), jnp.float32)


def _context(config: DiTConfig, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((1, 6, config.text_dim)))


# --------------------------------------------------------------------------------------------
# Hybrid reference and anchor


def test_hybrid_reference_frame0_is_the_input_image():
    video_low = _rand((1, 5, 8, 16, 3), seed=1)
    image = _rand((1, 32, 64, 3), seed=2)
    hybrid = reference.hybrid_reference(video_low, image)
    assert hybrid.shape == (1, 5, 32, 64, 3)
    np.testing.assert_array_equal(np.asarray(hybrid[:, 0]), np.asarray(image))
    # Frames 1.. are the documented bicubic upsample (Pillow's, not the builder's own resize).
    expected = pil_resize.bicubic_upsample(video_low[:, 1:], 32, 64)
    np.testing.assert_allclose(np.asarray(hybrid[:, 1:]), expected, rtol=0, atol=1e-6)
    assert float(jnp.abs(hybrid).max()) <= 1.0
    # Upsampling then averaging 4x4 cells gives back roughly the low-resolution frames.
    pooled = hybrid[:, 1:].reshape(1, 4, 8, 4, 16, 4, 3).mean(axis=(3, 5))
    assert float(jnp.abs(pooled - video_low[:, 1:]).mean()) < 0.15


def test_reference_encode_streams_exactly_and_anchor_is_block_zero(ti2v_root):
    config, params = _vae(ti2v_root / "vae")
    video_low = _rand((1, 5, 16, 16, 3), seed=3)
    image = _rand((1, 32, 32, 3), seed=4, scale=0.8)
    chunks = []
    z_ref = reference.encode_hybrid_reference(params, config, video_low, image, chunks.append)
    assert z_ref.shape == (1, 2, 2, 2, config.z_dim) and chunks == [1, 2]
    whole = vae_lib.encode(params, config, reference.hybrid_reference(video_low, image))
    np.testing.assert_allclose(np.asarray(z_ref), np.asarray(whole), atol=1e-5)
    anchor = reference.encode_anchor(params, config, image)
    assert anchor.shape == (1, 1, 2, 2, config.z_dim)
    np.testing.assert_allclose(np.asarray(anchor), np.asarray(z_ref[:, :1]), atol=1e-5)
    # The test can fail: the anchor is not just any block.
    assert float(jnp.abs(anchor - z_ref[:, 1:2]).max()) > 1e-2


# --------------------------------------------------------------------------------------------
# Stage I


def test_ti2v_stage1_keeps_the_image_latent_exactly(ti2v_root):
    config, params = _dit(ti2v_root / "dit")
    settings = stage1.Stage1Config(
        backbone="ti2v", steps=3, solver="unipc", schedule="unipc", guide_scale=2.0
    )
    context = _context(config)

    def run(image_latent, **uncond):
        return stage1.ti2v_image_to_video(
            params, config, settings, image_latent=image_latent, num_latent_frames=3,
            context=context, key=jax.random.key(0), **uncond,
        )  # fmt: skip

    with_uncond = dict(uncond_context=jnp.zeros_like(context))
    image_latent = _rand((1, 1, 2, 4, 48), seed=5, scale=2.0)
    out = run(image_latent, **with_uncond)
    assert out.shape == (1, 3, 2, 4, 48) and bool(jnp.isfinite(out).all())
    np.testing.assert_array_equal(np.asarray(out[:, :1]), np.asarray(image_latent))
    # The image conditions the other frames (through attention), so they depend on it.
    other = run(_rand((1, 1, 2, 4, 48), seed=6, scale=2.0), **with_uncond)
    assert float(jnp.abs(other[:, 1:] - out[:, 1:]).max()) > 1e-3
    with pytest.raises(ValueError, match="uncond_context"):
        run(image_latent)  # guide_scale 2 without a negative prompt


def test_a14b_stage1_conditioning_and_expert_switch(a14b_root):
    config, high = _dit(a14b_root / "high_noise")
    _, low = _dit(a14b_root / "low_noise")
    vae_config, vae_params = _vae(a14b_root / "vae")
    image = _rand((1, 32, 32, 3), seed=7, scale=0.9)
    condition = stage1_a14b.a14b_condition(vae_params, vae_config, image, num_frames=5)
    assert condition.shape == (1, 2, 4, 4, 20)
    mask, latent = condition[..., :4], condition[..., 4:]
    np.testing.assert_array_equal(np.asarray(mask[:, 0]), 1.0)
    np.testing.assert_array_equal(np.asarray(mask[:, 1]), 0.0)
    video = jnp.zeros((1, 5, 32, 32, 3)).at[:, 0].set(image)
    np.testing.assert_allclose(
        np.asarray(latent), np.asarray(vae_lib.encode(vae_params, vae_config, video)), atol=1e-6
    )

    # Lightning setting: 4 Euler steps, shift 5 -> t = 1000, 937, 833, 625; boundary 900.
    settings = stage1.Stage1Config(backbone="a14b", steps=4, shift=5.0, boundary=0.9)
    assert stage1.expert_steps(settings) == {"high_noise": 2, "low_noise": 2}
    context = _context(config)
    calls = []

    def run(high_params, low_params):
        return stage1_a14b.a14b_image_to_video(
            high_params,
            low_params,
            config,
            settings,
            condition=condition,
            context=context,
            key=jax.random.key(1),
            on_expert=lambda name, t: calls.append((name, t)),
        )

    out = run(high, low)
    assert out.shape == (1, 2, 4, 4, 16) and bool(jnp.isfinite(out).all())
    assert calls == [("high_noise", 1000.0), ("high_noise", 937.0)] + [
        ("low_noise", 833.0),
        ("low_noise", 625.0),
    ]
    # Each expert's weights matter: swapping either one changes the result.
    for swapped in (run(high, high), run(low, low)):
        assert float(jnp.abs(swapped - out).max()) > 1e-3


def test_a14b_one_expert_at_a_time_matches_both_resident(a14b_root):
    config, high = _dit(a14b_root / "high_noise")
    _, low = _dit(a14b_root / "low_noise")
    # UniPC carries solver state across the switch; the two experts use different CFG scales.
    settings = stage1.Stage1Config(
        backbone="a14b", steps=4, solver="unipc", schedule="unipc", guide_scale=2.0,
        guide_scale_low=1.0,
    )  # fmt: skip
    condition = _rand((1, 2, 4, 4, 20), seed=8)
    context = _context(config)
    inputs = dict(
        condition=condition,
        context=context,
        uncond_context=_context(config, seed=9),
        key=jax.random.key(2),
    )
    joint = stage1_a14b.a14b_image_to_video(high, low, config, settings, **inputs)
    events, calls = [], []
    swapped = stage1_a14b.a14b_image_to_video(
        lambda: events.append("load high") or high,
        lambda: events.append("load low") or low,
        config,
        settings,
        release=lambda p: events.append("release high" if p is high else "release low"),
        on_expert=lambda name, t: calls.append(name),
        **inputs,
    )
    np.testing.assert_allclose(np.asarray(swapped), np.asarray(joint), atol=1e-5)
    assert events == ["load high", "release high", "load low", "release low"]
    # t = 999, 937 (high, with CFG: 2 forwards each), then 833, 624 (low, no CFG).
    assert calls == ["high_noise"] * 4 + ["low_noise"] * 2


# --------------------------------------------------------------------------------------------
# Checkpoints and sizes


def _pipeline_config(**stage2):
    config = sample_configs.get_config("demo")
    config.stage2.update(stage2)
    return pipeline_lib.pipeline_config(config)


def test_model_paths_and_compatibility_checks(ti2v_root, a14b_root, tmp_path):
    config = _pipeline_config()
    paths = pipeline_lib.resolve_model_paths({"root": str(ti2v_root)}, "ti2v")
    assert paths.stage1 == (ti2v_root / "dit",) and paths.stage2 == ti2v_root / "stage2"
    assert paths.tokenizer == ti2v_root / "tokenizer"
    pipeline_lib.inspect_models(paths, config)  # the demo models fit together

    with pytest.raises(pipeline_lib.PipelineError, match="refine.*in_dim 48"):
        pipeline_lib.inspect_models(paths, _pipeline_config(conditioning="refine"))
    a14b_config = dataclasses.replace(config, stage1=stage1.Stage1Config(backbone="a14b"))
    mixed = pipeline_lib.resolve_model_paths(
        {"root": str(ti2v_root), "stage1_root": str(a14b_root)}, "a14b"
    )
    assert mixed.stage1_vae == a14b_root / "vae" and mixed.vae == ti2v_root / "vae"
    pipeline_lib.inspect_models(mixed, a14b_config)
    with pytest.raises(pipeline_lib.PipelineError, match="high_noise/ and low_noise/"):
        pipeline_lib.resolve_model_paths({"root": str(ti2v_root)}, "a14b")
    expert_as_ti2v = dataclasses.replace(
        paths, stage1=(a14b_root / "high_noise",), stage1_vae=a14b_root / "vae"
    )
    with pytest.raises(pipeline_lib.PipelineError, match="backbone=a14b"):
        pipeline_lib.inspect_models(expert_as_ti2v, config)
    with pytest.raises(pipeline_lib.PipelineError, match="no Stage I checkpoint"):
        pipeline_lib.resolve_model_paths({}, "ti2v")
    no_tokenizer = tmp_path / "root"
    shutil.copytree(ti2v_root, no_tokenizer)
    shutil.rmtree(no_tokenizer / "tokenizer")
    with pytest.raises(pipeline_lib.PipelineError, match="tokenizer.json"):
        pipeline_lib.inspect_models(
            pipeline_lib.resolve_model_paths({"root": str(no_tokenizer)}, "ti2v"), config
        )


@pytest.mark.parametrize("preset", sample_configs.PRESETS)
def test_presets_make_valid_pipeline_configs(preset):
    config = pipeline_lib.pipeline_config(sample_configs.get_config(preset))
    if preset == "demo":
        assert config.stage2.conditioning == "concat" and config.stage1.backbone == "ti2v"
        # the demo DiTs' training length (configs/demo/common.py), not Wan2.2's 512
        assert config.text_len == demo_common.dit_training("demo_stage2", 1).text_len == 64
        return
    assert config.text_len == 512
    raw = sample_configs.get_config(preset)
    assert (raw.frames, raw.resolution) == (81, "2560x1408")
    if preset in ("swifti2v_2k", "swifti2v_2k_concat", "swifti2v_2k_24gb", "swifti2v_2k_16gb"):
        # The Lightning few-step Stage I: 4 Euler steps, shift 5, no CFG, switch at t >= 900.
        assert config.stage1.backbone == "a14b" and not config.stage1.uses_cfg
        assert stage1.expert_steps(config.stage1) == {"high_noise": 2, "low_noise": 2}
    expected = "concat" if preset == "swifti2v_2k_concat" else "refine"
    assert config.stage2.conditioning == expected
    assert config.memory.text_encoder_on_host and config.memory.release_stage1
    if preset in ("swifti2v_2k_24gb", "swifti2v_2k_16gb"):
        # docs/memory.md: int8 weights, one expert at a time, the tile-major 2K VAE, and a
        # whole-run plan checked against the target's budgets before any weight loads.
        memory = config.memory
        assert memory.dit_weights == "int8" and memory.swap_stage1_experts
        assert memory.encode_tile_major and memory.encode_tile_size and memory.decode_tile_size
        assert memory.decode_chunk_latents and memory.vae_cache_dtype == "bfloat16"
        assert memory.host_budget_gb == 48.0
        # 24 GB GPU: the int8 expert resident; 16 GB v5e: streamed layer by layer.
        expected_stream, expected_budget = {
            "swifti2v_2k_24gb": ("off", 22.0),
            "swifti2v_2k_16gb": ("stage1", 15.0),
        }[preset]
        assert (memory.stream_layers, memory.device_budget_gb) == (expected_stream, expected_budget)


def test_text_len_must_be_positive():
    config = sample_configs.get_config("demo")
    config.text_len = 0
    with pytest.raises(pipeline_lib.PipelineError, match="text_len"):
        pipeline_lib.pipeline_config(config)


@pytest.mark.parametrize("kind", ["encode", "decode"])
def test_bad_vae_tiles_are_refused(kind):
    config = sample_configs.get_config("swifti2v_2k_24gb")
    config.memory[f"{kind}_tile_overlap"] = config.memory[f"{kind}_tile_size"]
    with pytest.raises(pipeline_lib.PipelineError, match=f"{kind}_tile_overlap must be in"):
        pipeline_lib.pipeline_config(config)
    config.memory[f"{kind}_tile_size"] = -1
    with pytest.raises(pipeline_lib.PipelineError, match=f"{kind}_tile_size must be >= 0"):
        pipeline_lib.pipeline_config(config)


def test_every_sampler_knob_reaches_its_dataclass():
    """Each field of the stage1/stage2/memory sections lands in the PipelineConfig; a field
    the dataclasses do not know is refused with one line, not silently ignored."""
    raw = sample_configs.get_config("swifti2v_2k")
    config = pipeline_lib.pipeline_config(raw)
    for section in ("stage1", "stage2", "memory"):
        for name, value in raw[section].items():
            got = getattr(getattr(config, section), name)
            expected = None if (name, value) == ("guide_scale_low", -1.0) else value
            assert got == expected, (section, name)
    assert config.stage1.size is None and config.stage1.divisor == 4
    raw.stage1.resolution = "640x352"
    assert pipeline_lib.pipeline_config(raw).stage1.size == (640, 352)
    raw.stage2.unheard_of = 3
    with pytest.raises(
        pipeline_lib.PipelineError, match=r"unknown config\.stage2 field.*unheard_of"
    ):
        pipeline_lib.pipeline_config(raw)
    bad = sample_configs.get_config("demo")
    bad.stage1.resolution = "wide"
    with pytest.raises(pipeline_lib.PipelineError, match="stage1.resolution"):
        pipeline_lib.pipeline_config(bad)


def test_size_plan(ti2v_root):
    config = _pipeline_config(noisy_blocks=2)
    paths = pipeline_lib.resolve_model_paths({"root": str(ti2v_root)}, "ti2v")
    specs = pipeline_lib.inspect_models(paths, config)
    short = pipeline_lib.plan_sizes(specs, config, 256, 128, 17)
    assert (short.stage1_width, short.stage1_height, short.latent_frames) == (64, 32, 5)
    assert short.tokens_per_forward == 4 * (8 * 4) and not short.notes
    long = pipeline_lib.plan_sizes(specs, config, 256, 128, 33)
    assert long.tokens_per_forward == short.tokens_per_forward
    assert long.segments > short.segments
    rounded = pipeline_lib.plan_sizes(specs, config, 192, 128, 5)
    assert (rounded.stage1_width, rounded.stage1_height) == (64, 32) and rounded.notes
    for args, message in [
        ((256, 128, 16), "4k\\+1"),
        ((256, 128, 1), "4k\\+1"),
        ((250, 128, 17), "multiples of 32"),
    ]:
        with pytest.raises(pipeline_lib.PipelineError, match=message):
            pipeline_lib.plan_sizes(specs, config, *args)


# --------------------------------------------------------------------------------------------
# The whole pipeline in process


def test_generate_streams_the_decoded_latents(ti2v_root):
    config = _pipeline_config(noisy_blocks=1, neighbours=1, steps=2)
    # Stage I in chunks of 3 latent frames (13 frames are 4 latents): 2 chunks.
    chunked = dataclasses.replace(config.stage1, chunk_latents=3, overlap=1)
    config = dataclasses.replace(config, progress=False, stage1=chunked)
    paths = pipeline_lib.resolve_model_paths({"root": str(ti2v_root)}, "ti2v")
    pipeline = pipeline_lib.SwiftI2VPipeline(config, paths)
    # 32x32 (Stage I rounds 8x8 up to 32x32): the VAE programs compiled for the reference
    # test above are reused. 4 latent blocks in windows of 3: two segments.
    plan = pipeline.plan(32, 32, 13)
    assert (plan.stage1_width, plan.stage1_height) == (32, 32) and plan.notes
    assert [w.noisy_blocks for w in plan.windows] == [(1, 2), (3,)]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 70, 3), np.uint8))
    chunks = []
    result = pipeline.generate(
        image, "a boat on a lake", plan, seed=3, sink=chunks.append, keep_latents=True
    )
    assert [c.shape[0] for c in chunks] == [1, 8, 4]  # anchor, then each segment's blocks
    streamed = np.concatenate(chunks)
    assert streamed.shape == (13, 32, 32, 3) and streamed.dtype == np.uint8
    vae_config, vae_params = _vae(ti2v_root / "vae")
    decoded = frames_to_uint8(vae_lib.decode(vae_params, vae_config, result.latents)[0])
    assert np.abs(decoded.astype(int) - streamed.astype(int)).max() <= 1
    summary = result.summary
    assert summary["stage2_compilations"] == 1 and summary["segments"] == 2
    assert summary["stage1_chunks"] == 2 and summary["stage1_compilations"] <= 1
    assert 0 < summary["first_frame_seconds"] <= summary["seconds"]["total"]
    assert summary["stage2_tokens_per_forward"] == 3 * 1 * 1
    assert (summary["frames"], summary["height"], summary["width"]) == (13, 32, 32)
    assert set(summary["seconds"]) == {
        "load",
        "text",
        "stage1",
        "reference_encode",
        "stage2",
        "decode",
        "total",
    }
    assert summary["peak_memory_bytes"] > 0 and summary["backend"] == jax.default_backend()

    # The same stages on models already in memory (no loading, no release): same latents.
    from swifti2v_jax.sampling import orchestrator
    from swifti2v_jax.sampling.residency import ResidentModels
    from swifti2v_jax.text import PromptEncoder

    resident = ResidentModels(
        stage1_dits=(checkpoints.load(paths.stage1[0], "dit")[1],),
        stage1_vae=vae_params,
        stage2_dit=checkpoints.load(paths.stage2, "dit")[1],
        vae=vae_params,
        text_encoder=PromptEncoder.from_checkpoint(paths.t5, text_len=config.text_len),
    )
    again = orchestrator.run(
        resident, pipeline.specs, config, image, "a boat on a lake", plan, seed=3,
        keep_latents=True,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(again.latents), np.asarray(result.latents))
