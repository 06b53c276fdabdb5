"""Wan2.2 DiT presets (values from reference/wan22.md section 1.1) and tiny test variants.

Each function returns an ml_collections ConfigDict whose fields are those of
`swifti2v_jax.models.dit.DiTConfig`; `get_config('ti2v_5b')` picks one by name.
"""

import ml_collections

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


def _make(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({**_COMMON, **fields})


def ti2v_5b() -> ml_collections.ConfigDict:
    """Wan2.2 TI2V-5B: the Stage II backbone (48-channel Wan2.2 VAE latents)."""
    return _make(
        model_type="ti2v",
        dim=3072,
        ffn_dim=14336,
        num_heads=24,
        num_layers=30,
        in_dim=48,
        out_dim=48,
    )


def ti2v_5b_concat() -> ml_collections.ConfigDict:
    """TI2V-5B widened for SwiftI2V Stage II `concat` conditioning (48 latent + 48 z_ref)."""
    config = ti2v_5b()
    config.in_dim = 96
    return config


def i2v_a14b() -> ml_collections.ConfigDict:
    """One expert of Wan2.2 I2V-A14B (16 noisy + 4 mask + 16 image-latent input channels)."""
    return _make(
        model_type="i2v",
        dim=5120,
        ffn_dim=13824,
        num_heads=40,
        num_layers=40,
        in_dim=36,
        out_dim=16,
    )


def t2v_a14b() -> ml_collections.ConfigDict:
    config = i2v_a14b()
    config.model_type = "t2v"
    config.in_dim = 16
    return config


def tiny() -> ml_collections.ConfigDict:
    """A tiny TI2V-style DiT for tests: 48 latent channels, 2 heads of 32, 3 layers."""
    return _make(
        model_type="ti2v",
        dim=64,
        ffn_dim=128,
        num_heads=2,
        num_layers=3,
        in_dim=48,
        out_dim=48,
        text_dim=32,
        freq_dim=32,
        compute_dtype="float32",
    )


def tiny_concat() -> ml_collections.ConfigDict:
    config = tiny()
    config.in_dim = 96
    return config


def tiny_i2v() -> ml_collections.ConfigDict:
    """A tiny I2V-A14B-style expert: 36 input channels, 16 output channels."""
    config = tiny()
    config.model_type = "i2v"
    config.in_dim = 36
    config.out_dim = 16
    return config


def demo_stage1() -> ml_collections.ConfigDict:
    """The demo's Stage I (configs/demo/stage1.py): TI2V-style, 32x16 frames = 8x4 latents
    (1x4x4, z=12 demo VAE), 2x2 patches: 8 tokens per frame, 136 for a 17-frame clip.
    text_dim 32 = the demo umT5."""
    return _make(
        model_type="ti2v",
        dim=128,
        ffn_dim=384,
        num_heads=2,
        num_layers=4,
        in_dim=12,
        out_dim=12,
        text_dim=32,
        freq_dim=64,
        compute_dtype="float32",
    )


def demo_stage2() -> ml_collections.ConfigDict:
    """The demo's Stage II (configs/demo/stage2.py): concat conditioning (12 + 12 channels),
    128x64 frames = 32x16 latents, 2x2 patches: 128 tokens per latent frame, 48 latent values
    per token (96 in) -- few enough for width 128 to carry z_ref through."""
    config = demo_stage1()
    config.in_dim = 24
    return config


PRESETS = {
    "ti2v_5b": ti2v_5b,
    "ti2v_5b_concat": ti2v_5b_concat,
    "i2v_a14b": i2v_a14b,
    "t2v_a14b": t2v_a14b,
    "tiny": tiny,
    "tiny_concat": tiny_concat,
    "tiny_i2v": tiny_i2v,
    "demo_stage1": demo_stage1,
    "demo_stage2": demo_stage2,
}


def get_config(preset: str = "ti2v_5b") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]()
