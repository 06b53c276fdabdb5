"""The DiT layer stack's training variants compute the same gradients: every remat policy,
scan vs unrolled layers, and the chunked (custom_vjp) attention against plain attention with
a read-only frame mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dit as dit_configs
from swifti2v_jax.models import dit

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="module")
def setup():
    config = dit.DiTConfig.from_dict(dit_configs.get_config("tiny")).replace(
        compute_dtype="float32", attention_backend="xla", num_layers=2
    )
    params = jax.jit(lambda key: dit.init_params(config, key))(jax.random.key(0))
    rng = np.random.default_rng(0)
    frames = 3
    latents = jnp.asarray(rng.standard_normal((2, frames, 4, 4, config.in_dim)), jnp.float32)
    context = jnp.asarray(rng.standard_normal((2, 5, config.text_dim)), jnp.float32)
    t = jnp.asarray([[0.0, 500.0, 500.0], [0.0, 0.0, 900.0]], jnp.float32)
    mask = np.ones((2, frames, frames), bool)
    mask[:, 0, 1:] = False  # read-only context: the anchor does not attend noisy frames
    return config, params, (latents, t, context, None, jnp.asarray(mask))


def _grads(config, params, inputs):
    def loss(p):
        out = dit.WanDiT(config).apply({"params": p}, *inputs)
        return jnp.mean(jnp.square(out))

    return jax.jit(jax.grad(loss))(params)


def _max_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.fixture(scope="module")
def reference(setup):
    config, params, inputs = setup
    grads = _grads(config, params, inputs)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 1e-4
    return grads


@pytest.mark.parametrize("remat", ["full", "attention", "dots"])
def test_remat_policies_give_the_same_gradients(setup, reference, remat):
    config, params, inputs = setup
    assert _max_diff(_grads(config.replace(remat=remat), params, inputs), reference) < 1e-6


@pytest.mark.slow
def test_unrolled_layers_give_the_same_gradients(setup, reference):
    config, params, inputs = setup
    unrolled = _grads(config.replace(scan_layers=False, remat="full"), params, inputs)
    assert _max_diff(unrolled, reference) < 1e-6


def test_chunked_attention_trains_like_plain_attention_with_a_frame_mask(setup, reference):
    config, params, inputs = setup
    chunked = _grads(config.replace(attention_backend="chunked", remat="full"), params, inputs)
    assert _max_diff(chunked, reference) < 1e-5


def test_unknown_remat_is_rejected():
    with pytest.raises(ValueError, match="remat"):
        dit.DiTConfig.from_dict(dit_configs.get_config("tiny")).replace(remat="some")
