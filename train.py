"""Trains SwiftI2V Stage II (or Stage I: its low-res LoRA, or the demo's full model; or the
demo VAE, `stage = 'vae'` configs, training/vae_training.py).

    python train.py --config=configs/stage2.py:tiny --workdir /tmp/swifti2v-tiny
    python train.py --config=configs/stage2.py --workdir gs://... \
        --config.init_checkpoint=CONVERTED/dit --config.data.path=PREPARED

Running the same command again resumes from the newest complete checkpoint in WORKDIR
(parameters, optimizer, EMA, step, RNG and the data iterator). SIGTERM saves and exits 0;
stopped before its first checkpoint (an error, SIGTERM or Ctrl-C during setup), it removes
what it created in WORKDIR. A configuration problem is one line on stderr (swifti2v_jax/cli.py).
Outputs: WORKDIR/checkpoints (Orbax), WORKDIR/metrics.jsonl, WORKDIR/tb (TensorBoard events).
Several hosts run the same command (`--config.distributed=True` on a Cloud TPU slice, or under
swifti2v_jax/launch.py on one machine); docs/sharding.md ("Several processes").
"""

from __future__ import annotations

# First, so that Ctrl-C or SIGTERM during the slow imports below stops at once (docs/faults.md).
from swifti2v_jax import startup  # noqa: F401

# isort: split
import logging as std_logging
from pathlib import Path

import jax
from absl import flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from swifti2v_jax import checkpoints, cli, launch
from swifti2v_jax.training import experiment, loop, optim, sharding, vae_training
from swifti2v_jax.training import state as state_lib
from swifti2v_jax.training import step as step_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "a config file with get_config(preset): configs/stage2.py[:preset]"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics and event files go here")
flags.mark_flags_as_required(["config", "workdir"])


def train(config, workdir: Path) -> int:
    """A DiT training run (Stage II, Stage I LoRA, the demo DiTs); returns the last step."""
    # --- everything a user can get wrong is checked here, before compiling or loading weights
    model_config = experiment.model_config(config)
    loss_config = experiment.loss_config(config)
    opt_config = experiment.optimizer_config(config)
    experiment.check_model_against_loss(model_config, loss_config)
    experiment.check_init(config)
    mesh = sharding.make_mesh(
        config.mesh.num_devices, config.mesh.fsdp, config.mesh.get("data_size", 1)
    )
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

    # --- state layout (restored or initialised by the loop) and the step
    optimizer = optim.make_optimizer(opt_config, config.num_steps)
    parameters = experiment.make_parameters(config, model_config)
    use_ema = opt_config.ema_decay > 0
    create = lambda params: state_lib.create_state(params, optimizer, config.seed, use_ema)
    abstract_state = jax.eval_shape(create, parameters.abstract_trainable)
    state_specs = step_lib.state_specs_for(
        abstract_state, mesh, config.mesh.fsdp, config.mesh.fsdp_min_size
    )
    state_shardings = sharding.shardings(state_specs, mesh)
    frozen_specs = sharding.tree_specs(
        parameters.frozen, mesh, config.mesh.fsdp, config.mesh.fsdp_min_size
    )
    frozen = experiment.place(parameters.frozen, frozen_specs, mesh)

    def init_state():
        params = experiment.place(parameters.load_trainable(), state_specs.params, mesh)
        return jax.jit(create, out_shardings=state_shardings)(params)

    step_fn = step_lib.make_train_step(
        model_config=model_config,
        loss_config=loss_config,
        optimizer=optimizer,
        grad_clip=opt_config.grad_clip,
        ema_decay=opt_config.ema_decay,
        mesh=mesh,
        state_specs=state_specs,
        frozen_specs=frozen_specs,
        compose=parameters.compose,
    )

    def export(state, step: int, out_dir: Path):
        export_model(out_dir, state, parameters, model_config, use_ema, step)

    task = loop.Task(
        abstract_state=jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            state_shardings,
        ),
        init_state=init_state,
        data_iterator=iter(
            experiment.make_loader(config, source, data_info, config.batch_size, batch_rows)
        ),
        train_step=lambda state, batch: step_fn(state, sharding.global_batch(batch, mesh), frozen),
        learning_rate=optim.learning_rate_schedule(opt_config, config.num_steps),
        export=export,
        tokens_per_batch=experiment.tokens_per_example(data_info, model_config, config)
        * config.batch_size,
        multi_host=jax.process_count() > 1,
    )
    return loop.run(task, config, workdir)


def export_model(out_dir: Path, state, parameters, model_config, use_ema: bool, step: int):
    """WORKDIR/model: the finished run's DiT (EMA if kept, LoRA merged) as a model directory
    that sample.py loads (--config.checkpoints.stage2=...)."""
    # Every process takes part in the gather (FSDP shards live on all of them); 0 writes.
    trainable = multihost_utils.process_allgather(
        state.ema_params if use_ema else state.params, tiled=True
    )
    if jax.process_index() != 0:
        return
    params = jax.device_get(parameters.compose(trainable, parameters.frozen))
    checkpoints.save(out_dir, "dit", model_config.to_dict(), params, trained_steps=step)
    logging.info("exported the trained model to %s", out_dir)


class _QuietOrbax(std_logging.Filter):
    """Orbax logs every checkpoint phase at INFO; keep its warnings and errors only."""

    def filter(self, record):
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietOrbax())
    config = cli.config_value(_CONFIG, "train.py")
    workdir = Path(_WORKDIR.value)
    if workdir.exists() and not workdir.is_dir():
        raise cli.UserError(f"--workdir {workdir} exists and is not a directory")
    # Joins the other processes (swifti2v_jax/launch.py, or a TPU slice with distributed=True).
    launch.initialize(config.get("distributed", False))
    if config.get("stage") == "vae" and jax.process_count() > 1:
        raise cli.UserError("the VAE stage trains on one process (training/vae_training.py)")
    # A run stopped (error, signal) before its first checkpoint leaves no half-made workdir.
    with cli.new_outputs(workdir, keep=lambda: _has_checkpoint(workdir)):
        if config.get("stage") == "vae":
            vae_training.train(config, workdir)
        else:
            train(config, workdir)


def _has_checkpoint(workdir: Path) -> bool:
    directory = workdir / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


if __name__ == "__main__":
    # ValueError: a configuration or data problem (one line, no traceback).
    cli.run(main, prog="train.py", user_errors=(ValueError,), absl_flags=True)
