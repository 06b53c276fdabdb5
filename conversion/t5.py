"""umT5-XXL encoder and tokenizer -> swifti2v-jax `t5` and `tokenizer` directories.

Original layout: `models_t5_umt5-xxl-enc-bf16.pth` (Wan's own T5Encoder names) and the tokenizer
folder `google/umt5-xxl/`. Diffusers layout: `text_encoder/` (transformers UMT5EncoderModel
safetensors + config.json) and `tokenizer/`. Key names: docs/design.md, "Checkpoint key maps".

The architecture comes from the tensor shapes (and the transformers config.json when there is
one); every key is checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np

from conversion import common
from conversion.jobs import Job
from swifti2v_jax import checkpoints
from swifti2v_jax.models.t5 import T5Config

ORIGINAL_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = Path("google") / "umt5-xxl"
DIFFUSERS_ENCODER = "text_encoder"
DIFFUSERS_TOKENIZER = "tokenizer"

# Both names hold the same (tied) matrix in transformers checkpoints; either may be saved.
_HF_EMBEDDINGS = ("shared.weight", "encoder.embed_tokens.weight")

# --------------------------------------------------------------------------------------------
# Names: transformers <-> original (per block N)

_HF_BLOCK_RULES = [
    ("layer.0.layer_norm.weight", "norm1.weight"),
    ("layer.0.SelfAttention.q.weight", "attn.q.weight"),
    ("layer.0.SelfAttention.k.weight", "attn.k.weight"),
    ("layer.0.SelfAttention.v.weight", "attn.v.weight"),
    ("layer.0.SelfAttention.o.weight", "attn.o.weight"),
    ("layer.0.SelfAttention.relative_attention_bias.weight", "pos_embedding.embedding.weight"),
    ("layer.1.layer_norm.weight", "norm2.weight"),
    ("layer.1.DenseReluDense.wi_0.weight", "ffn.gate.0.weight"),
    ("layer.1.DenseReluDense.wi_1.weight", "ffn.fc1.weight"),
    ("layer.1.DenseReluDense.wo.weight", "ffn.fc2.weight"),
]


# (transformers, original) outside the blocks, and each block's prefix in either naming
_HF_TOP_LEVEL = (("shared.weight", "token_embedding.weight"),
                 ("encoder.final_layer_norm.weight", "norm.weight"))  # fmt: skip
_BLOCK_PREFIX = ("encoder.block", "blocks")


def _rename(name: str, source: int) -> str:
    """One naming to the other: `source` 0 = transformers -> original, 1 = the inverse
    (unknown names pass through)."""
    target = 1 - source
    for pair in _HF_TOP_LEVEL:
        if name == pair[source]:
            return pair[target]
    match = re.fullmatch(re.escape(_BLOCK_PREFIX[source]) + r"\.(\d+)\.(.+)", name)
    if match:
        for rule in _HF_BLOCK_RULES:
            if match.group(2) == rule[source]:
                return f"{_BLOCK_PREFIX[target]}.{match.group(1)}.{rule[target]}"
    return name


def hf_to_original(name: str) -> str:
    """A transformers UMT5EncoderModel key -> the original key (either tied embedding name)."""
    return _rename("shared.weight" if name in _HF_EMBEDDINGS else name, 0)


def original_to_hf(name: str) -> str:
    """The inverse mapping (the embedding goes to `shared.weight`)."""
    return _rename(name, 1)


# --------------------------------------------------------------------------------------------
# Expected keys and Flax destinations (original naming)


def expected_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    d, inner = config.d_model, config.inner_dim
    shapes = {"token_embedding.weight": (config.vocab_size, d), "norm.weight": (d,)}
    for n in range(config.num_layers):
        b = f"blocks.{n}"
        shapes[f"{b}.norm1.weight"] = (d,)
        for proj in "qkv":
            shapes[f"{b}.attn.{proj}.weight"] = (inner, d)
        shapes[f"{b}.attn.o.weight"] = (d, inner)
        shapes[f"{b}.pos_embedding.embedding.weight"] = (config.num_buckets, config.num_heads)
        shapes[f"{b}.norm2.weight"] = (d,)
        shapes[f"{b}.ffn.gate.0.weight"] = (config.d_ff, d)
        shapes[f"{b}.ffn.fc1.weight"] = (config.d_ff, d)
        shapes[f"{b}.ffn.fc2.weight"] = (d, config.d_ff)
    return shapes


_BLOCK_DESTINATIONS = {
    "norm1.weight": (("norm1", "scale"), None),
    "norm2.weight": (("norm2", "scale"), None),
    "attn.q.weight": (("attn", "q", "kernel"), common.linear),
    "attn.k.weight": (("attn", "k", "kernel"), common.linear),
    "attn.v.weight": (("attn", "v", "kernel"), common.linear),
    "attn.o.weight": (("attn", "o", "kernel"), common.linear),
    "pos_embedding.embedding.weight": (("attn", "relative_bias"), None),
    "ffn.gate.0.weight": (("ffn", "gate", "kernel"), common.linear),
    "ffn.fc1.weight": (("ffn", "fc1", "kernel"), common.linear),
    "ffn.fc2.weight": (("ffn", "fc2", "kernel"), common.linear),
}


def flax_destination(name: str):
    """Original key -> (Flax param path, transform or None)."""
    if name == "token_embedding.weight":
        return ("token_embedding", "embedding"), None
    if name == "norm.weight":
        return ("norm", "scale"), None
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    path, transform = _BLOCK_DESTINATIONS[match.group(2)]
    return (f"blocks_{match.group(1)}", *path), transform


# --------------------------------------------------------------------------------------------
# Sources


class _OriginalNames(common.RenamedSource):
    """A transformers-named source seen under original names (the tied embedding once)."""

    def __init__(self, source: common.TensorSource):
        names: dict[str, str] = {}
        for key in source:
            name = hf_to_original(key)
            # Prefer `shared.weight` when both tied names are stored.
            if name in names and key != "shared.weight":
                continue
            names[name] = key
        super().__init__(source, names)
        self.raw = source


def _shape(source: common.TensorSource, name: str, what: str) -> tuple[int, ...]:
    if name not in source:
        raise common.ConversionError(
            f"{what}: missing key {name} (needed to infer the architecture)"
        )
    return tuple(source.shape(name))


def infer_config(source: common.TensorSource, what: str, hf_config: dict | None = None) -> T5Config:
    """Architecture from shapes (original names); the transformers config.json when given."""
    vocab, d_model = _shape(source, "token_embedding.weight", what)
    layers = [int(m.group(1)) for k in source if (m := re.fullmatch(r"blocks\.(\d+)\..+", k))]
    if not layers:
        raise common.ConversionError(f"{what}: no encoder blocks (blocks.N.* keys) found")
    buckets, heads = _shape(source, "blocks.0.pos_embedding.embedding.weight", what)
    inner = _shape(source, "blocks.0.attn.q.weight", what)[0]
    d_ff = _shape(source, "blocks.0.ffn.fc1.weight", what)[0]
    if inner % heads:
        raise common.ConversionError(
            f"{what}: attention width {inner} is not a multiple of the {heads} heads implied by "
            "the relative position bias table"
        )
    fields = dict(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // heads,
        num_heads=heads,
        d_ff=d_ff,
        num_layers=max(layers) + 1,
        num_buckets=buckets,
        max_distance=128,
        eps=1e-6,
    )
    if hf_config is not None:
        if hf_config.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
            raise common.ConversionError(
                f"{what}: feed_forward_proj is {hf_config['feed_forward_proj']!r}; umT5 needs "
                "'gated-gelu'"
            )
        if hf_config.get("model_type", "umt5") != "umt5":
            raise common.ConversionError(
                f"{what}: model_type is {hf_config['model_type']!r}; only umT5 encoders "
                "(a relative position bias in every layer) are supported"
            )
        config_fields = dict(
            vocab_size=hf_config.get("vocab_size"),
            d_model=hf_config.get("d_model"),
            d_kv=hf_config.get("d_kv"),
            num_heads=hf_config.get("num_heads"),
            d_ff=hf_config.get("d_ff"),
            num_layers=hf_config.get("num_layers"),
            num_buckets=hf_config.get("relative_attention_num_buckets"),
            max_distance=hf_config.get("relative_attention_max_distance"),
            eps=hf_config.get("layer_norm_epsilon"),
        )
        fields.update({k: v for k, v in config_fields.items() if v is not None})
    try:
        return T5Config(**fields, dtype="float32", param_dtype="float32")
    except ValueError as e:
        raise common.ConversionError(f"{what}: {e}") from e


def convert_source(source: common.TensorSource, config: T5Config, dtype: str, what: str) -> dict:
    """Original-named tensor source -> Flax params (numpy); norms stay fp32."""
    common.check_keys(source, expected_shapes(config), what)
    target = common.DTYPES[dtype]
    params: dict = {}
    for name in source:
        path, transform = flax_destination(name)
        tensor = source[name]
        if transform is not None:
            tensor = transform(tensor)
        keep_fp32 = path[-1] == "scale"
        common.set_nested(params, path, common.cast(tensor, np.float32 if keep_fp32 else target))
    return params


# --------------------------------------------------------------------------------------------
# Jobs

_COMPUTE_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "bfloat16"}  # fp16 T5 overflows
_PARAM_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _encoder_job(
    open_fn, origin: Path, layout: str, transformers_names: bool, hf_config_file: Path | None
) -> Job:
    what = f"T5 checkpoint {origin} ({layout} layout)"

    def load():
        raw = open_fn()
        hf_config = None
        if hf_config_file is not None:
            hf_config = common.read_json(hf_config_file)
        source = _OriginalNames(raw) if transformers_names else raw
        if transformers_names:
            _check_tied_embeddings(raw, what)
        return source, infer_config(source, what, hf_config)

    def check(source, config):
        if not transformers_names:
            common.check_keys(source, expected_shapes(config), what)
            return
        # Report problems under the names the user's files actually use.
        raw = source.raw
        embedding = next((k for k in _HF_EMBEDDINGS if k in raw), _HF_EMBEDDINGS[0])
        expected = {original_to_hf(k): v for k, v in expected_shapes(config).items()}
        expected[embedding] = expected.pop("shared.weight")
        common.check_keys(raw, expected, what, ignore=set(_HF_EMBEDDINGS) - {embedding})

    def validate():
        source, config = load()
        check(source, config)

    def convert(out_dir: Path, dtype: str):
        source, config = load()
        check(source, config)
        params = convert_source(source, config, dtype, what)
        config_out = dataclasses.replace(
            config, dtype=_COMPUTE_DTYPE[dtype], param_dtype=_PARAM_DTYPE[dtype]
        )
        checkpoints.write_model_dir(
            out_dir, "t5", config_out.to_dict(), params, source=str(origin), layout=layout
        )

    return Job("t5", f"umT5 encoder {origin.name} ({layout})", validate, convert)


def _check_tied_embeddings(source: common.TensorSource | None, what: str) -> None:
    if source is None or not all(k in source for k in _HF_EMBEDDINGS):
        return
    shapes = {k: tuple(source.shape(k)) for k in _HF_EMBEDDINGS}
    if len(set(shapes.values())) != 1:
        listed = "; ".join(f"{k} {v}" for k, v in shapes.items())
        raise common.ConversionError(f"{what}: wrong shapes: tied embeddings differ ({listed})")


def _tokenizer_job(folder: Path) -> Job:
    def validate():
        if not (folder / "tokenizer.json").is_file():
            hint = ""
            if (folder / "spiece.model").is_file():
                hint = (
                    "; only spiece.model is there: write tokenizer.json once with transformers "
                    "(AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))"
                )
            raise common.ConversionError(f"tokenizer folder {folder} has no tokenizer.json{hint}")

    def convert(out_dir: Path, dtype: str):
        shutil.copytree(folder, out_dir)

    return Job("tokenizer", f"umT5 tokenizer {folder}", validate, convert)


def detect(source: Path) -> list[Job]:
    source = Path(source)
    jobs = []
    original = source / ORIGINAL_FILE
    encoder_dir = source / DIFFUSERS_ENCODER
    if original.is_file():
        jobs.append(
            _encoder_job(lambda: common.open_source(original), original, "original", False, None)
        )
    elif encoder_dir.is_dir():
        config_file = encoder_dir / "config.json"
        jobs.append(
            _encoder_job(
                lambda: common.SafetensorsSource.from_dir(encoder_dir),
                encoder_dir,
                "transformers",
                True,
                config_file if config_file.is_file() else None,
            )
        )
    for folder in (source / ORIGINAL_TOKENIZER, source / DIFFUSERS_TOKENIZER):
        if folder.is_dir():
            jobs.append(_tokenizer_job(folder))
            break
    return jobs
