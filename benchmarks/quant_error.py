"""Where the int8 / fp8 weight-only error comes from: per layer, at the DiT output, and the
e4m3 rounding floor that no per-channel or per-block scale can lower.

    python -m benchmarks.quant_error      # -> benchmarks/results/quant_error/results.{json,md}

All errors are relative L2 against bf16 weights (as tests/test_quant.py measures them), with
fp32 activations, on the tiny test DiT (configs/dit.py `tiny`, weights drawn like the test's).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

from configs import dit as dit_presets
from swifti2v_jax.models import dit, quant

OUT = Path("benchmarks/results/quant_error")
CONCLUSION = """\
Why fp8 (e4m3) weight-only cannot reach the 1e-2 bar at one byte per weight: e4m3 keeps 3
mantissa bits, so round-to-nearest moves each weight by up to 2^-4 of itself, 2.6e-2 rms
relative for Gaussian or log-uniform mantissas. A scale multiplies every weight of its group
by the same factor, which leaves relative rounding unchanged: per-tensor, per-channel or
per-block scales only matter near overflow (448) and in the subnormal range (below 2^-6),
which our per-channel amax -> 448 scale keeps to ~1e-4 of the weights. The column "e4m3
floor" (the best power-of-two scale, exact scaling) is what the format itself costs; our
per-channel scale matches it (the checks: saturation none, rounding is round-to-nearest-even
in both the numpy and the XLA path, fp8 -> bf16 is exact, so no double rounding). For inputs
without preferred directions, independent nearest rounding minimises E|x dW|, so no other
rounding of the same bits lowers the layer output error either; each layer's output error
equals its weight error (2.5e-2), and the DiT output compounds them to 3e-2. Meeting 1e-2
would need more bits per weight (int8: 6e-3 per layer, 7.5e-3 at the output) or
calibration-data-dependent rounding (GPTQ-style), which only helps for anisotropic inputs."""


def relative(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def tiny_model(seed: int = 0):
    config = dit.DiTConfig.from_dict(dit_presets.get_config("tiny").to_dict())
    config = config.replace(attention_backend="xla")
    rng = np.random.default_rng(seed)

    def make(path, leaf):  # unit-gain random weights (the test's draw)
        if path[-1].key == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        fan_in = leaf.shape[-2] if len(leaf.shape) >= 2 else 100
        if "modulation" in path[-1].key:
            fan_in = leaf.shape[-1] * 4
        return (rng.standard_normal(leaf.shape) * 2 / np.sqrt(fan_in)).astype(leaf.dtype)

    return config, jax.tree_util.tree_map_with_path(make, dit.abstract_params(config))


def to_bf16(tree):
    return jax.tree.map(lambda p: np.asarray(p, np.float32).astype(ml_dtypes.bfloat16), tree)


def block_kernels(params):
    """(name, fp32 stacked kernel [layers, in, out]) of every quantized Dense."""
    out = []

    def walk(tree, path):
        if "kernel" in tree and not isinstance(tree["kernel"], dict):
            out.append(("/".join(path), np.asarray(tree["kernel"], np.float32)))
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, (*path, key))

    walk(params[quant.QUANTIZED_SCOPE], ())
    return out


def e4m3_floor(kernel) -> float:
    """Round-to-nearest e4m3 of the kernel at the best power-of-two scale (exact scaling, no
    clipping): the error of the format itself, the floor for any scale granularity."""
    errors = []
    for shift in range(-4, 12):
        scaled = kernel * 2.0**shift
        if np.abs(scaled).max() > 448:
            break
        back = scaled.astype(ml_dtypes.float8_e4m3fn).astype(np.float32) / 2.0**shift
        errors.append(relative(back, kernel))
    return min(errors)


def main() -> int:
    config, params = tiny_model()
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((1, 3, 4, 4, config.in_dim)).astype(np.float32)
    context = rng.standard_normal((1, 8, config.text_dim)).astype(np.float32)
    timesteps = np.array([[0.0, 500.0, 500.0]], np.float32)
    forward = jax.jit(
        lambda p: dit.WanDiT(config).apply({"params": p}, latents, timesteps, context)
    )
    bf16 = dict(params, blocks=jax.tree.map(np.float32, to_bf16(params["blocks"])))
    reference = forward(bf16)
    result = {"dit_output": {}, "layers": {}, "e4m3_floor": {}}
    result["dit_output"]["fp32_weights"] = relative(forward(params), reference)
    for fmt in quant.FORMATS:
        result["dit_output"][fmt] = relative(forward(quant.quantize_params(params, fmt)), reference)
    x = rng.standard_normal((256, config.dim * 4)).astype(np.float32)
    for name, kernel in block_kernels(params):
        ref_kernel = kernel.astype(ml_dtypes.bfloat16).astype(np.float32)
        xs = x[:, : kernel.shape[-2]]
        row = {}
        for fmt in quant.FORMATS:
            q = quant.quantize_kernel(kernel, fmt)
            back = np.asarray(quant.dequantize_kernel(q["qkernel"], q["qscale"]))
            row[f"{fmt}_weight"] = relative(back, ref_kernel)
            row[f"{fmt}_output"] = relative(xs @ back, xs @ ref_kernel)
        row["e4m3_floor"] = e4m3_floor(kernel)
        result["layers"][name] = row
    gaussian = np.random.default_rng(2).standard_normal((512, 512)).astype(np.float32)
    result["e4m3_floor"]["gaussian_512x512"] = e4m3_floor(gaussian)
    q = quant.quantize_kernel(gaussian, "fp8")
    result["e4m3_floor"]["gaussian_per_channel_amax_448"] = relative(
        quant.dequantize_kernel(q["qkernel"], q["qscale"]), gaussian
    )
    OUT.mkdir(parents=True, exist_ok=True)
    result["environment"] = {"jax": jax.__version__, "backend": jax.default_backend()}
    (OUT / "results.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    lines = [
        "# int8 / fp8 weight-only error (relative L2 vs bf16 weights, tiny test DiT)",
        "",
        "DiT output: " + ", ".join(f"{k} {v:.2e}" for k, v in result["dit_output"].items()),
        "",
        "| layer | int8 weight | int8 output | fp8 weight | fp8 output | e4m3 floor |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["layers"].items():
        lines.append(
            f"| {name} | {row['int8_weight']:.2e} | {row['int8_output']:.2e} | "
            f"{row['fp8_weight']:.2e} | {row['fp8_output']:.2e} | {row['e4m3_floor']:.2e} |"
        )
    floor = result["e4m3_floor"]
    lines += [
        "",
        f"Gaussian 512x512 kernel: e4m3 at the best power-of-two scale "
        f"{floor['gaussian_512x512']:.3e}; our per-channel amax -> 448 scale "
        f"{floor['gaussian_per_channel_amax_448']:.3e}.",
    ]
    lines += ["", CONCLUSION]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
