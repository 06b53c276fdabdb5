"""A frame strip PNG of a video (for the README): the input image, then chosen frames.

python -m swifti2v_jax.demo.strip swifti2v.mp4 docs/demo_strip.png [--frames 0 4 8 12 16]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image

from swifti2v_jax.demo import EXAMPLE_IMAGE
from swifti2v_jax.io import image as image_io
from swifti2v_jax.io.video import read_video

GAP = 4  # white pixels between frames


def frame_strip(video: np.ndarray, image: np.ndarray | None, frames: list[int]) -> np.ndarray:
    """uint8 [n, H, W, 3] video (+ an input image resized to H x W) -> one uint8 row."""
    if any(not 0 <= f < len(video) for f in frames):
        raise ValueError(f"frames {frames} outside the video's {len(video)} frames")
    height, width = video.shape[1:3]
    tiles = [] if image is None else [image]
    tiles += [video[f] for f in frames]
    gap = np.full((height, GAP, 3), 255, np.uint8)
    row = [piece for tile in tiles for piece in (tile, gap)][:-1]
    return np.concatenate(row, axis=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video")
    parser.add_argument("out")
    parser.add_argument("--image", default=str(EXAMPLE_IMAGE), help="'' to leave it out")
    parser.add_argument("--frames", type=int, nargs="+", default=[0, 4, 8, 12, 16])
    parser.add_argument("--scale", type=int, default=1, help="nearest-neighbour enlargement")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error(f"--scale must be >= 1, got {args.scale}")
    video, _ = read_video(args.video)
    image = None
    if args.image:
        # As sample.py fits it (cover the frame, crop the centre), so a photo is not squashed.
        height, width = video.shape[1:3]
        fitted = image_io.crop_resize(Image.open(args.image).convert("RGB"), width, height)
        image = np.asarray(fitted)
    try:
        strip = frame_strip(video, image, args.frames)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    strip = strip.repeat(args.scale, axis=0).repeat(args.scale, axis=1)
    Image.fromarray(strip).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m swifti2v_jax.demo.strip")
