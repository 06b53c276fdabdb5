"""Image + prompt -> mp4: the one entry point behind `sample.py` and the web app
(swifti2v_jax/app).

`prepare(config)` checks every input of a sample config (presets/sample.py) before any model
loads; `generate(prepared)` runs the pipeline (sampling/pipeline.py) and streams the frames
into the mp4, written under a temporary name and renamed when complete (any failure or
cancellation deletes it). The web app passes resident models (sampling/residency.py
`WarmModels`) and a progress callback that may raise to cancel.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from swifti2v_jax import cli

# Flags naming converted checkpoints (sample.py, the web app): flag -> (config field, help).
CHECKPOINT_FLAGS = {
    "checkpoints": ("checkpoints.root", "Converted checkpoint root (python -m conversion)."),
    "stage1_checkpoints": (
        "checkpoints.stage1_root",
        "Converted Stage I root (default: --checkpoints).",
    ),
    "stage1": ("checkpoints.stage1", "Stage I DiT dir (a14b: dir with high_noise/, low_noise/)."),
    "stage1_vae": ("checkpoints.stage1_vae", "Stage I VAE dir."),
    "stage2": ("checkpoints.stage2", "Stage II DiT dir."),
    "vae": ("checkpoints.vae", "Stage II (Wan2.2) VAE dir."),
    "t5": ("checkpoints.t5", "Converted umT5 dir."),
    "tokenizer": ("checkpoints.tokenizer", "Tokenizer dir (with tokenizer.json)."),
}

UsageError = cli.UserError  # ends the run with a one-line message (no traceback)


def log(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def sample_config(preset: str = "demo"):
    """A preset of presets/sample.py (what `--config=configs/sample.py:PRESET` loads)."""
    from swifti2v_jax.presets import sample as sample_presets

    return sample_presets.get_config(preset)


def override(config, values: dict[str, Any]) -> None:
    """Sets config fields by dotted name ('stage2.steps'); None leaves a field as it is."""
    with config.unlocked():
        for field, value in values.items():
            if value is None:
                continue
            *parents, leaf = field.split(".")
            node = config
            for parent in parents:
                node = node[parent]
            node[leaf] = value


def _note_long_prompt(prompt: str, tokenizer_dir, text_len: int) -> None:
    """A prompt longer than the text encoder's input is cut there: say so, with the count."""
    from swifti2v_jax import text

    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        return  # reported by the model checks
    count = text.Tokenizer(tokenizer_dir, text_len=text_len).count(prompt)
    if count > text_len:
        log(
            f"prompt: {count} tokens, longer than the {text_len} the text encoder takes; the "
            f"last {count - text_len} are dropped"
        )


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
        from swifti2v_jax.io.video import umask

        os.chmod(tmp, 0o666 & ~umask())  # mkstemp made it 0600; a plain new file's mode
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
    prompt: str | list[str]  # a list: a prompt timeline, one per Stage I chunk
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
    video_io.remove_stale_partials(output, log)
    if output.exists():
        if not config.get("overwrite", True):
            raise UsageError(f"--output {output} exists and --no-overwrite was given")
        log(f"--output {output} exists: it is replaced once the new video is complete")
    seed = int(config.seed)
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be between 0 and 2**63 - 1, got {seed}")
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
    prompt = config.prompt if config.prompt is not None else demo.EXAMPLE_PROMPT
    if not prompt.strip():
        raise UsageError("--prompt is empty; give a prompt, or leave --prompt out for the example")
    timeline = config.get("prompts")  # a prompt timeline: one per Stage I chunk (or None)
    if timeline:
        if config.prompt is not None:
            raise UsageError("give --prompt or --prompts (a timeline), not both")
        if not all(isinstance(p, str) and p.strip() for p in timeline):
            raise UsageError("--prompts: every prompt of the timeline must be non-empty text")
        prompt = list(timeline)

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
    for text in [prompt] if isinstance(prompt, str) else dict.fromkeys(prompt):
        _note_long_prompt(text, paths.tokenizer, pipeline_config.text_len)
    if size is None:
        size = pipeline_lib.auto_resolution(
            pipeline.specs, pipeline_config, image.size, int(config.max_area)
        )
        log(f"resolution auto: {size[0]}x{size[1]} for a {image.size[0]}x{image.size[1]} image")
    plan = pipeline.plan(size[0], size[1], int(config.frames))
    if not isinstance(prompt, str):
        from swifti2v_jax.sampling import orchestrator

        chunks = orchestrator.chunk_count(pipeline.specs, pipeline_config, plan.frames)
        try:
            orchestrator.timeline(prompt, chunks)
        except ValueError as e:
            raise UsageError(f"--prompts: {e}") from None
        if len(set(prompt)) > 1 and pipeline_config.stage1.backbone != "ti2v":
            raise UsageError("--prompts: a timeline of several prompts needs a ti2v Stage I")
    image_io.check_large_enough(image.size, plan.stage1_width, plan.stage1_height, image_name)
    fit = image_io.fit_note(image.size, plan.width, plan.height)
    if fit:
        log(f"image: {fit}")
    from swifti2v_jax.run_plan import check_memory_plan

    check_memory_plan(pipeline, plan)  # with memory budgets: the plan fits, or one line
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


def generate(prepared: Prepared, *, models=None, on_progress=None) -> dict:
    """Runs the pipeline, streaming finished segments into the mp4 writer; -> summary.

    models: a `WarmModels` (sampling/residency.py) to keep the models and compiled programs
    for later runs; None loads from the checkpoints for this run only.
    on_progress: called with each `orchestrator.Progress`; an exception it raises (e.g. a
    cancellation) ends the run, and the unfinished mp4 is deleted.
    """
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
            models=models,
            on_progress=on_progress,
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


def prepare_errors() -> tuple[type[BaseException], ...]:
    """What `prepare` raises for a rejected input (library checks raise ValueErrors)."""
    return (UsageError, ValueError)


def generate_errors() -> tuple[type[BaseException], ...]:
    """User-fixable problems `generate` may still meet (e.g. a damaged checkpoint)."""
    from swifti2v_jax import checkpoints
    from swifti2v_jax.io.image import ImageError
    from swifti2v_jax.io.video import VideoError
    from swifti2v_jax.sampling.pipeline import PipelineError

    return (UsageError, PipelineError, ImageError, VideoError, checkpoints.CheckpointError)


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
