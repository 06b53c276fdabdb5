"""sample.py settings (the presets of sample.py and the library): `get_config(preset)`,
preset one of

  demo               (default) the bundled demo models, 128x64, 17 frames (timings, cold
                     and warm: benchmarks/results/sample_timing).
  swifti2v_2k        the paper's setting with public weights: Stage I = Wan2.2-I2V-A14B with the
                     Lightning 4-step LoRAs merged at conversion (640x352, 4 Euler steps,
                     shift 5, no CFG, expert boundary 0.9); Stage II = Wan2.2-TI2V-5B in
                     training-free `refine` mode at 2560x1408, 81 frames, CSG M=3, N=1.
                     Any --frames (4k+1, e.g. 1001): Stage I then runs in chunks of 81.
                     Needs --stage1_checkpoints (converted A14B) and --checkpoints (TI2V-5B).
  swifti2v_2k_ti2v   as above but Stage I is TI2V-5B itself (one conversion, --checkpoints).
  swifti2v_2k_concat as swifti2v_2k with a trained `concat` Stage II (--stage2 DIR).
  swifti2v_2k_24gb   swifti2v_2k on one 24 GB GPU with 64 GB of RAM: int8 DiT weights, the
                     A14B expert resident, umT5 on the host, tile-major 2K VAE (docs/memory.md;
                     `sample.py --plan` prints its whole-run plan, checked before loading).
  swifti2v_2k_16gb   the same on one 16 GB TPU v5e chip: the A14B expert streamed from host
                     memory, smaller decode tiles.

Pick one with `--config=configs/sample.py:swifti2v_2k`; override any field with
`--config.stage2.steps=30` and the like. Command-line flags such as --frames or --resolution
override the matching fields here. The sections `stage1`, `stage2`, `memory` and the top-level
sampler fields become sampling/config.PipelineConfig (`pipeline_config`); a field it does not
know is an error, never silently ignored.
"""

import ml_collections
from ml_collections import config_dict

from swifti2v_jax import config_fields
from swifti2v_jax.presets import dispatch
from swifti2v_jax.presets.dit import DEMO_TEXT_LEN  # the rows the demo DiTs are trained with
from swifti2v_jax.sampling.config import MemoryOptions, PipelineConfig
from swifti2v_jax.sampling.stage1 import Stage1Config
from swifti2v_jax.sampling.stage2 import Stage2SamplerConfig


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = "demo"
    c.image = ""  # '' = the bundled example image
    c.prompt = config_dict.placeholder(str)  # None = the example prompt ('' is refused)
    c.overwrite = True  # an existing --output is replaced (with a notice); False refuses
    c.negative_prompt = ""  # '' = Wan2.2's default negative prompt (when CFG is on)
    c.output = "swifti2v.mp4"
    c.summary = ""  # JSON summary path ('' = none)
    c.seed = 0
    c.frames = 17  # 4k + 1
    c.resolution = "128x64"  # WIDTHxHEIGHT, or 'auto' (image aspect)
    c.max_area = 128 * 64  # for resolution 'auto'
    c.fps = 16.0

    # Converted checkpoints (`python -m conversion` layout); see sampling/models.py
    # resolve_model_paths. All empty = the demo models.
    c.checkpoints = ml_collections.ConfigDict(
        dict(
            root="",  # Stage II root: dit/ (or stage2/), vae/, t5/, tokenizer/
            stage1_root="",  # Stage I root (default: root): dit/ or high_noise/+low_noise/, vae/
            stage1="",
            stage1_vae="",
            stage2="",
            vae="",
            t5="",
            tokenizer="",
        )
    )

    # The sampler sections are the dataclasses' defaults (sampling/stage1.py Stage1Config,
    # sampling/stage2.py, sampling/config.py MemoryOptions: each knob is documented there);
    # the presets below state only what differs.
    c.stage1 = config_fields.as_section(Stage1Config())
    c.stage2 = config_fields.as_section(Stage2SamplerConfig())
    c.memory = config_fields.as_section(MemoryOptions())
    c.attention_backend = ""  # '' = as converted; 'xla', 'cudnn' (GPU) or 'splash' (TPU)
    c.text_cache_dir = ""  # '' = <cache>/text; 'none' = no prompt cache
    c.text_len = PipelineConfig.text_len  # prompt rows: the length the models were trained with
    # Persistent XLA compilation cache: a second run with the same shapes skips compiling.
    c.compilation_cache_dir = ""  # '' = <cache>/jax-compilation-cache; 'none' = off
    c.progress = PipelineConfig.progress
    return c


def demo() -> ml_collections.ConfigDict:
    """Settings for the demo models (configs/demo/*.py, swifti2v_jax/demo/weights): Stage I
    samples 32x16 motion, Stage II runs CSG windows of anchor + 1 neighbour + 1 noisy block,
    as configs/demo/stage2*.py train it. No CFG: the demo models
    train on captions embedded by a random text encoder."""
    c = _base()
    c.text_len = DEMO_TEXT_LEN  # the rows the demo DiTs are trained with
    # Chunks of 17 latents = 17 frames (the demo VAE has no temporal stride), the length the
    # demo Stage I is trained on. Each chunk continues from the previous chunk's last 4
    # frames: the first held, the other 3 regenerated and cross-faded. Holding all of them
    # made the largest frame change at a seam 2.1-2.4x the change inside chunks at every
    # overlap; the cross-fade brings it to 1.33x at 4 (1.55x at 3, 1.22x at 8,
    # benchmarks/results/stage1_seams), while Stage I cost grows as 16/(17 - overlap) per
    # frame. Guiding the regenerated frames until sigma 0.2 keeps them closer to the previous
    # chunk's (mean difference 0.036 against 0.043 unguided), so the fade mixes similar frames.
    # input_residual: the demo VAE reconstructs a detailed photo at 32x16 at about 18 dB, and
    # Stage I's later frames inherit that error; adding it back lifted `sample.py --image`
    # astronaut from 19.5 to 22.0 dB (benchmarks/photo_follows.py's figure, one draw).
    c.stage1.update(
        steps=10, solver="unipc", schedule="unipc", shift=3.0, chunk_latents=17, overlap=4,
        seam_release=0.2, input_residual=True,
    )  # fmt: skip
    # One Euler step from z_ref noised to 0.8: the model's x0 prediction, the estimate
    # closest to the truth in PSNR (more steps draw sharper but less faithful samples),
    # averaged over 8 noise draws (`ensemble`): single draws err each in their own way, which
    # flickered (frame change 0.035 on astronaut, the truth's 0.015). Neighbours enter noised
    # to 0.6. Chosen on validation clips (docs/demo.md), Stage II - bicubic, pipeline,
    # photos / procedural: one draw from 0.9 +1.36 / +1.20 dB (before input_residual);
    # with input_residual (a stronger bicubic) 4 draws from 0.9 +1.14 / +1.22, from 0.8
    # +1.15 / +1.29, 8 draws from 0.8 +1.21 / +1.32. The training rollouts were made with
    # one draw from 0.7 (demo/reproduce.py pins it).
    c.stage2.update(
        noisy_blocks=1, neighbours=1, solver="euler", schedule="euler", steps=1, shift=1.0,
        sigma_start=0.8, neighbour_sigma=0.6, ensemble=8,
    )  # fmt: skip
    return c


def swifti2v_2k() -> ml_collections.ConfigDict:
    c = _base()
    c.preset = "swifti2v_2k"
    c.frames = 81
    c.resolution = "2560x1408"
    c.max_area = 2560 * 1408
    c.fps = 16.0  # the motion comes from the A14B Stage I (16 fps)
    # Stage I: the defaults' 4 Euler steps at shift 5, no CFG, expert boundary 0.9.
    # Clips longer than 81 frames (no upper limit: the streamed pipeline's memory and
    # programs do not depend on the length): chunks of 21 latents, Wan2.2's 81 frames.
    c.stage1.update(backbone="a14b", chunk_latents=21)
    # Stage II: the defaults' 20 UniPC steps at shift 5, from z_ref noised to 0.7, CFG 5.
    c.stage2.update(conditioning="refine", guide_scale=5.0, sigma_start=0.7)
    c.memory.decode_tile_size = 44  # 704-pixel tiles at 2K
    c.memory.decode_tile_overlap = 4
    return c


def swifti2v_2k_ti2v() -> ml_collections.ConfigDict:
    c = swifti2v_2k()
    c.preset = "swifti2v_2k_ti2v"
    c.fps = 24.0
    c.stage1.update(
        backbone="ti2v", steps=20, solver="unipc", schedule="unipc", guide_scale=5.0
    )  # fmt: skip
    return c


def swifti2v_2k_concat() -> ml_collections.ConfigDict:
    c = swifti2v_2k()
    c.preset = "swifti2v_2k_concat"
    c.stage2.update(conditioning="concat", sigma_start=1.0)
    return c


def _workstation_2k(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What both 2K workstation presets change from swifti2v_2k (docs/memory.md): int8 DiT
    weights, umT5 on the host, one A14B expert at a time, and the 2K VAE tile-major: the
    reference encode in 1024-pixel tiles (6) and the decode in chunks of 21 latents (an
    81-frame clip: no cache leaves the device), caches carried between chunks of longer clips
    in host memory as bfloat16; and a memory plan checked before any weight is loaded."""
    c.memory.update(
        dit_weights="int8", encode_tile_size=64, encode_tile_overlap=16, encode_tile_major=True,
        decode_chunk_latents=21, vae_cache_dtype="bfloat16", host_budget_gb=48.0,
    )  # fmt: skip
    return c


def swifti2v_2k_24gb() -> ml_collections.ConfigDict:
    """One 24 GB GPU with 64 GB of RAM: the int8 A14B expert resident (14.9 GB, no
    per-forward streaming), 704-pixel decode tiles (swifti2v_2k's)."""
    c = _workstation_2k(swifti2v_2k())
    c.preset = "swifti2v_2k_24gb"
    c.memory.device_budget_gb = 22.0
    return c


def swifti2v_2k_16gb() -> ml_collections.ConfigDict:
    """One 16 GB TPU v5e chip: the int8 expert streamed layer by layer from pinned host
    memory (resident it needs 16.9 GB), 512-pixel decode tiles (a 704-pixel tile's step
    beside the Stage II DiT is over 15 GB)."""
    c = _workstation_2k(swifti2v_2k())
    c.preset = "swifti2v_2k_16gb"
    c.memory.update(stream_layers="stage1", decode_tile_size=32, device_budget_gb=15.0)
    return c


PRESETS = {
    "demo": demo,
    "swifti2v_2k": swifti2v_2k,
    "swifti2v_2k_ti2v": swifti2v_2k_ti2v,
    "swifti2v_2k_concat": swifti2v_2k_concat,
    "swifti2v_2k_24gb": swifti2v_2k_24gb,
    "swifti2v_2k_16gb": swifti2v_2k_16gb,
}
DEFAULT = "demo"
get_config = dispatch(PRESETS, DEFAULT, "sample")
