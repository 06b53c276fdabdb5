"""The production programs, built from abstract shapes (nothing allocated) for a TPU target.

Each builder returns (jitted function, abstract arguments with shardings, description). The
sizes are the real ones: a 2K Stage II window is 5 latent blocks of 88 x 160 (2560 x 1408
pixels, 3,520 tokens per block, 17,600 tokens), 512 text tokens of umT5-XXL (4096 dims).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.aot import tpu
from configs import dit as dit_presets
from configs import stage2
from configs import t5 as t5_presets
from configs import vae as vae_presets
from swifti2v_jax.models import dit, t5, vae, vae_chunks
from swifti2v_jax.models.partitioning import DATA, FSDP
from swifti2v_jax.training import dit_training, experiment

WINDOW_BLOCKS = 5
LATENT_2K = (88, 160)  # 1408 x 2560 pixels through the Wan2.2 VAE (16x)
TEXT_LEN = 512


def _struct(shape, dtype, sharding):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _one_chip(target: str) -> Mesh:
    chip = tpu.devices(target)[:1]
    return Mesh(np.array(chip).reshape(1, 1), (DATA, FSDP), axis_types=(AxisType.Auto,) * 2)


def stage2_config(**model_overrides):
    """The shipped configs/stage2.py (default preset), with optional model overrides."""
    config = stage2.get_config()
    for name, value in model_overrides.items():
        config.model_overrides[name] = value
    return config


def train_step(target: str, data_size: int = 1, **model_overrides):
    """The 5B Stage II train step of the shipped config: batch_per_device 2K windows per chip."""
    config = stage2_config(**model_overrides)
    mesh = tpu.mesh(target, data_size)
    experiment.resolve_batch_size(config, mesh)
    program = dit_training.build_program(config, mesh)
    h, w = LATENT_2K
    batch = dit_training.abstract_batch(
        program, config.batch_size, WINDOW_BLOCKS, LATENT_2K, TEXT_LEN
    )
    about = {
        "model": config.model,
        "remat": program.model_config.remat,
        "attention": program.model_config.attention_backend,
        "mesh": dict(mesh.shape),
        "global_batch": config.batch_size,
        "tokens_per_window": WINDOW_BLOCKS * (h // 2) * (w // 2),
    }
    return program.step, (program.abstract_state, batch, program.frozen), about


def _forward(model_config, mesh, frames: int, latent_hw, text_len: int = TEXT_LEN):
    """One DiT forward, bf16 weights, batch 1, replicated on `mesh` (one chip)."""
    replicated = NamedSharding(mesh, P())
    params = jax.tree.map(
        lambda a: _struct(a.shape, a.dtype, replicated), dit.abstract_params(model_config)
    )
    h, w = latent_hw
    args = (
        params,
        _struct((1, frames, h, w, model_config.in_dim), jnp.bfloat16, replicated),
        _struct((1, frames), jnp.float32, replicated),
        _struct((1, text_len, model_config.text_dim), jnp.bfloat16, replicated),
        _struct((1, frames), jnp.int32, replicated),
    )

    def forward(p, latents, timesteps, context, positions):
        return dit.WanDiT(model_config).apply({"params": p}, latents, timesteps, context, positions)

    return jax.jit(forward), args


def window_forward(target: str, conditioning: str = "concat"):
    """Stage II: one denoiser call on a 2K window (5B refine = plain TI2V-5B, or concat)."""
    preset = "ti2v_5b_concat" if conditioning == "concat" else "ti2v_5b"
    model_config = dit.DiTConfig.from_dict(dit_presets.get_config(preset).to_dict()).replace(
        param_dtype="bfloat16", attention_backend="splash"
    )
    fn, args = _forward(model_config, _one_chip(target), WINDOW_BLOCKS, LATENT_2K)
    return fn, args, {"model": preset, "tokens": WINDOW_BLOCKS * 44 * 80, "weights": "bf16"}


def a14b_forward(target: str, frames: int = 81, width: int = 640, height: int = 352):
    """Stage I: one I2V-A14B expert forward (bf16) on a whole 640x352 clip (Wan2.1 VAE, 8x)."""
    model_config = dit.DiTConfig.from_dict(dit_presets.get_config("i2v_a14b").to_dict()).replace(
        param_dtype="bfloat16", attention_backend="splash"
    )
    latent_frames = vae.num_latent_frames(vae.as_config(vae_presets.get_config("wan21")), frames)
    latent_hw = (height // 8, width // 8)
    fn, args = _forward(model_config, _one_chip(target), latent_frames, latent_hw)
    tokens = latent_frames * (latent_hw[0] // 2) * (latent_hw[1] // 2)
    return fn, args, {"model": "i2v_a14b", "frames": frames, "tokens": tokens, "weights": "bf16"}


def _vae_params(config, mesh):
    replicated = NamedSharding(mesh, P())
    abstract = jax.eval_shape(lambda: vae.init_params(config, jax.random.key(0)))
    return jax.tree.map(lambda a: _struct(a.shape, a.dtype, replicated), abstract)


def vae_decode(target: str, tile: int = 0):
    """One steady-state Wan2.2 decoder step at 2K: one latent frame -> 4 pixel frames, with the
    causal cache carried in (tile > 0: one tile x tile latent tile, as sample.py's tiled decode
    runs per tile)."""
    config = vae.as_config(vae_presets.get_config("wan22"))
    mesh = _one_chip(target)
    replicated = NamedSharding(mesh, P())
    h, w = (tile, tile) if tile else LATENT_2K
    latents = _struct((1, 1, h, w, config.z_dim), jnp.float32, replicated)
    params = _vae_params(config, mesh)
    first = functools.partial(vae_chunks._decode_chunk_fn, config=config, first=True)
    cache = jax.eval_shape(lambda p, x: first(p, cache=None, latents=x)[1], params, latents)
    cache = jax.tree.map(lambda a: _struct(a.shape, a.dtype, replicated), cache)

    def step(p, c, x):
        return vae_chunks._decode_chunk_fn(p, config, c, x, False)

    about = {"latent_hw": [h, w], "tiled": bool(tile), "pixels_out": [4, h * 16, w * 16]}
    return jax.jit(step, donate_argnums=1), (params, cache, latents), about


def vae_encode(target: str):
    """One steady-state Wan2.2 encoder step at 2K: 4 pixel frames -> one latent frame."""
    config = vae.as_config(vae_presets.get_config("wan22"))
    mesh = _one_chip(target)
    replicated = NamedSharding(mesh, P())
    h, w = LATENT_2K[0] * 16, LATENT_2K[1] * 16
    first_frame = _struct((1, 1, h, w, 3), jnp.float32, replicated)
    frames = _struct((1, 4, h, w, 3), jnp.float32, replicated)
    params = _vae_params(config, mesh)
    cache = jax.eval_shape(
        lambda p, x: vae_chunks._encode_chunk_fn(p, config, None, x, True)[1], params, first_frame
    )
    cache = jax.tree.map(lambda a: _struct(a.shape, a.dtype, replicated), cache)

    def step(p, c, x):
        return vae_chunks._encode_chunk_fn(p, config, c, x, False)

    return jax.jit(step, donate_argnums=1), (params, cache, frames), {"pixels_in": [4, h, w]}


def vae_encode_tiled(target: str, tile: int = 64, frames: int = 81):
    """The tiled 2K encode as vae.encode(tile_size=tile) runs it, per tile: the scan over the
    encoder chunks of one tile x tile latent tile (tile * 16 pixels) of the whole clip, with
    the tile's video, its cache after chunk 0 and latent frame 0 as arguments. Chunk 0 (one
    frame, the cache's creation) is a smaller program."""
    config = vae.as_config(vae_presets.get_config("wan22"))
    mesh = _one_chip(target)
    replicated = NamedSharding(mesh, P())
    pixels = tile * vae.spatial_factor(config)
    first_frame = _struct((1, 1, pixels, pixels, 3), jnp.float32, replicated)
    rest = _struct((1, frames - 1, pixels, pixels, 3), jnp.float32, replicated)
    params = _vae_params(config, mesh)
    first, cache = jax.eval_shape(
        lambda p, x: vae_chunks._encode_chunk_fn(p, config, None, x, True), params, first_frame
    )
    first, cache = jax.tree.map(lambda a: _struct(a.shape, a.dtype, replicated), (first, cache))

    def scan(p, c, latent0, video):
        return vae_chunks._encode_rest(p, config, c, latent0, video)

    about = {"latent_hw": [tile, tile], "tiled": True, "pixels_in": [frames, pixels, pixels]}
    return jax.jit(scan, donate_argnums=1), (params, cache, first, rest), about


def t5_encode(target: str):
    """umT5-XXL encoder (bf16 weights) on one 512-token prompt."""
    config = t5.T5Config.from_dict(t5_presets.get_config("umt5_xxl").to_dict())
    mesh = _one_chip(target)
    replicated = NamedSharding(mesh, P())
    abstract = jax.eval_shape(lambda: t5.init_params(config, jax.random.key(0)))
    params = jax.tree.map(lambda a: _struct(a.shape, a.dtype, replicated), abstract)
    ids = _struct((1, TEXT_LEN), jnp.int32, replicated)

    def encode(p, input_ids, mask):
        return t5.UMT5Encoder(config).apply({"params": p}, input_ids, mask)

    return jax.jit(encode), (params, ids, ids), {"tokens": TEXT_LEN}


PROGRAMS = {
    "train": train_step,
    "window_concat": functools.partial(window_forward, conditioning="concat"),
    "window_refine": functools.partial(window_forward, conditioning="refine"),
    "a14b": a14b_forward,
    "vae_decode": vae_decode,
    "vae_decode_tiled": functools.partial(vae_decode, tile=44),
    "vae_encode": vae_encode,
    "vae_encode_tiled": vae_encode_tiled,
    "t5": t5_encode,
}
