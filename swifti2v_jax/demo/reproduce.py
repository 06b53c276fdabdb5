"""Rebuilds the shipped demo weights from scratch with the repository's own commands.

    python -m swifti2v_jax.demo.reproduce --workdir runs/demo [--install]

Run from the repository root (it calls train.py). Steps, each skipped when its output exists
(so an interrupted run resumes; train.py itself resumes from its checkpoints):

  1. text     python -m swifti2v_jax.demo.build WORKDIR/random  (the tiny random umT5 and
              tokenizer; the demo models are trained on its embeddings)
  2. vae      python train.py --config=configs/demo/vae.py --workdir WORKDIR/vae
  3. data     python -m swifti2v_jax.demo.dataset --vae WORKDIR/vae/model ...
  4. stage1   python train.py --config=configs/demo/stage1.py --workdir WORKDIR/stage1 ...
  5. stage2   python train.py --config=configs/demo/stage2.py --workdir WORKDIR/stage2 ...
  6. stage2_neighbours  train.py --config=configs/demo/stage2_neighbours.py (init: step 5)
  7. rollout  python -m swifti2v_jax.data.rollout (step 6's model over the training clips)
  8. stage2_rollout     train.py --config=configs/demo/stage2_rollout.py (init: step 6)
  9. data_photos     demo.dataset again, procedural + training photographs (data/photos.py)
 10. stage1_photos   train.py --config=configs/demo/stage1_photos.py (init: step 4; mixed data,
                     continuation: 1-3 clean leading latent frames)
 11. rollout_photos  data.rollout of step 8's model over step 9's Stage II clips
 12. stage2_photos   train.py --config=configs/demo/stage2_photos.py (init: step 8)
 13. stage1_refine   train.py --config=configs/demo/stage1_refine.py (init: step 10; the first
                     generated frames weigh more)
 14. data_refs       demo.dataset again, with --stage1-references (step 13's model): Stage II
                     references made by Stage I, as at sampling time
 15. rollout_refs    data.rollout of step 12's model over step 14's Stage II clips
 16. stage2_refs     train.py --config=configs/demo/stage2_refs.py (init: step 12)
 17. export   WORKDIR/weights (dit/ stage2/ vae/ t5/ tokenizer/ DEMO.json); with --install
              also copied to swifti2v_jax/demo/weights, where sample.py looks first.

WORKDIR/reproduce.json records the commands and how long each step took. Steps 4 and 5
only need step 3's data, so by hand they can run side by side (that is how the shipped
weights were made, on 2 CPU cores); so can steps 10 and 11-12, and 13 beside 12.
configs/demo/vae_decoder.py (a decoder-only phase that keeps every latent) is an optional
extra step, not part of the shipped weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from swifti2v_jax.demo import BUNDLED_WEIGHTS

# The Stage II sampler the training rollouts were made with (the demo preset's when the
# shipped models were trained: one draw from 0.7; the preset has since moved on).
ROLLOUT_SAMPLER = ("--sigma-start", "0.7", "--ensemble", "1")

COMPONENTS = {  # shipped name -> (workdir sub-folder, what)
    "dit": (
        "stage1_refine/model",
        "Stage I (TI2V-style, 32x16; procedural + photographs, continuation)",
    ),
    "stage2": (
        "stage2_refs/model",
        "Stage II (concat, 128x64 CSG windows; procedural + photographs, Stage I references)",
    ),
    "vae": ("vae/model", "Wan2.2-style VAE, 1x4x4, z=12"),
    "t5": ("random/t5", "tiny umT5 (random, fixed seed)"),
    "tokenizer": ("random/tokenizer", "demo tokenizer"),
}


def steps(
    workdir: Path, num_clips: int, photo_clips: int = 256
) -> list[tuple[str, Path, list[str]]]:
    """(name, output that marks it done, command)."""
    py = sys.executable
    data = workdir / "data"
    photos = workdir / "data_photos"
    refs = workdir / "data_refs"
    model = lambda name: workdir / name / "model"

    def train(name: str, data_path: Path | None = None, init: str | None = None):
        """train.py with configs/demo/NAME.py into WORKDIR/NAME (its model marks it done)."""
        command = [py, "train.py", f"--config=configs/demo/{name}.py",
                   f"--workdir={workdir / name}"]  # fmt: skip
        if data_path is not None:
            command.append(f"--config.data.path={data_path}")
        if init is not None:
            command.append(f"--config.init_checkpoint={model(init)}")
        return (name, model(name), command)

    def dataset(name: str, out: Path, *extra: str):
        """The demo data set (procedural clips, plus `extra` options) into `out`."""
        command = [py, "-m", "swifti2v_jax.demo.dataset", "--vae", str(model("vae")),
                   "--text", str(workdir / "random"), "--out", str(out),
                   "--num-clips", str(num_clips), *extra, "--overwrite"]  # fmt: skip
        return (name, out / "stage2" / "dataset.json", command)

    def rollout(name: str, folder: Path, stage2: str):
        """Stage II model `stage2`'s own CSG output over `folder`/stage2."""
        command = [py, "-m", "swifti2v_jax.data.rollout", "--data", str(folder / "stage2"),
                   "--stage2", str(model(stage2)), "--out", str(folder / "stage2_rollout"),
                   *ROLLOUT_SAMPLER, "--overwrite"]  # fmt: skip
        return (name, folder / "stage2_rollout" / "dataset.json", command)

    with_photos = ("--photo-clips", str(photo_clips))
    return [
        ("text", workdir / "random" / "t5",
         [py, "-m", "swifti2v_jax.demo.build", str(workdir / "random")]),
        train("vae"),
        dataset("data", data),
        train("stage1", data / "stage1"),
        train("stage2", data / "stage2"),
        train("stage2_neighbours", data / "stage2", init="stage2"),
        rollout("rollout", data, "stage2_neighbours"),
        train("stage2_rollout", data / "stage2_rollout", init="stage2_neighbours"),
        dataset("data_photos", photos, *with_photos),
        train("stage1_photos", photos / "stage1", init="stage1"),
        rollout("rollout_photos", photos, "stage2_rollout"),
        train("stage2_photos", photos / "stage2_rollout", init="stage2_rollout"),
        train("stage1_refine", photos / "stage1", init="stage1_photos"),
        dataset("data_refs", refs, *with_photos,
                "--stage1-references", str(model("stage1_refine"))),
        rollout("rollout_refs", refs, "stage2_photos"),
        train("stage2_refs", refs / "stage2_rollout", init="stage2_photos"),
    ]  # fmt: skip


def export(workdir: Path, out: Path, log: dict) -> Path:
    """Copies the five model folders into `out` (all or nothing) with DEMO.json."""
    missing = [str(workdir / sub) for sub, _ in COMPONENTS.values() if not (workdir / sub).is_dir()]
    if missing:
        raise ValueError(f"cannot export, missing: {missing}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, (sub, _) in COMPONENTS.items():
        shutil.copytree(workdir / sub, tmp / name)
    manifest = {
        "trained": True,
        "components": {name: what for name, (_, what) in COMPONENTS.items()},
        "reproduce": "python -m swifti2v_jax.demo.reproduce --workdir runs/demo --install",
        "steps": log,
    }
    (tmp / "DEMO.json").write_text(json.dumps(manifest, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--num-clips", type=int, default=256, help="training clips for the DiTs")
    parser.add_argument(
        "--photo-clips", type=int, default=256, help="photograph clips added for steps 9-12"
    )
    parser.add_argument("--install", action="store_true", help=f"copy into {BUNDLED_WEIGHTS}")
    args = parser.parse_args(argv)
    if not Path("train.py").is_file():
        print("error: run from the repository root (train.py not found)", file=sys.stderr)
        return 1
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "reproduce.json"
    log = json.loads(log_file.read_text()) if log_file.is_file() else {}
    for name, done, command in steps(workdir, args.num_clips, args.photo_clips):
        if done.exists():
            print(f"[{name}] done already ({done})")
            continue
        print(f"[{name}] {' '.join(command)}", flush=True)
        start = time.time()
        if subprocess.run(command).returncode != 0:
            print(f"error: step {name} failed", file=sys.stderr)
            return 1
        log[name] = {"command": " ".join(command), "seconds": round(time.time() - start, 1)}
        log_file.write_text(json.dumps(log, indent=2))
    out = export(workdir, workdir / "weights", log)
    print(f"[export] {out}")
    if args.install:
        export(workdir, BUNDLED_WEIGHTS, log)
        print(f"[install] {BUNDLED_WEIGHTS}")
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m swifti2v_jax.demo.reproduce")
