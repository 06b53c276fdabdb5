"""One hybrid reference and one window input for data preparation, the loader and sampling.

The same clip and the same low-res video go through `python -m swifti2v_jax.data.prepare`
(precomputed Stage I references) and through the sampling stages; the z_ref stored in the
record, the windows the loader cuts from it and the windows the Stage II sampler feeds its
denoiser must be exactly equal. Plus the degradations that make training references.
"""

from __future__ import annotations

import hashlib

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swifti2v_jax import checkpoints
from swifti2v_jax.csg import degradation, inputs, layout, reference
from swifti2v_jax.data import loader, prepare, records, videos
from swifti2v_jax.demo import BUNDLED_WEIGHTS
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.sampling import orchestrator, stage2
from swifti2v_jax.training import loss as loss_lib
from tests import pil_resize

FRAMES, SIZE, FACTOR, TEXT_LEN, TEXT_DIM = 5, 32, 2, 8, 4


def _write_video(path, frames: np.ndarray) -> None:
    with imageio.get_writer(str(path), format="FFMPEG", fps=8, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)


def _moving_pattern(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size // 4, size // 4, 3), np.uint8).repeat(4, 0).repeat(4, 1)
    return np.stack([np.roll(base, 2 * i, axis=1) for i in range(FRAMES)])


@pytest.fixture(scope="module")
def vae_dir():
    # The bundled demo VAE (1x4x4, z=12): the smallest real VAE here, quick to compile.
    return BUNDLED_WEIGHTS / "vae"


class RecordingDenoiser:
    """Stands in for stage2.WindowDenoiser: records what the sampler feeds each window."""

    def __init__(self, config: stage2.Stage2SamplerConfig):
        self.config, self.calls = config, []

    def __call__(self, params, latents, z_ref, window, context, uncond, schedule):
        self.calls.append((window, np.asarray(latents), np.asarray(z_ref)))
        return latents


def test_preparation_loader_and_sampling_build_the_same_reference_and_windows(vae_dir, tmp_path):
    clips, refs, texts = tmp_path / "videos", tmp_path / "stage1", tmp_path / "text"
    for folder in (clips, refs, texts):
        folder.mkdir()
    _write_video(clips / "clip.mp4", _moving_pattern(SIZE, 0))
    _write_video(refs / "clip.mp4", _moving_pattern(SIZE // FACTOR, 1))  # a "Stage I output"
    empty_caption = hashlib.sha1(b"").hexdigest()
    np.save(texts / f"{empty_caption}.npy", np.ones((3, TEXT_DIM), np.float32))

    # Data preparation: the records a training run reads.
    encoders = prepare.build_encoders(
        str(vae_dir), text_embeddings_dir=str(texts), text_len=TEXT_LEN
    )
    spec = prepare.ReferenceSpec("precomputed", str(refs), factor=FACTOR)
    clip_spec = prepare.ClipSpec(num_frames=FRAMES, height=SIZE, width=SIZE)
    out = tmp_path / "data"
    report = prepare.prepare(
        clips, out, clip_spec=clip_spec, encoders=encoders, reference=spec, dtype="float32"
    )
    assert report.written == 1
    record = records.as_record(loader.array_record_source(out)[0])

    # Sampling: the same clip's first frame as the input image, the same low-res video as
    # Stage I's output (both read as preparation reads them).
    clip = videos.read_clip(clips / "clip.mp4", FRAMES, SIZE, SIZE)
    video_low = videos.read_clip(refs / "clip.mp4", FRAMES, SIZE // FACTOR, SIZE // FACTOR)
    vae_config, vae_params = checkpoints.load(vae_dir, "vae")
    z_ref, anchor = orchestrator.reference_latents(
        vae_params, vae_lib.as_config(vae_config), jnp.asarray(video_low[None]),
        jnp.asarray(clip[None, 0]),
    )  # fmt: skip
    np.testing.assert_array_equal(record["reference"], np.asarray(z_ref[0]))
    np.testing.assert_allclose(record["latents"][0], np.asarray(anchor[0, 0]), atol=1e-5)

    # The windows: what the sampler hands its denoiser vs what the loader cuts out.
    num_blocks = z_ref.shape[1]
    csg_config = stage2.Stage2SamplerConfig(noisy_blocks=1, neighbours=1, steps=1, solver="euler")
    denoiser = RecordingDenoiser(csg_config)
    context = jnp.zeros((1, TEXT_LEN, TEXT_DIM))
    stage2.generate(
        denoiser, None, z_ref=z_ref, anchor=anchor, context=context, key=jax.random.key(0)
    )
    spec = loader.WindowSpec(noisy_blocks=1, neighbours=1, text_len=TEXT_LEN)
    assert [w for w, _, _ in denoiser.calls] == spec.plan(num_blocks) and num_blocks >= 4
    rng = np.random.default_rng(0)
    drawn = {spec.sample(num_blocks, rng) for _ in range(20)}
    assert {w for w, _, _ in denoiser.calls} <= drawn  # training draws the sampling windows

    examples = [loader.window_example(record, w, TEXT_LEN) for w, _, _ in denoiser.calls]
    for (window, latents, ref), example in zip(denoiser.calls, examples):
        blocks, is_noisy = window.as_arrays()
        np.testing.assert_array_equal(example["reference"], ref[0])
        np.testing.assert_array_equal(example["positions"], blocks)
        np.testing.assert_array_equal(example["is_noisy"], is_noisy)
        np.testing.assert_array_equal(example["latents"][0], latents[0, 0])  # the anchor

    # The model input of the loss (z_ref channels, positions, context timesteps) equals the
    # sampler's for the same window.
    batch = {k: jnp.stack([e[k] for e in examples]) for k in examples[0]}

    @jax.jit  # one program instead of many op-by-op dispatches
    def loss_inputs(batch, keys):
        seen = {}

        def apply_fn(params, model_input, timesteps, text, positions, mask):
            seen.update(model_input=model_input, timesteps=timesteps, positions=positions)
            return jnp.zeros(model_input.shape[:-1] + (z_ref.shape[-1],))

        loss_lib.squared_error_sum(apply_fn, None, batch, keys, loss_lib.LossConfig())
        return seen

    seen = loss_inputs(batch, jax.random.split(jax.random.key(0), len(examples)))
    channels = z_ref.shape[-1]
    for i, (window, latents, ref) in enumerate(denoiser.calls):
        _, is_noisy = window.as_arrays()
        model_input, timesteps = inputs.window_model_input(
            jnp.asarray(latents), jnp.asarray(ref), is_noisy, 500.0, "concat"
        )
        np.testing.assert_array_equal(
            seen["model_input"][i, ..., channels:], model_input[0, ..., channels:]
        )
        np.testing.assert_array_equal(seen["positions"][i], window.as_arrays()[0])
        np.testing.assert_array_equal(seen["timesteps"][i] == 0, timesteps[0] == 0)


def test_pixel_degradation_is_a_low_res_video_for_the_one_builder():
    video = np.random.default_rng(0).uniform(-1, 1, (5, 16, 16, 3)).astype(np.float32)
    low = degradation.pixel_blur_noise(video, np.random.default_rng(1), factor=4)
    assert low.shape == (5, 4, 4, 3) and np.abs(low).max() <= 1.0
    clean = degradation.downsample(video, 4)
    assert 0 < np.abs(low - clean).max() < 0.3  # noise of std <= 0.05 on the bicubic resize
    hybrid = np.asarray(reference.hybrid_reference(low[None], video[None, 0]))[0]
    np.testing.assert_array_equal(hybrid[0], video[0])
    upsampled = pil_resize.bicubic_upsample(low[None, 1:], 16, 16)  # the documented method
    np.testing.assert_allclose(hybrid[1:], upsampled[0], rtol=0, atol=1e-6)


def test_latent_degradation_keeps_the_anchor():
    z = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
    keep = jnp.array([True, False, False, False])
    out = degradation.latent_blur_noise(
        jax.random.PRNGKey(1), z, keep=keep, factor=2, max_noise=0.2
    )
    np.testing.assert_array_equal(out[0], z[0])
    assert float(jnp.abs(out[1:] - z[1:]).mean()) > 0.05


def test_stage1_partial_denoise_with_an_exact_velocity_recovers_the_low_res_clip():
    """Identity 'VAE' and the exact flow velocity: Euler from sigma* back to 0 is exact, so
    the output is the (bicubic) downsampled clip."""
    video = np.random.default_rng(0).uniform(-1, 1, (5, 16, 16, 3)).astype(np.float32)
    low = degradation.downsample(video, 2)
    x0 = jnp.asarray(low[None])
    noise_key = jax.random.PRNGKey(7)
    eps = jax.random.normal(noise_key, x0.shape)
    out = degradation.stage1_partial_denoise(
        video,
        low_size=(8, 8),
        encode=jnp.asarray,
        decode=lambda x: x,
        velocity=lambda x, sigma: eps - x0,
        sigmas=[0.6, 0.3, 0.0],
        key=noise_key,
    )
    np.testing.assert_allclose(out, np.clip(low, -1, 1), atol=1e-5)
    with pytest.raises(ValueError, match="descend"):
        degradation.stage1_partial_denoise(
            video, low_size=(8, 8), encode=jnp.asarray, decode=lambda x: x,
            velocity=lambda x, s: x, sigmas=[0.5, 0.6], key=noise_key,
        )  # fmt: skip


def test_one_window_layout_for_sampling_and_training():
    sampler = stage2.Stage2SamplerConfig(noisy_blocks=2, neighbours=1, end_to_end=False)
    spec = loader.WindowSpec(noisy_blocks=2, neighbours=1)
    assert isinstance(sampler, layout.WindowLayout) and isinstance(spec, layout.WindowLayout)
    assert sampler.plan(9) == spec.plan(9) == layout.plan_segments(9, 2, 1)
    assert spec.window_size(9) == 4 and layout.WindowLayout(end_to_end=True).window_size(9) == 9
    with pytest.raises(ValueError, match="M must be >= 1"):
        loader.WindowSpec(noisy_blocks=0)
    with pytest.raises(ValueError, match="in_dim 96"):
        inputs.check_conditioning("concat", 48, 48)
    inputs.check_conditioning("refine", 48, 48)
