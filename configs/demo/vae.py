"""The demo VAE: a small Wan2.2-architecture VAE trained from scratch on procedural videos.

    python train.py --config=configs/demo/vae.py --workdir runs/demo/vae

Wan2.2 structure (patchify, causal 3x3x3 convolutions, residual blocks, a middle attention
block) reduced to what a CPU can train: a 4x4 patchify straight into the latent grid (no
down stages), z=12, no temporal downsampling. 1x4x4 compression, so a 128x64 demo frame is a
32x16x12 latent and every frame is a latent block. Much milder than Wan2.2's 4x16x16 on
purpose: the demo's quality check compares Stage II with bicubic upsampling, and everything
decoded from latents is capped by the VAE's reconstruction. On 6 held-out 128x64 clips
(17 frames) it reconstructs at 27.5 dB after 5000 steps (25.2 at 1000, 27.0 at 2500), where
bicubic upsampling of the 32x16 clip gets 25.3 dB. z=12 keeps a DiT token of 2x2 latent
pixels at 48 values. Exported to WORKDIR/model with measured latent statistics
(training/vae_training.py).

Tried before (256x128 demo): a 1x4x4, z=48 VAE with two AvgDown stages reached only
bicubic's level after 1700 steps, and its 768-value DiT tokens were too wide for the demo
DiT; temporally compressing VAEs (4x4x4) were far worse in a few CPU-minutes (17.9 dB on the
compressed frames). Training clips are whole 17-frame clips (small crops instead): the
causal temporal convolutions must see the frame counts sampling uses. Trained on 3-frame
clips, a VAE reconstructed frames 3-16 of a 17-frame clip at 12 dB.
"""

import ml_collections

from swifti2v_jax import config_fields
from swifti2v_jax.presets import vae as vae_presets
from swifti2v_jax.training.optim import OptimizerConfig
from swifti2v_jax.training.vae_training import VAEDataConfig, VAELossConfig


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "vae"
    c.seed = 0
    # The architecture (swifti2v_jax/presets/vae.py "demo"); training replaces the identity
    # latent normalisation with measured statistics at export.
    c.vae = vae_presets.get("demo")
    # Training clips: procedural seeds [first_seed, first_seed + num_clips); evaluation and
    # the bundled example use seeds from 1_000_000 (held out).
    c.data = config_fields.as_section(
        VAEDataConfig(height=64, width=128, clip_frames=17, crop_height=16, crop_width=32)
    )
    c.loss = config_fields.as_section(VAELossConfig())
    c.optimizer = config_fields.as_section(
        OptimizerConfig(
            learning_rate=1e-3,
            warmup_steps=100,
            end_learning_rate_ratio=0.05,
            b2=0.99,
            weight_decay=0.0,
            ema_decay=0.995,
        )
    )
    c.batch_size = 16
    c.num_steps = 5000
    c.checkpoint = ml_collections.ConfigDict(dict(every=500, keep=2, use_async=False, verify=True))
    c.log_every = 25
    c.max_nonfinite_skips = 0
    return c
