"""Adds a Stage II model's own output to prepared records, for training on own neighbours.

    python -m swifti2v_jax.data.rollout --data runs/demo/data/stage2 \
        --stage2 runs/demo/stage2/model --out runs/demo/data/stage2_rollout

At sampling time a CSG window's neighbour blocks are what the model generated a segment
earlier, never the true latents it trained with, so its errors are copied forward segment
after segment. This runs CSG over every record (z_ref = its `reference`, anchor = its first
latent block, its caption embedding) with the sampler of a sample preset
(presets/sample.py, the presets of configs/sample.py) and writes
the records again with the result as `generated`; train with
`--config.csg.generated_neighbours=P` to see those neighbours in a fraction P of examples.
The output is written all or nothing (prepare.write_dataset).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax import checkpoints
from swifti2v_jax.data import loader, prepare, records
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.presets import sample as sample_presets
from swifti2v_jax.sampling import orchestrator, stage2
from swifti2v_jax.sampling.config import PipelineConfig, pipeline_config
from swifti2v_jax.sampling.models import ModelSpecs
from swifti2v_jax.sampling.residency import ResidentModels


def generate_clip(params, denoiser: stage2.WindowDenoiser, record, text_len, key):
    """CSG over one record -> generated latents [T, h, w, z] (float32, block 0 = anchor):
    the orchestrator's clip from the record's hybrid reference (z_ref) and anchor on."""
    context = jnp.asarray(records.pad_context(np.asarray(record["context"], np.float32), text_len))
    models = ResidentModels(stage1_dits=(), stage1_vae=None, stage2_dit=params, vae=None)
    specs = ModelSpecs(stage1=None, stage1_vae=None, stage2=denoiser.model_config, vae=None,
                       t5=None)  # fmt: skip
    config = PipelineConfig(stage2=denoiser.config, text_len=text_len)
    clip = orchestrator.run_clip(
        models, specs, config, context=context[None], stage2_key=key, denoiser=denoiser,
        z_ref=jnp.asarray(record["reference"], jnp.float32)[None],
        anchor=jnp.asarray(record["latents"][:1], jnp.float32)[None], until="stage2",
    )  # fmt: skip
    return np.asarray(clip.latents[0])


def rollout(
    data_dir,
    stage2_dir,
    out_dir,
    *,
    preset="demo",
    seed=0,
    overwrite=False,
    progress=True,
    sigma_start=None,
    ensemble=None,
):
    if Path(out_dir).resolve() == Path(data_dir).resolve():
        raise ValueError(f"--out must differ from --data ({data_dir}): the input is kept")
    source = loader.array_record_source(data_dir)  # fails early without shards
    info = prepare.read_dataset_info(data_dir) or {}
    dtype = info.get("dtype", "float16")
    prepare.check_output(out_dir, max(len(source), 1), dtype, overwrite)
    sampler = pipeline_config(sample_presets.get_config(preset))
    # Settings pinned by a reproduction replace the preset's, whatever it says today.
    pinned = dict(sigma_start=sigma_start, ensemble=ensemble)
    csg_config = dataclasses.replace(
        sampler.stage2, **{k: v for k, v in pinned.items() if v is not None}
    )
    model_dict, params = checkpoints.load(stage2_dir, kind="dit")
    model_config = DiTConfig.from_dict(model_dict)
    denoiser = stage2.WindowDenoiser(model_config, csg_config)  # validates conditioning vs model
    text_len = sampler.text_len
    start = time.time()

    def named_records():
        indices = range(len(source))
        if progress:
            from swifti2v_jax import progress as progress_lib

            indices = progress_lib.bar(indices, desc="rollout", unit="clip")
        for index in indices:
            record = records.as_record(source[index])
            key = jax.random.fold_in(jax.random.key(seed), index)
            generated = generate_clip(params, denoiser, record, text_len, key)
            yield record["name"], records.with_generated(record, generated)

    report = prepare.PrepareReport(written=len(source))
    rollout_info = {
        "stage2": str(stage2_dir), "preset": preset, "seed": seed, "source": str(data_dir),
        "sampler": {k: getattr(csg_config, k) for k in (
            "noisy_blocks", "neighbours", "solver", "schedule", "steps", "shift",
            "sigma_start", "neighbour_sigma", "ensemble")},
    }  # fmt: skip
    kept = {k: v for k, v in info.items() if k not in ("num_records", "shards", "rollout")}
    report = prepare.write_dataset(
        out_dir, named_records(), report, records_per_shard=max(len(source), 1), dtype=dtype,
        info={**kept, "rollout": rollout_info},
    )  # fmt: skip
    rollout_info["seconds"] = round(time.time() - start, 1)
    return report, rollout_info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="prepared records (stage2 layout)")
    parser.add_argument("--stage2", required=True, help="Stage II DiT checkpoint folder")
    parser.add_argument("--out", required=True, help="output folder (new or --overwrite)")
    parser.add_argument("--preset", default="demo", help="sample preset (presets/sample.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sigma-start", type=float, default=None,
        help="Stage II start noise level (default: the preset's stage2.sigma_start)",
    )  # fmt: skip
    parser.add_argument(
        "--ensemble", type=int, default=None,
        help="Stage II samples averaged per segment (default: the preset's stage2.ensemble)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        _, info = rollout(
            args.data, args.stage2, args.out, preset=args.preset, seed=args.seed,
            overwrite=args.overwrite, sigma_start=args.sigma_start, ensemble=args.ensemble,
        )  # fmt: skip
    except (ValueError, checkpoints.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m swifti2v_jax.data.rollout")
