"""umT5 text-encoder presets (reference/wan22.md section 4) and a tiny test variant.

Each function returns an ml_collections ConfigDict whose fields are those of
`swifti2v_jax.models.t5.T5Config`; `get_config('umt5_xxl')` picks one by name.
"""

import ml_collections


def umt5_xxl() -> ml_collections.ConfigDict:
    """umT5-XXL encoder as shipped with Wan2.2 (`models_t5_umt5-xxl-enc-bf16.pth`)."""
    return ml_collections.ConfigDict(
        dict(
            vocab_size=256384,
            d_model=4096,
            d_kv=64,
            num_heads=64,
            d_ff=10240,
            num_layers=24,
            num_buckets=32,
            max_distance=128,
            eps=1e-6,
            dtype="bfloat16",
            param_dtype="bfloat16",
        )
    )


def tiny() -> ml_collections.ConfigDict:
    """A few-kilobyte encoder for tests (fp32)."""
    return ml_collections.ConfigDict(
        dict(
            vocab_size=100,
            d_model=32,
            d_kv=8,
            num_heads=4,
            d_ff=64,
            num_layers=2,
            num_buckets=32,
            max_distance=128,
            eps=1e-6,
            dtype="float32",
            param_dtype="float32",
        )
    )


PRESETS = {"umt5_xxl": umt5_xxl, "tiny": tiny}


def get_config(preset: str = "umt5_xxl") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown T5 preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]()
