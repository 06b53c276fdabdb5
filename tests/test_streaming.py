"""The streaming pipeline (sampling/orchestrator.py `run`): Stage I chunk by chunk -> hybrid
reference -> the CSG segments each chunk completes -> decode -> sink, equal bit for bit to the
stages run one after the other on the whole clip, with bounded state."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import sample as sample_configs
from swifti2v_jax import checkpoints
from swifti2v_jax.csg import reference
from swifti2v_jax.demo import build as demo_build
from swifti2v_jax.io.video import frames_to_uint8
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.sampling import orchestrator, stage1, stage2
from swifti2v_jax.sampling import pipeline as pipeline_lib
from swifti2v_jax.sampling.residency import ResidentModels


@pytest.fixture(scope="module")
def ti2v_root(tmp_path_factory):
    return demo_build.build(tmp_path_factory.mktemp("demo") / "ti2v", stage1="ti2v")


class ZeroText:
    """A prompt encoder stand-in: the demo DiTs take [1, L, d] context rows."""

    def __init__(self, length: int, dim: int):
        self.shape = (1, length, dim)

    def __call__(self, prompt):
        return np.zeros(self.shape, np.float32)

    negative = __call__


class RecordingModels(ResidentModels):
    """Resident models that log when Stage I ends, to see frames arrive before it does."""

    def __init__(self, *args, events, **kwargs):
        super().__init__(*args, **kwargs)
        self.events = events

    def done_stage1(self) -> None:
        self.events.append("done_stage1")


@contextlib.contextmanager
def compiled_programs():
    """The set of programs XLA compiles inside the block (name and input shapes)."""
    found: set[str] = set()

    class Handler(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Compiling "):
                found.add(message.split(". Argument mapping")[0])

    handler, logger = Handler(), logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield found
    finally:
        logger.removeHandler(handler)


def _setup(root, frames=21, chunk=3, overlap=1):
    config = sample_configs.get_config("demo")
    config.stage1.update(chunk_latents=chunk, overlap=overlap, steps=2)
    config.progress = False
    config = pipeline_lib.pipeline_config(config)
    paths = pipeline_lib.resolve_model_paths({"root": str(root)}, "ti2v")
    specs = pipeline_lib.inspect_models(paths, config)
    plan = pipeline_lib.plan_sizes(specs, config, 32, 32, frames)
    vae = checkpoints.load(paths.vae, "vae")[1]
    models = dict(
        stage1_dits=(checkpoints.load(paths.stage1[0], "dit")[1],),
        stage1_vae=vae,
        stage2_dit=checkpoints.load(paths.stage2, "dit")[1],
        vae=vae,
        text_encoder=ZeroText(config.text_len, specs.stage1.text_dim),
    )
    return config, specs, plan, models


@pytest.mark.parametrize("chunk, overlap", [(3, 1), (3, 2)])  # (3, 2): one frame cross-faded
def test_streamed_run_equals_the_whole_clip_stages_exactly(ti2v_root, chunk, overlap):
    config, specs, plan, models = _setup(ti2v_root, frames=21, chunk=chunk, overlap=overlap)
    assert config.stage1.seam_release > 0  # the demo preset's continuation
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 50, 3), np.uint8))
    events: list = []
    sink = lambda frames: events.append(frames)  # noqa: E731
    with compiled_programs() as first_programs:
        streamed = orchestrator.run(
            RecordingModels(**models, events=events), specs, config, image, "p", plan, seed=5,
            sink=sink, keep_latents=True,
        )  # fmt: skip
    summary = streamed.summary
    assert plan.latent_frames == 6
    assert summary["stage1_chunks"] == len(stage1.chunk_plan(6, chunk, overlap)) >= 3
    assert summary["stage2_compilations"] == 1
    # Streaming: frames reached the sink while Stage I still had chunks to run.
    stage1_end = [isinstance(e, str) for e in events].index(True)
    assert 0 < stage1_end < len(events) - 1
    frames = np.concatenate([e for e in events if not isinstance(e, str)])
    assert frames.shape == (21, 32, 32, 3)

    # The same seed through the stages one after the other on the whole clip: the
    # orchestrator's whole-clip entry point, as the tools use it.
    key1, key2 = jax.random.split(jax.random.key(5))
    image_hi, image_lo = orchestrator.prepare_images(image, plan)
    resident = ResidentModels(**models)
    clip = orchestrator.run_clip(
        resident, specs, config, context=jnp.asarray(resident.text_encoder("p")),
        image_lo=image_lo, image_hi=image_hi, frames=21, stage1_key=key1, stage2_key=key2,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(streamed.latents), np.asarray(clip.latents))
    np.testing.assert_array_equal(frames, frames_to_uint8(clip.video[0]))

    # A longer clip (more chunks; a first, middle and last chunk like the shorter one, with
    # the same last-chunk remainder) compiles only programs of the shapes the shorter one
    # compiled: nothing depends on the length. (A 2-chunk clip has no middle chunk: a
    # 3-chunk one then concatenates that chunk's z_ref blocks in one more small program.)
    # (The run builds a new WindowDenoiser, i.e. a new jit: its program compiles again.)
    longer = pipeline_lib.plan_sizes(specs, config, 32, 32, 29)
    with compiled_programs() as longer_programs:
        result = orchestrator.run(ResidentModels(**models), specs, config, image, "p", longer)
    assert result.summary["stage1_chunks"] == len(stage1.chunk_plan(8, chunk, overlap)) >= 4
    assert result.latents is None
    assert any("_denoise" in p for p in longer_programs)
    assert longer_programs <= first_programs, longer_programs - first_programs


class MixingDenoiser:
    """A cheap stand-in for the window program that mixes every block of the window, so a
    wrong neighbour, reference or position changes the result."""

    def __init__(self, config: stage2.Stage2SamplerConfig):
        self.config = config

    def __call__(self, params, latents, z_ref, window, context, uncond, schedule):
        positions = jnp.asarray(window.blocks, jnp.float32)[None, :, None, None, None]
        mixed = latents + 0.5 * z_ref + 0.25 * jnp.roll(latents, 1, axis=1) + 0.01 * positions
        return jnp.tanh(mixed)


@pytest.mark.parametrize("neighbour_sigma, ensemble", [(0.0, 1), (0.4, 1), (0.4, 3)])
def test_segment_stream_any_grouping_equals_generate_and_holds_one_window(
    neighbour_sigma, ensemble
):
    config = stage2.Stage2SamplerConfig(
        noisy_blocks=2, neighbours=2, steps=1, solver="euler", schedule="euler",
        sigma_start=0.8, neighbour_sigma=neighbour_sigma, ensemble=ensemble,
    )  # fmt: skip
    denoiser = MixingDenoiser(config)
    blocks = 23
    z_ref = jax.random.normal(jax.random.key(0), (1, blocks, 2, 3, 4))
    anchor = z_ref[:, :1] + 0.1
    inputs = dict(anchor=anchor, context=jnp.zeros((1, 2, 3)), key=jax.random.key(1))
    whole = stage2.generate(denoiser, None, z_ref=z_ref, **inputs)
    window = config.window_size(blocks)
    for groups in ([1] * blocks, [4, 1, 7, 11], [blocks]):
        stream = stage2.SegmentRunner(denoiser, None, num_blocks=blocks, **inputs)
        parts, start = [anchor], 0
        for size in groups:
            parts += [r.latents for r in stream.push(z_ref[:, start : start + size])]
            start += size
            # Held between pushes: z_ref and latents of at most one window each.
            assert stream.held_blocks <= 2 * window, (groups, stream.held_blocks)
        assert stream.done
        np.testing.assert_array_equal(np.asarray(jnp.concatenate(parts, 1)), np.asarray(whole))
    with pytest.raises(ValueError, match="more z_ref blocks"):
        list(stage2.SegmentRunner(denoiser, None, num_blocks=3, **inputs).push(z_ref[:, :4]))


def test_hybrid_reference_encoder_any_grouping_is_exact(ti2v_root):
    config, params = checkpoints.load(ti2v_root / "vae", "vae")
    config = vae_lib.as_config(config)
    assert vae_lib.temporal_factor(config) == 4  # the grouping matters
    rng = np.random.default_rng(0)
    video_low = jnp.asarray(rng.uniform(-1, 1, (1, 13, 8, 8, 3)), jnp.float32)
    image = jnp.asarray(rng.uniform(-1, 1, (1, 32, 32, 3)), jnp.float32)
    whole = np.asarray(reference.encode_hybrid_reference(params, config, video_low, image))
    encoder = reference.HybridReferenceEncoder(params, config, image)
    pieces = []
    for start, stop in [(0, 3), (3, 4), (4, 11), (11, 13)]:
        out = encoder.push(video_low[:, start:stop])
        if out is not None:
            pieces.append(np.asarray(out))
    encoder.finish()
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1), whole)
    short = reference.HybridReferenceEncoder(params, config, image)
    short.push(video_low[:, :7])
    with pytest.raises(ValueError, match="4k\\+1"):
        short.finish()


def _programs(root, frames, chunk):
    from swifti2v_jax.sampling import programs

    config, specs, plan, _ = _setup(root, frames=frames, chunk=chunk)
    config = dataclasses.replace(
        config, memory=dataclasses.replace(config.memory, decode_tile_size=1, decode_tile_overlap=0)
    )
    return programs.streamed_programs(specs, config, plan)


def test_every_streamed_program_is_the_same_for_any_clip_length(ti2v_root):
    from swifti2v_jax.sampling import programs

    short, long = _programs(ti2v_root, 21, 3), _programs(ti2v_root, 41, 3)
    assert [p.name for p in short] == [p.name for p in long]
    assert [p.signature() for p in short] == [p.signature() for p in long]
    assert {"stage1_dit_chunk", "stage2_window", "stage2_decode_tile_step"} <= {
        p.name for p in short
    }
    # XLA's memory plan, compiled for each length (the Stage I chunk program: the one a
    # single pass would grow; the benchmark compiles them all at 2K).
    chunk = [p for p in (short, long) for p in p if p.name == "stage1_dit_chunk"]
    plans = [programs.memory_plan(p) for p in chunk]
    assert plans[0] == plans[1] and plans[0]["argument_size_in_bytes"] > 0
    # The test can fail: a single-pass Stage I grows with the clip.
    one_pass = [p.signature() for p in _programs(ti2v_root, 41, 0)]
    assert one_pass != [p.signature() for p in long]


@pytest.mark.slow
def test_a14b_chunked_stage1_streams_through_the_pipeline(tmp_path):
    root = demo_build.build(tmp_path / "a14b", stage1="a14b")
    ti2v = demo_build.build(tmp_path / "ti2v", stage1="ti2v")
    config = sample_configs.get_config("demo")
    config.stage1.update(backbone="a14b", chunk_latents=3, overlap=1, steps=2)
    config.progress = False
    config = pipeline_lib.pipeline_config(config)
    paths = pipeline_lib.resolve_model_paths({"root": str(ti2v), "stage1_root": str(root)}, "a14b")
    specs = pipeline_lib.inspect_models(paths, config)
    plan = pipeline_lib.plan_sizes(specs, config, 32, 32, 21)
    vae = checkpoints.load(paths.vae, "vae")[1]
    models = ResidentModels(
        stage1_dits=tuple(checkpoints.load(p, "dit")[1] for p in paths.stage1),
        stage1_vae=checkpoints.load(paths.stage1_vae, "vae")[1],
        stage2_dit=checkpoints.load(paths.stage2, "dit")[1],
        vae=vae,
        text_encoder=ZeroText(config.text_len, specs.stage1.text_dim),
    )
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), np.uint8))
    frames = []
    result = orchestrator.run(models, specs, config, image, "p", plan, sink=frames.append)
    assert np.concatenate(frames).shape == (21, 32, 32, 3)
    summary = result.summary
    assert summary["stage1_chunks"] == 3 and summary["stage1_compilations"] <= 1
    assert sum(summary["stage1_expert_forwards"].values()) == 2 * 3  # 2 steps per chunk
