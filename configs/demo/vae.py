"""The demo VAE: a small Wan2.2-architecture VAE trained from scratch on procedural videos.

    python train.py --config=configs/demo/vae.py --workdir runs/demo/vae

Wan2.2 structure (residual stages with AvgDown3D/DupUp3D shortcuts, causal 3x3x3
convolutions, z=48) with two down stages instead of three and no patchify: 4x4x4
compression, so a 256x128 demo frame is a 64x32 latent. The compression is milder than
Wan2.2's 4x16x16 on purpose: the demo's quality check compares Stage II with bicubic
upsampling, and everything decoded from latents is capped by the VAE's reconstruction, which
a few CPU-minutes of training only makes good at this rate. Exported to WORKDIR/model with
measured latent statistics (training/vae_training.py). 0.78 M parameters.
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
            dec_dim=16,
            z_dim=48,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            temporal_downsample=[True, True],
            patch_size=1,
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
            crop_width=32,
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
    c.num_steps = 1800
    c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=2, use_async=False))
    c.log_every = 25
    return c
