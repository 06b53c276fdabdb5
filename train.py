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
"""

from __future__ import annotations

import logging as std_logging
import time
from pathlib import Path

import jax
from absl import flags, logging
from ml_collections import config_flags

from swifti2v_jax import checkpoints, cli
from swifti2v_jax.training import checkpointing, experiment, metrics, optim, sharding, vae_training
from swifti2v_jax.training import state as state_lib
from swifti2v_jax.training import step as step_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "a config file with get_config(preset): configs/stage2.py[:preset]"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics and event files go here")
flags.mark_flags_as_required(["config", "workdir"])
MODEL_DIR = "model"  # WORKDIR/model: the finished run's model directory


def train(config, workdir: Path) -> int:
    """The training loop; returns the last step reached."""
    # --- everything a user can get wrong is checked here, before compiling or loading weights
    model_config = experiment.model_config(config)
    loss_config = experiment.loss_config(config)
    opt_config = experiment.optimizer_config(config)
    experiment.check_model_against_loss(model_config, loss_config)
    experiment.check_init(config)
    if config.num_steps < 1 or config.log_every < 1 or config.checkpoint.every < 1:
        raise ValueError("num_steps, log_every and checkpoint.every must be >= 1")
    mesh = sharding.make_mesh(config.mesh.num_devices)
    per_host_batch = experiment.check_batch(config, mesh)
    source, data_info = experiment.make_source(config)
    experiment.check_data_against_model(data_info, model_config, config)
    experiment.check_windows(config, data_info)
    logging.info(
        "mesh %s (fsdp=%s), global batch %d, %d process(es)",
        dict(mesh.shape), config.mesh.fsdp, config.batch_size, jax.process_count(),
    )  # fmt: skip

    # --- state layout, then restore or initialise
    optimizer = optim.make_optimizer(opt_config, config.num_steps)
    schedule = optim.learning_rate_schedule(opt_config, config.num_steps)
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

    data = experiment.make_loader(config, source, data_info, per_host_batch)
    data_iterator = iter(data)
    checkpointer = checkpointing.Checkpointer(
        workdir / "checkpoints", keep=config.checkpoint.keep, use_async=config.checkpoint.use_async
    )
    latest = checkpointer.latest_step()
    if latest is not None:
        logging.info("resuming from the checkpoint at step %d", latest)
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            state_shardings,
        )
        state = checkpointer.restore(latest, target, data_iterator)
    else:
        params = experiment.place(parameters.load_trainable(), state_specs.params, mesh)
        state = jax.jit(create, out_shardings=state_shardings)(params)
    step = int(jax.device_get(state.step))

    train_step = step_lib.make_train_step(
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
    writer = metrics.MetricsWriter(workdir)
    watcher = checkpointing.PreemptionWatcher(checkpointer, multi_host=jax.process_count() > 1)
    tokens = experiment.tokens_per_example(data_info, model_config, config) * config.batch_size
    last_time, last_step = time.time(), step

    # --- the loop
    while step < config.num_steps:
        batch = sharding.global_batch(next(data_iterator), mesh)
        state, step_metrics = train_step(state, batch, frozen)
        step += 1
        if step % config.log_every == 0 or step == config.num_steps:
            values = jax.device_get(step_metrics)
            elapsed = max(time.time() - last_time, 1e-9)
            steps_done = step - last_step
            writer.write(
                step,
                {
                    "loss": values["loss"],
                    "grad_norm": values["grad_norm"],
                    "learning_rate": schedule(step - 1),
                    "samples_per_sec": steps_done * config.batch_size / elapsed,
                    "tokens_per_sec": steps_done * tokens / elapsed,
                },
            )
            last_time, last_step = time.time(), step
        if step % config.checkpoint.every == 0 or step == config.num_steps:
            checkpointer.save(step, state, data_iterator)
        if watcher.should_stop(step):
            checkpointer.save(step, state, data_iterator)
            logging.warning("preempted: saved the checkpoint at step %d, stopping", step)
            break

    checkpointer.close()  # waits for the last async save to be complete on disk
    watcher.close()
    writer.close()
    logging.info("done at step %d (checkpoints in %s)", step, checkpointer.directory)
    if step >= config.num_steps:
        export_model(workdir / MODEL_DIR, state, parameters, model_config, use_ema, step)
    return step


def export_model(out_dir: Path, state, parameters, model_config, use_ema: bool, step: int):
    """WORKDIR/model: the finished run's DiT (EMA if kept, LoRA merged) as a model directory
    that sample.py loads (--config.checkpoints.stage2=...)."""
    if out_dir.exists():
        logging.info("%s exists: not exporting again", out_dir)
        return
    if jax.process_count() > 1:  # FSDP shards live on other hosts: use the Orbax checkpoint
        logging.info("multi-host run: no %s export (sample from the Orbax checkpoint)", out_dir)
        return
    trainable = jax.device_get(state.ema_params if use_ema else state.params)
    params = jax.device_get(parameters.compose(trainable, parameters.frozen))
    checkpoints.save(out_dir, "dit", model_config.to_dict(), params, trained_steps=step)
    logging.info("exported the trained model to %s", out_dir)


class _QuietOrbax(std_logging.Filter):
    """Orbax logs every checkpoint phase at INFO; keep its warnings and errors only."""

    def filter(self, record):
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietOrbax())
    config = cli.config_value(_CONFIG, "train.py")
    workdir = Path(_WORKDIR.value)
    if workdir.exists() and not workdir.is_dir():
        raise cli.UserError(f"--workdir {workdir} exists and is not a directory")
    if config.get("distributed", False):
        jax.distributed.initialize()
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
