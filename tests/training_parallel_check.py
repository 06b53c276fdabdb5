"""Data-parallel / FSDP equivalence, run as a script with 8 forced host devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python tests/training_parallel_check.py [--lora]

Trains the tiny Stage II model (or, with --lora, the tiny Stage I LoRA) for a few steps on the
same global batches with: 1 device, 8 devices data-parallel, 8 devices FSDP, a 2 x 4
('data' x 'fsdp') mesh, plus a reference that takes the gradient of the global-batch loss
directly without any mesh. The 1-device run
then keeps training on its first batch (overfitting check). Prints one JSON object of losses,
gradient norms and max parameter differences; tests/test_training.py asserts on it.
(A script, not a test module: the device-count flag must be set before jax initialises.)
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from configs import stage1_lora, stage2  # noqa: E402
from swifti2v_jax.models import dit  # noqa: E402
from swifti2v_jax.training import dit_training, experiment, sharding  # noqa: E402
from swifti2v_jax.training import loss as loss_lib  # noqa: E402
from swifti2v_jax.training import state as state_lib  # noqa: E402

STEPS = 3
OVERFIT_STEPS = 150


def batches(config, count):
    source, info = experiment.make_source(config)
    loader = experiment.make_loader(config, source, info, config.batch_size)
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def run(config, num_devices, fsdp, host_batches, parameters, overfit_steps=0, data_size=1):
    config = config.copy_and_resolve_references()
    config.mesh.fsdp = fsdp
    program = dit_training.build_program(
        config, sharding.make_mesh(num_devices, fsdp, data_size), parameters
    )
    state = program.init_state()
    losses, norms = [], []
    for host_batch in host_batches:
        state, metrics = program.train_step(state, host_batch)
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    host_state = jax.tree.map(np.asarray, jax.device_get(state))
    # Overfitting: the same first batch again and again (the compiled step is reused).
    overfit = []
    for _ in range(overfit_steps):
        state, metrics = program.train_step(state, host_batches[0])
        overfit.append(float(metrics["loss"]))
    specs = jax.tree.leaves(program.state_specs.params)
    sharded = sum(1 for s in specs if sharding.sharded_axis(s) is not None)
    return losses, norms, host_state, sharded, overfit


def reference_first_step(config, host_batch):
    """Loss and gradient norm of the global batch, no mesh."""
    model_config = experiment.model_config(config)
    loss_config = experiment.loss_config(config)
    model = dit.WanDiT(model_config)
    params = state_lib.init_dit_params(model_config, None, config.seed)
    state = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=None, opt_state=None, ema_params=None,
        rng=jax.random.PRNGKey(config.seed + 1),
    )  # fmt: skip
    step_key = jax.random.fold_in(state.rng, state.step)
    batch_size = host_batch["latents"].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(batch_size))
    batch = {k: jnp.asarray(v) for k, v in host_batch.items()}
    apply_fn = lambda p, *args: model.apply({"params": p}, *args)

    def mean_loss(p):
        total = loss_lib.squared_error_sum(apply_fn, p, batch, keys, loss_config)
        return total / loss_lib.noisy_element_count(batch)

    loss, grads = jax.jit(jax.value_and_grad(mean_loss))(params)
    return float(loss), float(optax_global_norm(grads))


def optax_global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def max_diff(a, b):
    diffs = [float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return max(diffs, default=0.0)


def compare(config, host_batches, with_dp: bool = True, overfit_steps: int = 0):
    """1 device vs 8 devices data-parallel (optional) vs 8 devices FSDP."""
    parameters = experiment.make_parameters(config, experiment.model_config(config))
    initial = parameters.load_trainable()
    runs = {"1": run(config, 1, False, host_batches, parameters, overfit_steps)}
    if with_dp:
        runs["dp8"] = run(config, 8, False, host_batches, parameters)
    runs["fsdp8"] = run(config, 8, True, host_batches, parameters)
    runs["mesh2x4"] = run(config, 8, True, host_batches, parameters, data_size=2)
    out = {"fsdp_sharded_leaves": runs["fsdp8"][3], "overfit_losses": runs["1"][4]}
    for name, (losses, norms, final, _, _) in runs.items():
        out[f"loss_{name}"], out[f"grad_norm_{name}"] = losses, norms
        if name != "1":
            one = runs["1"][2]
            out[f"param_diff_{name}_vs_1"] = max_diff(final.params, one.params)
            out[f"opt_diff_{name}_vs_1"] = max_diff(final.opt_state, one.opt_state)
            out[f"ema_diff_{name}_vs_1"] = max_diff(final.ema_params, one.ema_params)
    if with_dp:
        fsdp, dp = runs["fsdp8"][2], runs["dp8"][2]
        out["param_diff_fsdp8_vs_dp8"] = max_diff(fsdp.params, dp.params)
        out["opt_diff_fsdp8_vs_dp8"] = max_diff(fsdp.opt_state, dp.opt_state)
        out["ema_diff_fsdp8_vs_dp8"] = max_diff(fsdp.ema_params, dp.ema_params)
    out["param_change"] = max_diff(runs["1"][2].params, initial)
    return out


def lower_ti2v_5b(attention_backend=None):
    """Lowers (does not compile) the real Stage II step: TI2V-5B concat, FSDP over 8 devices,
    a 2K window (W = 5 blocks of 88 x 160 latents). Returns the state bytes per device."""
    config = stage2.get_config("ti2v_5b")
    config.model_overrides.attention_backend = attention_backend
    program = dit_training.build_program(config, sharding.make_mesh(8, fsdp=True))
    batch = dit_training.abstract_batch(program, 8, window=5, latent_hw=(88, 160), text_len=512)
    program.step.lower(program.abstract_state, batch, program.frozen)
    abstract, specs = program.abstract_state, program.state_specs

    def nbytes(tree, spec_tree):
        total = 0
        for x, spec in zip(jax.tree.leaves(tree), jax.tree.leaves(spec_tree)):
            size = int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
            total += size // 8 if sharding.sharded_axis(spec) is not None else size
        return total

    full = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(abstract))
    return {
        "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params)),
        "state_bytes_total": full,
        "state_bytes_per_device": nbytes(abstract, specs),
    }


def main():
    assert jax.device_count() == 8, f"need 8 devices, got {jax.device_count()}"
    result = {}
    if "--lora" in sys.argv:
        config = stage1_lora.get_config("tiny")
        config.num_steps = STEPS
        result["stage1_lora"] = compare(config, batches(config, STEPS), with_dp=False)
    else:
        config = stage2.get_config("tiny")
        config.num_steps = STEPS + OVERFIT_STEPS  # the learning-rate schedule's length
        config.loss.anchor_dropout = 0.5
        config.optimizer.learning_rate = 3e-3
        host_batches = batches(config, STEPS)
        result["stage2"] = compare(config, host_batches, overfit_steps=OVERFIT_STEPS)
        loss, norm = reference_first_step(config, host_batches[0])
        result["stage2"].update(reference_loss=loss, reference_grad_norm=norm)
        result["ti2v_5b"] = lower_ti2v_5b("xla")
        try:  # chunked (custom_vjp); the shipped splash lowers for TPU only (test_aot.py)
            lower_ti2v_5b("chunked")
            result["ti2v_5b"]["default_attention_lowers"] = True
        except Exception as error:  # reported, asserted by an xfail test
            result["ti2v_5b"]["default_attention_lowers"] = False
            result["ti2v_5b"]["default_attention_error"] = str(error)[:500]
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
