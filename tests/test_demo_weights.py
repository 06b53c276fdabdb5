"""The shipped demo weights: complete, small, the architectures the configs describe, and
`python sample.py` with no flags turns the bundled image into a video that follows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs.demo import vae as demo_vae_config
from swifti2v_jax import checkpoints
from swifti2v_jax.data import procedural
from swifti2v_jax.demo import BUNDLED_WEIGHTS, EXAMPLE_IMAGE, build
from swifti2v_jax.eval import metrics
from swifti2v_jax.io.video import read_video
from swifti2v_jax.models import vae
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.presets import dit as dit_presets

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:os.fork")


def test_bundled_weights_are_complete_small_and_as_configured():
    manifest = json.loads((BUNDLED_WEIGHTS / "DEMO.json").read_text())
    assert manifest["trained"] is True
    size = sum(p.stat().st_size for p in BUNDLED_WEIGHTS.rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"demo weights are {size / 2**20:.1f} MiB"
    for name, preset in (("dit", "demo_stage1"), ("stage2", "demo_stage2")):
        fields, params = checkpoints.load(BUNDLED_WEIGHTS / name, kind="dit")
        expected = DiTConfig.from_dict(dit_presets.get(preset).to_dict())
        assert DiTConfig.from_dict(fields) == expected
        assert all(np.all(np.isfinite(np.asarray(x))) for x in _leaves(params))
    fields, _ = checkpoints.load(BUNDLED_WEIGHTS / "vae", kind="vae")
    architecture = demo_vae_config.get_config().vae.to_dict()
    config = vae.as_config(fields)
    for key, value in architecture.items():
        if key in ("latents_mean", "latents_std"):  # measured at export
            continue
        got = getattr(config, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    checkpoints.load(BUNDLED_WEIGHTS / "t5", kind="t5")
    assert (BUNDLED_WEIGHTS / "tokenizer" / "tokenizer.json").is_file()


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_example_image_is_a_held_out_procedural_frame():
    image = np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB"))
    np.testing.assert_array_equal(image, build.make_example_image())
    assert build.EXAMPLE_SEED >= 1_000_000  # the demo models train on seeds < 1000


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`python sample.py` exactly as the README's first command runs it (no flags)."""
    workdir = tmp_path_factory.mktemp("sample_default")
    env = dict(os.environ, SWIFTI2V_JAX_CACHE=str(workdir / "cache"), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, str(REPO / "sample.py")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir / "swifti2v.mp4", proc.stderr


@pytest.mark.smoke
def test_default_sample_uses_the_trained_models_and_follows_the_image(default_run):
    output, stderr = default_run
    assert "bundled demo models" in stderr and "RANDOM" not in stderr
    frames, _ = read_video(output)
    assert frames.shape == (17, 64, 128, 3)
    image = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((128, 64), Image.BICUBIC)
    image = np.asarray(image, np.float32) / 127.5 - 1.0
    video = frames.astype(np.float32) / 127.5 - 1.0
    similarity = metrics.psnr(video, np.broadcast_to(image, video.shape))
    # Another held-out scene at the same size: how close an unrelated image of this kind is.
    other = procedural.render_pair(2_000_000, 1, 64, 128, 1)[0][0]
    unrelated = float(metrics.psnr(other, image))
    assert similarity[0] > 24.0  # frame 0 reproduces the image through the VAE
    # every frame stays far closer to the input than an unrelated scene (it pans slowly)
    assert similarity.min() > unrelated + 4.0, (similarity.round(1), unrelated)
