"""Every compiled program of the streamed pipeline (sampling/orchestrator.py `run`), with
abstract inputs: the jitted functions the run calls, lowered at the shapes it calls them with.

No weights and no data: parameters are `jax.eval_shape` of the initialisers and inputs are
`jax.ShapeDtypeStruct`s, so `memory_plans` gives XLA's memory analysis of the 2K programs on
a CPU. Streaming makes every shape a function of the sizes and the chunk / window lengths,
never of the clip length: benchmarks/long_video_plans.py shows the plans for 81, 481 and 1001
frames, tests/test_streaming.py checks them at tiny scale.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from swifti2v_jax.csg import reference
from swifti2v_jax.models import dit as dit_lib
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models.vae_streaming import _add_tile, _take_tile
from swifti2v_jax.sampling import solvers, stage1, stage2
from swifti2v_jax.sampling.config import PipelineConfig
from swifti2v_jax.sampling.models import ModelSpecs
from swifti2v_jax.sampling.plan import SizePlan

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Program:
    name: str
    fn: Any  # a jitted function
    args: tuple  # abstract arguments (static ones as plain values)

    def signature(self) -> str:
        leaves = jax.tree.leaves(self.args)
        return ";".join(
            f"{x.dtype}{list(x.shape)}" if hasattr(x, "shape") else repr(x) for x in leaves
        )


def _struct(shape, dtype=F32):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _vae_steps(name, params, config, first_in, rest_in, step_fn) -> list[Program]:
    """The first (cache-creating) and a later step of a streaming VAE encoder / decoder."""
    _, cache = jax.eval_shape(lambda p, x: step_fn(p, config, None, x, True), params, first_in)
    return [
        Program(f"{name}_first", step_fn, (params, config, None, first_in, True)),
        Program(f"{name}_step", step_fn, (params, config, cache, rest_in, False)),
    ]


def _decoder(name, params, config, latent_hw, tile_size=0, tile_overlap=2) -> list[Program]:
    z = config.z_dim
    if tile_size:
        tiling = vae_lib.make_tiling(*latent_hw, tile_size, tile_overlap)
        if tiling is not None:
            latent = _struct((1, 1, *latent_hw, z))
            tile = _struct((1, 1, tiling.tile_h, tiling.tile_w, z))
            s, t = vae_lib.spatial_factor(config), vae_lib.temporal_factor(config)
            pixels = _struct((1, t, tiling.tile_h * s, tiling.tile_w * s, 3))
            out = _struct((1, t, latent_hw[0] * s, latent_hw[1] * s, 3))
            weight = _struct((tiling.tile_h * s, tiling.tile_w * s))
            yx = _struct((), jnp.int32)
            return [
                *_vae_steps(f"{name}_tile", params, config, tile, tile, vae_lib._decode_step),
                Program(f"{name}_take_tile", _take_tile, (latent, yx, yx, *tile.shape[2:4])),
                Program(f"{name}_add_tile", _add_tile, (out, pixels, weight, yx, yx)),
            ]
    latent = _struct((1, 1, *latent_hw, z))
    return _vae_steps(name, params, config, latent, latent, vae_lib._decode_step)


def streamed_programs(specs: ModelSpecs, config: PipelineConfig, plan: SizePlan) -> list[Program]:
    """The programs `run` compiles for `plan` (TI2V Stage I; batch 1)."""
    if config.stage1.backbone != "ti2v":
        raise ValueError("streamed_programs covers the ti2v Stage I backbone")
    text = _struct((1, config.text_len, specs.stage1.text_dim))
    vae1, vae2 = specs.stage1_vae, specs.vae
    p_vae1, p_vae2 = vae_lib.abstract_params(vae1), vae_lib.abstract_params(vae2)
    s1 = vae_lib.spatial_factor(vae1)
    h1, w1 = plan.stage1_height, plan.stage1_width
    latent1 = (h1 // s1, w1 // s1)
    programs = []

    # Stage I: the image latent, then one program for every chunk, each chunk decoded.
    image_lo = _struct((1, 1, h1, w1, 3))
    programs.append(
        Program("stage1_image_encode", vae_lib._encode_step, (p_vae1, vae1, None, image_lo, True))
    )
    num_latent = vae_lib.num_latent_frames(vae1, plan.frames)
    length = stage1.chunk_length(num_latent, config.stage1)
    sigmas, timesteps = solvers.as_schedule_arrays(config.stage1.make_schedule())
    x_init = _struct((1, length, *latent1, vae1.z_dim))
    programs.append(
        Program(
            "stage1_dit_chunk",
            stage1._ti2v_program(specs.stage1, config.stage1),
            (
                dit_lib.abstract_params(specs.stage1),
                x_init,
                _struct((), jnp.int32),
                text,
                text,
                _struct(sigmas.shape),
                _struct(timesteps.shape),
            ),
        )  # fmt: skip
    )
    programs += _decoder("stage1_decode", p_vae1, vae1, latent1)

    # The hybrid reference: upsample a group of frames, encode it; the anchor is `_first`.
    step = vae_lib.temporal_factor(vae2)
    group = _struct((1, step, h1, w1, 3))
    programs.append(
        Program("reference_resize", reference.resize_frames, (group, plan.height, plan.width))
    )
    programs += _vae_steps(
        "reference_encode", p_vae2, vae2, _struct((1, 1, plan.height, plan.width, 3)),
        _struct((1, step, plan.height, plan.width, 3)), vae_lib._encode_step,
    )  # fmt: skip

    # Stage II: one window program for every segment.
    denoiser = stage2.WindowDenoiser(specs.stage2, config.stage2)
    size = plan.windows[0].size
    window = _struct((1, size, *plan.latent_hw, vae2.z_dim))
    sigmas, timesteps = solvers.as_schedule_arrays(config.stage2.make_schedule())
    programs.append(
        Program(
            "stage2_window",
            denoiser._jitted,
            (
                dit_lib.abstract_params(specs.stage2),
                window,
                window,
                _struct((size,), bool),
                _struct((size,), jnp.int32),
                text,
                text,
                _struct(sigmas.shape),
                _struct(timesteps.shape),
            ),
        )  # fmt: skip
    )
    memory = config.memory
    programs += _decoder(
        "stage2_decode", p_vae2, vae2, plan.latent_hw, memory.decode_tile_size,
        memory.decode_tile_overlap,
    )  # fmt: skip
    return programs


MEMORY_FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
)


def memory_plan(program: Program) -> dict[str, int]:
    """XLA's memory analysis of the compiled program (on the default backend)."""
    stats = program.fn.lower(*program.args).compile().memory_analysis()
    return {field: int(getattr(stats, field)) for field in MEMORY_FIELDS}
