"""Train state and model initialisation (random, a converted checkpoint, or a widened one).

`TrainState` holds everything that changes during training and goes into checkpoints:
step, the trainable parameters (fp32 master weights), optimizer state, their EMA and the base
RNG key. A frozen backbone (LoRA training) is not part of it: it is reloaded from its source.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from swifti2v_jax import checkpoints
from swifti2v_jax.models import dit, quant

# DiT fields that must agree between a checkpoint and the model it initialises.
_ARCHITECTURE_FIELDS = (
    "dim",
    "ffn_dim",
    "num_heads",
    "num_layers",
    "out_dim",
    "patch_size",
    "text_dim",
    "freq_dim",
)


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # trainable parameters, fp32
    opt_state: Any
    ema_params: Any  # EMA of `params` (an empty dict when disabled)
    rng: jax.Array  # uint32[2] base key; step keys are fold_in(rng, step)


def create_state(params, optimizer: optax.GradientTransformation, seed: int, use_ema: bool):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if use_ema else {},
        rng=jax.random.PRNGKey(seed + 1),
    )


def apply_gradients(
    state: TrainState, grads, grad_norm, optimizer, grad_clip: float, ema_decay: float,
    update_mask=None,
) -> TrainState:  # fmt: skip
    """One optimizer step: clip `grads` to global norm `grad_clip` (`grad_norm` is theirs,
    computed by the caller, who knows how they are sharded), update, EMA, step + 1.

    update_mask (1.0 trains, 0.0 freezes, per leaf) zeroes the updates of frozen leaves, so
    weight decay does not move them either."""
    if grad_clip > 0:
        scale = jnp.minimum(1.0, grad_clip / (grad_norm + 1e-6))
        grads = jax.tree.map(lambda g: g * scale, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    if update_mask is not None:
        updates = jax.tree.map(lambda u, m: u * m, updates, update_mask)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema_decay > 0:
        ema = jax.tree.map(lambda e, p: e + (1.0 - ema_decay) * (p - e), ema, params)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)


# Bits of the `nonfinite` step metric (guard_nonfinite): what was not finite.
NONFINITE_LOSS, NONFINITE_GRAD_NORM, NONFINITE_PARAMS = 1, 2, 4


def guard_nonfinite(state: TrainState, new_state: TrainState, loss, grad_norm):
    """-> (state to continue from, int32 `nonfinite` bits). A step whose loss, gradient norm
    or updated parameters are not all finite keeps `state`'s parameters, optimizer state and
    EMA (only the step counter advances), so the last finite state survives the donated
    buffers; the loop decides whether to stop or skip (training/loop.py)."""
    params_finite = jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new_state.params)])
    )
    code = (
        jnp.where(jnp.isfinite(loss), 0, NONFINITE_LOSS)
        + jnp.where(jnp.isfinite(grad_norm), 0, NONFINITE_GRAD_NORM)
        + jnp.where(params_finite, 0, NONFINITE_PARAMS)
    ).astype(jnp.int32)
    kept = jax.tree.map(lambda new, old: jnp.where(code == 0, new, old), new_state, state)
    return kept.replace(step=new_state.step), code


def widen_patch_embedding(params, in_dim: int):
    """Extends the patch embedding to `in_dim` input channels; new weights are zero.

    With concat conditioning the new channels carry z_ref, so at step 0 the widened model
    ignores z_ref and computes exactly what the checkpoint did.
    """
    kernel = np.asarray(params["patch_embedding_kernel"])
    old = kernel.shape[3]
    if in_dim < old:
        raise ValueError(f"cannot narrow the patch embedding from {old} to {in_dim} channels")
    pad = np.zeros(kernel.shape[:3] + (in_dim - old, kernel.shape[4]), kernel.dtype)
    return {**params, "patch_embedding_kernel": np.concatenate([kernel, pad], axis=3)}


def _check_tree(params, reference, what: str) -> None:
    got = {
        jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(params)
    }
    want = {
        jax.tree_util.keystr(p): tuple(x.shape)
        for p, x in jax.tree_util.tree_leaves_with_path(reference)
    }
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        shapes = sorted(k for k in set(got) & set(want) if got[k] != want[k])
        raise ValueError(
            f"{what} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"mis-shaped {[(k, got[k], want[k]) for k in shapes[:5]]}"
        )


def check_init_checkpoint(path: str) -> None:
    """Training starts from full-precision, device-resident weights: a checkpoint converted with
    --quantize (int8/fp8 block kernels) or saved with stream_layers is refused from its
    metadata alone, before anything is loaded."""
    meta = checkpoints.read_metadata(path)
    weights = meta.get("weights", "native")
    if weights != "native":
        raise ValueError(
            f"{path} holds {weights}-quantized DiT weights, which cannot initialise training "
            "(they are for sampling only); convert the model again without --quantize"
        )
    if meta.get("config", {}).get("stream_layers"):
        raise ValueError(
            f"{path} was saved with stream_layers=True (layer streaming is a sampling option); "
            "a training init must be a plain converted checkpoint"
        )


def load_dit_params(path: str, model_config: dit.DiTConfig):
    """Parameters for `model_config` from a converted `dit` directory, fp32.

    A checkpoint with `out_dim` input channels initialising a model with 2 x out_dim (Stage II
    concat from TI2V-5B) gets its patch embedding widened with zeros.
    """
    check_init_checkpoint(path)
    saved, params = checkpoints.load(path, kind="dit")
    if quant.weight_format(params) != "native":  # quantized, but its metadata does not say so
        raise ValueError(
            f"{path} holds {quant.weight_format(params)}-quantized DiT weights, which cannot "
            "initialise training; convert the model again without --quantize"
        )
    saved = dit.DiTConfig.from_dict(saved)
    for field in _ARCHITECTURE_FIELDS:
        if getattr(saved, field) != getattr(model_config, field):
            raise ValueError(
                f"{path}: checkpoint {field}={getattr(saved, field)} but the model config has "
                f"{getattr(model_config, field)}; pick the matching model preset"
            )
    if saved.in_dim != model_config.in_dim:
        if not (saved.in_dim == saved.out_dim and model_config.in_dim == 2 * saved.out_dim):
            raise ValueError(
                f"{path}: checkpoint in_dim {saved.in_dim} cannot initialise in_dim "
                f"{model_config.in_dim} (only out_dim -> 2 x out_dim widening is supported)"
            )
        params = widen_patch_embedding(params, model_config.in_dim)
    _check_tree(params, dit.abstract_params(model_config), f"checkpoint {path}")
    return jax.tree.map(lambda x: np.asarray(x, np.float32), params)


def init_dit_params(model_config: dit.DiTConfig, init_checkpoint: str | None, seed: int):
    """A converted checkpoint when given, random parameters (tests, tiny runs) otherwise."""
    if init_checkpoint:
        return load_dit_params(init_checkpoint, model_config)
    init = jax.jit(lambda key: dit.init_params(model_config, key))
    return jax.tree.map(np.asarray, init(jax.random.PRNGKey(seed)))
