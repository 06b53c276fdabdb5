"""Stage I chunk seams of the demo models for several overlaps (issue 18, boundary quality).

    python -m benchmarks.stage1_seams [--weights DIR] --out benchmarks/results/stage1_seams

Runs benchmarks/long_video.py's seam measurement (`seam_jump`: held-out procedural first
frames, 65 latent frames in chunks of 17, the largest frame-to-frame change in each seam
region vs the mean inside chunks) unchanged, on the given demo weights, for overlaps 1..5 and
8, with every overlap latent held clean and with only the first held and the others
regenerated and cross-faded (sampling/stage1.py `ti2v_chunks`). Target: ratio <= 1.5.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import common, long_video
from swifti2v_jax.demo import BUNDLED_WEIGHTS

OVERLAPS = (1, 2, 3, 4, 5, 8)
HELD, REGENERATED = 0.0, long_video.DEMO_STAGE1.seam_release  # the two continuations


def markdown(report: dict) -> str:
    lines = [
        "# Stage I chunk seams (demo models)",
        "",
        f"Weights: {report['weights']}. benchmarks/long_video.py `seam_jump`: "
        f"{long_video.SEAM_LATENTS} latent frames in chunks of 17, held-out procedural seeds "
        f"{list(long_video.HELD_OUT_SEEDS)}.",
        "",
        *long_video.seam_table(report["seams"], per_clip=True),
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for release, label in ((HELD, "all held"), (REGENERATED, "regenerated + faded")):
        seams = [r for r in report["seams"] if r["seam_release"] == release]
        ax.plot([r["overlap"] for r in seams], [r["ratio"] for r in seams], "o-", label=label)
    ax.legend()
    ax.axhline(1.5, color="k", lw=0.5, ls=":")
    ax.set(xlabel="overlap (latent frames)", ylabel="seam / inside change", ylim=(0, None))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stage1_seams"))
    parser.add_argument("--weights", type=Path, default=BUNDLED_WEIGHTS)
    args = parser.parse_args()
    seams = [
        long_video.seam_jump(overlap, args.weights, seam_release)
        for seam_release in (HELD, REGENERATED)
        for overlap in (OVERLAPS if seam_release == HELD else OVERLAPS[1:])
    ]
    report = dict(environment=common.backend_info(), weights=str(args.weights), seams=seams)
    common.write_outputs(args.out, report, markdown, plot, "seams.png")


if __name__ == "__main__":
    main()
