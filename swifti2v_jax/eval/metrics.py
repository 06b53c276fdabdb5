"""PSNR and SSIM of RGB frames in [-1, 1] (compared on the [0, 1] scale, per frame).

SSIM follows Wang et al. 2004: an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
computed per channel over the 'valid' region and averaged. Frames are clipped to [-1, 1].
"""

from __future__ import annotations

import numpy as np

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _unit(frames) -> np.ndarray:
    return (np.clip(np.asarray(frames, np.float64), -1.0, 1.0) + 1.0) / 2.0


def _check(a, b) -> None:
    if np.shape(a) != np.shape(b) or np.ndim(a) < 3 or np.shape(a)[-1] != 3:
        raise ValueError(
            f"need two [..., H, W, 3] arrays of one shape, got {np.shape(a)} and {np.shape(b)}"
        )


def psnr(a, b) -> np.ndarray:
    """Per-frame PSNR in dB of [..., H, W, 3] arrays in [-1, 1] (peak 1 on the [0, 1] scale)."""
    _check(a, b)
    mse = np.mean(np.square(_unit(a) - _unit(b)), axis=(-3, -2, -1))
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def _gaussian_kernel() -> np.ndarray:
    x = np.arange(WINDOW) - WINDOW // 2
    g = np.exp(-(x**2) / (2 * SIGMA**2))
    return g / g.sum()


def _filter(x: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter over H and W ('valid') of [N, H, W, C]."""
    g = _gaussian_kernel()
    h = sum(g[i] * x[:, i : x.shape[1] - WINDOW + 1 + i] for i in range(WINDOW))
    return sum(g[i] * h[:, :, i : h.shape[2] - WINDOW + 1 + i] for i in range(WINDOW))


def ssim(a, b) -> np.ndarray:
    """Per-frame SSIM of [..., H, W, 3] arrays in [-1, 1] (H, W >= 11)."""
    _check(a, b)
    lead = np.shape(a)[:-3]
    x = _unit(a).reshape(-1, *np.shape(a)[-3:])
    y = _unit(b).reshape(-1, *np.shape(b)[-3:])
    if min(x.shape[1:3]) < WINDOW:
        raise ValueError(f"SSIM needs frames of at least {WINDOW}x{WINDOW}, got {x.shape[1:3]}")
    c1, c2 = K1**2, K2**2
    mx, my = _filter(x), _filter(y)
    vx = _filter(x * x) - mx**2
    vy = _filter(y * y) - my**2
    cov = _filter(x * y) - mx * my
    score = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return score.mean(axis=(1, 2, 3)).reshape(lead)
