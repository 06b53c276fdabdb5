"""The demo's Stage II: a small concat-conditioned DiT trained from scratch on CSG windows.

    python train.py --config=configs/demo/stage2.py --workdir runs/demo/stage2 \
        --config.data.path=runs/demo/data/stage2

Data: `python -m swifti2v_jax.demo.dataset` (128x64 procedural clips encoded with the demo
VAE; z_ref = the hybrid reference of the VAE-decoded low-res clip, as Stage I would give).
Windows: the anchor (input image), N=1 neighbour and M=1 noisy block, 3 x 128 tokens
(the first segment: anchor + 2 noisy blocks). A 2x2 patch token carries 48 latent values
(96 with z_ref): the first demo run's 4x4 patches of a z=48 latent (768 values through
width 128) could not even pass z_ref through. Shipped run: 4500 steps, 45 min on 2 CPU
cores, loss 1.7 -> 0.13. This is phase 1 of 3: on held-out clips it tied bicubic with Stage
I's output and drifted below the decoded z_ref it is given, so stage2_neighbours.py and
stage2_rollout.py fine-tune it on noised and self-generated neighbours (docs/demo.md).
"""

import ml_collections

from configs.demo import common


def get_config() -> ml_collections.ConfigDict:
    config = common.dit_training("demo_stage2", num_steps=4500)
    config.stage = "stage2"
    config.csg.noisy_blocks = 1
    config.csg.neighbours = 1
    config.loss.conditioning = "concat"
    # A little extra latent blur + noise on z_ref: Stage I output is rougher than the oracle.
    config.loss.online_degradation = "latent_blur_noise"
    config.loss.degradation_factor = 2
    config.loss.degradation_noise = 0.05
    return config
