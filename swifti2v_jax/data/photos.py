"""Photograph clips: real photos under the procedural scenes' camera motion (no downloads).

The photographs are the ones scikit-image ships in its wheel (`skimage/data/`). A photo scene
is a photograph laid on the canvas of data/procedural.py and filmed by the same camera
(`procedural.camera_uv`: the same pan/zoom ranges, plus a slight rotation), with up to
MAX_LAYERS cut-outs of photographs on top:

* parallax layers: static crops that move `parallax` times the camera pan (nearer things
  slide faster than the background);
* moving objects: cut-outs with their own velocity over the photo background.

Rendering is one jitted program per output shape (bilinear texture lookups, mirrored past the
texture's edge so long clips never run out of picture) and goes through `procedural.pair_from`,
so high and low resolution are made exactly as for procedural clips (supersampled render,
box downsampling). TRAIN_PHOTOS and HELD_OUT_PHOTOS are the one split: evaluation uses
held-out photos only, and training clips never touch them.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.data import procedural

# The split (file names in skimage/data). Held out: four natural colour photographs.
HELD_OUT_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png")
TRAIN_PHOTOS = (
    "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "ihc.png",
    "hubble_deep_field.jpg", "color.png", "phantom.png", "logo.png", "chessboard_RGB.png",
    "brick.png", "grass.png", "gravel.png", "camera.png", "coins.png", "moon.png", "page.png",
    "text.png", "clock_motion.png", "cell.png",
)  # fmt: skip
SPLITS = {"train": TRAIN_PHOTOS, "held_out": HELD_OUT_PHOTOS}
MAX_LAYERS = 3
TEXTURE = 384  # background texture side (pixels), covering canvas [-extent, extent]^2
LAYER_TEXTURE = 128
# The background photo is stretched just enough to fill a 2:1 view for this many frames (the
# demo clip length; longer clips see its mirror image past the edge).
FILL_FRAMES, FILL_ASPECT = 17, 2.0
MAX_ROTATION = 0.004  # radians per frame
SHAPES = ("ellipse", "rectangle")


def photo_dir() -> Path:
    try:
        import skimage
    except ImportError as error:  # pragma: no cover - the demo/test extras install it
        raise ImportError(
            "photograph clips need scikit-image: pip install 'swifti2v-jax[demo]'"
        ) from error
    return Path(skimage.__file__).parent / "data"


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """float32 [H, W, 3] in [0, 1]; grey photos as three equal channels, alpha over white."""
    from PIL import Image

    with Image.open(photo_dir() / name) as image:
        image = image.convert("RGBA") if image.mode in ("RGBA", "LA", "P") else image
        if image.mode == "RGBA":
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image)
        array = np.asarray(image.convert("RGB"), np.float32) / 255.0
    return array


def _texture(name: str, rng: np.random.Generator, size: int, crop: tuple, train: bool):
    """A random square crop of a photo, resized to size x size, in [-1, 1].

    Training crops are also flipped and recoloured at random (grey photos through a random
    two-colour ramp, colour photos with permuted channels sometimes): few photos, many looks.
    """
    from PIL import Image

    photo = load_photo(name)
    h, w, _ = photo.shape
    side = max(8, int(min(h, w) * rng.uniform(*crop)))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    patch = photo[top : top + side, left : left + side]
    image = Image.fromarray(np.round(patch * 255).astype(np.uint8))
    patch = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), np.float32) / 255
    if train:
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if np.ptp(photo, axis=-1).max() < 1e-3:  # grey: a random colour ramp
            dark, light = rng.uniform(0, 0.5, 3), rng.uniform(0.5, 1, 3)
            patch = dark + patch[..., :1] * (light - dark)
        elif rng.random() < 0.3:
            patch = patch[..., rng.permutation(3)]
    return np.ascontiguousarray(patch * 2 - 1, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Layer:
    photo: str
    center: tuple[float, float]  # canvas units at frame 0
    half_size: tuple[float, float]
    velocity: tuple[float, float]  # own motion, canvas units per frame
    parallax: float  # moves `parallax` x the camera pan (1: fixed in the world)
    shape: str  # 'ellipse' or 'rectangle'


@dataclasses.dataclass(frozen=True)
class PhotoScene:
    seed: int
    split: str
    photo: str
    pan: tuple[float, float]
    zoom: float
    view: float
    rotation: float  # radians per frame
    layers: tuple[Layer, ...]

    @property
    def extent(self) -> float:
        """Half-size of the background photo on the canvas: the view's reach over FILL_FRAMES."""
        last = FILL_FRAMES - 1
        view = self.view * max(1.0, (1 + self.zoom) ** last)
        turn = abs(self.rotation) * last  # small angle: corners move by about turn x radius
        reach = view * (FILL_ASPECT / 2 + 0.5 * turn)
        return 1.02 * (reach + max(abs(self.pan[0]), abs(self.pan[1])) * last)

    @property
    def photos(self) -> tuple[str, ...]:
        return (self.photo, *(layer.photo for layer in self.layers))


def random_photo_scene(seed: int, split: str = "train") -> PhotoScene:
    """A photo scene drawn from the photos of `split` only (evaluation: 'held_out')."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    names = SPLITS[split]
    rng = np.random.default_rng([seed, 7])
    # Held-out clips cycle through the photos so that every photo gets the same share.
    photo = names[seed % len(names)] if split == "held_out" else names[rng.integers(len(names))]
    num_layers = int(rng.integers(0, MAX_LAYERS + 1))
    layers = []
    for _ in range(num_layers):
        moving = rng.random() < 0.5
        layers.append(
            Layer(
                photo=photo if rng.random() < 0.5 else names[rng.integers(len(names))],
                center=tuple(rng.uniform(-0.6, 0.6, 2)),
                half_size=tuple(rng.uniform(0.12, 0.3, 2)),
                velocity=tuple(rng.uniform(-0.012, 0.012, 2)) if moving else (0.0, 0.0),
                parallax=1.0 if moving else float(rng.uniform(1.5, 2.5)),
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
            )
        )
    pm, zm = procedural.PAN_MAX, procedural.ZOOM_MAX
    return PhotoScene(
        seed=seed,
        split=split,
        photo=photo,
        pan=tuple(rng.uniform(-pm, pm, 2)),
        zoom=float(rng.uniform(-zm, zm)),
        view=float(rng.uniform(*procedural.VIEW_RANGE)),
        rotation=float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)),
        layers=tuple(layers),
    )


def _scene_arrays(scene: PhotoScene) -> dict:
    rng = np.random.default_rng([scene.seed, 11])
    train = scene.split == "train"
    background = _texture(scene.photo, rng, TEXTURE, (0.5, 1.0), train)
    layers = list(scene.layers)
    on = [1.0] * len(layers) + [0.0] * (MAX_LAYERS - len(layers))
    textures = [_texture(layer.photo, rng, LAYER_TEXTURE, (0.3, 0.7), train) for layer in layers]
    textures += [np.zeros((LAYER_TEXTURE, LAYER_TEXTURE, 3), np.float32)] * (
        MAX_LAYERS - len(layers)
    )
    layers += [Layer(scene.photo, (0.0, 0.0), (0.1, 0.1), (0.0, 0.0), 1.0, "ellipse")] * (
        MAX_LAYERS - len(layers)
    )
    f32 = lambda x: np.asarray(x, np.float32)
    return dict(
        camera=f32([*scene.pan, scene.zoom, scene.view]),
        rotation=f32(scene.rotation),
        extent=f32(scene.extent),
        background=background,
        layer_on=f32(on),
        layer_motion=f32(
            [
                [*y.center, *y.half_size, *y.velocity, y.parallax, SHAPES.index(y.shape)]
                for y in layers
            ]
        ),
        layer_textures=np.stack(textures),
    )


def _mirror(p, size):
    """Pixel index p mirrored into [0, size - 1] (the photo repeats as its reflection)."""
    p = jnp.mod(p, 2 * size - 2)
    return jnp.where(p > size - 1, 2 * size - 2 - p, p)


def _bilinear(texture, a, b):
    """Texture [T, T, 3] at texture coordinates a (across), b (down) in [-1, 1] (mirrored out
    of range), bilinear -> [..., 3]."""
    size = texture.shape[0]
    x = (a + 1) * size / 2 - 0.5
    y = (b + 1) * size / 2 - 0.5
    x0f, y0f = jnp.floor(x), jnp.floor(y)
    fx, fy = (x - x0f)[..., None], (y - y0f)[..., None]
    x0, y0 = _mirror(x0f, size).astype(jnp.int32), _mirror(y0f, size).astype(jnp.int32)
    x1, y1 = _mirror(x0f + 1, size).astype(jnp.int32), _mirror(y0f + 1, size).astype(jnp.int32)
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@functools.partial(jax.jit, static_argnames=("frames", "height", "width"))
def _render(arrays, frames: int, height: int, width: int):
    camera = arrays["camera"]
    u, v, t, pixel = procedural.camera_uv(camera, frames, height, width, arrays["rotation"])
    image = _bilinear(arrays["background"], u / arrays["extent"], v / arrays["extent"])
    for i in range(MAX_LAYERS):
        cu, cv, hu, hv, vu, vv, parallax, shape = (arrays["layer_motion"][i, j] for j in range(8))
        # Nearer layers slide (parallax - 1) x the pan against the camera's motion.
        du = u - (cu + vu * t - (parallax - 1) * camera[0] * t)
        dv = v - (cv + vv * t - (parallax - 1) * camera[1] * t)
        a, b = du / hu, dv / hv
        ellipse = (1 - jnp.hypot(a, b)) * jnp.minimum(hu, hv)
        rectangle = jnp.minimum(hu - jnp.abs(du), hv - jnp.abs(dv))
        inside = jnp.where(shape > 0.5, rectangle, ellipse)
        edge = procedural._coverage(inside, pixel) * arrays["layer_on"][i]
        fill = _bilinear(arrays["layer_textures"][i], a, b)
        image = (1 - edge) * image + edge * fill
    return jnp.clip(image, -1, 1)


def render(scene: PhotoScene, frames: int, height: int, width: int) -> np.ndarray:
    """The clip as float32 [frames, height, width, 3] in [-1, 1]."""
    return procedural.render_with(_scene_arrays, _render, scene, frames, height, width)


def render_pair(
    seed: int, frames: int, height: int, width: int, factor: int = 4, supersample: int = 2,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(high-res [F, H, W, 3], low-res [F, H/factor, W/factor, 3]) as procedural.render_pair."""
    scene = random_photo_scene(seed, split)
    render_fn = lambda *size: render(scene, *size)
    return procedural.pair_from(render_fn, frames, height, width, factor, supersample)


def caption(scene: PhotoScene) -> str:
    """The demo caption form (demo/dataset.py), naming the camera's horizontal pan."""
    direction = "right" if scene.pan[0] > 0 else "left"
    return f"a photograph, the camera slowly pans to the {direction}"
