"""Which converted checkpoints a run uses, and whether they fit together (config files only).

`resolve_model_paths` turns the `checkpoints` section of a sample config into directories;
`inspect_models` reads each checkpoint's config.json and cross-checks them (kinds, channels,
text width, VAE strides) before any weight is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from swifti2v_jax import checkpoints
from swifti2v_jax.csg import contract, inputs
from swifti2v_jax.models import layer_streaming
from swifti2v_jax.models import t5 as t5_lib
from swifti2v_jax.models import vae as vae_lib
from swifti2v_jax.models.dit import DiTConfig
from swifti2v_jax.sampling import stage1_a14b
from swifti2v_jax.sampling.config import PipelineConfig, PipelineError


@dataclasses.dataclass(frozen=True)
class ModelPaths:
    """Converted model directories. stage1 is (dit,) for TI2V or (high_noise, low_noise)."""

    stage1: tuple[Path, ...]
    stage1_vae: Path
    stage2: Path
    vae: Path
    t5: Path
    tokenizer: Path


def resolve_model_paths(checkpoints_config: Mapping, backbone: str) -> ModelPaths:
    """Model directories from a checkpoints config (configs/sample.py `checkpoints`).

    `root` is a `python -m conversion` output (dit/, vae/, t5/, tokenizer/), optionally with a
    trained `stage2/`; Stage II uses root/stage2 if present, else root/dit. `stage1_root`
    (default: root) holds Stage I: dit/ for TI2V or high_noise/ + low_noise/ for I2V-A14B,
    and its own vae/. Each component can be given explicitly instead (`stage1` is then a
    DiT directory for TI2V, or a directory holding high_noise/ and low_noise/ for A14B).
    """

    def get(key: str) -> Path | None:
        value = checkpoints_config.get(key)
        return Path(value).expanduser().absolute() if value else None

    root, stage1_root = get("root"), get("stage1_root") or get("root")

    def need(explicit: Path | None, base: Path | None, sub: str, what: str, flag: str) -> Path:
        if explicit is not None:
            return explicit
        if base is None:
            raise PipelineError(
                f"no {what} checkpoint: pass --checkpoints ROOT (a `python -m conversion` "
                f"output) or --{flag} DIR"
            )
        return base / sub

    explicit_stage1 = get("stage1")
    if backbone == "a14b":
        base = explicit_stage1 or stage1_root
        if base is None:
            raise PipelineError(
                "no Stage I checkpoint: pass --stage1_checkpoints ROOT (the converted "
                "Wan2.2-I2V-A14B, with high_noise/ and low_noise/) or --stage1 DIR"
            )
        stage1_dirs = (base / "high_noise", base / "low_noise")
        if not all(d.is_dir() for d in stage1_dirs):
            raise PipelineError(
                f"no I2V-A14B experts in {base} (expected high_noise/ and low_noise/): pass "
                "--stage1_checkpoints ROOT, a converted Wan2.2-I2V-A14B, or --stage1 DIR"
            )
    else:
        stage1_dirs = (need(explicit_stage1, stage1_root, "dit", "Stage I", "stage1"),)
    stage2 = get("stage2")
    if stage2 is None and root is not None:
        stage2 = root / "stage2" if (root / "stage2").is_dir() else root / "dit"
    stage2 = need(stage2, None, "", "Stage II", "stage2")
    t5_dir = need(get("t5"), root or stage1_root, "t5", "text encoder (umT5)", "t5")
    return ModelPaths(
        stage1=stage1_dirs,
        stage1_vae=need(get("stage1_vae"), stage1_root, "vae", "Stage I VAE", "stage1_vae"),
        stage2=stage2,
        vae=need(get("vae"), root, "vae", "Stage II VAE", "vae"),
        t5=t5_dir,
        tokenizer=get("tokenizer") or t5_dir.parent / "tokenizer",
    )


@dataclasses.dataclass(frozen=True)
class ModelSpecs:
    """The architectures read from the checkpoints' config.json files (no weights loaded)."""

    stage1: DiTConfig
    stage1_vae: vae_lib.VAEConfig
    stage2: DiTConfig
    vae: vae_lib.VAEConfig
    t5: t5_lib.T5Config


def _metadata(path: Path, kind: str, what: str) -> dict:
    try:
        meta = checkpoints.read_metadata(path)
    except checkpoints.CheckpointError as e:
        raise PipelineError(f"{what}: {e}") from None
    if meta.get("kind") != kind:
        raise PipelineError(f"{what}: {path} holds a {meta.get('kind')!r} model, not a {kind!r}")
    return meta


def run_layout(stage1_dit: DiTConfig, stage2: DiTConfig, config: PipelineConfig):
    """The DiT configs as this run uses them: attention backend and layer streaming."""
    if config.attention_backend:
        try:
            stage1_dit = stage1_dit.replace(attention_backend=config.attention_backend)
            stage2 = stage2.replace(attention_backend=config.attention_backend)
        except ValueError as e:
            raise PipelineError(str(e)) from None
    stream = config.memory.stream_layers
    if stream != "off" and not layer_streaming.supports_host_memory():
        raise PipelineError(
            f"memory.stream_layers={stream!r} needs the {layer_streaming.HOST!r} memory kind, "
            "which this backend does not offer; set it to 'off'"
        )
    stage1_dit = stage1_dit.replace(stream_layers=stream in ("stage1", "both"))
    stage2 = stage2.replace(stream_layers=stream in ("stage2", "both"))
    return stage1_dit, stage2


def public_specs(config: PipelineConfig) -> ModelSpecs:
    """The public Wan2.2 architectures a 2K preset runs, as `python -m conversion` stores
    them (bf16 DiT and umT5, fp32 VAEs): for planning without checkpoints."""
    from swifti2v_jax.presets import dit as dit_presets
    from swifti2v_jax.presets import t5 as t5_presets
    from swifti2v_jax.presets import vae as vae_presets

    a14b = config.stage1.backbone == "a14b"
    stage2 = "ti2v_5b_concat" if config.stage2.conditioning == "concat" else "ti2v_5b"
    stage1_dit, stage2_dit = run_layout(
        dit_presets.config("i2v_a14b" if a14b else "ti2v_5b", param_dtype="bfloat16"),
        dit_presets.config(stage2, param_dtype="bfloat16"),
        config,
    )
    return ModelSpecs(
        stage1=stage1_dit,
        stage1_vae=vae_presets.config("wan21" if a14b else "wan22"),
        stage2=stage2_dit,
        vae=vae_presets.config("wan22"),
        t5=t5_presets.config("umt5_xxl"),
    )


def inspect_models(paths: ModelPaths, config: PipelineConfig) -> ModelSpecs:
    """Reads and cross-checks every checkpoint's config; raises PipelineError on a mismatch."""
    try:
        stage1_metas = [_metadata(p, "dit", "Stage I DiT") for p in paths.stage1]
        stage1_configs = [DiTConfig.from_dict(m["config"]) for m in stage1_metas]
        stage2_meta = _metadata(paths.stage2, "dit", "Stage II DiT")
        stage2 = DiTConfig.from_dict(stage2_meta["config"])
        stage1_vae = vae_lib.as_config(_metadata(paths.stage1_vae, "vae", "Stage I VAE")["config"])
        vae = vae_lib.as_config(_metadata(paths.vae, "vae", "Stage II VAE")["config"])
        t5 = t5_lib.T5Config.from_dict(_metadata(paths.t5, "t5", "text encoder")["config"])
    except PipelineError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise PipelineError(f"unreadable checkpoint config: {e}") from None
    if not (paths.tokenizer / "tokenizer.json").is_file():
        raise PipelineError(
            f"tokenizer: no tokenizer.json in {paths.tokenizer} (the conversion writes "
            "OUTPUT/tokenizer/; or pass --tokenizer DIR)"
        )
    if len(stage1_configs) == 2 and stage1_configs[0] != stage1_configs[1]:
        raise PipelineError("the two I2V-A14B experts have different architectures")
    stage1_dit, stage2 = run_layout(stage1_configs[0], stage2, config)
    z1 = stage1_vae.z_dim
    if config.stage1.backbone == "ti2v" and not stage1_dit.in_dim == stage1_dit.out_dim == z1:
        raise PipelineError(
            f"Stage I backbone 'ti2v' needs a DiT with in_dim == out_dim == the Stage I VAE's "
            f"z_dim {z1}; {paths.stage1[0]} has in_dim {stage1_dit.in_dim}, out_dim "
            f"{stage1_dit.out_dim} (an I2V-A14B expert? set --config.stage1.backbone=a14b)"
        )
    if config.stage1.backbone == "a14b" and (
        stage1_dit.out_dim != z1 or stage1_dit.in_dim != 2 * z1 + stage1_a14b.MASK_CHANNELS
    ):
        raise PipelineError(
            f"Stage I backbone 'a14b' needs experts with out_dim {z1} and in_dim "
            f"{2 * z1 + stage1_a14b.MASK_CHANNELS} (the Stage I VAE has z_dim {z1}); got "
            f"in_dim {stage1_dit.in_dim}, out_dim {stage1_dit.out_dim}"
        )
    try:
        inputs.check_conditioning(
            config.stage2.conditioning, stage2.in_dim, stage2.out_dim, vae.z_dim
        )
    except ValueError as e:
        raise PipelineError(f"Stage II {paths.stage2}: {e}") from None
    for name, dit_config in (("Stage I", stage1_dit), ("Stage II", stage2)):
        if dit_config.text_dim != t5.d_model:
            raise PipelineError(
                f"{name} DiT expects text_dim {dit_config.text_dim} but the text encoder "
                f"{paths.t5} produces {t5.d_model}"
            )
    if vae_lib.temporal_factor(stage1_vae) != vae_lib.temporal_factor(vae):
        raise PipelineError("the Stage I and Stage II VAEs have different temporal strides")
    check_contracts(paths, config, stage1_metas, stage2_meta, stage1_vae, vae)
    return ModelSpecs(stage1=stage1_dit, stage1_vae=stage1_vae, stage2=stage2, vae=vae, t5=t5)


def check_contracts(paths: ModelPaths, config: PipelineConfig, stage1_metas, stage2_meta,
                    stage1_vae, vae) -> None:  # fmt: skip
    """Each trained DiT's saved contract (csg/contract.py) against the sampler settings."""
    try:
        for path, meta in zip(paths.stage1, stage1_metas):
            trained = contract.TrainedWith.read(meta)
            if trained is not None:
                trained.check(
                    f"Stage I {path}", text_len=config.text_len,
                    latents_mean=stage1_vae.latents_mean, latents_std=stage1_vae.latents_std,
                )  # fmt: skip
        trained = contract.TrainedWith.read(stage2_meta)
        if trained is not None:
            trained.check(
                f"Stage II {paths.stage2}", text_len=config.text_len,
                latents_mean=vae.latents_mean, latents_std=vae.latents_std,
                window=config.stage2, conditioning=config.stage2.conditioning,
            )  # fmt: skip
    except (contract.ContractError, TypeError) as e:
        raise PipelineError(str(e)) from None
