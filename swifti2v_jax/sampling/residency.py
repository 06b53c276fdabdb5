"""Which model is resident when: the loader and memory policy behind the orchestrator.

The orchestrator (sampling/orchestrator.py) asks a model source for each model when its stage
starts and tells it when a stage is over; the source decides what that costs:

- `ResidentModels`: everything already in memory (tests, evaluation, rollout); nothing is
  loaded or released.
- `CheckpointModels`: loads each model from its converted checkpoint when first asked and, by
  the MemoryOptions, frees it when its stage ends: the text encoder can run on the host CPU,
  the two I2V-A14B experts can take turns on the device, Stage I is released before Stage II.
  Checkpoints shared by both stages (the TI2V-5B DiT or VAE) are loaded once.
- `WarmModels`: like `CheckpointModels`, but every model is loaded once and kept, with the
  Stage II program, for later runs (the web app): a second run of the same shapes loads and
  compiles nothing.

Each source also hands out the Stage II window program (`get_stage2_denoiser`): a new one per
run (one compilation each), or the kept one for `WarmModels`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from swifti2v_jax import checkpoints
from swifti2v_jax.models import layer_streaming
from swifti2v_jax.sampling import stage2
from swifti2v_jax.sampling.clock import StageClock
from swifti2v_jax.sampling.config import PipelineConfig
from swifti2v_jax.sampling.models import ModelPaths


def release(tree) -> None:
    """Frees the device buffers of a parameter tree now (not whenever GC gets to them)."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_deleted():
            leaf.delete()


def load(path: Path, kind: str, dit_weights: str = "native", stream: bool = False):
    """A checkpoint on the device; a DiT quantized to `dit_weights` and, with `stream`, its
    block kernels in host memory (models/layer_streaming.py)."""
    _, params = checkpoints.load(path, kind, quantize=dit_weights)
    return layer_streaming.place(params) if stream else jax.device_put(params)


@dataclasses.dataclass
class ResidentModels:
    """Models already in memory. stage1_dits: (dit,) for TI2V or (high_noise, low_noise);
    text_encoder: a callable prompt -> [L, d] with `.negative(prompt)` (text.PromptEncoder)."""

    stage1_dits: Sequence[Any]
    stage1_vae: Any
    stage2_dit: Any
    vae: Any
    text_encoder: Any = None

    swaps_experts = False

    def get_text_encoder(self):
        return self.text_encoder

    def done_text(self, encoder) -> None:
        pass

    def get_stage1_vae(self):
        return self.stage1_vae

    def get_stage1_dits(self) -> Sequence[Any]:
        return self.stage1_dits

    def expert_loaders(self) -> tuple[Callable[[], Any], ...]:
        return tuple(lambda p=p: p for p in self.stage1_dits)

    def release_expert(self, params) -> None:
        pass

    def done_stage1(self) -> None:
        pass

    def get_vae(self):
        return self.vae

    def get_stage2_dit(self):
        return self.stage2_dit

    def get_stage2_denoiser(self, model_config, csg_config) -> stage2.WindowDenoiser:
        return stage2.WindowDenoiser(model_config, csg_config)


class CheckpointModels:
    """Loads from converted checkpoints when a stage starts and frees by the memory options."""

    def __init__(self, paths: ModelPaths, config: PipelineConfig, clock: StageClock):
        self.paths, self.config, self.clock = paths, config, clock
        self.swaps_experts = config.stage1.backbone == "a14b" and config.memory.swap_stage1_experts
        self._stage1_vae = None
        self._stage1_dits: list = []
        self._stage2_dit = None
        self._stage2_given = None  # the Stage II DiT handed out (never released here)

    def _load_key(self, path: Path, kind: str, stage: str | None) -> tuple:
        """load()'s arguments for the model at `path` used by `stage`."""
        memory = self.config.memory
        weights = memory.dit_weights if kind == "dit" else "native"
        stream = kind == "dit" and memory.stream_layers in (stage, "both")
        return path, kind, weights, stream

    def _load(self, path: Path, kind: str, stage: str | None = None):
        with self.clock("load"):
            return load(*self._load_key(path, kind, stage))

    def get_text_encoder(self):
        from swifti2v_jax.text import PromptEncoder

        with self.clock("load"):
            return PromptEncoder.from_checkpoint(
                self.paths.t5,
                self.paths.tokenizer,
                cache_dir=self.config.text_cache_dir,
                text_len=self.config.text_len,
                device="cpu" if self.config.memory.text_encoder_on_host else None,
            )

    def done_text(self, encoder) -> None:
        release(encoder.params)  # the text encoder is not needed again

    def get_stage1_vae(self):
        self._stage1_vae = self._load(self.paths.stage1_vae, "vae")
        return self._stage1_vae

    def get_stage1_dits(self) -> list:
        """Every Stage I DiT, resident together (empty when the experts take turns)."""
        if not self.swaps_experts:
            self._stage1_dits = [self._load(p, "dit", "stage1") for p in self.paths.stage1]
        return self._stage1_dits

    def expert_loaders(self) -> tuple[Callable[[], Any], ...]:
        return tuple(lambda p=p: self._load(p, "dit", "stage1") for p in self.paths.stage1)

    def release_expert(self, params) -> None:
        release(params)

    def _shared_stage2(self):
        """The resident Stage I DiT that is also Stage II's (same checkpoint, same layout)."""
        paths = self.paths
        same_layout = self.config.memory.stream_layers in ("off", "both")
        if paths.stage2 in paths.stage1 and self._stage1_dits and same_layout:
            return self._stage1_dits[paths.stage1.index(paths.stage2)]
        return None

    def done_stage1(self) -> None:
        """Keeps what Stage II reuses (same checkpoint); frees the rest if release_stage1.
        Streaming runs may have taken the Stage II DiT already (while Stage I was running)."""
        shared = self._shared_stage2()
        if shared is not None and self._stage2_given is None:
            self._stage2_dit = shared
        keep = (self._stage2_dit, self._stage2_given)
        if self.config.memory.release_stage1:
            for params in self._stage1_dits:
                if not any(params is k for k in keep):
                    release(params)
            if self.paths.stage1_vae != self.paths.vae:
                release(self._stage1_vae)
        self._stage1_dits = []

    def get_vae(self):
        if self.paths.vae == self.paths.stage1_vae:  # shared with TI2V-5B: loaded once
            vae, self._stage1_vae = self._stage1_vae, None
            return vae
        return self._load(self.paths.vae, "vae")

    def get_stage2_dit(self):
        params, self._stage2_dit = self._stage2_dit, None
        if params is None:
            params = self._shared_stage2()  # asked for while Stage I is still running
        if params is None:
            params = self._load(self.paths.stage2, "dit", "stage2")
        self._stage2_given = params
        return params

    def get_stage2_denoiser(self, model_config, csg_config) -> stage2.WindowDenoiser:
        return stage2.WindowDenoiser(model_config, csg_config)


def _load_settings(config: PipelineConfig) -> tuple:
    """The settings that change what `WarmModels` holds (not the samplers' settings)."""
    return config.memory, config.text_len, config.text_cache_dir


class WarmModels(CheckpointModels):
    """Loads each model once and keeps it, and one Stage II program per sampler setting, for
    every later run on the same checkpoints (`start_run` begins one).

    Nothing is freed between stages or runs: the models of both stages are resident together
    whatever `release_stage1` says; with `swap_stage1_experts` the I2V-A14B experts still run
    as one program each, as in a `CheckpointModels` run, but both stay loaded.
    """

    def __init__(self, paths: ModelPaths, config: PipelineConfig):
        super().__init__(paths, config, StageClock())
        self._models: dict[tuple, Any] = {}
        self._text_encoder = None
        self._denoisers: dict[tuple, stage2.WindowDenoiser] = {}

    def serves(self, paths: ModelPaths, config: PipelineConfig) -> bool:
        return paths == self.paths and _load_settings(config) == _load_settings(self.config)

    def start_run(self, paths: ModelPaths, config: PipelineConfig, clock: StageClock) -> None:
        """The next run's settings (sampler settings may change) and stage clock."""
        if not self.serves(paths, config):
            raise ValueError("these warm models hold other checkpoints or memory settings")
        self.config, self.clock = config, clock
        self.swaps_experts = config.stage1.backbone == "a14b" and config.memory.swap_stage1_experts

    def _load(self, path: Path, kind: str, stage: str | None = None):
        key = self._load_key(path, kind, stage)
        if key not in self._models:
            self._models[key] = super()._load(path, kind, stage)
        return self._models[key]

    def get_text_encoder(self):
        if self._text_encoder is None:
            self._text_encoder = super().get_text_encoder()
        return self._text_encoder

    def done_text(self, encoder) -> None:
        pass

    def release_expert(self, params) -> None:
        pass

    def done_stage1(self) -> None:
        pass

    def get_stage2_denoiser(self, model_config, csg_config) -> stage2.WindowDenoiser:
        key = (model_config, csg_config)
        if key not in self._denoisers:
            self._denoisers[key] = stage2.WindowDenoiser(model_config, csg_config)
        return self._denoisers[key]
