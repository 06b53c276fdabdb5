"""What the GPU-time benchmark counts (benchmarks/gpu_time.py): the 2K clip settings, the
full-size programs lowered from abstract arrays, the VAE work per clip and per-clip pipeline
arithmetic (pure functions, testable without lowering anything)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from benchmarks import common
from benchmarks.common import DiTProgram
from swifti2v_jax.csg import layout as segments
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.presets import dit as dit_configs

PRESETS = ("tiny", "small", "small_attention", "ti2v_5b", "a14b")

# The 2K target of the paper: 2560x1408, 81 frames.
TARGET_WIDTH, TARGET_HEIGHT, TARGET_FRAMES = 2560, 1408, 81
STAGE1_WIDTH, STAGE1_HEIGHT = 640, 352
TEXT_LEN = 512
WAN22_STRIDE, WAN21_STRIDE, TEMPORAL_STRIDE = 16, 8, 4
H800_SECONDS, H800_PEAK_FLOPS = 111.0, 990e12  # paper's latency; H800 dense bf16 peak


def latent_frames(frames: int = TARGET_FRAMES) -> int:
    return (frames - 1) // TEMPORAL_STRIDE + 1


def _real(preset: str, **changes) -> DiTConfig:
    return DiTConfig.from_dict(dit_configs.get(preset)).replace(**changes)


# --------------------------------------------------------------------------------------------
# Settings of the per-clip comparison


@dataclasses.dataclass(frozen=True)
class ClipSettings:
    """Sampler settings of the three pipelines (guidance = forwards per step: 2 with CFG).

    Stage II defaults (8 steps with CFG, i.e. 16 window forwards per segment, 112 per clip):
    the paper's ~111 s per clip on one H800 leaves room for roughly 100-200 window forwards
    once Stage I and the VAE are paid (docs/design.md, "Cost model at 2K"); this run prints
    the H800 utilisation those settings imply.
    """

    baseline_5b_steps: int = 50
    baseline_5b_guidance: int = 2
    baseline_14b_steps: int = 40
    baseline_14b_guidance: int = 2
    stage1_steps: int = 4
    stage1_guidance: int = 1
    stage2_steps: int = 8
    stage2_guidance: int = 2
    noisy_blocks: int = 3
    neighbours: int = 1

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            low = 0 if field.name == "neighbours" else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{field.name} must be an integer >= {low}, got {value!r}")
            if field.name.endswith("guidance") and value > 2:
                raise ValueError(f"{field.name} is forwards per step: 1 (none) or 2 (CFG)")

    @property
    def window_blocks(self) -> int:
        return 1 + self.neighbours + self.noisy_blocks

    def segments(self, num_blocks: int) -> int:
        return len(segments.plan_segments(num_blocks, self.noisy_blocks, self.neighbours))


# --------------------------------------------------------------------------------------------
# The full-size 2K programs


def full_2k_programs(settings: ClipSettings) -> dict[str, DiTProgram]:
    t = latent_frames()
    wan22_hw = (TARGET_HEIGHT // WAN22_STRIDE, TARGET_WIDTH // WAN22_STRIDE)
    wan21_hw = (TARGET_HEIGHT // WAN21_STRIDE, TARGET_WIDTH // WAN21_STRIDE)
    stage1_hw = (STAGE1_HEIGHT // WAN21_STRIDE, STAGE1_WIDTH // WAN21_STRIDE)
    programs = [
        DiTProgram(
            "ti2v_5b_2k_end_to_end", _real("ti2v_5b"), (t, *wan22_hw), TEXT_LEN, 1,
            "TI2V-5B, whole 2K clip in one forward (Wan2.2 VAE latents)",
        ),
        DiTProgram(
            "wan14b_2k_end_to_end", _real("i2v_a14b"), (t, *wan21_hw), TEXT_LEN, 1,
            "14B Wan DiT, whole 2K clip in one forward (Wan2.1 VAE latents)",
        ),
        DiTProgram(
            "stage2_csg_window", _real("ti2v_5b_concat"), (settings.window_blocks, *wan22_hw),
            TEXT_LEN, 1 + settings.neighbours,
            f"SwiftI2V Stage II: TI2V-5B (concat, 96 in) on one CSG window "
            f"(anchor + N={settings.neighbours} + M={settings.noisy_blocks} blocks)",
        ),
        DiTProgram(
            "stage1_a14b_360p", _real("i2v_a14b"), (t, *stage1_hw), TEXT_LEN, 0,
            f"SwiftI2V Stage I: I2V-A14B expert at {STAGE1_WIDTH}x{STAGE1_HEIGHT}",
        ),
    ]  # fmt: skip
    return {p.name: p for p in programs}


def analyse_programs(programs, compile_memory: bool, attention: str) -> dict[str, dict]:
    out = {}
    for name, program in programs.items():
        entry = dict(
            description=program.description,
            tokens=program.tokens,
            latent_grid=list(program.latent_grid),
            model=dict(dim=program.model.dim, layers=program.model.num_layers,
                       heads=program.model.num_heads, in_dim=program.model.in_dim),
            xla=common.dit_flops(program),
        )  # fmt: skip
        if compile_memory:
            # bf16 weights, as real inference runs (fp32 weights alone are 20 GB for the 5B)
            compiled = program.with_model(attention_backend=attention, param_dtype="bfloat16")
            entry["memory_analysis"] = common.compile_memory(compiled)
            entry["memory_analysis_attention_backend"] = attention
        out[name] = entry
        print(f"  {name}: {entry['tokens']:,} tokens, {entry['xla']['flops']:.3e} FLOPs/forward")
    return out


# --------------------------------------------------------------------------------------------
# VAE work per clip (chunk programs lowered from abstract arrays, times the chunk count)


VAE_WORK = {
    # name: (variant, height, width, kind, pixel frames)
    "wan22_encode_2k_image": ("wan22", TARGET_HEIGHT, TARGET_WIDTH, "encode", 1),
    "wan22_encode_2k_video": ("wan22", TARGET_HEIGHT, TARGET_WIDTH, "encode", TARGET_FRAMES),
    "wan22_decode_2k_video": ("wan22", TARGET_HEIGHT, TARGET_WIDTH, "decode", TARGET_FRAMES),
    "wan21_encode_2k_video": ("wan21", TARGET_HEIGHT, TARGET_WIDTH, "encode", TARGET_FRAMES),
    "wan21_decode_2k_video": ("wan21", TARGET_HEIGHT, TARGET_WIDTH, "decode", TARGET_FRAMES),
    "wan21_encode_360p_video": ("wan21", STAGE1_HEIGHT, STAGE1_WIDTH, "encode", TARGET_FRAMES),
    "wan21_decode_360p_video": ("wan21", STAGE1_HEIGHT, STAGE1_WIDTH, "decode", TARGET_FRAMES),
}


def _vae_chunk_costs(variant: str, height: int, width: int) -> dict[str, dict]:
    """Cost of the first and of a later encode/decode chunk.

    'flops' are counted on the jaxpr (convolutions and matmuls, loop trip counts applied): the
    VAE scans over frames inside a chunk, and XLA's cost analysis counts a scan body once.
    XLA's own numbers are kept alongside ('xla_flops', 'bytes_accessed').
    """
    from swifti2v_jax.models import vae
    from swifti2v_jax.presets import vae as vae_configs

    cfg = vae.as_config(vae_configs.get(variant))
    params = vae.abstract_params(cfg)
    f32 = np.float32
    first_frames = jax.ShapeDtypeStruct((1, 1, height, width, 3), f32)
    later_frames = jax.ShapeDtypeStruct((1, cfg.temporal_factor, height, width, 3), f32)
    s = cfg.spatial_factor
    latent = jax.ShapeDtypeStruct((1, 1, height // s, width // s, cfg.z_dim), f32)

    encode0 = lambda p, x: vae.encode_chunk(p, cfg, x)
    encode = lambda p, c, x: vae.encode_chunk(p, cfg, x, c)
    decode0 = lambda p, z: vae.decode_chunk(p, cfg, z)
    decode = lambda p, c, z: vae.decode_chunk(p, cfg, z, c)
    _, enc_cache = jax.eval_shape(encode0, params, first_frames)
    _, dec_cache = jax.eval_shape(decode0, params, latent)

    def cost(fn, *args):
        xla = common.cost_of(jax.jit(fn).lower(*args))
        counted = common.jaxpr_flops(fn, *args)
        return dict(
            flops=counted["flops"],
            xla_flops=xla["flops"],
            bytes_accessed=xla["bytes_accessed"],
            while_loops=counted["while_loops"],
        )

    return dict(
        encode_first=cost(encode0, params, first_frames),
        encode_later=cost(encode, params, enc_cache, later_frames),
        decode_first=cost(decode0, params, latent),
        decode_later=cost(decode, params, dec_cache, latent),
    )


def analyse_vae() -> dict:
    """FLOPs of each VAE job per clip, or {'error': ...} when the VAE is not available."""
    try:
        chunk_costs = {}
        out = {}
        for name, (variant, height, width, kind, frames) in VAE_WORK.items():
            key = (variant, height, width)
            if key not in chunk_costs:
                chunk_costs[key] = _vae_chunk_costs(variant, height, width)
            costs = chunk_costs[key]
            later = (frames - 1) // TEMPORAL_STRIDE  # encode: 4-frame chunks; decode: latents
            first, rest = costs[f"{kind}_first"], costs[f"{kind}_later"]
            total = lambda k, first=first, rest=rest, later=later: first[k] + later * rest[k]
            out[name] = dict(
                variant=variant, height=height, width=width, kind=kind, pixel_frames=frames,
                chunks=1 + later, flops=total("flops"), xla_flops_loop_bodies_once=total(
                    "xla_flops"), bytes_accessed_loop_bodies_once=total("bytes_accessed"),
                flops_source="jaxpr count of convolutions and matmuls, loops multiplied out",
            )  # fmt: skip
            print(f"  {name}: {out[name]['flops']:.3e} FLOPs")
        return out
    except Exception as error:  # noqa: BLE001 - the VAE is optional for this benchmark
        return {"error": f"{type(error).__name__}: {error}"}


# --------------------------------------------------------------------------------------------
# Per-clip pipelines (pure arithmetic, testable without lowering anything)


def pipeline_terms(settings: ClipSettings) -> dict[str, list[tuple[str, str, int]]]:
    """(label, work key, count) per pipeline. Keys 'dit:<program>' or 'vae:<VAE_WORK name>'."""
    blocks = latent_frames()
    segs = settings.segments(blocks)
    return {
        "ti2v_5b_2k_end_to_end": [
            ("DiT (TI2V-5B, 73,920 tokens)", "dit:ti2v_5b_2k_end_to_end",
             settings.baseline_5b_steps * settings.baseline_5b_guidance),
            ("VAE encode image (Wan2.2, 2K)", "vae:wan22_encode_2k_image", 1),
            ("VAE decode (Wan2.2, 2K)", "vae:wan22_decode_2k_video", 1),
        ],
        "wan14b_2k_end_to_end": [
            ("DiT (14B, 295,680 tokens)", "dit:wan14b_2k_end_to_end",
             settings.baseline_14b_steps * settings.baseline_14b_guidance),
            ("VAE encode conditioning video (Wan2.1, 2K)", "vae:wan21_encode_2k_video", 1),
            ("VAE decode (Wan2.1, 2K)", "vae:wan21_decode_2k_video", 1),
        ],
        "swifti2v": [
            ("Stage I DiT (A14B, 640x352)", "dit:stage1_a14b_360p",
             settings.stage1_steps * settings.stage1_guidance),
            ("Stage I VAE encode conditioning video (Wan2.1, 640x352)",
             "vae:wan21_encode_360p_video", 1),
            ("Stage I VAE decode (Wan2.1, 640x352)", "vae:wan21_decode_360p_video", 1),
            ("Hybrid reference VAE encode (Wan2.2, 2K)", "vae:wan22_encode_2k_video", 1),
            (f"Stage II DiT (CSG, {segs} segments)", "dit:stage2_csg_window",
             segs * settings.stage2_steps * settings.stage2_guidance),
            ("VAE decode (Wan2.2, 2K)", "vae:wan22_decode_2k_video", 1),
        ],
    }  # fmt: skip


def per_clip(
    settings: ClipSettings,
    work_flops: dict[str, float],
    seconds_per_flop: float,
    measured_seconds: dict[str, float] | None = None,
) -> dict:
    """FLOPs and device-seconds per clip of each pipeline, and the baselines' ratios to SwiftI2V.

    work_flops: 'dit:<program>' / 'vae:<job>' -> FLOPs of one unit; a missing VAE key makes
    that term None (reported, and the with-VAE ratios fall back to DiT only).
    measured_seconds: 'dit:<program>' -> measured seconds per forward on this backend.
    """
    measured_seconds = measured_seconds or {}
    pipelines = {}
    for name, terms in pipeline_terms(settings).items():
        rows, totals = [], dict(dit=0.0, vae=0.0, dit_seconds=0.0, vae_seconds=0.0)
        vae_complete = True
        for label, key, count in terms:
            flops = work_flops.get(key)
            kind = key.split(":")[0]
            if flops is None:
                vae_complete = False
                rows.append(dict(label=label, work=key, count=count, flops=None, seconds=None))
                continue
            if key in measured_seconds:
                seconds, source = measured_seconds[key] * count, "measured"
            else:
                seconds, source = flops * count * seconds_per_flop, "predicted from FLOPs"
            totals[kind] += flops * count
            totals[f"{kind}_seconds"] += seconds
            rows.append(dict(label=label, work=key, count=count, flops_each=flops,
                             flops=flops * count, seconds=seconds,
                             seconds_source=source))  # fmt: skip
        pipelines[name] = dict(
            terms=rows,
            dit_flops=totals["dit"],
            vae_flops=totals["vae"] if vae_complete else None,
            total_flops=totals["dit"] + totals["vae"],
            dit_seconds=totals["dit_seconds"],
            total_seconds=totals["dit_seconds"] + totals["vae_seconds"],
            vae_included=vae_complete,
        )
    swift = pipelines["swifti2v"]
    ratios = {}
    for name in ("ti2v_5b_2k_end_to_end", "wan14b_2k_end_to_end"):
        base = pipelines[name]
        ratios[name] = dict(
            flops_ratio_with_vae=base["total_flops"] / swift["total_flops"],
            flops_ratio_dit_only=base["dit_flops"] / swift["dit_flops"],
            flops_ratio_e2e_dit_vs_swifti2v_total=base["dit_flops"] / swift["total_flops"],
            device_seconds_ratio_with_vae=base["total_seconds"] / swift["total_seconds"],
            device_seconds_ratio_dit_only=base["dit_seconds"] / swift["dit_seconds"],
        )
    h800 = dict(
        swifti2v_total_flops=swift["total_flops"],
        seconds_at_full_peak=swift["total_flops"] / H800_PEAK_FLOPS,
        utilisation_implied_by_111s=swift["total_flops"] / (H800_SECONDS * H800_PEAK_FLOPS),
    )
    return dict(
        settings=dataclasses.asdict(settings),
        segments=settings.segments(latent_frames()),
        pipelines=pipelines,
        ratios_vs_swifti2v=ratios,
        h800_check=h800,
    )
