"""What the page shows of a run: the status line, the preview of the frames written so far, and
the summary. Plain functions of the engine's reports (no web code)."""

from __future__ import annotations

import numpy as np

PREVIEW_COLUMNS = 8
PREVIEW_MAX_FRAMES = 32  # more frames: evenly spaced ones (always the newest)
PREVIEW_THUMB_WIDTH = 160  # larger frames are shown subsampled to about this width


class Pace:
    """Time left, from the pace of the Stage II segments so far (Stage I runs in between for
    long clips; its chunks are part of that pace)."""

    def __init__(self):
        self.first_frame: float | None = None  # elapsed when the input's frame was written

    def update(self, progress) -> None:
        if progress.stage == "stage2" and progress.segment == 0:
            self.first_frame = progress.elapsed

    def seconds_left(self, progress) -> float | None:
        """None until a segment has finished."""
        if progress.stage != "stage2" or progress.segment < 1 or self.first_frame is None:
            return None
        per_segment = (progress.elapsed - self.first_frame) / progress.segment
        return per_segment * (progress.segments - progress.segment)


def status_line(progress, left: float | None) -> str:
    """e.g. 'Stage II: segment 5 of 15 (... frames written) · 2.1 s elapsed · about 3 s left'."""
    if progress.stage == "text":
        where = "Text encoder"
    elif progress.stage == "stage1":
        where = f"Stage I: chunk {progress.chunk} of {progress.chunks}"
    else:
        where = (
            f"Stage II: segment {progress.segment} of {progress.segments} "
            f"({progress.frames_written} of {progress.frames} frames written)"
        )
    eta = "estimating the time left" if left is None else f"about {left:.0f} s left"
    return f"{where} · {progress.elapsed:.1f} s elapsed · {eta}"


class Preview:
    """Thumbnails of the frames written so far, as one grid image."""

    def __init__(self):
        self.thumbs: list[np.ndarray] = []

    def add(self, frames: np.ndarray) -> None:
        step = max(1, -(-frames.shape[2] // PREVIEW_THUMB_WIDTH))  # ceil(width / thumb width)
        self.thumbs.extend(np.ascontiguousarray(f[::step, ::step]) for f in frames)

    def image(self) -> np.ndarray | None:
        if not self.thumbs:
            return None
        n = len(self.thumbs)
        shown = np.unique(np.linspace(0, n - 1, min(n, PREVIEW_MAX_FRAMES)).round().astype(int))
        thumbs = [self.thumbs[i] for i in shown]
        h, w, c = thumbs[0].shape
        rows = -(-len(thumbs) // PREVIEW_COLUMNS)
        columns = min(len(thumbs), PREVIEW_COLUMNS)
        grid = np.full((rows * (h + 2) - 2, columns * (w + 2) - 2, c), 255, np.uint8)
        for i, thumb in enumerate(thumbs):
            r, k = divmod(i, PREVIEW_COLUMNS)
            grid[r * (h + 2) : r * (h + 2) + h, k * (w + 2) : k * (w + 2) + w] = thumb
        return grid


def summary_markdown(summary: dict) -> str:
    """The run's summary: size, seconds per stage, peak memory, compilations."""
    s = summary["seconds"]
    stages = (
        ("load", "loading models"),
        ("text", "text encoder"),
        ("stage1", "Stage I"),
        ("reference_encode", "hybrid reference"),
        ("stage2", "Stage II"),
        ("decode", "decode"),
    )
    rows = "\n".join(f"| {label} | {s.get(key, 0.0):.2f} |" for key, label in stages)
    gib = summary["peak_memory_bytes"] / 2**30
    return (
        f"**{summary['frames']} frames at {summary['width']}x{summary['height']}**, "
        f"{summary['segments']} Stage II segment(s), seed {summary['seed']}, "
        f"backend {summary['backend']}\n\n"
        f"| stage | seconds |\n|---|---|\n{rows}\n| **total** | **{s['total']:.2f}** |\n\n"
        f"First frame written after {summary['first_frame_seconds']:.2f} s. "
        f"Peak memory {gib:.2f} GiB ({summary['peak_memory_source']}).\n\n"
        f"XLA compilations this run: {summary['xla_compilations']} "
        f"(Stage I programs traced: {summary['stage1_compilations']}, Stage II window "
        f"program: {summary['stage2_compilations']}); 0 means every program was reused."
    )


def cancelled_line(elapsed: float) -> str:
    return f"Cancelled after {elapsed:.1f} s: no video written."
