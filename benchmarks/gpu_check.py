"""One-shot GPU check (run by gpu_check.sh; docs/gpu.md): the 2K programs against the official
PyTorch Wan2.2 on the same weights, and the whole `swifti2v_2k_ti2v` pipeline on one clip.

    python -m benchmarks.gpu_check OUT [--dry-run] [--rounds 3] [--formats bf16,int8]
        [--wan-code DIR] [--budget-seconds 480] [--no-torch]

Random weights at the real shapes (nothing is downloaded). Sections, in the order they run
(the end-to-end forwards last: they are skipped first when the budget runs short):
  device        name, driver, jax / jaxlib / torch versions;
  matmul_peak   the best measured bf16 matmul (what MFU is against) and the data-sheet peak;
  forwards      TI2V-5B Stage II CSG window (5 blocks of 88x160 latents, 17,600 tokens) and the
                whole 81-frame clip end to end (21 x 88 x 160, 73,920 tokens), per weight
                format: compile + first call, median seconds, MFU, process peak memory;
  pytorch       the same forwards through the official Wan2.2 WanModel (--wan-code, a clone of
                its repository) or diffusers' WanTransformer3DModel, on the JAX run's bf16
                weights: JAX / PyTorch time and the max output difference;
  pipeline      `swifti2v_2k_ti2v` on one 81-frame 2560x1408 clip (benchmarks/
                gpu_check_pipeline.py): seconds per stage, compile apart from run, compilations,
                peak device memory;
  per_clip      the pipeline's run seconds against the paper's 111 s (H800) and its DiT MFU.

--dry-run: every section on the current backend (CPU in CI) with the demo's architectures and
a tiny clip; the PyTorch section runs when torch is installed. The real mode differs only in
`dit_config` (TI2V-5B, bf16, cuDNN attention), the pipeline sizes (gpu_check_pipeline.prepare)
and the GPU requirement. Results: OUT/results.json and OUT/results.md, rewritten after every
section (a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

# PyTorch shares the GPU with JAX: JAX allocates on demand instead of taking 75% up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# On a CPU (the dry run) libgomp's spin-waiting collapses beside XLA's threads (a 3 ms forward
# took 500 ms in benchmarks/gpu_time_measure.py); read once, when torch loads it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import gpu_check_pipeline as pipeline_check  # noqa: E402
from benchmarks import gpu_check_torch as torch_check  # noqa: E402
from benchmarks.common import DiTProgram  # noqa: E402
from benchmarks.gpu_time_costs import H800_SECONDS  # noqa: E402
from swifti2v_jax.models import quant  # noqa: E402
from swifti2v_jax.models.dit import DiTConfig, abstract_params  # noqa: E402
from swifti2v_jax.presets import dit as dit_presets  # noqa: E402

FORMATS = ("bf16", "int8", "fp8")
DEFAULT_FORMATS = ("bf16", "int8")
SECTIONS = ("device", "matmul_peak", "forwards", "pytorch", "pipeline", "per_clip")
TITLES = {
    "device": "Device",
    "matmul_peak": "bf16 matmul peak",
    "forwards": "DiT forwards (JAX)",
    "pytorch": "JAX vs PyTorch (same weights)",
    "pipeline": "Pipeline: one clip",
    "per_clip": "Per clip vs the paper",
}
# Dense bf16 tensor-core peaks (FLOP/s) by device_kind substring, from the vendors' data sheets.
BF16_PEAKS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H800": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
}


def bf16_peak(device) -> tuple[float | None, str]:
    kind = getattr(device, "device_kind", "")
    for name, peak in BF16_PEAKS.items():  # longest names first within a family (dict order)
        if name in kind:
            return peak, f"data sheet ({name})"
    return None, f"not listed ({kind!r})"


def dit_config(dry_run: bool) -> DiTConfig:
    """The one DiT of the run (the forwards and both pipeline stages): TI2V-5B in bf16 with the
    platform's flash attention; the dry run: the demo Stage I architecture (fp32, XLA)."""
    if dry_run:
        return dit_presets.config(pipeline_check.DRY_RUN["dit"]).replace(attention_backend="xla")
    backend = common.default_attention_backend()
    return dit_presets.config("ti2v_5b").replace(
        param_dtype="bfloat16", compute_dtype="bfloat16", attention_backend=backend
    )


def forward_programs(run: pipeline_check.PipelineRun) -> dict[str, DiTProgram]:
    """The Stage II CSG window and the whole clip end to end, at the pipeline's own sizes."""
    plan, config = run.plan, run.config
    window = plan.windows[0].size
    return {
        "window": DiTProgram("window", run.specs.stage2, (window, *plan.latent_hw),
                             config.text_len, 1 + config.stage2.neighbours),
        "end_to_end": DiTProgram("end_to_end", run.specs.stage2,
                                 (plan.latent_frames, *plan.latent_hw), config.text_len, 1),
    }  # fmt: skip


def device_section() -> dict:
    info = common.backend_info()
    info.update(jaxlib_version=_version("jaxlib"), flax_version=_version("flax"))
    info.update(torch_check.torch_versions())
    info["driver"] = None
    if info["platform"] == "gpu":
        try:
            query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(query, capture_output=True, text=True,
                                            timeout=30).stdout.strip() or None  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def measure_jax(program: DiTProgram, params, inputs, rounds: int) -> tuple[dict, object]:
    """Compile + first call, then `rounds` timed calls; returns (row, output of the call)."""
    forward = common.forward_fn(program.model)
    start = time.perf_counter()
    output = common.block(forward(params, *inputs))
    first = time.perf_counter() - start
    timing = common.time_round_robin({"f": lambda: forward(params, *inputs)}, rounds, warmup=0)
    peak = common.device_peak_bytes()
    return dict(
        seconds=timing["f"]["median"],
        runs=timing["f"]["runs"],
        compile_and_first_call_seconds=first,
        weights_gb=sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)) / 1e9,
        process_peak_gb=None if peak is None else peak / 1e9,
    ), output


def measure_torch(twin, program: DiTProgram, inputs, rounds: int) -> tuple[dict, np.ndarray]:
    run = twin.forward(program, inputs)
    device = str(twin.device)

    def call():
        out = run()
        torch_check.synchronize(device)
        return out

    start = time.perf_counter()
    output = call()
    first = time.perf_counter() - start
    timing = common.time_round_robin({"f": call}, rounds, warmup=0)
    row = dict(seconds=timing["f"]["median"], runs=timing["f"]["runs"],
               first_call_seconds=first)  # fmt: skip
    return row, output.float().cpu().numpy()


def compare(ours: np.ndarray, reference: np.ndarray) -> dict:
    diff = float(np.max(np.abs(ours.astype(np.float32) - reference)))
    scale = float(np.max(np.abs(reference)))
    return dict(max_abs_diff=diff, max_abs_reference=scale, relative=diff / max(scale, 1e-30))


def fits(estimate_seconds: float, left_seconds: float) -> bool:
    """Whether a section estimated to take `estimate_seconds` fits in what is left."""
    return estimate_seconds <= left_seconds


class Check:
    """The run's state and report; `write()` after every section."""

    def __init__(self, out: Path, dry_run: bool, rounds: int, formats, budget: float,
                 wan_code: Path | None, with_torch: bool):  # fmt: skip
        self.out, self.dry_run, self.rounds, self.formats = out, dry_run, rounds, formats
        self.start, self.budget = time.perf_counter(), budget
        self.wan_code, self.with_torch = wan_code, with_torch
        self.report: dict = dict(dry_run=dry_run, budget_seconds=budget, notes=[])
        self.outputs: dict[str, np.ndarray] = {}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def note(self, text: str) -> None:
        self.report["notes"].append(text)
        print(f"gpu_check: {text}", file=sys.stderr)

    def write(self) -> None:
        self.report["elapsed_seconds"] = time.perf_counter() - self.start
        self.out.mkdir(parents=True, exist_ok=True)
        common.write_json(self.out / "results.json", self.report)
        (self.out / "results.md").write_text(markdown(self.report))

    def section(self, name: str, value) -> None:
        self.report[name] = value
        self.write()
        print(f"gpu_check: {name} done ({time.perf_counter() - self.start:.0f} s)",
              file=sys.stderr)  # fmt: skip

    # -- sections --------------------------------------------------------------------------

    def forwards(self, programs, params, names) -> None:
        rows = self.report.setdefault("forwards", {})
        for fmt in self.formats:
            weights = params if fmt == "bf16" else quant.quantize_params(params, fmt)
            for name in names:
                program = programs[name]
                inputs = [jax.device_put(x) for x in common.concrete_inputs(program)]
                row, output = measure_jax(program, weights, inputs, self.rounds)
                flops = common.analytic_dit_flops(program)
                peak = self.report["matmul_peak"]["measured"]
                row.update(program=name, weights=fmt, tokens=program.tokens, flops=flops,
                           mfu=flops / row["seconds"] / peak)  # fmt: skip
                rows[f"{name}/{fmt}"] = row
                if fmt == "bf16":
                    self.outputs[name] = np.asarray(output, np.float32)
                del output
            del weights
        self.section("forwards", rows)

    def pytorch(self, programs, params, names) -> None:
        section = self.report.setdefault("pytorch", {})
        if not self.with_torch:
            section["skipped"] = "--no-torch"
            return self.section("pytorch", section)
        try:  # the official WanModel is a diffusers ModelMixin too
            import diffusers  # noqa: F401
            import torch  # noqa: F401
        except ImportError as error:
            section["skipped"] = f"{error.name} is not installed"
            return self.section("pytorch", section)
        device = "cuda" if jax.devices()[0].platform == "gpu" else "cpu"
        twin = torch_check.TorchTwin(programs["window"].model, params, device, self.wan_code)
        section.update(implementation=twin.implementation, attention=twin.attention,
                       dtype=str(twin.dtype).replace("torch.", ""), device=device)  # fmt: skip
        rows = section.setdefault("forwards", {})
        for name in names:
            program = programs[name]
            row, output = measure_torch(twin, program, common.concrete_inputs(program),
                                        self.rounds)  # fmt: skip
            row.update(compare(self.outputs.pop(name), output))
            jax_row = self.report["forwards"][f"{name}/bf16"]
            row["jax_over_torch_time"] = jax_row["seconds"] / row["seconds"]
            rows[name] = row
        twin.release()
        self.section("pytorch", section)

    def pipeline(self, run, params) -> None:
        models = pipeline_check.resident_models(run, params)
        result = pipeline_check.run_clip(run, models)
        del models
        self.section("pipeline", result)
        run_seconds = result["stages"]["total"]["run_seconds"]
        peak = self.report["matmul_peak"]["measured"]
        self.section("per_clip", dict(
            run_seconds=run_seconds,
            with_compile_seconds=result["stages"]["total"]["seconds"],
            paper_seconds=H800_SECONDS,
            paper_device="H800",
            over_paper=run_seconds / H800_SECONDS,
            dit_flops=result["dit_flops"],
            dit_seconds_at_measured_peak=result["dit_flops"] / peak,
            dit_mfu=result["dit_flops"] / run_seconds / peak,
        ))  # fmt: skip

    def end_to_end_fits(self) -> bool:
        """The end-to-end forwards' estimate from the window's: FLOP ratio x (rounds + 2) per
        format in JAX and once more in PyTorch (compile and first call counted as a round)."""
        window = self.report["forwards"]["window/bf16"]
        ratio = self.programs["end_to_end"].tokens / self.programs["window"].tokens
        flop_ratio = ratio**2 if ratio > 1 else 1.0  # attention dominates at 73,920 tokens
        per_run = window["seconds"] * flop_ratio
        compile_s = window["compile_and_first_call_seconds"]
        runs = (self.rounds + 2) * (len(self.formats) + int(self.with_torch))
        estimate = per_run * runs + compile_s * len(self.formats)
        if fits(estimate, self.left()):
            return True
        self.note(f"end-to-end forwards skipped: about {estimate:.0f} s needed, "
                  f"{self.left():.0f} s left of the {self.budget:.0f} s budget")  # fmt: skip
        return False

    def run(self) -> dict:
        device = jax.devices()[0]
        if not self.dry_run and device.platform != "gpu":
            raise SystemExit(f"no GPU (jax sees {device.platform}); use --dry-run to test on CPU")
        self.section("device", device_section())
        sheet, sheet_source = bf16_peak(device)
        measured = common.matmul_peak(jax.numpy.bfloat16, (256,) if self.dry_run else None)
        peaks = dict(measured=measured["flops_per_second"], data_sheet=sheet,
                     data_sheet_source=sheet_source)  # fmt: skip
        self.section("matmul_peak", peaks)
        config = dit_config(self.dry_run)
        params = pipeline_check.random_tree(abstract_params(config))
        run = pipeline_check.prepare(config, self.dry_run)
        self.programs = forward_programs(run)
        self.report["attention"] = config.attention_backend
        self.forwards(self.programs, params, ["window"])
        self.pytorch(self.programs, params, ["window"])
        self.pipeline(run, params)
        if self.end_to_end_fits():
            self.forwards(self.programs, params, ["end_to_end"])
            self.pytorch(self.programs, params, ["end_to_end"])
        return self.report


# --------------------------------------------------------------------------------------------
# Report


def _f(value, fmt: str = "{:.3g}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown(report: dict) -> str:
    """The same sections in every mode; a section not reached yet says so."""
    lines = [f"# GPU check{' (dry run, tiny shapes)' if report['dry_run'] else ''}", ""]
    for name in SECTIONS:
        lines += [f"## {TITLES[name]}", ""]
        value = report.get(name)
        lines += _RENDER[name](value) if value is not None else ["not reached in this run"]
        lines.append("")
    if report["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)


def _device_md(d: dict) -> list[str]:
    return [
        f"{d['device_kind']} ({d['platform']}, {d['device_count']} device(s)); driver "
        f"{d['driver'] or '-'}; jax {d['jax_version']}, jaxlib {d['jaxlib_version']}, flax "
        f"{d['flax_version']}, torch {d['torch'] or '-'} (CUDA {d.get('torch_cuda') or '-'}); "
        f"Python {d['python']}."
    ]


def _peak_md(p: dict) -> list[str]:
    return [
        f"Measured {p['measured'] / 1e12:.1f} TFLOP/s (MFU below is against this); data sheet "
        f"{_f(p['data_sheet'] and p['data_sheet'] / 1e12, '{:.0f}')} TFLOP/s "
        f"({p['data_sheet_source']})."
    ]


def _forwards_md(rows: dict) -> list[str]:
    head = ["program", "weights", "tokens", "s / forward", "compile + first s", "MFU",
            "weights GB", "process peak GB"]  # fmt: skip
    body = [
        [r["program"], r["weights"], f"{r['tokens']:,}", f"{r['seconds']:.4f}",
         f"{r['compile_and_first_call_seconds']:.1f}", f"{r['mfu']:.1%}",
         f"{r['weights_gb']:.2f}", _f(r["process_peak_gb"], "{:.1f}")]
        for r in rows.values()
    ]  # fmt: skip
    return [common.markdown_table(head, body)]


def _pytorch_md(s: dict) -> list[str]:
    if "skipped" in s:
        return [f"skipped: {s['skipped']}"]
    head = ["program", "PyTorch s", "JAX bf16 / PyTorch time", "max abs diff",
            "max abs output", "relative"]  # fmt: skip
    body = [
        [name, f"{r['seconds']:.4f}", f"{r['jax_over_torch_time']:.2f}",
         f"{r['max_abs_diff']:.3g}", f"{r['max_abs_reference']:.3g}", f"{r['relative']:.2e}"]
        for name, r in s.get("forwards", {}).items()
    ]  # fmt: skip
    intro = f"{s['implementation']}, {s['dtype']} on {s['device']}, attention: {s['attention']}."
    return [intro, "", common.markdown_table(head, body)]


def _pipeline_md(p: dict) -> list[str]:
    head = ["stage", "seconds", "compile s", "run s"]
    body = [[name, f"{s['seconds']:.2f}", f"{s['compile_seconds']:.2f}", f"{s['run_seconds']:.2f}"]
            for name, s in p["stages"].items()]  # fmt: skip
    return [
        f"`{p['preset']}`, {p['frames']} frames at {p['width']}x{p['height']}, "
        f"{p['segments']} CSG segments of {p['stage2_tokens_per_forward']:,} tokens; "
        f"{p['compilations']} compilations (Stage II window program: "
        f"{p['stage2_compilations']}); peak memory {p['peak_memory_bytes'] / 1e9:.2f} GB "
        f"({p['peak_memory_source']}); DiT forwards {p['dit_forwards']}.",
        "",
        common.markdown_table(head, body),
    ]


def _per_clip_md(c: dict) -> list[str]:
    return [
        f"Run {c['run_seconds']:.1f} s per clip ({c['with_compile_seconds']:.1f} s with "
        f"compiling) vs the paper's {c['paper_seconds']:.0f} s on one {c['paper_device']}: "
        f"{c['over_paper']:.2f}x. DiT FLOPs {c['dit_flops']:.3g} = "
        f"{c['dit_seconds_at_measured_peak']:.1f} s at the measured peak; DiT MFU over the "
        f"whole run {c['dit_mfu']:.1%} (VAE and text encoder FLOPs not counted)."
    ]


_RENDER = {
    "device": _device_md,
    "matmul_peak": _peak_md,
    "forwards": _forwards_md,
    "pytorch": _pytorch_md,
    "pipeline": _pipeline_md,
    "per_clip": _per_clip_md,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="results folder")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, any backend")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default=",".join(DEFAULT_FORMATS))
    parser.add_argument(
        "--wan-code", type=Path, help="a clone of the official Wan2.2 repository (else diffusers)"
    )
    parser.add_argument("--budget-seconds", type=float, default=480.0)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch section")
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    bad = set(formats) - set(FORMATS)
    if bad or "bf16" not in formats:
        parser.error(f"--formats takes a comma list of {FORMATS} with bf16, got {args.formats!r}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    torch_check.check_official_code(args.wan_code)
    check = Check(args.out, args.dry_run, args.rounds, formats, args.budget_seconds,
                  args.wan_code, not args.no_torch)  # fmt: skip
    report = check.run()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m benchmarks.gpu_check")
