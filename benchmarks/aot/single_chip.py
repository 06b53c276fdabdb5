"""The swifti2v_2k_24gb programs compiled for ONE TPU chip (v5e 16 GB, v6e 32 GB), no accelerator.

    python -m benchmarks.aot.single_chip                       # every program, v5e-1 and v6e-1
    python -m benchmarks.aot.single_chip --programs stage1_expert --targets v5e-1
    python -m benchmarks.aot.single_chip --report              # results.md from results.json

The preset's device programs: the Stage I I2V-A14B expert forward (int8 weights streamed from
host memory layer by layer, models/layer_streaming.py), the Stage II 2K window forward (TI2V-5B,
int8, resident), and the Wan2.2 VAE programs of benchmarks/aot/programs.py at the preset's
tile sizes (the streaming decode step on one tile; the tiled encode's chunk scan over one
tile of the 81-frame clip; `vae_encode` is the untiled 2K encode step, for comparison).
umT5 runs on the host CPU in this preset (memory.text_encoder_on_host): no device program.
`stage1_expert_resident` shows the int8 expert without streaming (why the preset streams).
Results: benchmarks/results/aot_24gb/results.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.aot import programs, tpu
from configs import dit as dit_presets
from swifti2v_jax.models import dit, layer_streaming, quant, vae
from swifti2v_jax.presets import sample as sample_presets
from swifti2v_jax.presets import vae as vae_presets

DEFAULT_OUT = Path("benchmarks/results/aot_24gb")
# One chip: libtpu only builds topologies that divide its 2x2x1 host bounds, so a single chip
# is one device of a 2x2 slice (programs._one_chip builds its 1-device mesh).
TARGETS = {"v5e-1": "v5e-4", "v6e-1": "v6e-4"}
PRESET = "swifti2v_2k_24gb"
STAGE1_FRAMES, STAGE1_HW = 81, (352, 640)  # the preset's Stage I clip (2K / 4 per side)


def dit_forward(preset: str, latent_frames: int, latent_hw, weights: str, stream: bool, target):
    """One DiT forward (batch 1, 512 text tokens, splash) on one chip with `weights` format;
    stream=True keeps the stacked blocks in pinned_host memory."""
    config = dit.DiTConfig.from_dict(dit_presets.get_config(preset).to_dict()).replace(
        param_dtype="bfloat16", attention_backend="splash", stream_layers=stream
    )
    mesh = programs._one_chip(target)
    on_chip = NamedSharding(mesh, P())
    abstract = jax.eval_shape(
        lambda: quant.quantize_params(dit.init_params(config, jax.random.key(0)), weights)
    )
    if stream:
        params = layer_streaming.abstract(abstract, on_chip)
    else:
        params = jax.tree.map(lambda a: programs._struct(a.shape, a.dtype, on_chip), abstract)
    h, w = latent_hw
    args = (
        params,
        programs._struct((1, latent_frames, h, w, config.in_dim), jnp.bfloat16, on_chip),
        programs._struct((1, latent_frames), jnp.float32, on_chip),
        programs._struct((1, programs.TEXT_LEN, config.text_dim), jnp.bfloat16, on_chip),
        programs._struct((1, latent_frames), jnp.int32, on_chip),
    )

    def forward(p, latents, timesteps, context, positions):
        return dit.WanDiT(config).apply({"params": p}, latents, timesteps, context, positions)

    weight_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(abstract))
    tokens = latent_frames * (h // 2) * (w // 2)
    about = {
        "model": preset,
        "weights": weights,
        "streamed": stream,
        "tokens": tokens,
        "weights_gb": round(weight_bytes / 1e9, 2),
    }
    return jax.jit(forward), args, about


def stage1_expert(target: str, stream: bool = True):
    wan21 = vae_presets.config("wan21")
    latent_frames = vae.num_latent_frames(wan21, STAGE1_FRAMES)
    latent_hw = (STAGE1_HW[0] // 8, STAGE1_HW[1] // 8)  # Wan2.1 VAE, 8x
    return dit_forward("i2v_a14b", latent_frames, latent_hw, "int8", stream, target)


def stage2_window(target: str, stream: bool = False):
    return dit_forward(
        "ti2v_5b", programs.WINDOW_BLOCKS, programs.LATENT_2K, "int8", stream, target
    )


def vae_encode_tiled(target: str):
    """The preset's tiled 2K encode (memory.encode_tile_size), one tile's chunk scan."""
    memory = sample_presets.get_config(PRESET).memory
    return programs.vae_encode_tiled(target, memory.encode_tile_size, STAGE1_FRAMES)


def vae_decode_tiled(target: str):
    """The preset's streaming tiled decode step (memory.decode_tile_size), one tile. With
    memory.decode_offload_cache the other tiles' caches wait in host memory."""
    memory = sample_presets.get_config(PRESET).memory
    return programs.vae_decode(target, tile=memory.decode_tile_size)


PROGRAMS = {
    "stage1_expert": stage1_expert,
    "stage1_expert_resident": lambda target: stage1_expert(target, stream=False),
    "stage2_window": stage2_window,
    "vae_decode_tiled": vae_decode_tiled,
    "vae_encode_tiled": vae_encode_tiled,
    "vae_encode": programs.PROGRAMS["vae_encode"],
}


NOTES = """\
VAE rows at the preset's tiles: `vae_encode_tiled` is the chunk scan over one 64 x 64-latent
(1024 x 1024 pixel) tile of the 81-frame hybrid reference (vae.encode(tile_size=64): 6 tiles
at 2K; its arguments hold the tile's video, 1.0 GB, and encoder cache, 2.5 GB). The streaming
pipeline runs that scan's body, one chunk of one tile (vae.StreamingEncoder(tile_size=64),
the 6 caches in host memory), so this row bounds it; chunk 0 and the anchor are smaller.
`vae_decode_tiled` is the streaming decoder's step on one 44 x 44 tile; its 12 tiles' caches
(3.5 GB each) wait in host memory (memory.decode_offload_cache), one on the device at a time.
`vae_encode` (untiled, not in the preset) shows why the encode is tiled. Not in any single
program: the streaming pipeline interleaves the reference encode, the Stage II windows and
the decode, so the int8 TI2V-5B weights (5.23 GB) and the whole VAE (encoder 0.60 GB, decoder
2.22 GB) stay on the device. The decode step beside the rest: 9.78 + 5.23 + 0.60 = 15.6 GB on
v5e; the encode tile step: <= 8.72 - 1.0 (no tile video) + 5.23 + 2.22 = 15.2 GB; the window:
6.37 + 2.82 = 9.2 GB. Under a v5e chip's 16 GB, over the 15 GB budget (estimates: sums of
separately compiled programs and resident arrays)."""


def run_one(program: str, target: str) -> dict:
    """Compile + XLA's memory plan. XLA's `peak_memory_in_bytes` counts host-memory arguments
    too (streamed weights), so the device peak here is that minus the host bytes."""
    fn, args, about = PROGRAMS[program](TARGETS[target])
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    gb = lambda name: round(getattr(memory, name, 0) / 1e9, 3)
    host = gb("host_argument_size_in_bytes") + gb("host_temp_size_in_bytes")
    hbm = tpu.HBM_GB[tpu.chip_kind(TARGETS[target])]
    row = {
        "args_gb": gb("argument_size_in_bytes"),
        "temp_gb": gb("temp_size_in_bytes"),
        "output_gb": gb("output_size_in_bytes"),
        "host_args_gb": gb("host_argument_size_in_bytes"),
        "host_temp_gb": gb("host_temp_size_in_bytes"),
        "xla_peak_gb": gb("peak_memory_in_bytes"),
        "peak_gb": round(gb("peak_memory_in_bytes") - host, 3),
        "hbm_gb": hbm,
        "compile_seconds": round(seconds, 1),
    }
    row["fits"] = row["peak_gb"] <= hbm
    return {"program": program, "target": target, **about, **row}


def report(out: Path) -> str:
    data = json.loads((out / "results.json").read_text())["results"]
    by_program: dict[str, dict] = {}
    for row in data.values():
        by_program.setdefault(row["program"], {})[row["target"]] = row
    lines = [
        "# swifti2v_2k_24gb on one TPU chip (XLA's per-chip plan, compile-only libtpu)",
        "",
        "GB = 1e9 bytes. args = device-resident arguments; host = arguments in pinned_host "
        "memory (streamed layer kernels); peak = XLA's `peak_memory_in_bytes` minus the host "
        "bytes it also counts (device HBM). Budget: 15 GB on v5e (16 GB HBM).",
        "",
        "| program | weights | tokens | host | v5e args | v5e temp | v5e peak | v6e peak | "
        "<= 15 GB on v5e | compile s (v5e) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in PROGRAMS:
        rows = by_program.get(name)
        if not rows:
            continue
        v5e, v6e = rows.get("v5e-1", {}), rows.get("v6e-1", {})
        gb = lambda r, k: "-" if k not in r else f"{r[k]:.2f}"
        weights = v5e.get("weights") or v6e.get("weights") or "fp32 (VAE)"
        if v5e.get("streamed") or v6e.get("streamed"):
            weights += ", streamed"
        fits = "-" if "peak_gb" not in v5e else ("yes" if v5e["peak_gb"] <= 15 else "NO")
        seconds = "-" if "compile_seconds" not in v5e else f"{v5e['compile_seconds']:.0f}"
        error = v5e.get("error") or v6e.get("error")
        lines.append(
            f"| {name} | {weights} | {v5e.get('tokens', v6e.get('tokens', '-'))} | "
            f"{v5e.get('host_args_gb', 0.0):.2f} | {gb(v5e, 'args_gb')} | {gb(v5e, 'temp_gb')} | "
            f"**{gb(v5e, 'peak_gb')}** | "
            f"{gb(v6e, 'peak_gb')} | {fits} | {seconds} |"
            + (f" error: {error[:100]}" if error else "")
        )
    lines += ["", NOTES]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def merge(out: Path, row: dict) -> None:
    path = out / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {"results": {}}
    data["results"][f"{row['program']}@{row['target']}"] = row
    data["environment"] = {"jax": jax.__version__, "devices": "compile-only libtpu"}
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--programs", default=",".join(PROGRAMS), help=f"of {list(PROGRAMS)}")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="only write results.md")
    args = parser.parse_args(argv)
    names = args.programs.split(",")
    unknown = set(names) - set(PROGRAMS)
    if unknown:
        raise SystemExit(f"unknown programs {sorted(unknown)}; choose from {list(PROGRAMS)}")
    targets = args.targets.split(",")
    if set(targets) - set(TARGETS):
        raise SystemExit(f"targets are one chip of {list(TARGETS)}, got {targets}")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for name in names:
            for target in targets:
                start = time.perf_counter()
                try:
                    row = run_one(name, target)
                except Exception as error:  # recorded, the sweep goes on
                    traceback.print_exc()
                    row = {"program": name, "target": target, "error": repr(error)[:2000]}
                merge(args.out, row)
                print(json.dumps(row), f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m benchmarks.aot.single_chip")
