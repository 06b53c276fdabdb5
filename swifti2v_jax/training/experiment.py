"""Everything train.py builds from its ml_collections config, in small testable pieces.

Config layout (configs/stage2.py, configs/stage1_lora.py): `model` (a presets/dit.py name)
+ `model_overrides`, `init_checkpoint`, `lora`, `loss`, `csg`, `optimizer`, `data`, `mesh`,
`checkpoint`, `batch_size` (global), `num_steps`, `text_len`, `seed`, `log_every`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from absl import logging

from swifti2v_jax import config_fields
from swifti2v_jax.csg import contract, layout
from swifti2v_jax.data import loader as loader_lib
from swifti2v_jax.data import prepare, records, synthetic
from swifti2v_jax.models import dit
from swifti2v_jax.presets import dit as dit_presets
from swifti2v_jax.training import lora, optim, sharding
from swifti2v_jax.training import loss as loss_lib
from swifti2v_jax.training import state as state_lib
from swifti2v_jax.training import step as step_lib
from swifti2v_jax.training.loss import LossConfig


def model_config(config) -> dit.DiTConfig:
    return dit_presets.config(config.model, **config.model_overrides)


def loss_config(config) -> LossConfig:
    return config_fields.from_fields(LossConfig, config.loss, "loss")


def optimizer_config(config) -> optim.OptimizerConfig:
    return config_fields.from_fields(optim.OptimizerConfig, config.optimizer, "optimizer")


def window_spec(config) -> loader_lib.WindowSpec:
    """The `csg` section (the window layout and generated_neighbours) + text_len."""
    fields = {**config_fields.as_dict(config.csg), "text_len": config.text_len}
    return config_fields.from_fields(loader_lib.WindowSpec, fields, "csg")


def trained_with(config, info: DataInfo) -> contract.TrainedWith:
    """The sampling contract the export writes beside the model config (csg/contract.py)."""
    window = window_spec(config)
    statistics = {k: tuple(v) for k, v in (info.latent_statistics or {}).items()}
    return contract.TrainedWith(
        conditioning=loss_config(config).conditioning,
        noisy_blocks=window.noisy_blocks,
        neighbours=window.neighbours,
        end_to_end=window.end_to_end,
        text_len=window.text_len,
        latents_mean=statistics.get("latents_mean"),
        latents_std=statistics.get("latents_std"),
    )


def check_model_against_loss(model: dit.DiTConfig, loss: LossConfig) -> None:
    loss_lib.check_model(model.in_dim, model.out_dim, loss)


# ---------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass(frozen=True)
class DataInfo:
    num_records: int
    num_blocks: int
    latent_hw: tuple[int, int]
    channels: int
    text_dim: int
    synthetic: bool
    latent_statistics: dict | None = None  # dataset.json's (csg/contract.py DATASET_KEY)


def make_source(config):
    """-> (grain random-access source, DataInfo).

    `data.path`: shards from prepare.py; `data.tfds_dir`: a dataset prepared by the tfds
    builder (its version folder); neither: synthetic records.
    """
    if config.data.path and config.data.tfds_dir:
        raise ValueError("set config.data.path or config.data.tfds_dir, not both")
    is_synthetic = False
    if config.data.path:
        source = loader_lib.array_record_source(config.data.path)
        logging.info("training data: %d records from %s", len(source), config.data.path)
    elif config.data.tfds_dir:
        source = loader_lib.tfds_source(config.data.tfds_dir)
        logging.info("training data: %d tfds records from %s", len(source), config.data.tfds_dir)
    else:
        spec = synthetic.SyntheticSpec(**config.data.synthetic.to_dict())
        source = synthetic.SyntheticSource(spec)
        is_synthetic = True
        logging.warning(
            "no data path configured (config.data.path): training on SYNTHETIC data "
            "(swifti2v_jax/data/synthetic.py, %d random clips); prepare real data with "
            "`python -m swifti2v_jax.data.prepare`",
            len(source),
        )
    if len(source) == 0:
        raise ValueError("the training data set is empty")
    first = records.as_record(source[0])
    if window_spec(config).generated_neighbours > 0 and "generated" not in first:
        raise ValueError(
            "csg.generated_neighbours > 0 needs records with the model's own output: add it "
            "with `python -m swifti2v_jax.data.rollout` and train on that folder"
        )
    num_blocks, h, w, channels = first["latents"].shape
    saved = prepare.read_dataset_info(config.data.path) if config.data.path else None
    if saved is not None and saved["num_blocks"] != num_blocks:
        raise ValueError(f"{config.data.path}: dataset.json disagrees with its records")
    info = DataInfo(
        len(source), num_blocks, (h, w), channels, first["context"].shape[1], is_synthetic,
        latent_statistics=(saved or {}).get(contract.DATASET_KEY),
    )  # fmt: skip
    return source, info


def check_data_against_model(info: DataInfo, model: dit.DiTConfig, config) -> None:
    _, ph, pw = model.patch_size
    problems = []
    if info.channels != model.out_dim:
        problems.append(f"latents have {info.channels} channels, the model {model.out_dim}")
    if info.text_dim != model.text_dim:
        problems.append(f"text embeddings have {info.text_dim} dims, the model {model.text_dim}")
    if info.latent_hw[0] % ph or info.latent_hw[1] % pw:
        problems.append(f"latent size {info.latent_hw} is not divisible by the patch {ph}x{pw}")
    if not config.csg.end_to_end and info.num_blocks < 2:
        problems.append("clips need at least 2 latent blocks")
    if problems:
        raise ValueError("data and model do not fit: " + "; ".join(problems))


def tokens_per_example(info: DataInfo, model: dit.DiTConfig, config) -> int:
    window = window_spec(config).window_size(info.num_blocks)
    _, ph, pw = model.patch_size
    return window * (info.latent_hw[0] // ph) * (info.latent_hw[1] // pw)


def make_loader(config, source, info: DataInfo, batch_size: int, rows=None):
    """Global batches of `batch_size`; `rows`: this process's rows of each (None: all)."""
    return loader_lib.make_loader(
        source,
        batch_size=batch_size,
        rows=rows,
        window=window_spec(config),
        seed=config.data.seed,
        worker_count=config.data.worker_count,
        expected_blocks=info.num_blocks,
    )


# ---------------------------------------------------------------------------------------------
# Parameters


@dataclasses.dataclass
class Parameters:
    """The trainable tree (or its abstract shapes), the frozen tree and how to combine them."""

    abstract_trainable: Any
    load_trainable: Any  # () -> host (numpy) trainable params, called only without a checkpoint
    frozen: Any  # host tree ({} without LoRA)
    compose: Any


def check_init(config) -> None:
    if not config.init_checkpoint and not config.allow_random_init:
        raise ValueError(
            f"the {config.model} model trains from a converted checkpoint: set "
            "--config.init_checkpoint=CONVERTED/dit (python -m conversion), or "
            "--config.allow_random_init=True to start from random weights"
        )
    if config.init_checkpoint:
        state_lib.check_init_checkpoint(config.init_checkpoint)


def check_windows(config, info: DataInfo) -> None:
    if not config.csg.end_to_end:
        layout.validate(info.num_blocks, config.csg.noisy_blocks, config.csg.neighbours)


def make_parameters(config, model: dit.DiTConfig) -> Parameters:
    init = functools.partial(
        state_lib.init_dit_params, model, config.init_checkpoint or None, config.seed
    )
    if not config.lora.enabled:
        return Parameters(
            abstract_trainable=dit.abstract_params(model),
            load_trainable=init,
            frozen={},
            compose=step_lib.identity_compose,
        )
    base = init()
    key = jax.random.PRNGKey(config.seed + 2)
    targets = config.lora.targets or lora.DEFAULT_TARGETS
    make_adapters = lambda: lora.init_lora(base, key, config.lora.rank, targets)
    logging.info(
        "LoRA rank %d on %d kernels", config.lora.rank, len(lora.target_paths(base, targets))
    )
    alpha, rank = float(config.lora.alpha), int(config.lora.rank)
    return Parameters(
        abstract_trainable=jax.eval_shape(make_adapters),
        load_trainable=lambda: jax.tree.map(np.asarray, make_adapters()),
        frozen=base,
        compose=lambda adapters, frozen: lora.merge(adapters, frozen, alpha, rank),
    )


def place(tree, specs, mesh):
    """Host arrays -> global arrays laid out per `specs` (each device only gets its slice)."""

    def one(x, spec):
        x = np.asarray(x)
        named = jax.sharding.NamedSharding(mesh, spec)
        return jax.make_array_from_callback(x.shape, named, lambda index: x[index])

    return jax.tree.map(one, tree, specs)


def resolve_batch_size(config, mesh) -> None:
    """batch_size = -1 means `batch_per_device` x the mesh size: written into the config."""
    if config.batch_size == -1:
        per_device = config.get("batch_per_device", 1)
        if per_device < 1:
            raise ValueError(f"batch_per_device must be >= 1, got {per_device}")
        config.batch_size = per_device * mesh.size


def check_batch(config, mesh) -> tuple[int, ...]:
    """This process's rows of the global batch (batch_size >= 1 is loop.check_config's
    rule)."""
    return sharding.check_batch_size(config.batch_size, mesh)
