"""The Flax WanDiT against diffusers' WanTransformer3DModel on the same converted weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conversion import common
from conversion import dit as dit_conversion
from swifti2v_jax import checkpoints
from swifti2v_jax.models import layers
from swifti2v_jax.models.dit import DiTConfig, WanDiT, abstract_params, init_params
from swifti2v_jax.presets import dit as dit_configs
from tests import dit_helpers

torch = pytest.importorskip("torch")

BATCH, FRAMES, HEIGHT, WIDTH, TEXT_LEN = 2, 3, 6, 10, 12


def _config(preset: str) -> DiTConfig:
    return DiTConfig.from_dict(dit_configs.get(preset))


def _inputs(config: DiTConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((BATCH, FRAMES, HEIGHT, WIDTH, config.in_dim), np.float32)
    context = rng.standard_normal((BATCH, TEXT_LEN, config.text_dim), np.float32)
    context[1, 7:] = 0.0  # Wan zero-pads prompts; the padded rows are still attended
    return latents, context


def _diffusers_forward(model, latents, timesteps, context):
    hidden = torch.from_numpy(latents).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
        out = model(
            hidden_states=hidden,
            timestep=torch.from_numpy(timesteps),
            encoder_hidden_states=torch.from_numpy(context),
            return_dict=False,
        )[0]
    return out.permute(0, 2, 3, 4, 1).numpy()


def _per_token(timesteps_per_frame: np.ndarray, config: DiTConfig) -> np.ndarray:
    tokens = (HEIGHT // config.patch_size[1]) * (WIDTH // config.patch_size[2])
    return np.repeat(timesteps_per_frame, tokens, axis=1)


def _assert_close(ours, ref, rel=1e-4):
    err = np.max(np.abs(np.asarray(ours) - ref))
    assert err <= rel * np.max(np.abs(ref)), (
        f"max|diff| {err:.3g} vs max|ref| {np.abs(ref).max():.3g}"
    )


@pytest.fixture(scope="module")
def ti2v_model():
    config = _config("tiny")
    model = dit_helpers.make_diffusers_model(config, seed=0)
    source = {k: v.numpy() for k, v in model.state_dict().items()}
    params = dit_conversion.convert_source(_DictSource(source), config, diffusers=True)
    return config, model, params


_DictSource = common.DictSource


@pytest.mark.smoke
def test_parity_scalar_timesteps(ti2v_model):
    config, model, params = ti2v_model
    latents, context = _inputs(config)
    timesteps = np.array([999.0, 321.0], np.float32)
    ref = _diffusers_forward(model, latents, timesteps, context)
    ours = WanDiT(config).apply({"params": params}, latents, timesteps, context)
    assert ours.shape == (BATCH, FRAMES, HEIGHT, WIDTH, config.out_dim)
    _assert_close(ours, ref)


def test_parity_per_frame_timesteps(ti2v_model):
    """The TI2V image-to-video path: frame 0 clean (t=0), others noisy, per-token in diffusers."""
    config, model, params = ti2v_model
    latents, context = _inputs(config, seed=1)
    per_frame = np.array([[0.0, 700.0, 700.0], [0.0, 0.0, 250.0]], np.float32)
    ref = _diffusers_forward(model, latents, _per_token(per_frame, config), context)
    ours = WanDiT(config).apply({"params": params}, latents, per_frame, context)
    _assert_close(ours, ref)
    # A per-frame timestep really changes the answer compared to a scalar one.
    scalar = WanDiT(config).apply({"params": params}, latents, per_frame[:, -1], context)
    assert np.max(np.abs(np.asarray(scalar) - ref)) > 1e-3 * np.max(np.abs(ref))


def test_parity_i2v_36_channels():
    config = _config("tiny_i2v")
    model = dit_helpers.make_diffusers_model(config, seed=3)
    source = {k: v.numpy() for k, v in model.state_dict().items()}
    params = dit_conversion.convert_source(_DictSource(source), config, diffusers=True)
    latents, context = _inputs(config, seed=2)
    timesteps = np.array([900.0, 100.0], np.float32)
    ref = _diffusers_forward(model, latents, timesteps, context)
    ours = WanDiT(config).apply({"params": params}, latents, timesteps, context)
    assert ours.shape[-1] == 16
    _assert_close(ours, ref)


@pytest.mark.smoke
@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_parity_through_converter_on_disk(tmp_path, ti2v_model, layout):
    """Write a checkpoint as a release would, convert it with the CLI driver, load, compare."""
    from conversion.__main__ import convert

    config, model, _ = ti2v_model
    source = tmp_path / "release"
    if layout == "original":
        dit_helpers.write_original_layout(source, config, dit_helpers.original_state_dict(model))
    else:
        model.save_pretrained(source / "transformer", safe_serialization=True)
    written = convert(
        source, tmp_path / "converted", dtype="fp32", only=("dit",), log=lambda _: None
    )
    assert written == ["dit"]
    fields, params = checkpoints.load(tmp_path / "converted" / "dit", kind="dit")
    loaded = DiTConfig.from_dict(fields)
    assert loaded.replace(compute_dtype="float32") == config
    latents, context = _inputs(config, seed=5)
    per_frame = np.array([[0.0, 500.0, 500.0], [0.0, 30.0, 30.0]], np.float32)
    ref = _diffusers_forward(model, latents, _per_token(per_frame, config), context)
    ours = WanDiT(loaded.replace(compute_dtype="float32")).apply(
        {"params": params}, latents, per_frame, context
    )
    _assert_close(ours, ref)


def test_scan_unrolled_and_remat_agree(ti2v_model):
    config, _, params = ti2v_model
    latents, context = _inputs(config)
    timesteps = np.array([500.0, 10.0], np.float32)
    base = WanDiT(config).apply({"params": params}, latents, timesteps, context)
    for variant in (config.replace(scan_layers=False), config.replace(remat="full")):
        other = WanDiT(variant).apply({"params": params}, latents, timesteps, context)
        np.testing.assert_allclose(np.asarray(other), np.asarray(base), atol=1e-5, rtol=1e-5)


def test_positions_and_frame_mask(ti2v_model):
    config, _, params = ti2v_model
    model = WanDiT(config)
    latents, context = _inputs(config)
    t = np.array([[0.0, 600.0, 600.0]] * BATCH, np.float32)
    default = model.apply({"params": params}, latents, t, context)
    explicit = model.apply(
        {"params": params}, latents, t, context, positions=jnp.tile(jnp.arange(FRAMES), (BATCH, 1))
    )
    np.testing.assert_array_equal(np.asarray(default), np.asarray(explicit))
    shifted = model.apply(
        {"params": params}, latents, t, context, positions=jnp.array([[0, 5, 6]] * BATCH)
    )
    assert np.max(np.abs(np.asarray(shifted) - np.asarray(default))) > 1e-4

    # Read-only context: frame 0 does not attend frames 1-2, so perturbing them leaves frame 0.
    mask = np.ones((BATCH, FRAMES, FRAMES), bool)
    mask[:, 0, 1:] = False
    perturbed = latents.copy()
    perturbed[:, 1:] += 1.0
    a = model.apply({"params": params}, latents, t, context, attention_mask=mask)
    b = model.apply({"params": params}, perturbed, t, context, attention_mask=mask)
    np.testing.assert_allclose(np.asarray(a)[:, 0], np.asarray(b)[:, 0], atol=1e-6)
    c = model.apply({"params": params}, perturbed, t, context)
    assert np.max(np.abs(np.asarray(c)[:, 0] - np.asarray(default)[:, 0])) > 1e-4


def test_bad_inputs_raise(ti2v_model):
    config, _, params = ti2v_model
    model = WanDiT(config)
    latents, context = _inputs(config)
    with pytest.raises(ValueError, match="channels"):
        model.apply({"params": params}, latents[..., :40], np.zeros(BATCH), context)
    with pytest.raises(ValueError, match="divisible"):
        model.apply({"params": params}, latents[:, :, :5], np.zeros(BATCH), context)
    with pytest.raises(ValueError, match="timesteps"):
        model.apply({"params": params}, latents, np.zeros((BATCH, 7)), context)
    with pytest.raises(ValueError, match="attention_backend"):
        config.replace(attention_backend="magic")


# Mixed-precision error of the tiny DiT (bf16 matmuls, fp32 norms/modulation) against fp32,
# max|diff| / max|ref|. Measured: 2.9e-3 (inputs seed 0), 3.2e-3 (seed 1); bound ~3x that.
BF16_REL_BOUND = 1e-2


def _bf16_relative_error(config, params, seed=0):
    latents, context = _inputs(config, seed)
    t = np.array([400.0, 800.0], np.float32)
    ref = np.asarray(WanDiT(config).apply({"params": params}, latents, t, context))
    low = WanDiT(config.replace(compute_dtype="bfloat16")).apply(
        {"params": params}, latents, t, context
    )
    assert low.dtype == jnp.float32
    return np.max(np.abs(np.asarray(low) - ref)) / np.max(np.abs(ref))


def test_bf16_compute_stays_close(ti2v_model):
    """The default precision policy (bf16 matmuls, fp32 norms/modulation) tracks fp32."""
    config, _, params = ti2v_model
    assert _bf16_relative_error(config, params) < BF16_REL_BOUND


def test_fp32_norms_keep_a_large_residual_stream_exact(ti2v_model, monkeypatch):
    """Why the norms run in fp32: a residual stream with a large common offset (real DiTs
    carry large activations) loses its signal if a norm rounds it to bf16. Here block 0's FFN
    adds 64 to every channel (kernel 0, bias 1, gate +64). Measured: fp32 norms 2.9e-3 (the
    offset changes nothing), norms forced to bf16 2.7e-2, past the bound."""
    config, _, params = ti2v_model
    params = jax.tree.map(np.array, params)
    params["blocks"]["ffn_2"]["kernel"][0] = 0.0
    params["blocks"]["ffn_2"]["bias"][0] = 1.0
    params["blocks"]["modulation"][0, 0, 5] += 64.0  # gate_ffn of block 0
    assert _bf16_relative_error(config, params) < BF16_REL_BOUND
    monkeypatch.setattr(layers, "NORM_DTYPE", jnp.bfloat16)
    assert _bf16_relative_error(config, params) > BF16_REL_BOUND


def test_init_params_match_converter_layout():
    config = _config("tiny")
    ours = jax.tree.map(lambda x: x.shape, init_params(config, jax.random.key(0)))
    model = dit_helpers.make_diffusers_model(config)
    converted = dit_conversion.convert_source(
        _DictSource({k: v.numpy() for k, v in model.state_dict().items()}), config, diffusers=True
    )
    assert jax.tree.map(lambda x: x.shape, converted) == ours


def test_full_ti2v_5b_compiles_from_abstract_shapes():
    """The real 5B config lowers and compiles for one 704x1280 frame without allocating weights."""
    from benchmarks.dit_compile import lower_and_compile

    config = _config("ti2v_5b").replace(param_dtype="bfloat16")
    params = jax.tree.leaves(abstract_params(config))
    assert sum(int(np.prod(p.shape)) for p in params) == 4_999_787_712  # docs/design.md, "Models"
    _, _, compiled = lower_and_compile(config, frames=1, height=704, width=1280)
    assert compiled.memory_analysis().output_size_in_bytes == 1 * 1 * 44 * 80 * 48 * 4


@pytest.mark.parametrize("len_q, len_k, block", [(300, 300, 128), (257, 31, 64), (5, 700, 256)])
def test_chunked_attention_matches_reference(len_q, len_k, block):
    from swifti2v_jax.models import layers

    rng = np.random.default_rng(len_q)
    q = jnp.asarray(rng.standard_normal((2, len_q, 3, 16)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((2, len_k, 3, 16)), jnp.float32) for _ in range(2))
    ref = layers.attention(q, k, v, backend="xla")
    ours = layers.chunked_attention(q, k, v, block_q=block, block_k=block)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=2e-6)


def test_model_backends_agree(ti2v_model):
    config, _, params = ti2v_model
    latents, context = _inputs(config)
    t = np.array([300.0, 600.0], np.float32)
    outs = [
        np.asarray(
            WanDiT(config.replace(attention_backend=b)).apply(
                {"params": params}, latents, t, context
            )
        )
        for b in ("xla", "chunked")
    ]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
