"""What the tile-major VAE options change in the output, on the tiny test VAE and the demo VAE.

    python -m benchmarks.vae_tile_major --out benchmarks/results/vae_tile_major

A latent clip decoded frame-major (every tile's cache alive, the reference) and tile-major in
chunks (models/vae_streaming.py) with the carried caches in float32 (expected: bitwise
equal) and bfloat16 (rounded): max and mean absolute pixel error ([-1, 1] range), overall and
on the frames right after a chunk boundary; and the encoder the same way (tile-major push of
the hybrid reference). Also the spatial tiling's own error against the untiled decode (the
seams tile-major inherits unchanged).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax import checkpoints
from swifti2v_jax.demo import BUNDLED_WEIGHTS
from swifti2v_jax.models import vae
from swifti2v_jax.presets import vae as vae_configs


def models():
    tiny = vae.as_config(vae_configs.get("tiny_wan22"))
    yield "tiny wan22 (random init)", tiny, vae.init_params(tiny, jax.random.key(0)), (6, 8), 4, 1
    meta, params = checkpoints.load(BUNDLED_WEIGHTS / "vae", "vae")
    config = vae.as_config(checkpoints.read_metadata(BUNDLED_WEIGHTS / "vae")["config"])
    yield "demo VAE (trained)", config, params, (16, 32), 12, 4


def decode_frame_major(params, config, latents, tile, overlap):
    decoder = vae.StreamingDecoder(params, config, tile_size=tile, tile_overlap=overlap)
    return np.concatenate([np.asarray(decoder.push(latents[:, i : i + 1]))
                           for i in range(latents.shape[1])], axis=1)  # fmt: skip


def decode_tile_major(params, config, latents, tile, overlap, chunk, dtype):
    decoder = vae.StreamingDecoder(
        params, config, tile_size=tile, tile_overlap=overlap, chunk_latents=chunk,
        total_latents=latents.shape[1], cache_dtype=dtype,
    )  # fmt: skip
    return np.asarray(decoder.push(latents))


def errors(out, ref, boundary_frames):
    diff = np.abs(out - ref)
    after = diff[:, boundary_frames] if boundary_frames else diff[:, :0]
    return dict(
        bitwise_equal=bool((out == ref).all()), max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        max_abs_after_boundary=float(after.max()) if after.size else 0.0,
    )  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vae_tile_major"))
    parser.add_argument("--latents", type=int, default=9)
    parser.add_argument("--chunk", type=int, default=4)
    args = parser.parse_args(argv)
    results = {}
    for name, config, params, latent_hw, tile, overlap in models():
        # smooth latents of the right scale: a decoded-then-encoded smooth video
        s = vae.spatial_factor(config)
        t = vae.temporal_factor(config)
        frames = 1 + t * (args.latents - 1)
        low = jax.random.uniform(jax.random.key(1), (1, frames, latent_hw[0], latent_hw[1], 3))
        video = jax.image.resize(2 * low - 1, (1, frames, latent_hw[0] * s, latent_hw[1] * s, 3),
                                 "bicubic")  # fmt: skip
        latents = vae.encode(params, config, jnp.clip(video, -1, 1))
        ref = decode_frame_major(params, config, latents, tile, overlap)
        untiled = np.asarray(vae.decode(params, config, latents))
        first = [1 + t * (k - 1) for k in range(args.chunk, args.latents, args.chunk)]
        boundary = [f + j for f in first for j in range(t)]
        row = {"tiling vs untiled": errors(ref, untiled, [])}
        for dtype in ("float32", "bfloat16"):
            out = decode_tile_major(params, config, latents, tile, overlap, args.chunk, dtype)
            row[f"decode tile-major, {dtype} caches"] = errors(out, ref, boundary)
        results[name] = row
        print(name, json.dumps(row, indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        "# Tile-major VAE: what changes in the output (`python -m benchmarks.vae_tile_major`)",
        "", f"{args.latents} latent frames, tile-major chunks of {args.chunk}; pixels in [-1, 1]; "
        "reference = the frame-major tiled streaming decode.", "",
        "| VAE | comparison | bitwise | max abs | mean abs | max abs after a chunk boundary |",
        "|---|---|---|---:|---:|---:|",
    ]  # fmt: skip
    for name, row in results.items():
        for what, e in row.items():
            lines.append(
                f"| {name} | {what} | {'yes' if e['bitwise_equal'] else 'no'} | "
                f"{e['max_abs']:.3g} | {e['mean_abs']:.3g} | {e['max_abs_after_boundary']:.3g} |"
            )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m benchmarks.vae_tile_major")
