"""Does `python sample.py --image P` follow a real photograph? (issue 19's user check)

    python -m benchmarks.photo_follows [--checkpoints ROOT] --out benchmarks/results/photo_follows

For each held-out photograph (data/photos.py: never trained on), one fresh `python sample.py
--image P` (demo preset, 17 frames 128x64) with a demo-style prompt, read back from the mp4:

  follows   low-resolution (4x box-downsampled) PSNR of frames 1-16 against frame 0, averaged
            (bar: >= 22 dB; the first demo models gave 16-17 dB on a portrait: noise by frame 4)
  motion    the mean absolute frame-to-frame change (low-res, [0, 1] scale; 0 = frozen) and
            the horizontal shift of frame 16 against frame 0 that best aligns them (pixels at
            128x64, positive = content moved right)

A frozen video would score high on `follows` and 0 on motion, so both are reported. For
scale, the same two figures on camera-moved ground truth: 10 held-out scenes per photograph
(data/photos.py, the seeds eval/demo_quality.py evaluates on), rendered at 128x64. Their
camera (pan, zoom, rotation, a random view of the photo, moving cut-outs) is the training
data's, so they say what a video that truly moves like the demo's training clips scores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import common
from swifti2v_jax.data import photos, procedural
from swifti2v_jax.eval import metrics
from swifti2v_jax.eval.demo_quality import FIRST_HELD_OUT_SEED
from swifti2v_jax.io import video as video_io

PROMPT = "a photograph, the camera slowly pans to the {}"
MAX_SHIFT = 12


def best_shift(first: np.ndarray, last: np.ndarray) -> int:
    """The horizontal shift d minimising the mean squared difference of last[x] and first[x-d]."""
    errors = {}
    width = first.shape[1]
    for d in range(-MAX_SHIFT, MAX_SHIFT + 1):
        a = first[:, max(0, -d) : width - max(0, d)]
        b = last[:, max(0, d) : width - max(0, -d)]
        errors[d] = float(np.mean((a - b) ** 2))
    return min(errors, key=errors.get)


def measure(video: np.ndarray) -> dict:
    """video: uint8 [F, H, W, 3]."""
    clip = video.astype(np.float32) / 127.5 - 1.0
    low = procedural.box_downsample(clip, 4)
    psnr = metrics.psnr(low[1:], np.broadcast_to(low[:1], low[1:].shape))
    change = np.abs(np.diff(low, axis=0)).mean() / 2  # on the [0, 1] scale
    return dict(
        follows_psnr=float(psnr.mean()),
        psnr_per_frame=psnr.round(2).tolist(),
        frame_change=float(change),
        shift_pixels=best_shift(clip[0].mean(-1), clip[-1].mean(-1)),
    )


TRUTH_CLIPS_PER_PHOTO = 10


def truth_figures() -> dict[str, dict]:
    """Per held-out photograph: mean `follows` and frame change of its ground-truth clips."""
    found: dict[str, list[dict]] = {name: [] for name in photos.HELD_OUT_PHOTOS}
    seed = FIRST_HELD_OUT_SEED  # held-out scenes cycle through the photographs
    while min(len(v) for v in found.values()) < TRUTH_CLIPS_PER_PHOTO:
        name = photos.random_photo_scene(seed, "held_out").photo
        high, _ = photos.render_pair(seed, 17, 64, 128, split="held_out")
        if len(found[name]) < TRUTH_CLIPS_PER_PHOTO:
            found[name].append(measure(procedural.to_uint8(high)))
        seed += 1
    return {
        name: dict(
            follows_psnr=float(np.mean([m["follows_psnr"] for m in runs])),
            min_follows_psnr=float(np.min([m["follows_psnr"] for m in runs])),
            max_follows_psnr=float(np.max([m["follows_psnr"] for m in runs])),
            frame_change=float(np.mean([m["frame_change"] for m in runs])),
        )
        for name, runs in found.items()
    }


def run_photo(name: str, direction: str, checkpoints: str | None, workdir: Path) -> dict:
    output = workdir / f"{Path(name).stem}_{direction}.mp4"
    command = [
        sys.executable, "sample.py", f"--image={photos.photo_dir() / name}",
        f"--prompt={PROMPT.format(direction)}", f"--output={output}",
        "--config.progress=False",
    ]  # fmt: skip
    if checkpoints:
        command.append(f"--checkpoints={checkpoints}")
    subprocess.run(command, check=True, capture_output=True, text=True)
    video, _ = video_io.read_video(output)
    return dict(photo=name, prompt=PROMPT.format(direction), frames=len(video), **measure(video))


def markdown(report: dict) -> str:
    lines = [
        "# `python sample.py --image P` on held-out photographs",
        "",
        f"Weights: {report['checkpoints'] or 'bundled'}. Demo preset (17 frames, 128x64). "
        "follows = low-res (4x box) PSNR of frames 1-16 vs frame 0 (bar >= 22 dB); "
        "change = mean |frame_t - frame_t-1| at low res ([0, 1] scale; 0 = frozen); "
        "shift = best horizontal alignment of frame 16 vs frame 0 (pixels).",
        "",
        "| photo | prompt | follows (dB) | change | shift (px) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['photo']} | {r['prompt']} | {r['follows_psnr']:.2f} | "
            f"{r['frame_change']:.4f} | {r['shift_pixels']:+d} |"
        )
    s = report["summary"]
    lines += [
        "",
        f"Mean follows {s['follows_psnr']:.2f} dB (min {s['min_follows_psnr']:.2f}); mean "
        f"change {s['frame_change']:.4f}.",
        "",
        f"Ground truth under the training data's camera ({TRUTH_CLIPS_PER_PHOTO} held-out "
        "scenes per photograph, the same figures):",
        "",
        "| photo | follows (dB), mean [min, max] | change |",
        "|---|---:|---:|",
    ]
    for name, t in report["truth"].items():
        lines.append(
            f"| {name} | {t['follows_psnr']:.2f} [{t['min_follows_psnr']:.2f}, "
            f"{t['max_follows_psnr']:.2f}] | {t['frame_change']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in report["runs"]:
        ax.plot(
            range(1, r["frames"]), r["psnr_per_frame"], label=f"{r['photo']} ({r['prompt'][-5:]})"
        )
    ax.axhline(22, color="k", lw=0.5, ls=":")
    ax.set(xlabel="frame", ylabel="low-res PSNR vs frame 0 (dB)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/photo_follows"))
    parser.add_argument("--checkpoints", default=None, help="demo weights root (default: bundled)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            run_photo(name, direction, args.checkpoints, Path(tmp))
            for name in photos.HELD_OUT_PHOTOS
            for direction in ("left", "right")
        ]
    summary = dict(
        follows_psnr=float(np.mean([r["follows_psnr"] for r in runs])),
        min_follows_psnr=float(np.min([r["follows_psnr"] for r in runs])),
        frame_change=float(np.mean([r["frame_change"] for r in runs])),
    )
    report = dict(
        environment=common.backend_info(), checkpoints=args.checkpoints, runs=runs,
        summary=summary, truth=truth_figures(),
    )  # fmt: skip
    common.write_outputs(args.out, report, markdown, plot, "photo_follows.png")


if __name__ == "__main__":
    main()
