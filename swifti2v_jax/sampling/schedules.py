"""Flow-matching sigma schedules (host-side numpy; docs/design.md, "Samplers").

Convention: x_s = (1 - s) * x0 + s * eps, sigma 1 is pure noise. A schedule holds N + 1 sigmas
(strictly decreasing, usually ending at 0) and the N integer timesteps the model sees,
int(1000 * sigma) truncated, computed from the float64 sigmas exactly like the originals do.
The solver maths then runs on the float32 sigmas.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000

# The original FlowUniPCMultistepScheduler takes its largest training sigma (0.999) from a
# float32 tensor and reads it back as a Python float, so its grid starts at float32(0.999).
_OFFICIAL_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))

# diffusers pulls a first sigma of exactly 1 down by this much (UniPC's log(alpha) at sigma 1).
_DIFFUSERS_SIGMA_ONE_EPS = 1e-6


def _check_steps_and_shift(steps: int, shift: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not np.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a positive finite number, got {shift!r}")


def shift_sigmas(sigmas, shift: float) -> np.ndarray:
    """Wan/SD3 timestep shift s*sigma / (1 + (s - 1)*sigma), in float64 (fixes 0 and 1)."""
    if not np.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a positive finite number, got {shift!r}")
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def official_unipc_sigmas(steps: int, shift: float) -> np.ndarray:
    """Grid of the original Wan FlowUniPCMultistepScheduler: N + 1 float64 sigmas.

    linspace(0.999, 0, N + 1) without its last entry, shifted, then a final 0.
    """
    _check_steps_and_shift(steps, shift)
    base = np.linspace(_OFFICIAL_SIGMA_MAX, 0.0, steps + 1)[:-1]
    return np.append(shift_sigmas(base, shift), 0.0)


def diffusers_unipc_sigmas(steps: int, shift: float) -> np.ndarray:
    """Grid of diffusers UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift).

    linspace(1, 1/1000, N + 1) without its last entry, shifted, a first sigma of 1 lowered by
    1e-6, then a final 0.
    """
    _check_steps_and_shift(steps, shift)
    base = np.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps + 1)[:-1]
    sigmas = shift_sigmas(base, shift)
    if abs(sigmas[0] - 1.0) < _DIFFUSERS_SIGMA_ONE_EPS:
        sigmas[0] -= _DIFFUSERS_SIGMA_ONE_EPS
    return np.append(sigmas, 0.0)


def dpm_sigmas(steps: int, shift: float) -> np.ndarray:
    """Grid of the original Wan DPM-Solver++ path (get_sampling_sigmas): starts at exactly 1.

    linspace(1, 0, N + 1) without its last entry, shifted, then a final 0.
    """
    _check_steps_and_shift(steps, shift)
    base = np.linspace(1.0, 0.0, steps + 1)[:-1]
    return np.append(shift_sigmas(base, shift), 0.0)


def euler_sigmas(steps: int, shift: float) -> np.ndarray:
    """Wan2.2-Lightning Euler grid: linspace(1, 0, N + 1) shifted.

    N 4, shift 5: 1, 0.9375, 0.8333, 0.625, 0.
    """
    _check_steps_and_shift(steps, shift)
    return shift_sigmas(np.linspace(1.0, 0.0, steps + 1), shift)


def timesteps_from_sigmas(sigmas) -> np.ndarray:
    """Model timesteps int(1000 * sigma), truncated toward zero (int64), from float64 sigmas."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return (sigmas * NUM_TRAIN_TIMESTEPS).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """A validated sampling schedule.

    sigmas: float32 [N + 1], strictly decreasing in [0, 1] (so 1 can only be first and 0 last).
    timesteps: int64 [N], the model's timestep for each step.
    """

    sigmas: np.ndarray
    timesteps: np.ndarray

    def __post_init__(self):
        sigmas = np.asarray(self.sigmas)
        timesteps = np.asarray(self.timesteps)
        if sigmas.ndim != 1 or sigmas.shape[0] < 2:
            raise ValueError(
                f"sigmas must be 1-D with at least 2 entries, got shape {sigmas.shape}"
            )
        if timesteps.shape != (sigmas.shape[0] - 1,):
            raise ValueError(
                f"timesteps must have shape ({sigmas.shape[0] - 1},) for {sigmas.shape[0]} sigmas, "
                f"got {timesteps.shape}"
            )
        _check_sigmas(sigmas)
        object.__setattr__(self, "sigmas", sigmas.astype(np.float32))
        object.__setattr__(self, "timesteps", timesteps.astype(np.int64))

    @classmethod
    def from_sigmas(cls, sigmas) -> Schedule:
        """Build from N + 1 sigmas (float64 preferred: timesteps are truncated from them)."""
        sigmas = np.asarray(sigmas, dtype=np.float64)
        if sigmas.ndim != 1 or sigmas.shape[0] < 2:
            raise ValueError(
                f"sigmas must be 1-D with at least 2 entries, got shape {sigmas.shape}"
            )
        return cls(sigmas=sigmas, timesteps=timesteps_from_sigmas(sigmas[:-1]))

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def tail(self, start_step: int) -> Schedule:
        """The schedule from step `start_step` on (partial denoising from sigmas[start_step]).

        Multistep solvers restart their warm-up on it, like diffusers' set_begin_index.
        """
        if not 0 <= start_step < self.num_steps:
            raise ValueError(f"start_step must be in [0, {self.num_steps}), got {start_step}")
        return Schedule(sigmas=self.sigmas[start_step:], timesteps=self.timesteps[start_step:])

    def start_at(self, sigma: float) -> Schedule:
        """Partial denoising from exactly `sigma` (img2img style): sigma, then the grid's
        sigmas below it. Grid points within 1e-3 below `sigma` are dropped, so no step is
        degenerate; a one-step grid [1, 0] becomes [sigma, 0]."""
        if not 0.0 < sigma <= 1.0:
            raise ValueError(f"start sigma must be in (0, 1], got {sigma}")
        keep = self.sigmas < sigma - 1e-3
        keep[-1] = True  # the final sigma (0) always stays
        rest = np.flatnonzero(keep)
        timesteps = np.concatenate([[int(sigma * NUM_TRAIN_TIMESTEPS)], self.timesteps[rest[:-1]]])
        return Schedule(sigmas=np.concatenate([[sigma], self.sigmas[rest]]), timesteps=timesteps)


def _check_sigmas(sigmas: np.ndarray) -> None:
    if not np.all(np.isfinite(sigmas)):
        raise ValueError("sigmas must be finite")
    if sigmas.min() < 0 or sigmas.max() > 1:
        raise ValueError(f"sigmas must lie in [0, 1], got range [{sigmas.min()}, {sigmas.max()}]")
    if not np.all(np.diff(sigmas.astype(np.float32)) < 0):
        raise ValueError("sigmas must be strictly decreasing (also after the cast to float32)")


_GRIDS = {
    "unipc": official_unipc_sigmas,
    "unipc_diffusers": diffusers_unipc_sigmas,
    "dpm++": dpm_sigmas,
    "euler": euler_sigmas,
}


def make_schedule(kind: str, steps: int, shift: float) -> Schedule:
    """Schedule by grid name: 'unipc' (official Wan), 'unipc_diffusers', 'dpm++', 'euler'."""
    if kind not in _GRIDS:
        raise ValueError(f"unknown schedule kind {kind!r}; choose one of {sorted(_GRIDS)}")
    return Schedule.from_sigmas(_GRIDS[kind](steps, shift))
