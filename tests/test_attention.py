"""The chunked (flash-style, custom_vjp) attention: values and gradients against plain attention,
with and without frame masks, and the attention API's error paths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swifti2v_jax.models import chunked_attention as chunked_lib
from swifti2v_jax.models import layers

jax.config.update("jax_default_matmul_precision", "highest")


def _qkv(seed, batch, len_q, len_k, heads=2, dim=8):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((batch, len_q, heads, dim)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((batch, len_k, heads, dim)), jnp.float32) for _ in "kv")
    return q, k, v


def _frame_mask(seed, batch, fq, fk):
    """Random frame mask with every query frame seeing at least one key frame."""
    rng = np.random.default_rng(seed)
    mask = rng.random((batch, fq, fk)) < 0.5
    mask[:, np.arange(fq), np.arange(fq) % fk] = True
    return jnp.asarray(mask)


@pytest.mark.parametrize(
    "frames_q, frames_k, tokens, block, masked",
    [(5, 5, 12, 16, False), (5, 5, 12, 16, True), (3, 7, 10, 24, True), (4, 4, 9, 64, True)],
)
def test_chunked_values_and_gradients_match_plain_attention(
    frames_q, frames_k, tokens, block, masked
):
    batch = 2
    q, k, v = _qkv(frames_q + frames_k, batch, frames_q * tokens, frames_k * tokens)
    frame_mask = _frame_mask(tokens, batch, frames_q, frames_k) if masked else None
    token_mask = None
    if masked:
        token_mask = layers.frame_mask_to_token_mask(frame_mask, tokens)
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)

    def plain(q, k, v):
        out = jax.nn.dot_product_attention(q, k, v, mask=token_mask, implementation="xla")
        return jnp.sum(out * cotangent), out

    def ours(q, k, v):
        out = chunked_lib.chunked_attention(q, k, v, frame_mask, tokens, block, block)
        return jnp.sum(out * cotangent), out

    (_, ref), ref_grads = jax.value_and_grad(plain, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    (_, got), got_grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2), has_aux=True))(
        q, k, v
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5)
    for name, g, r in zip("qkv", got_grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5, err_msg=f"d{name}")


def test_chunked_backward_saves_no_score_matrix():
    """The custom_vjp keeps out + logsumexp, not the scanned forward's per-block scores: the
    saved residuals of a 2-query-block x 4-key-block call hold no [.., bq, bk] array."""
    q, k, v = _qkv(0, 1, 64, 128)
    f = lambda q, k, v: chunked_lib.chunked_attention(q, k, v, None, 1, 32, 32)
    _, residuals = jax.vjp(f, q, k, v)
    shapes = [tuple(x.shape) for x in jax.tree.leaves(residuals)]
    # q/k/v/out sized (the padded key length 128 x 2 heads x 8 dims), no [.., 32, 32] scores
    assert max(int(np.prod(s)) for s in shapes) <= 128 * 2 * 8
    assert not any(len(s) >= 2 and s[-2:] == (32, 32) for s in shapes)


def test_backends_take_frame_masks_without_materialising():
    q, k, v = _qkv(3, 2, 4 * 6, 4 * 6)
    frame_mask = _frame_mask(5, 2, 4, 4)
    ref = layers.attention(q, k, v, frame_mask=frame_mask, tokens_per_frame=6, backend="xla")
    for backend in ("chunked", "splash", "cudnn"):  # masked calls of every backend: chunked
        out = layers.attention(q, k, v, frame_mask=frame_mask, tokens_per_frame=6, backend=backend)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    # Memory of the compiled programs at 4 frames x 1024 tokens, 2 heads: one fp32 score
    # matrix [2, 4096, 4096] is 128 MiB. Measured temp buffers: xla 256 MiB (scores and
    # mask materialised); chunked, splash and cudnn 18 MiB (one block at a time).
    frames, tokens = 4, 1024
    qkv = jax.ShapeDtypeStruct((1, frames * tokens, 2, 8), jnp.float32)
    masks = jax.ShapeDtypeStruct((1, frames, frames), jnp.bool_)
    scores = 2 * (frames * tokens) ** 2 * 4

    def temp_bytes(backend):
        call = lambda q, k, v, m: layers.attention(
            q, k, v, frame_mask=m, tokens_per_frame=tokens, backend=backend
        )
        compiled = jax.jit(call).lower(qkv, qkv, qkv, masks).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes("xla") >= scores  # the measure sees a materialised [Lq, Lk]
    for backend in ("chunked", "splash", "cudnn"):
        assert temp_bytes(backend) < scores / 4, backend


def test_attention_errors():
    q, k, v = _qkv(0, 1, 8, 8)
    with pytest.raises(ValueError, match="backend"):
        layers.attention(q, k, v, backend="magic")
    with pytest.raises(ValueError, match="not both"):
        layers.attention(q, k, v, mask=jnp.ones((1, 1, 8, 8), bool), frame_mask=jnp.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="does not cover"):
        layers.attention(
            q, k, v, frame_mask=jnp.ones((1, 3, 3), bool), tokens_per_frame=2, backend="chunked"
        )
