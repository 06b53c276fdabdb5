"""DiT training (Stage II, the Stage I LoRA, the demo DiTs) as a `loop.Task`; train.py runs it.

`build_program(config, mesh)` is the state layout and the jitted step (no data, no weights
read): the AOT benchmark lowers it at 2K, the data-parallel check runs it on several meshes.
`build_task(config, mesh)` adds the checks, the data and the export; `train` runs the loop.
The config layout is training/experiment.py's; the sharding is docs/sharding.md's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from jax.experimental import multihost_utils

from swifti2v_jax import checkpoints
from swifti2v_jax.models import dit
from swifti2v_jax.training import experiment, loop, optim, sharding
from swifti2v_jax.training import state as state_lib
from swifti2v_jax.training import step as step_lib


def make_mesh(config) -> jax.sharding.Mesh:
    """The ('data', 'fsdp') mesh of `config.mesh`."""
    mesh = config.mesh
    return sharding.make_mesh(mesh.num_devices, mesh.fsdp, mesh.get("data_size", 1))


@dataclasses.dataclass
class Program:
    """The training state's layout on a mesh and the step that advances it."""

    model_config: dit.DiTConfig
    parameters: experiment.Parameters
    abstract_state: Any  # TrainState of ShapeDtypeStructs with their shardings
    state_specs: Any  # TrainState of PartitionSpecs
    frozen: Any  # the frozen tree placed on the mesh ({} without LoRA)
    step: Any  # jitted (state, global batch, frozen) -> (state, metrics)
    create: Any  # params on the mesh -> a fresh TrainState
    mesh: jax.sharding.Mesh

    def init_state(self):
        """A fresh state from the initial trainable parameters (loaded only now)."""
        params = experiment.place(
            self.parameters.load_trainable(), self.state_specs.params, self.mesh
        )
        shardings = jax.tree.map(lambda a: a.sharding, self.abstract_state)
        return jax.jit(self.create, out_shardings=shardings)(params)

    def train_step(self, state, host_batch):
        """One step on this process's rows of the global batch."""
        return self.step(state, sharding.global_batch(host_batch, self.mesh), self.frozen)


def build_program(config, mesh, parameters: experiment.Parameters | None = None) -> Program:
    """The state layout and the step of `config` on `mesh`; `parameters`: reuse these
    (experiment.make_parameters) instead of making them from the config."""
    model_config = experiment.model_config(config)
    opt_config = experiment.optimizer_config(config)
    optimizer = optim.make_optimizer(opt_config, config.num_steps)
    if parameters is None:
        parameters = experiment.make_parameters(config, model_config)
    use_ema = opt_config.ema_decay > 0
    create = lambda params: state_lib.create_state(params, optimizer, config.seed, use_ema)
    abstract_state = jax.eval_shape(create, parameters.abstract_trainable)
    fsdp, min_size = config.mesh.fsdp, config.mesh.fsdp_min_size
    state_specs = step_lib.state_specs_for(abstract_state, mesh, fsdp, min_size)
    frozen_specs = sharding.tree_specs(parameters.frozen, mesh, fsdp, min_size)
    step = step_lib.make_train_step(
        model_config=model_config,
        loss_config=experiment.loss_config(config),
        optimizer=optimizer,
        grad_clip=opt_config.grad_clip,
        ema_decay=opt_config.ema_decay,
        mesh=mesh,
        state_specs=state_specs,
        frozen_specs=frozen_specs,
        compose=parameters.compose,
    )
    return Program(
        model_config=model_config,
        parameters=parameters,
        abstract_state=jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            sharding.shardings(state_specs, mesh),
        ),
        state_specs=state_specs,
        frozen=experiment.place(parameters.frozen, frozen_specs, mesh),
        step=step,
        create=create,
        mesh=mesh,
    )


def abstract_batch(
    program: Program, batch_size: int, window: int, latent_hw: tuple[int, int], text_len: int
) -> dict:
    """A global batch of ShapeDtypeStructs (what the loader yields, placed on the mesh): for
    lowering the step without data."""
    on_batch = sharding.batch_sharding(program.mesh)
    config = program.model_config
    latents = (batch_size, window, *latent_hw, config.out_dim)
    shapes = {
        "latents": (latents, jnp.float32),
        "reference": (latents, jnp.float32),
        "positions": ((batch_size, window), jnp.int32),
        "is_noisy": ((batch_size, window), jnp.bool_),
        "context": ((batch_size, text_len, config.text_dim), jnp.float32),
    }
    return {
        name: jax.ShapeDtypeStruct(shape, dtype, sharding=on_batch)
        for name, (shape, dtype) in shapes.items()
    }


def build_task(config, mesh) -> loop.Task:
    """Everything a DiT training run brings to the loop. Everything a user can get wrong is
    checked first, before compiling or reading weights."""
    model_config = experiment.model_config(config)
    experiment.check_model_against_loss(model_config, experiment.loss_config(config))
    experiment.check_init(config)
    experiment.resolve_batch_size(config, mesh)
    loop.check_config(config)
    batch_rows = experiment.check_batch(config, mesh)
    source, data_info = experiment.make_source(config)
    experiment.check_data_against_model(data_info, model_config, config)
    experiment.check_windows(config, data_info)
    logging.info(
        "mesh %s (fsdp=%s), global batch %d, process %d of %d reads rows %s",
        dict(mesh.shape), config.mesh.fsdp, config.batch_size, jax.process_index(),
        jax.process_count(), list(batch_rows),
    )  # fmt: skip

    program = build_program(config, mesh)
    use_ema = experiment.optimizer_config(config).ema_decay > 0
    trained_with = experiment.trained_with(config, data_info)

    def export(state, step: int, out_dir: Path):
        export_model(out_dir, state, program, use_ema, step, trained_with)

    loader = experiment.make_loader(config, source, data_info, config.batch_size, batch_rows)
    tokens = experiment.tokens_per_example(data_info, model_config, config)
    return loop.Task(
        abstract_state=program.abstract_state,
        init_state=program.init_state,
        data_iterator=iter(loader),
        train_step=program.train_step,
        learning_rate=optim.learning_rate_schedule(
            experiment.optimizer_config(config), config.num_steps
        ),
        export=export,
        tokens_per_batch=tokens * config.batch_size,
        multi_host=jax.process_count() > 1,
    )


def export_model(
    out_dir: Path, state, program: Program, use_ema: bool, step: int, trained_with
) -> None:
    """WORKDIR/model: the finished run's DiT (EMA if kept, LoRA merged) as a model directory
    that sample.py loads (--config.checkpoints.stage2=...), with its sampling contract
    (`trained_with`, csg/contract.py) beside the model config."""
    # Every process takes part in the gather (FSDP shards live on all of them); 0 writes.
    trainable = multihost_utils.process_allgather(
        state.ema_params if use_ema else state.params, tiled=True
    )
    if jax.process_index() != 0:
        return
    parameters = program.parameters
    params = jax.device_get(parameters.compose(trainable, parameters.frozen))
    checkpoints.save(
        out_dir, "dit", program.model_config.to_dict(), params, trained_steps=step,
        **trained_with.to_metadata(),
    )  # fmt: skip
    logging.info("exported the trained model to %s", out_dir)


def train(config, workdir: Path) -> int:
    """A DiT training run on the shared loop; returns the last step reached."""
    return loop.run(build_task(config, make_mesh(config)), config, workdir)
