"""Stage I low-res LoRA: adapters on a frozen TI2V-style backbone, whole clips at low res.

    python train.py --config=configs/stage1_lora.py --workdir DIR \
        --config.init_checkpoint=CONVERTED/dit --config.data.path=PREPARED_LOW_RES
    python train.py --config=configs/stage1_lora.py:tiny --workdir DIR   # CPU, synthetic

Stage I generates all frames at ~1/4 of the Stage II size (e.g. 640x352). Training uses the
TI2V image-to-video layout: one window over the whole clip, block 0 (the input image) clean at
timestep 0, every other block noisy; the latents alone are the model input (no z_ref).
Prepare the data with `--height 352 --width 640 --reference none`. The trainable tree is only
the LoRA adapters; merge them into the backbone for sampling.

Not covered: the I2V-A14B backbone's conditioning (mask + image-latent channels) and its
two-expert timestep split; this config trains TI2V-layout backbones (`ti2v_5b`, `tiny`).
"""

import ml_collections

from configs import stage2
from swifti2v_jax import presets


def _as_stage1(config: ml_collections.ConfigDict, model: str) -> ml_collections.ConfigDict:
    """A Stage II training config turned into Stage I LoRA on the TI2V layout."""
    config.stage = "stage1_lora"
    config.model = model
    config.lora.enabled = True
    config.csg.noisy_blocks = 3
    config.csg.end_to_end = True
    config.loss.conditioning = "none"
    config.loss.online_degradation = "none"
    config.loss.shift = 5.0  # Wan's sampling shift; noisier training times suit few-step use
    config.optimizer.weight_decay = 0.0
    config.optimizer.ema_decay = 0.0  # adapters are small; no EMA by default
    return config


def _base() -> ml_collections.ConfigDict:
    config = _as_stage1(stage2.get_config("ti2v_5b"), "ti2v_5b")
    config.lora.rank = 32
    config.lora.alpha = 32.0
    config.optimizer.learning_rate = 1e-4
    config.batch_size = 32
    config.num_steps = 5_000
    config.data.synthetic.num_blocks = 21
    config.data.synthetic.height = 22
    config.data.synthetic.width = 40
    return config


def tiny() -> ml_collections.ConfigDict:
    config = _as_stage1(stage2.get_config("tiny"), "tiny")
    config.lora.rank = 4
    config.lora.alpha = 4.0
    return config


PRESETS = {"ti2v_5b": _base, "tiny": tiny}
get_config = presets.dispatch(PRESETS, "ti2v_5b", "stage1_lora")
