"""Stage I continuation training (loss.max_clean_frames): the first k ~ U{1..K} blocks of each
example are clean, at timestep 0 with their true latents, and carry no loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swifti2v_jax.training import loss as loss_lib


def _stage1_batch(batch=32, window=6, hw=2, channels=3, seed=0):
    """A Stage I (end-to-end) window batch: block 0 is the image, every other block noisy."""
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((batch, window, hw, hw, channels)).astype(np.float32)
    return {
        "latents": jnp.asarray(latents),
        "reference": jnp.asarray(latents),
        "positions": jnp.tile(jnp.arange(window, dtype=jnp.int32), (batch, 1)),
        "is_noisy": jnp.asarray(np.tile(np.arange(window) > 0, (batch, 1))),
        "context": jnp.zeros((batch, 3, 8)),
    }


def _oracle(x_s, timesteps, x0):
    """Knows x0: the true velocity eps - x0 where the timestep is > 0, garbage elsewhere."""
    s = timesteps[:, :, None, None, None] / 1000.0
    return jnp.where(s > 0, (x_s - x0) / jnp.maximum(s, 1e-12), 123.0)


def test_clean_leading_frames_rule():
    batch = _stage1_batch()
    keys = jax.random.split(jax.random.PRNGKey(0), 32)
    config = loss_lib.LossConfig(
        conditioning="none", timestep_sampling="uniform", max_clean_frames=3
    )
    out = loss_lib.with_clean_leading_frames(batch, keys, config)
    is_noisy = np.asarray(out["is_noisy"])
    k = (~is_noisy).sum(1)
    # Clean blocks are exactly a leading run of k in {1, 2, 3}, all three drawn.
    for row, clean in zip(is_noisy, k, strict=True):
        np.testing.assert_array_equal(row, np.arange(6) >= clean)
    assert set(k.tolist()) == {1, 2, 3}
    assert float(loss_lib.noisy_element_count(out)) == is_noisy.sum() * 2 * 2 * 3
    # K = 1 is the plain image-to-video layout, untouched.
    plain = loss_lib.LossConfig(conditioning="none")
    assert loss_lib.with_clean_leading_frames(batch, keys, plain) is batch

    # Clean blocks enter with their true latents at timestep 0; the loss ignores them: an
    # oracle that is right on noisy blocks and returns garbage elsewhere has zero loss.
    seen = {}

    def apply(params, model_input, timesteps, context, positions, mask):
        seen.update(model_input=model_input, timesteps=timesteps)
        return _oracle(model_input, timesteps, seen["x0"])

    seen["x0"] = out["latents"]

    total = loss_lib.squared_error_sum(apply, None, out, keys, config)
    assert float(total) < 1e-6
    timesteps = np.asarray(seen["timesteps"])
    np.testing.assert_array_equal(timesteps[~is_noisy], 0.0)
    assert np.all(timesteps[is_noisy] > 0)
    clean_inputs = np.asarray(seen["model_input"])[~is_noisy]
    np.testing.assert_array_equal(clean_inputs, np.asarray(out["latents"])[~is_noisy])

    # A model wrong on blocks 1-2 only: no loss where they are clean (k = 3), loss where not.
    def wrong_early(params, model_input, timesteps, context, positions, mask):
        right = apply(params, model_input, timesteps, context, positions, mask)
        return (
            jnp.where((positions >= 1) & (positions <= 2), 7.0, 0.0)[..., None, None, None] + right
        )

    for clean, expect_loss in ((3, False), (1, True)):
        rows = np.flatnonzero(k == clean)
        subset = jax.tree.map(lambda x, rows=rows: x[rows], out)
        seen["x0"] = subset["latents"]
        total = float(loss_lib.squared_error_sum(wrong_early, None, subset, keys[rows], config))
        assert (total > 1.0) == expect_loss, (clean, total)


def test_clean_frames_draw_is_independent_of_the_batch_split():
    batch = _stage1_batch(batch=8)
    keys = jax.random.split(jax.random.PRNGKey(1), 8)
    config = loss_lib.LossConfig(conditioning="none", max_clean_frames=4)
    whole = loss_lib.with_clean_leading_frames(batch, keys, config)["is_noisy"]
    halves = [
        loss_lib.with_clean_leading_frames(
            jax.tree.map(lambda x, i=i: x[i : i + 4], batch), keys[i : i + 4], config
        )["is_noisy"]
        for i in (0, 4)
    ]
    np.testing.assert_array_equal(whole, np.concatenate(halves))


def test_max_clean_frames_must_be_positive():
    with pytest.raises(ValueError, match="max_clean_frames"):
        loss_lib.LossConfig(max_clean_frames=0)


def test_leading_blocks_weigh_more_and_the_mean_stays_a_weighted_mean():
    is_noisy = jnp.asarray([[False, True, True, True, True, True], [False] * 3 + [True] * 3])
    config = loss_lib.LossConfig(conditioning="none", leading_weight=4.0, leading_span=3)
    np.testing.assert_allclose(
        loss_lib.block_weights(is_noisy, config),
        [[0, 4, 3, 2, 1, 1], [0, 0, 0, 4, 3, 2]],
    )
    # weight 1 (the default) is the plain noisy mask
    np.testing.assert_array_equal(
        loss_lib.block_weights(is_noisy, loss_lib.LossConfig()), is_noisy.astype(np.float32)
    )
    batch = _stage1_batch(batch=2)
    batch["is_noisy"] = is_noisy
    assert float(loss_lib.noisy_element_count(batch, config)) == (11 + 9) * 2 * 2 * 3
    # A model off by 1 on block 1 only: its error counts 4x in row 0 (first noisy block),
    # nothing in row 1 (clean there).
    keys = jax.random.split(jax.random.PRNGKey(2), 2)
    seen = {"x0": batch["latents"]}

    def off_on_block_1(params, model_input, timesteps, context, positions, mask):
        right = _oracle(model_input, timesteps, seen["x0"])
        return jnp.where(positions == 1, 1.0, 0.0)[..., None, None, None] + right

    for weight, expect in ((1.0, 12.0), (4.0, 48.0)):
        weighted = loss_lib.LossConfig(conditioning="none", leading_weight=weight)
        total = float(loss_lib.squared_error_sum(off_on_block_1, None, batch, keys, weighted))
        assert total == pytest.approx(expect, rel=1e-4)
    with pytest.raises(ValueError, match="leading_weight"):
        loss_lib.LossConfig(leading_weight=0.5)
