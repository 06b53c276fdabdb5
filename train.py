"""Trains SwiftI2V Stage II, the Stage I LoRA or the demo models (DiT or VAE) from a config.

    python train.py --config=configs/stage2.py:tiny --workdir /tmp/swifti2v-tiny
    python train.py --config=configs/stage2.py --workdir gs://... \
        --config.init_checkpoint=CONVERTED/dit --config.data.path=PREPARED

The DiT task is training/dit_training.py, the demo VAE's (`stage = 'vae'`) vae_training.py;
both run on the loop of training/loop.py, which resumes from WORKDIR's newest checkpoint,
saves and exits 0 on SIGTERM and exports WORKDIR/model. Several hosts run the same command
(docs/sharding.md, "Several processes"). A configuration problem is one line on stderr.
"""

from __future__ import annotations

# First, so that Ctrl-C or SIGTERM during the slow imports below stops at once (docs/faults.md).
from swifti2v_jax import startup  # noqa: F401

# isort: split
import logging as std_logging
from pathlib import Path

import jax
from absl import flags, logging
from ml_collections import config_flags

from swifti2v_jax import cli, launch
from swifti2v_jax.training import dit_training, vae_training

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "a config file with get_config(preset): configs/stage2.py[:preset]"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics and event files go here")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}")
    # Orbax logs every checkpoint phase at INFO: keep its warnings and errors only.
    logging.get_absl_handler().addFilter(
        lambda r: r.levelno >= std_logging.WARNING or "/orbax/" not in r.pathname
    )
    config = cli.config_value(_CONFIG, "train.py")
    workdir = Path(_WORKDIR.value)
    if workdir.exists() and not workdir.is_dir():
        raise cli.UserError(f"--workdir {workdir} exists and is not a directory")
    launch.initialize(config.get("distributed", False))  # joins the other processes, if any
    is_vae = config.get("stage") == "vae"
    if is_vae and jax.process_count() > 1:
        raise cli.UserError("the VAE stage trains on one process (training/vae_training.py)")
    # A run stopped (error, signal) before its first checkpoint leaves no half-made workdir.
    checkpoints = workdir / "checkpoints"
    has_checkpoint = lambda: (
        checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    )
    with cli.new_outputs(workdir, keep=has_checkpoint):
        (vae_training if is_vae else dit_training).train(config, workdir)


if __name__ == "__main__":
    # ValueError: a configuration or data problem (one line, no traceback).
    cli.run(main, prog="train.py", user_errors=(ValueError,), absl_flags=True)
