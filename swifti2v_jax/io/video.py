"""Streaming mp4 writer (imageio-ffmpeg, H.264 / yuv420p) that never leaves a partial file.

Frames go to a hidden temporary file in the output's directory as they arrive
(`write_frames`; the file and ffmpeg start with the first frame, so a run stopped before that
leaves nothing); `close()` finishes the encode, gives the file the mode a new file gets under
the umask, and renames it to the requested name; `abort()` (also called when the `with` block
raises) deletes it. The final name therefore only ever holds a complete video, and a previous
file of that name stays until then.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from swifti2v_jax import cli, leftovers

VIDEO_SUFFIXES = (".mp4",)


@contextlib.contextmanager
def ffmpeg_subprocess() -> Iterator[None]:
    """Around code that starts ffmpeg through imageio(-ffmpeg): it passes preexec_fn=os.setpgrp
    (so that Ctrl-C reaches only us), which makes Popen fork in Python, and JAX warns about any
    fork once it runs threads. This one is a fork+exec (no Python runs in the child): safe."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
        yield


PARTIAL_SUFFIX = ".partial.mp4"  # the writer's temporary file: .NAME.<tag>.XXXX.partial.mp4


def remove_stale_partials(path: Path, log=None) -> None:
    """Deletes the temporary files of earlier runs for `path` that were killed (leftovers.py)."""
    leftovers.remove_stale(path.parent, f".{path.name}.*{PARTIAL_SUFFIX}", "partial video(s)", log)


class VideoError(ValueError):
    """The output path cannot be written, or frames do not match the video."""


def check_output_path(path: str | os.PathLike) -> Path:
    """Checks that `path` can receive an mp4 (before any expensive work); returns it absolute.

    The directory must exist and accept a new file (tested by creating and removing one);
    an existing file is overwritten at the end, an existing directory is refused.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoError(f"output {path} must end with .mp4 (the writer produces H.264 mp4)")
    path = path.absolute()
    if path.is_dir():
        raise VideoError(f"output {path} is a directory; give a file name ending in .mp4")
    parent = path.parent
    if not parent.exists():
        raise VideoError(f"output directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise VideoError(f"output directory {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise VideoError(
            f"cannot create a file in output directory {parent}: {e.strerror or e}"
        ) from None
    os.close(fd)
    os.unlink(probe)
    if path.exists() and not os.access(path, os.W_OK):
        raise VideoError(f"output {path} exists and is not writable")
    return path


def frames_to_uint8(frames) -> np.ndarray:
    """Float frames in [-1, 1] (any leading shape, channels last) -> uint8 in [0, 255]."""
    frames = np.asarray(frames, dtype=np.float32)
    return np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)


class VideoWriter:
    """Writes RGB uint8 frames [n, H, W, 3] to `path` (an .mp4) in a streaming fashion.

    Args:
      path: the final file name (checked with `check_output_path`).
      width, height: frame size; both must be even (yuv420p halves the chroma planes).
      fps: frames per second.
      quality: imageio-ffmpeg quality, 1..10 (10 best).
    """

    def __init__(
        self, path: str | os.PathLike, width: int, height: int, fps: float = 24, quality=8
    ):

        self.path = check_output_path(path)
        if width < 2 or height < 2 or width % 2 or height % 2:
            raise VideoError(f"H.264/yuv420p needs even frame sizes, got {width}x{height}")
        if not fps > 0:
            raise VideoError(f"fps must be positive, got {fps}")
        self.width, self.height, self.fps = int(width), int(height), fps
        self.quality = quality
        self.frames_written = 0
        self._tmp: Path | None = None  # created with the first frame
        self._forget_tmp = lambda: None
        self._writer = None
        self._open = True

    @property
    def temporary_path(self) -> Path | None:
        return self._tmp

    def _start(self) -> None:
        import imageio_ffmpeg

        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.{leftovers.tag()}.",
            suffix=PARTIAL_SUFFIX,
            dir=self.path.parent,
        )
        os.close(fd)
        self._tmp = Path(tmp)
        self._forget_tmp = cli.on_hard_exit(lambda: Path(tmp).unlink(missing_ok=True))
        try:
            self._writer = imageio_ffmpeg.write_frames(
                str(self._tmp),
                (self.width, self.height),
                pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p",
                fps=self.fps,
                quality=self.quality,
                codec="libx264",
                macro_block_size=2,
                ffmpeg_log_level="error",  # its warnings (e.g. about an aborted file) are noise
            )
            with ffmpeg_subprocess():
                self._writer.send(None)  # starts ffmpeg
        except BaseException:
            self._discard()
            raise

    def write_frames(self, frames) -> None:
        """Appends frames: uint8 [n, H, W, 3] (or one frame [H, W, 3])."""
        if not self._open:
            raise VideoError("the writer is already closed")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8:
            raise VideoError(f"frames must be uint8 (use frames_to_uint8), got {frames.dtype}")
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise VideoError(
                f"frames must be [n, {self.height}, {self.width}, 3], got {frames.shape}"
            )
        with cli.signals_deferred():  # a signal stops us between frames, never inside ffmpeg's
            if self._tmp is None:
                self._start()
            for frame in frames:
                self._writer.send(np.ascontiguousarray(frame))
        self.frames_written += frames.shape[0]

    def close(self) -> Path:
        """Finishes the file and renames it to `path` (which it replaces if it exists)."""
        if not self._open:
            raise VideoError("the writer is already closed")
        self._open = False
        try:
            if self.frames_written == 0:
                raise VideoError("no frames were written")
            with cli.signals_deferred():
                self._writer.close()  # waits for ffmpeg to finish the file
                os.chmod(self._tmp, 0o666 & ~umask())  # mkstemp made it 0600
                os.replace(self._tmp, self.path)
                self._forget_tmp()
        except BaseException:
            self._discard()
            raise
        return self.path

    def abort(self) -> None:
        """Stops ffmpeg and deletes the temporary file; the final name is never created."""
        if self._open:
            self._open = False
            self._discard()

    def _discard(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # ffmpeg may already be gone; the file is deleted regardless
            pass
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._forget_tmp()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._open:
            self.close()


def umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it; put it straight back
    os.umask(mask)
    return mask


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Reads an mp4 back -> (uint8 frames [n, H, W, 3], fps); for tests and checks."""
    import imageio.v2 as imageio

    with ffmpeg_subprocess(), imageio.get_reader(str(path), format="FFMPEG") as reader:
        fps = float(reader.get_meta_data().get("fps", 0.0))
        frames = np.stack([np.asarray(frame) for frame in reader])
    return frames, fps
