"""The stage sequence of SwiftI2V, run on models a model source hands over.

    image ─ resize/crop to the target ─┬─ Stage I size ─ Stage I (TI2V-5B or I2V-A14B)
    prompt ─ umT5 (+ negative prompt)  │      ─ z_low ─ Stage I VAE decode ─ video_low
                                       └─ hybrid reference (upsample video_low, frame 0 :=
                                          image) ─ Wan2.2 VAE encode ─ z_ref; anchor = encode(image)
    Stage II CSG (concat or refine) ─ each finished segment ─ streaming VAE decode ─ sink

Each stage is a function of (models, inputs) that loads nothing itself: `encode_text`,
`stage1_video`, `reference_latents`, `stage2_latents`. `run` chains them; it asks a model
source (sampling/residency.py) for each model when its stage starts and tells it when a stage
ends, so what is resident when is the source's policy, not the orchestrator's. sample.py (via
sampling/pipeline.py), eval/demo_quality.py and data/rollout.py all run these functions.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.csg import reference
from swifti2v_jax.io import image as image_io
from swifti2v_jax.io.video import frames_to_uint8
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.progress import bar as progress_bar
from swifti2v_jax.sampling import stage1, stage2
from swifti2v_jax.sampling.clock import StageClock, peak_memory
from swifti2v_jax.sampling.config import PipelineConfig
from swifti2v_jax.sampling.models import ModelSpecs
from swifti2v_jax.sampling.plan import SizePlan

STAGES = ("text", "stage1", "reference_encode", "stage2", "decode")
FrameSink = Callable[[np.ndarray], None]


@dataclasses.dataclass
class GenerationResult:
    summary: dict[str, Any]
    latents: jax.Array  # the Stage II latents [1, T, h, w, C]


def encode_text(encoder, prompt: str, negative_prompt: str, needs_negative: bool):
    """-> (context [1, L, d], the negative prompt's embedding or None)."""
    context = jnp.asarray(encoder(prompt))
    uncond = jnp.asarray(encoder.negative(negative_prompt)) if needs_negative else None
    return context, uncond


def stage1_video(
    models, dit_config, vae_config, config: stage1.Stage1Config, image_lo, *, frames: int,
    context, uncond=None, key, on_expert=None,
):  # fmt: skip
    """Stage I from the low-res image [B, h, w, 3] -> video_low [B, frames, h, w, 3].

    `models`: a model source (its Stage I VAE and DiTs); with `swaps_experts` the I2V-A14B
    experts are loaded and freed in turn inside the sampling loop, else all Stage I DiTs
    are resident together.
    """
    vae_params = models.get_stage1_vae()
    dits = models.get_stage1_dits()
    if config.backbone == "ti2v":
        image_latent = vae_lib.encode(vae_params, vae_config, image_lo[:, None])
        z_low = stage1.ti2v_image_to_video(
            dits[0], dit_config, config, image_latent=image_latent,
            num_latent_frames=vae_lib.num_latent_frames(vae_config, frames),
            context=context, uncond_context=uncond, key=key,
        )  # fmt: skip
    else:
        condition = stage1.a14b_condition(vae_params, vae_config, image_lo, frames)
        inputs = dict(
            condition=condition, context=context, uncond_context=uncond, key=key,
            on_expert=on_expert,
        )  # fmt: skip
        if models.swaps_experts:
            z_low = stage1.a14b_image_to_video_swapping(
                *models.expert_loaders(), dit_config, config, release=models.release_expert,
                **inputs,
            )  # fmt: skip
        else:
            z_low = stage1.a14b_image_to_video(dits[0], dits[1], dit_config, config, **inputs)
    return vae_lib.decode(vae_params, vae_config, z_low)


def reference_latents(vae_params, vae_config, video_low, image_hi, tiles=None):
    """-> (z_ref [B, T, h, w, C] of the hybrid reference, anchor [B, 1, h, w, C]).
    tiles: None or (tile_size, tile_overlap) for a spatially tiled encode."""
    z_ref = reference.encode_hybrid_reference(
        vae_params, vae_config, video_low, image_hi, tiles=tiles
    )
    anchor = reference.encode_anchor(vae_params, vae_config, image_hi, tiles=tiles)
    return z_ref, anchor


def stage2_latents(denoiser: stage2.WindowDenoiser, params, z_ref, anchor, context, *,
                   uncond=None, key, on_segment=None):  # fmt: skip
    """Stage II CSG over the clip with a denoiser built once by the caller -> latents."""
    return stage2.generate(
        denoiser, params, z_ref=z_ref, anchor=anchor, context=context, uncond_context=uncond,
        key=key, on_segment=on_segment,
    )  # fmt: skip


def prepare_images(image, plan: SizePlan):
    """A PIL image -> (image at the target size [1, H, W, 3], at Stage I's size)."""
    sizes = ((plan.width, plan.height), (plan.stage1_width, plan.stage1_height))
    return tuple(
        jnp.asarray(image_io.to_array(image_io.resize_and_crop(image, w, h)))[None]
        for w, h in sizes
    )


def run(
    models,
    specs: ModelSpecs,
    config: PipelineConfig,
    image,
    prompt: str,
    plan: SizePlan,
    *,
    negative_prompt: str = "",
    seed: int = 0,
    sink: FrameSink | None = None,
    clock: StageClock | None = None,
) -> GenerationResult:
    """Runs every stage; `sink` receives uint8 frames [n, H, W, 3] as segments finish.

    image: an RGB PIL image (any size; resized and centre-cropped to the plan's sizes).
    """
    clock = clock or StageClock()
    start = time.perf_counter()
    key_stage1, key_stage2 = jax.random.split(jax.random.key(seed))
    image_hi, image_lo = prepare_images(image, plan)
    stages = progress_bar(
        total=4, desc="SwiftI2V", unit="stage", disable=not config.progress, file=sys.stderr
    )

    stages.set_postfix_str("text encoder")
    encoder = models.get_text_encoder()
    with clock("text"):
        context, uncond = encode_text(
            encoder, prompt, negative_prompt, config.needs_negative_prompt
        )
    models.done_text(encoder)
    stages.update()

    stages.set_postfix_str(f"Stage I {plan.stage1_width}x{plan.stage1_height}")
    expert_forwards: dict[str, int] = {}

    def count(name: str, timestep: float) -> None:
        expert_forwards[name] = expert_forwards.get(name, 0) + 1

    traces_before = stage1.TRACES["ti2v"]
    with clock("stage1"):
        video_low = stage1_video(
            models,
            specs.stage1,
            specs.stage1_vae,
            config.stage1,
            image_lo,
            frames=plan.frames,
            context=context,
            uncond=uncond,
            key=key_stage1,
            on_expert=count,
        )
        jax.block_until_ready(video_low)
    if config.stage1.backbone == "ti2v":
        expert_forwards = {"dit": config.stage1.steps * (2 if config.stage1.uses_cfg else 1)}
    models.done_stage1()
    stages.update()

    stages.set_postfix_str("hybrid reference")
    vae_params = models.get_vae()
    with clock("reference_encode"):
        tiles = (config.memory.encode_tile_size, config.memory.encode_tile_overlap)
        z_ref, anchor = reference_latents(
            vae_params, specs.vae, video_low, image_hi, tiles if tiles[0] else None
        )
        jax.block_until_ready((z_ref, anchor))
    del video_low
    stages.update()

    stages.set_postfix_str(f"Stage II {plan.width}x{plan.height}")
    params = models.get_stage2_dit()
    denoiser = stage2.WindowDenoiser(specs.stage2, config.stage2)
    first_frame: list[float] = []

    def timed_sink(frames) -> None:
        if not first_frame:
            first_frame.append(time.perf_counter() - start)
        if sink is not None:
            sink(frames)

    latents = _stage2_streaming(
        denoiser, params, vae_params, specs, config, plan, z_ref, anchor, context, uncond,
        key_stage2, timed_sink, clock,
    )  # fmt: skip
    stages.update()
    stages.close()

    clock.add("total", time.perf_counter() - start)
    memory, memory_source = peak_memory()
    seconds = {name: round(clock.seconds.get(name, 0.0), 3) for name in ("load", *STAGES, "total")}
    summary = dict(
        seconds=seconds,
        peak_memory_bytes=memory,
        peak_memory_source=memory_source,
        stage2_compilations=denoiser.traces,
        # TI2V Stage I programs traced in this run (0 when already compiled in this process).
        stage1_compilations=stage1.TRACES["ti2v"] - traces_before,
        stage1_chunks=len(
            stage1.chunk_plan(
                vae_lib.num_latent_frames(specs.stage1_vae, plan.frames),
                config.stage1.chunk_latents,
                config.stage1.overlap,
            )
        ),
        first_frame_seconds=round(first_frame[0], 3) if first_frame else None,
        stage2_tokens_per_forward=plan.tokens_per_forward,
        stage2_window_blocks=plan.windows[0].size,
        segments=plan.segments,
        frames=plan.frames,
        height=plan.height,
        width=plan.width,
        latent_frames=plan.latent_frames,
        stage1_width=plan.stage1_width,
        stage1_height=plan.stage1_height,
        stage1_backbone=config.stage1.backbone,
        stage1_expert_forwards=expert_forwards,
        stage2_conditioning=config.stage2.conditioning,
        stage2_steps=config.stage2.make_schedule().num_steps,
        stage1_steps=config.stage1.steps,
        seed=seed,
        backend=jax.default_backend(),
        device=str(jax.devices()[0].device_kind),
    )
    return GenerationResult(summary=summary, latents=latents)


def _stage2_streaming(
    denoiser, params, vae_params, specs, config, plan, z_ref, anchor, context, uncond, key,
    sink, clock,
):  # fmt: skip
    """Stage II; each finished segment is decoded and sent to `sink` right away."""
    memory = config.memory
    decoder = vae_lib.StreamingDecoder(
        vae_params, specs.vae, tile_size=memory.decode_tile_size or None,
        tile_overlap=memory.decode_tile_overlap,
        offload_cache=memory.decode_offload_cache and bool(memory.decode_tile_size),
    )  # fmt: skip
    bar = progress_bar(
        total=plan.segments, desc="Stage II", unit="segment", disable=not config.progress,
        leave=False, file=sys.stderr,
    )  # fmt: skip

    def emit(latents) -> None:
        with clock("decode"):
            frames = frames_to_uint8(decoder.push(latents)[0])
            if sink is not None:
                sink(frames)

    emit(anchor)  # block 0: the image's own latent, decoded first
    segment_start = time.perf_counter()

    def on_segment(result: stage2.SegmentResult) -> None:
        nonlocal segment_start
        jax.block_until_ready(result.latents)
        clock.add("stage2", time.perf_counter() - segment_start)
        emit(result.latents)
        bar.update()
        bar.set_postfix_str(f"blocks {result.blocks[0]}-{result.blocks[-1]}")
        segment_start = time.perf_counter()

    latents = stage2_latents(
        denoiser, params, z_ref, anchor, context, uncond=uncond, key=key, on_segment=on_segment
    )
    bar.close()
    return latents
