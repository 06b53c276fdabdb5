"""Stage I: the low-resolution motion reference, with either Wan2.2 image-to-video backbone.

* TI2V-5B image-to-video mode (docs/design.md, "Models"): latent frame 0 is the clean image
  latent with timestep 0, every other frame is noise with the step's timestep; frame 0 is
  re-imposed after every solver step (here: never updated, via the loop's update mask).
* I2V-A14B (docs/design.md, "Models"): the model input is [noisy latent (16) | mask (4) |
  image latent (16)] on channels; the image latent encodes [image, 0, 0, ...] with the Wan2.1
  VAE, the mask is 1 on latent frame 0. Two experts: t >= boundary * 1000 runs the high-noise one.
  Few-step (Lightning LoRAs merged at conversion): 4 Euler steps, shift 5, guidance 1.

Each sampler is one jitted program (all steps in a `lax.fori_loop`), cached per model config
and Stage I settings. Long clips run in chunks of one length (one program for every chunk);
each chunk is a clip of its own: it is decoded on its own, and the next chunk continues from
its last pixel frames, re-entered as the start of a clip (see `Chunk`). The I2V-A14B samplers
are in sampling/stage1_a14b.py.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.io import image as image_io
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models.dit import DiTConfig, WanDiT
from swifti2v_jax.sampling import guidance as guidance_lib
from swifti2v_jax.sampling import schedules, solvers

BACKBONES = ("ti2v", "a14b")


@dataclasses.dataclass(frozen=True)
class Stage1Config:
    """Stage I sampler settings.

    guide_scale: the CFG scale (of the high-noise expert for A14B); guide_scale_low: the
    low-noise expert's scale (None or < 0 = the same). 1.0 skips the unconditional forward.
    Stage I's size: `resolution` WIDTHxHEIGHT if given, else the target / `divisor` per side
    (rounded, sampling/plan.py).
    """

    backbone: str = "ti2v"  # 'ti2v' (TI2V-5B in i2v mode) or 'a14b' (I2V-A14B, two experts)
    steps: int = 4
    shift: float = 5.0
    solver: str = "euler"
    schedule: str = "euler"
    guide_scale: float = 1.0
    guide_scale_low: float | None = None
    boundary: float = 0.9  # a14b expert switch: t >= boundary * 1000 -> the high-noise expert
    divisor: int = 4
    resolution: str = ""  # '' = target / divisor
    # Long clips: Stage I in chunks of this many latent frames (0 = one pass), each
    # chunk after the first continuing from the previous chunk's last `overlap` latent frames.
    chunk_latents: int = 0
    overlap: int = 1
    # How a chunk continues (TI2V; see `ti2v_chunks`): 0 holds all `overlap` latents clean;
    # in (0, 1) only the first is held, the others are regenerated (replacement-guided toward
    # the previous chunk's frames while sigma > seam_release) and cross-faded into them.
    seam_release: float = 0.0
    # Add the input image minus Stage I's decoded frame 0 to every frame (`add_input_residual`).
    input_residual: bool = False

    def __post_init__(self):
        if self.guide_scale_low is not None and self.guide_scale_low < 0:
            object.__setattr__(self, "guide_scale_low", None)  # config files write -1 for None
        if self.divisor < 1:
            raise ValueError(f"stage1.divisor must be >= 1, got {self.divisor}")
        self.size  # noqa: B018 -- validates the resolution now
        if self.backbone not in BACKBONES:
            raise ValueError(f"Stage I backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.steps < 1:
            raise ValueError(f"Stage I steps must be >= 1, got {self.steps}")
        if self.chunk_latents and not 1 <= self.overlap < self.chunk_latents:
            raise ValueError(
                f"stage1.overlap must be in [1, chunk_latents={self.chunk_latents}), "
                f"got {self.overlap}"
            )
        if not 0.0 <= self.seam_release < 1.0:
            raise ValueError(f"stage1.seam_release must be in [0, 1), got {self.seam_release}")
        if self.seam_release and self.backbone != "ti2v":
            raise ValueError("stage1.seam_release (regenerated overlap) is TI2V-only; use 0")
        if self.chunk_latents < 0 or (self.chunk_latents and self.chunk_latents < 2):
            raise ValueError(f"stage1.chunk_latents must be 0 or >= 2, got {self.chunk_latents}")
        solvers.make_solver(self.solver)
        self.sampling_schedule  # noqa: B018 -- built (and so validated) once, now
        self.guidance()

    @functools.cached_property
    def sampling_schedule(self) -> schedules.Schedule:
        """The sigma grid, built once per config and shared by everything that reads it."""
        return schedules.make_schedule(self.schedule, self.steps, self.shift)

    @property
    def size(self) -> tuple[int, int] | None:
        """The explicit Stage I (width, height), or None to derive it from the divisor."""
        if not self.resolution:
            return None
        try:
            return image_io.parse_size(self.resolution)
        except ValueError as e:
            raise ValueError(f"stage1.resolution: {e}") from None

    def guidance(self) -> guidance_lib.Guidance:
        low = self.guide_scale if self.guide_scale_low is None else self.guide_scale_low
        if self.backbone == "a14b":
            return guidance_lib.Guidance(
                guide_scale=(low, self.guide_scale), boundary=self.boundary
            )
        if low != self.guide_scale:
            raise ValueError("guide_scale_low only applies to the two-expert a14b backbone")
        return guidance_lib.Guidance(guide_scale=self.guide_scale)

    @property
    def uses_cfg(self) -> bool:
        return any(s != 1.0 for s in self.guidance().scales)


def initial_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(key, shape, jnp.float32)


# --------------------------------------------------------------------------------------------
# TI2V-5B image-to-video


# How often each Stage I program was traced (= compiled), for tests and summaries.
TRACES = {"ti2v": 0, "a14b": 0}


@functools.cache
def _ti2v_program(model_config: DiTConfig, config: Stage1Config):
    """x_init holds the given latents in its first num_known frames and `noise` elsewhere.
    The first num_held are held clean; frames [num_held, num_known) are replacement-guided
    toward theirs (`Stage1Config.seam_release`). Both counts are traced: chunk 0 (the image)
    and every later chunk of a clip run one compiled program."""
    model = WanDiT(model_config)
    solver = solvers.make_solver(config.solver)
    guidance = config.guidance()

    def run(params, x_init, noise, num_known, num_held, context, uncond, sigmas, timesteps):
        TRACES["ti2v"] += 1
        batch, frames = x_init.shape[:2]
        is_image = jnp.arange(frames) < num_held
        is_guided = (~is_image & (jnp.arange(frames) < num_known))[None, :, None, None, None]

        def model_fn(p, x, timestep, text):
            per_frame = jnp.where(is_image, 0.0, timestep)  # timestep 0 on the known frames
            per_frame = jnp.broadcast_to(per_frame, (batch, frames))
            return model.apply({"params": p}, x, per_frame, text).astype(jnp.float32)

        velocity_fn = guidance_lib.make_guided_velocity_fn(
            model_fn,
            params,
            context=context,
            uncond_context=uncond if config.uses_cfg else None,
            guidance=guidance,
        )
        # Known frames keep their x_init values (clean latents) bit for bit at every step.
        update_mask = ~is_image[None, :, None, None, None]
        replacement = None
        if config.seam_release:
            replacement = solvers.Replacement(x_init, noise, is_guided, config.seam_release)
        return solvers.sample_loop(
            solver, velocity_fn, jnp.where(is_guided, noise, x_init), sigmas, timesteps,
            update_mask=update_mask, replacement=replacement,
        )  # fmt: skip

    return jax.jit(run)


def ti2v_image_to_video(
    params,
    model_config: DiTConfig,
    config: Stage1Config,
    *,
    image_latent: jax.Array,
    num_latent_frames: int,
    context: jax.Array,
    uncond_context: jax.Array | None = None,
    key: jax.Array,
) -> jax.Array:
    """TI2V-5B image-to-video sampling in one pass -> latents [B, T, h, w, C] with [:, 0] ==
    image_latent. A clip longer than one chunk is several clips (`ti2v_chunks`, or the decoded
    video from sampling/orchestrator.py `stage1_video`).

    image_latent: [B, 1, h, w, C] normalised VAE latent of the (Stage I size) image.
    """
    _check_ti2v(model_config, config, image_latent, num_latent_frames)
    if len(chunk_plan(num_latent_frames, config.chunk_latents, config.overlap)) > 1:
        raise ValueError(
            f"{num_latent_frames} latent frames run in chunks of {config.chunk_latents}: each "
            "chunk is a clip of its own, use ti2v_chunks or orchestrator.stage1_video"
        )
    return _ti2v_chunk(params, model_config, config, image_latent, num_latent_frames, context,
                       _uncond(config, context, uncond_context), key)  # fmt: skip


def _check_ti2v(model_config: DiTConfig, config: Stage1Config, image_latent, num_latent_frames):
    if config.backbone != "ti2v":
        raise ValueError("TI2V sampling needs a Stage1Config with backbone 'ti2v'")
    if image_latent.ndim != 5 or image_latent.shape[1] != 1:
        raise ValueError(f"image_latent must be [B, 1, h, w, C], got {image_latent.shape}")
    if image_latent.shape[-1] != model_config.in_dim or model_config.in_dim != model_config.out_dim:
        raise ValueError(
            f"the TI2V backbone needs in_dim == out_dim == the latent channels "
            f"({image_latent.shape[-1]}), got in_dim {model_config.in_dim}, "
            f"out_dim {model_config.out_dim}"
        )
    if num_latent_frames < 2:
        raise ValueError(f"need at least 2 latent frames, got {num_latent_frames}")


def _ti2v_chunk(params, model_config, config, known, length, context, uncond, key, held=None):
    """One TI2V pass over `length` latent frames whose first known.shape[1] are given, the
    first `held` (default: all) of them held clean."""
    batch, num_known, h, w, c = known.shape
    sigmas, timesteps = solvers.as_schedule_arrays(config.sampling_schedule)
    noise = initial_noise(key, (batch, length, h, w, c))
    x_init = noise.at[:, :num_known].set(known)
    program = _ti2v_program(model_config, config)
    held = num_known if held is None else held
    return program(params, x_init, noise, jnp.int32(num_known), jnp.int32(held), context,
                   uncond, sigmas, timesteps)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One Stage I chunk, a clip of its own over clip latent frames [start, start + L).

    latents [B, L, h, w, C]: what the model generated; the first `known` were given and the
    first `held` of those held clean (the rest regenerated, `Stage1Config.seam_release`).
    video [B, F, H, W, 3]: those latents decoded on their own (as one clip), with the frames
    of the regenerated given latents cross-faded into the previous chunk's (`blend_seam`).
    tail: how many of its last pixel frames the next chunk rewrites (0 for the last chunk).

    The next chunk continues from this chunk's last pixel frames, re-entered the way the
    model saw every clip start in training: TI2V encodes them as the first latents of a new
    clip (a causal VAE gives a clip's first latents another form than the same frames
    mid-clip, so the raw latents would be a layout the model never trained on); I2V-A14B puts
    them into its conditioning video. The clip is the concatenation of every chunk's
    `new_video`.
    """

    index: int
    start: int
    known: int
    latents: jax.Array
    video: jax.Array
    held: int | None = None  # None: all `known`
    tail: int = 0

    @property
    def new(self) -> jax.Array:
        return self.latents[:, self.known :]

    def new_video(self, vae_config) -> jax.Array:
        """The pixel frames this chunk settles in the clip: after the frames of its held
        latents (all of them for chunk 0), up to its `tail`."""
        first = 0 if self.index == 0 else vae_lib.num_pixel_frames(vae_config, self.num_held)
        return self.video[:, first : self.video.shape[1] - self.tail]

    @property
    def num_held(self) -> int:
        return self.known if self.held is None else self.held

    def last_frames(self, vae_config, num_latents: int) -> jax.Array:
        """This chunk's last pixel frames that encode, as the start of a clip, to
        `num_latents` latent frames: 1 + temporal_factor x (num_latents - 1) of them."""
        length = self.latents.shape[1]
        first = vae_lib.temporal_factor(vae_config) * (length - num_latents)
        return self.video[:, first:]


def decoded_chunk(
    vae_params, vae_config, index, start, known, latents, clip_latents, held=None, tail=0
) -> Chunk:
    """The Chunk of `latents` (clip latent frames from `start`), decoded on its own with a
    streaming decoder (memory of one latent frame's step) and cut at the clip's end."""
    keep = min(latents.shape[1], clip_latents - start)
    video = vae_lib.StreamingDecoder(vae_params, vae_config).push(latents[:, :keep])
    return Chunk(index=index, start=start, known=known, latents=latents[:, :keep], video=video,
                 held=held, tail=tail)  # fmt: skip


def add_input_residual(video: jax.Array, image: jax.Array, first_frame: jax.Array) -> jax.Array:
    """video [B, F, h, w, 3] + (image - first_frame), clipped to [-1, 1].

    Stage I's frame 0 is the input image through the Stage I VAE, so image - first_frame is
    that VAE's reconstruction error of the input. Every later frame carries much the same
    error where the content has not moved, so adding it back to every frame removes it: the
    video keeps its motion, frame 0 becomes the input (to rounding), and the frames after it
    start from the input's detail and colours instead of the VAE's version of them (a small
    VAE blurs a detailed photograph by several dB). `first_frame` is the clip's decoded frame 0
    (chunk 0's), so every chunk of a long clip gets the same correction.
    """
    residual = image.astype(jnp.float32) - first_frame.astype(jnp.float32)
    return jnp.clip(video + residual[:, None], -1.0, 1.0)


def seam_weights(num_frames: int) -> np.ndarray:
    """Cross-fade weights of a chunk's own frames over the `num_frames` it regenerated: a
    linear ramp (k + 1) / (num_frames + 1), so the previous chunk's frames fade out."""
    return (np.arange(num_frames, dtype=np.float32) + 1) / (num_frames + 1)


def blend_seam(previous: Chunk, chunk: Chunk, vae_config) -> Chunk:
    """`chunk` with the pixel frames of its regenerated given latents (`known` - `held`)
    cross-faded into the previous chunk's frames at the same clip positions (the previous
    chunk's `tail`): the seam becomes a ramp between two consistent videos."""
    first = vae_lib.num_pixel_frames(vae_config, chunk.num_held)
    count = vae_lib.num_pixel_frames(vae_config, chunk.known) - first
    if count == 0:
        return chunk
    if previous.tail != count:
        raise ValueError(f"previous chunk kept a tail of {previous.tail} frames, need {count}")
    w = jnp.asarray(seam_weights(count))[None, :, None, None, None]
    ours = chunk.video[:, first : first + count]
    mixed = w * ours + (1 - w) * previous.video[:, -count:]
    video = chunk.video.at[:, first : first + count].set(mixed.astype(chunk.video.dtype))
    return dataclasses.replace(chunk, video=video)


def chunk_plan(num_latent_frames: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """(start, known) of each chunk of `chunk` latent frames covering the clip.

    chunk 0 starts at 0 with 1 known frame (the image); each next chunk starts `overlap`
    frames before the previous one ends. The last chunk may run past the clip (its surplus
    frames are dropped), so every chunk has the same length. chunk 0 or >= the clip: one pass.
    """
    if not chunk or chunk >= num_latent_frames:
        return [(0, 1)]
    plan, end = [(0, 1)], chunk
    while end < num_latent_frames:
        plan.append((end - overlap, overlap))
        end += chunk - overlap
    return plan


def chunk_of_latents(num_latent_frames: int, chunk: int, overlap: int) -> list[int]:
    """The chunk that makes each latent frame of the clip: the first chunk whose new frames
    (after its known ones) include it (a prompt timeline's rule: a frame takes the prompt of
    the chunk that makes it)."""
    owner = [0] * num_latent_frames
    for index, (start, known) in enumerate(chunk_plan(num_latent_frames, chunk, overlap)):
        for t in range(start + known if index else 0, num_latent_frames):
            owner[t] = index
    return owner


def chunk_length(num_latent_frames: int, config: Stage1Config) -> int:
    """Latent frames of every Stage I chunk (the one program's length): the clip for a single
    pass, else `chunk_latents` whatever the clip length."""
    plan = chunk_plan(num_latent_frames, config.chunk_latents, config.overlap)
    return num_latent_frames if len(plan) == 1 else config.chunk_latents


def ti2v_chunks(
    params, model_config: DiTConfig, config: Stage1Config, *, image_latent: jax.Array,
    num_latent_frames: int, context: jax.Array, uncond_context: jax.Array | None = None,
    key: jax.Array, vae_params, vae_config,
):  # fmt: skip
    """TI2V Stage I chunk by chunk: a generator of decoded `Chunk`s (see `chunk_plan`).

    Chunk k + 1's known frames are chunk k's last `overlap` pixel frames encoded as the start
    of a clip, held clean at timestep 0 exactly as the image is in chunk 0 (with
    `seam_release`, only the first; the others are regenerated and cross-faded, so chunk k's
    last frames are settled by chunk k + 1, `Chunk.tail`). Only the previous
    chunk is held, so memory does not grow with the clip; one program serves every chunk.
    A clip that fits one chunk is exactly `ti2v_image_to_video`, decoded.
    """
    plan = chunk_plan(num_latent_frames, config.chunk_latents, config.overlap)
    # A prompt timeline: one embedding per chunk, each an argument of the one program.
    contexts = list(context) if isinstance(context, (list, tuple)) else [context] * len(plan)
    if len(contexts) != len(plan):
        raise ValueError(f"{len(contexts)} prompt embeddings for {len(plan)} Stage I chunks")
    _check_ti2v(model_config, config, image_latent, num_latent_frames)
    uncond = _uncond(config, contexts[0], uncond_context)
    length = chunk_length(num_latent_frames, config)
    held = 1 if config.seam_release else config.overlap  # of each continuation chunk
    rewritten = vae_lib.temporal_factor(vae_config) * (config.overlap - held)
    previous = None
    for index, (start, num_known) in enumerate(plan):
        if previous is None:
            known, num_held = image_latent.astype(jnp.float32), 1
        else:
            frames = previous.last_frames(vae_config, num_known)
            known = vae_lib.encode(vae_params, vae_config, frames)
            num_held = held
        chunk_key = key if index == 0 else jax.random.fold_in(key, index)
        latents = _ti2v_chunk(params, model_config, config, known, length, contexts[index], uncond,
                              chunk_key, held=num_held)  # fmt: skip
        tail = rewritten if index + 1 < len(plan) else 0
        chunk = decoded_chunk(vae_params, vae_config, index, start, num_known, latents,
                              num_latent_frames, held=num_held, tail=tail)  # fmt: skip
        previous = chunk if previous is None else blend_seam(previous, chunk, vae_config)
        yield previous


def expert_steps(config: Stage1Config) -> dict[str, int]:
    """How many of the schedule's steps each expert runs (host-side, from the timesteps)."""
    timesteps = config.sampling_schedule.timesteps
    if config.backbone != "a14b":
        return {"dit": int(timesteps.shape[0])}
    high = config.guidance().num_high_noise_steps(timesteps)
    return {"high_noise": high, "low_noise": int(np.size(timesteps)) - high}


def _uncond(config: Stage1Config, context, uncond_context):
    if not config.uses_cfg:
        return jnp.zeros_like(context)  # unused: the unconditional forward is skipped
    if uncond_context is None:
        raise ValueError("a Stage I guide scale != 1 needs uncond_context (negative prompt)")
    return uncond_context
