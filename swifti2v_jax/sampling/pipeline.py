"""The two-stage SwiftI2V pipeline: one image and a prompt in, video frames out (streamed).

    image ─ resize/crop to the target ─┬─ Stage I size ─ Stage I (TI2V-5B or I2V-A14B)
    prompt ─ umT5 (+ negative prompt)  │      ─ z_low ─ Stage I VAE decode ─ video_low
                                       └─ hybrid reference (upsample video_low, frame 0 :=
                                          image) ─ Wan2.2 VAE encode ─ z_ref; anchor = encode(image)
    Stage II CSG (concat or refine) ─ each finished segment ─ streaming VAE decode ─ sink

Everything a user can get wrong (checkpoint paths and kinds, incompatible models, frame count,
sizes) is checked by `SwiftI2VPipeline(...)` and `plan(...)` from config files alone, before
any weights are loaded. `generate` then loads each model when its stage starts and, with the
memory options, drops it when the stage ends: the text encoder can run on the host CPU, the
two I2V-A14B experts can take turns on the device, Stage I parameters are released before
Stage II, and the Stage II decode can be tiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax import checkpoints
from swifti2v_jax.io import image as image_io
from swifti2v_jax.io.video import frames_to_uint8
from swifti2v_jax.models import t5 as t5_lib
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.progress import bar as progress_bar
from swifti2v_jax.sampling import csg, reference, segments, stage1

STAGES = ("text", "stage1", "reference_encode", "stage2", "decode")
FrameSink = Callable[[np.ndarray], None]


class PipelineError(ValueError):
    """A user-fixable problem: a missing or incompatible checkpoint, a bad size or length."""


# --------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class MemoryOptions:
    """One-GPU memory options.

    text_encoder_on_host: run umT5 on the host CPU (the official --t5_cpu).
    release_stage1: free the Stage I DiT(s) and VAE before Stage II.
    swap_stage1_experts: I2V-A14B with one expert on the device at a time (load the
      high-noise expert, run its steps, free it, then the low-noise one), like the official
      offloading; otherwise both stay resident and run in one program.
    decode_tile_size: Stage II decode in spatial tiles of this many latent pixels (0: off).
    decode_tile_overlap: overlap of neighbouring tiles in latent pixels.
    """

    text_encoder_on_host: bool = True
    release_stage1: bool = True
    swap_stage1_experts: bool = True
    decode_tile_size: int = 0
    decode_tile_overlap: int = 2

    def __post_init__(self):
        if self.decode_tile_size < 0:
            raise PipelineError(f"decode_tile_size must be >= 0, got {self.decode_tile_size}")
        if self.decode_tile_size and not 0 <= self.decode_tile_overlap < self.decode_tile_size:
            raise PipelineError(
                f"decode_tile_overlap must be in [0, decode_tile_size), got "
                f"{self.decode_tile_overlap} for tile size {self.decode_tile_size}"
            )


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    stage1: stage1.Stage1Config = stage1.Stage1Config()
    stage2: csg.CSGConfig = csg.CSGConfig()
    stage1_divisor: int = 4  # Stage I size = target / divisor per side (rounded, see plan)
    stage1_resolution: tuple[int, int] | None = None  # explicit Stage I (width, height)
    memory: MemoryOptions = MemoryOptions()
    attention_backend: str | None = None  # overrides the checkpoints' DiT attention backend
    text_cache_dir: Path | None = None  # on-disk prompt embedding cache (None: off)
    # Prompt rows fed to the DiTs (zero rows past the prompt): Wan2.2 is trained with 512;
    # a model must be sampled with the length it was trained with.
    text_len: int = 512
    progress: bool = True

    @classmethod
    def from_config(cls, config: Mapping) -> PipelineConfig:
        """From the ml_collections config of configs/sample.py (its stage1/stage2/memory)."""
        s1, s2, mem = config["stage1"], config["stage2"], config["memory"]
        try:
            stage1_config = stage1.Stage1Config(
                backbone=s1["backbone"],
                steps=int(s1["steps"]),
                shift=float(s1["shift"]),
                solver=s1["solver"],
                schedule=s1["schedule"],
                guide_scale=float(s1["guide_scale"]),
                guide_scale_low=None if s1["guide_scale_low"] < 0 else float(s1["guide_scale_low"]),
                boundary=float(s1["boundary"]),
            )
            stage2_config = csg.CSGConfig(
                noisy_blocks=int(s2["noisy_blocks"]),
                neighbours=int(s2["neighbours"]),
                conditioning=s2["conditioning"],
                attention=s2["attention"],
                end_to_end=bool(s2["end_to_end"]),
                solver=s2["solver"],
                schedule=s2["schedule"],
                steps=int(s2["steps"]),
                shift=float(s2["shift"]),
                guide_scale=float(s2["guide_scale"]),
                sigma_start=float(s2["sigma_start"]),
                neighbour_sigma=float(s2["neighbour_sigma"]),
            )
            stage2_config.make_schedule()  # validates the grid and shift now
            csg.solvers.make_solver(stage2_config.solver)
        except PipelineError:
            raise
        except ValueError as e:
            raise PipelineError(f"invalid sampler setting: {e}") from None
        resolution = s1["resolution"]
        divisor = int(s1["divisor"])
        if divisor < 1:
            raise PipelineError(f"stage1.divisor must be >= 1, got {divisor}")
        cache = config.get("text_cache_dir") or None
        text_len = int(config.get("text_len", cls.text_len))
        if text_len < 1:
            raise PipelineError(f"text_len must be >= 1, got {text_len}")
        return cls(
            stage1=stage1_config,
            stage2=stage2_config,
            stage1_divisor=divisor,
            stage1_resolution=_parse_size(resolution, "stage1.resolution") if resolution else None,
            memory=MemoryOptions(
                text_encoder_on_host=bool(mem["text_encoder_on_host"]),
                release_stage1=bool(mem["release_stage1"]),
                swap_stage1_experts=bool(mem["swap_stage1_experts"]),
                decode_tile_size=int(mem["decode_tile_size"]),
                decode_tile_overlap=int(mem["decode_tile_overlap"]),
            ),
            attention_backend=config.get("attention_backend") or None,
            text_cache_dir=None if cache in (None, "none") else Path(cache).expanduser(),
            text_len=text_len,
            progress=bool(config.get("progress", True)),
        )


def _parse_size(text: str, what: str) -> tuple[int, int]:
    try:
        return image_io.parse_size(text)
    except ValueError as e:
        raise PipelineError(f"{what}: {e}") from None


# --------------------------------------------------------------------------------------------
# Checkpoints


@dataclasses.dataclass(frozen=True)
class ModelPaths:
    """Converted model directories. stage1 is (dit,) for TI2V or (high_noise, low_noise)."""

    stage1: tuple[Path, ...]
    stage1_vae: Path
    stage2: Path
    vae: Path
    t5: Path
    tokenizer: Path


def resolve_model_paths(checkpoints_config: Mapping, backbone: str) -> ModelPaths:
    """Model directories from a checkpoints config (configs/sample.py `checkpoints`).

    `root` is a `python -m conversion` output (dit/, vae/, t5/, tokenizer/), optionally with a
    trained `stage2/`; Stage II uses root/stage2 if present, else root/dit. `stage1_root`
    (default: root) holds Stage I: dit/ for TI2V or high_noise/ + low_noise/ for I2V-A14B,
    and its own vae/. Each component can be given explicitly instead (`stage1` is then a
    DiT directory for TI2V, or a directory holding high_noise/ and low_noise/ for A14B).
    """

    def get(key: str) -> Path | None:
        value = checkpoints_config.get(key)
        return Path(value).expanduser().absolute() if value else None

    root, stage1_root = get("root"), get("stage1_root") or get("root")

    def need(explicit: Path | None, base: Path | None, sub: str, what: str, flag: str) -> Path:
        if explicit is not None:
            return explicit
        if base is None:
            raise PipelineError(
                f"no {what} checkpoint: pass --checkpoints ROOT (a `python -m conversion` "
                f"output) or --{flag} DIR"
            )
        return base / sub

    explicit_stage1 = get("stage1")
    if backbone == "a14b":
        base = explicit_stage1 or stage1_root
        if base is None:
            raise PipelineError(
                "no Stage I checkpoint: pass --stage1_checkpoints ROOT (the converted "
                "Wan2.2-I2V-A14B, with high_noise/ and low_noise/) or --stage1 DIR"
            )
        stage1_dirs = (base / "high_noise", base / "low_noise")
        if not all(d.is_dir() for d in stage1_dirs):
            raise PipelineError(
                f"no I2V-A14B experts in {base} (expected high_noise/ and low_noise/): pass "
                "--stage1_checkpoints ROOT, a converted Wan2.2-I2V-A14B, or --stage1 DIR"
            )
    else:
        stage1_dirs = (need(explicit_stage1, stage1_root, "dit", "Stage I", "stage1"),)
    stage2 = get("stage2")
    if stage2 is None and root is not None:
        stage2 = root / "stage2" if (root / "stage2").is_dir() else root / "dit"
    stage2 = need(stage2, None, "", "Stage II", "stage2")
    t5_dir = need(get("t5"), root or stage1_root, "t5", "text encoder (umT5)", "t5")
    return ModelPaths(
        stage1=stage1_dirs,
        stage1_vae=need(get("stage1_vae"), stage1_root, "vae", "Stage I VAE", "stage1_vae"),
        stage2=stage2,
        vae=need(get("vae"), root, "vae", "Stage II VAE", "vae"),
        t5=t5_dir,
        tokenizer=get("tokenizer") or t5_dir.parent / "tokenizer",
    )


@dataclasses.dataclass(frozen=True)
class ModelSpecs:
    """The architectures read from the checkpoints' config.json files (no weights loaded)."""

    stage1: DiTConfig
    stage1_vae: vae_lib.VAEConfig
    stage2: DiTConfig
    vae: vae_lib.VAEConfig
    t5: t5_lib.T5Config


def _metadata(path: Path, kind: str, what: str) -> dict:
    try:
        meta = checkpoints.read_metadata(path)
    except checkpoints.CheckpointError as e:
        raise PipelineError(f"{what}: {e}") from None
    if meta.get("kind") != kind:
        raise PipelineError(f"{what}: {path} holds a {meta.get('kind')!r} model, not a {kind!r}")
    return meta["config"]


def inspect_models(paths: ModelPaths, config: PipelineConfig) -> ModelSpecs:
    """Reads and cross-checks every checkpoint's config; raises PipelineError on a mismatch."""
    try:
        stage1_configs = [
            DiTConfig.from_dict(_metadata(p, "dit", "Stage I DiT")) for p in paths.stage1
        ]
        stage2 = DiTConfig.from_dict(_metadata(paths.stage2, "dit", "Stage II DiT"))
        stage1_vae = vae_lib.as_config(_metadata(paths.stage1_vae, "vae", "Stage I VAE"))
        vae = vae_lib.as_config(_metadata(paths.vae, "vae", "Stage II VAE"))
        t5 = t5_lib.T5Config.from_dict(_metadata(paths.t5, "t5", "text encoder"))
    except PipelineError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise PipelineError(f"unreadable checkpoint config: {e}") from None
    if not (paths.tokenizer / "tokenizer.json").is_file():
        raise PipelineError(
            f"tokenizer: no tokenizer.json in {paths.tokenizer} (the conversion writes "
            "OUTPUT/tokenizer/; or pass --tokenizer DIR)"
        )
    if len(stage1_configs) == 2 and stage1_configs[0] != stage1_configs[1]:
        raise PipelineError("the two I2V-A14B experts have different architectures")
    stage1_dit = stage1_configs[0]
    if config.attention_backend:
        try:
            stage1_dit = stage1_dit.replace(attention_backend=config.attention_backend)
            stage2 = stage2.replace(attention_backend=config.attention_backend)
        except ValueError as e:
            raise PipelineError(str(e)) from None
    z1 = stage1_vae.z_dim
    if config.stage1.backbone == "ti2v" and not stage1_dit.in_dim == stage1_dit.out_dim == z1:
        raise PipelineError(
            f"Stage I backbone 'ti2v' needs a DiT with in_dim == out_dim == the Stage I VAE's "
            f"z_dim {z1}; {paths.stage1[0]} has in_dim {stage1_dit.in_dim}, out_dim "
            f"{stage1_dit.out_dim} (an I2V-A14B expert? set --config.stage1.backbone=a14b)"
        )
    if config.stage1.backbone == "a14b" and (
        stage1_dit.out_dim != z1 or stage1_dit.in_dim != 2 * z1 + stage1.A14B_MASK_CHANNELS
    ):
        raise PipelineError(
            f"Stage I backbone 'a14b' needs experts with out_dim {z1} and in_dim "
            f"{2 * z1 + stage1.A14B_MASK_CHANNELS} (the Stage I VAE has z_dim {z1}); got "
            f"in_dim {stage1_dit.in_dim}, out_dim {stage1_dit.out_dim}"
        )
    factor = 2 if config.stage2.conditioning == "concat" else 1
    if stage2.out_dim != vae.z_dim or stage2.in_dim != factor * vae.z_dim:
        raise PipelineError(
            f"Stage II '{config.stage2.conditioning}' conditioning needs a DiT with in_dim "
            f"{factor * vae.z_dim} and out_dim {vae.z_dim} (the VAE's z_dim); {paths.stage2} has "
            f"in_dim {stage2.in_dim}, out_dim {stage2.out_dim}"
            + (
                " (set --config.stage2.conditioning=refine for a plain TI2V-5B)"
                if stage2.in_dim == vae.z_dim
                else " (set --config.stage2.conditioning=concat for a trained Stage II)"
            )
        )
    for name, dit_config in (("Stage I", stage1_dit), ("Stage II", stage2)):
        if dit_config.text_dim != t5.d_model:
            raise PipelineError(
                f"{name} DiT expects text_dim {dit_config.text_dim} but the text encoder "
                f"{paths.t5} produces {t5.d_model}"
            )
    if vae_lib.temporal_factor(stage1_vae) != vae_lib.temporal_factor(vae):
        raise PipelineError("the Stage I and Stage II VAEs have different temporal strides")
    return ModelSpecs(stage1=stage1_dit, stage1_vae=stage1_vae, stage2=stage2, vae=vae, t5=t5)


# --------------------------------------------------------------------------------------------
# Sizes


@dataclasses.dataclass(frozen=True)
class SizePlan:
    width: int
    height: int
    frames: int
    stage1_width: int
    stage1_height: int
    latent_frames: int
    latent_hw: tuple[int, int]  # Stage II latent (h, w)
    windows: tuple[segments.Window, ...]
    tokens_per_forward: int
    notes: tuple[str, ...] = ()

    @property
    def segments(self) -> int:
        return len(self.windows)


def granularity(dit_config: DiTConfig, vae_config) -> int:
    """Pixel multiple a side must have: VAE stride x DiT patch (32 for TI2V-5B, 16 for A14B)."""
    return vae_lib.spatial_factor(vae_config) * dit_config.patch_size[1]


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def plan_sizes(
    specs: ModelSpecs, config: PipelineConfig, width: int, height: int, frames: int
) -> SizePlan:
    """Checks the requested size and length against the models; derives Stage I's size."""
    step = vae_lib.temporal_factor(specs.vae)
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer):
        raise PipelineError(f"frames must be an integer, got {frames!r}")
    if frames < step + 1 or (frames - 1) % step:
        raise PipelineError(
            f"frames must be {step}k+1 with k >= 1 (5, 9, ..., 81, ...), got {frames}; "
            f"try {max(step + 1, (frames - 1) // step * step + 1)}"
        )
    # One rule for every model (README, --help): multiples of 32, or of the model's own
    # granularity if that is coarser.
    g2 = int(np.lcm(image_io.RESOLUTION_MULTIPLE, granularity(specs.stage2, specs.vae)))
    if width % g2 or height % g2 or width < g2 or height < g2:
        raise PipelineError(
            f"resolution {width}x{height} must be positive multiples of {g2}; "
            f"try {_round_to(width, g2)}x{_round_to(height, g2)}"
        )
    g1 = granularity(specs.stage1, specs.stage1_vae)
    notes = []
    if config.stage1_resolution is not None:
        w1, h1 = config.stage1_resolution
        if w1 % g1 or h1 % g1:
            raise PipelineError(f"stage1.resolution {w1}x{h1} must be multiples of {g1}")
    else:
        d = config.stage1_divisor
        w1, h1 = _round_to(width / d, g1), _round_to(height / d, g1)
        if (w1 * d, h1 * d) != (width, height):
            notes.append(
                f"Stage I runs at {w1}x{h1} (1/{d} of {width}x{height} rounded to multiples "
                f"of {g1})"
            )
    latent_frames = (frames - 1) // step + 1
    s = vae_lib.spatial_factor(specs.vae)
    latent_hw = (height // s, width // s)
    windows = tuple(config.stage2.plan(latent_frames))
    tokens = csg.tokens_per_forward(specs.stage2, windows[0].size, latent_hw)
    return SizePlan(
        width=width,
        height=height,
        frames=frames,
        stage1_width=w1,
        stage1_height=h1,
        latent_frames=latent_frames,
        latent_hw=latent_hw,
        windows=windows,
        tokens_per_forward=tokens,
        notes=tuple(notes),
    )


def auto_resolution(
    specs: ModelSpecs, config: PipelineConfig, image_size: tuple[int, int], max_area: int
) -> tuple[int, int]:
    """The size with the image's aspect ratio, area <= max_area, whose Stage I size is exact."""
    g1 = granularity(specs.stage1, specs.stage1_vae)
    g2 = granularity(specs.stage2, specs.vae)
    multiple = int(np.lcm.reduce([image_io.RESOLUTION_MULTIPLE, g2, g1 * config.stage1_divisor]))
    return image_io.best_output_size(*image_size, multiple, multiple, max_area)


# --------------------------------------------------------------------------------------------
# Bookkeeping


class StageClock:
    """Accumulates wall-clock seconds per named stage.

    Timers nest: time spent in an inner timer (e.g. loading an expert in the middle of
    Stage I) counts for the inner stage only and is taken off the enclosing one.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._open: list[str] = []

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()
            elapsed = time.perf_counter() - start
            self.add(name, elapsed)
            if self._open:
                self.add(self._open[-1], -elapsed)


def peak_memory() -> tuple[int, str]:
    """(peak bytes, source): the accelerators' peak_bytes_in_use when the backend reports it
    (summed over local devices), else this process's peak resident set size."""
    total, reported = 0, False
    for device in jax.local_devices():
        try:
            stats = device.memory_stats()
        except Exception:  # some backends raise instead of returning None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            total += int(stats["peak_bytes_in_use"])
            reported = True
    if reported:
        return total, "device.memory_stats peak_bytes_in_use"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return int(rss) * scale, "process peak RSS"


def _release(tree) -> None:
    """Frees the device buffers of a parameter tree now (not whenever GC gets to them)."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_deleted():
            leaf.delete()


def _load(path: Path, kind: str):
    _, params = checkpoints.load(path, kind)
    return jax.device_put(params)


@dataclasses.dataclass
class GenerationResult:
    summary: dict[str, Any]
    latents: jax.Array  # the Stage II latents [1, T, h, w, C]


# --------------------------------------------------------------------------------------------
# The pipeline


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
        return self.config.stage1.uses_cfg or self.config.stage2.guide_scale != 1.0

    def generate(
        self,
        image,
        prompt: str,
        plan: SizePlan,
        *,
        negative_prompt: str = "",
        seed: int = 0,
        sink: FrameSink | None = None,
    ) -> GenerationResult:
        """Runs both stages; `sink` receives uint8 frames [n, H, W, 3] as segments finish.

        image: an RGB PIL image (any size; resized and centre-cropped to the plan's sizes).
        """
        cfg, specs, paths = self.config, self.specs, self.paths
        clock = StageClock()
        start = time.perf_counter()
        key_stage1, key_stage2 = jax.random.split(jax.random.key(seed))
        image_hi = jnp.asarray(
            image_io.to_array(image_io.resize_and_crop(image, plan.width, plan.height))
        )[None]
        image_lo = jnp.asarray(
            image_io.to_array(
                image_io.resize_and_crop(image, plan.stage1_width, plan.stage1_height)
            )
        )[None]
        stages = progress_bar(
            total=4, desc="SwiftI2V", unit="stage", disable=not cfg.progress, file=sys.stderr
        )

        # Text -----------------------------------------------------------------------------
        stages.set_postfix_str("text encoder")
        context, uncond = self._encode_text(prompt, negative_prompt, clock)
        stages.update()

        # Stage I --------------------------------------------------------------------------
        stages.set_postfix_str(f"Stage I {plan.stage1_width}x{plan.stage1_height}")
        video_low, expert_forwards, stage1_vae, stage1_dit = self._stage1(
            plan, image_lo, context, uncond, key_stage1, clock
        )
        stages.update()

        # Hybrid reference and anchor ------------------------------------------------------
        stages.set_postfix_str("hybrid reference")
        with clock("load"):  # Stage I and II share the VAE with TI2V-5B: loaded once
            vae_params = stage1_vae if paths.vae == paths.stage1_vae else _load(paths.vae, "vae")
        del stage1_vae
        with clock("reference_encode"):
            z_ref = reference.encode_hybrid_reference(vae_params, specs.vae, video_low, image_hi)
            anchor = reference.encode_anchor(vae_params, specs.vae, image_hi)
            jax.block_until_ready((z_ref, anchor))
        del video_low
        stages.update()

        # Stage II with streaming decode ----------------------------------------------------
        stages.set_postfix_str(f"Stage II {plan.width}x{plan.height}")
        latents, denoiser = self._stage2(
            plan, stage1_dit, z_ref, anchor, vae_params, context, uncond, key_stage2, sink, clock
        )
        stages.update()
        stages.close()

        clock.add("total", time.perf_counter() - start)
        memory, memory_source = peak_memory()
        seconds = {
            name: round(clock.seconds.get(name, 0.0), 3) for name in ("load", *STAGES, "total")
        }
        summary = dict(
            seconds=seconds,
            peak_memory_bytes=memory,
            peak_memory_source=memory_source,
            stage2_compilations=denoiser.traces,
            stage2_tokens_per_forward=plan.tokens_per_forward,
            stage2_window_blocks=plan.windows[0].size,
            segments=plan.segments,
            frames=plan.frames,
            height=plan.height,
            width=plan.width,
            latent_frames=plan.latent_frames,
            stage1_width=plan.stage1_width,
            stage1_height=plan.stage1_height,
            stage1_backbone=cfg.stage1.backbone,
            stage1_expert_forwards=expert_forwards,
            stage2_conditioning=cfg.stage2.conditioning,
            stage2_steps=cfg.stage2.make_schedule().num_steps,
            stage1_steps=cfg.stage1.steps,
            seed=seed,
            backend=jax.default_backend(),
            device=str(jax.devices()[0].device_kind),
        )
        return GenerationResult(summary=summary, latents=latents)

    # -- stages ------------------------------------------------------------------------------

    def _encode_text(self, prompt, negative_prompt, clock):
        from swifti2v_jax.text import PromptEncoder

        with clock("load"):
            encoder = PromptEncoder.from_checkpoint(
                self.paths.t5,
                self.paths.tokenizer,
                cache_dir=self.config.text_cache_dir,
                text_len=self.config.text_len,
                device="cpu" if self.config.memory.text_encoder_on_host else None,
            )
        with clock("text"):
            context = jnp.asarray(encoder(prompt))
            uncond = (
                jnp.asarray(encoder.negative(negative_prompt))
                if self.needs_negative_prompt
                else None
            )
        _release(encoder.params)  # the text encoder is not needed again
        return context, uncond

    def _stage1(self, plan: SizePlan, image_lo, context, uncond, key, clock):
        """-> (video_low, expert forward counts, the Stage I VAE params, the Stage I DiT params
        if Stage II uses the same checkpoint else None)."""
        cfg, specs, paths = self.config, self.specs, self.paths
        swap = cfg.stage1.backbone == "a14b" and cfg.memory.swap_stage1_experts

        def load_dit(path: Path):
            with clock("load"):
                return _load(path, "dit")

        with clock("load"):
            vae_params = _load(paths.stage1_vae, "vae")
        dit_params = [] if swap else [load_dit(p) for p in paths.stage1]
        expert_forwards: dict[str, int] = {}

        def count(name: str, timestep: float) -> None:
            expert_forwards[name] = expert_forwards.get(name, 0) + 1

        with clock("stage1"):
            if cfg.stage1.backbone == "ti2v":
                image_latent = vae_lib.encode(vae_params, specs.stage1_vae, image_lo[:, None])
                z_low = stage1.ti2v_image_to_video(
                    dit_params[0],
                    specs.stage1,
                    cfg.stage1,
                    image_latent=image_latent,
                    num_latent_frames=plan.latent_frames,
                    context=context,
                    uncond_context=uncond,
                    key=key,
                )
                expert_forwards = {"dit": cfg.stage1.steps * (2 if cfg.stage1.uses_cfg else 1)}
            else:
                condition = stage1.a14b_condition(
                    vae_params, specs.stage1_vae, image_lo, plan.frames
                )
                inputs = dict(
                    condition=condition,
                    context=context,
                    uncond_context=uncond,
                    key=key,
                    on_expert=count,
                )
                if swap:
                    z_low = stage1.a14b_image_to_video_swapping(
                        lambda: load_dit(paths.stage1[0]),
                        lambda: load_dit(paths.stage1[1]),
                        specs.stage1,
                        cfg.stage1,
                        release=_release,
                        **inputs,
                    )
                else:
                    z_low = stage1.a14b_image_to_video(
                        dit_params[0], dit_params[1], specs.stage1, cfg.stage1, **inputs
                    )
            video_low = vae_lib.decode(vae_params, specs.stage1_vae, z_low)
            jax.block_until_ready(video_low)
        shared = None
        if paths.stage2 in paths.stage1 and dit_params:
            shared = dit_params[paths.stage1.index(paths.stage2)]
        if cfg.memory.release_stage1:
            for params in dit_params:
                if params is not shared:
                    _release(params)
            if paths.stage1_vae != paths.vae:
                _release(vae_params)
        return video_low, expert_forwards, vae_params, shared

    def _stage2(self, plan, params, z_ref, anchor, vae_params, context, uncond, key, sink, clock):
        """Stage II CSG; each finished segment is decoded and sent to `sink` right away.

        params: the Stage II DiT when Stage I already loaded it (same checkpoint), else None.
        """
        cfg, specs = self.config, self.specs
        if params is None:
            with clock("load"):
                params = _load(self.paths.stage2, "dit")
        denoiser = csg.WindowDenoiser(specs.stage2, cfg.stage2)
        tile = cfg.memory.decode_tile_size or None
        decoder = vae_lib.StreamingDecoder(
            vae_params, specs.vae, tile_size=tile, tile_overlap=cfg.memory.decode_tile_overlap
        )
        bar = progress_bar(
            total=plan.segments,
            desc="Stage II",
            unit="segment",
            disable=not cfg.progress,
            leave=False,
            file=sys.stderr,
        )

        def emit(latents) -> None:
            with clock("decode"):
                frames = frames_to_uint8(decoder.push(latents)[0])
                if sink is not None:
                    sink(frames)

        emit(anchor)  # block 0: the image's own latent, decoded first
        segment_start = time.perf_counter()

        def on_segment(result: csg.SegmentResult) -> None:
            nonlocal segment_start
            jax.block_until_ready(result.latents)
            clock.add("stage2", time.perf_counter() - segment_start)
            emit(result.latents)
            bar.update()
            bar.set_postfix_str(f"blocks {result.blocks[0]}-{result.blocks[-1]}")
            segment_start = time.perf_counter()

        latents = csg.generate(
            params,
            specs.stage2,
            cfg.stage2,
            z_ref=z_ref,
            anchor=anchor,
            context=context,
            uncond_context=uncond,
            key=key,
            on_segment=on_segment,
            denoiser=denoiser,
        )
        bar.close()
        return latents, denoiser
