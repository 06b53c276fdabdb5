"""Weight-only quantization of the DiT blocks' linear layers: int8 or fp8 (e4m3).

A quantized Dense keeps `bias` and replaces `kernel [in, out]` by `qkernel` (int8 or
float8_e4m3fn, same shape) and `qscale [out]` (fp32, one scale per output channel):
kernel ~= qkernel * qscale. The matmul takes the low-precision kernel converted to the compute
dtype as its operand and scales the output channels after the dot, so no full-precision copy of
a layer's weights is ever built (XLA fuses the convert into the dot's operand).

Only the kernels under `blocks` (attention q/k/v/o, ffn_0/ffn_2) are quantized; norms,
modulation tables, patch/text/time embeddings and the head stay as they are. The distinct name
`qkernel` keeps code that casts `kernel` leaves (the layer scan) from touching quantized ones.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Largest representable magnitude used for the per-channel scale: int8 keeps [-127, 127]
# symmetric; e4m3fn's largest finite value is 448.
FORMATS = {
    "int8": (jnp.int8, 127.0),
    "fp8": (jnp.float8_e4m3fn, 448.0),
}
WEIGHT_FORMATS = ("native", *FORMATS)  # 'native': the checkpoint's own dtype, not quantized
QUANTIZED_SCOPE = "blocks"


def check_format(fmt: str) -> str:
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"weight format must be one of {WEIGHT_FORMATS}, got {fmt!r}")
    return fmt


def quantize_kernel(kernel, fmt: str) -> dict:
    """kernel [..., in, out] -> {'qkernel': [..., in, out], 'qscale': fp32 [..., out]}.

    numpy in, numpy out (on the host, no device memory); a jax array is quantized by one fused
    XLA program (no fp32 copy of a large stacked kernel). Leading axes (the stacked layer
    axis) get their own scales.
    """
    if check_format(fmt) == "native":
        raise ValueError("'native' is not a quantized format")
    if isinstance(kernel, np.ndarray):
        return _quantize(np, kernel, fmt)
    return _quantize_jit(kernel, fmt)


def _quantize(xp, kernel, fmt: str) -> dict:
    dtype, qmax = FORMATS[fmt]
    k = kernel.astype(np.float32)
    amax = xp.max(xp.abs(k), axis=-2)
    scale = xp.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    scaled = k / scale[..., None, :]
    if fmt == "int8":
        scaled = xp.clip(xp.round(scaled), -qmax, qmax)
    return {"qkernel": scaled.astype(dtype), "qscale": scale}


_quantize_jit = jax.jit(lambda kernel, fmt: _quantize(jnp, kernel, fmt), static_argnums=1)


def dequantize_kernel(qkernel, qscale):
    """The fp32 kernel a quantized one stands for (tests and conversions only)."""
    return qkernel.astype(jnp.float32) * qscale[..., None, :]


def quantize_params(params, fmt: str):
    """A DiT parameter tree with every Dense kernel under `blocks` quantized to `fmt`.

    'native' returns `params` unchanged; an already quantized tree is refused (re-quantizing
    would compound the rounding)."""
    if check_format(fmt) == "native":
        return params
    if weight_format(params) != "native":
        raise ValueError(f"parameters are already quantized ({weight_format(params)})")

    def walk(tree, inside):
        if not isinstance(tree, dict):
            return tree
        if inside and "kernel" in tree and not isinstance(tree["kernel"], dict):
            rest = {k: v for k, v in tree.items() if k != "kernel"}
            return {**rest, **quantize_kernel(tree["kernel"], fmt)}
        return {k: walk(v, inside or k == QUANTIZED_SCOPE) for k, v in tree.items()}

    return walk(dict(params), False)


def weight_format(params) -> str:
    """'int8' / 'fp8' if the tree holds quantized kernels, else 'native'."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if getattr(path[-1], "key", None) == "qkernel":
            for fmt, (dtype, _) in FORMATS.items():
                if jnp.dtype(leaf.dtype) == jnp.dtype(dtype):
                    return fmt
    return "native"


class Dense(nn.Module):
    """nn.Dense (same params, same numerics) that also runs quantized params (qkernel/qscale).

    The quantized path: y = (x @ convert(qkernel)) * qscale + bias, the dot accumulating in
    fp32; the per-channel scale is applied to the [tokens, out] output, never to the kernel.
    """

    features: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dims = (((x.ndim - 1,), (0,)), ((), ()))
        if self.has_variable("params", "qkernel"):
            qkernel = self.get_variable("params", "qkernel")
            qscale = self.get_variable("params", "qscale")
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = jax.lax.dot_general(
                x.astype(self.dtype),
                qkernel.astype(self.dtype),
                dims,
                preferred_element_type=jnp.float32,
            )
            return (y * qscale).astype(self.dtype) + bias.astype(self.dtype)
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), self.param_dtype
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), dims)
        return y + bias.astype(self.dtype)
