"""`sample.py --plan` and the check a run makes before loading weights (sampling/memory_plan.py).

`print_plan(config, target, json_path)` prints the whole-run plan of a sample config: the
checkpoints' config files when given (or the demo models'), else the public architectures
of the preset, so a 2K plan needs no weights. `check_memory_plan(prepared)` is the run's own
check (generation.prepare calls it last) when memory.device_budget_gb / host_budget_gb are
set: it raises PlanError, one line naming the phase and the excess.
"""

from __future__ import annotations

from pathlib import Path

from swifti2v_jax import cli
from swifti2v_jax.generation import (
    _check_summary_path,
    _write_json_atomically,
    log,
    resolve_checkpoints,
)

TARGET_NAMES = ("local", "gpu-24gb", "v5e-1", "v6e-1")


def plan_inputs(config):
    """(model specs, sampler config, sizes) of a sample config, without weights."""
    from swifti2v_jax import demo
    from swifti2v_jax.io import image as image_io
    from swifti2v_jax.sampling import models as models_lib
    from swifti2v_jax.sampling import pipeline as pipeline_lib

    pipeline_config = pipeline_lib.pipeline_config(config)
    if any(dict(config.checkpoints).values()) or config.preset == "demo":
        checkpoints, _, _ = resolve_checkpoints(config)
        paths = pipeline_lib.resolve_model_paths(checkpoints, pipeline_config.stage1.backbone)
        specs = pipeline_lib.inspect_models(paths, pipeline_config)
    else:
        specs = models_lib.public_specs(pipeline_config)
    resolution = str(config.resolution).strip().lower()
    if resolution == "auto":
        image_path = Path(config.image).expanduser() if config.image else demo.EXAMPLE_IMAGE
        image, _ = image_io.load_image(image_path)
        size = pipeline_lib.auto_resolution(
            specs, pipeline_config, image.size, int(config.max_area)
        )
    else:
        try:
            size = image_io.parse_size(resolution)
        except ValueError as e:
            raise cli.UserError(f"--resolution: {e}") from None
    sizes = pipeline_lib.plan_sizes(specs, pipeline_config, size[0], size[1], int(config.frames))
    return specs, pipeline_config, sizes


def print_plan(config, target: str, json_path: str | None) -> None:
    """Prints the plan (stdout), writes it as JSON; PlanError when a peak is over budget."""
    from swifti2v_jax.sampling import memory_plan

    json_file = _check_summary_path(json_path) if json_path else None
    specs, pipeline_config, sizes = plan_inputs(config)
    plan = memory_plan.whole_run(
        specs, pipeline_config, sizes, target, compile_missing=False, measure_runtime=True,
        on_compile=lambda name: log(f"plan: compiling {name} (cached afterwards)"),
    )  # fmt: skip
    print(plan.table())
    if json_file is not None:
        _write_json_atomically(json_file, plan.as_dict())
    plan.check()


def check_memory_plan(pipeline, sizes) -> None:
    """A run's plan on this machine against its budgets (none set: nothing to do)."""
    memory = pipeline.config.memory
    if not (memory.device_budget_gb or memory.host_budget_gb):
        return
    from swifti2v_jax.sampling import memory_plan

    memory_plan.whole_run(pipeline.specs, pipeline.config, sizes, "local").check()
