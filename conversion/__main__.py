"""python -m conversion --source DIR --output DIR [--dtype bf16|fp32] [--only dit,vae,t5]
    [--quantize int8|fp8]

Converts every component found in a Wan2.2 checkpoint directory (original release layout or
diffusers layout, detected automatically) into swifti2v-jax model directories:

    OUTPUT/dit/  (TI2V-5B)   or  OUTPUT/high_noise/, OUTPUT/low_noise/  (A14B experts)
    OUTPUT/vae/  OUTPUT/t5/  OUTPUT/tokenizer/

--quantize stores the DiT blocks' linear kernels as int8 or fp8 with per-output-channel scales
(swifti2v_jax/models/quant.py); everything else keeps --dtype.

Nothing is written unless every component converts: the work happens in a temporary directory
that is renamed to OUTPUT at the end.
"""

from __future__ import annotations

# First, so that Ctrl-C or SIGTERM during the slow imports below stops at once (docs/faults.md).
from swifti2v_jax import startup  # noqa: F401

# isort: split
import argparse
import importlib
import shutil
import tempfile
import time
from pathlib import Path

from conversion.common import DTYPES, ConversionError
from swifti2v_jax import cli, leftovers
from swifti2v_jax.models import quant

COMPONENTS = ("dit", "vae", "t5")


def find_jobs(source: Path, only: tuple[str, ...], lora: list[Path], lora_scale: float):
    jobs = []
    for component in only:
        module = importlib.import_module(f"conversion.{component}")
        if component == "dit":
            jobs += module.detect(source, loras=lora, lora_scale=lora_scale)
        else:
            jobs += module.detect(source)
    return jobs


def convert(
    source: Path,
    output: Path,
    dtype: str = "bf16",
    only: tuple[str, ...] = COMPONENTS,
    lora: list[Path] = (),
    lora_scale: float = 1.0,
    log=print,
    quantize: str = "native",
) -> list[str]:
    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise ConversionError(f"--source {source} is not a directory")
    if output.exists():
        raise ConversionError(f"--output {output} already exists; remove it or pick a new path")
    leftovers.remove_stale(
        output.parent, leftovers.temp_pattern(output), "conversion folder(s)", log
    )
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if quantize not in quant.WEIGHT_FORMATS:
        raise ConversionError(f"--quantize must be one of {quant.WEIGHT_FORMATS}, got {quantize!r}")
    unknown = set(only) - set(COMPONENTS)
    if unknown:
        raise ConversionError(f"--only accepts {COMPONENTS}, got {sorted(unknown)}")
    jobs = find_jobs(source, only, list(lora), lora_scale)
    if not jobs:
        raise ConversionError(
            f"found nothing to convert in {source}: expected a Wan2.2 release directory "
            "(config.json + *.safetensors, high_noise_model/, Wan2.2_VAE.pth, "
            "models_t5_umt5-xxl-enc-bf16.pth) or a diffusers directory (transformer/, vae/, "
            "text_encoder/)"
        )
    for job in jobs:  # cheap checks of every component before any expensive work
        job.validate()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{leftovers.temp_name(output)}-", dir=output.parent))
    forget = cli.on_hard_exit(lambda: shutil.rmtree(tmp, ignore_errors=True))
    try:
        for job in jobs:
            start = time.perf_counter()
            if job.quantizable:
                job.convert(tmp / job.name, dtype, quantize=quantize)
            else:
                job.convert(tmp / job.name, dtype)
            seconds = time.perf_counter() - start
            log(f"converted {job.description} -> {output / job.name} ({seconds:.1f}s)")
        try:
            tmp.rename(output)
        except OSError:
            if output.exists():  # made by someone else while this ran
                raise ConversionError(
                    f"--output {output} appeared while converting; nothing was written there. "
                    "Remove it or pick a new path and convert again"
                ) from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        forget()
    return [job.name for job in jobs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conversion", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--source", required=True, type=Path, help="Wan2.2 checkpoint directory")
    parser.add_argument("--output", required=True, type=Path, help="new directory to write")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--only", default=",".join(COMPONENTS), help="comma list of dit,vae,t5")
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        type=Path,
        help="LoRA safetensors (lora_down/lora_up/alpha) merged into the DiT; repeatable",
    )
    parser.add_argument("--lora_scale", type=float, default=1.0)
    parser.add_argument(
        "--quantize",
        default="native",
        choices=quant.WEIGHT_FORMATS,
        help="DiT block kernels as int8 / fp8 weight-only (default native: --dtype)",
    )
    args = parser.parse_args(argv)
    only = tuple(c.strip() for c in args.only.split(",") if c.strip())
    convert(
        args.source, args.output, args.dtype, only, args.lora, args.lora_scale,
        quantize=args.quantize,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    cli.run(main, prog="python -m conversion", user_errors=(ConversionError,))
