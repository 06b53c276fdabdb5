"""Demo Stage II, phase 5: fine-tuning on references made by the demo's Stage I.

    python -m swifti2v_jax.demo.dataset --vae runs/demo/vae/model --text runs/demo/random \
        --out runs/demo/data_refs --num-clips 256 --photo-clips 256 \
        --stage1-references runs/demo/stage1_refine/model
    python -m swifti2v_jax.data.rollout --data runs/demo/data_refs/stage2 \
        --stage2 runs/demo/stage2_photos/model --out runs/demo/data_refs/stage2_rollout
    python train.py --config=configs/demo/stage2_refs.py \
        --workdir runs/demo/stage2_refs --config.data.path=runs/demo/data_refs/stage2_rollout \
        --config.init_checkpoint=runs/demo/stage2_photos/model

Phases 1-4 built z_ref from the true low-res clip after a VAE round trip. At sampling time
z_ref comes from Stage I, whose small model drifts from the input and flickers: on held-out
photographs Stage II then gained only +0.4 dB over bicubic upsampling of Stage I's video.
Here every reference is what Stage I made of the clip's first frame and caption, so Stage II
learns how far to trust it and how much to take from the anchor. The rest of phase 3's
recipe stays (noised and self-generated neighbours; the rollout is made on these references
with phase 4's model); targets stay the true latents.
"""

import ml_collections

from configs.demo import stage2_photos


def get_config() -> ml_collections.ConfigDict:
    config = stage2_photos.get_config()
    config.num_steps = 3000
    config.checkpoint.every = 500
    # Stage I's video is the degradation now: no extra synthetic blur/noise on top.
    config.loss.online_degradation = "none"
    return config
