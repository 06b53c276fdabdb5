"""The demo's Stage I: a small TI2V-style DiT trained from scratch at 64x32 (image-to-video).

    python train.py --config=configs/demo/stage1.py --workdir runs/demo/stage1 \
        --config.data.path=runs/demo/data/stage1

Data: `python -m swifti2v_jax.demo.dataset` (low-res procedural clips encoded with the demo
VAE). The TI2V layout: one window over the whole clip, block 0 (the input image) clean at
timestep 0, every other block noisy, no z_ref. Text embeddings come from the demo's random
umT5 (the procedural clips have no meaningful captions: the model learns to ignore them).
"""

import ml_collections

from configs import stage2


def get_config() -> ml_collections.ConfigDict:
    config = stage2.get_config("ti2v_5b")
    config.stage = "stage1"
    config.model = "demo_stage1"
    config.allow_random_init = True
    config.csg.end_to_end = True
    config.loss.conditioning = "none"
    config.loss.online_degradation = "none"
    config.loss.shift = 3.0  # small latents: train more at the noisy end (as Wan shifts)
    config.text_len = 512  # what sampling feeds (zero rows past the prompt)
    config.optimizer.learning_rate = 5e-4
    config.optimizer.warmup_steps = 100
    config.optimizer.end_learning_rate_ratio = 0.05
    config.optimizer.weight_decay = 0.0
    config.optimizer.ema_decay = 0.995
    config.batch_size = 8
    config.num_steps = 600
    config.data.worker_count = 0
    config.checkpoint.every = 500
    config.checkpoint.keep = 2
    config.checkpoint.use_async = False
    config.log_every = 25
    config.mesh.fsdp = False
    return config
