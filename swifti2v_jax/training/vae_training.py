"""Training a small Wan-architecture VAE from scratch on procedural videos (the demo VAE).

    python train.py --config=configs/demo/vae.py --workdir runs/demo/vae

Data: a pool of procedural clips (data/procedural.py, seeds `first_seed ..`), optionally with
clips of the training photographs (data/photos.py), rendered once in memory at high and low
resolution; each example is a random `clip_frames`-frame, `crop`-sized
window of one of them (the low-res clips teach the VAE what Stage I frames look like). The
convolutions make the model size-agnostic, so crops train it for full frames.

Objective: L1 + MSE between the video and its reconstruction through the encoder mean (the
deterministic path sampling uses), plus a small L2 pull on the latents so their scale stays
put. The latents are normalised only after training: `export` measures the per-channel mean
and std of the EMA model's latents on full clips and writes them into the VAE config, so
`vae.encode` then yields the zero-mean, unit-variance latents the DiTs are trained on. A
decoder-only run (`train='decoder'`) keeps the initial VAE's statistics, as its latents.

Single device (the demo VAE is small); the loop, checkpoints (Orbax, with the grain iterator)
and metrics are the DiT's (training/loop.py): this module brings the data, step and export.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from swifti2v_jax import checkpoints, config_fields
from swifti2v_jax.data import photos, procedural
from swifti2v_jax.models import vae
from swifti2v_jax.training import checkpointing, loop, optim
from swifti2v_jax.training import state as state_lib

MODEL_DIR = loop.MODEL_DIR  # WORKDIR/model: the exported VAE (checkpoints.save layout)
TRAIN_PARTS = ("all", "decoder")


@dataclasses.dataclass(frozen=True)
class VAEDataConfig:
    num_clips: int = 128
    first_seed: int = 0
    # Clips of the training photographs under camera motion (data/photos.py, seeds
    # first_seed ..), added to the procedural ones.
    photo_clips: int = 0
    frames: int = 17
    height: int = 128
    width: int = 256
    factor: int = 4  # low-res clips are box-downsampled by this factor
    clip_frames: int = 5
    crop_height: int = 32
    crop_width: int = 64
    lowres_fraction: float = 0.25
    seed: int = 0
    worker_count: int = 0

    def validate(self, vae_config: vae.VAEConfig) -> None:
        s, t = vae_config.spatial_factor, vae_config.temporal_factor
        problems = []
        if self.num_clips < 1 or self.photo_clips < 0:
            problems.append(
                f"need num_clips >= 1 and photo_clips >= 0, got {self.num_clips}, "
                f"{self.photo_clips}"
            )
        for name in ("frames", "clip_frames"):
            problem = vae.frame_count_problem(getattr(self, name), t)
            if problem:
                problems.append(f"{name} {problem}")
        if self.clip_frames > self.frames:
            problems.append(
                f"clip_frames must be <= frames ({self.frames}), got {self.clip_frames}"
            )
        if self.height % (s * self.factor) or self.width % (s * self.factor):
            problems.append(
                f"{self.height}x{self.width} must be a multiple of {s * self.factor} (the VAE "
                f"factor {s} times the low-res factor {self.factor})"
            )
        low = (self.height // self.factor, self.width // self.factor)
        if self.crop_height % s or self.crop_width % s:
            problems.append(f"the crop must be a multiple of {s}")
        if self.crop_height > low[0] or self.crop_width > low[1]:
            problems.append(f"the crop must fit the low-res frames {low[0]}x{low[1]}")
        if not 0.0 <= self.lowres_fraction <= 1.0:
            problems.append("lowres_fraction must be in [0, 1]")
        if problems:
            raise ValueError("VAE data config: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class VAELossConfig:
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    latent_weight: float = 1e-4


def vae_config_from(config) -> vae.VAEConfig:
    """The architecture from `config.vae`, with identity normalisation (set at export)."""
    fields = config_fields.as_dict(config.vae)
    z = int(fields["z_dim"])
    fields.update(latents_mean=[0.0] * z, latents_std=[1.0] * z, dtype="float32")
    return config_fields.from_fields(vae.VAEConfig, fields, "vae")


# ---------------------------------------------------------------------------------------------
# Data


def render_pool(data: VAEDataConfig) -> tuple[np.ndarray, np.ndarray]:
    """uint8 clips: high-res [N, F, H, W, 3] and low-res [N, F, H/f, W/f, 3]; the procedural
    clips first, then the photographs (training split only)."""
    high, low = [], []
    size = (data.frames, data.height, data.width, data.factor)
    renders = [(procedural.render_pair, seed) for seed in range(data.num_clips)]
    renders += [(photos.render_pair, seed) for seed in range(data.photo_clips)]
    for render_pair, index in renders:
        hi, lo = render_pair(data.first_seed + index, *size)
        high.append(procedural.to_uint8(hi))
        low.append(procedural.to_uint8(lo))
    return np.stack(high), np.stack(low)


class ClipPool:
    """A grain random-access source over pool indices (the pixels stay in this object)."""

    def __init__(self, high: np.ndarray, low: np.ndarray):
        self.high, self.low = high, low

    def __len__(self) -> int:
        return len(self.high)

    def __getitem__(self, index: int) -> int:
        return int(index)

    def __repr__(self) -> str:  # grain checks it when restoring an iterator
        return f"ClipPool(high={self.high.shape}, low={self.low.shape})"


class RandomCrop(grain.transforms.RandomMap):
    """Pool index -> float32 [clip_frames, crop_h, crop_w, 3] in [-1, 1]."""

    def __init__(self, pool: ClipPool, data: VAEDataConfig):
        self.pool, self.data = pool, data

    def random_map(self, index, rng: np.random.Generator) -> np.ndarray:
        data = self.data
        source = self.pool.low if rng.random() < data.lowres_fraction else self.pool.high
        clip = source[index]
        start = int(rng.integers(0, clip.shape[0] - data.clip_frames + 1))
        y = int(rng.integers(0, clip.shape[1] - data.crop_height + 1))
        x = int(rng.integers(0, clip.shape[2] - data.crop_width + 1))
        window = clip[
            start : start + data.clip_frames, y : y + data.crop_height, x : x + data.crop_width
        ]
        if rng.random() < 0.5:  # horizontal flips: pans and motions in both directions
            window = window[:, :, ::-1]
        return window.astype(np.float32) / 127.5 - 1.0


def make_loader(pool: ClipPool, data: VAEDataConfig, batch_size: int) -> grain.DataLoader:
    sampler = grain.samplers.IndexSampler(
        num_records=len(pool),
        shard_options=grain.sharding.NoSharding(),
        shuffle=True,
        num_epochs=None,
        seed=data.seed,
    )
    operations = [
        RandomCrop(pool, data),
        grain.transforms.Batch(batch_size=batch_size, drop_remainder=True),
    ]
    return grain.DataLoader(
        data_source=pool, sampler=sampler, operations=operations, worker_count=data.worker_count
    )


# ---------------------------------------------------------------------------------------------
# Objective and step


def reconstruction_loss(params, vae_config: vae.VAEConfig, video, loss: VAELossConfig):
    """-> (scalar loss, metrics). `video` [B, F, H, W, 3] in [-1, 1]."""
    latents = vae.encode_frames(params, vae_config, video)
    recon = vae.decode_frames(params, vae_config, latents)
    error = recon - video
    l1 = jnp.mean(jnp.abs(error))
    mse = jnp.mean(jnp.square(error))
    latent_l2 = jnp.mean(jnp.square(latents))
    total = loss.l1_weight * l1 + loss.mse_weight * mse + loss.latent_weight * latent_l2
    psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))  # peak-to-peak 2 in [-1, 1]
    return total, {"l1": l1, "mse": mse, "psnr": psnr, "latent_rms": jnp.sqrt(latent_l2)}


def trainable_mask(params, train: str):
    """1.0 where a parameter trains, 0.0 where it is frozen ('decoder': the encoder and
    quant_conv are frozen, so the latents, and data sets encoded with them, stay valid)."""
    if train not in TRAIN_PARTS:
        raise ValueError(f"train must be one of {TRAIN_PARTS}, got {train!r}")
    frozen = ("encoder", "quant_conv") if train == "decoder" else ()

    def part(name, subtree):
        value = 0.0 if name in frozen else 1.0
        return jax.tree.map(lambda _: value, subtree)

    return {name: part(name, subtree) for name, subtree in params.items()}


def make_train_step(
    vae_config, loss: VAELossConfig, optimizer, grad_clip: float, ema: float, mask=None
):
    def step(state: state_lib.TrainState, video):
        grad_fn = jax.value_and_grad(reconstruction_loss, has_aux=True)
        (total, values), grads = grad_fn(state.params, vae_config, video, loss)
        if mask is not None:  # frozen parameters: no gradient, so no share of the clipping
            grads = jax.tree.map(lambda g, m: g * m, grads, mask)
        grad_norm = optax.global_norm(grads)
        new_state = state_lib.apply_gradients(
            state, grads, grad_norm, optimizer, grad_clip, ema, update_mask=mask
        )
        new_state, nonfinite = state_lib.guard_nonfinite(state, new_state, total, grad_norm)
        return new_state, {"loss": total, "grad_norm": grad_norm, "nonfinite": nonfinite, **values}

    return jax.jit(step, donate_argnums=(0,))


# ---------------------------------------------------------------------------------------------
# Export


def latent_statistics(params, vae_config, clips: np.ndarray, batch: int = 4):
    """Per-channel mean and std of the (unnormalised) latents of uint8 clips [N, F, H, W, 3]."""
    encode = jax.jit(lambda p, v: vae.encode_frames(p, vae_config, v))
    total = total_sq = count = 0.0
    for start in range(0, len(clips), batch):
        video = jnp.asarray(clips[start : start + batch], jnp.float32) / 127.5 - 1.0
        z = np.asarray(encode(params, video), np.float64).reshape(-1, vae_config.z_dim)
        total, total_sq, count = total + z.sum(0), total_sq + (z**2).sum(0), count + len(z)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean, std


def export(
    params, vae_config: vae.VAEConfig, pool: ClipPool, out_dir: Path, statistics=None, **meta
) -> Path:
    """Writes the normalised VAE (fp32) as a model directory `vae.encode` / sample.py load.
    statistics: (mean, std) to keep (a frozen encoder's), else measured on the pool."""
    mean, std = statistics or latent_statistics(params, vae_config, pool.high[:16])
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    logging.info("latent statistics: |mean| %.3f, std %.3f", np.abs(mean).mean(), std.mean())
    fields = dataclasses.asdict(vae_config)
    fields.update(latents_mean=[float(m) for m in mean], latents_std=[float(s) for s in std])
    return checkpoints.save(out_dir, "vae", fields, params, **meta)


# ---------------------------------------------------------------------------------------------
# The loop


def initial_params(config, vae_config: vae.VAEConfig):
    """-> (params, latent statistics to export with or None). Random, or `init_checkpoint` (a
    VAE model directory of the same architecture). A decoder-only run keeps the initial
    VAE's (mean, std): its frozen encoder keeps its latents, and measured again on another
    pool they would drift, and every DiT trained on those latents with them."""
    path = config.get("init_checkpoint")
    decoder_only = config.get("train", "all") == "decoder"
    if not path and decoder_only:
        raise ValueError("train='decoder' fine-tunes a trained VAE: set config.init_checkpoint")
    if not path:
        return vae.init_params(vae_config, jax.random.PRNGKey(config.seed)), None
    fields, params = checkpoints.load(path, kind="vae")
    loaded = vae.as_config(fields)
    same = dataclasses.replace(
        loaded, latents_mean=vae_config.latents_mean, latents_std=vae_config.latents_std
    )
    if same != vae_config:
        raise ValueError(f"{path} is a different VAE architecture than config.vae")
    return params, ((loaded.latents_mean, loaded.latents_std) if decoder_only else None)


def train(config, workdir: Path) -> int:
    """A demo-VAE training run on the shared loop (training/loop.py); returns the last step."""
    vae_config = vae_config_from(config)
    data = config_fields.from_fields(VAEDataConfig, config.data, "data")
    data.validate(vae_config)
    loss = config_fields.from_fields(VAELossConfig, config.loss, "loss")
    opt_config = config_fields.from_fields(optim.OptimizerConfig, config.optimizer, "optimizer")
    loop.check_config(config)

    start = time.time()
    pool = ClipPool(*render_pool(data))
    logging.info("rendered %d clips (%d photographs) in %.1f s", len(pool), data.photo_clips,
                 time.time() - start)  # fmt: skip
    optimizer = optim.make_optimizer(opt_config, config.num_steps)
    use_ema = opt_config.ema_decay > 0
    params, statistics = initial_params(config, vae_config)
    mask = trainable_mask(params, config.get("train", "all"))
    create = lambda p: state_lib.create_state(p, optimizer, config.seed, use_ema)
    step_fn = make_train_step(
        vae_config, loss, optimizer, opt_config.grad_clip, opt_config.ema_decay, mask
    )

    def export_final(state, step: int, out_dir: Path):
        final = state.ema_params if use_ema else state.params
        out = export(
            jax.device_get(final), vae_config, pool, out_dir, statistics,
            trained_steps=step, source="train.py --config=configs/demo/vae.py",
        )  # fmt: skip
        logging.info("exported the VAE to %s", out)

    task = loop.Task(
        abstract_state=checkpointing.abstract_like(jax.eval_shape(create, params)),
        init_state=lambda: create(params),
        data_iterator=iter(make_loader(pool, data, config.batch_size)),
        train_step=lambda state, video: step_fn(state, jnp.asarray(video)),
        learning_rate=optim.learning_rate_schedule(opt_config, config.num_steps),
        export=export_final,
    )
    return loop.run(task, config, workdir)
