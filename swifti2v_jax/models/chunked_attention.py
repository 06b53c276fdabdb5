"""Flash-style attention in plain XLA: bounded memory forward AND backward.

Query blocks x key blocks with an online softmax. The forward saves only its output and the
per-query logsumexp; the backward (`jax.custom_vjp`) recomputes each block's scores from
q, k and that logsumexp, so training never holds a [Lq, Lk] score matrix (at a 2K window of
17,600 tokens that is 1.2 GB per head per layer, and autodiff of the scanned forward kept all
of them). Masks are frame-level (token i belongs to frame i // tokens_per_frame), so each block
builds its own [bq, bk] mask from the [B, Fq, Fk] frame mask; nothing [Lq, Lk] is materialised.

Every query row must see at least one key (the model's frame masks guarantee it); masked
scores use a finite floor so rows whose first blocks are all masked cannot produce NaNs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_FLOOR = -1e30  # masked score; exp(_FLOOR - real max) == 0 in fp32


def even_block(length: int, target: int) -> int:
    """A block size near `target` that splits `length` into equal blocks (little padding)."""
    blocks = -(-length // target)
    size = -(-length // blocks)
    return min(-(-size // 8) * 8, max(length, 1)) if length > 8 else length


def _blocks(x, block):  # [B, L, H, D] (L a multiple of block) -> [n, B, H, block, D]
    batch, length, heads, dim = x.shape
    return x.reshape(batch, length // block, block, heads, dim).transpose(1, 0, 3, 2, 4)


def _unblock(x):  # [n, B, H, block, D] -> [B, n * block, H, D]
    n, batch, heads, block, dim = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(batch, n * block, heads, dim)


def _pad(x, size):
    return jnp.pad(x, ((0, 0), (0, size - x.shape[1]), (0, 0), (0, 0)))


def _block_mask(frame_mask, tokens_per_frame, q_index, k_index, len_k):
    """[B, 1, bq, bk] (or [1, 1, 1, bk]) boolean: key padding and the frame mask per block."""
    valid = (k_index < len_k)[None, None, None, :]
    if frame_mask is None:
        return valid
    fq, fk = frame_mask.shape[1:]
    q_frame = jnp.minimum(q_index // tokens_per_frame, fq - 1)
    k_frame = jnp.minimum(k_index // tokens_per_frame, fk - 1)
    rows = jnp.take(frame_mask, q_frame, axis=1)  # [B, bq, Fk]
    allowed = jnp.take(rows, k_frame, axis=2)  # [B, bq, bk]
    return allowed[:, None] & valid


def _scores(q_block, k_block, mask):
    s = jnp.einsum("bhqd,bhkd->bhqk", q_block, k_block, preferred_element_type=jnp.float32)
    return jnp.where(mask, s, _FLOOR)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _flash(q, k, v, frame_mask, tokens_per_frame, len_k, block_q, block_k):
    return _flash_forward(q, k, v, frame_mask, tokens_per_frame, len_k, block_q, block_k)[0]


def _flash_forward(q, k, v, frame_mask, tokens_per_frame, len_k, block_q, block_k):
    """Padded, pre-scaled q/k/v [B, L, H, D] -> (out [B, Lq, H, D], lse [nq, B, H, bq])."""
    q_blocks, k_blocks, v_blocks = _blocks(q, block_q), _blocks(k, block_k), _blocks(v, block_k)
    num_q, num_k = q_blocks.shape[0], k_blocks.shape[0]
    k_starts = jnp.arange(num_k) * block_k

    def one_query_block(inputs):
        q_block, q_start = inputs
        q_index = q_start + jnp.arange(block_q)

        def visit(carry, key_inputs):
            running_max, normaliser, acc = carry
            k_block, v_block, k_start = key_inputs
            mask = _block_mask(
                frame_mask, tokens_per_frame, q_index, k_start + jnp.arange(block_k), len_k
            )
            scores = _scores(q_block, k_block, mask)
            new_max = jnp.maximum(running_max, scores.max(axis=-1))
            probs = jnp.exp(scores - new_max[..., None])
            correction = jnp.exp(running_max - new_max)
            normaliser = normaliser * correction + probs.sum(axis=-1)
            acc = acc * correction[..., None] + jnp.einsum(
                "bhqk,bhkd->bhqd", probs.astype(v_block.dtype), v_block,
                preferred_element_type=jnp.float32,
            )  # fmt: skip
            return (new_max, normaliser, acc), None

        row = jnp.zeros_like(q_block[..., 0], dtype=jnp.float32)
        init = (row + _FLOOR, row, jnp.zeros_like(q_block, dtype=jnp.float32))
        (running_max, normaliser, acc), _ = jax.lax.scan(
            visit, init, (k_blocks, v_blocks, k_starts)
        )
        return (acc / normaliser[..., None]).astype(q.dtype), running_max + jnp.log(normaliser)

    out, lse = jax.lax.map(one_query_block, (q_blocks, jnp.arange(num_q) * block_q))
    return _unblock(out), lse


def _flash_fwd(q, k, v, frame_mask, tokens_per_frame, len_k, block_q, block_k):
    out, lse = _flash_forward(q, k, v, frame_mask, tokens_per_frame, len_k, block_q, block_k)
    return out, (q, k, v, frame_mask, out, lse)


def _flash_bwd(tokens_per_frame, len_k, block_q, block_k, residuals, d_out):
    q, k, v, frame_mask, out, lse = residuals
    q_blocks, k_blocks, v_blocks = _blocks(q, block_q), _blocks(k, block_k), _blocks(v, block_k)
    do_blocks = _blocks(d_out, block_q)
    # delta_i = sum_d dO_id O_id: the softmax-Jacobian term shared by every key of row i.
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, Lq, H]
    delta = delta.reshape(delta.shape[0], -1, block_q, delta.shape[2]).transpose(1, 0, 3, 2)
    q_starts = jnp.arange(q_blocks.shape[0]) * block_q
    k_starts = jnp.arange(k_blocks.shape[0]) * block_k

    def probs_and_ds(q_block, k_block, v_block, do_block, lse_block, delta_block, qs, ks):
        mask = _block_mask(
            frame_mask, tokens_per_frame, qs + jnp.arange(block_q), ks + jnp.arange(block_k), len_k
        )
        probs = jnp.exp(_scores(q_block, k_block, mask) - lse_block[..., None])
        d_probs = jnp.einsum(
            "bhqd,bhkd->bhqk", do_block, v_block, preferred_element_type=jnp.float32
        )
        return probs, probs * (d_probs - delta_block[..., None])

    def dq_for_query_block(inputs):  # pass 1: dQ, query block outer, keys inner
        q_block, do_block, lse_block, delta_block, qs = inputs

        def visit(acc, key_inputs):
            k_block, v_block, ks = key_inputs
            _, ds = probs_and_ds(
                q_block, k_block, v_block, do_block, lse_block, delta_block, qs, ks
            )
            return acc + jnp.einsum(
                "bhqk,bhkd->bhqd", ds.astype(k_block.dtype), k_block,
                preferred_element_type=jnp.float32,
            ), None  # fmt: skip

        init = jnp.zeros_like(q_block, dtype=jnp.float32)
        acc, _ = jax.lax.scan(visit, init, (k_blocks, v_blocks, k_starts))
        return acc.astype(q.dtype)

    def dkv_for_key_block(inputs):  # pass 2: dK and dV, key block outer, queries inner
        k_block, v_block, ks = inputs

        def visit(carry, query_inputs):
            dk, dv = carry
            q_block, do_block, lse_block, delta_block, qs = query_inputs
            probs, ds = probs_and_ds(
                q_block, k_block, v_block, do_block, lse_block, delta_block, qs, ks
            )
            dv = dv + jnp.einsum(
                "bhqk,bhqd->bhkd", probs.astype(do_block.dtype), do_block,
                preferred_element_type=jnp.float32,
            )  # fmt: skip
            dk = dk + jnp.einsum(
                "bhqk,bhqd->bhkd", ds.astype(q_block.dtype), q_block,
                preferred_element_type=jnp.float32,
            )  # fmt: skip
            return (dk, dv), None

        zeros = jnp.zeros_like(k_block, dtype=jnp.float32)
        (dk, dv), _ = jax.lax.scan(
            visit, (zeros, zeros), (q_blocks, do_blocks, lse, delta, q_starts)
        )
        return dk.astype(k.dtype), dv.astype(v.dtype)

    dq = jax.lax.map(dq_for_query_block, (q_blocks, do_blocks, lse, delta, q_starts))
    dk, dv = jax.lax.map(dkv_for_key_block, (k_blocks, v_blocks, k_starts))
    return _unblock(dq), _unblock(dk), _unblock(dv), None


_flash.defvjp(_flash_fwd, _flash_bwd)


def chunked_attention(
    q,
    k,
    v,
    frame_mask=None,
    tokens_per_frame: int = 1,
    block_q: int = 1024,
    block_k: int = 1024,
):
    """q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D], softmax in fp32.

    frame_mask: optional boolean [B, Fq, Fk], True where frame i's queries may attend frame j's
    keys, with Lq = Fq * tokens_per_frame and Lk = Fk * tokens_per_frame.
    """
    len_q, len_k, head_dim = q.shape[1], k.shape[1], q.shape[3]
    if frame_mask is not None:
        fq, fk = frame_mask.shape[1:]
        if (fq * tokens_per_frame, fk * tokens_per_frame) != (len_q, len_k):
            raise ValueError(
                f"frame mask {frame_mask.shape} x {tokens_per_frame} tokens per frame does not "
                f"cover {len_q} queries and {len_k} keys"
            )
        frame_mask = frame_mask.astype(bool)
    block_q, block_k = even_block(len_q, block_q), even_block(len_k, block_k)
    size_q, size_k = -(-len_q // block_q) * block_q, -(-len_k // block_k) * block_k
    scaled = q * jnp.asarray(head_dim**-0.5, q.dtype)
    out = _flash(
        _pad(scaled, size_q), _pad(k, size_k), _pad(v, size_k), frame_mask,
        tokens_per_frame, len_k, block_q, block_k,
    )  # fmt: skip
    return out[:, :len_q]
