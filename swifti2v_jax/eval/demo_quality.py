"""Does Stage II recover input-faithful detail that upsampling the low-res motion cannot?

    python -m swifti2v_jax.eval.demo_quality [--weights DIR] [--clips 8] [--frames 17]

On held-out procedural clips (seeds from 1_000_000; training uses seeds below 1_000), or with
`--set photos` on held-out photographs under camera motion (data/photos.py), with the demo
models, every output is compared with the true high-res clip (PSNR, SSIM per frame):

  bicubic    the low-res video upsampled (bicubic): what Stage I alone gives at 2K
  z_ref      the hybrid reference (that upsampled video) through the VAE: what Stage II
             would give if it only reproduced its conditioning
  stage2     Stage II (CSG, bidirectional windows) on the hybrid reference of that video
  read_only  the ablation: context blocks cannot attend to the noisy ones
  vae        the true clip through the VAE: the ceiling of anything decoded from latents

under three protocols for the low-res video:

  oracle      the true low-res clip (box downsampled): Stage II alone, motion given
  vae_oracle  that clip through the VAE: what a perfect Stage I outputs (the true latents,
              decoded); Stage II trains on references made this way
  pipeline    Stage I generated from the low-res first frame: the whole two-stage system
              (its motion is sampled, so it need not match the true clip's)

"Follows the input" is Stage I's low-res video against the true (camera-moved) low-res clip.
Frame 0 is the input image itself, so the summaries average frames 1.. only. Per-segment
numbers average the frames of each CSG segment's noisy blocks (drift over the clip).
Writes OUT/demo_quality.json, OUT/demo_quality.md, OUT/psnr_per_frame.png and
OUT/frames.png (truth / bicubic / Stage II for one clip).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax import checkpoints, text
from swifti2v_jax.csg import layout, reference
from swifti2v_jax.data import photos, procedural
from swifti2v_jax.demo import BUNDLED_WEIGHTS
from swifti2v_jax.demo.dataset import caption
from swifti2v_jax.eval import metrics
from swifti2v_jax.io import image as image_io
from swifti2v_jax.models import quant, vae
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.presets import sample as sample_presets
from swifti2v_jax.sampling import orchestrator, stage2
from swifti2v_jax.sampling.config import pipeline_config as make_pipeline_config
from swifti2v_jax.sampling.models import ModelSpecs
from swifti2v_jax.sampling.residency import ResidentModels

FIRST_HELD_OUT_SEED = 1_000_000
METHODS = ("bicubic", "z_ref", "stage2", "read_only")
PROTOCOLS = ("oracle", "vae_oracle", "pipeline")


class DemoModels:
    def __init__(self, weights: Path, text_len: int, dit_weights: str = "native"):
        missing = [
            name for name in ("dit", "stage2", "vae", "t5", "tokenizer")
            if not (weights / name).is_dir()
        ]  # fmt: skip
        if missing:
            raise ValueError(
                f"{weights} lacks {missing}: train the demo models first (docs/demo.md)"
            )
        vae_config, self.vae_params = checkpoints.load(weights / "vae", kind="vae")
        self.vae_config = vae.as_config(vae_config)
        stage1_config, stage1_params = load_dit(weights / "dit", dit_weights)
        stage2_config, stage2_params = load_dit(weights / "stage2", dit_weights)
        self.specs = ModelSpecs(
            stage1=DiTConfig.from_dict(stage1_config), stage1_vae=self.vae_config,
            stage2=DiTConfig.from_dict(stage2_config), vae=self.vae_config, t5=None,
        )  # fmt: skip
        self.text = text.PromptEncoder.from_checkpoint(weights / "t5", text_len=text_len)
        self.resident = ResidentModels(
            stage1_dits=(stage1_params,), stage1_vae=self.vae_params,
            stage2_dit=stage2_params, vae=self.vae_params, text_encoder=self.text,
        )  # fmt: skip


DIT_WEIGHTS = ("bf16", *quant.WEIGHT_FORMATS)


def load_dit(path: Path, dit_weights: str):
    """A demo DiT (fp32 as trained) with its block kernels as `dit_weights`: 'bf16' rounds
    them to bf16 (the baseline int8/fp8 are compared with), the rest as checkpoints.load."""
    if dit_weights != "bf16":
        return checkpoints.load(path, kind="dit", quantize=dit_weights)
    config, params = checkpoints.load(path, kind="dit")
    to_bf16 = lambda p: np.asarray(p).astype(jnp.bfloat16).astype(np.float32)
    blocks = jax.tree_util.tree_map_with_path(
        lambda path, p: to_bf16(p) if path[-1].key == "kernel" else p, params["blocks"]
    )
    return config, {**params, "blocks": blocks}


def encode_context(models: DemoModels, prompt: str) -> jax.Array:
    """[1, text_len, d]: the prompt's embedding, zero rows past it."""
    return jnp.asarray(models.text(prompt))


def decode(models, latents) -> np.ndarray:
    return np.asarray(vae.decode(models.vae_params, models.vae_config, latents))[0]


def segment_frames(
    csg_config: layout.WindowLayout, num_blocks: int, temporal: int
) -> list[list[int]]:
    """Pixel frames produced by each segment (its noisy blocks; block b >= 1 is frames
    temporal*(b-1)+1 .. temporal*b)."""
    frames = []
    for window in csg_config.plan(num_blocks):
        blocks = [b for b, noisy in zip(window.blocks, window.is_noisy) if noisy]
        frames.append([f for b in blocks for f in range(temporal * (b - 1) + 1, temporal * b + 1)])
    return frames


def make_denoisers(models, csg_config) -> dict[str, stage2.WindowDenoiser]:
    """One compiled Stage II program per attention mode, reused for every clip."""
    return {
        method: stage2.WindowDenoiser(
            models.specs.stage2, dataclasses.replace(csg_config, attention=attention)
        )
        for method, attention in (("stage2", "bidirectional"), ("read_only", "read_only"))
    }


def procedural_clip(seed, frames, height, width, factor):
    return (*procedural.render_pair(seed, frames, height, width, factor), caption(seed))


def photo_clip(seed, frames, height, width, factor):
    """A held-out photograph under camera motion (data/photos.py's split: never trained on)."""
    high, low = photos.render_pair(seed, frames, height, width, factor, split="held_out")
    return high, low, photos.caption(photos.random_photo_scene(seed, "held_out"))


CLIP_SETS = {"procedural": procedural_clip, "photos": photo_clip}


def evaluate_clip(
    models, pipeline_config, denoisers, seed, frames, height, width, factor, key,
    clip_set="procedural",
):  # fmt: skip
    high, low, prompt = CLIP_SETS[clip_set](seed, frames, height, width, factor)
    image = jnp.asarray(high[None, 0])
    context = encode_context(models, prompt)
    key_stage1, key_stage2 = jax.random.split(key)
    scores = {}

    # the VAE's own ceiling
    recon = vae.decode(models.vae_params, models.vae_config, vae.encode(
        models.vae_params, models.vae_config, high[None]))  # fmt: skip
    scores["vae"] = _scores(np.asarray(recon)[0], high)

    # Stage I from the low-res first frame (TI2V image-to-video)
    clip = functools.partial(
        orchestrator.run_clip, models.resident, models.specs, pipeline_config, context=context,
        stage1_key=key_stage1, stage2_key=key_stage2,
    )  # fmt: skip
    stage1_low = clip(image_lo=jnp.asarray(low[None, 0]), frames=frames, until="stage1").video_low

    # "Follows the input": Stage I's low-res video against the camera-moved truth, per frame.
    scores["follows"] = _scores(np.asarray(stage1_low)[0], low)

    low_latents = vae.encode(models.vae_params, models.vae_config, low[None])
    low_through_vae = vae.decode(models.vae_params, models.vae_config, low_latents)
    videos = {}
    low_videos = {"oracle": jnp.asarray(low[None]), "vae_oracle": low_through_vae}
    for protocol, video_low in (*low_videos.items(), ("pipeline", stage1_low)):
        # the hybrid reference in pixels: both methods are given the input image as frame 0
        upsampled = np.asarray(reference.hybrid_reference(video_low, image)[0])
        given = clip(video_low=video_low, image_hi=image, until="reference")
        outputs = {"bicubic": upsampled, "z_ref": decode(models, given.z_ref)}
        for method, denoiser in denoisers.items():
            made = clip(z_ref=given.z_ref, anchor=given.anchor, denoiser=denoiser)
            outputs[method] = np.asarray(made.video)[0]
        for method, video in outputs.items():
            scores[f"{protocol}/{method}"] = _scores(video, high)
        videos[protocol] = outputs
    return scores, high, videos


STAGE2_SETTINGS = ("noisy_blocks", "neighbours", "steps", "solver", "sigma_start",
                   "neighbour_sigma", "ensemble")  # fmt: skip


def _fields(config, names) -> dict:
    return {name: getattr(config, name) for name in names}


def _scores(video, truth) -> dict:
    return {
        "psnr": metrics.psnr(video, truth).tolist(),
        "ssim": metrics.ssim(video, truth).tolist(),
    }


def clip_gains(per_clip: list[dict], protocol: str) -> list[float]:
    """Per clip: mean PSNR of Stage II minus that of bicubic, frames 1.."""
    return [
        float(np.mean(clip[f"{protocol}/stage2"]["psnr"][1:]))
        - float(np.mean(clip[f"{protocol}/bicubic"]["psnr"][1:]))
        for clip in per_clip
    ]


def summarise(per_clip: list[dict], segments: list[list[int]]) -> dict:
    names = per_clip[0].keys()
    summary = {}
    for name in names:
        psnr = np.array([clip[name]["psnr"] for clip in per_clip])  # [clips, frames]
        ssim = np.array([clip[name]["ssim"] for clip in per_clip])
        summary[name] = {
            "psnr": float(psnr[:, 1:].mean()),
            "ssim": float(ssim[:, 1:].mean()),
            "psnr_per_frame": psnr.mean(0).round(3).tolist(),
            "psnr_per_segment": [float(psnr[:, f].mean()) for f in segments],
            "ssim_per_segment": [float(ssim[:, f].mean()) for f in segments],
        }
    for protocol in PROTOCOLS:
        gains = clip_gains(per_clip, protocol)
        summary[f"{protocol}/stage2_minus_bicubic_psnr"] = {
            "mean": float(np.mean(gains)),
            "min": float(np.min(gains)),
            "clips_where_stage2_wins": int(np.sum(np.array(gains) > 0)),
        }
    return summary


def markdown(result: dict) -> str:
    s, cfg = result["summary"], result["settings"]
    lines = [
        f"# Demo quality ({cfg['clips']} held-out {cfg.get('clip_set', 'procedural')} clips, "
        f"{cfg['frames']} frames "
        f"{cfg['width']}x{cfg['height']}, low-res 1/{cfg['factor']})",
        "",
        "Frames 1.. (frame 0 is the input image). PSNR (dB) / SSIM against the true clip.",
        "",
        "| protocol | bicubic | z_ref decoded | Stage II | Stage II read-only |",
        "|---|---|---|---|---|",
    ]
    for protocol in PROTOCOLS:
        cells = [f"{s[f'{protocol}/{m}']['psnr']:.2f} / {s[f'{protocol}/{m}']['ssim']:.3f}"
                 for m in METHODS]  # fmt: skip
        lines.append(f"| {protocol} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"VAE reconstruction ceiling: {s['vae']['psnr']:.2f} dB / {s['vae']['ssim']:.3f}.",
        "",
        "Follows the input (Stage I low-res video vs the camera-moved true low-res clip, "
        f"frames 1..): {s['follows']['psnr']:.2f} dB / {s['follows']['ssim']:.3f}; per frame "
        + " ".join(f"{v:.1f}" for v in s["follows"]["psnr_per_frame"][1:])
        + ".",
        "",
        "Stage II minus bicubic (PSNR, per clip): "
        + "; ".join(
            f"{p}: mean {s[f'{p}/stage2_minus_bicubic_psnr']['mean']:+.2f} dB, "
            f"min {s[f'{p}/stage2_minus_bicubic_psnr']['min']:+.2f} dB, wins on "
            f"{s[f'{p}/stage2_minus_bicubic_psnr']['clips_where_stage2_wins']}/{cfg['clips']}"
            for p in PROTOCOLS
        ),
        "",
        "Per clip, Stage II minus bicubic (pipeline): "
        + ", ".join(f"{g:+.2f}" for g in clip_gains(result["per_clip"], "pipeline"))
        + " dB.",
        "",
        "PSNR per CSG segment (frames of its noisy blocks), bidirectional vs read-only:",
        "",
        "| segment | frames | "
        + " | ".join(f"{p} bidir. | {p} read-only" for p in PROTOCOLS)
        + " |",
        "|---|---|" + "---|" * (2 * len(PROTOCOLS)),
    ]
    for i, frames in enumerate(result["segment_frames"]):
        values = [
            s[f"{p}/{m}"]["psnr_per_segment"][i] for p in PROTOCOLS for m in ("stage2", "read_only")
        ]
        lines.append(
            f"| {i} | {frames[0]}-{frames[-1]} | " + " | ".join(f"{v:.2f}" for v in values) + " |"
        )
    lines += ["", f"Took {result['seconds']:.0f} s on {result['backend']}."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(5.5 * len(PROTOCOLS), 3.6), sharey=True)
    for ax, protocol in zip(axes, PROTOCOLS):
        styles = (("bicubic", ":"), ("z_ref", "-."), ("stage2", "-"), ("read_only", "--"))
        for method, style in styles:
            ax.plot(s[f"{protocol}/{method}"]["psnr_per_frame"], style, label=method)
        ax.plot(s["vae"]["psnr_per_frame"], color="grey", lw=0.8, label="VAE ceiling")
        for frames in result["segment_frames"][1:]:
            ax.axvline(frames[0] - 0.5, color="k", lw=0.3)
        ax.set_title(f"{protocol} low-res video")
        ax.set_xlabel("frame")
    axes[0].set_ylabel("PSNR vs. true high-res (dB)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def frame_grid(truth, videos, frame_ids) -> np.ndarray:
    """Rows: truth, oracle bicubic, oracle Stage II, pipeline Stage II; columns: frames."""
    rows = [truth, videos["oracle"]["bicubic"], videos["oracle"]["stage2"],
            videos["pipeline"]["stage2"]]  # fmt: skip
    return np.concatenate(
        [np.concatenate([procedural.to_uint8(row[f]) for f in frame_ids], axis=1) for row in rows],
        axis=0,
    )


def run(
    weights, out_dir, *, clips=8, frames=17, height=None, width=None, factor=4, seed=0,
    first_clip_seed=FIRST_HELD_OUT_SEED, dit_weights="native", clip_set="procedural",
):  # fmt: skip
    """Evaluates with the demo preset's sampler settings and (by default) resolution."""
    import imageio.v3 as iio

    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    start = time.time()
    sample_config = sample_presets.get_config("demo")
    if height is None or width is None:
        width, height = image_io.parse_size(sample_config.resolution)
    pipeline_config = make_pipeline_config(sample_config)
    models = DemoModels(Path(weights), pipeline_config.text_len, dit_weights)
    denoisers = make_denoisers(models, pipeline_config.stage2)
    num_blocks = vae.num_latent_frames(models.vae_config, frames)
    segments = segment_frames(pipeline_config.stage2, num_blocks, models.vae_config.temporal_factor)
    per_clip, first = [], None
    for index in range(clips):
        clip_seed = first_clip_seed + index
        key = jax.random.fold_in(jax.random.key(seed), index)
        scores, truth, videos = evaluate_clip(
            models, pipeline_config, denoisers, clip_seed, frames, height, width, factor, key,
            clip_set,
        )  # fmt: skip
        per_clip.append(scores)
        first = first or (truth, videos)
        gain = np.mean(scores["oracle/stage2"]["psnr"][1:]) - np.mean(
            scores["oracle/bicubic"]["psnr"][1:]
        )
        print(f"clip {clip_seed}: oracle Stage II - bicubic {gain:+.2f} dB", file=sys.stderr)
    result = {
        "settings": dict(
            clip_set=clip_set,
            clips=clips,
            frames=frames,
            height=height,
            width=width,
            factor=factor,
            seed=seed,
            first_clip_seed=first_clip_seed,
            weights=str(weights),
            dit_weights=dit_weights,
            stage2=_fields(pipeline_config.stage2, STAGE2_SETTINGS),
            stage1=_fields(pipeline_config.stage1, ("steps", "solver", "input_residual")),
        ),  # fmt: skip
        "segment_frames": segments,
        "summary": summarise(per_clip, segments),
        "per_clip": per_clip,
        "seconds": time.time() - start,
        "backend": jax.default_backend(),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo_quality.json").write_text(json.dumps(result, indent=1))
    (out_dir / "demo_quality.md").write_text(markdown(result))
    plot(result, out_dir / "psnr_per_frame.png")
    truth, videos = first
    picks = np.linspace(0, frames - 1, 5).round().astype(int)
    iio.imwrite(out_dir / "frames.png", frame_grid(truth, videos, picks))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=str(BUNDLED_WEIGHTS), help="demo model folder")
    parser.add_argument("--out", default="benchmarks/results/demo_quality")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument(
        "--set", dest="clip_set", default="procedural", choices=tuple(CLIP_SETS),
        help="held-out procedural scenes, or held-out photographs (data/photos.py's split)",
    )  # fmt: skip
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--first-clip-seed", type=int, default=FIRST_HELD_OUT_SEED,
        help="procedural seed of the first clip (training uses seeds < 1000; sampler settings "
        "were chosen on clips from 2000000, reported on clips from 1000000)",
    )  # fmt: skip
    parser.add_argument(
        "--dit-weights", default="native", choices=DIT_WEIGHTS,
        help="Stage I and Stage II DiT block kernels: as stored (fp32), rounded to bf16, or "
        "int8 / fp8 weight-only",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.first_clip_seed < 1000:
        print("error: --first-clip-seed below 1000 evaluates on training clips", file=sys.stderr)
        return 1
    try:
        result = run(
            args.weights, args.out, clips=args.clips, frames=args.frames, seed=args.seed,
            first_clip_seed=args.first_clip_seed, dit_weights=args.dit_weights,
            clip_set=args.clip_set,
        )  # fmt: skip
    except (ValueError, checkpoints.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(markdown(result))
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m swifti2v_jax.eval.demo_quality")
