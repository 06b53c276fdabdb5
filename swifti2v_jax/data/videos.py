"""Reading training clips: the first `num_frames` frames of a video, fitted to the training size
by the sampling input's rule (io/image.py `crop_resize`: Lanczos, centre crop).

Anything wrong with one file (unreadable, too short, no frames) raises `VideoError`, which data
preparation counts and reports instead of stopping.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from swifti2v_jax.io import image as image_io
from swifti2v_jax.io.video import ffmpeg_subprocess

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


class VideoError(Exception):
    """One video cannot be used (the reason is the message)."""


def list_videos(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"video folder {folder} does not exist or is not a directory")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)


def read_caption(video: Path) -> str | None:
    caption = video.with_suffix(".txt")
    return caption.read_text().strip() if caption.is_file() else None


def read_clip(
    path: str | os.PathLike, num_frames: int, height: int, width: int, frame_stride: int = 1
) -> np.ndarray:
    """-> [num_frames, height, width, 3] float32 in [-1, 1]; raises VideoError."""
    import imageio.v2 as imageio

    frames = []
    try:
        with ffmpeg_subprocess():
            reader = imageio.get_reader(str(path), format="ffmpeg")
    except Exception as error:  # imageio raises many types for broken files
        raise VideoError(f"unreadable ({type(error).__name__}: {error})") from None
    try:
        for index, frame in enumerate(reader):
            if index % frame_stride:
                continue
            frame = np.asarray(frame)
            if frame.ndim == 2:
                frame = np.repeat(frame[..., None], 3, axis=-1)
            # frame 0 of a clip is what sampling's input image is, so the same rule
            fitted = image_io.crop_resize(Image.fromarray(frame[..., :3].astype(np.uint8)),
                                          width, height)  # fmt: skip
            frames.append(np.asarray(fitted))
            if len(frames) == num_frames:
                break
    except Exception as error:
        if not frames:
            raise VideoError(f"unreadable ({type(error).__name__}: {error})") from None
        # A truncated file: keep what decoded, the length check below decides.
    finally:
        reader.close()
    if len(frames) < num_frames:
        raise VideoError(
            f"too short: {len(frames)} frames (stride {frame_stride}), need {num_frames}"
        )
    return np.stack(frames).astype(np.float32) / 127.5 - 1.0
