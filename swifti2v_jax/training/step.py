"""One optimizer step, data-parallel under `jax.shard_map` over the 'data' mesh axis.

Gradient reduction (checked on jax 0.10.2; docs/design.md, "Gradient reduction"): inside
shard_map the gradient of a device-local loss with respect to a replicated parameter comes back
already summed over the axis, and through an FSDP all_gather it comes back reduce-scattered
(summed, then sliced). So the local loss is the local squared-error sum divided by the GLOBAL
element count: the summed gradient is then exactly the gradient of the global mean, and no pmean
is added on top (that would multiply it by the device count). tests/training_parallel_check.py
proves 8 devices == 1 device.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from swifti2v_jax.models import dit
from swifti2v_jax.training import loss as loss_lib
from swifti2v_jax.training import sharding
from swifti2v_jax.training import state as state_lib
from swifti2v_jax.training.state import TrainState


def identity_compose(trainable, frozen):
    del frozen
    return trainable


def example_keys(state: TrainState, local_batch: int) -> jax.Array:
    """One key per example from its index in the global batch (device-count independent)."""
    step_key = jax.random.fold_in(state.rng, state.step)
    first = jax.lax.axis_index(sharding.DATA) * local_batch
    indices = first + jnp.arange(local_batch)
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(indices)


def make_train_step(
    *,
    model_config: dit.DiTConfig,
    loss_config: loss_lib.LossConfig,
    optimizer: optax.GradientTransformation,
    grad_clip: float,
    ema_decay: float,
    mesh,
    state_specs: TrainState,
    frozen_specs=None,
    compose: Callable = identity_compose,
):
    """-> jitted `step(state, batch, frozen) -> (state, {'loss', 'grad_norm'})`.

    `state` must be placed with `state_specs`, `frozen` (a frozen backbone, or {}) with
    `frozen_specs`, and `batch` split over 'data' on its leading axis. `compose(trainable,
    frozen)` builds the model parameters from the gathered trees (LoRA merge, or identity).
    """
    model = dit.WanDiT(model_config)
    param_specs = state_specs.params
    frozen_specs = {} if frozen_specs is None else frozen_specs

    def apply_fn(params, model_input, timesteps, context, positions, mask):
        return model.apply({"params": params}, model_input, timesteps, context, positions, mask)

    def local_step(state: TrainState, batch, frozen):
        keys = example_keys(state, batch["latents"].shape[0])
        count = jax.lax.psum(loss_lib.noisy_element_count(batch), sharding.DATA)
        frozen_full = sharding.gather(frozen, frozen_specs)

        def loss_fn(trainable):
            params = compose(sharding.gather(trainable, param_specs), frozen_full)
            total = loss_lib.squared_error_sum(apply_fn, params, batch, keys, loss_config)
            return total / count

        local_loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grad_norm = jnp.sqrt(sharding.global_sum_of_squares(grads, param_specs))
        new_state = state_lib.apply_gradients(
            state, grads, grad_norm, optimizer, grad_clip, ema_decay
        )
        metrics = {"loss": jax.lax.psum(local_loss, sharding.DATA), "grad_norm": grad_norm}
        return new_state, metrics

    mapped = jax.shard_map(
        local_step,
        mesh=mesh,
        in_specs=(state_specs, P(sharding.DATA), frozen_specs),
        out_specs=(state_specs, P()),
    )
    return jax.jit(mapped, donate_argnums=(0,))


def state_specs_for(abstract_state: TrainState, mesh, fsdp: bool, min_size: int) -> TrainState:
    """Specs for a TrainState: params, moments and EMA per the FSDP rule, scalars replicated."""
    return TrainState(
        step=P(),
        params=sharding.tree_specs(abstract_state.params, mesh, fsdp, min_size),
        opt_state=sharding.tree_specs(abstract_state.opt_state, mesh, fsdp, min_size),
        ema_params=sharding.tree_specs(abstract_state.ema_params, mesh, fsdp, min_size),
        rng=P(),
    )
