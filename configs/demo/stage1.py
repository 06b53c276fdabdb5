"""The demo's Stage I: a small TI2V-style DiT trained from scratch at 32x16 (image-to-video).

    python train.py --config=configs/demo/stage1.py --workdir runs/demo/stage1 \
        --config.data.path=runs/demo/data/stage1

Data: `python -m swifti2v_jax.demo.dataset` (low-res procedural clips encoded with the demo
VAE). The TI2V layout: one window over the whole clip, block 0 (the input image) clean at
timestep 0, every other block noisy, no z_ref. Text embeddings come from the demo's random
umT5 (the procedural clips have no meaningful captions: the model learns to ignore them).
"""

import ml_collections

from configs.demo import common


def get_config() -> ml_collections.ConfigDict:
    config = common.dit_training("demo_stage1", num_steps=3000)
    config.stage = "stage1"
    config.csg.end_to_end = True
    config.loss.conditioning = "none"
    config.loss.online_degradation = "none"
    config.loss.shift = 3.0  # small latents: train more at the noisy end (as Wan shifts)
    return config
