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


def _base() -> ml_collections.ConfigDict:
    config = stage2.get_config("ti2v_5b")
    config.stage = "stage1_lora"
    config.model = "ti2v_5b"
    config.lora.enabled = True
    config.lora.rank = 32
    config.lora.alpha = 32.0
    config.csg.end_to_end = True
    config.loss.conditioning = "none"
    config.loss.online_degradation = "none"
    config.loss.shift = 5.0  # Wan's sampling shift; noisier training times suit few-step use
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 0.0
    config.optimizer.ema_decay = 0.0  # adapters are small; no EMA by default
    config.batch_size = 32
    config.num_steps = 5_000
    config.data.synthetic.num_blocks = 21
    config.data.synthetic.height = 22
    config.data.synthetic.width = 40
    return config


def tiny() -> ml_collections.ConfigDict:
    config = _base()
    tiny_stage2 = stage2.get_config("tiny")
    config.model = "tiny"
    config.model_overrides.attention_backend = "xla"
    config.model_overrides.remat = "none"
    config.allow_random_init = True
    config.text_len = tiny_stage2.text_len
    config.data = tiny_stage2.data
    config.lora.rank = 4
    config.lora.alpha = 4.0
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 2
    config.batch_size = 8
    config.num_steps = 20
    config.checkpoint.every = 10
    config.log_every = 5
    config.mesh.fsdp = False
    config.mesh.fsdp_min_size = 256
    return config


PRESETS = {"ti2v_5b": _base, "tiny": tiny}


def get_config(preset: str = "ti2v_5b") -> ml_collections.ConfigDict:
    preset = preset or "ti2v_5b"
    if preset not in PRESETS:
        raise ValueError(f"unknown stage1_lora preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]()
