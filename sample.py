"""SwiftI2V image-to-video: one image and a prompt in, an mp4 out.

    python sample.py                                   # bundled demo models, example image
    python sample.py --image cat.png --prompt "a cat yawns" --output cat.mp4
    python sample.py --config=configs/sample.py:swifti2v_2k \\
        --stage1_checkpoints ckpt/i2v_a14b --checkpoints ckpt/ti2v_5b \\
        --image in.png --prompt "..." --output out.mp4 --summary out.json

Every input is checked before any model runs; a problem ends the run with one line on stderr,
a non-zero exit status and no output file. The mp4 is written under a temporary name next to
--output and renamed when complete; SIGTERM or Ctrl-C deletes it (a previous --output stays)
and exits with status 128 + signal number. Flags override the matching --config fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from absl import flags, logging
from ml_collections import config_flags

from swifti2v_jax import cli

_HERE = Path(__file__).resolve().parent  # also on sys.path: `configs` and the package

with cli.config_errors("sample.py"):  # applies --config.x overrides already (ml_collections)
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        str(_HERE / "configs" / "sample.py"),
        "Sampling config (file[:preset]).",
        lock_config=True,
    )
flags.DEFINE_string("image", None, "Input image (default: the bundled example image).")
flags.DEFINE_string("prompt", None, "Text prompt (default: the example prompt).")
flags.DEFINE_string("negative_prompt", None, "Negative prompt ('' = Wan2.2's default).")
flags.DEFINE_string("output", None, "Output .mp4 path.")
flags.DEFINE_integer("seed", None, "Random seed.")
flags.DEFINE_integer("frames", None, "Number of frames, k x the VAE stride + 1 (e.g. 81).")
flags.DEFINE_string("resolution", None, "Output WIDTHxHEIGHT (multiples of 32) or 'auto'.")
flags.DEFINE_integer("stage1_steps", None, "Stage I sampling steps.")
flags.DEFINE_integer("stage2_steps", None, "Stage II sampling steps.")
flags.DEFINE_string("summary", None, "Write a JSON summary (timings, memory, ...) here.")
flags.DEFINE_string("checkpoints", None, "Converted checkpoint root (python -m conversion).")
flags.DEFINE_string("stage1_checkpoints", None, "Converted Stage I root (default: --checkpoints).")
flags.DEFINE_string("stage1", None, "Stage I DiT dir (a14b: dir with high_noise/, low_noise/).")
flags.DEFINE_string("stage1_vae", None, "Stage I VAE dir.")
flags.DEFINE_string("stage2", None, "Stage II DiT dir.")
flags.DEFINE_string("vae", None, "Stage II (Wan2.2) VAE dir.")
flags.DEFINE_string("t5", None, "Converted umT5 dir.")
flags.DEFINE_string("tokenizer", None, "Tokenizer dir (with tokenizer.json).")

FLAGS = flags.FLAGS

# flag name -> config field it overrides
_OVERRIDES = {
    "image": "image",
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "output": "output",
    "seed": "seed",
    "frames": "frames",
    "resolution": "resolution",
    "summary": "summary",
    "stage1_steps": "stage1.steps",
    "stage2_steps": "stage2.steps",
    "checkpoints": "checkpoints.root",
    "stage1_checkpoints": "checkpoints.stage1_root",
    "stage1": "checkpoints.stage1",
    "stage1_vae": "checkpoints.stage1_vae",
    "stage2": "checkpoints.stage2",
    "vae": "checkpoints.vae",
    "t5": "checkpoints.t5",
    "tokenizer": "checkpoints.tokenizer",
}


UsageError = cli.UserError  # ends the run with a one-line message (no traceback)


def log(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def apply_flag_overrides(config) -> None:
    with config.unlocked():
        for flag, field in _OVERRIDES.items():
            value = getattr(FLAGS, flag)
            if value is None:
                continue
            *parents, leaf = field.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            node[leaf] = value


def _check_summary_path(path: str) -> Path:
    summary = Path(path).expanduser().absolute()
    if summary.is_dir():
        raise UsageError(f"--summary {summary} is a directory; give a .json file name")
    if not summary.parent.is_dir():
        raise UsageError(f"--summary directory {summary.parent} does not exist")
    if not os.access(summary.parent, os.W_OK):
        raise UsageError(f"--summary directory {summary.parent} is not writable")
    return summary


def _write_json_atomically(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_checkpoints(config) -> tuple[dict, str | None, bool]:
    """-> (the checkpoints config to use, a log note when the demo models stand in, whether
    those are the random-init ones). May build the random demo models (a few seconds)."""
    from swifti2v_jax import demo
    from swifti2v_jax.demo import build as demo_build

    checkpoints = dict(config.checkpoints)
    if any(checkpoints.values()):
        return checkpoints, None, False
    if config.preset != "demo":
        raise UsageError(
            f"the {config.preset} preset needs converted Wan2.2 checkpoints: pass --checkpoints "
            "ROOT (and --stage1_checkpoints ROOT for an I2V-A14B Stage I); see the README"
        )
    bundled = demo.BUNDLED_WEIGHTS
    if config.stage1.backbone == "ti2v" and (bundled / "dit" / "config.json").is_file():
        checkpoints["root"] = str(bundled)
        return checkpoints, f"using the bundled demo models in {bundled}", False
    root, built = demo_build.ensure_random_demo("ti2v")
    checkpoints["root"] = str(root)
    where = str(root)
    if config.stage1.backbone == "a14b":
        stage1_root, built_a14b = demo_build.ensure_random_demo("a14b")
        checkpoints["stage1_root"] = str(stage1_root)
        built = built or built_a14b
        where = f"{stage1_root} and {root}"
    action = "built" if built else "cached"
    note = (
        f"no trained demo weights for this setting: using tiny RANDOM-INIT demo models ({action} "
        f"in {where}); the video will be noise. Pass --checkpoints for real models"
    )
    return checkpoints, note, True


@dataclasses.dataclass
class Prepared:
    """Everything validated, nothing loaded: the inputs of the generation phase."""

    config: Any
    output: Path
    summary_path: Path | None
    image_path: Path
    image: Any
    prompt: str
    pipeline: Any
    plan: Any
    demo_note: str | None
    random_demo: bool


def prepare(config) -> Prepared:
    """Checks every input (paths, image, sizes, checkpoint configs); loads no weights (it may
    write the random demo models on first use)."""
    from swifti2v_jax import demo
    from swifti2v_jax.io import image as image_io
    from swifti2v_jax.io import video as video_io
    from swifti2v_jax.sampling import pipeline as pipeline_lib

    # 1. Inputs that need no model: output paths, resolution format, the image.
    output = video_io.check_output_path(config.output)
    summary_path = _check_summary_path(config.summary) if config.summary else None
    resolution = str(config.resolution).strip().lower()
    try:
        size = None if resolution == "auto" else image_io.parse_size(resolution)
    except ValueError as e:
        raise UsageError(f"--resolution: {e}") from None
    image_path = Path(config.image).expanduser() if config.image else demo.EXAMPLE_IMAGE
    image, note = image_io.load_image(image_path)
    if note:
        log(f"image: {note}")
    image_name = f"image {image_path}"
    prompt = config.prompt or demo.EXAMPLE_PROMPT
    if not prompt.strip():
        raise UsageError("--prompt is empty")

    # 2. Checkpoints: config files only (no weights yet), then sizes and the frame count
    #    against the models (the VAE's temporal stride).
    checkpoints, demo_note, random_demo = resolve_checkpoints(config)
    pipeline_config = pipeline_lib.pipeline_config(config)
    if not config.text_cache_dir:
        pipeline_config = dataclasses.replace(
            pipeline_config, text_cache_dir=demo.cache_root() / "text"
        )
    paths = pipeline_lib.resolve_model_paths(checkpoints, pipeline_config.stage1.backbone)
    pipeline = pipeline_lib.SwiftI2VPipeline(pipeline_config, paths)
    if size is None:
        size = pipeline_lib.auto_resolution(
            pipeline.specs, pipeline_config, image.size, int(config.max_area)
        )
        log(f"resolution auto: {size[0]}x{size[1]} for a {image.size[0]}x{image.size[1]} image")
    plan = pipeline.plan(size[0], size[1], int(config.frames))
    image_io.check_large_enough(image.size, plan.stage1_width, plan.stage1_height, image_name)
    fit = image_io.fit_note(image.size, plan.width, plan.height)
    if fit:
        log(f"image: {fit}")
    return Prepared(
        config,
        output,
        summary_path,
        image_path,
        image,
        prompt,
        pipeline,
        plan,
        demo_note,
        random_demo,
    )


def enable_compilation_cache(setting: str) -> Path | None:
    """Points JAX's persistent compilation cache at `setting` ('' = default, 'none' = off)."""
    import jax

    from swifti2v_jax import demo

    if setting == "none":
        return None
    directory = (
        Path(setting).expanduser() if setting else demo.cache_root() / "jax-compilation-cache"
    )
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Cache every program: the demo's are small and quick, the real models' slow to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def generate(prepared: Prepared) -> dict:
    """Runs the pipeline, streaming finished segments into the mp4 writer; -> summary."""
    import jax

    from swifti2v_jax.io import video as video_io

    config, plan, pipeline = prepared.config, prepared.plan, prepared.pipeline
    if prepared.demo_note:
        log(prepared.demo_note)
    for line in plan.notes:
        log(line)
    log(
        f"SwiftI2V: {plan.frames} frames at {plan.width}x{plan.height} (Stage I "
        f"{plan.stage1_width}x{plan.stage1_height}, {pipeline.config.stage1.backbone}), "
        f"{plan.segments} segment(s) of {plan.windows[0].size} blocks, backend "
        f"{jax.default_backend()}"
    )
    writer = video_io.VideoWriter(prepared.output, plan.width, plan.height, fps=float(config.fps))
    try:
        result = pipeline.generate(
            prepared.image,
            prepared.prompt,
            plan,
            negative_prompt=config.negative_prompt,
            seed=int(config.seed),
            sink=writer.write_frames,
        )
        if writer.frames_written != plan.frames:
            raise RuntimeError(
                f"internal error: wrote {writer.frames_written} frames, expected {plan.frames}"
            )
        writer.close()
    except BaseException:
        writer.abort()
        raise
    summary = dict(
        result.summary,
        output=str(prepared.output),
        image=str(prepared.image_path),
        prompt=prepared.prompt,
        preset=config.preset,
        fps=float(config.fps),
        demo_random_weights=prepared.random_demo,
    )
    if prepared.summary_path is not None:
        _write_json_atomically(prepared.summary_path, summary)
    return summary


def closing_line(summary: dict) -> str:
    s = summary["seconds"]
    gib = summary["peak_memory_bytes"] / 2**30
    return (
        f"wrote {summary['output']}: {summary['frames']} frames {summary['width']}x"
        f"{summary['height']}, {summary['segments']} segment(s), {s['total']:.1f} s total "
        f"(load {s['load']:.1f}, text {s['text']:.1f}, stage I {s['stage1']:.1f}, reference "
        f"{s['reference_encode']:.1f}, stage II {s['stage2']:.1f}, decode {s['decode']:.1f}); "
        f"peak memory {gib:.2f} GiB ({summary['peak_memory_source']}); "
        f"backend {summary['backend']}"
    )


def main(argv) -> int:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from swifti2v_jax import checkpoints
    from swifti2v_jax.io.image import ImageError
    from swifti2v_jax.io.video import VideoError
    from swifti2v_jax.sampling.pipeline import PipelineError

    logging.set_verbosity(logging.WARNING)  # keeps Orbax's per-restore INFO lines out
    config = cli.config_value(_CONFIG, "sample.py")
    apply_flag_overrides(config)
    enable_compilation_cache(config.compilation_cache_dir)  # before anything compiles
    try:
        # Validation: any ValueError here is a rejected input (library checks raise those).
        prepared = prepare(config)
    except (UsageError, ValueError) as e:
        return _fail(e)
    try:
        summary = generate(prepared)
    except (UsageError, PipelineError, ImageError, VideoError, checkpoints.CheckpointError) as e:
        return _fail(e)  # user-fixable problems found late (e.g. a damaged checkpoint)
    log(closing_line(summary))
    return 0


def _fail(error: BaseException) -> int:
    print(f"sample.py: error: {cli.one_line(error)}", file=sys.stderr)
    return cli.EXIT_USER


if __name__ == "__main__":
    cli.run(main, prog="sample.py", absl_flags=True)
