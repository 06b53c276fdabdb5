"""What the GPU-time benchmark measures on the current backend (benchmarks/gpu_time.py): the
presets' DiT forwards, their memory in a fresh process, and the same forwards in PyTorch."""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import numpy as np

from benchmarks import common
from benchmarks.common import DiTProgram
from benchmarks.gpu_time_costs import (
    PRESETS,
    ClipSettings,
    _real,
    full_2k_programs,
    latent_frames,
)
from conversion import common as conversion_common
from swifti2v_jax.models.dit import DiTConfig, init_params

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
