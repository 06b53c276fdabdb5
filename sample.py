"""SwiftI2V image-to-video: one image and a prompt in, an mp4 out.

    python sample.py                                   # bundled demo models, example image
    python sample.py --image cat.png --prompt "a cat yawns" --output cat.mp4
    python sample.py --config=configs/sample.py:swifti2v_2k \\
        --stage1_checkpoints ckpt/i2v_a14b --checkpoints ckpt/ti2v_5b \\
        --image in.png --prompt "..." --output out.mp4 --summary out.json
    python sample.py --manifest jobs.jsonl --output-dir OUT   # many clips (docs/manifest.md)
    python sample.py --prompts story.txt --frames 161 ...     # a prompt per Stage I chunk

Every input is checked before any model runs; a problem ends the run with one line on stderr,
a non-zero exit status and no output file. The mp4 is written under a temporary name next to
--output and renamed when complete; SIGTERM or Ctrl-C deletes it (a previous --output stays)
and exits with status 128 + signal number. Flags override the matching --config fields.
"""

from __future__ import annotations

# First, so that Ctrl-C or SIGTERM during the slow imports below stops at once (docs/faults.md).
from swifti2v_jax import startup  # noqa: F401

# isort: split
import sys
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from swifti2v_jax import cli
from swifti2v_jax.generation import (
    CHECKPOINT_FLAGS,
    closing_line,
    enable_compilation_cache,
    generate,
    generate_errors,
    log,
    override,
    prepare,
    prepare_errors,
)

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
flags.DEFINE_string(
    "prompts",
    None,
    "Prompt timeline: a text file, one prompt per Stage I chunk per line (docs/long-video.md).",
)
flags.DEFINE_string("negative_prompt", None, "Negative prompt ('' = Wan2.2's default).")
flags.DEFINE_string("output", None, "Output .mp4 path.")
flags.DEFINE_bool("no-overwrite", False, "Refuse to replace an existing --output.")
flags.DEFINE_integer("seed", None, "Random seed.")
flags.DEFINE_integer("frames", None, "Number of frames, k x the VAE stride + 1 (e.g. 81).")
flags.DEFINE_string("resolution", None, "Output WIDTHxHEIGHT (multiples of 32) or 'auto'.")
flags.DEFINE_integer("stage1_steps", None, "Stage I sampling steps.")
flags.DEFINE_integer("stage2_steps", None, "Stage II sampling steps.")
flags.DEFINE_string("summary", None, "Write a JSON summary (timings, memory, ...) here.")
flags.DEFINE_string("manifest", None, "JSON-lines file of clips to make (docs/manifest.md).")
flags.DEFINE_string("output-dir", None, "With --manifest: where OUT/<name>.mp4 go.")
flags.DEFINE_integer("devices", 0, "With --manifest: local devices to use (0 = all).")
for _name, (_, _help) in CHECKPOINT_FLAGS.items():
    flags.DEFINE_string(_name, None, _help)
flags.DEFINE_bool(
    "plan", False, "Print the run's memory and transfer plan and exit (no weights needed); "
    "exit status 1 when a peak is over the budget (sampling/memory_plan.py).",
)  # fmt: skip
flags.DEFINE_enum(
    "plan_target", "local", ["local", "gpu-24gb", "v5e-1", "v6e-1"],
    "--plan for: this machine, one 24 GB GPU + 64 GB RAM, one TPU v5e / v6e chip.",
)  # fmt: skip
flags.DEFINE_alias("plan-target", "plan_target")
flags.DEFINE_string("json", None, "With --plan: also write the plan as JSON here.")

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
    **{flag: field for flag, (field, _) in CHECKPOINT_FLAGS.items()},
}


UsageError = cli.UserError  # ends the run with a one-line message (no traceback)


def apply_flag_overrides(config) -> None:
    override(config, {field: getattr(FLAGS, flag) for flag, field in _OVERRIDES.items()})
    if FLAGS.prompts:
        override(config, {"prompts": read_timeline(FLAGS.prompts)})
    if FLAGS["no-overwrite"].value:
        override(config, {"overwrite": False})


def read_timeline(path: str) -> list[str]:
    """--prompts FILE: one prompt per non-blank line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise cli.UsageError(f"--prompts {file} is not a file")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise cli.UsageError(f"--prompts {file} has no prompt")
    return prompts


def main(argv) -> int:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keeps Orbax's per-restore INFO lines out
    config = cli.config_value(_CONFIG, "sample.py")
    apply_flag_overrides(config)
    enable_compilation_cache(config.compilation_cache_dir)  # before anything compiles
    if FLAGS.manifest:
        return run_manifest(config)
    if FLAGS.plan:
        from swifti2v_jax.run_plan import print_plan

        try:
            print_plan(config, FLAGS.plan_target, FLAGS.json)
        except prepare_errors() as e:
            return _fail(e)
        return 0
    try:
        prepared = prepare(config)
    except prepare_errors() as e:
        return _fail(e)
    try:
        summary = generate(prepared)
    except generate_errors() as e:
        return _fail(e)  # user-fixable problems found late (e.g. a damaged checkpoint)
    log(closing_line(summary))
    return 0


def run_manifest(config) -> int:
    """Every row of --manifest; the exit status is the number of failed rows (at most 100)."""
    import jax

    from swifti2v_jax import manifest

    if FLAGS.output or FLAGS.summary:
        raise cli.UsageError(
            "--manifest writes OUT/<name>.mp4: give --output-dir, not --output/--summary"
        )
    manifest_path = Path(FLAGS.manifest).expanduser()
    if not manifest_path.is_file():
        raise cli.UsageError(f"--manifest {manifest_path} is not a file")
    output_dir = FLAGS["output-dir"].value
    if not output_dir:
        raise cli.UsageError("--manifest needs --output-dir")
    output_dir = Path(output_dir).expanduser().absolute()
    output_dir.mkdir(parents=True, exist_ok=True)
    devices = jax.local_devices()
    if FLAGS.devices:
        if not 0 < FLAGS.devices <= len(devices):
            raise cli.UsageError(f"--devices {FLAGS.devices}: this process has {len(devices)}")
        devices = devices[: FLAGS.devices]
    report = manifest.run(
        config, manifest_path, output_dir, process=manifest.process_share(),
        devices=devices if len(devices) > 1 else None,
    )  # fmt: skip
    log(report.line())
    return min(len(report.failed), 100)


def _fail(error: BaseException) -> int:
    print(f"sample.py: error: {cli.one_line(error)}", file=sys.stderr)
    return cli.EXIT_USER


if __name__ == "__main__":
    cli.run(main, prog="sample.py", absl_flags=True)
