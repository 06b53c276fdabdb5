"""The two-stage SwiftI2V pipeline on converted checkpoints: one image and a prompt in, frames out.

Everything a user can get wrong (checkpoint paths and kinds, incompatible models, frame count,
sizes) is checked by `SwiftI2VPipeline(...)` and `plan(...)` from config files alone, before
any weights are loaded. `generate` runs the stage sequence (sampling/orchestrator.py) with a
`CheckpointModels` source (sampling/residency.py): each model is loaded when its stage starts
and, by the memory options, dropped when the stage ends.
"""

from __future__ import annotations

from swifti2v_jax.sampling import orchestrator
from swifti2v_jax.sampling.clock import StageClock
from swifti2v_jax.sampling.config import (  # noqa: F401 -- the pipeline's public names
    MemoryOptions,
    PipelineConfig,
    PipelineError,
    pipeline_config,
)
from swifti2v_jax.sampling.models import (  # noqa: F401
    ModelPaths,
    ModelSpecs,
    inspect_models,
    resolve_model_paths,
)
from swifti2v_jax.sampling.orchestrator import GenerationResult
from swifti2v_jax.sampling.plan import SizePlan, auto_resolution, plan_sizes  # noqa: F401
from swifti2v_jax.sampling.residency import CheckpointModels, WarmModels


class SwiftI2VPipeline:
    """Stage I + hybrid reference + Stage II CSG + streaming decode.

    Construction reads only the checkpoints' config files (and fails with PipelineError on
    anything missing or incompatible); weights are loaded inside `generate`.
    """

    def __init__(self, config: PipelineConfig, paths: ModelPaths):
        self.config = config
        self.paths = paths
        self.specs = inspect_models(paths, config)

    def plan(self, width: int, height: int, frames: int) -> SizePlan:
        return plan_sizes(self.specs, self.config, width, height, frames)

    @property
    def needs_negative_prompt(self) -> bool:
        return self.config.needs_negative_prompt

    def generate(
        self, image, prompt: str, plan: SizePlan, *, models: WarmModels | None = None, **options
    ) -> GenerationResult:
        """`orchestrator.run` on this pipeline's checkpoints (options: negative_prompt, seed,
        sink, which receives uint8 frames [n, H, W, 3] as segments finish, on_progress).

        image: an RGB PIL image (any size; resized and centre-cropped to the plan's sizes).
        models: resident models kept from earlier runs (they must serve these checkpoints);
        None loads each model for this run only.
        """
        clock = StageClock()
        if models is None:
            models = CheckpointModels(self.paths, self.config, clock)
        else:
            models.start_run(self.paths, self.config, clock)
        return orchestrator.run(
            models, self.specs, self.config, image, prompt, plan, clock=clock, **options
        )
