"""The Stage II training objective: flow matching on the noisy blocks of CSG windows.

A batch holds windows already cut out of clips on the host (data/loader.py, with the layout of
`csg.layout.WindowLayout.sample`): `latents` and `reference` [B, W, h, w, C] (clean latents and
z_ref at the window's blocks), `positions` [B, W] (absolute block indices, the RoPE positions),
`is_noisy` [B, W] bool and `context` [B, L, d]. For one example with flow time s in (0, 1):

    x_s = (1 - s) x0 + s eps on noisy blocks, x0 on context blocks (anchor, neighbours)
    target v = eps - x0, loss = mean over noisy-block elements of (model(x_s) - v)^2

With `neighbour_noise` = a_max > 0, neighbour blocks (context blocks but the anchor) are
noised too, to a ~ U(0, a_max) per example, with timestep 1000 a: at sampling the neighbours
are the model's own imperfect output, and a model trained on clean true neighbours copies
their errors forward segment after segment (sampling then sets `csg.neighbour_sigma`).

The model input follows sampling exactly (`csg.inputs.window_model_input`): `concat` feeds
[x_s, z_ref] on channels, `none` feeds x_s alone (the Stage I / plain TI2V I2V case); noisy
blocks get timestep 1000 s, context blocks 0. Sampling feeds the scheduler's timesteps (also
1000 sigma, floats); training uses the continuous 1000 s without rounding, which covers them.

All randomness is drawn per example from `example_keys` (one key per example, derived from its
index in the GLOBAL batch), so the loss does not depend on how the batch is split over devices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from swifti2v_jax.csg import degradation, inputs, layout

CONDITIONING = ("concat", "none")
TIMESTEP_SAMPLING = ("uniform", "logit_normal")
ONLINE_DEGRADATION = ("none", "latent_blur_noise")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    conditioning: str = "concat"
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # Wan's shift s -> shift s / (1 + (shift - 1) s), applied after sampling
    anchor_dropout: float = 0.0  # probability of hiding the anchor block from attention
    neighbour_noise: float = 0.0  # max noise level of neighbour blocks (see above)
    online_degradation: str = "none"  # extra z_ref degradation applied on device
    degradation_factor: int = 2
    degradation_noise: float = 0.1
    # Stage I continuation (sampling/stage1.py chunks start from `overlap` known latents): each
    # example holds its first k ~ U{1..max_clean_frames} window blocks clean (timestep 0, no
    # loss), the image frame being k = 1. 1 = the plain image-to-video layout.
    max_clean_frames: int = 1
    # The first noisy blocks after the clean ones weigh more in the loss: w on the first,
    # falling linearly to 1 over `leading_span` blocks (1.0 = every noisy block alike). A
    # Stage I that re-renders its input with slightly other colours over its first frames
    # jumps at every chunk seam; these are the frames that decide it.
    leading_weight: float = 1.0
    leading_span: int = 3

    def __post_init__(self):
        if self.conditioning not in CONDITIONING:
            raise ValueError(
                f"conditioning must be one of {CONDITIONING}, got {self.conditioning!r}"
            )
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(
                f"timestep_sampling must be one of {TIMESTEP_SAMPLING}, "
                f"got {self.timestep_sampling!r}"
            )
        if self.online_degradation not in ONLINE_DEGRADATION:
            raise ValueError(
                f"online_degradation must be one of {ONLINE_DEGRADATION}, "
                f"got {self.online_degradation!r}"
            )
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {self.logit_std}")
        if not 0.0 <= self.anchor_dropout <= 1.0:
            raise ValueError(f"anchor_dropout must be in [0, 1], got {self.anchor_dropout}")
        if not 0.0 <= self.neighbour_noise < 1.0:
            raise ValueError(f"neighbour_noise must be in [0, 1), got {self.neighbour_noise}")
        if self.leading_weight < 1.0 or self.leading_span < 1:
            raise ValueError(
                f"leading_weight must be >= 1 and leading_span >= 1, got "
                f"{self.leading_weight} and {self.leading_span}"
            )
        if self.max_clean_frames < 1:
            raise ValueError(f"max_clean_frames must be >= 1, got {self.max_clean_frames}")
        if self.degradation_factor < 1 or self.degradation_noise < 0:
            raise ValueError("degradation_factor must be >= 1 and degradation_noise >= 0")


def sampler_conditioning(conditioning: str) -> str:
    """The loss's conditioning name as csg/inputs.py spells it ('none' feeds x alone)."""
    return "concat" if conditioning == "concat" else "refine"


def check_model(in_dim: int, out_dim: int, config: LossConfig) -> None:
    """The model's channels against the conditioning (csg.inputs.check_conditioning)."""
    inputs.check_conditioning(sampler_conditioning(config.conditioning), in_dim, out_dim)


def shift_time(s: jax.Array, shift: float) -> jax.Array:
    """Wan's timestep shift: pushes s towards 1 (more noise) for shift > 1; identity at 1."""
    return shift * s / (1.0 + (shift - 1.0) * s)


def sample_time(key: jax.Array, config: LossConfig) -> jax.Array:
    """One flow time s in (0, 1) (scalar, fp32)."""
    if config.timestep_sampling == "uniform":
        s = jax.random.uniform(key, (), minval=1e-5, maxval=1.0)
    else:
        s = jax.nn.sigmoid(config.logit_mean + config.logit_std * jax.random.normal(key, ()))
    return shift_time(s, config.shift)


def anchor_hidden_mask(hide: jax.Array, window: int) -> jax.Array:
    """[B, W, W] frame mask. Where `hide`, no block but the anchor itself attends the anchor.

    That is the window without its anchor, at the same shapes (the anchor row keeps its own
    key so softmax never sees an empty row; its output is not in the loss).
    """
    key_is_anchor = jnp.arange(window) == 0
    query_is_anchor = key_is_anchor[:, None]
    blocked = key_is_anchor[None, :] & ~query_is_anchor  # [W, W]
    return ~(hide[:, None, None] & blocked[None])


@dataclasses.dataclass(frozen=True)
class ExampleNoise:
    s: jax.Array  # [B]
    eps: jax.Array  # [B, W, h, w, C]
    reference: jax.Array  # [B, W, h, w, C] z_ref after online degradation
    hide_anchor: jax.Array  # [B] bool
    neighbour_sigma: jax.Array  # [B] noise level of the neighbour blocks


def draw_example_noise(example_keys, batch, config: LossConfig) -> ExampleNoise:
    """All per-example randomness of the objective, one key per example."""

    def one(key, latents, reference, positions):
        k_time, k_eps, k_degrade, k_drop, k_neighbour = jax.random.split(key, 5)
        s = sample_time(k_time, config)
        eps = jax.random.normal(k_eps, latents.shape, jnp.float32)
        if config.online_degradation == "latent_blur_noise":
            reference = degradation.latent_blur_noise(
                k_degrade,
                reference,
                keep=positions == 0,
                factor=config.degradation_factor,
                max_noise=config.degradation_noise,
            )
        hide = jax.random.bernoulli(k_drop, config.anchor_dropout)
        a = jax.random.uniform(k_neighbour, (), maxval=config.neighbour_noise)
        return s, eps, reference, hide, a

    s, eps, reference, hide, a = jax.vmap(one)(
        example_keys,
        batch["latents"].astype(jnp.float32),
        batch["reference"].astype(jnp.float32),
        batch["positions"],
    )
    return ExampleNoise(s=s, eps=eps, reference=reference, hide_anchor=hide, neighbour_sigma=a)


CLEAN_FRAMES_STREAM = 1_000_003  # folded into an example's key: independent of its noise


def with_clean_leading_frames(batch, example_keys, config: LossConfig):
    """The batch with the first k window blocks of each example clean (is_noisy False), k drawn
    per example from U{1..max_clean_frames}; unchanged when max_clean_frames is 1.

    Applied before both the loss and its element count, so clean frames get timestep 0, keep
    their true latents and carry no loss, exactly like the anchor.
    """
    if config.max_clean_frames == 1:
        return batch
    draw = lambda key: jax.random.randint(
        jax.random.fold_in(key, CLEAN_FRAMES_STREAM), (), 1, config.max_clean_frames + 1
    )
    k = jax.vmap(draw)(example_keys)  # [B]
    window = batch["is_noisy"].shape[1]
    leading = jnp.arange(window)[None, :] < k[:, None]
    return {**batch, "is_noisy": batch["is_noisy"].astype(bool) & ~leading}


def block_weights(is_noisy: jax.Array, config: LossConfig | None = None) -> jax.Array:
    """[B, W] float32 loss weight of each window block: 0 on context blocks, 1 on noisy ones,
    and config.leading_weight on the first noisy block, falling linearly to 1 over
    config.leading_span noisy blocks."""
    noisy = is_noisy.astype(bool)
    weights = noisy.astype(jnp.float32)
    if config is None or config.leading_weight == 1.0:
        return weights
    rank = jnp.cumsum(noisy, axis=1) - 1  # 0 at the first noisy block of each example
    ramp = jnp.clip(1.0 - rank / config.leading_span, 0.0, 1.0)
    return weights * (1.0 + (config.leading_weight - 1.0) * ramp)


def noisy_element_count(batch, config: LossConfig | None = None) -> jax.Array:
    """How many latent elements the loss averages over (noisy blocks, weighted by
    `block_weights`), as fp32."""
    per_block = 1
    for size in batch["latents"].shape[2:]:
        per_block *= size
    return jnp.sum(block_weights(batch["is_noisy"], config)) * per_block


def squared_error_sum(apply_fn, params, batch, example_keys, config: LossConfig):
    """Sum over noisy-block elements of (predicted - target velocity)^2 (times the block's
    `block_weights`), fp32 scalar.

    `apply_fn(params, model_input, timesteps, context, positions, mask) -> velocity`.
    Divide by the global `noisy_element_count` for the mean.
    """
    x0 = batch["latents"].astype(jnp.float32)
    is_noisy = batch["is_noisy"].astype(bool)
    noise = draw_example_noise(example_keys, batch, config)
    s = noise.s[:, None, None, None, None]
    a = noise.neighbour_sigma[:, None, None, None, None]
    block_is_noisy = is_noisy[:, :, None, None, None]
    block_is_neighbour = layout.neighbour_mask(is_noisy)[:, :, None, None, None]
    # Noisy and neighbour blocks are distinct blocks: one eps tensor serves both.
    x_context = jnp.where(block_is_neighbour, (1.0 - a) * x0 + a * noise.eps, x0)
    x_s = jnp.where(block_is_noisy, (1.0 - s) * x0 + s * noise.eps, x_context)

    conditioning = sampler_conditioning(config.conditioning)
    model_input, timesteps = inputs.window_model_input(
        x_s,
        noise.reference,
        is_noisy,
        1000.0 * noise.s[:, None],
        conditioning,
        neighbour_timestep=1000.0 * noise.neighbour_sigma[:, None],
    )
    mask = None
    if config.anchor_dropout > 0:
        mask = anchor_hidden_mask(noise.hide_anchor, x0.shape[1])
    velocity = apply_fn(
        params, model_input, timesteps, batch["context"], batch["positions"], mask
    ).astype(jnp.float32)
    error = jnp.square(velocity - (noise.eps - x0))
    weights = block_weights(is_noisy, config)[:, :, None, None, None]
    return jnp.sum(jnp.where(block_is_noisy, error * weights, 0.0))
