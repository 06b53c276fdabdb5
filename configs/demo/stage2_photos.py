"""Demo Stage II, phase 4: fine-tuning on procedural + photograph clips (with rollouts).

    python -m swifti2v_jax.data.rollout --data runs/demo/data_photos/stage2 \
        --stage2 runs/demo/stage2_rollout/model --out runs/demo/data_photos/stage2_rollout
    python train.py --config=configs/demo/stage2_photos.py \
        --workdir runs/demo/stage2_photos --config.data.path=runs/demo/data_photos/stage2_rollout \
        --config.init_checkpoint=runs/demo/stage2_rollout/model

Phases 1-3 (stage2.py, stage2_neighbours.py, stage2_rollout.py) only saw procedural scenes;
on held-out photographs Stage II fell 3.6 dB below bicubic upsampling even given the true
low-res clip. This phase keeps phase 3's recipe (noised and self-generated neighbours) on the
mixed data set (`python -m swifti2v_jax.demo.dataset --photo-clips ...`), whose rollout is made
with phase 3's model.
"""

import ml_collections

from configs.demo import stage2_rollout


def get_config() -> ml_collections.ConfigDict:
    config = stage2_rollout.get_config()
    config.num_steps = 900  # what the shared 2 cores allowed beside Stage I (about 35 min)
    config.checkpoint.every = 150
    return config
