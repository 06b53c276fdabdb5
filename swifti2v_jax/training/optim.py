"""AdamW with linear warmup + cosine decay; clipping and EMA are done by the step.

Gradient clipping is not an optax stage here: the steps compute the global norm themselves
(the DiT step: optax.global_norm of the sharded gradients inside its jit, which GSPMD reduces
over the mesh) and share one update rule, state.apply_gradients.
"""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-5
    warmup_steps: int = 500
    decay_steps: int | None = None  # None: decay over the whole run
    end_learning_rate_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # <= 0 disables clipping
    ema_decay: float = 0.9999  # <= 0 disables the EMA

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.end_learning_rate_ratio <= 1.0:
            raise ValueError("end_learning_rate_ratio must be in [0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def learning_rate_schedule(config: OptimizerConfig, num_steps: int) -> optax.Schedule:
    decay_steps = config.decay_steps or num_steps
    decay_steps = max(decay_steps, config.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=decay_steps,
        end_value=config.learning_rate * config.end_learning_rate_ratio,
    )


def _decay_mask(params):
    """Weight decay on matrices only (names ending in 'kernel' or LoRA factors), not on
    biases, norms or modulation tables (layer-stacked biases are 2-D, so ndim cannot decide)."""

    def decide(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return name.endswith("kernel") or name in ("lora_down", "lora_up")

    return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(config: OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
    return optax.adamw(
        learning_rate=learning_rate_schedule(config, num_steps),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=_decay_mask,
    )
