"""Model directories on disk: an Orbax parameter tree plus the model config as JSON.

This is the *model* format (what `python -m conversion` writes, sample.py loads and a finished
training run exports to WORKDIR/model). Resumable *training* state (optimizer, EMA, step, data
iterator) is a different thing: training/checkpointing.py.

Layout of a converted model directory::

    DIR/config.json   {"kind": "dit" | "vae" | "t5", "config": {...}, ...extra metadata}
    DIR/params/       Orbax StandardCheckpointer tree of numpy arrays

`save` writes into a temporary sibling and renames it into place, so a crash or an error
never leaves a directory that `load` would take for a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from swifti2v_jax import cli, leftovers
from swifti2v_jax.models import quant

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or of the wrong kind."""


def _to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def write_model_dir(path: str | os.PathLike, kind: str, config: dict, params, **metadata) -> None:
    """Writes `params` and `config` into `path` (which must not exist yet), non-atomically.

    Callers that need atomicity write into a temporary directory and rename (see `save`).
    """
    check_finite(params, path)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=False)
    with open(path / CONFIG_FILE, "w") as f:
        json.dump({"kind": kind, "config": config, **metadata}, f, indent=2, sort_keys=True)
    # Host arrays written by this process alone (no barrier with the others of a multi-host run).
    alone = ocp.options.MultiprocessingOptions(jax.process_index(), {jax.process_index()})
    checkpointer = ocp.StandardCheckpointer(multiprocessing_options=alone)
    checkpointer.save((path / PARAMS_DIR).absolute(), _to_numpy(params))
    checkpointer.wait_until_finished()
    checkpointer.close()


def check_finite(params, where) -> None:
    """Refuses to write a model holding NaN or infinity (a diverged run; docs/faults.md)."""
    for key, leaf in jax.tree_util.tree_leaves_with_path(params):
        array = np.asarray(leaf)
        if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
            continue
        bad = np.size(array) - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise CheckpointError(
                f"refusing to write {where}: parameter {jax.tree_util.keystr(key)} holds {bad} "
                f"non-finite value(s) of {np.size(array)}"
            )


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, error: type[Exception] = CheckpointError):
    """Yields a path beside `path` to write a whole directory into; renames it into place at
    the end, so readers never see a half-written one. Refuses to overwrite (`error`)."""
    path = Path(path).absolute()
    exists = f"{path} already exists; remove it or choose another output path"
    if path.exists():
        raise error(exists)
    path.parent.mkdir(parents=True, exist_ok=True)
    leftovers.remove_stale(path.parent, leftovers.temp_pattern(path), "temporary folder(s)")
    tmp = Path(tempfile.mkdtemp(prefix=f"{leftovers.temp_name(path)}-", dir=path.parent))
    forget = cli.on_hard_exit(lambda: shutil.rmtree(tmp, ignore_errors=True))
    try:
        yield tmp / path.name
        try:
            os.replace(tmp / path.name, path)
        except OSError:
            if path.exists():  # another process finished first
                raise error(exists) from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        forget()


def save(path: str | os.PathLike, kind: str, config: dict, params, **metadata) -> Path:
    """Atomically writes a model directory; refuses to overwrite an existing one."""
    with atomic_directory(path) as staging:
        write_model_dir(staging, kind, config, params, **metadata)
    return Path(path).absolute()


def read_metadata(path: str | os.PathLike) -> dict:
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file() or not (path / PARAMS_DIR).is_dir():
        raise CheckpointError(
            f"{path} is not a converted swifti2v-jax model directory (expected {CONFIG_FILE} and "
            f"{PARAMS_DIR}/); convert the PyTorch weights first with `python -m conversion`"
        )
    with open(config_file) as f:
        return json.load(f)


def load(
    path: str | os.PathLike, kind: str | None = None, quantize: str = "native"
) -> tuple[dict, Any]:
    """Returns (config dict, params pytree of numpy arrays) of a converted model directory.

    quantize: 'int8' / 'fp8' quantizes a DiT's block kernels on the host as it loads
    (models/quant.py), giving the same tree as a checkpoint converted with `--quantize`;
    an already quantized checkpoint loads as it is when its format is the one asked for.
    """
    path = Path(path).absolute()
    meta = read_metadata(path)
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {meta.get('kind')!r} model, expected {kind!r}")
    if quant.check_format(quantize) != "native" and meta.get("kind") != "dit":
        raise CheckpointError(f"quantize={quantize!r} applies to DiT checkpoints, not {path}")
    if not (path / PARAMS_DIR / "_METADATA").is_file():
        raise CheckpointError(
            f"{path / PARAMS_DIR / '_METADATA'} is missing: the model directory is incomplete "
            "or damaged; convert or export it again"
        )
    checkpointer = ocp.StandardCheckpointer()
    params = checkpointer.restore(path / PARAMS_DIR)
    checkpointer.close()
    params = _to_numpy(params)
    stored = quant.weight_format(params)
    if quantize != "native" and stored != quantize:
        if stored != "native":
            raise CheckpointError(f"{path} holds {stored} weights; it cannot load as {quantize}")
        params = quant.quantize_params(params, quantize)
    return meta["config"], params
