"""The demo's Stage I, phase 3: its first generated frames weigh more in the loss.

    python train.py --config=configs/demo/stage1_refine.py --workdir runs/demo/stage1_refine \
        --config.data.path=runs/demo/data_photos/stage1 \
        --config.init_checkpoint=runs/demo/stage1_photos/model

Phase 2 (configs/demo/stage1_photos.py) re-renders its input with slightly other colours
over its first generated frames and then settles: the change from the last given frame to
the first new one was about twice the change between later frames, and since every chunk of a
long clip starts that way (sampling/stage1.py `Chunk`), every chunk seam jumped. Same data and
continuation rule (1-3 clean leading latent frames); the first noisy frame after the clean
ones weighs `loss.leading_weight` x in the loss, falling to 1 over three frames.
"""

import ml_collections

from configs.demo import common, stage1_photos


def get_config() -> ml_collections.ConfigDict:
    config = common.fine_tune(
        stage1_photos.get_config(), 4000, learning_rate=1e-4, warmup_steps=100
    )
    config.checkpoint.every = 500
    config.loss.leading_weight = 4.0
    config.loss.leading_span = 3
    return config
