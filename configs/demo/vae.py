"""The demo VAE: a small Wan2.2-architecture VAE trained from scratch on procedural videos.

    python train.py --config=configs/demo/vae.py --workdir runs/demo/vae

Wan2.2 structure (2x2 patchify, residual stages with AvgDown3D/DupUp3D shortcuts, causal
3x3x3 convolutions, z=48) with two down stages instead of three: 4x8x8 compression, so a
256x128 demo frame is a 32x16 latent. Exported to WORKDIR/model with measured latent
statistics (training/vae_training.py). About 2.9 M parameters.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "vae"
    c.seed = 0
    c.vae = ml_collections.ConfigDict(
        dict(
            variant="wan22",
            base_dim=16,
            dec_dim=24,
            z_dim=48,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            temporal_downsample=[True, True],
            patch_size=2,
        )
    )
    # Training clips: procedural seeds [first_seed, first_seed + num_clips); evaluation and
    # the bundled example use seeds from 1_000_000 (held out).
    c.data = ml_collections.ConfigDict(
        dict(
            num_clips=128,
            first_seed=0,
            frames=17,
            height=128,
            width=256,
            factor=4,
            clip_frames=5,
            crop_height=32,
            crop_width=64,
            lowres_fraction=0.25,
            seed=0,
            worker_count=0,
        )
    )
    c.loss = ml_collections.ConfigDict(dict(l1_weight=1.0, mse_weight=1.0, latent_weight=1e-4))
    c.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-3,
            warmup_steps=100,
            decay_steps=None,
            end_learning_rate_ratio=0.05,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            weight_decay=0.0,
            grad_clip=1.0,
            ema_decay=0.995,
        )
    )
    c.batch_size = 12
    c.num_steps = 2400
    c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=2, use_async=False))
    c.log_every = 25
    return c
