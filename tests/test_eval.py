"""Image metrics and the demo quality script (on the tiny random demo models)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from swifti2v_jax.csg import reference
from swifti2v_jax.data import photos, procedural
from swifti2v_jax.demo import build as demo_build
from swifti2v_jax.eval import demo_quality, metrics
from swifti2v_jax.models import vae
from swifti2v_jax.sampling import stage2 as csg


def test_psnr_matches_its_definition():
    a = np.zeros((2, 16, 16, 3), np.float32)
    b = np.full_like(a, 0.2)  # 0.1 apart on the [0, 1] scale: MSE 0.01 -> 20 dB
    np.testing.assert_allclose(metrics.psnr(a, b), [20.0, 20.0], atol=1e-9)
    b[1, :8] = 0.0  # half the pixels exact: MSE 0.005
    np.testing.assert_allclose(metrics.psnr(a, b)[1], 10 * np.log10(1 / 0.005), atol=1e-9)


def test_ssim_identity_constants_and_noise():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 24, 20, 3))
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=1e-12)
    # constant frames: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.3, 0.7  # on the [0, 1] scale
    c1 = metrics.K1**2
    got = metrics.ssim(np.full((1, 16, 16, 3), 2 * a - 1), np.full((1, 16, 16, 3), 2 * b - 1))
    np.testing.assert_allclose(got, (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-10)
    scores = [float(metrics.ssim(x, np.clip(x + s * rng.standard_normal(x.shape), -1, 1)).mean())
              for s in (0.05, 0.2, 0.5)]  # fmt: skip
    assert scores[0] > scores[1] > scores[2]
    assert metrics.ssim(x, -x).mean() < 0.1


def test_metric_input_errors():
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


def test_segment_frames_cover_the_clip_once():
    config = csg.Stage2SamplerConfig(noisy_blocks=1, neighbours=1)
    frames = demo_quality.segment_frames(config, 5, 4)
    assert frames == [list(range(1, 9)), list(range(9, 13)), list(range(13, 17))]
    config = csg.Stage2SamplerConfig(noisy_blocks=2, neighbours=1)
    flat = [f for seg in demo_quality.segment_frames(config, 9, 4) for f in seg]
    assert flat == list(range(1, 33))


def test_demo_quality_runs_end_to_end(tmp_path, monkeypatch):
    weights = demo_build.build(tmp_path / "random", stage1="ti2v")
    with pytest.raises(ValueError, match="lacks"):
        demo_quality.run(tmp_path, tmp_path / "nothing", clips=1)
    built = []

    class CountedDenoiser(csg.WindowDenoiser):
        def __init__(self, *args):
            super().__init__(*args)
            built.append(self)

    monkeypatch.setattr(demo_quality.stage2, "WindowDenoiser", CountedDenoiser)
    result = demo_quality.run(weights, tmp_path / "out", clips=1, frames=13, height=128, width=256)
    # Six Stage II runs (3 protocols x 2 attention modes), one compiled program per mode.
    assert len(built) == 2 and [d.traces for d in built] == [1, 1]
    names = {"demo_quality.json", "demo_quality.md", "psnr_per_frame.png", "frames.png"}
    assert names <= {p.name for p in (tmp_path / "out").iterdir()}
    saved = json.loads((tmp_path / "out" / "demo_quality.json").read_text())
    assert saved["summary"].keys() == result["summary"].keys()
    summary = result["summary"]
    for protocol in demo_quality.PROTOCOLS:
        for method in demo_quality.METHODS:
            entry = summary[f"{protocol}/{method}"]
            assert len(entry["psnr_per_frame"]) == 13
            assert len(entry["psnr_per_segment"]) == 2 and np.isfinite(entry["psnr"])
    # the oracle bicubic baseline is exactly bicubic(true low-res clip) with frame 0 = input
    high, low = procedural.render_pair(demo_quality.FIRST_HELD_OUT_SEED, 13, 128, 256, 4)
    upsampled = np.array(reference.resize_frames(jnp.asarray(low[None]), 128, 256)[0])
    upsampled[0] = high[0]
    expected = metrics.psnr(upsampled, high)
    np.testing.assert_allclose(result["per_clip"][0]["oracle/bicubic"]["psnr"], expected, rtol=1e-6)
    assert result["per_clip"][0]["oracle/bicubic"]["psnr"][0] > 90  # frame 0 is exact
    # vae_oracle: the same with the low-res clip through the demo VAE (a perfect Stage I)
    models = demo_quality.DemoModels(weights, 64)
    through = vae.decode(models.vae_params, models.vae_config, vae.encode(
        models.vae_params, models.vae_config, low[None]))  # fmt: skip
    upsampled = np.array(reference.resize_frames(through, 128, 256)[0])
    upsampled[0] = high[0]
    np.testing.assert_allclose(
        result["per_clip"][0]["vae_oracle/bicubic"]["psnr"], metrics.psnr(upsampled, high),
        rtol=1e-5,
    )  # fmt: skip
    assert len(summary["follows"]["psnr_per_frame"]) == 13


def test_photo_set_is_the_held_out_photographs():
    """demo_quality --set photos evaluates data/photos.py's held-out clips, nothing else."""
    seed = demo_quality.FIRST_HELD_OUT_SEED + 3
    high, low, prompt = demo_quality.CLIP_SETS["photos"](seed, 5, 32, 64, 4)
    expected_high, expected_low = photos.render_pair(seed, 5, 32, 64, 4, split="held_out")
    np.testing.assert_array_equal(high, expected_high)
    np.testing.assert_array_equal(low, expected_low)
    scene = photos.random_photo_scene(seed, "held_out")
    assert set(scene.photos) <= set(photos.HELD_OUT_PHOTOS) and prompt == photos.caption(scene)


def test_frame_strip_layout_and_errors():
    from swifti2v_jax.demo import strip

    video = np.arange(3 * 4 * 5 * 3, dtype=np.uint8).reshape(3, 4, 5, 3)
    image = np.zeros((4, 5, 3), np.uint8)
    row = strip.frame_strip(video, image, [0, 2])
    assert row.shape == (4, 3 * 5 + 2 * strip.GAP, 3)
    np.testing.assert_array_equal(row[:, -5:], video[2])
    assert (row[:, 5 : 5 + strip.GAP] == 255).all()
    with pytest.raises(ValueError, match="outside"):
        strip.frame_strip(video, None, [3])


def test_frame_strip_cli_scales_and_rejects_bad_scale(tmp_path, capsys):
    from swifti2v_jax.demo import strip
    from swifti2v_jax.io import video as video_io

    path = tmp_path / "clip.mp4"
    with video_io.VideoWriter(path, 48, 32, fps=8) as writer:
        writer.write_frames(np.full((5, 32, 48, 3), 100, np.uint8))
    out = tmp_path / "strip.png"
    assert strip.main([str(path), str(out), "--frames", "0", "4", "--scale", "3"]) == 0
    width = 3 * (2 * 48 + 2 * strip.GAP + 48)  # image + 2 frames, 2 gaps, enlarged 3x
    assert Image.open(out).size == (width, 3 * 32)
    with pytest.raises(SystemExit):
        strip.main([str(path), str(out), "--scale", "0"])
    assert "--scale must be >= 1" in capsys.readouterr().err
