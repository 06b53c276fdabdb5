"""The stage sequence of SwiftI2V, run on models a model source hands over.

    image ─ resize/crop to the target ─┬─ Stage I size ─ Stage I (TI2V-5B or I2V-A14B)
    prompt ─ umT5 (+ negative prompt)  │      ─ Stage I VAE decode (per chunk) ─ video_low
                                       └─ hybrid reference (upsample video_low, frame 0 :=
                                          image) ─ Wan2.2 VAE encode ─ z_ref; anchor = encode(image)
    Stage II CSG (concat or refine) ─ each finished segment ─ streaming VAE decode ─ sink

Each stage is a function of (models, inputs) that loads nothing itself: `encode_text`,
`stage1_video_chunks` (or `stage1_video`), `reference_latents`, `stage2_latents`. `run`
interleaves them chunk by chunk (Stage I chunk -> reference -> the segments it completes ->
decode -> sink), so memory is bounded whatever the clip length and the first frames reach
the sink early. An `on_progress` callback hears where the run is (`Progress`) before each
Stage I chunk and after each written piece; an exception it raises ends the run there.
It asks a model source (sampling/residency.py) for each model when first needed and tells it
when a stage ends (Stage I: after its last chunk), so what is resident when is the source's
policy, not the orchestrator's. sample.py and the web app (via generation.py and
sampling/pipeline.py), eval/demo_quality.py and data/rollout.py all run these functions.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.csg import reference
from swifti2v_jax.io import image as image_io
from swifti2v_jax.io.video import frames_to_uint8
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models import vae_streaming
from swifti2v_jax.progress import bar as progress_bar
from swifti2v_jax.sampling import stage1, stage1_a14b, stage2
from swifti2v_jax.sampling.clock import StageClock, compilations, peak_memory
from swifti2v_jax.sampling.config import PipelineConfig
from swifti2v_jax.sampling.models import ModelSpecs
from swifti2v_jax.sampling.plan import SizePlan

STAGES = ("text", "stage1", "reference_encode", "stage2", "decode")
FrameSink = Callable[[np.ndarray], None]


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run is, as `run` reports it: `stage` is 'text' (the text encoder starts),
    'stage1' (Stage I chunk `chunk` of `chunks` starts) or 'stage2' (`new_frames` were just
    written: the input's frame 0, then each Stage II segment's; `segment` of `segments` done).
    """

    stage: str
    elapsed: float  # seconds since the run started
    chunk: int
    chunks: int
    segment: int
    segments: int
    frames_written: int
    frames: int
    new_frames: np.ndarray | None = None  # uint8 [n, H, W, 3]


@dataclasses.dataclass
class GenerationResult:
    summary: dict[str, Any]
    latents: jax.Array | None  # the Stage II latents [1, T, h, w, C] (with keep_latents)


def encode_text(encoder, prompt: str, negative_prompt: str, needs_negative: bool):
    """-> (context [1, L, d], the negative prompt's embedding or None)."""
    context = jnp.asarray(encoder(prompt))
    uncond = jnp.asarray(encoder.negative(negative_prompt)) if needs_negative else None
    return context, uncond


def chunk_count(specs: ModelSpecs, config: PipelineConfig, frames: int) -> int:
    """How many Stage I chunks a clip of `frames` takes (one prompt each in a timeline)."""
    stage1_config = config.stage1
    latents = vae_lib.num_latent_frames(specs.stage1_vae, frames)
    return len(stage1.chunk_plan(latents, stage1_config.chunk_latents, stage1_config.overlap))


def timeline(prompt: str | Sequence[str], chunks: int) -> list[str]:
    """One prompt per Stage I chunk: a single prompt for all, or a list of exactly `chunks`."""
    if isinstance(prompt, str):
        return [prompt] * chunks
    prompts = list(prompt)
    if len(prompts) != chunks:
        raise ValueError(
            f"the prompt timeline has {len(prompts)} prompt(s); this clip has {chunks} Stage I "
            "chunk(s) (give one prompt per chunk)"
        )
    return prompts


def block_chunks(specs: ModelSpecs, config: PipelineConfig, plan: SizePlan) -> list[int]:
    """The Stage I chunk that made each Stage II latent block: that of the block's first
    pixel frame (the two stages' VAEs may group frames differently)."""
    stage1_config = config.stage1
    owner = stage1.chunk_of_latents(
        vae_lib.num_latent_frames(specs.stage1_vae, plan.frames),
        stage1_config.chunk_latents,
        stage1_config.overlap,
    )
    factor1, factor2 = (vae_lib.temporal_factor(v) for v in (specs.stage1_vae, specs.vae))
    first_frames = [0] + [(b - 1) * factor2 + 1 for b in range(1, plan.latent_frames)]
    return [owner[0 if f == 0 else (f - 1) // factor1 + 1] for f in first_frames]


def encode_timeline(encoder, prompts: Sequence[str]) -> list:
    """-> one context [1, L, d] per chunk (each distinct prompt encoded once)."""
    encoded: dict[str, Any] = {}
    for text in prompts:
        if text not in encoded:
            encoded[text] = jnp.asarray(encoder(text))
    return [encoded[text] for text in prompts]


def stage1_video_chunks(
    models, vae_params, dit_config, vae_config, config: stage1.Stage1Config, image_lo, *,
    frames: int, context, uncond=None, key, on_expert=None,
):  # fmt: skip
    """Stage I from the low-res image [B, h, w, 3], as a generator of the clip's low-res video
    in order: [B, n, h, w, 3] pieces (chunk 0's video, then each later chunk's new frames; one
    piece for a single pass). Each chunk is decoded on its own (sampling/stage1.py `Chunk`);
    with `config.input_residual` every piece gets the input's residual (`add_input_residual`).

    `models`: a model source (its Stage I DiTs; `vae_params` is its Stage I VAE); with
    `swaps_experts` the I2V-A14B experts are loaded and freed in turn inside the sampling
    loop, else all Stage I DiTs are resident together.
    """
    dits = models.get_stage1_dits()
    if config.backbone == "ti2v":
        image_latent = vae_lib.encode(vae_params, vae_config, image_lo[:, None])
        chunks = stage1.ti2v_chunks(
            dits[0], dit_config, config, image_latent=image_latent,
            num_latent_frames=vae_lib.num_latent_frames(vae_config, frames),
            context=context, uncond_context=uncond, key=key, vae_params=vae_params,
            vae_config=vae_config,
        )  # fmt: skip
    else:
        if isinstance(context, (list, tuple)):  # a timeline of one prompt (`run` checks)
            context = context[0]
        experts = models.expert_loaders() if models.swaps_experts else tuple(dits)
        chunks = stage1_a14b.a14b_chunks(
            *experts, vae_params, vae_config, dit_config, config, image=image_lo, frames=frames,
            context=context, uncond_context=uncond, key=key, on_expert=on_expert,
            release=models.release_expert if models.swaps_experts else None,
        )  # fmt: skip
    first_frame = None  # the clip's decoded frame 0 (chunk 0's), for input_residual
    for chunk in chunks:
        video = chunk.new_video(vae_config)
        if config.input_residual:
            first_frame = video[:, 0] if first_frame is None else first_frame
            video = stage1.add_input_residual(video, image_lo, first_frame)
        yield video


def stage1_video(
    models, dit_config, vae_config, config: stage1.Stage1Config, image_lo, *, frames: int,
    context, uncond=None, key, on_expert=None,
):  # fmt: skip
    """Stage I from the low-res image [B, h, w, 3] -> video_low [B, frames, h, w, 3] (the
    whole clip at once; `run` streams `stage1_video_chunks` instead)."""
    chunks = stage1_video_chunks(
        models, models.get_stage1_vae(), dit_config, vae_config, config, image_lo,
        frames=frames, context=context, uncond=uncond, key=key, on_expert=on_expert,
    )  # fmt: skip
    pieces = list(chunks)
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1)


def reference_latents(vae_params, vae_config, video_low, image_hi, tiles=None):
    """-> (z_ref [B, T, h, w, C] of the hybrid reference, anchor [B, 1, h, w, C]).
    tiles: MemoryOptions.encode_tiles (None: untiled)."""
    z_ref = reference.encode_hybrid_reference(
        vae_params, vae_config, video_low, image_hi, tiles=tiles
    )
    anchor = reference.encode_anchor(vae_params, vae_config, image_hi, tiles)
    return z_ref, anchor


def stage2_latents(denoiser: stage2.WindowDenoiser, params, z_ref, anchor, context, *,
                   uncond=None, key, on_segment=None):  # fmt: skip
    """Stage II CSG over the clip with a denoiser built once by the caller -> latents."""
    return stage2.generate(
        denoiser, params, z_ref=z_ref, anchor=anchor, context=context, uncond_context=uncond,
        key=key, on_segment=on_segment,
    )  # fmt: skip


@dataclasses.dataclass
class Clip:
    """What `run_clip` made, stage by stage (None where a stage was given or not run)."""

    video_low: jax.Array | None = None  # Stage I's low-res video [B, F, h, w, 3]
    z_ref: jax.Array | None = None  # the hybrid reference's latents [B, T, h, w, C]
    anchor: jax.Array | None = None  # the input image's latent [B, 1, h, w, C]
    latents: jax.Array | None = None  # Stage II's latents [B, T, h, w, C]
    video: jax.Array | None = None  # the decoded 2K video [B, F, H, W, 3]


CLIP_STAGES = ("stage1", "reference", "stage2", "decode")


def run_clip(
    models, specs: ModelSpecs, config: PipelineConfig, *, context, uncond=None,
    image_lo=None, image_hi=None, frames: int | None = None, stage1_key=None, stage2_key=None,
    video_low=None, z_ref=None, anchor=None, denoiser: stage2.WindowDenoiser | None = None,
    until: str = "decode",
) -> Clip:  # fmt: skip
    """The stage sequence on one whole clip held at once, with the models of `models`
    (sampling/residency.py; e.g. ResidentModels, already in memory): Stage I from `image_lo`
    -> hybrid reference with `image_hi` -> Stage II CSG -> decode, stopping after `until`.

    The tools that study one stage enter later with that stage's input: `video_low` (a given
    low-res video instead of Stage I), or `z_ref` and `anchor` (a prepared record). `run`
    is the streamed form for sample.py: the same result chunk by chunk
    (tests/test_streaming.py). `denoiser`: a compiled Stage II program to reuse across clips
    (default: a new one for config.stage2). Text embeddings come encoded (`context`,
    `uncond`), since tools encode and cache their captions their own way."""
    if until not in CLIP_STAGES:
        raise ValueError(f"until must be one of {CLIP_STAGES}, got {until!r}")
    clip = Clip(video_low=video_low, z_ref=z_ref, anchor=anchor)
    if z_ref is None and video_low is None:
        clip.video_low = stage1_video(
            models, specs.stage1, specs.stage1_vae, config.stage1, image_lo, frames=frames,
            context=context, uncond=uncond, key=stage1_key,
        )  # fmt: skip
    if until == "stage1":
        return clip
    if z_ref is None:
        clip.z_ref, clip.anchor = reference_latents(
            models.get_vae(), specs.vae, clip.video_low, image_hi, config.memory.encode_tiles
        )
    if until == "reference":
        return clip
    denoiser = denoiser or models.get_stage2_denoiser(specs.stage2, config.stage2)
    clip.latents = stage2_latents(
        denoiser, models.get_stage2_dit(), clip.z_ref, clip.anchor, context, uncond=uncond,
        key=stage2_key,
    )  # fmt: skip
    if until == "decode":
        memory = config.memory
        clip.video = vae_lib.decode(
            models.get_vae(), specs.vae, clip.latents,
            tile_size=memory.decode_tile_size or None, tile_overlap=memory.decode_tile_overlap,
        )  # fmt: skip
    return clip


def prepare_images(image, plan: SizePlan):
    """A PIL image -> (image at the target size [1, H, W, 3], at Stage I's size)."""
    sizes = ((plan.width, plan.height), (plan.stage1_width, plan.stage1_height))
    return tuple(
        jnp.asarray(image_io.to_array(image_io.crop_resize(image, w, h)))[None] for w, h in sizes
    )


def run(
    models,
    specs: ModelSpecs,
    config: PipelineConfig,
    image,
    prompt: str | Sequence[str],
    plan: SizePlan,
    *,
    negative_prompt: str = "",
    seed: int = 0,
    sink: FrameSink | None = None,
    clock: StageClock | None = None,
    keep_latents: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> GenerationResult:
    """Runs every stage, interleaved: Stage I chunk k -> its part of the hybrid reference ->
    the Stage II segments that part completes -> decode -> `sink` (uint8 frames [n, H, W, 3]).

    Only one Stage I chunk and one CSG window (plus the anchor, neighbours and decoder
    caches) are held at a time, so memory does not grow with the clip; the output equals
    the stages run one after the other on the whole clip (tests/test_streaming.py).
    image: an RGB PIL image (any size; resized and centre-cropped to the plan's sizes).
    keep_latents: also return the whole clip's Stage II latents (they grow with the clip).
    on_progress: called with a `Progress` at each step; what it raises ends the run.
    prompt: one prompt, or a timeline of one prompt per Stage I chunk (`timeline`): each chunk
    is conditioned on its own, and each Stage II segment on that of the chunk that made its
    first new frame (stage1.chunk_of_latents); the embeddings are program arguments, so one
    compiled program serves every prompt.
    """
    clock = clock or StageClock()
    start = time.perf_counter()
    compilations_before = compilations()
    key_stage1, key_stage2 = jax.random.split(jax.random.key(seed))
    image_hi, image_lo = prepare_images(image, plan)
    num_chunks = chunk_count(specs, config, plan.frames)
    prompts = timeline(prompt, num_chunks)
    if config.stage1.backbone != "ti2v" and len(set(prompts)) > 1:
        raise ValueError("a prompt timeline of several prompts needs the ti2v Stage I backbone")
    bar = progress_bar(
        total=plan.segments, desc="SwiftI2V", unit="segment", disable=not config.progress,
        file=sys.stderr,
    )  # fmt: skip

    state = dict(chunk=0, segment=-1, frames_written=0)  # segment 0: the input's frame

    def report(stage: str, new_frames=None) -> None:
        if on_progress is not None:
            on_progress(
                Progress(
                    stage, time.perf_counter() - start, chunks=num_chunks,
                    segments=plan.segments, frames=plan.frames, new_frames=new_frames, **state,
                )
            )  # fmt: skip

    report("text")
    bar.set_postfix_str("text encoder")
    encoder = models.get_text_encoder()
    with clock("text"):
        if isinstance(prompt, str):
            context, uncond = encode_text(
                encoder, prompt, negative_prompt, config.needs_negative_prompt
            )
        else:
            needs = config.needs_negative_prompt
            uncond = jnp.asarray(encoder.negative(negative_prompt)) if needs else None
            chunk_contexts = encode_timeline(encoder, prompts)
            # Stage I: one per chunk; Stage II: one per latent block, its chunk's.
            owner = block_chunks(specs, config, plan)
            context = (chunk_contexts, [chunk_contexts[k] for k in owner])
    models.done_text(encoder)

    expert_forwards: dict[str, int] = {}

    def count(name: str, timestep: float) -> None:
        expert_forwards[name] = expert_forwards.get(name, 0) + 1

    first_frame: list[float] = []

    def timed_sink(frames) -> None:
        if not first_frame:
            first_frame.append(time.perf_counter() - start)
        if sink is not None:
            sink(frames)
        state["segment"] += 1
        state["frames_written"] += len(frames)
        report("stage2", frames)

    traces_before = sum(stage1.TRACES.values())
    moved_before = vae_streaming.MOVED["bytes"]
    stage1_vae = models.get_stage1_vae()
    stage1_context, stage2_context = context if isinstance(context, tuple) else (context,) * 2
    pieces = stage1_video_chunks(
        models, stage1_vae, specs.stage1, specs.stage1_vae, config.stage1, image_lo,
        frames=plan.frames, context=stage1_context, uncond=uncond, key=key_stage1,
        on_expert=count,
    )  # fmt: skip
    streamer = None
    for index in range(num_chunks):
        state["chunk"] = index + 1
        report("stage1")
        bar.set_postfix_str(f"Stage I chunk {index + 1}/{num_chunks}")
        with clock("stage1"):
            video_low = next(pieces)
            jax.block_until_ready(video_low)
        if index == num_chunks - 1:
            pieces.close()
            del stage1_vae
            models.done_stage1()
        if streamer is None:
            streamer = _StreamingPipeline(
                models, specs, config, plan, image_hi, stage2_context, uncond, key_stage2, clock,
                timed_sink, bar, keep_latents,
            )  # fmt: skip
        streamer.push(video_low)
        del video_low
    latents = streamer.finish()
    bar.close()
    if config.stage1.backbone == "ti2v":
        per_chunk = config.stage1.steps * (2 if config.stage1.uses_cfg else 1)
        expert_forwards = {"dit": per_chunk * num_chunks}

    clock.add("total", time.perf_counter() - start)
    memory, memory_source = peak_memory()
    seconds = {name: round(clock.seconds.get(name, 0.0), 3) for name in ("load", *STAGES, "total")}
    summary = dict(
        seconds=seconds,
        peak_memory_bytes=memory,
        peak_memory_source=memory_source,
        stage2_compilations=streamer.denoiser.traces - streamer.denoiser_traces_before,
        # Every XLA program built during the run (0 when all were built by an earlier run in
        # this process: sampling/residency.py WarmModels).
        xla_compilations=compilations() - compilations_before,
        # Stage I programs traced in this run (0 when already compiled in this process; the
        # two I2V-A14B experts taking turns are one program each).
        stage1_compilations=sum(stage1.TRACES.values()) - traces_before,
        stage1_chunks=num_chunks,
        # host <-> device bytes of the tiled VAE streams (caches, tile-major pixels)
        vae_stream_bytes=vae_streaming.MOVED["bytes"] - moved_before,
        chunk_prompts=prompts,
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
        stage2_steps=config.stage2.sampling_schedule.num_steps,
        stage1_steps=config.stage1.steps,
        seed=seed,
        backend=jax.default_backend(),
        device=str(jax.devices()[0].device_kind),
    )
    return GenerationResult(summary=summary, latents=latents)


class _StreamingPipeline:
    """Decoded Stage I frames in, finished frames out: the hybrid reference (csg/reference.py),
    Stage II CSG (stage2.SegmentRunner) and the streaming VAE decode, each carrying its own
    state from one push to the next."""

    def __init__(
        self, models, specs, config, plan, image_hi, context, uncond, key, clock, sink, bar,
        keep_latents,
    ):  # fmt: skip
        self.clock, self.sink, self.bar = clock, sink, bar
        vae_params = models.get_vae()
        with clock("reference_encode"):
            tiles = config.memory.encode_tiles
            anchor = reference.encode_anchor(vae_params, specs.vae, image_hi, tiles)
            self.reference = reference.HybridReferenceEncoder(
                vae_params, specs.vae, image_hi, tiles,
                tile_major=config.memory.encode_tile_major, total_frames=plan.frames,
                cache_dtype=config.memory.vae_cache_dtype,
            )  # fmt: skip
            jax.block_until_ready(anchor)
        params = models.get_stage2_dit()
        self.denoiser = models.get_stage2_denoiser(specs.stage2, config.stage2)
        self.denoiser_traces_before = self.denoiser.traces
        self.segments = stage2.SegmentRunner(
            self.denoiser, params, num_blocks=plan.latent_frames, anchor=anchor,
            context=context, uncond_context=uncond, key=key,
        )  # fmt: skip
        memory = config.memory
        self.decoder = vae_lib.StreamingDecoder(
            vae_params, specs.vae, tile_size=memory.decode_tile_size or None,
            tile_overlap=memory.decode_tile_overlap,
            offload_cache=memory.decode_offload_cache and bool(memory.decode_tile_size),
            chunk_latents=memory.decode_chunk_latents, total_latents=plan.latent_frames,
            cache_dtype=memory.vae_cache_dtype,
        )  # fmt: skip
        self.kept = [] if keep_latents else None
        self._emit(anchor)  # block 0: the image's own latent, decoded first

    def _emit(self, latents) -> None:
        with self.clock("decode"):
            self._sink(self.decoder.push(latents))
        if self.kept is not None:
            self.kept.append(latents)

    def _sink(self, pixels) -> None:
        if pixels.shape[1]:  # a chunked (tile-major) decoder may still be collecting
            self.sink(frames_to_uint8(pixels[0]))

    def push(self, video_low) -> None:
        """The next decoded low-res frames -> every segment they complete, decoded and sunk."""
        with self.clock("reference_encode"):
            z_ref = self.reference.push(video_low)
            if z_ref is None:
                return
            jax.block_until_ready(z_ref)
        segments = self.segments.push(z_ref)
        del z_ref  # the stream keeps the blocks it still needs
        while True:
            with self.clock("stage2"):  # an open timer: a compile inside is known to be Stage II's
                result = next(segments, None)
                if result is not None:
                    jax.block_until_ready(result.latents)
            if result is None:
                break
            self._emit(result.latents)
            self.bar.update()

    def finish(self) -> jax.Array | None:
        self.reference.finish()
        if not self.segments.done:
            raise RuntimeError("internal error: the clip ended before its last CSG segment")
        with self.clock("decode"):
            self._sink(self.decoder.finish())
        return None if self.kept is None else jnp.concatenate(self.kept, axis=1)
