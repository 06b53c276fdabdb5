"""GPU-time of 2K image-to-video: end-to-end generation vs the SwiftI2V pipeline, on any backend.

    python -m benchmarks.gpu_time --preset small --out benchmarks/results/gpu_time

Three parts, all written to OUT/results.json, OUT/results.md and OUT/gpu_time.png:

1. Measured on the current backend, for the preset's DiT forwards (`tiny` and `small` run on a
   CPU; `ti2v_5b` and `a14b` are the real 2K shapes and run where they fit, e.g. on an 80 GB
   GPU): median time per forward (round-robin, after warm-up), XLA FLOPs / bytes / memory plan,
   peak memory of a fresh process, achieved FLOP/s and model FLOP utilisation against a matmul
   peak measured in the same run, and the same forward in PyTorch (diffusers
   WanTransformer3DModel with the same weights, converted by conversion.dit) as a JAX/PyTorch
   time ratio. For presets with a CSG window, the per-clip end-to-end/CSG ratio measured from
   those times is compared with the ratio XLA's FLOPs predict.
2. The full-size 2K forwards, lowered from abstract arrays (no weights are allocated): tokens,
   FLOPs and the XLA memory plan of TI2V-5B end-to-end (73,920 tokens), the 14B Wan model
   end-to-end with the Wan2.1 VAE (295,680), the Stage II CSG window (17,600, M=3, N=1) and
   Stage I (A14B at 640x352, 18,480), plus the Wan VAEs' encode/decode work.
3. Per-clip FLOPs and device-seconds of the two end-to-end baselines and of SwiftI2V
   (Stage I + Stage II segments x steps x guidance + VAE), and their ratios. Device-seconds use
   the times measured in part 1 where this run measured that exact program, else FLOPs divided
   by the FLOP rate achieved in part 1 (or the matmul peak x --assumed-mfu).

FLOPs of a scanned DiT are loop-corrected (see benchmarks/common.py). Attention FLOPs are
always counted on the XLA attention path; cuDNN/splash kernels are opaque custom calls to XLA's
cost analysis.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import jax
import numpy as np

from benchmarks import common
from benchmarks.common import DiTProgram
from conversion import common as conversion_common
from swifti2v_jax.models.dit import DiTConfig, init_params
from swifti2v_jax.presets import dit as dit_configs
from swifti2v_jax.sampling import segments

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
    once Stage I and the VAE are paid (reference/swifti2v-paper.md section 7); this run prints
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


# --------------------------------------------------------------------------------------------
# Presets measured on the current backend


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    programs: dict[str, DiTProgram]
    # (end-to-end program, CSG window program, segments per clip) or None
    clip: tuple[str, str, int] | None
    runs_on_cpu: bool
    description: str


def _small_model() -> DiTConfig:
    """A 2-layer Stage II-shaped DiT (96 in / 48 out channels) with Wan's head_dim of 128."""
    return DiTConfig(
        dim=256, ffn_dim=1192, num_heads=2, num_layers=2, in_dim=96, out_dim=48,
        text_dim=64, freq_dim=64, compute_dtype="float32",
    )  # fmt: skip


# name: (model, latent frames, latent (h, w), text tokens, description)
SMALL_PRESETS = {
    "tiny": (lambda: _real("tiny_concat"), 9, (8, 8), 8, "tiny test DiT"),
    # 21 x 64 = 1,344 tokens at width 256: matmul-bound on a CPU, where XLA FLOPs predict time.
    "small": (_small_model, latent_frames(), (16, 16), 32, "small DiT"),
    # 21 x 256 = 5,376 tokens at width 256: tokens/width ~ TI2V-5B at 2K (73,920 / 3,072), so
    # attention's share of the FLOPs, hence the FLOP ratio, is like the real case. XLA:CPU's
    # materialised [heads, L, L] attention runs far below its matmul rate at this length.
    "small_attention": (_small_model, latent_frames(), (32, 32), 32,
                        "small DiT, attention-heavy (2K-like tokens/width)"),
}  # fmt: skip


def make_preset(name: str, settings: ClipSettings) -> Preset:
    window = settings.window_blocks
    clean = 1 + settings.neighbours
    if name in SMALL_PRESETS:
        make_model, blocks, hw, text_len, what = SMALL_PRESETS[name]
        model = make_model()
        e2e = DiTProgram(
            f"{name}_end_to_end",
            model,
            (blocks, *hw),
            text_len,
            1,
            f"{what}, whole clip ({blocks} latent frames) in one forward",
        )
        win = DiTProgram(f"{name}_csg_window", model, (window, *hw), text_len, clean,
                         f"{what}, one CSG window ({window} blocks)")  # fmt: skip
        return Preset(
            name, {e2e.name: e2e, win.name: win},
            (e2e.name, win.name, settings.segments(blocks)), True,
            f"{what} (dim {model.dim}, {model.num_layers} layers), "
            f"{blocks} latent frames of {hw[0]}x{hw[1]} ({e2e.tokens:,} tokens end-to-end)",
        )  # fmt: skip
    full = full_2k_programs(settings)
    measure = lambda p: p.with_model(param_dtype="bfloat16")  # real inference keeps bf16 weights
    if name == "ti2v_5b":
        e2e, win = full["ti2v_5b_2k_end_to_end"], full["stage2_csg_window"]
        programs = {e2e.name: measure(e2e), win.name: measure(win)}
        clip = (e2e.name, win.name, settings.segments(latent_frames()))
        return Preset(name, programs, clip, False,
                      "TI2V-5B at 2K: end-to-end and one Stage II CSG window")  # fmt: skip
    if name == "a14b":
        e2e, stage1 = full["wan14b_2k_end_to_end"], full["stage1_a14b_360p"]
        programs = {e2e.name: measure(e2e), stage1.name: measure(stage1)}
        return Preset(name, programs, None, False,
                      "14B Wan DiT: end-to-end at 2K and Stage I at 640x352")  # fmt: skip
    raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")


def clip_comparison(preset: Preset, settings: ClipSettings, measured: dict, flops: dict) -> dict:
    """Per-clip end-to-end vs CSG from measured forward times and from XLA FLOPs."""
    e2e, win, segs = preset.clip
    forwards = settings.stage2_steps * settings.stage2_guidance
    t_e2e, t_win = measured[e2e]["median"], measured[win]["median"]
    measured_ratio = t_e2e / (segs * t_win)
    predicted_ratio = flops[e2e] / (segs * flops[win])
    return dict(
        end_to_end_program=e2e,
        csg_window_program=win,
        segments=segs,
        forwards_per_segment=forwards,
        end_to_end_seconds_per_clip=forwards * t_e2e,
        csg_seconds_per_clip=forwards * segs * t_win,
        measured_ratio=measured_ratio,
        predicted_ratio_from_xla_flops=predicted_ratio,
        relative_difference=measured_ratio / predicted_ratio - 1.0,
        # paired estimate: each round times one end-to-end forward and `segments` windows
        measured_ratio_median_of_rounds=float(
            np.median(
                np.asarray(measured[e2e]["runs"]) / (segs * np.asarray(measured[win]["runs"]))
            )
        ),
        agree_within_30_percent=abs(measured_ratio / predicted_ratio - 1.0) <= 0.30,
    )


# --------------------------------------------------------------------------------------------
# Measurement


def _init_params(config: DiTConfig, seed: int = 0):
    """Host-made random weights on CPU (no compile, see common.random_params); on accelerators
    the Flax initialiser runs on the device (host RAM may not hold a 14B model in fp32)."""
    if common.on_cpu():
        return common.random_params(config, seed)
    return jax.jit(lambda key: init_params(config, key))(jax.random.key(seed))


def memory_worker(task: dict) -> dict:
    """Fresh process: allocate, compile and run one forward; report the memory it took."""
    settings = ClipSettings(**task["settings"])
    program = make_preset(task["preset"], settings).programs[task["program"]]
    program = program.with_model(attention_backend=task["attention"])
    params = _init_params(program.model)
    inputs = common.concrete_inputs(program)
    common.block(params)
    rss_before = common.peak_rss_bytes()
    compiled = common.forward_fn(program.model).lower(params, *inputs).compile()
    common.block(compiled(params, *inputs))
    return dict(
        program=program.name,
        memory_analysis=common.memory_of(compiled),
        peak_rss_bytes=common.peak_rss_bytes(),
        peak_rss_before_compile_bytes=rss_before,
        ru_maxrss_bytes=common.ru_maxrss_bytes(),
        device_peak_bytes=common.device_peak_bytes(),
    )


DictSource = conversion_common.DictSource


def diffusers_twin(config: DiTConfig, seed: int = 0):
    """A diffusers WanTransformer3DModel of `config` with random weights, and the same weights
    converted to our Flax layout by conversion.dit (the production converter)."""
    import torch
    from diffusers import WanTransformer3DModel

    from conversion import dit as dit_conversion

    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=config.patch_size, num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim, in_channels=config.in_dim,
        out_channels=config.out_dim, text_dim=config.text_dim, freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=config.eps,
    ).float().eval()  # fmt: skip
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:  # keep activations O(1) through the layers
                param.copy_(noise / max(1.0, param.shape[-1] ** 0.5))
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = dit_conversion.convert_source(DictSource(tensors), config, diffusers=True)
    return model, jax.tree.map(jax.numpy.asarray, params)


def _torch_forward(model, program: DiTProgram, inputs):
    import torch

    latents, timesteps, context = inputs
    tokens_per_frame = program.tokens // (program.latent_grid[0] // program.model.patch_size[0])
    hidden = torch.from_numpy(latents).permute(0, 4, 1, 2, 3).contiguous()
    # diffusers takes per-token timesteps [B, L] (TI2V's expand_timesteps path)
    per_token = torch.from_numpy(np.repeat(timesteps, tokens_per_frame, axis=1))
    text = torch.from_numpy(context)

    def run():
        with torch.inference_mode():
            return model(hidden_states=hidden, timestep=per_token,
                         encoder_hidden_states=text, return_dict=False)[0]  # fmt: skip

    return run


def measure_preset(preset: Preset, attention: str, rounds: int, with_torch: bool) -> dict:
    """Round-robin timing of the preset's forwards (JAX, and PyTorch with the same weights)."""
    torch_note = None
    if with_torch:
        # libgomp's default spin-waiting collapses when the two cores are shared with XLA's
        # thread pool and other processes (a 3 ms forward took 500 ms here); passive waiting
        # is read once, when torch loads its OpenMP runtime.
        omp_policy_applied = "torch" not in sys.modules
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import torch

            if not common.on_cpu():
                raise RuntimeError("the PyTorch comparison is implemented for CPU runs")
            torch.set_num_threads(os.cpu_count())
        except Exception as error:  # noqa: BLE001
            with_torch, torch_note = False, f"PyTorch comparison skipped: {error}"
    models, fns, parity = {}, {}, {}
    for name, program in preset.programs.items():
        program = program.with_model(attention_backend=attention)
        key = program.model
        if key not in models:
            if with_torch:
                models[key] = diffusers_twin(program.model)
            else:
                models[key] = (None, _init_params(program.model))
        torch_model, params = models[key]
        inputs = common.concrete_inputs(program)
        device_inputs = [jax.device_put(x) for x in inputs]
        compiled = common.forward_fn(program.model).lower(params, *device_inputs).compile()
        fns[f"jax:{name}"] = lambda c=compiled, p=params, a=device_inputs: c(p, *a)
        if with_torch:
            fns[f"torch:{name}"] = _torch_forward(torch_model, program, inputs)
            ours = np.asarray(compiled(params, *device_inputs))
            ref = fns[f"torch:{name}"]().permute(0, 2, 3, 4, 1).numpy()
            parity[name] = dict(
                max_abs_diff=float(np.max(np.abs(ours - ref))),
                max_abs_ref=float(np.max(np.abs(ref))),
            )
    repeats = {}
    if preset.clip:  # sample a window `segments` times per round: one clip's worth of each
        _, window, segs = preset.clip
        repeats = {f"jax:{window}": segs, f"torch:{window}": segs}
    timings = common.time_round_robin(fns, rounds=rounds, warmup=1, repeats=repeats)
    out = dict(rounds=rounds, attention_backend=attention, timings=timings)
    if with_torch:
        import torch

        out["pytorch"] = dict(
            threads=torch.get_num_threads(),
            omp_wait_policy=os.environ.get("OMP_WAIT_POLICY")
            if omp_policy_applied
            else "unknown (torch was imported before the benchmark set it)",
            xla_cpu_threads=os.cpu_count(),
            dtype="float32",
            timestep_input="per-token [B, L] (diffusers) vs per-frame [B, T] (ours)",
            parity=parity,
            jax_over_torch_time={
                name: timings[f"jax:{name}"]["median"] / timings[f"torch:{name}"]["median"]
                for name in preset.programs
            },
        )
    elif torch_note:
        out["pytorch"] = dict(skipped=torch_note)
    return out


# --------------------------------------------------------------------------------------------
# Report


def build_report(args, settings: ClipSettings) -> dict:
    preset = make_preset(args.preset, settings)
    attention = args.attention or common.default_attention_backend()
    report = dict(
        benchmark="gpu_time",
        command=" ".join(["python -m benchmarks.gpu_time"] + sys.argv[1:]),
        backend=common.backend_info(),
        preset=dict(name=preset.name, description=preset.description),
    )
    print("matmul peak ...")
    report["matmul_peak"] = common.matmul_peak()
    peak = report["matmul_peak"]["flops_per_second"]

    print(f"XLA cost analysis of the {preset.name} forwards ...")
    preset_analysis = analyse_programs(preset.programs, compile_memory=False, attention=attention)
    flops = {name: entry["xla"]["flops"] for name, entry in preset_analysis.items()}

    measure = args.measure if args.measure is not None else (preset.runs_on_cpu or not
                                                             common.on_cpu())  # fmt: skip
    measured_seconds: dict[str, float] = {}
    if measure:
        print(f"measuring {preset.name} on {report['backend']['platform']} ...")
        with_torch = args.torch if args.torch is not None else preset.runs_on_cpu
        timing = measure_preset(preset, attention, args.rounds, with_torch)
        for name, entry in preset_analysis.items():
            worker = common.run_worker(
                "benchmarks.gpu_time",
                dict(task="memory", preset=preset.name, program=name, attention=attention,
                     settings=dataclasses.asdict(settings)),
            )  # fmt: skip
            seconds = timing["timings"][f"jax:{name}"]["median"]
            measured_seconds[name] = seconds
            entry["measured"] = dict(
                seconds_per_forward=timing["timings"][f"jax:{name}"],
                achieved_flops_per_second=flops[name] / seconds,
                model_flop_utilisation=flops[name] / seconds / peak,
                memory_analysis=worker["memory_analysis"],
                peak_rss_bytes=worker["peak_rss_bytes"],
                peak_rss_before_compile_bytes=worker["peak_rss_before_compile_bytes"],
                device_peak_bytes=worker["device_peak_bytes"],
            )
            if f"torch:{name}" in timing["timings"]:
                entry["measured"]["pytorch_seconds_per_forward"] = timing["timings"][
                    f"torch:{name}"
                ]
        report["measurement"] = {k: v for k, v in timing.items() if k != "timings"}
    else:
        report["measurement"] = dict(
            skipped=f"preset {preset.name} does not run on this backend (pass --measure to try)"
        )
    report["preset"]["programs"] = preset_analysis
    if measure and preset.clip:
        stats = {n: e["measured"]["seconds_per_forward"] for n, e in preset_analysis.items()}
        report["preset"]["per_clip"] = clip_comparison(preset, settings, stats, flops)

    if not args.skip_2k:
        print("full-size 2K programs (abstract, no weights allocated) ...")
        programs = full_2k_programs(settings)
        analysis = analyse_programs(programs, compile_memory=args.compile_2k, attention=attention)
        print("VAE work per clip ...")
        vae = analyse_vae()
        work = {f"dit:{n}": e["xla"]["flops"] for n, e in analysis.items()}
        if "error" not in vae:
            work.update({f"vae:{n}": e["flops"] for n, e in vae.items()})
        rates = [flops[n] / s for n, s in measured_seconds.items()]
        if rates:
            rate, rate_source = float(np.median(rates)), f"achieved by the {preset.name} forwards"
        else:
            rate = peak * args.assumed_mfu
            rate_source = f"matmul peak x assumed MFU {args.assumed_mfu}"
        measured_2k = {f"dit:{n}": s for n, s in measured_seconds.items() if n in programs}
        clip = per_clip(settings, work, 1.0 / rate, measured_2k)
        clip["flop_rate_for_predictions"] = dict(flops_per_second=rate, source=rate_source)
        report["full_2k"] = dict(
            target=dict(width=TARGET_WIDTH, height=TARGET_HEIGHT, frames=TARGET_FRAMES,
                        latent_frames=latent_frames(), text_len=TEXT_LEN),
            programs=analysis,
            vae=vae,
            per_clip=clip,
        )  # fmt: skip
    return report


def markdown(report: dict) -> str:
    f = common
    lines = [
        "# GPU-time benchmark: end-to-end 2K vs SwiftI2V",
        "",
        f"Command: `{report['command']}`  ",
        f"Backend: {report['backend']['platform']} ({report['backend']['device_kind']}, "
        f"{report['backend']['cpu_count']} CPU cores), jax {report['backend']['jax_version']}. "
        f"Matmul peak measured in this run: "
        f"{report['matmul_peak']['flops_per_second'] / 1e9:.1f} GFLOP/s "
        f"({report['matmul_peak']['dtype']}).",
        "",
        f"## Measured: preset `{report['preset']['name']}` ({report['preset']['description']})",
        "",
    ]
    rows = []
    for name, entry in report["preset"]["programs"].items():
        m = entry.get("measured")
        if m is None:
            rows.append([name, f"{entry['tokens']:,}", f.fmt_flops(entry["xla"]["flops"])]
                        + ["not run"] * 7)  # fmt: skip
            continue
        torch_s = m.get("pytorch_seconds_per_forward", {}).get("median")
        ratio = None if torch_s is None else m["seconds_per_forward"]["median"] / torch_s
        process_peak = m["device_peak_bytes"] or m["peak_rss_bytes"]
        rows.append([
            name, f"{entry['tokens']:,}", f.fmt_flops(entry["xla"]["flops"]),
            f.fmt_seconds(m["seconds_per_forward"]["median"]),
            f"{m['achieved_flops_per_second'] / 1e9:.1f}",
            f"{100 * m['model_flop_utilisation']:.0f}%",
            f.fmt_bytes((m["memory_analysis"] or {}).get("peak")),
            f.fmt_bytes(process_peak),
            f.fmt_seconds(torch_s),
            "n/a" if ratio is None else f"{ratio:.2f}",
        ])  # fmt: skip
    lines.append(f.markdown_table(
        ["forward", "tokens", "XLA FLOPs", "time (median)", "GFLOP/s", "MFU",
         "XLA memory plan", "process peak", "PyTorch time", "JAX/PyTorch"], rows))  # fmt: skip
    pt = report.get("measurement", {}).get("pytorch")
    if pt and "parity" in pt:
        diffs = ", ".join(f"{k}: {v['max_abs_diff']:.2g} (max |out| {v['max_abs_ref']:.2g})"
                          for k, v in pt["parity"].items())  # fmt: skip
        lines += [
            "",
            f"PyTorch: diffusers WanTransformer3DModel, fp32, {pt['threads']} threads, same "
            f"weights (max |JAX - PyTorch| {diffs}). Process peak = peak RSS of a fresh process "
            "on CPU (includes the runtime and compilation), device peak elsewhere.",
        ]
    clip = report["preset"].get("per_clip")
    if clip:
        lines += ["", "Per clip (same sampler for both): "
                  f"end-to-end {f.fmt_seconds(clip['end_to_end_seconds_per_clip'])}, CSG "
                  f"({clip['segments']} segments) {f.fmt_seconds(clip['csg_seconds_per_clip'])}; "
                  f"end-to-end/CSG measured **{clip['measured_ratio']:.2f}**, predicted from "
                  f"XLA FLOPs **{clip['predicted_ratio_from_xla_flops']:.2f}** "
                  f"(difference {100 * clip['relative_difference']:+.0f}%)."]  # fmt: skip
    full = report.get("full_2k")
    if full:
        lines += ["", "## Full-size 2K forwards (lowered from abstract arrays, no weights)", ""]
        rows = []
        for name, entry in full["programs"].items():
            x = entry["xla"]
            mem = (entry.get("memory_analysis") or {}).get("peak")
            rows.append([name, f"{entry['tokens']:,}", f.fmt_flops(x["flops"]),
                         f.fmt_flops(x["analytic_flops"]), f.fmt_flops(x["scan_reported_flops"]),
                         f.fmt_bytes(mem)])  # fmt: skip
        lines.append(f.markdown_table(
            ["forward", "tokens", "FLOPs (XLA, loop-corrected)", "FLOPs (analytic)",
             "FLOPs XLA reports for the scan", "XLA memory plan"], rows))  # fmt: skip
        attention = next(iter(full["programs"].values())).get("memory_analysis_attention_backend")
        if attention:
            lines += ["", f"Memory plans are for attention backend `{attention}` on "
                      f"{report['backend']['platform']}; the XLA path materialises the "
                      "[heads, L, L] scores, flash kernels (cuDNN, splash) do not."]  # fmt: skip
        pc = full["per_clip"]
        s = pc["settings"]
        lines += [
            "",
            "## Per clip (81 frames at 2560x1408)",
            "",
            f"Baselines: TI2V-5B {s['baseline_5b_steps']} steps x {s['baseline_5b_guidance']} "
            f"(CFG); 14B {s['baseline_14b_steps']} steps x {s['baseline_14b_guidance']}. "
            f"SwiftI2V: Stage I {s['stage1_steps']} steps x {s['stage1_guidance']}, Stage II "
            f"{pc['segments']} segments x {s['stage2_steps']} steps x {s['stage2_guidance']} "
            f"(M={s['noisy_blocks']}, N={s['neighbours']}). Device-seconds on this backend use "
            f"{pc['flop_rate_for_predictions']['flops_per_second'] / 1e9:.1f} GFLOP/s "
            f"({pc['flop_rate_for_predictions']['source']}) unless measured.",
            "",
        ]
        rows = []
        for name, p in pc["pipelines"].items():
            r = pc["ratios_vs_swifti2v"].get(name)
            rows.append([
                name, f.fmt_flops(p["dit_flops"]), f.fmt_flops(p["vae_flops"]),
                f.fmt_flops(p["total_flops"]), f.fmt_seconds(p["total_seconds"]),
                "1" if r is None else f"{r['flops_ratio_with_vae']:.1f}",
                "1" if r is None else f"{r['flops_ratio_dit_only']:.1f}",
            ])  # fmt: skip
        lines.append(f.markdown_table(
            ["pipeline", "DiT FLOPs", "VAE FLOPs", "total FLOPs", "device-seconds here",
             "x SwiftI2V (with VAE)", "x SwiftI2V (DiT only)"], rows))  # fmt: skip
        h = pc["h800_check"]
        lines += [
            "",
            f"H800 check: SwiftI2V needs {h['swifti2v_total_flops']:.3g} FLOPs per clip, "
            f"{h['seconds_at_full_peak']:.0f} s at the 990 TFLOP/s bf16 peak; the paper's "
            f"~111 s implies {100 * h['utilisation_implied_by_111s']:.0f}% utilisation.",
        ]
        if "error" in full["vae"]:
            lines += ["", f"VAE terms missing: {full['vae']['error']}"]
        else:
            lines += [
                "",
                "VAE FLOPs are convolutions and matmuls counted on the jaxpr of each encode/"
                "decode chunk times the chunk count (the VAE scans over frames inside a chunk, "
                "and XLA's cost analysis counts a scan body once). Text encoding (umT5, ~1e13 "
                "FLOPs, the same for every pipeline) is left out.",
            ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if report.get("full_2k") else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    names, jax_t, torch_t = [], [], []
    for name, entry in report["preset"]["programs"].items():
        m = entry.get("measured")
        if m:
            names.append(name.replace(f"{report['preset']['name']}_", ""))
            jax_t.append(m["seconds_per_forward"]["median"])
            torch_t.append(m.get("pytorch_seconds_per_forward", {}).get("median", np.nan))
    if names:
        x = np.arange(len(names))
        ax.bar(x - 0.2, jax_t, 0.4, label="JAX")
        ax.bar(x + 0.2, torch_t, 0.4, label="PyTorch (diffusers)")
        ax.set_xticks(x, names)
        ax.set_ylabel("seconds per forward (median)")
        ax.legend()
        clip = report["preset"].get("per_clip")
        title = f"{report['preset']['name']} on {report['backend']['platform']}"
        if clip:
            title += (f"\ne2e/CSG per clip: measured {clip['measured_ratio']:.2f}, "
                      f"FLOPs {clip['predicted_ratio_from_xla_flops']:.2f}")  # fmt: skip
        ax.set_title(title)
    else:
        ax.text(0.5, 0.5, "not measured on this backend", ha="center", va="center")
        ax.set_axis_off()
    if panels == 2:
        ax = axes[0][1]
        pc = report["full_2k"]["per_clip"]
        names = list(pc["pipelines"])
        x = np.arange(len(names))
        dit = [pc["pipelines"][n]["dit_flops"] for n in names]
        vae = [pc["pipelines"][n]["vae_flops"] or np.nan for n in names]
        ax.bar(x - 0.2, dit, 0.4, label="DiT")
        ax.bar(x + 0.2, vae, 0.4, label="VAE")
        for i, name in enumerate(names):
            ratio = pc["ratios_vs_swifti2v"].get(name)
            if ratio:
                ax.text(i, max(dit[i], np.nan_to_num(vae[i])) * 1.3,
                        f"{ratio['flops_ratio_with_vae']:.0f}x SwiftI2V", ha="center")  # fmt: skip
        ax.set_yscale("log")
        ax.set_ylim(top=np.nanmax(dit + vae) * 10)  # room for the labels
        ax.set_xticks(x, [n.replace("_2k_end_to_end", "\nend-to-end 2K") for n in names])
        ax.set_ylabel("FLOPs per 81-frame 2560x1408 clip")
        ax.set_title("FLOPs per clip (lowered programs, no weights allocated)")
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="small")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_time"))
    parser.add_argument("--rounds", type=int, default=7, help="timed runs per forward")
    parser.add_argument("--attention", choices=("xla", "cudnn", "splash"), default=None,
                        help="attention backend for measured/compiled programs "
                        "(default: the platform's fastest)")  # fmt: skip
    parser.add_argument("--measure", action=argparse.BooleanOptionalAction, default=None,
                        help="run the preset's forwards (default: small presets everywhere, "
                        "the real ones only off-CPU)")  # fmt: skip
    parser.add_argument(
        "--torch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compare with diffusers (default: on for tiny/small)",
    )
    parser.add_argument("--skip-2k", action="store_true", help="skip the full-size analysis")
    parser.add_argument(
        "--compile-2k",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile the full-size programs for their memory plans",
    )
    parser.add_argument(
        "--assumed-mfu",
        type=float,
        default=0.4,
        help="utilisation used when nothing was measured in this run",
    )
    for field in dataclasses.fields(ClipSettings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if not 0.0 < args.assumed_mfu <= 1.0:
        parser.error("--assumed-mfu must be in (0, 1]")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        task = json.loads(args.worker)
        if task.get("task") != "memory":
            raise ValueError(f"unknown worker task {task!r}")
        common.emit_worker_result(memory_worker(task))
        return
    try:
        settings = ClipSettings(**{f.name: getattr(args, f.name)
                                   for f in dataclasses.fields(ClipSettings)})  # fmt: skip
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    report = build_report(args, settings)
    common.write_json(args.out / "results.json", report)
    (args.out / "results.md").write_text(markdown(report))
    plot(report, args.out / "gpu_time.png")
    print(markdown(report))
    print(f"wrote {args.out}/results.json, results.md, gpu_time.png")


if __name__ == "__main__":
    main()
