"""The sampler settings as dataclasses: one field per knob, built from a config by one converter.

`pipeline_config(config)` reads the ml_collections config of presets/sample.py (what
configs/sample.py returns): every PipelineConfig field is taken from the top level of the
config, the nested sections (`stage1`, `stage2`, `memory`) go through
`config_fields.from_fields`, which coerces by annotation and rejects unknown names. Other
top-level fields (image, prompt, output, ...) belong to sample.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from swifti2v_jax import config_fields
from swifti2v_jax.models import quant
from swifti2v_jax.sampling import stage1
from swifti2v_jax.sampling.stage2 import Stage2SamplerConfig

STREAM_CHOICES = ("off", "stage1", "stage2", "both")


class PipelineError(ValueError):
    """A user-fixable problem: a missing or incompatible checkpoint, a bad size or length."""


@dataclasses.dataclass(frozen=True)
class MemoryOptions:
    """One-GPU memory options (the loader policy, sampling/residency.py, applies them).

    text_encoder_on_host: run umT5 on the host CPU (the official --t5_cpu).
    release_stage1: free the Stage I DiT(s) and VAE before Stage II.
    swap_stage1_experts: I2V-A14B with one expert on the device at a time (load the
      high-noise expert, run its steps, free it, then the low-noise one), like the official
      offloading; otherwise both stay resident and run in one program.
    decode_tile_size: Stage II decode in spatial tiles of this many latent pixels (0: off).
    decode_tile_overlap: overlap of neighbouring tiles in latent pixels.
    decode_offload_cache: keep the tiles' decoder caches in host memory, one tile's on the
      device at a time (2K: 12 tiles of 44 hold ~3.5 GB of cache each; host transfers instead).
    encode_tile_size / encode_tile_overlap / encode_offload_cache: the same for the 2K VAE
      encodes (hybrid reference and anchor; vae.StreamingEncoder, one cache per tile).
    dit_weights: 'native' (as converted), or 'int8' / 'fp8': the DiT blocks' kernels
      quantized at load (models/quant.py; a checkpoint converted with --quantize loads as is).
    stream_layers: which DiTs keep their block kernels in host memory and copy one layer per
      scan step to the device (models/layer_streaming.py): 'off', 'stage1', 'stage2' or 'both'.
    decode_chunk_latents: > 0: the tiled decode runs tile-major over chunks of this many
      latent frames (one tile's cache alive at a time, pixels blended in host memory;
      models/vae_streaming.py); 0: frame-major (every tile's cache alive).
    encode_tile_major: the tiled reference encode runs tile-major over each Stage I chunk.
    vae_cache_dtype: tile-major caches carried in host memory from one chunk to the next:
      'float32' (the frame-major output bit for bit) or 'bfloat16' (half the bytes, rounded).
    device_budget_gb / host_budget_gb: > 0: the run checks its memory plan
      (sampling/memory_plan.py) before loading weights and stops if a phase exceeds them.
    """

    text_encoder_on_host: bool = True
    release_stage1: bool = True
    swap_stage1_experts: bool = True
    decode_tile_size: int = 0
    decode_tile_overlap: int = 2
    decode_offload_cache: bool = False
    encode_tile_size: int = 0
    encode_tile_overlap: int = 4
    encode_offload_cache: bool = False
    dit_weights: str = "native"
    stream_layers: str = "off"
    decode_chunk_latents: int = 0
    encode_tile_major: bool = False
    vae_cache_dtype: str = "float32"
    device_budget_gb: float = 0.0
    host_budget_gb: float = 0.0

    @property
    def encode_tiles(self) -> tuple[int, int, bool] | None:
        """(tile_size, tile_overlap, offload_cache) for csg/reference.py; None = untiled."""
        if not self.encode_tile_size:
            return None
        return (self.encode_tile_size, self.encode_tile_overlap, self.encode_offload_cache)

    def __post_init__(self):
        if self.dit_weights not in quant.WEIGHT_FORMATS:
            raise PipelineError(
                f"memory.dit_weights must be one of {quant.WEIGHT_FORMATS}, got "
                f"{self.dit_weights!r}"
            )
        if self.stream_layers not in STREAM_CHOICES:
            raise PipelineError(
                f"memory.stream_layers must be one of {STREAM_CHOICES}, got {self.stream_layers!r}"
            )
        if self.vae_cache_dtype not in ("float32", "bfloat16"):
            raise PipelineError(
                f"memory.vae_cache_dtype must be 'float32' or 'bfloat16', got "
                f"{self.vae_cache_dtype!r}"
            )
        for name in ("decode_chunk_latents", "device_budget_gb", "host_budget_gb"):
            if getattr(self, name) < 0:
                raise PipelineError(f"memory.{name} must be >= 0, got {getattr(self, name)}")
        for kind in ("decode", "encode"):
            size, overlap = (
                getattr(self, f"{kind}_tile_size"),
                getattr(self, f"{kind}_tile_overlap"),
            )
            if size < 0:
                raise PipelineError(f"{kind}_tile_size must be >= 0, got {size}")
            if size and not 0 <= overlap < size:
                raise PipelineError(
                    f"{kind}_tile_overlap must be in [0, {kind}_tile_size), got {overlap} for "
                    f"tile size {size}"
                )


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    stage1: stage1.Stage1Config = stage1.Stage1Config()
    stage2: Stage2SamplerConfig = Stage2SamplerConfig()
    memory: MemoryOptions = MemoryOptions()
    attention_backend: str | None = None  # overrides the checkpoints' DiT attention backend
    text_cache_dir: Path | None = None  # on-disk prompt embedding cache (None: off)
    # Prompt rows fed to the DiTs (zero rows past the prompt): Wan2.2 is trained with 512;
    # a model must be sampled with the length it was trained with.
    text_len: int = 512
    progress: bool = True

    def __post_init__(self):
        if self.text_len < 1:
            raise PipelineError(f"text_len must be >= 1, got {self.text_len}")

    @property
    def needs_negative_prompt(self) -> bool:
        return self.stage1.uses_cfg or self.stage2.guide_scale != 1.0


def pipeline_config(config: Mapping) -> PipelineConfig:
    """PipelineConfig from a sample config (presets/sample.py); PipelineError if invalid."""
    fields = config_fields.as_dict(config)
    wanted = {
        f.name: fields[f.name] for f in dataclasses.fields(PipelineConfig) if f.name in fields
    }
    try:
        return config_fields.from_fields(PipelineConfig, wanted, "config")
    except PipelineError:
        raise
    except ValueError as e:
        raise PipelineError(f"invalid sampler setting: {e}") from None
