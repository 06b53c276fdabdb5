"""Demo Stage II, phase 3: fine-tuning on its own generated neighbours.

    python -m swifti2v_jax.data.rollout --data runs/demo/data/stage2 \
        --stage2 runs/demo/stage2_neighbours/model --out runs/demo/data/stage2_rollout
    python train.py --config=configs/demo/stage2_rollout.py \
        --workdir runs/demo/stage2_rollout --config.data.path=runs/demo/data/stage2_rollout \
        --config.init_checkpoint=runs/demo/stage2_neighbours/model

The rollout adds to every training clip what phase 2's model generates for it with the demo
sampler (configs/sample.py "demo"); half of the examples here take their neighbour block from
it (csg.generated_neighbours), so the model learns to correct its own errors instead of copying
them; neighbours are also noised to U(0, 0.8). The targets stay the true latents.
"""

import ml_collections

from configs.demo import stage2_neighbours


def get_config() -> ml_collections.ConfigDict:
    config = stage2_neighbours.get_config()
    config.num_steps = 2000
    config.loss.neighbour_noise = 0.8
    config.csg.generated_neighbours = 0.5
    return config
