"""Procedural videos: textured scenes under camera pans/zooms with moving objects (no downloads).

A scene is a continuous 2D function (multi-octave value-noise textures, colour gradients and
textured discs) seen through a moving camera. Rendering evaluates it at any resolution, so the
same clip exists at high and low resolution; `render_pair` makes the low-res clip by box
downsampling the high-res one, like a camera sensor would. Used by the demo models, the
quality evaluation and tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Disc:
    center: tuple[float, float]  # canvas units at frame 0
    velocity: tuple[float, float]  # canvas units per frame
    radius: float
    texture_seed: int
    tint: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class Scene:
    seed: int
    pan: tuple[float, float]  # camera velocity, canvas units per frame
    zoom: float  # relative change of the field of view per frame
    view: float  # field of view (canvas units across the frame) at frame 0
    gradient: tuple[float, ...]  # background colour gradient: direction (2) + colours (6)
    discs: tuple[Disc, ...]


def random_scene(seed: int, num_discs: int | None = None) -> Scene:
    rng = np.random.default_rng(seed)
    num_discs = int(rng.integers(1, 4)) if num_discs is None else num_discs
    discs = tuple(
        Disc(
            center=tuple(rng.uniform(-0.3, 0.3, 2)),
            velocity=tuple(rng.uniform(-0.02, 0.02, 2)),
            radius=float(rng.uniform(0.08, 0.2)),
            texture_seed=int(rng.integers(1 << 30)),
            tint=tuple(rng.uniform(-0.8, 0.8, 3)),
        )
        for _ in range(num_discs)
    )
    angle = rng.uniform(0, 2 * np.pi)
    return Scene(
        seed=seed,
        pan=tuple(rng.uniform(-0.015, 0.015, 2)),
        zoom=float(rng.uniform(-0.01, 0.01)),
        view=float(rng.uniform(0.8, 1.2)),
        gradient=(np.cos(angle), np.sin(angle), *rng.uniform(-0.7, 0.7, 6)),
        discs=discs,
    )


def _value_noise(seed: int, u: np.ndarray, v: np.ndarray, octaves: int = 6) -> np.ndarray:
    """Multi-octave coloured value noise at canvas points (u, v) -> [..., 3] roughly in [-1, 1]."""
    rng = np.random.default_rng(seed)
    out = np.zeros(u.shape + (3,), np.float32)
    amplitude, total = 1.0, 0.0
    for octave in range(octaves):
        cells = 4 * 2**octave
        grid = rng.uniform(-1, 1, (cells, cells, 3)).astype(np.float32)
        x, y = (u * cells / 2) % cells, (v * cells / 2) % cells
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep: no grid creases
        x1, y1 = (x0 + 1) % cells, (y0 + 1) % cells
        top = grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx
        bottom = grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx
        out += amplitude * (top * (1 - fy) + bottom * fy)
        total += amplitude
        amplitude *= 0.75  # slow decay: fine detail that low resolution cannot hold
    return out / total * 1.6


def render(scene: Scene, frames: int, height: int, width: int) -> np.ndarray:
    """The clip as float32 [frames, height, width, 3] in [-1, 1]."""
    aspect = width / height
    ys = (np.arange(height) + 0.5) / height - 0.5
    xs = ((np.arange(width) + 0.5) / width - 0.5) * aspect
    grid_x, grid_y = np.meshgrid(xs, ys)
    gx, gy, *colours = scene.gradient
    c0, c1 = np.asarray(colours[:3], np.float32), np.asarray(colours[3:], np.float32)
    video = np.empty((frames, height, width, 3), np.float32)
    for t in range(frames):
        view = scene.view * (1 + scene.zoom) ** t
        u = grid_x * view + scene.pan[0] * t
        v = grid_y * view + scene.pan[1] * t
        ramp = np.clip(0.5 + 0.5 * (gx * u + gy * v), 0, 1)[..., None]
        image = (1 - ramp) * c0 + ramp * c1 + 0.5 * _value_noise(scene.seed, u, v)
        for disc in scene.discs:
            cu = disc.center[0] + disc.velocity[0] * t
            cv = disc.center[1] + disc.velocity[1] * t
            distance = np.hypot(u - cu, v - cv)
            # Anti-aliased edge about one output pixel wide.
            edge = np.clip((disc.radius - distance) / (view / height) + 0.5, 0, 1)[..., None]
            texture = 0.6 * _value_noise(disc.texture_seed, u - cu, v - cv)
            stripes = 0.4 * np.sin((u - cu) * (60 + disc.texture_seed % 40))[..., None]
            fill = np.asarray(disc.tint, np.float32) + texture + stripes
            image = (1 - edge) * image + edge * fill
        video[t] = image
    return np.clip(video, -1, 1)


def box_downsample(video: np.ndarray, factor: int) -> np.ndarray:
    """Average over factor x factor pixel cells: [F, H, W, C] -> [F, H/f, W/f, C]."""
    f, h, w, c = video.shape
    if h % factor or w % factor:
        raise ValueError(f"size {h}x{w} is not divisible by the factor {factor}")
    return video.reshape(f, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def render_pair(
    seed: int, frames: int, height: int, width: int, factor: int = 4, supersample: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """(high-res clip [F, H, W, 3], low-res clip [F, H/factor, W/factor, 3]), both in [-1, 1]."""
    if (frames - 1) % 4:
        raise ValueError(f"frames must be 4k+1, got {frames}")
    scene = random_scene(seed)
    fine = render(scene, frames, height * supersample, width * supersample)
    high = box_downsample(fine, supersample)
    return high, box_downsample(high, factor)


def to_uint8(video: np.ndarray) -> np.ndarray:
    return np.clip(np.round((video + 1) * 127.5), 0, 255).astype(np.uint8)
