"""umT5 text-encoder presets (docs/design.md, "Models") and a tiny test variant.

Each preset is an ml_collections ConfigDict whose fields are those of
`swifti2v_jax.models.t5.T5Config`; `get(name)` picks one, `config(name)` builds the dataclass.
"""

from __future__ import annotations

import ml_collections

from swifti2v_jax import config_fields
from swifti2v_jax.models import t5
from swifti2v_jax.presets import lookup


def _make(vocab_size, d_model, d_kv, num_heads, d_ff, num_layers, dtype):
    sizes = dict(d_model=d_model, d_kv=d_kv, num_heads=num_heads, d_ff=d_ff)
    fields = dict(vocab_size=vocab_size, num_layers=num_layers, dtype=dtype, param_dtype=dtype)
    relative = dict(num_buckets=32, max_distance=128)
    return ml_collections.ConfigDict(dict(eps=1e-6, **relative, **sizes, **fields))


def umt5_xxl():
    """umT5-XXL encoder as shipped with Wan2.2 (`models_t5_umt5-xxl-enc-bf16.pth`)."""
    return _make(256384, 4096, 64, 64, 10240, 24, "bfloat16")


def tiny():
    """A few-kilobyte encoder for tests (fp32)."""
    return _make(100, 32, 8, 4, 64, 2, "float32")


PRESETS = {preset.__name__: preset for preset in (umt5_xxl, tiny)}
DEFAULT = "umt5_xxl"


def get(name: str | None = None) -> ml_collections.ConfigDict:
    return lookup(PRESETS, name, "T5", DEFAULT)


def config(name: str | None = None) -> t5.T5Config:
    return config_fields.from_fields(t5.T5Config, get(name), "T5")
