"""What the DiT sees for one CSG window, built the same way by sampling, the loss and the loader.

- `gather_window`: the window's blocks cut out of whole-clip latents and z_ref (numpy on the
  host for the loader, jax on the device for sampling), with their RoPE positions (the
  absolute block indices) and is_noisy flags.
- `window_model_input`: `concat` feeds [latent, z_ref] on channels, `refine` the latent alone;
  noisy blocks get the step's timestep, the anchor (slot 0) timestep 0, neighbours 0 or the
  timestep of their noise level.
- `check_conditioning`: the one rule tying the conditioning mode to the DiT's channels.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from swifti2v_jax.csg import layout

CONDITIONING_MODES = ("concat", "refine")


def channel_factor(conditioning: str) -> int:
    """DiT input channels per latent channel: 2 for `concat` ([x, z_ref]), else 1."""
    return 2 if conditioning == "concat" else 1


def check_conditioning(conditioning: str, in_dim: int, out_dim: int, z_dim: int | None = None):
    """Raises ValueError unless a DiT with (in_dim, out_dim) can run `conditioning` on latents
    of z_dim channels (default: out_dim)."""
    z_dim = out_dim if z_dim is None else z_dim
    factor = channel_factor(conditioning)
    if out_dim == z_dim and in_dim == factor * z_dim:
        return
    hint = "refine" if in_dim == z_dim else "concat"
    raise ValueError(
        f"{conditioning!r} conditioning needs a DiT with in_dim {factor * z_dim} and out_dim "
        f"{z_dim} (z_dim {z_dim}); got in_dim {in_dim}, out_dim {out_dim} (conditioning "
        f"{hint!r} fits this model)"
    )


def gather_window(latents, reference, window: layout.Window):
    """Whole-clip latents and z_ref [..., T, h, w, C] -> the window's blocks [..., W, h, w, C]
    of both, positions int32 [W] and is_noisy bool [W]. numpy in, numpy out; jax likewise."""
    blocks, is_noisy = window.as_arrays()
    return latents[..., blocks, :, :, :], reference[..., blocks, :, :, :], blocks, is_noisy


def window_model_input(
    latents, z_ref, is_noisy, timestep, conditioning: str, neighbour_timestep=0.0
):
    """The DiT input and per-block timesteps of a window.

    latents, z_ref: [B, W, h, w, C]; is_noisy: [W] or [B, W] bool; timestep and
    neighbour_timestep: scalars or [B, 1]. Window slot 0 is the anchor (timestep 0), other
    context slots are neighbours. Returns (model_input [B, W, h, w, C or 2C], timesteps [B, W]).
    """
    if conditioning == "concat":
        model_input = jnp.concatenate([latents, z_ref.astype(latents.dtype)], axis=-1)
    elif conditioning == "refine":
        model_input = latents
    else:
        raise ValueError(f"conditioning must be one of {CONDITIONING_MODES}, got {conditioning!r}")
    context_t = jnp.where(
        layout.neighbour_mask(is_noisy), jnp.asarray(neighbour_timestep, jnp.float32), 0.0
    )
    per_block = jnp.where(is_noisy, jnp.asarray(timestep, jnp.float32), context_t)
    return model_input, jnp.broadcast_to(per_block, latents.shape[:2])


def window_neighbours(latents, own, is_noisy):
    """`latents` with its neighbour slots taken from `own` (the model's generated blocks)."""
    is_neighbour = layout.neighbour_mask(np.asarray(is_noisy))
    return np.where(is_neighbour[..., None, None, None], own, latents)
