"""Wan2.2 DiT presets (sizes: docs/design.md, "Models") and demo / tiny test variants.

Each preset is an ml_collections ConfigDict whose fields are those of
`swifti2v_jax.models.dit.DiTConfig`; `get(name)` picks one, `config(name)` builds the
dataclass (through `config_fields.from_fields`, so a misspelt field is an error).
"""

from __future__ import annotations

import ml_collections

from swifti2v_jax import config_fields
from swifti2v_jax.models import dit
from swifti2v_jax.presets import lookup

_COMMON = dict(
    patch_size=(1, 2, 2),
    text_dim=4096,
    freq_dim=256,
    eps=1e-6,
    rope_theta=10000.0,
    compute_dtype="bfloat16",
    param_dtype="float32",
    attention_backend="chunked",
    scan_layers=True,
    remat="none",
)

# Prompt rows of the demo DiTs (zero past the prompt; the demo captions are 39 tokens). 512 as
# in Wan2.2 spends ~40% of a demo Stage II step on cross-attention. Sampling the demo models
# must use the same rows they were trained with.
DEMO_TEXT_LEN = 64


def _make(model_type, dim, ffn_dim, num_heads, num_layers, in_dim, out_dim, **extra):
    sizes = dict(dim=dim, ffn_dim=ffn_dim, num_heads=num_heads, num_layers=num_layers)
    fields = dict(model_type=model_type, in_dim=in_dim, out_dim=out_dim, **sizes, **extra)
    return ml_collections.ConfigDict({**_COMMON, **fields})


def _small(**fields):  # fp32, 32-dim text: the tiny umT5 preset's width
    return dict(text_dim=32, compute_dtype="float32", **fields)


def ti2v_5b():
    """Wan2.2 TI2V-5B: the Stage II backbone (48-channel Wan2.2 VAE latents)."""
    return _make("ti2v", 3072, 14336, 24, 30, 48, 48)


def ti2v_5b_concat():
    """TI2V-5B widened for SwiftI2V Stage II `concat` conditioning (48 latent + 48 z_ref)."""
    return _make("ti2v", 3072, 14336, 24, 30, 96, 48)


def i2v_a14b():
    """One expert of Wan2.2 I2V-A14B (16 noisy + 4 mask + 16 image-latent input channels)."""
    return _make("i2v", 5120, 13824, 40, 40, 36, 16)


def t2v_a14b():
    return _make("t2v", 5120, 13824, 40, 40, 16, 16)


def tiny():
    """A tiny TI2V-style DiT for tests: 48 latent channels, 2 heads of 32, 3 layers."""
    return _make("ti2v", 64, 128, 2, 3, 48, 48, **_small(freq_dim=32))


def tiny_concat():
    return _make("ti2v", 64, 128, 2, 3, 96, 48, **_small(freq_dim=32))


def tiny_i2v():
    """A tiny I2V-A14B-style expert: 36 input channels, 16 output channels."""
    return _make("i2v", 64, 128, 2, 3, 36, 16, **_small(freq_dim=32))


def demo_stage1():
    """The demo's Stage I (configs/demo/stage1.py): TI2V-style, 32x16 frames = 8x4 latents
    (1x4x4, z=12 demo VAE), 2x2 patches: 8 tokens per frame, 136 for a 17-frame clip.
    text_dim 32 = the demo umT5."""
    return _make("ti2v", 128, 384, 2, 4, 12, 12, **_small(freq_dim=64))


def demo_stage2():
    """The demo's Stage II (configs/demo/stage2.py): concat conditioning (12 + 12 channels),
    128x64 frames = 32x16 latents, 2x2 patches: 128 tokens per latent frame, 48 latent values
    per token (96 in) -- few enough for width 128 to carry z_ref through."""
    return _make("ti2v", 128, 384, 2, 4, 24, 12, **_small(freq_dim=64))


PRESETS = {
    preset.__name__: preset
    for preset in (
        ti2v_5b,
        ti2v_5b_concat,
        i2v_a14b,
        t2v_a14b,
        tiny,
        tiny_concat,
        tiny_i2v,
        demo_stage1,
        demo_stage2,
    )
}
DEFAULT = "ti2v_5b"


def get(name: str | None = None) -> ml_collections.ConfigDict:
    return lookup(PRESETS, name, "DiT", DEFAULT)


def config(name: str | None = None, **overrides) -> dit.DiTConfig:
    """The `DiTConfig` of preset `name`; `overrides` that are None keep the preset's value."""
    fields = get(name).to_dict()
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return config_fields.from_fields(dit.DiTConfig, fields, "DiT")
