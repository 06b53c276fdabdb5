"""One optimizer step: a `jax.jit` over the ('data', 'fsdp') mesh (GSPMD).

Gradient rule: the loss is the mean over the noisy-block elements of the WHOLE global batch
(sum of squared errors / global element count), and the gradient is `jax.grad` of exactly
that function of the global arrays. XLA's partitioner inserts the reductions (a reduce-scatter
for FSDP-sharded parameters, an all-reduce over 'data' for replicas); there is no psum or
pmean written by hand to get wrong. tests/training_parallel_check.py proves 8 devices (data
parallel and FSDP) == 1 device == `jax.grad` without a mesh.

Splash attention is the one manual region: its own `shard_map` over the batch, holding only
activations (models/layers.py), so it adds no gradient rule. docs/sharding.md has the layout.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from swifti2v_jax.models import dit
from swifti2v_jax.training import loss as loss_lib
from swifti2v_jax.training import sharding
from swifti2v_jax.training import state as state_lib
from swifti2v_jax.training.state import TrainState


def identity_compose(trainable, frozen):
    del frozen
    return trainable


def example_keys(state: TrainState, batch_size: int) -> jax.Array:
    """One key per example from its index in the global batch (device-count independent)."""
    step_key = jax.random.fold_in(state.rng, state.step)
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(batch_size))


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
    """-> jitted `step(state, batch, frozen) -> (state, {'loss', 'grad_norm', 'nonfinite'})`
    (a non-finite step keeps the previous parameters: state.guard_nonfinite).

    `state` must be placed with `state_specs`, `frozen` (a frozen backbone, or {}) with
    `frozen_specs`, and `batch` with `sharding.batch_sharding(mesh)`. `compose(trainable,
    frozen)` builds the model parameters (LoRA merge, or identity). The state is donated.
    """
    model = dit.WanDiT(model_config)
    frozen_specs = {} if frozen_specs is None else frozen_specs
    state_shardings = sharding.shardings(state_specs, mesh)
    param_shardings = state_shardings.params

    def apply_fn(params, model_input, timesteps, context, positions, mask):
        return model.apply({"params": params}, model_input, timesteps, context, positions, mask)

    def step(state: TrainState, batch, frozen):
        # The models read the mesh from here for sharding hints and splash's shard_map.
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            keys = example_keys(state, batch["latents"].shape[0])
            batch = loss_lib.with_clean_leading_frames(batch, keys, loss_config)
            count = loss_lib.noisy_element_count(batch, loss_config)

            def loss_fn(trainable):
                params = compose(trainable, frozen)
                total = loss_lib.squared_error_sum(apply_fn, params, batch, keys, loss_config)
                return total / count

            loss, grads = jax.value_and_grad(loss_fn)(state.params)
            # Gradients in their parameter's layout: FSDP leaves come back reduce-scattered.
            grads = jax.lax.with_sharding_constraint(grads, param_shardings)
            grad_norm = optax.global_norm(grads)
            new_state = state_lib.apply_gradients(
                state, grads, grad_norm, optimizer, grad_clip, ema_decay
            )
            new_state, nonfinite = state_lib.guard_nonfinite(state, new_state, loss, grad_norm)
        return new_state, {"loss": loss, "grad_norm": grad_norm, "nonfinite": nonfinite}

    replicated = NamedSharding(mesh, P())
    return jax.jit(
        step,
        in_shardings=(
            state_shardings,
            sharding.batch_sharding(mesh),
            sharding.shardings(frozen_specs, mesh),
        ),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def state_specs_for(abstract_state: TrainState, mesh, fsdp: bool, min_size: int) -> TrainState:
    """Specs for a TrainState: params, moments and EMA per the FSDP rule, scalars replicated."""
    return TrainState(
        step=P(),
        params=sharding.tree_specs(abstract_state.params, mesh, fsdp, min_size),
        opt_state=sharding.tree_specs(abstract_state.opt_state, mesh, fsdp, min_size),
        ema_params=sharding.tree_specs(abstract_state.ema_params, mesh, fsdp, min_size),
        rng=P(),
    )
