"""The whole `swifti2v_2k_ti2v` pipeline in the GPU check (benchmarks/gpu_check.py): random
weights at the real shapes (TI2V-5B in both stages, the Wan2.2 VAE, umT5-XXL with the bundled
demo tokenizer), one clip of the bundled example image, `sampling/orchestrator.run` exactly as
sample.py runs it. Reports seconds per stage with the compile seconds inside each stage apart
(sampling/clock.py CompileMeter: compile events by the stage whose clock is open), compilations,
peak device memory and the DiT FLOPs of the run (Stage I and Stage II forwards x the analytic
FLOPs of one forward).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
from PIL import Image

from benchmarks import common
from benchmarks.common import DiTProgram
from swifti2v_jax import demo
from swifti2v_jax.models import t5 as t5_lib
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models import vae_model
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.presets import sample as sample_presets
from swifti2v_jax.presets import t5 as t5_presets
from swifti2v_jax.presets import vae as vae_presets
from swifti2v_jax.sampling import orchestrator
from swifti2v_jax.sampling.clock import CompileMeter, StageClock
from swifti2v_jax.sampling.config import pipeline_config
from swifti2v_jax.sampling.models import ModelSpecs
from swifti2v_jax.sampling.plan import plan_sizes
from swifti2v_jax.sampling.residency import ResidentModels
from swifti2v_jax.text import PromptEncoder, Tokenizer

PRESET = "swifti2v_2k_ti2v"
# The dry run: the same preset on the demo's architectures (a DiT of presets/dit.py
# demo_stage1 comes from gpu_check.py, the demo VAE, the tiny umT5) and a tiny clip with 2 steps
# per stage: its VAE programs compile in seconds on a CPU (the 48-channel test VAE takes
# minutes on 2 shared cores).
DRY_RUN = dict(dit="demo_stage1", resolution="64x32", frames=9, vae="demo", t5="tiny", steps=2)


def random_tree(abstract, seed: int = 0):
    """Random arrays made on the device in their own dtypes (host numpy would take minutes for
    billions of parameters): norm scales 1, everything else ~N(0, 1/fan_in). One small
    program per leaf shape keeps the peak at one leaf in fp32."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    keys = jax.random.split(jax.random.key(seed), len(flat))
    leaves = []
    for (path, leaf), key in zip(flat, keys):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            leaves.append(jax.numpy.ones(leaf.shape, leaf.dtype))
            continue
        fan_in = leaf.shape[-2] if len(leaf.shape) >= 2 else 1
        scale = float(max(fan_in, 1) ** -0.5)
        leaves.append(_normal(key, tuple(leaf.shape), jax.numpy.dtype(leaf.dtype), scale))
    return jax.tree.unflatten(treedef, leaves)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _normal(key, shape, dtype, scale):
    return (jax.random.normal(key, shape, jax.numpy.float32) * scale).astype(dtype)


@dataclasses.dataclass
class PipelineRun:
    """What the check runs: the preset's PipelineConfig, the models' configs and size plan."""

    config: object
    specs: ModelSpecs
    plan: object
    preset: str = PRESET


def prepare(dit: DiTConfig, dry_run: bool) -> PipelineRun:
    """The preset at 2560x1408, 81 frames (dry run: tiny models, 64x64, 17 frames, 2 steps);
    `dit` (TI2V-5B with the check's dtype and attention) serves both stages."""
    raw = sample_presets.get_config(PRESET)
    raw.progress = False
    vae_name, t5_name = "wan22", "umt5_xxl"
    if dry_run:
        raw.resolution, raw.frames = DRY_RUN["resolution"], DRY_RUN["frames"]
        raw.stage1.steps = raw.stage2.steps = DRY_RUN["steps"]
        vae_name, t5_name = DRY_RUN["vae"], DRY_RUN["t5"]
    config = pipeline_config(raw)
    vae = vae_presets.config(vae_name)
    specs = ModelSpecs(stage1=dit, stage1_vae=vae, stage2=dit, vae=vae,
                       t5=t5_presets.config(t5_name))  # fmt: skip
    width, height = (int(v) for v in raw.resolution.split("x"))
    return PipelineRun(config, specs, plan_sizes(specs, config, width, height, raw.frames))


def resident_models(run: PipelineRun, dit_params) -> ResidentModels:
    """Random VAE and umT5 weights on the device beside the given DiT weights."""
    vae_params = random_tree(vae_model.abstract_params(run.specs.vae), seed=1)
    t5_config = run.specs.t5
    t5_abstract = jax.eval_shape(lambda: t5_lib.init_params(t5_config, jax.random.key(0)))
    t5_params = random_tree(t5_abstract, seed=2)
    tokenizer = Tokenizer(demo.BUNDLED_WEIGHTS / "tokenizer", text_len=run.config.text_len)
    encoder = PromptEncoder(t5_params, t5_config, tokenizer, identity="random umT5",
                            text_len=run.config.text_len)  # fmt: skip
    return ResidentModels(stage1_dits=(dit_params,), stage1_vae=vae_params,
                          stage2_dit=dit_params, vae=vae_params, text_encoder=encoder)  # fmt: skip


def dit_forwards(run: PipelineRun, summary: dict) -> dict[str, tuple[int, DiTProgram]]:
    """(forwards, program) of each stage's DiT in the finished run."""
    config, plan, specs = run.config, run.plan, run.specs
    stride = vae_lib.spatial_factor(specs.stage1_vae)
    stage1_grid = (plan.latent_frames, plan.stage1_height // stride, plan.stage1_width // stride)
    window = (plan.windows[0].size, *plan.latent_hw)
    stage2_per_step = (2 if config.stage2.guide_scale != 1.0 else 1) * config.stage2.ensemble
    stage2 = summary["segments"] * summary["stage2_steps"] * stage2_per_step
    return {
        "stage1": (sum(summary["stage1_expert_forwards"].values()),
                   DiTProgram("stage1", specs.stage1, stage1_grid, config.text_len)),
        "stage2": (stage2, DiTProgram("stage2_window", specs.stage2, window, config.text_len,
                                      1 + config.stage2.neighbours)),
    }  # fmt: skip


def run_clip(run: PipelineRun, models: ResidentModels) -> dict:
    """One clip end to end; seconds per stage split into compile and run."""
    image = Image.open(demo.EXAMPLE_IMAGE).convert("RGB")
    clock = StageClock()
    start = time.perf_counter()
    with CompileMeter(clock) as meter:
        result = orchestrator.run(models, run.specs, run.config, image, demo.EXAMPLE_PROMPT,
                                  run.plan, seed=0, clock=clock)  # fmt: skip
    wall = time.perf_counter() - start
    summary = result.summary
    stages = {}
    for name in (*orchestrator.STAGES, "total"):
        total = summary["seconds"].get(name, 0.0)
        compile_s = sum(meter.seconds.values()) if name == "total" else meter.seconds.get(name, 0.0)
        stages[name] = dict(seconds=total, compile_seconds=compile_s,
                            run_seconds=max(total - compile_s, 0.0))  # fmt: skip
    forwards = dit_forwards(run, summary)
    dit_flops = sum(n * common.analytic_dit_flops(p) for n, p in forwards.values())
    return dict(
        preset=run.preset,
        frames=summary["frames"], width=summary["width"], height=summary["height"],
        segments=summary["segments"],
        stage2_steps=summary["stage2_steps"],
        stage1_expert_forwards=summary["stage1_expert_forwards"],
        stage2_tokens_per_forward=summary["stage2_tokens_per_forward"],
        stages=stages,
        wall_seconds=wall,
        compilations=sum(meter.compilations.values()),
        compilations_per_stage=meter.compilations,
        stage2_compilations=summary["stage2_compilations"],
        peak_memory_bytes=summary["peak_memory_bytes"],
        peak_memory_source=summary["peak_memory_source"],
        dit_forwards={k: n for k, (n, _) in forwards.items()},
        dit_flops=dit_flops,
    )  # fmt: skip
