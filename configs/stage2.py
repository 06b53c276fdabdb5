"""Stage II training: TI2V-5B widened to concat conditioning, CSG windows, stage-transition z_ref.

    python train.py --config=configs/stage2.py --workdir DIR \
        --config.init_checkpoint=CONVERTED/dit --config.data.path=PREPARED
    python train.py --config=configs/stage2.py:tiny --workdir DIR   # CPU, synthetic data

Presets: `ti2v_5b` (default; the real model, FSDP, needs a converted TI2V-5B `dit` directory
and prepared data) and `tiny` (a 3-layer DiT on synthetic data, random init: runs anywhere).
Choices the paper leaves open (learning rate, batch, steps, timestep sampling) are ours.
"""

import ml_collections
from ml_collections import config_dict

from swifti2v_jax import config_fields, presets
from swifti2v_jax.training.loss import LossConfig
from swifti2v_jax.training.optim import OptimizerConfig


def _base() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "stage2"
    config.seed = 0

    # Model: a DiT preset (swifti2v_jax/presets/dit.py); overrides left None keep its value.
    config.model = "ti2v_5b_concat"
    config.model_overrides = ml_collections.ConfigDict(
        dict(
            # Training a 2K window needs remat (models/dit.py REMAT_POLICIES: 'full' fits
            # v5e-64 and v6e-16, docs/sharding.md) and, on TPU, splash attention; on GPU/CPU
            # set attention_backend='cudnn' / 'chunked' (bounded-memory backward too).
            remat="full",
            attention_backend="splash",
            compute_dtype=config_dict.placeholder(str),
            scan_layers=config_dict.placeholder(bool),
        )
    )
    # A converted TI2V-5B `dit` directory (python -m conversion); its 48-channel patch
    # embedding is widened to 96 with zero weights. None: random init (tiny runs only).
    config.init_checkpoint = config_dict.placeholder(str)
    config.allow_random_init = False  # without init_checkpoint: an error unless True (tiny)
    config.lora = ml_collections.ConfigDict(
        dict(enabled=False, rank=32, alpha=32.0, targets=config_dict.placeholder(str))
    )

    # CSG windows sampled at random segment starts (M noisy blocks, N neighbours).
    config.csg = ml_collections.ConfigDict(dict(noisy_blocks=3, neighbours=1, end_to_end=False))
    # > 0: with this probability an example's neighbours are the model's own output (the
    # records' `generated` latents, added by `python -m swifti2v_jax.data.rollout`).
    config.csg.generated_neighbours = 0.0
    config.text_len = 512
    # The objective and the optimizer: the dataclass defaults (training/loss.py, training/optim.py;
    # e.g. loss.neighbour_noise > 0 noises neighbour blocks, sample with stage2.neighbour_sigma;
    # loss.online_degradation adds latent blur + noise on device to the prepared references).
    config.loss = config_fields.as_section(LossConfig())
    config.optimizer = config_fields.as_section(OptimizerConfig())
    # Global batch over all devices and hosts; -1: `batch_per_device` windows per device
    # (one 17,600-token 2K window per chip is what docs/sharding.md's budget fits).
    config.batch_size = -1
    config.batch_per_device = 1
    config.num_steps = 20_000

    # Data: a folder of shards from swifti2v_jax.data.prepare, or a dataset prepared by the
    # tfds builder (data/tfds_builder.py; its version folder); neither: synthetic records.
    config.data = ml_collections.ConfigDict(
        dict(
            path=config_dict.placeholder(str),
            tfds_dir=config_dict.placeholder(str),
            seed=0,
            worker_count=4,
            synthetic=ml_collections.ConfigDict(
                dict(
                    num_records=256,
                    num_blocks=21,
                    height=88,
                    width=160,
                    channels=48,
                    text_len=64,
                    text_dim=4096,
                    reference_noise=0.1,
                    seed=0,
                )
            ),
        )
    )

    # verify: checksums written at save, checked at restore (docs/faults.md).
    config.checkpoint = ml_collections.ConfigDict(
        dict(every=500, keep=3, use_async=True, verify=True)
    )
    config.log_every = 20
    # A non-finite loss, gradient norm or update stops the run; > 0 skips that many bad batches.
    config.max_nonfinite_skips = 0
    # One 'data' axis over all devices (-1); FSDP shards params, Adam moments and EMA over it.
    # A ('data', 'fsdp') mesh over num_devices (-1: all). fsdp=True: data_size replicas of an
    # FSDP group of the other devices (params, Adam moments, EMA split over it); fsdp=False:
    # all devices data-parallel. The batch is split over both axes (training/sharding.py).
    config.mesh = ml_collections.ConfigDict(
        dict(num_devices=-1, fsdp=True, data_size=1, fsdp_min_size=2**16)
    )
    config.distributed = False  # True: jax.distributed.initialize() (multi-host)
    return config


def tiny() -> ml_collections.ConfigDict:
    """A few-second CPU run on synthetic data (tests, first try on a fresh checkout)."""
    config = _base()
    config.model = "tiny_concat"
    config.model_overrides.attention_backend = "xla"  # 16-token windows: plain attention
    config.model_overrides.remat = "none"
    config.allow_random_init = True
    config.csg.noisy_blocks = 2
    config.csg.neighbours = 1
    config.text_len = 8
    config.loss.online_degradation = "latent_blur_noise"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 2
    config.optimizer.ema_decay = 0.99
    config.batch_size = 8
    config.num_steps = 20
    config.data.worker_count = 0
    config.data.synthetic.num_records = 32
    config.data.synthetic.num_blocks = 5
    config.data.synthetic.height = 4
    config.data.synthetic.width = 4
    config.data.synthetic.text_len = 8
    config.data.synthetic.text_dim = 32
    config.checkpoint.every = 10
    config.log_every = 5
    config.mesh.fsdp = False
    config.mesh.fsdp_min_size = 256
    return config


PRESETS = {"ti2v_5b": _base, "tiny": tiny}
get_config = presets.dispatch(PRESETS, "ti2v_5b", "stage2")
