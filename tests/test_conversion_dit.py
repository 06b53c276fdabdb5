"""`python -m conversion` on DiT checkpoints: error paths, LoRA merging, A14B expert layout."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conversion import common
from conversion import dit as dit_conversion
from conversion.__main__ import convert
from swifti2v_jax import checkpoints
from swifti2v_jax.models.dit import DiTConfig, WanDiT
from swifti2v_jax.presets import dit as dit_configs
from tests import dit_helpers

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny():
    config = DiTConfig.from_dict(dit_configs.tiny())
    model = dit_helpers.make_diffusers_model(config, seed=7)
    return config, dit_helpers.original_state_dict(model)


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "conversion", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _corrupt(tensors, kind):
    tensors = dict(tensors)
    if kind == "missing":
        del tensors["blocks.1.cross_attn.k.weight"]
        return tensors, "blocks.1.cross_attn.k.weight"
    if kind == "extra":
        tensors["blocks.0.img_emb.proj.weight"] = np.zeros((4, 4), np.float32)
        return tensors, "blocks.0.img_emb.proj.weight"
    tensors["blocks.2.ffn.0.weight"] = np.zeros((3, 3), np.float32)
    return tensors, "blocks.2.ffn.0.weight"


@pytest.mark.parametrize("kind", ["missing", "extra", "shape"])
def test_cli_refuses_bad_checkpoint_and_writes_nothing(tmp_path, tiny, kind):
    config, tensors = tiny
    tensors, key = _corrupt(tensors, kind)
    dit_helpers.write_original_layout(tmp_path / "release", config, tensors)
    out = tmp_path / "out"
    result = _run_cli("--source", tmp_path / "release", "--output", out, "--only", "dit")
    assert result.returncode != 0
    assert key in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # one clear line, no traceback
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_refuses_empty_directory_and_existing_output(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _run_cli("--source", tmp_path / "empty", "--output", tmp_path / "o", "--only", "dit")
    assert result.returncode != 0 and "found nothing to convert" in result.stderr
    (tmp_path / "o").mkdir()
    result = _run_cli("--source", tmp_path / "empty", "--output", tmp_path / "o", "--only", "dit")
    assert result.returncode != 0 and "already exists" in result.stderr


def test_cli_converts_bf16_keeping_norms_fp32(tmp_path, tiny):
    config, tensors = tiny
    dit_helpers.write_original_layout(tmp_path / "release", config, tensors)
    result = _run_cli(
        "--source", tmp_path / "release", "--output", tmp_path / "out", "--only", "dit"
    )
    assert result.returncode == 0, result.stderr
    fields, params = checkpoints.load(tmp_path / "out" / "dit")
    assert fields["param_dtype"] == "bfloat16"
    assert params["blocks"]["self_attn"]["q"]["kernel"].dtype.name == "bfloat16"
    assert params["blocks"]["self_attn"]["norm_q"]["scale"].dtype == np.float32
    assert params["blocks"]["modulation"].dtype == np.float32
    assert params["time_embedding_0"]["kernel"].dtype == np.float32
    meta = json.loads((tmp_path / "out" / "dit" / "config.json").read_text())
    assert meta["layout"] == "original"


def test_a14b_expert_directories_and_lora_merge(tmp_path):
    """high_noise_model/ + low_noise_model/ -> two experts; a LoRA merges into one of them."""
    from safetensors.numpy import save_file

    config = DiTConfig.from_dict(dit_configs.tiny_i2v())
    experts = {}
    for seed, sub in ((1, "high_noise_model"), (2, "low_noise_model")):
        tensors = dit_helpers.original_state_dict(dit_helpers.make_diffusers_model(config, seed))
        dit_helpers.write_original_layout(tmp_path / "release" / sub, config, tensors)
        experts[sub] = tensors

    rng = np.random.default_rng(0)
    rank, alpha, scale = 4, 2.0, 0.5
    down = rng.standard_normal((rank, config.dim)).astype(np.float32)
    up = rng.standard_normal((config.dim, rank)).astype(np.float32)
    lora = {
        "diffusion_model.blocks.1.self_attn.q.lora_down.weight": down,
        "diffusion_model.blocks.1.self_attn.q.lora_up.weight": up,
        "diffusion_model.blocks.1.self_attn.q.alpha": np.array(alpha, np.float32),
        "diffusion_model.blocks.0.ffn.2.diff_b": np.ones(config.dim, np.float32),
    }
    save_file(lora, str(tmp_path / "lora.safetensors"))

    written = convert(
        tmp_path / "release",
        tmp_path / "out",
        dtype="fp32",
        only=("dit",),
        lora=[f"low_noise={tmp_path / 'lora.safetensors'}"],
        lora_scale=scale,
        log=lambda _: None,
    )
    assert written == ["high_noise", "low_noise"]
    _, high = checkpoints.load(tmp_path / "out" / "high_noise")
    _, low = checkpoints.load(tmp_path / "out" / "low_noise")
    q_low = experts["low_noise_model"]["blocks.1.self_attn.q.weight"]
    expected = q_low + scale * (alpha / rank) * (up @ down)
    np.testing.assert_allclose(low["blocks"]["self_attn"]["q"]["kernel"][1], expected.T, rtol=1e-6)
    q_high = experts["high_noise_model"]["blocks.1.self_attn.q.weight"]
    np.testing.assert_array_equal(high["blocks"]["self_attn"]["q"]["kernel"][1], q_high.T)
    bias = experts["low_noise_model"]["blocks.0.ffn.2.bias"]
    np.testing.assert_allclose(low["blocks"]["ffn_2"]["bias"][0], bias + scale, rtol=1e-6)

    # The merged expert still runs.
    fields, _ = checkpoints.load(tmp_path / "out" / "low_noise")
    loaded = DiTConfig.from_dict(fields).replace(compute_dtype="float32")
    out = WanDiT(loaded).apply(
        {"params": low}, np.zeros((1, 1, 2, 2, 36), np.float32), np.zeros(1), np.zeros((1, 3, 32))
    )
    assert np.isfinite(np.asarray(out)).all()


def test_lora_with_unknown_target_is_refused(tmp_path, tiny):
    from safetensors.numpy import save_file

    config, _ = tiny
    save_file(
        {"blocks.0.mystery.lora_down.weight": np.zeros((2, 4), np.float32)},
        str(tmp_path / "bad.safetensors"),
    )
    with pytest.raises(common.ConversionError, match="mystery"):
        dit_conversion.load_lora_deltas(
            tmp_path / "bad.safetensors", 1.0, dit_conversion.expected_shapes(config)
        )
