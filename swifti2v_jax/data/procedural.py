"""Procedural videos: textured scenes under camera pans/zooms with moving objects (no downloads).

A scene is a continuous 2D function seen through a moving camera:

* a colour gradient plus multi-octave value noise (a 1/f-like background);
* static "patches" fixed in the world: rotated rectangles filled with stripes or a checkerboard
  (hard, anti-aliased edges and fine periodic detail: what 4x downsampling destroys and what an
  image-conditioned Stage II can copy back from the input frame);
* textured discs that move on their own.

Rendering evaluates the scene at any resolution, so the same clip exists at high and low
resolution; `render_pair` makes the low-res clip by box downsampling the high-res one, like a
camera sensor would. The renderer is one jitted JAX program per output shape (all frames at
once, a fixed maximum number of patches and discs with on/off weights), about 0.1-0.3 s for a
17-frame 256x128 clip on a laptop CPU. Used by the demo models, the quality evaluation and tests.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.models import vae_config

FRAME_STRIDE = 4  # clips are 4k+1 frames, the Wan VAEs' rule (models/vae_config.py)
MAX_DISCS = 3
MAX_PATCHES = 4
BACKGROUND_OCTAVES = 6
DISC_OCTAVES = 4
PATTERNS = ("stripes", "checker")
# Camera motion ranges, shared with data/photos.py (the same motions over photographs).
PAN_MAX = 0.008  # canvas units per frame, per axis
ZOOM_MAX = 0.006  # relative change of the field of view per frame
VIEW_RANGE = (0.8, 1.2)  # field of view at frame 0 (canvas units across the frame height)


@dataclasses.dataclass(frozen=True)
class Disc:
    center: tuple[float, float]  # canvas units at frame 0
    velocity: tuple[float, float]  # canvas units per frame
    radius: float
    texture_seed: int
    tint: tuple[float, float, float]
    stripe_frequency: float  # radians per canvas unit


@dataclasses.dataclass(frozen=True)
class Patch:
    center: tuple[float, float]  # canvas units (static in the world)
    half_size: tuple[float, float]
    angle: float
    pattern: str  # 'stripes' or 'checker'
    frequency: float  # cycles per canvas unit
    colors: tuple[float, ...]  # two RGB colours (6 values)


@dataclasses.dataclass(frozen=True)
class Scene:
    seed: int
    pan: tuple[float, float]  # camera velocity, canvas units per frame
    zoom: float  # relative change of the field of view per frame
    view: float  # field of view (canvas units across the frame height) at frame 0
    gradient: tuple[float, ...]  # background colour gradient: direction (2) + colours (6)
    discs: tuple[Disc, ...]
    patches: tuple[Patch, ...] = ()


def random_scene(seed: int, num_discs: int | None = None) -> Scene:
    rng = np.random.default_rng(seed)
    num_discs = int(rng.integers(1, MAX_DISCS + 1)) if num_discs is None else num_discs
    if not 0 <= num_discs <= MAX_DISCS:
        raise ValueError(f"num_discs must be in [0, {MAX_DISCS}], got {num_discs}")
    discs = tuple(
        Disc(
            center=tuple(rng.uniform(-0.35, 0.35, 2)),
            velocity=tuple(rng.uniform(-0.012, 0.012, 2)),
            radius=float(rng.uniform(0.08, 0.18)),
            texture_seed=int(rng.integers(1 << 30)),
            tint=tuple(rng.uniform(-0.8, 0.8, 3)),
            stripe_frequency=float(rng.uniform(40, 90)),
        )
        for _ in range(num_discs)
    )
    num_patches = int(rng.integers(2, MAX_PATCHES + 1))
    patches = tuple(
        Patch(
            center=tuple(rng.uniform(-0.8, 0.8, 2)),
            half_size=tuple(rng.uniform(0.08, 0.3, 2)),
            angle=float(rng.uniform(0, np.pi)),
            pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
            frequency=float(rng.uniform(6, 20)),
            colors=tuple(rng.uniform(-0.9, 0.9, 6)),
        )
        for _ in range(num_patches)
    )
    angle = rng.uniform(0, 2 * np.pi)
    return Scene(
        seed=seed,
        pan=tuple(rng.uniform(-PAN_MAX, PAN_MAX, 2)),
        zoom=float(rng.uniform(-ZOOM_MAX, ZOOM_MAX)),
        view=float(rng.uniform(*VIEW_RANGE)),
        gradient=(np.cos(angle), np.sin(angle), *rng.uniform(-0.7, 0.7, 6)),
        discs=discs,
        patches=patches,
    )


# ---------------------------------------------------------------------------------------------
# Scene -> fixed-shape arrays (the jitted renderer's input)


def _noise_grids(seed: int, octaves: int) -> tuple[np.ndarray, ...]:
    """Random lattice values per octave: (4 * 2**o)^2 cells x 3 colours in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return tuple(
        rng.uniform(-1, 1, (4 * 2**o, 4 * 2**o, 3)).astype(np.float32) for o in range(octaves)
    )


def _scene_arrays(scene: Scene) -> dict:
    if len(scene.discs) > MAX_DISCS or len(scene.patches) > MAX_PATCHES:
        raise ValueError(f"at most {MAX_DISCS} discs and {MAX_PATCHES} patches per scene")
    f32 = lambda x: np.asarray(x, np.float32)
    discs = list(scene.discs)
    disc_on = [1.0] * len(discs) + [0.0] * (MAX_DISCS - len(discs))
    discs += [Disc((0.0, 0.0), (0.0, 0.0), 0.1, 0, (0.0, 0.0, 0.0), 50.0)] * (
        MAX_DISCS - len(discs)
    )
    patches = list(scene.patches)
    patch_on = [1.0] * len(patches) + [0.0] * (MAX_PATCHES - len(patches))
    patches += [Patch((0.0, 0.0), (0.1, 0.1), 0.0, "stripes", 10.0, (0.0,) * 6)] * (
        MAX_PATCHES - len(patches)
    )
    return dict(
        camera=f32([*scene.pan, scene.zoom, scene.view]),
        gradient=f32(scene.gradient),
        background=_noise_grids(scene.seed, BACKGROUND_OCTAVES),
        disc_on=f32(disc_on),
        disc_motion=f32([[*d.center, *d.velocity, d.radius, d.stripe_frequency] for d in discs]),
        disc_tint=f32([d.tint for d in discs]),
        disc_textures=tuple(_noise_grids(d.texture_seed, DISC_OCTAVES) for d in discs),
        patch_on=f32(patch_on),
        patch_shape=f32(
            [
                [*p.center, *p.half_size, p.angle, p.frequency, PATTERNS.index(p.pattern)]
                for p in patches
            ]
        ),
        patch_colors=f32([p.colors for p in patches]),
    )


# ---------------------------------------------------------------------------------------------
# The renderer


def _value_noise(grids, u, v):
    """Multi-octave coloured value noise at canvas points (u, v) -> [..., 3] roughly in [-1, 1]."""
    out = jnp.zeros(u.shape + (3,), jnp.float32)
    amplitude, total = 1.0, 0.0
    for grid in grids:
        cells = grid.shape[0]
        x, y = jnp.mod(u * cells / 2, cells), jnp.mod(v * cells / 2, cells)
        x0f, y0f = jnp.floor(x), jnp.floor(y)
        fx, fy = (x - x0f)[..., None], (y - y0f)[..., None]
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep: no grid creases
        x0, y0 = x0f.astype(jnp.int32) % cells, y0f.astype(jnp.int32) % cells
        x1, y1 = (x0 + 1) % cells, (y0 + 1) % cells
        top = grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx
        bottom = grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx
        out = out + amplitude * (top * (1 - fy) + bottom * fy)
        total += amplitude
        amplitude *= 0.75  # slow decay: fine detail that low resolution cannot hold
    return out / total * 1.6


def _coverage(signed_distance, pixel):
    """Anti-aliased inside-ness from a signed distance (> 0 inside), edge ~one pixel wide."""
    return jnp.clip(signed_distance / pixel + 0.5, 0.0, 1.0)[..., None]


def camera_uv(camera, frames: int, height: int, width: int, rotation=None):
    """Canvas coordinates seen by each output pixel: (u, v [F, H, W], t [F, 1, 1], pixel size).

    camera = [pan_u, pan_v, zoom, view0]; `rotation` (radians per frame, about the frame
    centre) is optional (procedural scenes do not rotate; photographs may).
    """
    aspect = width / height
    ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height - 0.5
    xs = ((jnp.arange(width, dtype=jnp.float32) + 0.5) / width - 0.5) * aspect
    t = jnp.arange(frames, dtype=jnp.float32)[:, None, None]
    pan_u, pan_v, zoom, view0 = camera[0], camera[1], camera[2], camera[3]
    view = view0 * (1 + zoom) ** t  # [F, 1, 1]
    x, y = xs[None, None, :], ys[None, :, None]
    if rotation is not None:
        cos, sin = jnp.cos(rotation * t), jnp.sin(rotation * t)
        x, y = cos * x - sin * y, sin * x + cos * y
    u, v = jnp.broadcast_arrays(x * view + pan_u * t, y * view + pan_v * t)
    return u, v, t, view / height  # pixel: canvas units per output pixel


@functools.partial(jax.jit, static_argnames=("frames", "height", "width"))
def _render(arrays, frames: int, height: int, width: int):
    u, v, t, pixel = camera_uv(arrays["camera"], frames, height, width)

    gx, gy = arrays["gradient"][0], arrays["gradient"][1]
    c0, c1 = arrays["gradient"][2:5], arrays["gradient"][5:8]
    ramp = jnp.clip(0.5 + 0.5 * (gx * u + gy * v), 0, 1)[..., None]
    image = (1 - ramp) * c0 + ramp * c1 + 0.5 * _value_noise(arrays["background"], u, v)

    # Static patches: rotated rectangles with stripes or a checkerboard.
    for i in range(MAX_PATCHES):
        cu, cv, hu, hv, angle, frequency, pattern = (arrays["patch_shape"][i, j] for j in range(7))
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        du, dv = u - cu, v - cv
        a, b = cos * du + sin * dv, -sin * du + cos * dv  # patch-local coordinates
        inside = jnp.minimum(hu - jnp.abs(a), hv - jnp.abs(b))
        edge = _coverage(inside, pixel) * arrays["patch_on"][i]
        stripes = jnp.sin(2 * jnp.pi * frequency * a)
        checker = jnp.sin(2 * jnp.pi * frequency * a) * jnp.sin(2 * jnp.pi * frequency * b)
        wave = jnp.where(pattern > 0.5, checker, stripes)
        mix = jnp.clip(0.5 + 2.0 * wave, 0, 1)[..., None]  # sharp but not aliased bands
        colors = arrays["patch_colors"][i]
        fill = (1 - mix) * colors[:3] + mix * colors[3:]
        image = (1 - edge) * image + edge * fill

    # Moving discs with their own texture and stripes.
    for i in range(MAX_DISCS):
        cu0, cv0, vu, vv, radius, stripe_frequency = (arrays["disc_motion"][i, j] for j in range(6))
        cu, cv = cu0 + vu * t, cv0 + vv * t
        distance = jnp.hypot(u - cu, v - cv)
        edge = _coverage(radius - distance, pixel) * arrays["disc_on"][i]
        texture = 0.6 * _value_noise(arrays["disc_textures"][i], u - cu, v - cv)
        stripes = 0.4 * jnp.sin((u - cu) * stripe_frequency)[..., None]
        fill = arrays["disc_tint"][i] + texture + stripes
        image = (1 - edge) * image + edge * fill
    return jnp.clip(image, -1, 1)


def render(scene: Scene, frames: int, height: int, width: int) -> np.ndarray:
    """The clip as float32 [frames, height, width, 3] in [-1, 1]."""
    return render_with(_scene_arrays, _render, scene, frames, height, width)


def render_with(scene_arrays, render_fn, scene, frames: int, height: int, width: int):
    """Checks the clip size, then renders `scene` with `render_fn(scene_arrays(scene), frames,
    height, width)` (this module's scenes and data/photos.py's) -> float32 numpy."""
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"need a positive clip size, got {frames}x{height}x{width}")
    arrays = jax.tree.map(jnp.asarray, scene_arrays(scene))
    return np.asarray(render_fn(arrays, frames, height, width))


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
    render_fn = lambda *size: render(random_scene(seed), *size)
    return pair_from(render_fn, frames, height, width, factor, supersample)


def pair_from(render_fn, frames, height, width, factor, supersample):
    """Renders at `supersample` x the size, box-downsamples to high res, then by `factor`."""
    vae_config.check_frame_count(frames, FRAME_STRIDE)
    if height % factor or width % factor:
        raise ValueError(f"size {height}x{width} is not divisible by the factor {factor}")
    high = box_downsample(render_fn(frames, height * supersample, width * supersample), supersample)
    return high, box_downsample(high, factor)


def to_uint8(video: np.ndarray) -> np.ndarray:
    return np.clip(np.round((video + 1) * 127.5), 0, 255).astype(np.uint8)
