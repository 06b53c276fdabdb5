"""Long clips at demo scale (issue 18): sample.py at several lengths, and Stage I chunk seams.

    python -m benchmarks.long_video --out benchmarks/results/long_video

1. `python sample.py --frames F` (demo preset: Stage I in chunks of 17 latent frames, overlap 3)
   for each F, one fresh process each, sequentially: the summary's process peak RSS, Stage I
   and Stage II compile counts, total time (R^2 of a line in F) and time to the first frame
   handed to the mp4 writer.
2. Seam jump: the demo Stage I on held-out procedural first frames (seeds far from the
   training clips'), chunked with 1, 3 and 8 overlap frames; the mean absolute
   frame-to-frame change of the decoded low-res video at the first new frame of each chunk
   (a seam) vs at every other frame (inside chunks). The demo VAE has no temporal stride, so
   latent frame i is video frame i.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from swifti2v_jax import checkpoints
from swifti2v_jax.data import procedural, records
from swifti2v_jax.demo import BUNDLED_WEIGHTS
from swifti2v_jax.demo.dataset import TextEncoder, caption
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.presets import sample as presets
from swifti2v_jax.sampling import orchestrator, stage1
from swifti2v_jax.sampling.config import pipeline_config
from swifti2v_jax.sampling.residency import ResidentModels

FRAMES = (81, 161, 321, 1001)
DEMO_STAGE1 = presets.demo().stage1  # the chunking sample.py runs with
HELD_OUT_SEEDS = (900_001, 900_002, 900_003, 900_004)
OVERLAPS = (1, 3, 8)
SEAM_LATENTS = 65  # clip length for the seam measurement (4 chunks of 17 at overlap 1)


def run_sample(frames: int, workdir: Path) -> dict:
    summary = workdir / f"summary_{frames}.json"
    command = [
        sys.executable, "sample.py", f"--frames={frames}", f"--output={workdir}/{frames}.mp4",
        f"--summary={summary}", "--config.progress=False",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    s = json.loads(summary.read_text())
    return dict(
        frames=frames,
        peak_rss_bytes=s["peak_memory_bytes"],
        stage1_compilations=s["stage1_compilations"],
        stage2_compilations=s["stage2_compilations"],
        stage1_chunks=s["stage1_chunks"],
        segments=s["segments"],
        total_seconds=s["seconds"]["total"],
        first_frame_seconds=s["first_frame_seconds"],
        seconds=s["seconds"],
    )


def fastest(repeats: list[dict]) -> dict:
    """One length's repeats -> the run with the least total time, its first frame the least
    of all repeats (both are lower bounds less disturbed by other processes); every repeat's
    numbers are kept."""
    best = dict(min(repeats, key=lambda r: r["total_seconds"]))
    best["first_frame_seconds"] = min(r["first_frame_seconds"] for r in repeats)
    best["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in repeats)
    best["repeats"] = [
        {k: r[k] for k in ("total_seconds", "first_frame_seconds", "peak_rss_bytes")}
        for r in repeats
    ]
    return best


def first_frame_spread(runs: list[dict]) -> float:
    first = [r["first_frame_seconds"] for r in runs]
    return max(first) / min(first)


def r_squared(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    fit = np.polyval(np.polyfit(x, y, 1), x)
    return float(1.0 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def seam_jump(overlap: int, weights: Path = BUNDLED_WEIGHTS) -> dict:
    """Mean |frame_i - frame_{i-1}| at chunk seams vs inside chunks, over held-out clips, with
    the demo models in `weights`."""
    settings = pipeline_config(presets.get_config("demo")).stage1
    settings = dataclasses.replace(settings, overlap=overlap)
    root = Path(weights)
    dit_config, dit_params = checkpoints.load(root / "dit", "dit")
    dit_config = DiTConfig.from_dict(dit_config)
    vae_config, vae_params = checkpoints.load(root / "vae", "vae")
    vae_config = vae_lib.as_config(vae_config)
    # Each clip's own caption, as the demo data and sample.py give it: the demo DiTs do not
    # ignore the (random-encoder) text embedding, and an all-zero one is far outside what
    # they were trained on (their x0 prediction at full noise is twice as far off).
    text = TextEncoder(root, text_len=presets.DEMO_TEXT_LEN)
    models = ResidentModels(
        stage1_dits=(dit_params,), stage1_vae=vae_params, stage2_dit=None, vae=vae_params
    )
    plan = stage1.chunk_plan(SEAM_LATENTS, settings.chunk_latents, overlap)
    seams = [start + known for start, known in plan[1:]]  # first new frame of each chunk
    at_seams, inside = [], []
    for seed in HELD_OUT_SEEDS:
        _, low = procedural.render_pair(seed, 5, 64, 128, factor=4)
        image = jnp.asarray(low[:1])  # [1, 16, 32, 3]
        context = jnp.asarray(records.pad_context(text(caption(seed)), text.text_len))[None]
        video = orchestrator.stage1_video(
            models, dit_config, vae_config, settings, image, context=context,
            frames=vae_lib.num_pixel_frames(vae_config, SEAM_LATENTS), key=jax.random.key(seed),
        )  # fmt: skip
        video = np.asarray(video)[0]
        change = np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))  # change[i-1]: i vs i-1
        is_seam = np.zeros(len(change), bool)
        is_seam[[s - 1 for s in seams]] = True
        at_seams.append(change[is_seam].mean())
        inside.append(change[~is_seam].mean())
    seam, within = float(np.mean(at_seams)), float(np.mean(inside))
    return dict(
        overlap=overlap, seams=seams, seam_change=seam, inside_change=within,
        ratio=seam / within,
        per_clip_ratio=[float(a / b) for a, b in zip(at_seams, inside, strict=True)],
    )  # fmt: skip


def markdown(report: dict) -> str:
    lines = [
        "# Long clips at demo scale (`python sample.py --frames F`)",
        "",
        f"Backend {report['environment']['platform']}, {report['environment']['cpu_count']} "
        f"CPU cores (shared); demo preset: Stage I chunks of {DEMO_STAGE1.chunk_latents} "
        f"latents, overlap {DEMO_STAGE1.overlap}; the "
        "streaming pipeline (each Stage I chunk -> its hybrid reference -> the CSG segments "
        "it completes -> decode -> mp4). One fresh process per length, run one after the "
        "other in one benchmark run, round robin, 3 repeats: fastest total and first frame, "
        "largest peak RSS of the repeats.",
        "",
        "| frames | Stage I chunks | segments | peak RSS (MiB) | Stage I / II compiles "
        "| total (s) | first frame (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['frames']} | {r['stage1_chunks']} | {r['segments']} | "
            f"{r['peak_rss_bytes'] / 2**20:.0f} | {r['stage1_compilations']} / "
            f"{r['stage2_compilations']} | {r['total_seconds']:.1f} | "
            f"{r['first_frame_seconds']:.1f} |"
        )
    s = report["scaling"]
    lines += [
        "",
        f"Peak RSS {report['runs'][-1]['frames']} vs {report['runs'][0]['frames']} frames: "
        f"{s['rss_ratio']:.3f}x (target <= 1.10). Total time vs frames R^2 = "
        f"{s['time_r2']:.4f} (target >= 0.99). First frame {s['first_frame_ratio']:.2f}x "
        "(longest vs shortest; target within 1.2x); spread over all lengths (slowest / "
        f"fastest) {first_frame_spread(report['runs']):.2f}x. Timings on shared, loaded cores: "
        "see `repeats` in results.json.",
        "",
        "## Stage I chunk seams (held-out procedural clips, "
        f"{SEAM_LATENTS} frames, seeds {list(HELD_OUT_SEEDS)})",
        "",
        *seam_table(report["seams"]),
    ]
    return "\n".join(lines) + "\n"


def seam_table(seams: list[dict], per_clip: bool = False) -> list[str]:
    """Markdown rows of `seam_jump` results (with each clip's ratio when `per_clip`)."""
    lines = [
        "| overlap | seam change | inside change | ratio (target <= 1.5) |"
        + (" per clip |" if per_clip else ""),
        "|---:|---:|---:|---:|" + ("---|" if per_clip else ""),
    ]
    for r in seams:
        clips = ", ".join(f"{x:.2f}" for x in r["per_clip_ratio"])
        lines.append(
            f"| {r['overlap']} | {r['seam_change']:.4f} | {r['inside_change']:.4f} | "
            f"{r['ratio']:.2f} |" + (f" {clips} |" if per_clip else "")
        )
    return lines


def plot(report: dict, path: Path) -> None:
    plt = common.pyplot()
    runs = report["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    f = [r["frames"] for r in runs]
    axes[0].plot(f, [r["total_seconds"] for r in runs], "o-", label="total")
    axes[0].plot(f, [r["first_frame_seconds"] for r in runs], "s-", label="first frame")
    axes[0].set(xlabel="frames", ylabel="seconds")
    axes[0].legend()
    axes[1].plot(f, [r["peak_rss_bytes"] / 2**20 for r in runs], "o-")
    axes[1].set(xlabel="frames", ylabel="peak RSS (MiB)", ylim=(0, None))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/long_video"))
    parser.add_argument("--frames", type=int, nargs="+", default=list(FRAMES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seams = [seam_jump(overlap) for overlap in OVERLAPS]
    with tempfile.TemporaryDirectory() as tmp:
        # Round robin (81, 161, ..., 1001, 81, ...), so load from other processes on the
        # shared cores spreads over every length; each length reports its fastest repeat.
        repeats = [[] for _ in args.frames]
        for _ in range(args.repeats):
            for runs_of, frames in zip(repeats, args.frames, strict=True):
                runs_of.append(run_sample(frames, Path(tmp)))
        runs = [fastest(runs_of) for runs_of in repeats]
    first, last = runs[0], runs[-1]
    scaling = dict(
        rss_ratio=last["peak_rss_bytes"] / first["peak_rss_bytes"],
        time_r2=r_squared([r["frames"] for r in runs], [r["total_seconds"] for r in runs]),
        first_frame_ratio=last["first_frame_seconds"] / first["first_frame_seconds"],
    )
    report = dict(environment=common.backend_info(), runs=runs, scaling=scaling, seams=seams)
    common.write_outputs(args.out, report, markdown, plot, "long_video.png")


if __name__ == "__main__":
    main()
