"""Demo training data: procedural clips encoded with the demo VAE, as ArrayRecord shards.

    python -m swifti2v_jax.demo.dataset --vae runs/demo/vae/model --text runs/demo/text \
        --out runs/demo/data --num-clips 128

For each seed in [first_seed, first_seed + num_clips) a procedural clip (and, with
--photo-clips P, for each seed in [first_seed, first_seed + P) a clip of the training
photographs, data/photos.py) is rendered at the target size and at 1/factor (box downsampled),
then:

  OUT/stage2  latents = VAE(high-res clip); reference = z_ref of the hybrid reference built
              from the low-res clip after a VAE round trip (what a Stage I output looks like:
              decoded low-res frames), exactly as sampling builds it (csg/reference.py).
  OUT/stage1  latents = VAE(low-res clip); reference = the latents (unused: no z_ref).

With --stage1-references DIT the Stage II references are built from what that Stage I model
makes of the clip's first low-res frame (demo sampler, the clip's caption), as in the
pipeline, instead of from the true low-res clip: Stage II then trains on the references it
gets at sampling time, drift and flicker included.

Captions name the camera's horizontal pan ('... pans left/right'), embedded with the demo's
umT5 (`--text`: a folder with t5/ and tokenizer/, e.g. from `python -m swifti2v_jax.demo.build`).
Both folders are written all-or-nothing by data/prepare.py's writer.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax import checkpoints, text
from swifti2v_jax.csg import contract, reference
from swifti2v_jax.data import photos, prepare, procedural, records
from swifti2v_jax.models import vae
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.presets import sample as sample_presets
from swifti2v_jax.sampling import orchestrator
from swifti2v_jax.sampling.config import pipeline_config
from swifti2v_jax.sampling.models import ModelSpecs
from swifti2v_jax.sampling.residency import ResidentModels

STAGES = ("stage1", "stage2")


def caption(seed: int) -> str:
    direction = "right" if procedural.random_scene(seed).pan[0] > 0 else "left"
    return f"a textured scene with moving discs, the camera slowly pans to the {direction}"


def text_encoder(folder: Path):
    """Prompt -> trimmed umT5 embedding [L, d] (text.PromptEncoder of `folder`/t5; kept in
    memory: the captions repeat)."""
    prompts = text.PromptEncoder.from_checkpoint(Path(folder) / "t5")
    return functools.cache(lambda prompt: records.trim_context(prompts(prompt)[0]))


class Stage1Videos:
    """The low-res video a trained Stage I makes from a clip's first frame and caption: what
    Stage II is given at sampling time (the demo preset's Stage I sampler)."""

    def __init__(self, dit_dir, vae_params, vae_config, seed: int = 0):
        dit_config, params = checkpoints.load(dit_dir, kind="dit")
        self.specs = ModelSpecs(
            stage1=DiTConfig.from_dict(dit_config), stage1_vae=vae_config, stage2=None,
            vae=vae_config, t5=None,
        )  # fmt: skip
        self.models = ResidentModels(
            stage1_dits=(params,), stage1_vae=vae_params, stage2_dit=None, vae=vae_params
        )
        sampler = pipeline_config(sample_presets.get_config("demo"))
        # Stage I's raw video, as the shipped Stage II phase 5 was trained on: retrained on
        # references with the input residual it did no better (docs/demo.md, "Photographs").
        stage1 = dataclasses.replace(sampler.stage1, input_residual=False)
        self.sampler = dataclasses.replace(sampler, stage1=stage1)
        self.text_len = sampler.text_len
        self.seed = seed

    def __call__(self, low: np.ndarray, context: np.ndarray, name: str) -> jax.Array:
        """low [F, h, w, 3] (only frame 0 is used), context [L, d] -> video [1, F, h, w, 3]."""
        padded = jnp.asarray(records.pad_context(context, self.text_len))[None]
        # Each clip its own noise, fixed by its name (the same clip, the same video).
        key = jax.random.fold_in(jax.random.key(self.seed), zlib.crc32(name.encode()))
        return orchestrator.run_clip(
            self.models, self.specs, self.sampler, context=padded,
            image_lo=jnp.asarray(low[None, 0]), frames=low.shape[0], stage1_key=key,
            until="stage1",
        ).video_low  # fmt: skip


def source_clip(source: str, seed: int, frames, height, width, factor):
    """(high, low, prompt, name) of one training clip: a procedural scene or a photograph
    scene (training photos only: data/photos.py's split)."""
    if source == "procedural":
        high, low = procedural.render_pair(seed, frames, height, width, factor)
        return high, low, caption(seed), f"procedural-{seed}"
    scene = photos.random_photo_scene(seed, "train")
    high, low = photos.render_pair(seed, frames, height, width, factor, split="train")
    return high, low, photos.caption(scene), f"photo-{seed}"


def clip_records(
    seed, vae_params, vae_config, encode_text, frames, height, width, factor, dtype,
    source="procedural", stage1_videos: Stage1Videos | None = None,
):  # fmt: skip
    """-> {'stage1': record, 'stage2': record} for one clip."""
    high, low, prompt, name = source_clip(source, seed, frames, height, width, factor)
    latents = vae.encode(vae_params, vae_config, high[None])
    low_latents = vae.encode(vae_params, vae_config, low[None])
    context = encode_text(prompt)
    if stage1_videos is None:
        video_low = vae.decode(vae_params, vae_config, low_latents)
    else:
        video_low = stage1_videos(low, context, name)
    z_ref = reference.encode_hybrid_reference(vae_params, vae_config, video_low, high[None, 0])
    as_np = lambda x: np.asarray(x[0], np.float32)
    return {
        "stage2": records.make_record(as_np(latents), as_np(z_ref), context, prompt, name, dtype),
        "stage1": records.make_record(
            as_np(low_latents), as_np(low_latents), context, prompt, name, dtype
        ),
    }


def build(
    vae_dir, text_dir, out_dir, *, num_clips: int, first_seed: int = 0, frames: int = 17,
    height: int = 64, width: int = 128, factor: int = 4, dtype: str = "float16",
    overwrite: bool = False, progress: bool = True, photo_clips: int = 0,
    stage1_references=None,
) -> dict[str, prepare.PrepareReport]:  # fmt: skip
    out_dir = Path(out_dir)
    if num_clips < 0 or photo_clips < 0 or num_clips + photo_clips < 1:
        raise ValueError(f"need clips: got num_clips={num_clips}, photo_clips={photo_clips}")
    total = num_clips + photo_clips
    for stage in STAGES:
        prepare.check_output(out_dir / stage, total, dtype, overwrite)
    vae_config, vae_params = checkpoints.load(vae_dir, kind="vae")
    vae_config = vae.as_config(vae_config)
    prepare.ClipSpec(frames, height, width).validate(
        vae_config.temporal_factor, vae_config.spatial_factor * factor
    )
    encode_text = text_encoder(Path(text_dir))
    stage1_videos = None
    if stage1_references is not None:
        stage1_videos = Stage1Videos(stage1_references, vae_params, vae_config)

    # Both data sets are built in one pass (the clips are rendered and encoded once), then
    # written by the shared shard writer.
    per_stage: dict[str, list] = {stage: [] for stage in STAGES}
    start = time.time()
    seeds = [("procedural", s) for s in range(first_seed, first_seed + num_clips)]
    seeds += [("photo", s) for s in range(first_seed, first_seed + photo_clips)]
    if progress:
        from swifti2v_jax import progress as progress_lib

        seeds = progress_lib.bar(seeds, desc="encoding clips", unit="clip")
    for source, seed in seeds:
        made = clip_records(
            seed, vae_params, vae_config, encode_text, frames, height, width, factor, dtype,
            source, stage1_videos,
        )  # fmt: skip
        for stage in STAGES:
            per_stage[stage].append((made[stage]["name"], made[stage]))
    seconds = time.time() - start

    reports = {}
    for stage in STAGES:
        report = prepare.PrepareReport(written=len(per_stage[stage]))
        info = {
            "procedural": dict(
                first_seed=first_seed, num_clips=num_clips, photo_clips=photo_clips,
                photos=list(photos.TRAIN_PHOTOS), frames=frames, factor=factor,
                height=height if stage == "stage2" else height // factor,
                width=width if stage == "stage2" else width // factor,
                vae=str(vae_dir), encode_seconds=round(seconds, 1),
                stage1_references=None if stage1_references is None else str(stage1_references),
            ),
            contract.DATASET_KEY: contract.latent_statistics(vae_config),
        }  # fmt: skip
        reports[stage] = prepare.write_dataset(
            out_dir / stage, iter(per_stage[stage]), report, records_per_shard=total,
            dtype=dtype, info=info,
        )  # fmt: skip
    return reports


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", required=True, help="the trained demo VAE (WORKDIR/model)")
    parser.add_argument("--text", required=True, help="folder with t5/ and tokenizer/")
    parser.add_argument("--out", required=True, help="output folder (stage1/ and stage2/)")
    parser.add_argument("--num-clips", type=int, default=128)
    parser.add_argument(
        "--photo-clips", type=int, default=0,
        help="extra clips of training photographs under camera motion (data/photos.py)",
    )  # fmt: skip
    parser.add_argument(
        "--stage1-references", default=None, metavar="DIT",
        help="build the Stage II references from this Stage I model's videos (see above)",
    )  # fmt: skip
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        reports = build(
            args.vae, args.text, args.out, num_clips=args.num_clips,
            first_seed=args.first_seed, frames=args.frames, height=args.height,
            width=args.width, factor=args.factor, overwrite=args.overwrite,
            photo_clips=args.photo_clips, stage1_references=args.stage1_references,
        )  # fmt: skip
    except (ValueError, checkpoints.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for stage, report in reports.items():
        print(f"{stage}: {report.summary()}")
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m swifti2v_jax.demo.dataset")
