"""CSG vs end-to-end: time and peak memory as the clip grows (issue 5's last acceptance point).

    python -m benchmarks.csg_scaling --out benchmarks/results/csg_scaling

A small Stage II-shaped DiT on the current backend (CPU here) samples clips of 5, 9, 17 and
33 latent frames twice: with CSG (M=3 noisy blocks, N=1 neighbour, one window program shared
by every segment and every clip length) and end-to-end (one window over the whole clip).

Time: whole-clip `csg.generate` calls, timed round-robin over all configurations (median of
--rounds after a warm-up), so that load from other processes hits every configuration alike.

Peak memory, reported two ways per configuration, each in a FRESH worker process:
- XLA's memory plan of the compiled window program (`compiled.memory_analysis()`:
  arguments + outputs + temporaries). It is what the program itself needs and does not depend
  on the allocator, the Python runtime or compilation; for CSG it is the same program at every
  clip length, so it is exactly flat by construction, which is the point of CSG.
- The worker's peak resident set size (VmHWM; see common.peak_rss_bytes for why not
  ru_maxrss). It includes the Python/JAX runtime and XLA compilation (a few hundred MB on CPU),
  so it is also given above a baseline worker that builds the same inputs but never compiles
  or runs the sampler.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.common import DiTProgram
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.sampling import solvers
from swifti2v_jax.sampling import stage2 as csg

FRAMES = (5, 9, 17, 33)
MODES = ("csg", "end_to_end")


@dataclasses.dataclass(frozen=True)
class Setup:
    """The benchmark's model and sampler. 64 tokens per latent frame (16x16 latents)."""

    dim: int = 128
    heads: int = 2
    layers: int = 2
    latent_channels: int = 16
    latent_hw: tuple[int, int] = (16, 16)
    text_len: int = 16
    steps: int = 4
    noisy_blocks: int = 3
    neighbours: int = 1

    def model(self) -> DiTConfig:
        return DiTConfig(
            dim=self.dim, ffn_dim=4 * self.dim, num_heads=self.heads, num_layers=self.layers,
            in_dim=2 * self.latent_channels, out_dim=self.latent_channels, text_dim=64,
            freq_dim=64, compute_dtype="float32",
        )  # fmt: skip

    def csg_config(self, mode: str) -> csg.Stage2SamplerConfig:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return csg.Stage2SamplerConfig(
            noisy_blocks=self.noisy_blocks, neighbours=self.neighbours, conditioning="concat",
            end_to_end=mode == "end_to_end", solver="euler", schedule="euler",
            steps=self.steps, shift=5.0, guide_scale=1.0,
        )  # fmt: skip

    def window_blocks(self, frames: int, mode: str) -> int:
        return self.csg_config(mode).plan(frames)[0].size

    def segments(self, frames: int, mode: str) -> int:
        return len(self.csg_config(mode).plan(frames))


def clip_inputs(setup: Setup, frames: int, seed: int = 0):
    """z_ref, anchor, context for one clip (numpy; the anchor is z_ref's first block)."""
    rng = np.random.default_rng(seed)
    h, w = setup.latent_hw
    z_ref = rng.standard_normal((1, frames, h, w, setup.latent_channels), np.float32)
    context = rng.standard_normal((1, setup.text_len, 64), np.float32)
    return dict(z_ref=z_ref, anchor=z_ref[:, :1], context=context)


def window_memory_analysis(denoiser: csg.WindowDenoiser, setup: Setup, params, inputs, mode):
    """XLA memory plan of the exact window program `generate` runs for this configuration."""
    config = denoiser.config
    frames = inputs["z_ref"].shape[1]
    window = config.plan(frames)[0]
    blocks, is_noisy = window.as_arrays()
    sigmas, timesteps = solvers.as_schedule_arrays(config.sampling_schedule)
    latents = inputs["z_ref"][:, blocks]
    context = inputs["context"]
    # WindowDenoiser exposes no lower(); its jitted function is the program generate() calls.
    lowered = denoiser._jitted.lower(
        params, latents, latents, is_noisy, blocks, context, np.zeros_like(context), sigmas,
        timesteps,
    )  # fmt: skip
    return common.memory_of(lowered.compile())


def worker(task: dict) -> dict:
    """Fresh process: one configuration's peak memory (or the baseline without sampling)."""
    setup = Setup(**{k: tuple(v) if isinstance(v, list) else v for k, v in task["setup"].items()})
    frames, mode = task["frames"], task["mode"]
    model = setup.model()
    params = common.block(common.random_params(model))
    inputs = {k: jnp.asarray(v) for k, v in clip_inputs(setup, frames).items()}
    common.block(inputs)
    result = dict(frames=frames, mode=mode, rss_before_sampling=common.peak_rss_bytes())
    if mode == "baseline":
        result["peak_rss_bytes"] = common.peak_rss_bytes()
        return result
    config = setup.csg_config(mode)
    denoiser = csg.WindowDenoiser(model, config)
    out = csg.generate(denoiser, params, **inputs, key=jax.random.key(0))
    common.block(out)
    result["peak_rss_bytes"] = common.peak_rss_bytes()  # before the extra compile below
    result["finite"] = bool(np.isfinite(np.asarray(out)).all())
    result["compilations"] = denoiser.traces
    result["memory_analysis"] = window_memory_analysis(denoiser, setup, params, inputs, mode)
    return result


def time_all(setup: Setup, rounds: int) -> dict:
    """Round-robin timing of whole-clip sampling for every (mode, frames)."""
    model = setup.model()
    params = common.block(jax.device_put(common.random_params(model)))
    # One CSG denoiser for every clip length: its window program compiles once in total.
    denoisers = {"csg": csg.WindowDenoiser(model, setup.csg_config("csg"))}
    fns = {}
    for mode in MODES:
        for frames in FRAMES:
            inputs = {k: jnp.asarray(v) for k, v in clip_inputs(setup, frames).items()}
            if mode == "end_to_end":  # a new window size per clip length: its own program
                denoiser = csg.WindowDenoiser(model, setup.csg_config(mode))
                denoisers[f"end_to_end_{frames}"] = denoiser
            else:
                denoiser = denoisers["csg"]
            fns[f"{mode}_{frames}"] = lambda i=inputs, d=denoiser: csg.generate(
                d, params, **i, key=jax.random.key(0)
            )
    timings = common.time_round_robin(fns, rounds=rounds, warmup=1)
    compilations = {name: d.traces for name, d in denoisers.items()}
    return dict(timings=timings, compilations=compilations)


def _fit_line(x, y) -> dict | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.ptp(x) == 0:  # e.g. end-to-end: always one segment
        return None
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    r2 = 1.0 - np.sum(residual**2) / np.sum((y - y.mean()) ** 2)
    return dict(slope=float(slope), intercept=float(intercept), r2=float(r2))


def _growth_exponent(x, y) -> float:
    """Slope of log y against log x between the shortest and the longest clip."""
    return float(np.log(y[-1] / y[0]) / np.log(x[-1] / x[0]))


def summarize(setup: Setup, timing: dict, memory: dict, flops: dict) -> dict:
    """Per-mode series and the ratios the issue asks for."""
    baseline = memory["baseline"]["peak_rss_bytes"]
    series = {}
    for mode in MODES:
        rows = []
        for frames in FRAMES:
            m = memory[f"{mode}_{frames}"]
            t = timing["timings"][f"{mode}_{frames}"]
            segs = setup.segments(frames, mode)
            window = setup.window_blocks(frames, mode)
            rows.append(dict(
                frames=frames, segments=segs, window_blocks=window,
                tokens_per_forward=window * (setup.latent_hw[0] // 2) * (setup.latent_hw[1] // 2),
                seconds_per_clip=t["median"], seconds_runs=t["runs"],
                seconds_per_segment=t["median"] / segs,
                xla_peak_bytes=m["memory_analysis"]["peak"],
                xla_temp_bytes=m["memory_analysis"]["temp"],
                peak_rss_bytes=m["peak_rss_bytes"],
                peak_rss_above_baseline_bytes=m["peak_rss_bytes"] - baseline,
                flops_per_clip=flops[f"{mode}_{frames}"] * segs * setup.steps,
                compilations_in_worker=m["compilations"], finite=m["finite"],
            ))  # fmt: skip
        series[mode] = rows

    def col(mode, key):
        return np.array([r[key] for r in series[mode]], float)

    frames = np.array(FRAMES, float)
    ratios = {}
    for mode in MODES:
        ratios[mode] = dict(
            xla_peak_largest_over_smallest=col(mode, "xla_peak_bytes").max()
            / col(mode, "xla_peak_bytes").min(),
            rss_peak_largest_over_smallest=col(mode, "peak_rss_bytes").max()
            / col(mode, "peak_rss_bytes").min(),
            rss_above_baseline_largest_over_smallest=col(mode, "peak_rss_above_baseline_bytes")
            .max() / col(mode, "peak_rss_above_baseline_bytes").min(),
            time_longest_over_shortest=col(mode, "seconds_per_clip")[-1]
            / col(mode, "seconds_per_clip")[0],
            time_growth_exponent=_growth_exponent(frames, col(mode, "seconds_per_clip")),
            xla_peak_growth_exponent=_growth_exponent(frames, col(mode, "xla_peak_bytes")),
            time_vs_frames_linear_fit=_fit_line(frames, col(mode, "seconds_per_clip")),
            seconds_per_segment_max_over_min=col(mode, "seconds_per_segment").max()
            / col(mode, "seconds_per_segment").min(),
            # slope = cost of one segment, intercept = per-clip overhead of the Python driver
            time_vs_segments_linear_fit=_fit_line(
                col(mode, "segments"), col(mode, "seconds_per_clip")
            ),
            flops_growth_exponent=_growth_exponent(frames, col(mode, "flops_per_clip")),
        )  # fmt: skip
    c, e = ratios["csg"], ratios["end_to_end"]
    checks = dict(
        csg_memory_flat_xla=c["xla_peak_largest_over_smallest"] <= 1.15,
        csg_memory_flat_rss=c["rss_peak_largest_over_smallest"] <= 1.15,
        csg_time_linear_in_frames=c["time_vs_frames_linear_fit"]["r2"] >= 0.98,
        end_to_end_memory_grows_faster=e["xla_peak_largest_over_smallest"]
        > c["xla_peak_largest_over_smallest"]
        and e["rss_peak_largest_over_smallest"] > c["rss_peak_largest_over_smallest"],
        end_to_end_time_grows_faster=e["time_growth_exponent"] > c["time_growth_exponent"],
        csg_program_compiled_once_for_all_lengths=timing["compilations"]["csg"] == 1,
    )  # fmt: skip
    return dict(series=series, ratios=ratios, checks=checks, rss_baseline_bytes=baseline)


def markdown(report: dict) -> str:
    f = common
    s = report["setup"]
    lines = [
        "# CSG vs end-to-end scaling",
        "",
        f"Command: `{report['command']}`  ",
        f"Backend: {report['backend']['platform']} ({report['backend']['cpu_count']} cores), "
        f"jax {report['backend']['jax_version']}. DiT dim {s['dim']}, {s['layers']} layers, "
        f"{s['heads']} heads, {s['latent_hw'][0]}x{s['latent_hw'][1]} latents "
        f"({s['latent_hw'][0] * s['latent_hw'][1] // 4} tokens per latent frame), "
        f"{s['steps']} Euler steps, CSG M={s['noisy_blocks']}, N={s['neighbours']}. "
        f"Times: median of {report['rounds']} round-robin runs of a whole clip.",
        "",
    ]
    rows = []
    for mode in MODES:
        for r in report["summary"]["series"][mode]:
            rows.append([
                mode, r["frames"], r["segments"], f"{r['tokens_per_forward']:,}",
                f.fmt_seconds(r["seconds_per_clip"]), f.fmt_seconds(r["seconds_per_segment"]),
                f.fmt_bytes(r["xla_peak_bytes"]), f.fmt_bytes(r["peak_rss_bytes"]),
                f.fmt_bytes(r["peak_rss_above_baseline_bytes"]),
            ])  # fmt: skip
    lines.append(f.markdown_table(
        ["mode", "latent frames", "segments", "tokens/forward", "time per clip",
         "time per segment", "XLA memory plan", "process peak RSS", "RSS above baseline"],
        rows))  # fmt: skip
    c = report["summary"]["ratios"]["csg"]
    e = report["summary"]["ratios"]["end_to_end"]
    lines += [
        "",
        f"Baseline worker (same inputs, no sampling): "
        f"{f.fmt_bytes(report['summary']['rss_baseline_bytes'])} peak RSS.",
        "",
        f.markdown_table(
            ["ratio (33 vs 5 latent frames unless noted)", "CSG", "end-to-end"],
            [
                [
                    "XLA memory plan, largest/smallest",
                    f"{c['xla_peak_largest_over_smallest']:.3f}",
                    f"{e['xla_peak_largest_over_smallest']:.2f}",
                ],
                [
                    "process peak RSS, largest/smallest",
                    f"{c['rss_peak_largest_over_smallest']:.3f}",
                    f"{e['rss_peak_largest_over_smallest']:.2f}",
                ],
                [
                    "RSS above baseline, largest/smallest",
                    f"{c['rss_above_baseline_largest_over_smallest']:.2f}",
                    f"{e['rss_above_baseline_largest_over_smallest']:.2f}",
                ],
                [
                    "time per clip, longest/shortest",
                    f"{c['time_longest_over_shortest']:.2f}",
                    f"{e['time_longest_over_shortest']:.2f}",
                ],
                [
                    "time growth exponent (log-log)",
                    f"{c['time_growth_exponent']:.2f}",
                    f"{e['time_growth_exponent']:.2f}",
                ],
                [
                    "FLOPs growth exponent (log-log)",
                    f"{c['flops_growth_exponent']:.2f}",
                    f"{e['flops_growth_exponent']:.2f}",
                ],
                [
                    "R^2 of a straight line through time vs frames",
                    f"{c['time_vs_frames_linear_fit']['r2']:.4f}",
                    f"{e['time_vs_frames_linear_fit']['r2']:.4f}",
                ],
                [
                    "time = a + b x segments: b, a, R^2",
                    f"{f.fmt_seconds(c['time_vs_segments_linear_fit']['slope'])}, "
                    f"{f.fmt_seconds(c['time_vs_segments_linear_fit']['intercept'])}, "
                    f"{c['time_vs_segments_linear_fit']['r2']:.4f}",
                    "-",
                ],
            ],
        ),  # fmt: skip
        "",
        "Checks: " + ", ".join(f"{k} = {v}" for k, v in report["summary"]["checks"].items()),
        "",
        "The XLA memory plan is what the compiled window program needs; for CSG it is one and "
        "the same program at every clip length (compiled once for all four lengths in the "
        "timing process). Process RSS adds the Python/JAX runtime and XLA compilation, which "
        "dominate at this model size; the end-to-end growth shows in it all the same.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    plt = common.pyplot()

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, color in zip(MODES, ("C0", "C3")):
        rows = report["summary"]["series"][mode]
        x = [r["frames"] for r in rows]
        ax_t.plot(x, [r["seconds_per_clip"] for r in rows], "o-", color=color, label=mode)
        mib = lambda key, rows=rows: [r[key] / 2**20 for r in rows]
        ax_m.plot(x, mib("xla_peak_bytes"), "o-", color=color,
                  label=f"{mode}: XLA memory plan")  # fmt: skip
        ax_m.plot(x, mib("peak_rss_above_baseline_bytes"), "s--", color=color,
                  label=f"{mode}: process RSS above baseline")  # fmt: skip
    ax_t.set_xlabel("latent frames")
    ax_t.set_ylabel("seconds per clip (median)")
    ax_t.set_title("sampling time")
    ax_m.set_xlabel("latent frames")
    ax_m.set_ylabel("MiB")
    ax_m.set_title("peak memory")
    for ax in (ax_t, ax_m):
        ax.set_xticks(FRAMES)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"CSG (M={report['setup']['noisy_blocks']}, N={report['setup']['neighbours']})"
                 f" vs end-to-end, {report['backend']['platform']}")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def forward_flops(setup: Setup) -> dict[str, float]:
    """Loop-corrected XLA FLOPs of one forward of each configuration's window."""
    model = setup.model()
    out = {}
    for mode in MODES:
        for frames in FRAMES:
            grid = (setup.window_blocks(frames, mode), *setup.latent_hw)
            program = DiTProgram(f"{mode}_{frames}", model, grid, setup.text_len)
            out[f"{mode}_{frames}"] = common.dit_flops(program)["flops"]
    return out


def run(setup: Setup, rounds: int) -> dict:
    task = lambda frames, mode: dict(setup=dataclasses.asdict(setup), frames=frames, mode=mode)
    memory = {"baseline": common.run_worker("benchmarks.csg_scaling", task(FRAMES[-1], "baseline"))}
    for mode in MODES:
        for frames in FRAMES:
            print(f"memory worker: {mode}, {frames} latent frames")
            memory[f"{mode}_{frames}"] = common.run_worker(
                "benchmarks.csg_scaling", task(frames, mode)
            )
    print("FLOPs ...")
    flops = forward_flops(setup)
    print(f"timing, {rounds} rounds ...")
    timing = time_all(setup, rounds)
    return dict(
        benchmark="csg_scaling",
        command=" ".join(["python -m benchmarks.csg_scaling"] + sys.argv[1:]),
        backend=common.backend_info(),
        setup=dataclasses.asdict(setup),
        rounds=rounds,
        compilations_in_timing_process=timing["compilations"],
        forward_flops=flops,
        workers=memory,
        summary=summarize(setup, timing, memory, flops),
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/csg_scaling"))
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per configuration")
    parser.add_argument("--steps", type=int, default=Setup.steps)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        common.emit_worker_result(worker(json.loads(args.worker)))
        return
    setup = Setup(steps=args.steps)
    args.out.mkdir(parents=True, exist_ok=True)  # before the work: fail early
    report = run(setup, args.rounds)
    common.write_outputs(args.out, report, markdown, plot, "csg_scaling.png")


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m benchmarks.csg_scaling")
