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
from jax.sharding import SingleDeviceSharding

from swifti2v_jax.csg import reference
from swifti2v_jax.models import dit as dit_lib
from swifti2v_jax.models import layer_streaming, quant
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models.vae_streaming import _add_tile, _take_tile
from swifti2v_jax.sampling import solvers, stage1, stage1_a14b, stage2
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


def dit_params(dit_config: dit_lib.DiTConfig, weights: str = "native"):
    """Abstract parameters of a DiT as the run holds them: quantized to `weights`
    (memory.dit_weights) and, with the config's stream_layers, block kernels in pinned host
    memory (models/layer_streaming.py; `place` moves them to the target's device)."""
    tree = jax.eval_shape(
        lambda: quant.quantize_params(dit_lib.init_params(dit_config, jax.random.key(0)), weights)
    )
    if dit_config.stream_layers:
        tree = layer_streaming.abstract(tree, SingleDeviceSharding(jax.devices()[0]))
    return tree


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


def _encoder(name, params, config, pixel_hw, tiles) -> list[Program]:
    """The streaming encoder's steps ([frame 0], then `temporal_factor` frames), on the whole
    frame or, with tiles (memory.encode_tiles), on one tile plus the tile cut and blend."""
    step, s = vae_lib.temporal_factor(config), vae_lib.spatial_factor(config)
    tiling = None
    if tiles is not None:
        tiling = vae_lib.make_tiling(pixel_hw[0] // s, pixel_hw[1] // s, tiles[0], tiles[1])
    if tiling is None:
        return _vae_steps(
            name, params, config, _struct((1, 1, *pixel_hw, 3)), _struct((1, step, *pixel_hw, 3)),
            vae_lib._encode_step,
        )  # fmt: skip
    th, tw = tiling.tile_h * s, tiling.tile_w * s
    frames = _struct((1, step, *pixel_hw, 3))
    latent = _struct((1, 1, tiling.tile_h, tiling.tile_w, config.z_dim))
    out = _struct((1, 1, pixel_hw[0] // s, pixel_hw[1] // s, config.z_dim))
    yx = _struct((), jnp.int32)
    return [
        *_vae_steps(
            f"{name}_tile", params, config, _struct((1, 1, th, tw, 3)),
            _struct((1, step, th, tw, 3)), vae_lib._encode_step,
        ),
        Program(f"{name}_take_tile", _take_tile, (frames, yx, yx, th, tw)),
        Program(
            f"{name}_add_tile", _add_tile,
            (out, latent, _struct((tiling.tile_h, tiling.tile_w)), yx, yx),
        ),
    ]  # fmt: skip


def _whole_video(name, params, config, first, rest, step_fn, rest_program) -> list[Program]:
    """`vae.encode` / `vae.decode` of a whole (chunk-long) clip: step 0, then one scan."""
    y0, cache = jax.eval_shape(lambda p, x: step_fn(p, config, None, x, True), params, first)
    return [
        Program(f"{name}_first", step_fn, (params, config, None, first, True)),
        Program(f"{name}_rest", rest_program, (params, config, cache, y0, rest)),
    ]


def _a14b_programs(specs, config, text, length, latent1, p_vae1) -> list[Program]:
    """Per chunk: the conditioning video encoded, the sampler (both experts in one program,
    or one program per expert when they take turns)."""
    vae1, cfg = specs.stage1_vae, config.stage1
    h1, w1 = (n * vae_lib.spatial_factor(vae1) for n in latent1)
    frames = vae_lib.num_pixel_frames(vae1, length)
    programs = _whole_video(
        "stage1_condition_encode", p_vae1, vae1, _struct((1, 1, h1, w1, 3)),
        _struct((1, frames - 1, h1, w1, 3)), vae_lib._encode_step, vae_lib._encode_rest_program,
    )  # fmt: skip
    x = _struct((1, length, *latent1, specs.stage1.out_dim))
    condition = _struct((1, length, *latent1, vae1.z_dim + stage1_a14b.MASK_CHANNELS))
    sigmas, timesteps = (
        _struct(a.shape) for a in solvers.as_schedule_arrays(cfg.sampling_schedule)
    )
    expert = dit_params(specs.stage1, config.memory.dit_weights)
    if config.memory.swap_stage1_experts:
        state = jax.eval_shape(solvers.make_solver(cfg.solver).init, x)
        i = _struct((), jnp.int32)
        for name in ("high_noise", "low_noise"):
            program = stage1_a14b._phase_program(specs.stage1, cfg, name, True)
            args = (expert, x, state, condition, text, text, sigmas, timesteps, i, i)
            programs.append(Program(f"stage1_a14b_{name}", program, args))
    else:
        program = stage1_a14b._program(specs.stage1, cfg, True)
        args = (expert, expert, x, condition, text, text, sigmas, timesteps)
        programs.append(Program("stage1_a14b_experts", program, args))
    return programs


def streamed_programs(specs: ModelSpecs, config: PipelineConfig, plan: SizePlan) -> list[Program]:
    """The programs `run` compiles for `plan` (batch 1; Stage I ti2v or a14b)."""
    text = _struct((1, config.text_len, specs.stage1.text_dim))
    vae1, vae2 = specs.stage1_vae, specs.vae
    p_vae1, p_vae2 = vae_lib.abstract_params(vae1), vae_lib.abstract_params(vae2)
    s1 = vae_lib.spatial_factor(vae1)
    h1, w1 = plan.stage1_height, plan.stage1_width
    latent1 = (h1 // s1, w1 // s1)
    num_latent = vae_lib.num_latent_frames(vae1, plan.frames)
    length = stage1.chunk_length(num_latent, config.stage1)

    # Stage I: one program for every chunk, each chunk decoded as it comes.
    if config.stage1.backbone == "a14b":
        programs = _a14b_programs(specs, config, text, length, latent1, p_vae1)
    else:
        image_lo = _struct((1, 1, h1, w1, 3))
        sigmas, timesteps = solvers.as_schedule_arrays(config.stage1.sampling_schedule)
        x_init = _struct((1, length, *latent1, vae1.z_dim))
        chunk_args = (
            dit_params(specs.stage1, config.memory.dit_weights), x_init, x_init,
            _struct((), jnp.int32), _struct((), jnp.int32), text, text, _struct(sigmas.shape),
            _struct(timesteps.shape),
        )  # fmt: skip
        # The image, and a chunk's last pixel frames as the next chunk's first latents (its
        # first frame is an image-sized step; a longer overlap also encodes the rest).
        programs = [
            Program(
                "stage1_image_encode", vae_lib._encode_step, (p_vae1, vae1, None, image_lo, True)
            ),
            Program("stage1_dit_chunk", stage1._ti2v_program(specs.stage1, config.stage1),
                    chunk_args),
        ]  # fmt: skip
        rest = vae_lib.temporal_factor(vae1) * (config.stage1.overlap - 1)
        if rest:
            programs += _whole_video(
                "stage1_continuation_encode", p_vae1, vae1, image_lo,
                _struct((1, rest, h1, w1, 3)), vae_lib._encode_step,
                vae_lib._encode_rest_program,
            )[1:]  # fmt: skip
    # Every chunk is decoded on its own by a streaming decoder (one latent frame per step).
    programs += _decoder("stage1_decode", p_vae1, vae1, latent1)

    # The hybrid reference: upsample a group of frames, encode it; the anchor is `_first`.
    step = vae_lib.temporal_factor(vae2)
    group = _struct((1, step, h1, w1, 3))
    programs.append(
        Program("reference_resize", reference.resize_frames, (group, plan.height, plan.width))
    )
    programs += _encoder(
        "reference_encode", p_vae2, vae2, (plan.height, plan.width), config.memory.encode_tiles
    )

    # Stage II: one window program for every segment.
    text = _struct((1, config.text_len, specs.stage2.text_dim))
    denoiser = stage2.WindowDenoiser(specs.stage2, config.stage2)
    size = plan.windows[0].size
    window = _struct((1, size, *plan.latent_hw, vae2.z_dim))
    sigmas, timesteps = solvers.as_schedule_arrays(config.stage2.sampling_schedule)
    programs.append(
        Program(
            "stage2_window",
            denoiser._jitted,
            (
                dit_params(specs.stage2, config.memory.dit_weights),
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


def place(programs: list[Program], device) -> list[Program]:
    """The same programs with every abstract argument on `device` (pinned host memory kept
    where the run keeps it: streamed DiT kernels), e.g. a compile-only TPU device."""

    def put(leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        kind = getattr(leaf.sharding, "memory_kind", None)
        sharding = SingleDeviceSharding(
            device, memory_kind=kind if kind == layer_streaming.HOST else None
        )
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    return [dataclasses.replace(p, args=jax.tree.map(put, p.args)) for p in programs]


MEMORY_FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
    "host_argument_size_in_bytes",
    "host_temp_size_in_bytes",
)


def memory_plan(program: Program) -> dict[str, int]:
    """XLA's memory analysis of the compiled program (on the default backend)."""
    stats = program.fn.lower(*program.args).compile().memory_analysis()
    return {field: int(getattr(stats, field)) for field in MEMORY_FIELDS}
