"""Weight-only int8/fp8 DiT (models/quant.py) and layer streaming (models/layer_streaming.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import quant_error
from configs import dit as dit_presets
from swifti2v_jax import checkpoints
from swifti2v_jax.models import dit, layer_streaming, quant
from swifti2v_jax.training import experiment
from swifti2v_jax.training import state as state_lib


def _config(**changes):
    base = dit.DiTConfig.from_dict(dit_presets.get_config("tiny").to_dict()).replace(
        attention_backend="xla"
    )
    return base.replace(**changes)


def _inputs(config, seed=1):
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((1, 3, 4, 4, config.in_dim)).astype(np.float32)
    context = rng.standard_normal((1, 8, config.text_dim)).astype(np.float32)
    timesteps = np.array([[0.0, 500.0, 500.0]], np.float32)
    return latents, timesteps, context


def _forward(config, params, inputs):
    fn = jax.jit(lambda p, *a: dit.WanDiT(config).apply({"params": p}, *a))
    return np.asarray(fn(params, *inputs), np.float32)


def _params(config):
    """Trained-like random weights (N(0, 4/fan_in) kernels, biases ~0.1, norm scales 1) made
    with numpy from the abstract tree: running the Flax initialiser costs ~20 s of compiling."""
    rng = np.random.default_rng(0)

    def make(path, leaf):
        if path[-1].key == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        fan_in = leaf.shape[-2] if len(leaf.shape) >= 2 else 100
        if "modulation" in path[-1].key:  # [.., 6, dim] tables: small, as initialised
            fan_in = leaf.shape[-1] * 4
        return (rng.standard_normal(leaf.shape) * 2 / np.sqrt(fan_in)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(make, dit.abstract_params(config))


def _relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# Relative L2 error of the DiT output against bf16 weights (fp32 activations, so only the weight
# format differs). Issue 16 asks <= 1e-2: int8 meets it; fp8 e4m3 keeps 3 mantissa bits (each
# weight rounded by up to 2^-4 relative, ~3% rms) and lands at ~3-4% on every model tried
# (docs/memory.md, "2K on one 24 GB GPU"), so its bound here is the measured level, not 1e-2.
BOUNDS = {"int8": 1e-2, "fp8": 5e-2}


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_quantized_dit_matches_bf16_weights(fmt):
    config = _config()
    params = _params(config)
    inputs = _inputs(config)
    bf16 = dict(params)
    bf16["blocks"] = jax.tree.map(
        lambda p: p.astype(jnp.bfloat16).astype(jnp.float32), params["blocks"]
    )
    reference = _forward(config, bf16, inputs)
    out = _forward(config, quant.quantize_params(params, fmt), inputs)
    error = _relative(out, reference)
    print(f"{fmt} vs bf16 weights, relative error: {error:.2e}")
    assert 0 < error <= BOUNDS[fmt]  # > 0: the quantized path really ran


def test_fp8_error_is_the_e4m3_format_floor():
    """Our per-channel fp8 scale adds no error beyond e4m3 rounding itself (the reason fp8 sits
    above the 1e-2 bar: benchmarks/results/quant_error/results.md)."""
    kernel = np.random.default_rng(3).standard_normal((256, 128)).astype(np.float32)
    q = quant.quantize_kernel(kernel, "fp8")
    error = _relative(np.asarray(quant.dequantize_kernel(q["qkernel"], q["qscale"])), kernel)
    floor = quant_error.e4m3_floor(kernel)
    assert 0.02 < floor < 0.03
    assert error <= 1.01 * floor


def test_quantized_tree_layout_and_untouched_leaves():
    config = _config()
    params = _params(config)
    q = quant.quantize_params(params, "int8")
    blocks = q["blocks"]
    for scope in (blocks["self_attn"]["q"], blocks["cross_attn"]["o"], blocks["ffn_0"]):
        assert "kernel" not in scope and scope["qkernel"].dtype == jnp.int8
        assert scope["qscale"].shape == (config.num_layers, scope["qkernel"].shape[-1])
        assert scope["qscale"].dtype == jnp.float32
    # Norms, modulation, embeddings and the head keep their full-precision values.
    for path in (("blocks", "modulation"), ("blocks", "norm3", "scale"), ("head", "kernel"),
                 ("text_embedding_0", "kernel"), ("patch_embedding_kernel",)):  # fmt: skip
        a, b = params, q
        for key in path:
            a, b = a[key], b[key]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert quant.weight_format(q) == "int8"
    assert quant.weight_format(quant.quantize_params(params, "fp8")) == "fp8"
    assert quant.weight_format(params) == "native"
    assert quant.quantize_params(params, "native") is params
    with pytest.raises(ValueError, match="already quantized"):
        quant.quantize_params(q, "fp8")
    with pytest.raises(ValueError, match="weight format"):
        quant.quantize_params(params, "int4")


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_quantize_kernel_round_trip_error_and_numpy_equals_jax(fmt):
    kernel = np.random.default_rng(0).normal(size=(2, 64, 32)).astype(np.float32)
    kernel[0, 5, 3] = 9.0  # an outlier only affects its own output channel's scale
    q = quant.quantize_kernel(kernel, fmt)
    back = np.asarray(quant.dequantize_kernel(q["qkernel"], q["qscale"]))
    step = {"int8": 1 / 127, "fp8": 2**-3}[fmt]  # worst-case relative step of the format
    amax = np.abs(kernel).max(axis=-2, keepdims=True)
    assert np.all(np.abs(back - kernel) <= step * amax / 2 + 1e-7)
    # Dequantized columns reach the channel maximum exactly.
    np.testing.assert_allclose(np.abs(back).max(axis=-2), amax[:, 0], rtol=1e-6)
    q_jax = quant.quantize_kernel(jnp.asarray(kernel), fmt)
    np.testing.assert_array_equal(
        np.asarray(q_jax["qkernel"]).astype(np.float32), q["qkernel"].astype(np.float32)
    )


def test_quantized_dense_scales_output_not_kernel():
    """y = (x @ qkernel) * qscale + bias equals x @ dequantized kernel (fp32, exact maths)."""
    x = jax.random.normal(jax.random.key(0), (4, 16))
    kernel = jax.random.normal(jax.random.key(1), (16, 8))
    q = quant.quantize_kernel(kernel, "int8")
    bias = jnp.arange(8.0)
    y = quant.Dense(8).apply({"params": {**q, "bias": bias}}, x)
    expected = x @ quant.dequantize_kernel(q["qkernel"], q["qscale"]) + bias
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5)
    # jaxpr: the dot's operand is the converted int8 kernel; no [16, 8] fp32 kernel product.
    jaxpr = jax.make_jaxpr(lambda p: quant.Dense(8).apply({"params": p}, x))({**q, "bias": bias})
    text = str(jaxpr)
    assert "dot_general" in text and "i8[16,8]" in text
    assert "mul" not in text.split("dot_general")[0].split("convert_element_type")[-1]


def test_quantized_checkpoint_round_trip(tmp_path):
    config = _config()
    params = quant.quantize_params(_params(config), "fp8")
    checkpoints.save(tmp_path / "m", "dit", config.to_dict(), params, weights="fp8")
    _, loaded = checkpoints.load(tmp_path / "m", "dit")
    assert quant.weight_format(loaded) == "fp8"
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_load_time_quantize_equals_converted(tmp_path):
    config = _config()
    params = jax.tree.map(np.asarray, _params(config))
    checkpoints.save(tmp_path / "m", "dit", config.to_dict(), params)
    _, at_load = checkpoints.load(tmp_path / "m", "dit", quantize="int8")
    converted = quant.quantize_params(params, "int8")
    assert jax.tree.structure(at_load) == jax.tree.structure(converted)
    for a, b in zip(jax.tree.leaves(at_load), jax.tree.leaves(converted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(checkpoints.CheckpointError, match="quantize"):
        checkpoints.load(tmp_path / "m", "vae", quantize="int8")


def test_quantized_or_streamed_checkpoint_cannot_initialise_training(tmp_path):
    """train.py's early check (experiment.check_init) refuses them from the metadata alone."""
    config = _config()
    params = jax.tree.map(np.asarray, _params(config))
    train = lambda path: ml_collections.ConfigDict(
        dict(model="tiny", init_checkpoint=str(path), allow_random_init=False)
    )
    quantized = quant.quantize_params(params, "int8")
    checkpoints.save(tmp_path / "q", "dit", config.to_dict(), quantized, weights="int8")
    with pytest.raises(ValueError, match="int8-quantized DiT weights, which cannot initialise"):
        experiment.check_init(train(tmp_path / "q"))
    streamed = config.replace(stream_layers=True).to_dict()
    checkpoints.save(tmp_path / "s", "dit", streamed, params)
    with pytest.raises(ValueError, match="stream_layers=True"):
        experiment.check_init(train(tmp_path / "s"))
    # no metadata saying so: the loader still refuses the quantized tree
    checkpoints.save(tmp_path / "q2", "dit", config.to_dict(), quantized)
    experiment.check_init(train(tmp_path / "q2"))
    with pytest.raises(ValueError, match="int8-quantized DiT weights, which cannot initialise"):
        state_lib.load_dit_params(str(tmp_path / "q2"), config)
    # a plain checkpoint passes both
    checkpoints.save(tmp_path / "plain", "dit", config.to_dict(), params)
    experiment.check_init(train(tmp_path / "plain"))
    loaded = state_lib.load_dit_params(str(tmp_path / "plain"), config)
    assert quant.weight_format(loaded) == "native"


@pytest.mark.parametrize("fmt", ["native", "int8", "fp8"])
def test_layer_streaming_equals_resident_weights(fmt):
    """Blocks in pinned_host memory, copied per layer in the scan: the same output, exactly."""
    config = _config(compute_dtype="bfloat16")
    params = quant.quantize_params(_params(config), fmt)
    inputs = _inputs(config)
    resident = _forward(config, jax.device_put(params), inputs)
    placed = layer_streaming.place(params)
    packed = {"native": "kernel", "int8": "qkernel__u32_int8", "fp8": "qkernel__u32_float8_e4m3fn"}
    leaf = placed["blocks"]["ffn_0"][packed[fmt]]
    assert leaf.sharding.memory_kind == layer_streaming.HOST
    assert jax.tree.leaves(placed["head"])[0].sharding.memory_kind != layer_streaming.HOST
    streamed = _forward(config.replace(stream_layers=True), placed, inputs)
    np.testing.assert_array_equal(streamed, resident)
    # The lowered program takes the stack in host memory and moves layers inside the loop.
    lowered = (
        jax.jit(
            lambda p, *a: dit.WanDiT(config.replace(stream_layers=True)).apply({"params": p}, *a)
        )
        .lower(placed, *inputs)
        .as_text()
    )
    assert 'mhlo.memory_kind = "pinned_host"' in lowered


def test_pipeline_memory_options_load_quantized_and_streamed(tmp_path):
    from swifti2v_jax.sampling import config as config_lib
    from swifti2v_jax.sampling import residency

    config = _config()
    params = jax.tree.map(np.asarray, _params(config))
    checkpoints.save(tmp_path / "m", "dit", config.to_dict(), params)
    loaded = residency.load(tmp_path / "m", "dit", "int8", stream=True)
    assert quant.weight_format(jax.device_get(loaded)) == "native"  # packed: no qkernel name
    packed = loaded["blocks"]["ffn_0"]["qkernel__u32_int8"]
    assert packed.sharding.memory_kind == layer_streaming.HOST and packed.dtype == jnp.uint32
    resident = residency.load(tmp_path / "m", "dit", "int8")
    assert quant.weight_format(resident) == "int8"
    with pytest.raises(config_lib.PipelineError, match="dit_weights"):
        config_lib.MemoryOptions(dit_weights="int4")
    with pytest.raises(config_lib.PipelineError, match="stream_layers"):
        config_lib.MemoryOptions(stream_layers="yes")


def test_quantized_dense_on_tpu_builds_no_full_precision_kernel():
    """Compiled for a TPU (compile-only libtpu, the `tpu` extra): the int8 -> bf16 convert is
    fused into the matmul, so the program needs no temporary for a bf16 [1024, 4096] kernel."""
    from benchmarks.aot import programs

    on_chip = NamedSharding(programs._one_chip("v5e-4"), P())
    struct = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=on_chip)
    params = {
        "qkernel": struct((1024, 4096), jnp.int8),
        "qscale": struct((4096,), jnp.float32),
        "bias": struct((4096,), jnp.bfloat16),
    }
    dense = quant.Dense(4096, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    forward = jax.jit(lambda p, x: dense.apply({"params": p}, x))
    compiled = forward.lower(params, struct((1, 96, 1024), jnp.bfloat16)).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 1024 * 4096  # bf16 kernel: 8 MB
    body = [line for line in compiled.as_text().splitlines() if "parameter(" not in line]
    assert not any("bf16[1024,4096]" in line for line in body)


def test_conversion_quantize_equals_load_time_quantize(tmp_path):
    """`python -m conversion --quantize int8` stores what checkpoints.load(quantize=) makes."""
    from conversion.__main__ import convert
    from tests import dit_helpers

    config = _config()
    tensors = dit_helpers.original_state_dict(dit_helpers.make_diffusers_model(config))
    dit_helpers.write_original_layout(tmp_path / "release", config, tensors)
    for fmt in ("native", "int8"):
        convert(tmp_path / "release", tmp_path / fmt, dtype="bf16", only=("dit",),
                log=lambda _: None, quantize=fmt)  # fmt: skip
    meta = checkpoints.read_metadata(tmp_path / "int8" / "dit")
    assert meta["weights"] == "int8"
    _, stored = checkpoints.load(tmp_path / "int8" / "dit")
    _, at_load = checkpoints.load(tmp_path / "native" / "dit", quantize="int8")
    assert quant.weight_format(stored) == "int8"
    for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(at_load)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    with pytest.raises(checkpoints.CheckpointError, match="int8 weights"):
        checkpoints.load(tmp_path / "int8" / "dit", quantize="fp8")
