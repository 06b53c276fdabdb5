"""Building blocks of the Wan2.1 / Wan2.2 causal 3D VAEs (docs/design.md, "Models").

All activations are channels-last `[B, T, H, W, C]`. Every temporal convolution keeps its own
slice of the feature cache in the flax `cache` collection, so a caller runs the model one
temporal chunk at a time with `mutable=["cache"]` and carries the returned collection to the
next chunk. Caches start as zeros, which is exactly the causal zero padding the first chunk
needs, so their shapes never change between chunks (the first chunk creates them).

Temporal resampling differs on the first chunk (`first=True`): the encoder's stride-2 time
conv passes the first frame through, the decoder's time-doubling conv is skipped and the
DupUp3D shortcut drops its first `f_t - 1` frames.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV3D = ("NDHWC", "DHWIO", "NDHWC")
CONV2D = ("NHWC", "HWIO", "NHWC")


def conv3d(x, kernel, bias, strides=(1, 1, 1), padding="VALID"):
    kt = kernel.shape[0]
    if kt > 1 and strides[0] == 1 and _time_unpadded(padding) and jax.default_backend() == "cpu":
        return conv3d_as_frame_taps(x, kernel, bias, strides[1:], _spatial(padding))
    y = lax.conv_general_dilated(
        x, kernel.astype(x.dtype), strides, padding, dimension_numbers=CONV3D
    )
    return y + bias.astype(x.dtype)


def _time_unpadded(padding) -> bool:
    return padding == "VALID" or tuple(padding[0]) == (0, 0)


def _spatial(padding):
    return padding if padding == "VALID" else tuple(padding[1:])


def conv3d_as_frame_taps(x, kernel, bias, strides=(1, 1), padding="VALID"):
    """A time-stride-1, time-unpadded 3D convolution as a sum of per-frame 2D convolutions,
    one per temporal tap. Same maths; XLA:CPU runs 2D convolutions (and their gradients)
    several times faster than 3D ones (2.7x for a 32-channel 3x3x3 layer's gradient)."""
    kt = kernel.shape[0]
    frames = x.shape[1] - kt + 1
    y = conv2d_per_frame(x[:, :frames], kernel[0], bias, strides, padding)
    for tap in range(1, kt):
        y = y + conv2d_per_frame(
            x[:, tap : tap + frames], kernel[tap], jnp.zeros_like(bias), strides, padding
        )
    return y


def conv2d_per_frame(x, kernel, bias, strides=(1, 1), padding="VALID"):
    """A 2D convolution applied to every frame of [B, T, H, W, C]."""
    b, t = x.shape[:2]
    y = lax.conv_general_dilated(
        x.reshape(b * t, *x.shape[2:]),
        kernel.astype(x.dtype),
        strides,
        padding,
        dimension_numbers=CONV2D,
    )
    y = y + bias.astype(x.dtype)
    return y.reshape(b, t, *y.shape[1:])


def _kernel_init():
    return nn.initializers.variance_scaling(1.0, "fan_in", "normal")


class CausalConv3d(nn.Module):
    """Conv3d with causal time padding; the last `k_t - 1` input frames are carried as cache.

    Spatial padding is symmetric (k // 2). With the zero-initialised cache in front of every
    chunk, chunked execution equals one causal convolution over the whole sequence. The cache
    holds one array per frame (`frame_0` oldest) so that a one-frame chunk can run as a sum of
    per-tap 2D convolutions without concatenating (and copying) the cached frames.
    """

    features: int
    kernel_size: tuple[int, int, int] = (3, 3, 3)

    @nn.compact
    def __call__(self, x):
        kt, kh, kw = self.kernel_size
        kernel = self.param("kernel", _kernel_init(), (kt, kh, kw, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        padding = ((kh // 2, kh // 2), (kw // 2, kw // 2))
        if kt == 1:
            return conv3d(x, kernel, bias, padding=((0, 0), *padding))
        b, t, h, w, c = x.shape
        cache = [
            self.variable("cache", f"frame_{i}", jnp.zeros, (b, 1, h, w, c), x.dtype)
            for i in range(kt - 1)
        ]
        if t == 1:
            taps = [frame.value for frame in cache] + [x]
            y = conv2d_per_frame(taps[0], kernel[0], bias, padding=padding)
            for tap, k in zip(taps[1:], kernel[1:]):
                y = y + conv2d_per_frame(tap, k, jnp.zeros_like(bias), padding=padding)
            for i in range(kt - 1):
                cache[i].value = taps[i + 1]
            return y
        x = jnp.concatenate([frame.value for frame in cache] + [x], axis=1)
        for i in range(kt - 1):
            cache[i].value = x[:, x.shape[1] - (kt - 1) + i][:, None]
        return conv3d(x, kernel, bias, padding=((0, 0), *padding))


class ChannelRMSNorm(nn.Module):
    """The VAE's norm: L2-normalise over channels (norm floored at 1e-12), times sqrt(C)*gamma."""

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones, (channels,))
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
        y = xf / jnp.maximum(norm, 1e-12) * math.sqrt(channels) * gamma.astype(jnp.float32)
        return y.astype(x.dtype)


class ResidualBlock(nn.Module):
    """norm -> SiLU -> conv3 -> norm -> SiLU -> conv3, plus a 1x1x1 conv shortcut if C changes."""

    features: int

    @nn.compact
    def __call__(self, x):
        if x.shape[-1] != self.features:
            shortcut = CausalConv3d(self.features, (1, 1, 1), name="conv_shortcut")(x)
        else:
            shortcut = x
        h = nn.silu(ChannelRMSNorm(name="norm1")(x))
        h = CausalConv3d(self.features, name="conv1")(h)
        h = nn.silu(ChannelRMSNorm(name="norm2")(h))
        h = CausalConv3d(self.features, name="conv2")(h)
        return h + shortcut


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (no temporal mixing)."""

    @nn.compact
    def __call__(self, x):
        b, t, h, w, c = x.shape
        y = ChannelRMSNorm(name="norm")(x).reshape(b * t, h * w, c)
        qkv = nn.Dense(3 * c, kernel_init=_kernel_init(), name="to_qkv", dtype=x.dtype)(y)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        scores = jnp.einsum("nqc,nkc->nqk", q, k).astype(jnp.float32) / math.sqrt(c)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        y = jnp.einsum("nqk,nkc->nqc", weights, v)
        y = nn.Dense(c, kernel_init=_kernel_init(), name="proj", dtype=x.dtype)(y)
        return x + y.reshape(b, t, h, w, c)


class MidBlock(nn.Module):
    """Residual block, attention, residual block."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = ResidualBlock(c, name="resnets_0")(x)
        x = AttentionBlock(name="attention")(x)
        return ResidualBlock(c, name="resnets_1")(x)


class TemporalDownConv(nn.Module):
    """Stride-2 time conv (3,1,1) of `downsample3d`; carries the last input frame.

    First chunk: the frames pass through unchanged. Later chunks: a valid stride-2 conv over
    [last frame of the previous chunk, current frames].
    """

    @nn.compact
    def __call__(self, x, first: bool):
        b, _, h, w, c = x.shape
        kernel = self.param("kernel", _kernel_init(), (3, 1, 1, c, c))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        cache = self.variable("cache", "last", jnp.zeros, (b, 1, h, w, c), x.dtype)
        previous = cache.value
        cache.value = x[:, -1:]
        if first:
            return x
        return conv3d(jnp.concatenate([previous, x], axis=1), kernel, bias, strides=(2, 1, 1))


class TemporalUpConv(nn.Module):
    """Time-doubling conv (3,1,1), C -> 2C, of `upsample3d`: frame 2k <- [0:C], 2k+1 <- [C:2C].

    First chunk: skipped (one frame stays one frame, the cache stays zero). Later chunks: a causal
    conv whose zero front padding is the (initially zero) cache of the last two input frames.
    """

    @nn.compact
    def __call__(self, x, first: bool):
        b, t, h, w, c = x.shape
        kernel = self.param("kernel", _kernel_init(), (3, 1, 1, c, 2 * c))
        bias = self.param("bias", nn.initializers.zeros, (2 * c,))
        cache = self.variable("cache", "frames", jnp.zeros, (b, 2, h, w, c), x.dtype)
        if first:
            return x
        x = jnp.concatenate([cache.value, x], axis=1)
        cache.value = x[:, -2:]
        y = conv3d(x, kernel, bias).reshape(b, t, h, w, 2, c)
        return y.transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)


class Downsample(nn.Module):
    """Zero-pad right/bottom by 1, 3x3 stride-2 conv per frame; then the time conv if temporal."""

    temporal: bool

    @nn.compact
    def __call__(self, x, first: bool):
        c = x.shape[-1]
        kernel = self.param("kernel", _kernel_init(), (3, 3, c, c))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        x = conv2d_per_frame(x, kernel, bias, strides=(2, 2), padding=((0, 1), (0, 1)))
        if self.temporal:
            x = TemporalDownConv(name="time_conv")(x, first)
        return x


class Upsample(nn.Module):
    """Time doubling if temporal, then nearest x2 in H and W and a 3x3 conv (C -> features)."""

    temporal: bool
    features: int

    @nn.compact
    def __call__(self, x, first: bool):
        c = x.shape[-1]
        if self.temporal:
            x = TemporalUpConv(name="time_conv")(x, first)
        kernel = self.param("kernel", _kernel_init(), (3, 3, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        return conv2d_per_frame(x, kernel, bias, padding=((1, 1), (1, 1)))


def avg_down(x, out_channels: int, factor_t: int, factor_s: int):
    """Wan2.2 AvgDown3D: space/time-to-channel (channel-major, then t, h, w), group means.

    Time is zero-padded in front up to a multiple of factor_t.
    """
    pad_t = (-x.shape[1]) % factor_t
    if pad_t:
        x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
    b, t, h, w, c = x.shape
    ft, fs = factor_t, factor_s
    x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)
    group = c * ft * fs * fs // out_channels
    x = x.reshape(b, t // ft, h // fs, w // fs, out_channels, group)
    return x.mean(axis=-1)


def dup_up(x, out_channels: int, factor_t: int, factor_s: int, first: bool):
    """Wan2.2 DupUp3D: repeat channels, scatter them to (t, h, w); drops f_t - 1 frames first."""
    b, t, h, w, c = x.shape
    ft, fs = factor_t, factor_s
    repeats = out_channels * ft * fs * fs // c
    x = jnp.repeat(x, repeats, axis=-1).reshape(b, t, h, w, out_channels, ft, fs, fs)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, t * ft, h * fs, w * fs, out_channels)
    if first:
        x = x[:, ft - 1 :]
    return x


def patchify(x, patch: int):
    """[B, T, H, W, C] -> [B, T, H/p, W/p, C*p*p], channel = c*p*p + col*p + row (the release)."""
    if patch == 1:
        return x
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 2, 4, 6, 5, 3)  # b t h' w' c col row
    return x.reshape(b, t, h // patch, w // patch, c * patch * patch)


def unpatchify(x, patch: int):
    """Exact inverse of `patchify`."""
    if patch == 1:
        return x
    b, t, h, w, cpp = x.shape
    c = cpp // (patch * patch)
    x = x.reshape(b, t, h, w, c, patch, patch)  # ... c col row
    x = x.transpose(0, 1, 2, 6, 3, 5, 4)  # b t h row w col c
    return x.reshape(b, t, h * patch, w * patch, c)
