"""The GPU-time benchmark's report (benchmarks/gpu_time.py): results.md and gpu_time.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks import common


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
    plt = common.pyplot()

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
