"""Tiny random-init demo models, written as real converted checkpoint directories.

    python -m swifti2v_jax.demo.build OUTPUT [--stage1 ti2v|a14b] [--seed 0]
    python -m swifti2v_jax.demo.build --example_image swifti2v_jax/demo/example.png

Layouts (the same as `python -m conversion` output, plus a trained-style `stage2/`):

    ti2v:  dit/ (Stage I, TI2V-style, 48 ch)  stage2/ (Stage II, concat: 96 in, 48 out)
           vae/ (tiny Wan2.2 VAE)  t5/ (tiny umT5)  tokenizer/ (tokenizer.json)
    a14b:  high_noise/ low_noise/ (I2V-A14B-style experts: 36 in, 16 out)
           vae/ (tiny Wan2.1 VAE)  t5/  tokenizer/

Parameters are drawn with numpy from the models' abstract parameter trees (no XLA
compilation), so building takes a second or two. The output is a random-weight model: it
exercises every code path and produces noise, not a meaningful video.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import jax
import numpy as np

from swifti2v_jax import checkpoints
from swifti2v_jax.demo import EXAMPLE_IMAGE, cache_root
from swifti2v_jax.models import dit, t5, vae
from swifti2v_jax.presets import dit as dit_presets
from swifti2v_jax.presets import t5 as t5_presets
from swifti2v_jax.presets import vae as vae_presets

VERSION = 1  # bump when the demo architecture changes (invalidates cached random builds)
MARKER = "DEMO.json"
EXAMPLE_SEED = 1_000_005  # held out: the demo models train on procedural seeds < 1000
STAGE1_KINDS = ("ti2v", "a14b")

# Demo architectures: the tiny test presets (text_dim 32 = the tiny umT5's d_model).
STAGE1_DIT = "tiny"
STAGE2_DIT = "tiny_concat"
A14B_EXPERT = "tiny_i2v"
VAE_WAN22 = "tiny_wan22"
VAE_WAN21 = "tiny_wan21"
T5_PRESET = "tiny"

# A fixed Unigram vocabulary for the demo tokenizer: T5 specials first (<pad> 0, </s> 1,
# <unk> 2), then whole words, then single letters so any lowercase text tokenizes.
_WORDS = (
    "a the and of in on at to with over across slowly gentle calm small boat sailing lake "
    "mountain sunset sun water sky camera pans right left moves drifts ripples waves cinematic "
    "light video"
).split()
_SYMBOLS = list("abcdefghijklmnopqrstuvwxyz0123456789,.")


def tokenizer_json() -> str:
    """A T5-style Unigram tokenizer (Metaspace, NFKC + lowercase) with a fixed vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -1.0 - 0.01 * i) for i, w in enumerate(_WORDS)]
    pieces += [(c, -5.0) for c in _SYMBOLS]
    vocab_size = t5_presets.get(T5_PRESET).vocab_size
    if len(pieces) > vocab_size:
        raise AssertionError(f"demo vocabulary has {len(pieces)} pieces > {vocab_size}")
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return tok.to_str()


def random_params(abstract, rng: np.random.Generator, stacked: tuple[str, ...] = ("blocks",)):
    """numpy parameters shaped like `abstract` (a tree of ShapeDtypeStructs).

    Kernels ~ N(0, 1/fan_in) with fan_in the product of all but the last axis (and not the
    leading layer axis of stacked blocks); norm scales 1; biases 0; modulation tables
    N(0, 1/dim) like Wan's init; embeddings N(0, 1).
    """

    def leaf(path, spec):
        names = [str(getattr(p, "key", p)) for p in path]
        name = names[-1]
        shape = tuple(spec.shape)
        dtype = np.dtype(spec.dtype)
        if name in ("scale", "gamma"):
            return np.ones(shape, dtype)
        if "bias" in name and name != "relative_bias":
            return np.zeros(shape, dtype)
        if "modulation" in name:
            std = shape[-1] ** -0.5
        elif name == "embedding":
            std = 1.0
        else:
            fan_shape = shape[1:-1] if any(n in stacked for n in names[:-1]) else shape[:-1]
            std = 1.0 / math.sqrt(max(1, int(np.prod(fan_shape))))
        return (rng.standard_normal(shape) * std).astype(dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def _dit_params(preset: str, rng):
    config = dit_presets.config(preset)
    return config.to_dict(), random_params(dit.abstract_params(config), rng)


def _vae_params(preset: str, rng):
    config = vae_presets.config(preset)
    return config.to_dict(), random_params(vae.abstract_params(config), rng, stacked=())


def _t5_params(rng):
    config = t5_presets.config(T5_PRESET)
    abstract = jax.eval_shape(lambda: t5.init_params(config, jax.random.key(0)))
    return config.to_dict(), random_params(abstract, rng, stacked=())


def build(directory: str | os.PathLike, *, stage1: str = "ti2v", seed: int = 0) -> Path:
    """Writes a random-init demo checkpoint root to `directory` (which must not exist)."""
    if stage1 not in STAGE1_KINDS:
        raise ValueError(f"stage1 must be one of {STAGE1_KINDS}, got {stage1!r}")
    with checkpoints.atomic_directory(directory, FileExistsError) as staging:
        _write_components(staging, stage1, seed)
    return Path(directory).absolute()


def _write_components(root: Path, stage1: str, seed: int) -> None:
    root.mkdir()
    meta = dict(demo=True, random_init=True, seed=seed, version=VERSION)

    def rng(name: str) -> np.random.Generator:  # one independent stream per component
        return np.random.default_rng([seed, *name.encode()])

    if stage1 == "ti2v":
        models = {
            "dit": ("dit", *_dit_params(STAGE1_DIT, rng("dit"))),
            "stage2": ("dit", *_dit_params(STAGE2_DIT, rng("stage2"))),
            "vae": ("vae", *_vae_params(VAE_WAN22, rng("vae"))),
        }
    else:
        models = {
            "high_noise": ("dit", *_dit_params(A14B_EXPERT, rng("high_noise"))),
            "low_noise": ("dit", *_dit_params(A14B_EXPERT, rng("low_noise"))),
            "vae": ("vae", *_vae_params(VAE_WAN21, rng("vae21"))),
        }
    models["t5"] = ("t5", *_t5_params(rng("t5")))
    for name, (kind, config, params) in models.items():
        checkpoints.write_model_dir(root / name, kind, config, params, **meta)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text(tokenizer_json())
    (root / MARKER).write_text(json.dumps(dict(meta, stage1=stage1), indent=2))


def is_demo_root(directory: Path) -> bool:
    return (Path(directory) / MARKER).is_file()


def ensure_random_demo(stage1: str = "ti2v", root: Path | None = None) -> tuple[Path, bool]:
    """The cached random demo root for `stage1`, built on first use -> (path, built_now)."""
    root = cache_root() if root is None else Path(root)
    directory = root / f"demo-random-{stage1}-v{VERSION}"
    if is_demo_root(directory):
        return directory, False
    try:
        build(directory, stage1=stage1)
    except FileExistsError:  # a concurrent process won the race, or a broken leftover
        if not is_demo_root(directory):
            raise
        return directory, False
    return directory, True


def make_example_image(width: int = 512, height: int = 256) -> np.ndarray:
    """Frame 0 of a held-out procedural clip (the demo models never saw it): uint8 [H, W, 3].

    Drawn at twice the demo's 256x128 like the demo's training clips (data/procedural.py).
    """
    from swifti2v_jax.data import procedural

    high, _ = procedural.render_pair(EXAMPLE_SEED, 1, height, width, factor=1)
    return procedural.to_uint8(high[0])


def write_example_image(path: str | os.PathLike = EXAMPLE_IMAGE) -> Path:
    from PIL import Image

    path = Path(path)
    Image.fromarray(make_example_image()).save(path, optimize=True)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swifti2v_jax.demo.build")
    parser.add_argument("output", nargs="?", type=Path, help="new directory for the models")
    parser.add_argument("--stage1", default="ti2v", choices=STAGE1_KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--example_image", type=Path, help="(re)draw the example PNG here")
    args = parser.parse_args(argv)
    if args.example_image is None and args.output is None:
        parser.error("give an OUTPUT directory and/or --example_image PATH")
    try:
        if args.example_image is not None:
            print(f"wrote {write_example_image(args.example_image)}")
        if args.output is not None:
            print(f"wrote {build(args.output, stage1=args.stage1, seed=args.seed)}")
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from swifti2v_jax import cli

    cli.run(main, prog="python -m swifti2v_jax.demo.build")
