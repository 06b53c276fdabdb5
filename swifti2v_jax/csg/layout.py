"""The CSG window layout: which latent blocks each window holds, for sampling and training.

A window always holds W = 1 + N + M blocks: the anchor (block 0, the input image), clean
neighbour blocks and noisy blocks, in increasing block order. Its non-anchor blocks form one
contiguous range [lo, lo + W - 1); noisy blocks start at `start`, neighbours fill [lo, start).

    lo = max(1, min(start - N, T - (W - 1)))

so the first segment (no neighbours yet) takes more noisy blocks and the last segment (fewer
than M left) takes more clean neighbours: the window size, hence the compiled program, never
changes. Clips shorter than a window (T < W) are one window of T blocks.

`WindowLayout` (M, N, end_to_end) is the one type that says how a clip is cut into windows;
the sampler config (sampling/stage2.Stage2SamplerConfig) and the training loader's spec
(data/loader.WindowSpec) both extend it, so sampling and training cannot disagree.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Window:
    """One CSG window: `blocks` in window order (anchor first); positions are the block indices."""

    blocks: tuple[int, ...]
    is_noisy: tuple[bool, ...]

    @property
    def size(self) -> int:
        return len(self.blocks)

    @property
    def noisy_blocks(self) -> tuple[int, ...]:
        return tuple(b for b, n in zip(self.blocks, self.is_noisy) if n)

    @property
    def context_blocks(self) -> tuple[int, ...]:
        return tuple(b for b, n in zip(self.blocks, self.is_noisy) if not n)

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(block indices int32 [W], is_noisy bool [W]) for feeding a jitted window function."""
        return np.asarray(self.blocks, np.int32), np.asarray(self.is_noisy, bool)


def neighbour_mask(is_noisy):
    """[..., W] bool: the neighbour slots of a window, i.e. context blocks but the anchor,
    which is always window slot 0. numpy in, numpy out; jax arrays work the same."""
    return ~is_noisy & (np.arange(is_noisy.shape[-1]) > 0)


def validate(num_blocks: int, noisy: int, neighbours: int) -> None:
    if num_blocks < 2:
        raise ValueError(f"CSG needs at least 2 latent blocks (anchor + 1), got {num_blocks}")
    check_counts(noisy, neighbours)


def check_counts(noisy: int, neighbours: int) -> None:
    if noisy < 1:
        raise ValueError(f"noisy blocks per segment M must be >= 1, got {noisy}")
    if neighbours < 0:
        raise ValueError(f"neighbour blocks N must be >= 0, got {neighbours}")


def window_size(num_blocks: int, noisy: int, neighbours: int) -> int:
    return min(1 + neighbours + noisy, num_blocks)


def window_for_start(num_blocks: int, noisy: int, neighbours: int, start: int) -> Window:
    """The window whose first noisy block is `start` (1 <= start < T)."""
    validate(num_blocks, noisy, neighbours)
    if not 1 <= start < num_blocks:
        raise ValueError(f"segment start must be in [1, {num_blocks - 1}], got {start}")
    size = window_size(num_blocks, noisy, neighbours)
    lo = max(1, min(start - neighbours, num_blocks - (size - 1)))
    body = range(lo, lo + size - 1)
    return Window(
        blocks=(0, *body),
        is_noisy=(False, *(b >= start for b in body)),
    )


def plan_segments(num_blocks: int, noisy: int, neighbours: int) -> list[Window]:
    """Windows that generate blocks 1..T-1 exactly once, in order; every window has one size."""
    validate(num_blocks, noisy, neighbours)
    windows, start = [], 1
    while start < num_blocks:
        window = window_for_start(num_blocks, noisy, neighbours, start)
        windows.append(window)
        start = window.blocks[-1] + 1
    return windows


def end_to_end_window(num_blocks: int) -> Window:
    """One window over the whole clip: the anchor clean, every other block noisy."""
    validate(num_blocks, 1, 0)
    return Window(blocks=tuple(range(num_blocks)), is_noisy=(False,) + (True,) * (num_blocks - 1))


def sample_training_window(
    num_blocks: int, noisy: int, neighbours: int, rng: np.random.Generator
) -> Window:
    """A window at a uniformly random segment start, with exactly the sampling-time layout."""
    start = int(rng.integers(1, num_blocks))
    return window_for_start(num_blocks, noisy, neighbours, start)


@dataclasses.dataclass(frozen=True)
class WindowLayout:
    """How a clip is cut into windows: M noisy blocks after N neighbours, or end to end."""

    noisy_blocks: int = 3  # M
    neighbours: int = 1  # N
    end_to_end: bool = False  # one window over the whole clip (the baseline)

    def __post_init__(self):
        check_counts(self.noisy_blocks, self.neighbours)

    def validate(self, num_blocks: int) -> None:
        validate(num_blocks, self.noisy_blocks, self.neighbours)

    def window_size(self, num_blocks: int) -> int:
        if self.end_to_end:
            return num_blocks
        return window_size(num_blocks, self.noisy_blocks, self.neighbours)

    def plan(self, num_blocks: int) -> list[Window]:
        """The sampling windows, in order."""
        if self.end_to_end:
            return [end_to_end_window(num_blocks)]
        return plan_segments(num_blocks, self.noisy_blocks, self.neighbours)

    def sample(self, num_blocks: int, rng: np.random.Generator) -> Window:
        """A training window: one of the sampling layouts at a uniformly random start."""
        if self.end_to_end:
            return end_to_end_window(num_blocks)
        return sample_training_window(num_blocks, self.noisy_blocks, self.neighbours, rng)
