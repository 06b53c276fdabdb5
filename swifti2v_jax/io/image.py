"""Reading the conditioning image and fitting it to the output size (PIL).

`load_image` returns an 8-bit RGB image and a note saying what was done to get there:
transparent images (RGBA, LA, palette with transparency) are composited on white, greyscale
(8 or 16 bit) and CMYK images are converted, animated files give their first frame. 32-bit
integer and float images are refused (the conversion to 8 bits would be a guess). Every
failure is an `ImageError` with one line that says what to do.

`crop_resize` scales an image to cover the target size (Lanczos) and crops the centre,
like the official Wan2.2 TI2V image-to-video preprocessing. `best_output_size` picks an
output size with the image's aspect ratio, mirroring Wan's `best_output_size`.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Modes PIL converts to RGB without losing meaning (greyscale, palette, YCbCr, ...).
_CONVERTIBLE = {"RGB", "RGBX", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "1"}
_GREY_16 = {"I;16", "I;16L", "I;16B", "I;16N"}
_TRANSPARENT = {"RGBA", "LA", "PA", "RGBa", "La"}


# Every output side is a multiple of this (README, sample.py --help; TI2V-5B's VAE stride x
# patch). The sampling pipeline also applies a model's own, coarser granularity.
RESOLUTION_MULTIPLE = 32


class ImageError(ValueError):
    """The input image is missing, unreadable or in a mode we do not handle."""


def load_image(path: str | os.PathLike) -> tuple[Image.Image, str | None]:
    """Reads `path` as an 8-bit RGB PIL image -> (image, note or None).

    The note describes any conversion (for the log), e.g. 'RGBA composited on white'.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image {path} does not exist")
    if not path.is_file():
        raise ImageError(f"image {path} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                frames = getattr(opened, "n_frames", 1)
                opened.seek(0)
                opened.load()  # decode now: truncated or corrupt files fail here
                image = opened.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {_short(e)}") from None
    except Image.DecompressionBombWarning:
        raise ImageError(f"image {path} is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read image {path}: {_short(e)}") from None
    image, note = to_rgb(image, str(path))
    if frames > 1:
        note = "; ".join(filter(None, [note, f"first of {frames} frames used"]))
    if min(image.size) < 1:
        raise ImageError(f"image {path} is empty ({image.size[0]}x{image.size[1]})")
    return image, note


def to_rgb(image: Image.Image, name: str = "image") -> tuple[Image.Image, str | None]:
    """An 8-bit RGB copy of `image` and a note, or an ImageError for unsupported modes."""
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "P with transparency"
    if image.mode in _TRANSPARENT:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), (
            f"{mode} image composited on a white background"
        )
    if image.mode in _GREY_16:
        # 16-bit greyscale (common for PNG): keep the top 8 bits.
        grey = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB"), f"16-bit greyscale ({mode}) to 8-bit RGB"
    if image.mode in _CONVERTIBLE:
        note = None if image.mode == "RGB" else f"{mode} image converted to RGB"
        return image.convert("RGB"), note
    raise ImageError(
        f"{name} has PIL mode {image.mode!r} (16-bit, float or another mode without an obvious "
        "8-bit RGB meaning); convert it to an 8-bit RGB PNG or JPEG first"
    )


def _short(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def crop_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scales `image` (Lanczos) so it covers width x height, then crops the centre."""
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    src_w, src_h = image.size
    new_w, new_h = _cover_size(image.size, width, height)
    if (new_w, new_h) != (src_w, src_h):
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def _cover_size(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The smallest scaled size (same aspect) that covers width x height."""
    scale = max(width / size[0], height / size[1])
    # Round up so that float error never leaves the resized image a pixel short.
    return (
        max(width, math.ceil(size[0] * scale - 1e-6)),
        max(height, math.ceil(size[1] * scale - 1e-6)),
    )


def check_large_enough(
    size: tuple[int, int], min_width: int, min_height: int, name: str = "image"
) -> None:
    """Refuses an image smaller than min_width x min_height (the Stage I size): upscaling it
    further would only invent detail."""
    if size[0] < min_width or size[1] < min_height:
        raise ImageError(
            f"{name} is {size[0]}x{size[1]}, smaller than the Stage I size "
            f"{min_width}x{min_height}; use an image of at least that size"
        )


def fit_note(size: tuple[int, int], width: int, height: int) -> str | None:
    """What `crop_resize` does to an image of `size` for width x height, as one line for
    the log, when it changes the picture: a centre crop (part of it is cut away) or an
    upscale (detail is invented). None for a plain downscale, the normal case."""
    src_w, src_h = size
    new_w, new_h = _cover_size(size, width, height)
    upscaled, cropped = new_w > src_w, (new_w, new_h) != (width, height)
    if not (upscaled or cropped):
        return None
    verb = "upscaled" if upscaled else "downscaled"
    note = f"{src_w}x{src_h} {verb} to {new_w}x{new_h}"
    if cropped:
        note += f" and centre-cropped to {width}x{height} (aspect ratio differs)"
    return note


def to_array(image: Image.Image) -> np.ndarray:
    """RGB PIL image -> float32 [H, W, 3] in [-1, 1] (the VAE's pixel range)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return pixels / 127.5 - 1.0


def best_output_size(
    width: int, height: int, multiple_w: int, multiple_h: int, max_area: int
) -> tuple[int, int]:
    """The output size (w, h), multiples of the given steps with w * h <= max_area, whose
    aspect ratio is closest to width / height (the rule of Wan2.2's TI2V `best_output_size`).

    Two candidates: fix the width first (as large as the area allows) then the height, and
    the other way round; the one with the smaller aspect error wins.
    """
    if min(width, height, multiple_w, multiple_h) < 1:
        raise ValueError("sizes and multiples must be positive")
    if max_area < multiple_w * multiple_h:
        raise ValueError(f"max_area {max_area} is smaller than one {multiple_w}x{multiple_h} cell")
    ratio = width / height
    ideal_w = math.sqrt(max_area * ratio)
    ideal_h = max_area / ideal_w

    def fit(first: float, step_first: int, step_second: int) -> tuple[int, int]:
        a = max(step_first, int(first // step_first) * step_first)
        b = max(step_second, int(max_area / a // step_second) * step_second)
        return a, b

    w1, h1 = fit(ideal_w, multiple_w, multiple_h)
    h2, w2 = fit(ideal_h, multiple_h, multiple_w)

    def error(w: int, h: int) -> float:
        r = w / h
        return max(ratio / r, r / ratio)

    return (w1, h1) if error(w1, h1) < error(w2, h2) else (w2, h2)


def parse_size(text: str) -> tuple[int, int]:
    """'2560x1408' -> (2560, 1408); ValueError with the expected format otherwise."""
    parts = str(text).strip().lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size must look like WIDTHxHEIGHT (e.g. 2560x1408), got {text!r}")
    width, height = (int(p) for p in parts)
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return width, height
