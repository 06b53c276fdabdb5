"""One-shot GPU check of the 2K programs in bf16, int8 and fp8 weights (run by gpu_check.sh).

    python -m benchmarks.gpu_check OUT [--dry-run] [--rounds 3] [--formats bf16,int8,fp8]

Random weights at the real shapes (nothing is downloaded). Per weight format:
  - window:      TI2V-5B Stage II CSG window, 5 blocks of 88x160 latents (17,600 tokens);
  - end_to_end:  TI2V-5B over the whole 81-frame 2K clip, 21 x 88 x 160 (73,920 tokens);
  - stage1 (bf16 and int8): I2V-A14B expert on the 640x352 clip, 21 x 44 x 80 (18,480 tokens).
Each forward: median seconds (round-robin after warm-up), device peak memory, model FLOP
utilisation = analytic matmul FLOPs / seconds / the GPU's dense bf16 peak (table below; the
measured best square bf16 matmul is reported beside it). Per clip: end-to-end 5B (50 steps x
CFG) over SwiftI2V (Stage I 4 steps + CSG segments x 8 steps x CFG), DiT time only, from the
measured times (benchmarks/gpu_time_costs.py ClipSettings). Attention: cudnn on GPU.

--dry-run: the same steps on the current backend with a tiny model and tiny grids (seconds on
a CPU), so CI proves the script end to end. Results: OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

from benchmarks import common
from benchmarks.common import DiTProgram
from benchmarks.gpu_time_costs import ClipSettings, latent_frames
from configs import dit as dit_presets
from swifti2v_jax.models import quant
from swifti2v_jax.models.dit import DiTConfig

FORMATS = ("bf16", "int8", "fp8")
# Dense bf16 tensor-core peaks (FLOP/s) by device_kind substring, from the vendors' data sheets.
BF16_PEAKS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "RTX 4090": 165e12,
    "A6000": 155e12,
}
LATENT_2K = (88, 160)
LATENT_STAGE1 = (44, 80)


def bf16_peak(device) -> tuple[float | None, str]:
    kind = getattr(device, "device_kind", "")
    for name, peak in BF16_PEAKS.items():  # longest names first within a family (dict order)
        if name in kind:
            return peak, f"data sheet ({name})"
    return None, f"unknown device {kind!r}"


def programs(dry_run: bool, with_stage1: bool) -> dict[str, DiTProgram]:
    settings = ClipSettings()
    frames = latent_frames()
    if dry_run:
        small = dict(compute_dtype="bfloat16", attention_backend="xla", num_layers=1)
        five_b = DiTConfig.from_dict(dit_presets.get_config("tiny").to_dict()).replace(**small)
        a14b = DiTConfig.from_dict(dit_presets.get_config("tiny_i2v").to_dict()).replace(**small)
        hw, hw1, text = (4, 4), (2, 4), 8
    else:
        five_b = _real("ti2v_5b")
        a14b = _real("i2v_a14b")
        hw, hw1, text = LATENT_2K, LATENT_STAGE1, 512
    out = {
        "window": DiTProgram(
            "window", five_b, (settings.window_blocks, *hw), text, 1 + settings.neighbours
        ),
        "end_to_end": DiTProgram("end_to_end", five_b, (frames, *hw), text),
    }
    if with_stage1:
        out["stage1"] = DiTProgram("stage1", a14b, (frames, *hw1), text)
    return out


def _real(preset: str) -> DiTConfig:
    backend = common.default_attention_backend()
    config = DiTConfig.from_dict(dit_presets.get_config(preset).to_dict())
    return config.replace(param_dtype="bfloat16", attention_backend=backend)


def device_params(config: DiTConfig, seed: int = 0):
    """Random weights made on the device in their own dtype (host numpy would take minutes
    for 14B): norm scales 1, everything else ~N(0, 1/fan_in), as common.random_params."""
    abstract = common.abstract_dit_params(config)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    keys = jax.random.split(jax.random.key(seed), len(flat))

    def make(path, leaf, key):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return jax.numpy.ones(leaf.shape, leaf.dtype)
        fan_in = leaf.shape[-2] if len(leaf.shape) >= 2 else 1
        return jax.random.normal(key, leaf.shape, leaf.dtype) * (max(fan_in, 1) ** -0.5)

    leaves = [make(path, leaf, key) for (path, leaf), key in zip(flat, keys)]
    return jax.tree.unflatten(treedef, leaves)


def measure(program: DiTProgram, params, rounds: int) -> dict:
    """Compile, warm up and time one forward with `params` (any weight format)."""
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    inputs = [jax.device_put(x) for x in common.concrete_inputs(program)]
    forward = common.forward_fn(program.model)
    start = time.perf_counter()
    common.block(forward(params, *inputs))
    first_call = time.perf_counter() - start
    timing = common.time_round_robin({"f": lambda: forward(params, *inputs)}, rounds, warmup=0)
    return dict(
        seconds=timing["f"]["median"],
        runs=timing["f"]["runs"],
        compile_and_first_call_seconds=first_call,
        weights_gb=weight_bytes / 1e9,
        # The process peak so far (cumulative over the run: JAX has no per-program reset).
        device_peak_gb=None if common.device_peak_bytes() is None
        else common.device_peak_bytes() / 1e9,
    )  # fmt: skip


def per_clip_ratio(seconds: dict[str, float], settings: ClipSettings, num_blocks: int) -> dict:
    """End-to-end 5B over SwiftI2V device-seconds per clip (DiT forwards only)."""
    segments = settings.segments(num_blocks)
    e2e = settings.baseline_5b_steps * settings.baseline_5b_guidance * seconds["end_to_end"]
    stage2 = segments * settings.stage2_steps * settings.stage2_guidance * seconds["window"]
    stage1 = None
    if "stage1" in seconds:
        stage1 = settings.stage1_steps * settings.stage1_guidance * seconds["stage1"]
    swift = stage2 + (stage1 or 0.0)
    return dict(
        end_to_end_seconds=e2e,
        stage1_seconds=stage1,
        stage2_seconds=stage2,
        segments=segments,
        ratio=e2e / swift,
        ratio_includes_stage1=stage1 is not None,
    )


def run(out: Path, dry_run: bool, rounds: int, formats, with_stage1: bool) -> dict:
    device = jax.devices()[0]
    if not dry_run and device.platform != "gpu":
        raise SystemExit(f"no GPU (jax sees {device.platform}); use --dry-run to test on CPU")
    peak, peak_source = bf16_peak(device)
    measured_peak = common.matmul_peak(jax.numpy.bfloat16, (256,) if dry_run else None)
    if peak is None:  # an unlisted GPU (or the dry run): the best measured bf16 matmul
        peak, peak_source = measured_peak["flops_per_second"], "measured bf16 matmul"
    progs = programs(dry_run, with_stage1)
    rows = {}
    # One set of random bf16 weights per model, quantized on the device per format; programs of
    # the same model (window, end_to_end) share them.
    by_model: dict[DiTConfig, list[str]] = {}
    for name, program in progs.items():
        by_model.setdefault(program.model, []).append(name)
    for model, names in by_model.items():
        bf16 = device_params(model)
        for fmt in formats:
            if names == ["stage1"] and fmt == "fp8":
                continue  # Stage I: bf16 and int8 keep the run under 8 minutes
            params = bf16 if fmt == "bf16" else quant.quantize_params(bf16, fmt)
            for name in names:
                program = progs[name]
                start = time.perf_counter()
                flops = common.analytic_dit_flops(program)
                row = dict(program=name, weights=fmt, tokens=program.tokens, flops=flops)
                row.update(measure(program, params, rounds))
                row["mfu"] = flops / row["seconds"] / peak
                rows[f"{name}/{fmt}"] = row
                print(f"{name} {fmt}: {row['seconds'] * 1e3:.1f} ms, MFU {row['mfu']:.1%} "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)  # fmt: skip
            del params
        del bf16
    settings = ClipSettings()
    num_blocks = latent_frames()
    clips = {}
    for fmt in formats:
        seconds = {p: rows[f"{p}/{fmt}"]["seconds"] for p in progs if f"{p}/{fmt}" in rows}
        if "stage1" not in seconds and "stage1/bf16" in rows:
            seconds["stage1"] = rows["stage1/bf16"]["seconds"]
        clips[fmt] = per_clip_ratio(seconds, settings, num_blocks)
    report = dict(
        dry_run=dry_run,
        backend=common.backend_info(),
        bf16_peak_flops=peak,
        bf16_peak_source=peak_source,
        measured_bf16_matmul_flops=measured_peak["flops_per_second"],
        attention=next(iter(progs.values())).model.attention_backend,
        forwards=rows,
        per_clip=clips,
    )
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "results.json", report)
    (out / "results.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    head = [
        "program",
        "weights",
        "tokens",
        "ms / forward",
        "MFU",
        "weights GB",
        "process peak GB so far",
    ]
    rows = [
        [r["program"], r["weights"], f"{r['tokens']:,}", f"{r['seconds'] * 1e3:.1f}",
         f"{r['mfu']:.1%}", f"{r['weights_gb']:.2f}",
         "-" if r["device_peak_gb"] is None else f"{r['device_peak_gb']:.1f}"]
        for r in report["forwards"].values()
    ]  # fmt: skip
    clip_rows = [
        [fmt, f"{c['end_to_end_seconds']:.1f}", "-" if c["stage1_seconds"] is None
         else f"{c['stage1_seconds']:.1f}", f"{c['stage2_seconds']:.1f}", f"{c['ratio']:.2f}"]
        for fmt, c in report["per_clip"].items()
    ]  # fmt: skip
    backend = report["backend"]
    return "\n".join([
        f"# GPU check{' (dry run, tiny shapes)' if report['dry_run'] else ''}",
        "",
        f"Device: {backend}. bf16 peak {report['bf16_peak_flops'] / 1e12:.1f} TFLOP/s "
        f"({report['bf16_peak_source']}); best measured bf16 matmul "
        f"{report['measured_bf16_matmul_flops'] / 1e12:.1f} TFLOP/s. Attention: "
        f"{report['attention']}.",
        "",
        common.markdown_table(head, rows),
        "",
        "Per clip, DiT device-seconds (stage1 in bf16 when the format did not run it):",
        "",
        common.markdown_table(
            ["weights", "5B end-to-end s", "Stage I s", "Stage II s", "end-to-end / SwiftI2V"],
            clip_rows,
        ),
        "",
    ])  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="results folder")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, any backend")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--no-stage1", action="store_true", help="skip the A14B Stage I forward")
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    bad = set(formats) - set(FORMATS)
    if bad or not formats:
        parser.error(f"--formats takes a comma list of {FORMATS}, got {args.formats!r}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    report = run(args.out, args.dry_run, args.rounds, formats, not args.no_stage1)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m benchmarks.gpu_check")
