"""Stage-transition degradation: what Stage II's reference z_ref looks like at inference.

At inference z_ref encodes the Stage I output (low-res, with aliasing and residual noise)
upsampled to the target size, with frame 0 replaced by the input image (the hybrid reference,
csg/reference.py). Training must see references with those artifacts, not clean downsampled
video (paper section 5).

Three ways to make them, from faithful to cheap:
- `stage1_partial_denoise`: downsample the clip, noise it to sigma* and let Stage I denoise it
  back (any Stage I velocity function, VAE and sigma grid, passed as callables). Run it
  offline and hand the low-res videos to data preparation (`--references DIR`).
- `pixel_blur_noise`: bicubic downsampling plus Gaussian noise in pixel space (numpy), the
  default of data preparation when no Stage I references are given.
- `latent_blur_noise`: a down-up blur plus noise in latent space, on device, per training
  example (tests, and extra augmentation on top of precomputed references).

The first two return a low-res video; the hybrid reference builder (the same one sampling
uses: bicubic upsampling, frame 0 := the clean input frame, hence block 0 of z_ref = the
anchor latent) turns it into z_ref. The third keeps block 0 as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.csg import reference


def latent_blur_noise(key, z, *, keep, factor: int = 2, max_noise: float = 0.1):
    """z [W, h, w, C]: blur by a `factor` down-up resize, add noise of std ~ U(0, max_noise).

    Blocks where `keep` [W] is True (the anchor, block 0) are returned unchanged.
    """
    window, height, width, channels = z.shape
    k_std, k_noise = jax.random.split(key)
    blurred = z
    if factor > 1:
        small = (window, max(1, height // factor), max(1, width // factor), channels)
        blurred = jax.image.resize(z, small, "linear", antialias=True)
        blurred = jax.image.resize(blurred, z.shape, "linear")
    std = jax.random.uniform(k_std, (), maxval=max_noise)
    degraded = blurred + std * jax.random.normal(k_noise, z.shape, z.dtype)
    return jnp.where(keep[:, None, None, None], z, degraded)


def downsample(video: np.ndarray, factor: int) -> np.ndarray:
    """video [F, H, W, 3] -> [F, H // factor, W // factor, 3] (the reference resize)."""
    height, width = video.shape[1:3]
    return resize(video, max(1, height // factor), max(1, width // factor))


def resize(video: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(reference.resize_frames(jnp.asarray(video)[None], height, width))[0]


def pixel_blur_noise(
    video: np.ndarray, rng: np.random.Generator, *, factor: int = 4, max_noise: float = 0.05
) -> np.ndarray:
    """video [F, H, W, 3] in [-1, 1] -> a Stage I-like low-res video [F, H/f, W/f, 3].

    Downsample by `factor` (Stage I runs at about 1/4 of the Stage II size), add noise of
    std ~ U(0, max_noise), clip. `reference.encode_hybrid_reference` turns it into z_ref.
    """
    low = downsample(video, factor) if factor > 1 else np.asarray(video, np.float32)
    std = rng.uniform(0.0, max_noise)
    noisy = low + std * rng.standard_normal(low.shape).astype(np.float32)
    return np.clip(noisy, -1.0, 1.0)


def stage1_partial_denoise(
    video: np.ndarray,
    *,
    low_size: tuple[int, int],
    encode: Callable[[np.ndarray], jax.Array],
    decode: Callable[[jax.Array], jax.Array],
    velocity: Callable[[jax.Array, float], jax.Array],
    sigmas: Sequence[float],
    key: jax.Array,
) -> np.ndarray:
    """The paper's stage-transition reference: Stage I lightly denoises a downsampled clip.

    video [F, H, W, 3] in [-1, 1]; `encode` / `decode` are the Stage I VAE on [1, F, h, w, 3]
    videos; `velocity(x, sigma)` is the Stage I model (conditioning bound in by the caller);
    `sigmas` is the descending tail of the Stage I grid, starting at sigma* ("lightly") and
    ending at 0. Returns the decoded low-res video [F, h, w, 3] (h, w = low_size); build
    the hybrid reference from it with `reference.encode_hybrid_reference`.
    """
    sigmas = [float(s) for s in sigmas]
    if len(sigmas) < 2 or sigmas[-1] != 0.0 or any(a <= b for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError(f"sigmas must descend strictly to 0, got {sigmas}")
    low = resize(video, *low_size)
    x0 = encode(low[None])
    x = (1.0 - sigmas[0]) * x0 + sigmas[0] * jax.random.normal(key, x0.shape, x0.dtype)
    for sigma, sigma_next in zip(sigmas, sigmas[1:]):  # Euler on the flow ODE
        x = x + (sigma_next - sigma) * velocity(x, sigma)
    return np.clip(np.asarray(decode(x))[0], -1.0, 1.0)
