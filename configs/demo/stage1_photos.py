"""The demo's Stage I, phase 2: fine-tuning on procedural + photograph clips, with continuation.

    python train.py --config=configs/demo/stage1_photos.py --workdir runs/demo/stage1_photos \
        --config.data.path=runs/demo/data_photos/stage1 \
        --config.init_checkpoint=runs/demo/stage1/model

Data: `python -m swifti2v_jax.demo.dataset --photo-clips ...` (procedural scenes mixed with
the training photographs under the same camera motion, data/photos.py). Phase 1
(configs/demo/stage1.py) only saw procedural scenes and turned a photograph into coloured noise
within a few frames.

Continuation (sampling/stage1.py chunks): each example holds its first k ~ U{1..3} latent
frames clean at timestep 0 with no loss (loss.max_clean_frames), so a chunk that starts from
the previous chunk's last `overlap` frames (re-encoded as a clip start) is a layout the model
has trained on.
"""

import ml_collections

from configs.demo import common, stage1


def get_config() -> ml_collections.ConfigDict:
    config = common.fine_tune(stage1.get_config(), 2500, learning_rate=2e-4, warmup_steps=50)
    config.loss.max_clean_frames = 3
    return config
