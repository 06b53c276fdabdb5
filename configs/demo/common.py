"""What the demo's two DiT trainings share: a configs/stage2.py base with small-run settings."""

import ml_collections

from configs import stage2
from swifti2v_jax.presets.dit import DEMO_TEXT_LEN as TEXT_LEN  # sampling uses the same rows


def dit_training(model: str, num_steps: int) -> ml_collections.ConfigDict:
    """From-scratch training of a demo DiT preset on one host (no FSDP), fp32 weights."""
    config = stage2.get_config("ti2v_5b")
    config.model = model
    config.allow_random_init = True
    # The presets' own remat/attention (the stage2 TPU defaults, splash + remat, are for 2K).
    config.model_overrides.remat = None
    config.model_overrides.attention_backend = None
    config.text_len = TEXT_LEN
    config.optimizer.learning_rate = 5e-4
    config.optimizer.warmup_steps = 100
    config.optimizer.end_learning_rate_ratio = 0.05
    config.optimizer.weight_decay = 0.0
    config.optimizer.ema_decay = 0.995
    config.batch_size = 8
    config.num_steps = num_steps
    config.data.worker_count = 0
    config.checkpoint.every = 500
    config.checkpoint.keep = 2
    config.checkpoint.use_async = False
    config.log_every = 25
    config.mesh.fsdp = False
    return config


def fine_tune(
    config: ml_collections.ConfigDict, num_steps: int, learning_rate: float, warmup_steps: int
) -> ml_collections.ConfigDict:
    """A later phase of a demo DiT: it starts from the previous phase's model, so
    --config.init_checkpoint is required (no random init)."""
    config.num_steps = num_steps
    config.optimizer.learning_rate = learning_rate
    config.optimizer.warmup_steps = warmup_steps
    config.allow_random_init = False
    return config
