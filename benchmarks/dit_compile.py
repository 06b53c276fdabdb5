"""Lower and compile a full-size DiT forward from abstract shapes (no weights allocated).

    python -m benchmarks.dit_compile --preset ti2v_5b --out benchmarks/results/dit_compile

Records lowering/compile seconds with and without scan-over-layers and XLA's memory and cost
analysis of the compiled program, for one 704x1280 latent frame (880 tokens) by default.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from swifti2v_jax.models.dit import DiTConfig, WanDiT, abstract_params
from swifti2v_jax.presets import dit as dit_configs


def lower_and_compile(config: DiTConfig, frames: int, height: int, width: int, text_len: int = 512):
    """(seconds to lower, seconds to compile, compiled) for one forward at the given pixel size."""
    params = abstract_params(config)
    latents = jax.ShapeDtypeStruct(
        (1, frames, height // 16, width // 16, config.in_dim), jnp.float32
    )
    timesteps = jax.ShapeDtypeStruct((1, frames), jnp.float32)
    context = jax.ShapeDtypeStruct((1, text_len, config.text_dim), jnp.float32)

    def forward(p, x, t, c):
        return WanDiT(config).apply({"params": p}, x, t, c)

    start = time.perf_counter()
    lowered = jax.jit(forward).lower(params, latents, timesteps, context)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at, compiled


def _memory(compiled) -> dict:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
    return {f: int(getattr(analysis, f)) for f in fields if hasattr(analysis, f)}


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return float(cost["flops"]) if cost and "flops" in cost else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="ti2v_5b")
    parser.add_argument("--frames", type=int, default=1, help="latent frames")
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dit_compile"))
    args = parser.parse_args(argv)
    base = DiTConfig.from_dict(dit_configs.get(args.preset)).replace(param_dtype="bfloat16")
    runs = []
    for scan in (True, False):
        config = base.replace(scan_layers=scan)
        lower_s, compile_s, compiled = lower_and_compile(
            config, args.frames, args.height, args.width
        )
        runs.append(
            dict(
                scan_layers=scan,
                lower_seconds=round(lower_s, 2),
                compile_seconds=round(compile_s, 2),
                memory=_memory(compiled),
                flops=_flops(compiled),
            )
        )
        print(f"scan_layers={scan}: lower {lower_s:.1f}s, compile {compile_s:.1f}s")
    tokens = args.frames * (args.height // 32) * (args.width // 32)
    result = dict(
        preset=args.preset,
        latent_frames=args.frames,
        pixels=[args.height, args.width],
        tokens=tokens,
        backend=jax.default_backend(),
        machine=platform.processor() or platform.machine(),
        jax=jax.__version__,
        runs=runs,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m benchmarks.dit_compile")
