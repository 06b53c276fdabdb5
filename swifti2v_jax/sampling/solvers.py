"""Flow-matching ODE solvers as pure functions of a traced step index.

Every solver exposes
    init(x) -> state                                  fixed-shape pytree
    step(state, x, v, sigmas, i) -> (x_next, state)   i: traced int, sigmas: [N + 1] float32
so that all N steps run inside one `lax.fori_loop` (see `sample_loop`). The model output v is a
flow-matching velocity (v = eps - x0), so the x0-prediction is x - sigma * v.

Implemented (docs/design.md, "Samplers"):
  * Euler: x + (sigma_next - sigma) * v.
  * UniPC bh2, order 2, predict_x0, lower_order_final, with the UniC corrector: the maths of
    both the original Wan FlowUniPCMultistepScheduler and diffusers' UniPCMultistepScheduler
    with use_flow_sigmas (they differ only in the grid, see schedules.py).
  * DPM-Solver++ 2M (midpoint), lower_order_final: the original FlowDPMSolverMultistepScheduler
    and diffusers' DPMSolverMultistepScheduler with use_flow_sigmas.

In flow matching lambda = log((1 - sigma) / sigma) is -inf at sigma = 1 and +inf at sigma = 0.
PyTorch relies on IEEE inf arithmetic there. Here the step coefficients take those limits
explicitly. Every intermediate value stays finite, so `jax.debug_nans`/`debug_infs` stay quiet.
The limits used: exp(-h) -> 0 and expm1(-h) -> -1 when h = +inf; a multistep
ratio r = (lambda_prev - lambda_cur) / h -> -inf when the previous sigma is 1 (its correction
term vanishes); at the last step (sigma_next = 0) every solver is first order and returns x0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.sampling.schedules import Schedule

VelocityFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


class Solver(Protocol):
    def init(self, x: jax.Array) -> Any: ...

    def step(
        self, state: Any, x: jax.Array, v: jax.Array, sigmas: jax.Array, i: jax.Array
    ) -> tuple[jax.Array, Any]: ...


def _state_dtype(x: jax.Array) -> jnp.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)


def _log_snr(sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """lambda = log(1 - sigma) - log(sigma) and whether it is finite (0 < sigma < 1).

    At sigma 0 or 1 a harmless placeholder is returned; callers substitute the limit.
    """
    finite = (sigma > 0) & (sigma < 1)
    s = jnp.where(finite, sigma, 0.5)
    return jnp.log(1 - s) - jnp.log(s), finite


def _sigma(sigmas: jax.Array, index: jax.Array) -> jax.Array:
    """sigmas[index] with the index clamped into range (for warm-up steps whose value is unused)."""
    return sigmas[jnp.clip(index, 0, sigmas.shape[0] - 1)]


def _predictor_order(i: jax.Array, num_steps: int) -> jax.Array:
    """Order 2 except on the first step (warm-up) and the last step (lower_order_final)."""
    return jnp.where((i == 0) | (i == num_steps - 1), 1, 2)


# --------------------------------------------------------------------------- Euler


class EulerState(NamedTuple):
    pass


@dataclasses.dataclass(frozen=True)
class EulerSolver:
    """First-order Euler (FlowMatchEulerDiscreteScheduler, Wan2.2-Lightning)."""

    def init(self, x: jax.Array) -> EulerState:
        del x
        return EulerState()

    def step(self, state, x, v, sigmas, i):
        dt = _sigma(sigmas, i + 1) - _sigma(sigmas, i)
        x_next = x.astype(jnp.float32) + dt * v
        return x_next.astype(x.dtype), state


# --------------------------------------------------------------------------- UniPC


class UniPCState(NamedTuple):
    x0_prev: jax.Array  # x0-prediction of step i - 1
    x0_prev2: jax.Array  # x0-prediction of step i - 2
    last_sample: jax.Array  # corrected sample the predictor of step i - 1 started from


@dataclasses.dataclass(frozen=True)
class UniPCSolver:
    """UniPC (B(h) = expm1(-h), "bh2"), solver order 2, data prediction, lower_order_final.

    Step i: x0_i = x_i - sigma_i v_i; UniC corrects x_i with x0_i (from step 1 on, with the order
    of the previous predictor); UniP then predicts x_{i+1} from the corrected x_i.
    """

    use_corrector: bool = True

    def init(self, x: jax.Array) -> UniPCState:
        zeros = jnp.zeros(x.shape, _state_dtype(x))
        return UniPCState(zeros, zeros, zeros)

    def step(self, state, x, v, sigmas, i):
        num_steps = sigmas.shape[0] - 1
        x32 = x.astype(_state_dtype(x))
        x0 = x32 - _sigma(sigmas, i) * v
        if self.use_corrector:
            corrected = self._correct(state, x0, sigmas, i)
            x32 = jnp.where(i >= 1, corrected, x32)
        x_next = self._predict(state, x32, x0, sigmas, i, num_steps)
        new_state = UniPCState(x0_prev=x0, x0_prev2=state.x0_prev, last_sample=x32)
        return x_next.astype(x.dtype), new_state

    @staticmethod
    def _predict(state, x, x0, sigmas, i, num_steps):
        """UniP from sigma_i to sigma_{i+1}."""
        sigma_s0, sigma_t = _sigma(sigmas, i), _sigma(sigmas, i + 1)
        lam_t, finite_t = _log_snr(sigma_t)
        lam_s0, finite_s0 = _log_snr(sigma_s0)
        lam_prev, finite_prev = _log_snr(_sigma(sigmas, i - 1))
        finite_h = finite_t & finite_s0
        h = jnp.where(finite_h, lam_t - lam_s0, 1.0)
        h_phi_1 = jnp.where(finite_h, jnp.expm1(-h), -1.0)
        b_h = h_phi_1  # bh2
        alpha_t = 1 - sigma_t

        x_next = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * x0
        # Order 2: D1 = (x0_{i-1} - x0_i) / r with r = (lambda_{i-1} - lambda_i) / h, rho = 1/2.
        use_d1 = (_predictor_order(i, num_steps) == 2) & finite_h & finite_prev
        rk = jnp.where(use_d1, (lam_prev - lam_s0) / h, 1.0)
        d1_coef = jnp.where(use_d1, 0.5 / rk, 0.0)
        return x_next - alpha_t * b_h * (d1_coef * (state.x0_prev - x0))

    @staticmethod
    def _correct(state, x0, sigmas, i):
        """UniC: redo the step sigma_{i-1} -> sigma_i from last_sample using the new x0_i."""
        num_steps = sigmas.shape[0] - 1
        order = _predictor_order(i - 1, num_steps)
        sigma_s0, sigma_t = _sigma(sigmas, i - 1), _sigma(sigmas, i)
        lam_t, finite_t = _log_snr(sigma_t)
        lam_s0, finite_s0 = _log_snr(sigma_s0)
        lam_prev, finite_prev = _log_snr(_sigma(sigmas, i - 2))
        # i == 0 (corrector unused) indexes sigma_0 twice: h would be 0, so mask it as well.
        finite_h = finite_t & finite_s0 & (i >= 1)
        h = jnp.where(finite_h, lam_t - lam_s0, 1.0)
        hh = -h
        h_phi_1 = jnp.where(finite_h, jnp.expm1(hh), -1.0)
        b_h = h_phi_1  # bh2
        # b_k = k! * phi_{k+1}(hh) * hh / B(h) via the phi recurrence; limits at hh = -inf: 1, 1.
        h_phi_k = jnp.where(finite_h, h_phi_1 / hh - 1.0, -1.0)
        b1 = h_phi_k / b_h
        h_phi_k2 = jnp.where(finite_h, h_phi_k / hh - 0.5, -0.5)
        b2 = h_phi_k2 * 2.0 / b_h

        # Order 2: solve [[1, 1], [r, 1]] rho = [b1, b2]; r -> -inf gives rho = (0, b1).
        order2 = order == 2
        use_d1 = order2 & finite_h & finite_prev
        rk = jnp.where(use_d1, (lam_prev - lam_s0) / h, 0.0)
        rho0 = jnp.where(use_d1, (b1 - b2) / (1.0 - rk), 0.0)
        rho1 = jnp.where(order2, b1 - rho0, 0.5)
        d1_coef = jnp.where(use_d1, rho0 / jnp.where(use_d1, rk, 1.0), 0.0)

        alpha_t = 1 - sigma_t
        x0_prev = state.x0_prev
        base = sigma_t / sigma_s0 * state.last_sample - alpha_t * h_phi_1 * x0_prev
        correction = d1_coef * (state.x0_prev2 - x0_prev) + rho1 * (x0 - x0_prev)
        return base - alpha_t * b_h * correction


# --------------------------------------------------------------------------- DPM-Solver++ 2M


class DPMState(NamedTuple):
    x0_prev: jax.Array  # x0-prediction of step i - 1


@dataclasses.dataclass(frozen=True)
class DPMPP2MSolver:
    """DPM-Solver++ multistep, order 2, midpoint, data prediction, first order on the last step."""

    def init(self, x: jax.Array) -> DPMState:
        return DPMState(jnp.zeros(x.shape, _state_dtype(x)))

    def step(self, state, x, v, sigmas, i):
        num_steps = sigmas.shape[0] - 1
        x32 = x.astype(_state_dtype(x))
        sigma_s0, sigma_t = _sigma(sigmas, i), _sigma(sigmas, i + 1)
        x0 = x32 - sigma_s0 * v
        lam_t, finite_t = _log_snr(sigma_t)
        lam_s0, finite_s0 = _log_snr(sigma_s0)
        lam_s1, finite_s1 = _log_snr(_sigma(sigmas, i - 1))
        finite_h = finite_t & finite_s0
        h = jnp.where(finite_h, lam_t - lam_s0, 1.0)
        phi = jnp.where(finite_h, jnp.exp(-h), 0.0) - 1.0  # exp(-h) - 1
        alpha_t = 1 - sigma_t

        # Order 2: D1 = (x0_i - x0_{i-1}) / r0, r0 = h_0 / h; h_0 = +inf when sigma_{i-1} = 1.
        use_d1 = (_predictor_order(i, num_steps) == 2) & finite_h & finite_s1
        r0 = jnp.where(use_d1, (lam_s0 - lam_s1) / h, 1.0)
        d1_coef = jnp.where(use_d1, 1.0 / r0, 0.0)
        d1 = d1_coef * (x0 - state.x0_prev)
        x_next = sigma_t / sigma_s0 * x32 - (alpha_t * phi) * x0 - 0.5 * (alpha_t * phi) * d1
        return x_next.astype(x.dtype), DPMState(x0)


# --------------------------------------------------------------------------- loop

_SOLVERS = {
    "euler": EulerSolver,
    "unipc": UniPCSolver,
    "dpm++": DPMPP2MSolver,
    "dpmpp_2m": DPMPP2MSolver,
}


def make_solver(name: str) -> Solver:
    """'euler', 'unipc' or 'dpm++' (alias 'dpmpp_2m')."""
    if name not in _SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(_SOLVERS)}")
    return _SOLVERS[name]()


class Replacement(NamedTuple):
    """Replacement guidance (RePaint-style, for flow matching): while a step's sigma is above
    `release_sigma`, the entries where `mask` is True are set, before the model sees them, to
    the forward-noised target (1 - sigma) * target + sigma * noise; below it they are free.
    Guides some entries toward known values early (layout, colour) and lets the model settle
    their detail with the rest."""

    target: jax.Array
    noise: jax.Array
    mask: jax.Array
    release_sigma: float | jax.Array


def sample_loop(
    solver: Solver,
    velocity_fn: VelocityFn,
    x_init: jax.Array,
    sigmas,
    timesteps=None,
    *,
    update_mask: jax.Array | None = None,
    replacement: Replacement | None = None,
) -> jax.Array:
    """Run all N solver steps in one `lax.fori_loop` (jit the caller to compile it once).

    velocity_fn(x, sigma, timestep, i) -> v, with sigma the float32 sigma of step i, timestep
    the model's integer timestep as float32 and i the traced step index.
    sigmas: a `Schedule` (then timesteps must be None) or an [N + 1] array with `timesteps` [N]
    (precomputed on the host by `Schedule`: int(1000 * sigma) of the float64 sigmas).
    update_mask: optional bool array broadcastable to x; entries where it is False keep their
    x_init value bit for bit (e.g. clean context blocks). The velocity at those entries is
    ignored. The solver is elementwise, so masked entries never affect the others.
    replacement: optional `Replacement` guidance, applied at the start of each step.
    """
    if isinstance(sigmas, Schedule):
        if timesteps is not None:
            raise ValueError("pass either a Schedule or (sigmas, timesteps), not both")
        sigmas, timesteps = sigmas.sigmas, sigmas.timesteps
    if timesteps is None:
        raise ValueError("timesteps are required when sigmas is an array (or pass a Schedule)")
    sigmas = jnp.asarray(sigmas, jnp.float32)
    timesteps = jnp.asarray(timesteps).astype(jnp.float32)
    if sigmas.ndim != 1 or timesteps.shape != (sigmas.shape[0] - 1,):
        raise ValueError(
            f"need sigmas [N + 1] and timesteps [N], got {sigmas.shape} and {timesteps.shape}"
        )
    if update_mask is not None:
        update_mask = _checked_mask("update_mask", update_mask, x_init)
    if replacement is not None:
        _checked_mask("replacement.mask", replacement.mask, x_init)
        for name in ("target", "noise"):
            if getattr(replacement, name).shape != x_init.shape:
                raise ValueError(
                    f"replacement.{name} must have x's shape {x_init.shape}, "
                    f"got {getattr(replacement, name).shape}"
                )
    num_steps = sigmas.shape[0] - 1

    def body(i, carry):
        x, state = carry
        if replacement is not None:
            sigma = sigmas[i]
            noised = (1 - sigma) * replacement.target + sigma * replacement.noise
            guided = replacement.mask & (sigma > replacement.release_sigma)
            x = jnp.where(guided, noised.astype(x.dtype), x)
        v = velocity_fn(x, sigmas[i], timesteps[i], i)
        x_next, state = solver.step(state, x, v, sigmas, i)
        if update_mask is not None:
            x_next = jnp.where(update_mask, x_next, x)
        return x_next, state

    x, _ = jax.lax.fori_loop(0, num_steps, body, (x_init, solver.init(x_init)))
    return x


def _checked_mask(name: str, mask, x: jax.Array) -> jax.Array:
    mask = jnp.asarray(mask, bool)
    try:
        broadcast = np.broadcast_shapes(mask.shape, x.shape)
    except ValueError:
        broadcast = None
    if broadcast != tuple(x.shape):
        raise ValueError(f"{name} shape {mask.shape} does not broadcast to x {x.shape}")
    return mask


def as_schedule_arrays(schedule: Schedule) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas float32 [N + 1], timesteps float32 [N]) ready to pass as jit arguments."""
    return schedule.sigmas, schedule.timesteps.astype(np.float32)
