"""The CSG engine: exactness vs end-to-end, read-only ablation, one compilation per run."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swifti2v_jax.csg import inputs as csg_inputs
from swifti2v_jax.csg import layout
from swifti2v_jax.models.dit import DiTConfig, WanDiT, init_params
from swifti2v_jax.presets import dit as dit_configs
from swifti2v_jax.sampling import stage2 as csg

HW = (4, 4)  # latent height/width: 4 tokens per block after the 2x2 patch


def _model(preset="tiny_concat"):
    config = DiTConfig.from_dict(dit_configs.get(preset))
    return config, init_params(config, jax.random.key(0))


def _clip(num_blocks, channels=48, seed=0):
    rng = np.random.default_rng(seed)
    z_ref = jnp.asarray(rng.standard_normal((1, num_blocks, *HW, channels)), jnp.float32)
    context = jnp.asarray(rng.standard_normal((1, 5, 32)), jnp.float32)
    return z_ref, z_ref[:, :1], context


class _Stub:
    """A window function standing in for the compiled denoiser (same call, same config)."""

    def __init__(self, config, fn):
        self.config, self.fn = config, fn

    def __call__(self, *args):
        return self.fn(*args)


def _generate(config, params, csg_config, num_blocks, denoiser=None, on_segment=None):
    z_ref, anchor, context = _clip(num_blocks)
    if denoiser is None:
        denoiser = csg.WindowDenoiser(config, csg_config)
    elif not isinstance(denoiser, csg.WindowDenoiser):
        denoiser = _Stub(csg_config, denoiser)
    return csg.generate(
        denoiser,
        params,
        z_ref=z_ref,
        anchor=anchor,
        context=context,
        uncond_context=jnp.zeros_like(context),
        key=jax.random.key(1),
        on_segment=on_segment,
    )


@pytest.mark.parametrize("solver", ["euler", "unipc"])
def test_csg_covering_the_clip_equals_end_to_end(solver):
    config, params = _model()
    base = dict(solver=solver, schedule="euler" if solver == "euler" else "unipc", steps=3)
    e2e = _generate(config, params, csg.Stage2SamplerConfig(end_to_end=True, **base), 5)
    covering = _generate(
        config, params, csg.Stage2SamplerConfig(noisy_blocks=4, neighbours=1, **base), 5
    )
    np.testing.assert_array_equal(np.asarray(covering), np.asarray(e2e))
    # Segmenting the same clip is a different computation (sanity: the test can fail).
    split = _generate(
        config, params, csg.Stage2SamplerConfig(noisy_blocks=2, neighbours=1, **base), 5
    )
    assert np.max(np.abs(np.asarray(split) - np.asarray(e2e))) > 1e-4


class _AffineModel:
    """A stand-in for WanDiT with known outputs: v = 0.5 x + text[:, 0, 0] on every latent
    channel, so the conditional and unconditional velocities differ by a known amount."""

    def __init__(self, out_dim):
        self.out_dim = out_dim

    def apply(self, variables, model_input, timesteps, text, positions, mask):
        x = model_input[..., : self.out_dim]
        return 0.5 * x + text[:, 0, 0][:, None, None, None, None]


def test_guidance_is_the_cfg_formula_on_known_velocities():
    """Euler on v = 0.5 x + c is affine in c from the same start, so a guided run must equal
    uncond + s (cond - uncond) of the two unguided runs (cond: context, uncond: its negative
    prompt). Swapping cond and uncond gives cond + s (uncond - cond) instead."""
    config, params = _model()
    scale, base = 3.0, dict(steps=2, solver="euler", schedule="euler", noisy_blocks=2)
    z_ref, anchor, context = _clip(4)
    uncond = jnp.full_like(context, -0.7)  # velocity offset -0.7 against context[0, 0, 0]

    def run(guide_scale, text, negative):
        denoiser = csg.WindowDenoiser(
            config, csg.Stage2SamplerConfig(guide_scale=guide_scale, **base)
        )
        denoiser.model = _AffineModel(config.out_dim)
        return np.asarray(
            csg.generate(
                denoiser, params, z_ref=z_ref, anchor=anchor, context=text,
                uncond_context=negative, key=jax.random.key(1),
            )
        )  # fmt: skip

    guided = run(scale, context, uncond)
    cond, plain_uncond = run(1.0, context, None), run(1.0, uncond, None)
    expected = plain_uncond + scale * (cond - plain_uncond)
    np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(cond - plain_uncond)[:, 1:].min() > 0.1  # the two velocities really differ


@pytest.mark.parametrize(
    "attention, context_changes", [("read_only", False), ("bidirectional", True)]
)
def test_read_only_context_ignores_noisy_blocks(attention, context_changes):
    config, params = _model()
    model = WanDiT(config)
    window = layout.window_for_start(9, 2, 2, 5)  # [0, 3, 4 | 5, 6]
    blocks, is_noisy = window.as_arrays()
    z_ref, _, context = _clip(9)
    latents = z_ref[:, blocks]
    mask = csg.read_only_mask(jnp.asarray(is_noisy), 1) if attention == "read_only" else None

    def run(lat):
        inputs, t = csg_inputs.window_model_input(
            lat, z_ref[:, blocks], jnp.asarray(is_noisy), 700, "concat"
        )
        return np.asarray(model.apply({"params": params}, inputs, t, context, blocks[None], mask))

    perturbed = latents.at[:, -1].add(1.0)  # change one noisy block
    a, b = run(latents), run(perturbed)
    context_diff = np.max(np.abs(a[:, ~is_noisy] - b[:, ~is_noisy]))
    if context_changes:
        assert context_diff > 1e-5
    else:
        assert context_diff == 0.0
    assert np.max(np.abs(a[:, -1] - b[:, -1])) > 1e-5  # noisy outputs always change


@pytest.mark.parametrize(
    "num_blocks, expected_segments", [(4, 1), pytest.param(8, 3, marks=pytest.mark.smoke), (16, 7)]
)
def test_one_compilation_per_run(num_blocks, expected_segments):
    config, params = _model()
    csg_config = csg.Stage2SamplerConfig(
        noisy_blocks=2, neighbours=1, steps=2, solver="euler", schedule="euler"
    )
    denoiser = csg.WindowDenoiser(config, csg_config)
    seen = []
    out = _generate(config, params, csg_config, num_blocks, denoiser, on_segment=seen.append)
    assert len(seen) == expected_segments
    assert denoiser.traces == 1
    assert denoiser._jitted._cache_size() == 1
    # Every block generated once, in order, and the anchor is untouched.
    assert [b for s in seen for b in s.blocks] == list(range(1, num_blocks))
    z_ref, anchor, _ = _clip(num_blocks)
    np.testing.assert_array_equal(np.asarray(out[:, 0]), np.asarray(anchor[:, 0]))
    for result in seen:
        np.testing.assert_array_equal(
            np.asarray(out[:, list(result.blocks)]), np.asarray(result.latents)
        )


def test_longer_clip_reuses_the_same_program():
    config, params = _model()
    csg_config = csg.Stage2SamplerConfig(
        noisy_blocks=2, neighbours=1, steps=1, solver="euler", schedule="euler"
    )
    denoiser = csg.WindowDenoiser(config, csg_config)
    _generate(config, params, csg_config, 6, denoiser)
    _generate(config, params, csg_config, 11, denoiser)
    assert denoiser.traces == 1
    w = csg_config.plan(6)[0].size
    assert w == csg_config.plan(11)[0].size == 4
    assert csg.tokens_per_forward(config, w, HW) == 16


def test_refine_mode_uses_plain_model_and_partial_schedule():
    config, params = _model("tiny")
    csg_config = csg.Stage2SamplerConfig(
        conditioning="refine", sigma_start=0.5, steps=6, solver="euler", schedule="euler", shift=1.0
    )
    schedule = csg_config.sampling_schedule
    np.testing.assert_allclose(schedule.sigmas, [0.5, 1 / 3, 1 / 6, 0.0], rtol=1e-6)
    # One window over the clip; a stand-in model with v = (x - z_ref) * 1000 / t, which also
    # checks that refine feeds the latents alone (no z_ref channels) with per-block timesteps.
    csg_config = dataclasses.replace(csg_config, noisy_blocks=4, neighbours=0)
    z_ref, _, _ = _clip(5)

    class Refine:
        def apply(self, variables, model_input, timesteps, text, positions, mask):
            assert model_input.shape[-1] == config.out_dim  # plain model input
            ref = z_ref[:, positions[0]]
            t = timesteps[:, :, None, None, None]
            return jnp.where(t > 0, (model_input - ref) * 1000.0 / jnp.maximum(t, 1.0), 0.0)

    denoiser = csg.WindowDenoiser(config, csg_config)
    denoiser.model = Refine()
    out = np.asarray(_generate(config, params, csg_config, 5, denoiser))
    noise = csg.block_noise(jax.random.key(1), np.arange(1, 5), (1, *HW, 48))
    x = 0.5 * np.asarray(z_ref[:, 1:]) + 0.5 * np.asarray(noise)
    for sigma, following, t in zip(schedule.sigmas, schedule.sigmas[1:], schedule.timesteps):
        x = x + (following - sigma) * (x - np.asarray(z_ref[:, 1:])) * 1000.0 / t  # Euler
    np.testing.assert_allclose(out[:, 1:], x, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[:, 0], np.asarray(z_ref[:, 0]))
    with pytest.raises(ValueError, match="in_dim"):
        csg.WindowDenoiser(config, csg.Stage2SamplerConfig(conditioning="concat"))


@pytest.mark.parametrize("conditioning", ["concat", "refine"])
@pytest.mark.parametrize("sigma_start", [1.0, 0.5])
def test_noisy_blocks_start_from_noised_z_ref_below_sigma_start_one(conditioning, sigma_start):
    """sigma_start < 1 starts noisy blocks at (1 - s0) z_ref + s0 noise in both modes; at 1,
    concat starts from pure noise. A pass-through denoiser exposes the start latents."""
    config, params = _model("tiny_concat" if conditioning == "concat" else "tiny")
    csg_config = csg.Stage2SamplerConfig(
        conditioning=conditioning, sigma_start=sigma_start, noisy_blocks=4, neighbours=0,
        steps=6, solver="euler", schedule="euler", shift=1.0,
    )  # fmt: skip
    out = _generate(config, params, csg_config, 5, denoiser=lambda p, init, *rest: init)
    z_ref, _, _ = _clip(5)
    s0 = float(csg_config.sampling_schedule.sigmas[0])
    noise = csg.block_noise(jax.random.key(1), np.arange(1, 5), (1, *HW, 48))
    noised = (1.0 - s0) * z_ref[:, 1:] + s0 * noise
    expected = noise if (conditioning, sigma_start) == ("concat", 1.0) else noised
    np.testing.assert_allclose(np.asarray(out[:, 1:]), np.asarray(expected), atol=1e-6)
    assert s0 == pytest.approx(sigma_start)


def test_neighbours_enter_noised_to_neighbour_sigma():
    """neighbour_sigma > 0: each window's neighbour blocks are (1 - a) x + a n with noise
    n fixed per block, the anchor stays clean, and the model sees timestep 1000 a on them;
    the buffer keeps the un-noised generated blocks."""
    config, params = _model()
    sigma = 0.3
    csg_config = csg.Stage2SamplerConfig(
        noisy_blocks=1, neighbours=1, neighbour_sigma=sigma, steps=2
    )
    inits = []

    def record(p, init, z_ref, window, *rest):
        inits.append((window, init))
        return init

    out = _generate(config, params, csg_config, 5, denoiser=record)
    key = jax.random.key(1)
    for window, init in inits[1:]:  # the first window has no neighbour
        blocks, is_noisy = window.as_arrays()
        assert blocks[0] == 0 and not is_noisy[1]
        noise = csg.block_noise(
            jax.random.fold_in(key, csg.NEIGHBOUR_NOISE_STREAM), blocks, (1, *HW, 48)
        )
        expected = (1 - sigma) * out[:, blocks[1]] + sigma * noise[:, 1]
        np.testing.assert_allclose(np.asarray(init[:, 1]), np.asarray(expected), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(init[:, 0]), np.asarray(out[:, 0]))
    _, timesteps = csg_inputs.window_model_input(
        jnp.zeros((1, 3, *HW, 4)), jnp.zeros((1, 3, *HW, 4)), jnp.array([False, False, True]),
        700.0, "concat", neighbour_timestep=1000.0 * sigma,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(timesteps), [[0.0, 300.0, 700.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="neighbour_sigma"):
        csg.Stage2SamplerConfig(neighbour_sigma=1.0)


def test_ensemble_is_the_mean_of_its_draws():
    """ensemble=K: each segment's output is the mean of K samples, draw k from
    `ensemble_keys(key, K)[k]` (draw 0 is the plain sampler's); later segments see the mean
    as their neighbour. One segment: the mean of K one-draw runs, each with its draw's key."""
    config, params = _model()
    base = dict(noisy_blocks=1, neighbours=1, steps=1, solver="euler", schedule="euler",
                shift=1.0, sigma_start=0.9, neighbour_sigma=0.6)  # fmt: skip
    z_ref, anchor, context = _clip(2)
    key = jax.random.key(7)

    def run(ensemble, key, num_blocks=2):
        denoiser = csg.WindowDenoiser(config, csg.Stage2SamplerConfig(ensemble=ensemble, **base))
        return csg.generate(denoiser, params, z_ref=z_ref[:, :num_blocks], anchor=anchor,
                            context=context, key=key)  # fmt: skip

    keys = csg.ensemble_keys(key, 3)
    assert keys[0] is key
    draws = [np.asarray(run(1, k)[:, 1]) for k in keys]
    np.testing.assert_allclose(np.asarray(run(3, key)[:, 1]), sum(draws) / 3, atol=1e-6)
    assert np.abs(draws[1] - draws[0]).max() > 1e-2  # the draws have their own noise
    with pytest.raises(ValueError, match="ensemble"):
        csg.Stage2SamplerConfig(ensemble=0)


def test_bad_config_and_shapes():
    with pytest.raises(ValueError, match="conditioning"):
        csg.Stage2SamplerConfig(conditioning="magic")
    with pytest.raises(ValueError, match="attention"):
        csg.Stage2SamplerConfig(attention="causal")
    config, params = _model()
    z_ref, anchor, context = _clip(4)
    with pytest.raises(ValueError, match="anchor"):
        csg.generate(
            csg.WindowDenoiser(config, csg.Stage2SamplerConfig()),
            params,
            z_ref=z_ref,
            anchor=z_ref,
            context=context,
            key=jax.random.key(0),
        )
