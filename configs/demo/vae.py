"""The demo VAE: a small Wan2.2-architecture VAE trained from scratch on procedural videos.

    python train.py --config=configs/demo/vae.py --workdir runs/demo/vae

Wan2.2 structure (residual stages with AvgDown3D/DupUp3D shortcuts, causal 3x3x3
convolutions, z=48) with two spatial down stages, no patchify and no temporal downsampling:
1x4x4 compression, so a 256x128 demo frame is a 64x32 latent and every frame is a latent
block. Much milder than Wan2.2's 4x16x16 on purpose: the demo's quality check compares
Stage II with bicubic upsampling, and everything decoded from latents is capped by the VAE's
reconstruction. A few CPU-minutes of training do not make a temporally compressing VAE good
enough (measured: 4x4x4 after 500 steps, 24.6 dB on frame 0 but 17.9 dB on the temporally
compressed frames, below bicubic's 27.2). Exported to WORKDIR/model with measured latent
statistics (training/vae_training.py). 0.78 M parameters.

Training clips are whole 17-frame clips (small crops instead): the causal temporal
convolutions must see the frame counts sampling uses. Trained on 3-frame clips, the same VAE
reconstructed frames 0-2 of a 17-frame clip at 21 dB and frames 3-16 at 12 dB.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "vae"
    c.seed = 0
    c.vae = ml_collections.ConfigDict(
        dict(
            variant="wan22",
            base_dim=48,
            dec_dim=48,
            z_dim=12,
            dim_mult=[1],
            num_res_blocks=1,
            temporal_downsample=[],
            patch_size=4,
        )
    )
    # Training clips: procedural seeds [first_seed, first_seed + num_clips); evaluation and
    # the bundled example use seeds from 1_000_000 (held out).
    c.data = ml_collections.ConfigDict(
        dict(
            num_clips=128,
            first_seed=0,
            frames=17,
            height=64,
            width=128,
            factor=4,
            clip_frames=17,
            crop_height=16,
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
    c.batch_size = 16
    c.num_steps = 5000
    c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=2, use_async=False))
    c.log_every = 25
    return c
