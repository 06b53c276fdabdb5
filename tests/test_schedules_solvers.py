"""Flow-matching schedules, solvers and guidance against diffusers (and the release's numbers)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swifti2v_jax.sampling import guidance as gd
from swifti2v_jax.sampling import schedules as sch
from swifti2v_jax.sampling import solvers as sv

TOL = 1e-5


def fake_velocity(xp, x, sigma, timestep):
    """A smooth nonlinear stand-in for the DiT; identical maths in torch and jax."""
    return 0.5 * xp.tanh(x) + sigma * xp.sin(3.0 * x) - 0.3 * x + 1e-3 * timestep * xp.cos(x)


def make_x(seed=0, shape=(2, 3, 4, 5, 6)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@functools.partial(jax.jit, static_argnames="solver_name")
def run_jax(solver_name, x, sigmas, timesteps):
    velocity_fn = lambda x, sigma, t, i: fake_velocity(jnp, x, sigma, t)
    return sv.sample_loop(sv.make_solver(solver_name), velocity_fn, x, sigmas, timesteps)


def run_schedule(solver_name, x, schedule):
    return np.asarray(run_jax(solver_name, x, *sv.as_schedule_arrays(schedule)))


def run_diffusers(scheduler, x, schedule, begin_index=0):
    """Drive a diffusers scheduler whose sigmas already equal schedule.sigmas."""
    torch = pytest.importorskip("torch")
    scheduler.set_begin_index(begin_index)
    sample = torch.from_numpy(x)
    for i in range(begin_index, schedule.num_steps):
        timestep = torch.tensor(float(schedule.timesteps[i]), dtype=torch.float32)
        v = fake_velocity(torch, sample, scheduler.sigmas[i], timestep)
        sample = scheduler.step(v, scheduler.timesteps[i], sample, return_dict=False)[0]
    return sample.numpy()


def set_grid(scheduler, schedule):
    """Replace a diffusers scheduler's grid by ours (its solver maths is grid-agnostic)."""
    torch = pytest.importorskip("torch")
    scheduler.sigmas = torch.from_numpy(schedule.sigmas.copy())
    scheduler.timesteps = torch.from_numpy(schedule.timesteps.copy())


def unipc_scheduler(steps, shift):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.UniPCMultistepScheduler(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=shift,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
    )
    scheduler.set_timesteps(steps)
    return scheduler


def dpm_scheduler(steps, shift):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=shift,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    scheduler.set_timesteps(steps)
    return scheduler


def max_diff(a, b):
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    return float(np.max(np.abs(a - b)))


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    "steps, shift, head, tail",
    [
        (50, 5.0, [999, 995, 991, 987, 982, 978], [302, 241, 172, 92]),  # TI2V-5B
        (40, 12.0, [999, 997, 995], [571, 492, 386, 235]),  # T2V-A14B
        (40, 5.0, [999, 994, 989], [356, 288, 208, 113]),  # I2V-A14B
    ],
)
def test_official_unipc_grid_matches_wan22_numbers(steps, shift, head, tail):
    schedule = sch.make_schedule("unipc", steps, shift)
    assert schedule.num_steps == steps and schedule.sigmas.shape == (steps + 1,)
    assert list(schedule.timesteps[: len(head)]) == head
    assert list(schedule.timesteps[-len(tail) :]) == tail
    assert schedule.sigmas[-1] == 0.0
    if (steps, shift) == (50, 5.0):
        assert round(float(schedule.sigmas[0]), 5) == 0.99980


@pytest.mark.parametrize("steps, shift", [(4, 5.0), (20, 1.0), (40, 12.0), (50, 5.0)])
def test_diffusers_unipc_grid_equals_diffusers(steps, shift):
    scheduler = unipc_scheduler(steps, shift)
    schedule = sch.make_schedule("unipc_diffusers", steps, shift)
    np.testing.assert_array_equal(schedule.sigmas, scheduler.sigmas.numpy())
    np.testing.assert_array_equal(schedule.timesteps, scheduler.timesteps.numpy())


def test_lightning_euler_and_dpm_grids():
    euler = sch.make_schedule("euler", 4, 5.0)
    np.testing.assert_allclose(euler.sigmas, [1.0, 0.9375, 0.8333333, 0.625, 0.0], atol=1e-7)
    assert list(euler.timesteps) == [1000, 937, 833, 625]
    dpm = sch.make_schedule("dpm++", 40, 5.0)
    assert dpm.sigmas[0] == 1.0 and dpm.timesteps[0] == 1000 and dpm.sigmas[-1] == 0.0
    np.testing.assert_allclose(sch.shift_sigmas([0.0, 0.5, 1.0], 3.0), [0.0, 0.75, 1.0])
    assert list(sch.timesteps_from_sigmas([0.9999, 0.5009, 0.0])) == [999, 500, 0]


def test_start_at_starts_exactly_there_then_follows_the_grid():
    one_step = sch.make_schedule("euler", 1, 1.0).start_at(0.7)
    np.testing.assert_allclose(one_step.sigmas, [0.7, 0.0], rtol=1e-7)
    np.testing.assert_array_equal(one_step.timesteps, [700])
    grid = sch.make_schedule("unipc", 20, 5.0)
    partial = grid.start_at(0.7)
    below = grid.sigmas < 0.699
    np.testing.assert_allclose(partial.sigmas[0], 0.7, rtol=1e-7)
    np.testing.assert_array_equal(partial.sigmas[1:], grid.sigmas[below])
    np.testing.assert_array_equal(partial.timesteps[1:], grid.timesteps[below[:-1]])
    assert partial.num_steps == int(below.sum())
    # A grid point at the start itself is not repeated (no zero-length step).
    exact = sch.make_schedule("euler", 4, 1.0).start_at(0.5)
    np.testing.assert_allclose(exact.sigmas, [0.5, 0.25, 0.0], rtol=1e-7)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="start sigma"):
            grid.start_at(bad)


def test_schedule_validation():
    with pytest.raises(ValueError, match="steps"):
        sch.official_unipc_sigmas(0, 5.0)
    with pytest.raises(ValueError, match="shift"):
        sch.euler_sigmas(4, -1.0)
    with pytest.raises(ValueError, match="decreasing"):
        sch.Schedule.from_sigmas([1.0, 0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sch.Schedule.from_sigmas([1.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="kind"):
        sch.make_schedule("ddim", 4, 1.0)
    with pytest.raises(ValueError, match="start_step"):
        sch.make_schedule("euler", 4, 1.0).tail(4)
    with pytest.raises(ValueError, match="solver"):
        sv.make_solver("heun")


# --------------------------------------------------------------------------- solver parity


@pytest.mark.parametrize("steps, shift", [(4, 5.0), (20, 3.0)])
def test_euler_matches_diffusers(steps, shift):
    diffusers = pytest.importorskip("diffusers")
    schedule = sch.make_schedule("euler", steps, shift)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=schedule.sigmas[:-1])
    np.testing.assert_array_equal(scheduler.sigmas.numpy(), schedule.sigmas)
    x = make_x(1)
    assert max_diff(run_schedule("euler", x, schedule), run_diffusers(scheduler, x, schedule)) < TOL


@pytest.mark.parametrize(
    "grid, steps, shift",
    [
        ("unipc_diffusers", 4, 5.0),
        ("unipc_diffusers", 20, 5.0),
        ("unipc", 4, 5.0),
        ("unipc", 20, 12.0),
        ("unipc", 40, 5.0),
        ("dpm++", 6, 5.0),  # starts at sigma exactly 1 (lambda = -inf), torch stays finite
    ],
)
def test_unipc_matches_diffusers(grid, steps, shift):
    schedule = sch.make_schedule(grid, steps, shift)
    scheduler = unipc_scheduler(steps, shift)
    if grid != "unipc_diffusers":
        set_grid(scheduler, schedule)
    x = make_x(2)
    assert max_diff(run_schedule("unipc", x, schedule), run_diffusers(scheduler, x, schedule)) < TOL


def test_unipc_partial_denoise_matches_diffusers_begin_index():
    """Schedule.tail(k) == diffusers' set_begin_index(k) (the training-free refine start)."""
    schedule = sch.make_schedule("unipc", 8, 5.0)
    scheduler = unipc_scheduler(8, 5.0)
    set_grid(scheduler, schedule)
    x = make_x(3)
    expected = run_diffusers(scheduler, x, schedule, begin_index=3)
    assert max_diff(run_schedule("unipc", x, schedule.tail(3)), expected) < TOL


@pytest.mark.parametrize(
    "grid, steps, shift",
    [("diffusers", 4, 5.0), ("diffusers", 20, 5.0), ("dpm++", 4, 5.0), ("dpm++", 20, 3.0)],
)
def test_dpmpp_2m_matches_diffusers(grid, steps, shift):
    scheduler = dpm_scheduler(steps, shift)
    if grid == "diffusers":  # diffusers' own flow grid, starting below 1
        schedule = sch.Schedule.from_sigmas(scheduler.sigmas.numpy())
        np.testing.assert_array_equal(schedule.timesteps, scheduler.timesteps.numpy())
    else:  # the original Wan grid, starting at sigma exactly 1
        schedule = sch.make_schedule(grid, steps, shift)
        set_grid(scheduler, schedule)
    x = make_x(4)
    assert max_diff(run_schedule("dpm++", x, schedule), run_diffusers(scheduler, x, schedule)) < TOL


# --------------------------------------------------------------------------- loop properties


@pytest.mark.parametrize("solver_name", ["euler", "unipc", "dpm++"])
@pytest.mark.parametrize("sigmas", [[1.0, 0.0], [1.0, 0.6, 0.0], sch.euler_sigmas(5, 3.0)])
def test_no_nan_or_inf_anywhere_at_sigma_one_and_zero(solver_name, sigmas):
    """Every intermediate op is finite (op-by-op check), and jit gives the same numbers."""
    schedule = sch.Schedule.from_sigmas(sigmas)
    x = make_x(5, shape=(2, 3))
    with jax.debug_nans(True), jax.debug_infs(True), jax.disable_jit():
        eager = np.asarray(run_jax(solver_name, x, *sv.as_schedule_arrays(schedule)))
    assert np.all(np.isfinite(eager))
    assert max_diff(run_schedule(solver_name, x, schedule), eager) < 1e-6


def test_all_steps_traced_once_inside_one_loop():
    traces = []

    def velocity_fn(x, sigma, t, i):
        traces.append(1)
        return fake_velocity(jnp, x, sigma, t)

    schedule = sch.make_schedule("unipc", 20, 5.0)
    run = jax.jit(lambda x, s, t: sv.sample_loop(sv.UniPCSolver(), velocity_fn, x, s, t))
    out = run(make_x(6), *sv.as_schedule_arrays(schedule))
    assert len(traces) == 1 and np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("solver_name", ["euler", "unipc", "dpm++"])
def test_update_mask_keeps_context_and_matches_unmasked(solver_name):
    x = make_x(7, shape=(1, 4, 3, 3, 2))
    mask = np.array([False, True, True, False]).reshape(1, 4, 1, 1, 1)
    schedule = sch.make_schedule("euler", 6, 5.0)
    velocity_fn = lambda x, sigma, t, i: fake_velocity(jnp, x, sigma, t)
    solver = sv.make_solver(solver_name)
    masked = jax.jit(lambda x: sv.sample_loop(solver, velocity_fn, x, schedule, update_mask=mask))(
        x
    )
    full = jax.jit(lambda x: sv.sample_loop(solver, velocity_fn, x, schedule))(x)
    masked, full = np.asarray(masked), np.asarray(full)
    np.testing.assert_array_equal(masked[:, [0, 3]], x[:, [0, 3]])
    assert max_diff(masked[:, 1:3], full[:, 1:3]) < 1e-6
    with pytest.raises(ValueError, match="update_mask"):
        sv.sample_loop(solver, velocity_fn, x, schedule, update_mask=np.ones((5,), bool))


def test_replacement_sets_guided_entries_to_the_noised_target_until_release():
    """With a zero velocity Euler never moves x, so after the loop each guided entry holds
    exactly what the last guided step (sigma > release) wrote: (1 - s) target + s noise."""
    x = make_x(8, shape=(1, 4, 2, 2, 3))
    target, noise = make_x(9, shape=x.shape), make_x(10, shape=x.shape)
    mask = np.array([False, True, True, False]).reshape(1, 4, 1, 1, 1)
    schedule = sch.make_schedule("euler", 6, 3.0)
    sigmas = np.asarray(schedule.sigmas)
    zero = lambda x, sigma, t, i: jnp.zeros_like(x)
    release = float(sigmas[3] + 1e-4)  # steps 0, 1, 2 are guided
    guide = sv.Replacement(target, noise, mask, release)
    out = np.asarray(sv.sample_loop(sv.EulerSolver(), zero, x, schedule, replacement=guide))
    s = np.float32(sigmas[2])
    np.testing.assert_array_equal(out[:, [0, 3]], x[:, [0, 3]])
    np.testing.assert_allclose(out[:, 1:3], ((1 - s) * target + s * noise)[:, 1:3], atol=1e-6)


@pytest.mark.parametrize("solver_name", ["euler", "unipc"])
def test_replacement_without_guided_entries_changes_nothing(solver_name):
    x = make_x(11, shape=(1, 3, 2, 2, 2))
    velocity_fn = lambda x, sigma, t, i: fake_velocity(jnp, x, sigma, t)
    solver, schedule = sv.make_solver(solver_name), sch.make_schedule("unipc", 5, 3.0)
    plain = sv.sample_loop(solver, velocity_fn, x, schedule)
    target = make_x(12, shape=x.shape)
    for mask, release in ((np.zeros((1, 3, 1, 1, 1), bool), 0.0), (np.ones(x.shape, bool), 1.0)):
        guide = sv.Replacement(target, target, mask, release)  # release 1: no step is above it
        out = sv.sample_loop(solver, velocity_fn, x, schedule, replacement=guide)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))
    with pytest.raises(ValueError, match="replacement.noise"):
        bad = sv.Replacement(target, target[:, :2], np.ones(x.shape, bool), 0.5)
        sv.sample_loop(solver, velocity_fn, x, schedule, replacement=bad)
    with pytest.raises(ValueError, match="replacement.mask"):
        bad = sv.Replacement(target, target, np.ones((7,), bool), 0.5)
        sv.sample_loop(solver, velocity_fn, x, schedule, replacement=bad)


# --------------------------------------------------------------------------- guidance


@pytest.mark.parametrize(
    "shift, boundary, expected", [(5.0, 0.9, 15), (12.0, 0.875, 26)]
)  # I2V-A14B, T2V-A14B (docs/design.md, "Models")
def test_expert_switch_counts(shift, boundary, expected):
    schedule = sch.make_schedule("unipc", 40, shift)
    guidance = gd.Guidance(guide_scale=(3.0, 4.0), boundary=boundary)
    assert guidance.num_high_noise_steps(schedule.timesteps) == expected
    traced = jax.jit(guidance.is_high_noise)(jnp.asarray(schedule.timesteps, jnp.float32))
    assert int(np.sum(np.asarray(traced))) == expected
    assert guidance.boundary_timestep == round(boundary * 1000)


def test_cfg_velocity():
    v_cond, v_uncond = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])
    np.testing.assert_allclose(gd.cfg_velocity(v_cond, v_uncond, 3.0), [2.0, 8.0])
    np.testing.assert_allclose(gd.cfg_velocity(v_cond, v_uncond, 1.0), v_cond)


def fake_model(calls, params, x, t, context):
    calls.append(1)  # counts traced forwards
    return params["a"] * x + context + 1e-3 * t


def test_guided_moe_velocity_in_jitted_loop_matches_numpy():
    """Expert and scale chosen per step inside jit, checked against a host-side Euler loop."""
    schedule = sch.make_schedule("unipc", 40, 12.0)
    guidance = gd.Guidance(guide_scale=(3.0, 4.0), boundary=0.875)
    high, low = {"a": jnp.float32(-0.5)}, {"a": jnp.float32(-0.2)}
    cond, uncond = jnp.full((3,), 0.3), jnp.full((3,), -0.1)
    calls = []
    velocity_fn = gd.make_guided_velocity_fn(
        functools.partial(fake_model, calls),
        high,
        context=cond,
        uncond_context=uncond,
        guidance=guidance,
        low_noise_params=low,
    )
    x = make_x(8, shape=(3,))
    out = jax.jit(lambda x: sv.sample_loop(sv.EulerSolver(), velocity_fn, x, schedule))(x)
    assert len(calls) == 4  # cond + uncond traced once per expert branch

    ref = x.astype(np.float64)
    for i, t in enumerate(schedule.timesteps):
        is_high = t >= 875
        a, scale = (-0.5, 4.0) if is_high else (-0.2, 3.0)
        v_cond, v_uncond = a * ref + 0.3 + 1e-3 * t, a * ref - 0.1 + 1e-3 * t
        v = v_uncond + scale * (v_cond - v_uncond)
        ref = ref + (float(schedule.sigmas[i + 1]) - float(schedule.sigmas[i])) * v
    assert max_diff(np.asarray(out), ref) < TOL


def test_guidance_scale_one_skips_uncond_forward():
    calls = []
    model = functools.partial(fake_model, calls)
    params = {"a": jnp.float32(-0.5)}
    velocity_fn = gd.make_guided_velocity_fn(
        model, params, context=jnp.ones(2), guidance=gd.Guidance(1.0)
    )
    v = jax.jit(velocity_fn)(jnp.ones(2), 0.5, jnp.float32(500.0), 0)
    np.testing.assert_allclose(v, [-0.5 + 1.0 + 0.5] * 2, rtol=1e-6)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="uncond_context"):
        gd.make_guided_velocity_fn(model, params, context=jnp.ones(2), guidance=gd.Guidance(5.0))
    with pytest.raises(ValueError, match="boundary"):
        gd.make_guided_velocity_fn(
            model, params, context=jnp.ones(2), guidance=gd.Guidance(1.0), low_noise_params=params
        )
