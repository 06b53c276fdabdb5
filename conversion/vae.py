"""Wan2.2 / Wan2.1 VAE checkpoints (original `.pth` or diffusers `vae/`) -> a `vae` model dir.

Original layout: `Wan2.2_VAE.pth` or `Wan2.1_VAE.pth` (plain state dict, read without torch).
Diffusers layout: `vae/config.json` + `vae/diffusion_pytorch_model*.safetensors`.

Original names are first renamed to the diffusers names (docs/design.md, "Checkpoint key maps"); the
architecture (variant, base dims, z_dim, stages, res blocks, temporal downsampling) is inferred
from tensor shapes, so small test checkpoints convert too; then every tensor is checked against
the full expected key/shape table of that architecture and mapped to its Flax parameter path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from conversion import common
from conversion.jobs import Job
from swifti2v_jax import checkpoints
from swifti2v_jax.models.vae import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    WAN22_LATENTS_MEAN,
    WAN22_LATENTS_STD,
    VAEConfig,
)

ORIGINAL_FILES = ("Wan2.2_VAE.pth", "Wan2.1_VAE.pth")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"

# --------------------------------------------------------------------------------------------
# Original -> diffusers names


_COMMON_RULES = [  # (regex, replacement), applied in order to every original name
    (r"^conv1\.", "quant_conv."),
    (r"^conv2\.", "post_quant_conv."),
    (r"^(encoder|decoder)\.conv1\.", r"\1.conv_in."),
    (r"^(encoder|decoder)\.head\.0\.gamma$", r"\1.norm_out.gamma"),
    (r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out."),
    (r"\.middle\.0\.", ".mid_block.resnets.0."),
    (r"\.middle\.2\.", ".mid_block.resnets.1."),
    (r"\.middle\.1\.", ".mid_block.attentions.0."),
    (r"\.residual\.0\.gamma$", ".norm1.gamma"),
    (r"\.residual\.2\.", ".conv1."),
    (r"\.residual\.3\.gamma$", ".norm2.gamma"),
    (r"\.residual\.6\.", ".conv2."),
    (r"\.shortcut\.", ".conv_shortcut."),
]
_RESAMPLE = ("resample.", "time_conv.")


def is_original_layout(names) -> bool:
    return "encoder.conv1.weight" in names


def _original_variant(names) -> str:
    return (
        "wan22"
        if any(n.startswith("encoder.downsamples.0.downsamples.") for n in names)
        else "wan21"
    )


def _original_res_blocks_wan21(names) -> int:
    """Index of the first encoder resample in the flat Wan2.1 Sequential = res blocks per stage."""
    found = [
        int(m.group(1))
        for n in names
        if (m := re.fullmatch(r"encoder\.downsamples\.(\d+)\.resample\.1\.weight", n))
    ]
    if not found:
        raise common.ConversionError(
            "cannot find any encoder.downsamples.K.resample.1.weight: not a Wan VAE checkpoint?"
        )
    return min(found)


def original_to_diffusers(name: str, variant: str, num_res_blocks: int = 2) -> str:
    """One original (Wan-Video) VAE tensor name -> its diffusers AutoencoderKLWan name."""
    if variant == "wan22":
        m = re.match(r"^(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.\w+\.(\d+)\.(.*)$", name)
        if m:
            block, stage, j, rest = m.groups()
            block = "encoder.down_blocks" if block.startswith("encoder") else "decoder.up_blocks"
            sampler = "downsampler" if block.startswith("encoder") else "upsampler"
            if rest.startswith(_RESAMPLE):
                name = f"{block}.{stage}.{sampler}.{rest}"
            else:
                name = f"{block}.{stage}.resnets.{j}.{rest}"
    else:
        name = re.sub(r"^encoder\.downsamples\.", "encoder.down_blocks.", name)
        m = re.match(r"^decoder\.upsamples\.(\d+)\.(.*)$", name)
        if m:
            k, rest = int(m.group(1)), m.group(2)
            per_stage = num_res_blocks + 2  # res blocks + the upsampler
            stage, j = divmod(k, per_stage)
            if rest.startswith(_RESAMPLE):
                name = f"decoder.up_blocks.{stage}.upsamplers.0.{rest}"
            else:
                name = f"decoder.up_blocks.{stage}.resnets.{j}.{rest}"
    for pattern, replacement in _COMMON_RULES:
        name = re.sub(pattern, replacement, name)
    return name


RenamedSource = common.RenamedSource  # re-exported: tests and callers use these names
DictSource = common.DictSource


def as_diffusers_source(source: common.TensorSource) -> common.TensorSource:
    """Original-layout sources are renamed to diffusers names; diffusers ones pass through."""
    names = list(source)
    if not is_original_layout(names):
        return source
    variant = _original_variant(names)
    res_blocks = _original_res_blocks_wan21(names) if variant == "wan21" else 2
    renamed = {}
    for name in names:
        new = original_to_diffusers(name, variant, res_blocks)
        if new in renamed:
            raise common.ConversionError(f"{name} and {renamed[new]} both map to {new}")
        renamed[new] = name
    return RenamedSource(source, renamed)


# --------------------------------------------------------------------------------------------
# Architecture inference (diffusers names)


def infer_config(source: common.TensorSource, latents: Mapping | None = None) -> VAEConfig:
    """The VAEConfig whose parameters have the shapes found in `source` (diffusers names)."""
    names = set(source)

    def shape(name):
        if name not in names:
            raise common.ConversionError(
                f"cannot infer the VAE architecture: tensor {name} is missing"
            )
        return source.shape(name)

    residual = any(n.startswith("encoder.down_blocks.0.resnets.") for n in names)
    base_dim, in_channels = shape("encoder.conv_in.weight")[:2]
    patch = int(round(math.sqrt(in_channels / 3)))
    if 3 * patch * patch != in_channels:
        raise common.ConversionError(
            f"encoder.conv_in takes {in_channels} channels; expected 3*p*p (RGB after patchify)"
        )
    z_dim = shape("post_quant_conv.weight")[0]
    if residual:
        stages = 1 + max(int(re.match(r"encoder\.down_blocks\.(\d+)\.", n).group(1))
                         for n in names if n.startswith("encoder.down_blocks."))  # fmt: skip
        res_blocks = 1 + max(
            int(m.group(1))
            for n in names
            if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", n))
        )

        def stage_key(i, j=0):
            return f"encoder.down_blocks.{i}.resnets.{j}"

        def time_conv(i):
            return f"encoder.down_blocks.{i}.downsampler.time_conv.weight"
    else:
        resamples = sorted(
            int(m.group(1))
            for n in names
            if (m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resample\.1\.weight", n))
        )
        if not resamples:
            raise common.ConversionError("cannot find any encoder.down_blocks.K.resample.1.weight")
        res_blocks = resamples[0]
        stages = len(resamples) + 1

        def stage_key(i, j=0):
            return f"encoder.down_blocks.{i * (res_blocks + 1) + j}"

        def time_conv(i):
            return f"encoder.down_blocks.{i * (res_blocks + 1) + res_blocks}.time_conv.weight"

    stage_dims = [shape(f"{stage_key(i)}.conv1.weight")[0] for i in range(stages)]
    if any(d % base_dim for d in stage_dims):
        raise common.ConversionError(
            f"encoder stage widths {stage_dims} are not multiples of {base_dim}"
        )
    dim_mult = tuple(d // base_dim for d in stage_dims)
    temporal = tuple(time_conv(i) in names for i in range(stages - 1))
    dec_dim = shape("decoder.conv_out.weight")[1] // dim_mult[0]
    variant = "wan22" if residual else "wan21"
    if latents is not None:
        mean, std = latents["latents_mean"], latents["latents_std"]
    elif variant == "wan22" and z_dim == len(WAN22_LATENTS_MEAN):
        mean, std = WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
    elif variant == "wan21" and z_dim == len(WAN21_LATENTS_MEAN):
        mean, std = WAN21_LATENTS_MEAN, WAN21_LATENTS_STD
    else:  # a non-standard latent width without constants: identity normalisation
        mean, std = (0.0,) * z_dim, (1.0,) * z_dim
    try:
        return VAEConfig(
            variant=variant,
            base_dim=base_dim,
            dec_dim=dec_dim,
            z_dim=z_dim,
            dim_mult=dim_mult,
            num_res_blocks=res_blocks,
            temporal_downsample=temporal,
            patch_size=patch,
            latents_mean=tuple(mean),
            latents_std=tuple(std),
        )
    except ValueError as e:
        raise common.ConversionError(f"inferred an invalid VAE config: {e}") from e


# --------------------------------------------------------------------------------------------
# Expected diffusers keys, their PyTorch shapes and Flax destinations


def _squeeze_1x1(w: np.ndarray) -> np.ndarray:
    """Conv2d 1x1 [O, I, 1, 1] -> Dense kernel [I, O]."""
    return np.ascontiguousarray(w[:, :, 0, 0].T)


def _flat(w: np.ndarray) -> np.ndarray:
    return w.reshape(-1)


Entry = tuple[tuple[int, ...], tuple[str, ...], Callable | None]


def expected_layout(config: VAEConfig) -> dict[str, Entry]:
    """diffusers name -> (PyTorch shape, Flax path, layout transform) for every tensor."""
    out: dict[str, Entry] = {}
    wan22 = config.variant == "wan22"

    def conv3(key, path, cout, cin, k=(3, 3, 3)):
        out[f"{key}.weight"] = ((cout, cin, *k), (*path, "kernel"), common.conv3d)
        out[f"{key}.bias"] = ((cout,), (*path, "bias"), None)

    def conv2(key, path, cout, cin):
        out[f"{key}.weight"] = ((cout, cin, 3, 3), (*path, "kernel"), common.conv2d)
        out[f"{key}.bias"] = ((cout,), (*path, "bias"), None)

    def norm(key, path, c, images=False):
        shape = (c, 1, 1) if images else (c, 1, 1, 1)
        out[f"{key}.gamma"] = (shape, (*path, "gamma"), _flat)

    def res(key, path, cin, cout):
        norm(f"{key}.norm1", (*path, "norm1"), cin)
        conv3(f"{key}.conv1", (*path, "conv1"), cout, cin)
        norm(f"{key}.norm2", (*path, "norm2"), cout)
        conv3(f"{key}.conv2", (*path, "conv2"), cout, cout)
        if cin != cout:
            conv3(f"{key}.conv_shortcut", (*path, "conv_shortcut"), cout, cin, (1, 1, 1))

    def mid(key, path, c):
        res(f"{key}.resnets.0", (*path, "resnets_0"), c, c)
        attn, apath = f"{key}.attentions.0", (*path, "attention")
        norm(f"{attn}.norm", (*apath, "norm"), c, images=True)
        for name, cout in (("to_qkv", 3 * c), ("proj", c)):
            out[f"{attn}.{name}.weight"] = ((cout, c, 1, 1), (*apath, name, "kernel"), _squeeze_1x1)
            out[f"{attn}.{name}.bias"] = ((cout,), (*apath, name, "bias"), None)
        res(f"{key}.resnets.1", (*path, "resnets_1"), c, c)

    z, stages, nrb = config.z_dim, len(config.dim_mult), config.num_res_blocks
    conv3("quant_conv", ("quant_conv",), 2 * z, 2 * z, (1, 1, 1))
    conv3("post_quant_conv", ("post_quant_conv",), z, z, (1, 1, 1))

    # Encoder
    dims = [config.base_dim * m for m in (1, *config.dim_mult)]
    conv3("encoder.conv_in", ("encoder", "conv_in"), dims[0], config.in_channels)
    for i in range(stages):
        cin, cout = dims[i], dims[i + 1]
        path = ("encoder", f"down_blocks_{i}")
        for j in range(nrb):
            key = (
                f"encoder.down_blocks.{i}.resnets.{j}"
                if wan22
                else f"encoder.down_blocks.{i * (nrb + 1) + j}"
            )
            res(key, (*path, f"resnets_{j}"), cin, cout)
            cin = cout
        if i != stages - 1:
            key = (
                f"encoder.down_blocks.{i}.downsampler"
                if wan22
                else f"encoder.down_blocks.{i * (nrb + 1) + nrb}"
            )
            conv2(f"{key}.resample.1", (*path, "downsampler"), cout, cout)
            if config.temporal_downsample[i]:
                conv3(
                    f"{key}.time_conv", (*path, "downsampler", "time_conv"), cout, cout, (3, 1, 1)
                )
    mid("encoder.mid_block", ("encoder", "mid_block"), dims[-1])
    norm("encoder.norm_out", ("encoder", "norm_out"), dims[-1])
    conv3("encoder.conv_out", ("encoder", "conv_out"), 2 * z, dims[-1])

    # Decoder
    dims = [config.dec_dim * m for m in (config.dim_mult[-1], *reversed(config.dim_mult))]
    temporal_up = tuple(reversed(config.temporal_downsample))
    conv3("decoder.conv_in", ("decoder", "conv_in"), dims[0], z)
    mid("decoder.mid_block", ("decoder", "mid_block"), dims[0])
    channels = dims[0]
    for i in range(stages):
        cout = dims[i + 1]
        path = ("decoder", f"up_blocks_{i}")
        for j in range(nrb + 1):
            res(f"decoder.up_blocks.{i}.resnets.{j}", (*path, f"resnets_{j}"), channels, cout)
            channels = cout
        if i != stages - 1:
            key = (
                f"decoder.up_blocks.{i}.upsampler"
                if wan22
                else f"decoder.up_blocks.{i}.upsamplers.0"
            )
            up_features = cout if wan22 else cout // 2
            if temporal_up[i]:
                conv3(
                    f"{key}.time_conv", (*path, "upsampler", "time_conv"), 2 * cout, cout, (3, 1, 1)
                )
            conv2(f"{key}.resample.1", (*path, "upsampler"), up_features, cout)
            channels = up_features
    norm("decoder.norm_out", ("decoder", "norm_out"), channels)
    conv3("decoder.conv_out", ("decoder", "conv_out"), config.in_channels, channels)
    return out


# --------------------------------------------------------------------------------------------
# Conversion


def prepare(source: common.TensorSource, latents: Mapping | None = None, what: str = "VAE"):
    """(diffusers-named source, inferred config, expected layout), after checking every key."""
    source = as_diffusers_source(source)
    config = infer_config(source, latents)
    layout = expected_layout(config)
    common.check_keys(source, {k: v[0] for k, v in layout.items()}, what)
    return source, config, layout


def params_from_source(source, dtype: str = "fp32", latents: Mapping | None = None):
    """A VAE state dict (original or diffusers names; a TensorSource or an in-memory mapping of
    arrays / torch tensors) -> (VAEConfig, Flax params). `latents` may carry latents_mean/std."""
    if not isinstance(source, common.TensorSource):
        source = DictSource(source)
    if dtype not in common.DTYPES:
        raise common.ConversionError(f"dtype must be one of {sorted(common.DTYPES)}, got {dtype!r}")
    source, config, layout = prepare(source, latents)
    params: dict = {}
    for key, (_, path, transform) in layout.items():
        value = np.asarray(source[key])
        if transform is not None:
            value = transform(value)
        common.set_nested(params, path, common.cast(value, common.DTYPES[dtype]))
    return config, params


def _diffusers_latents(config_file: Path) -> dict | None:
    if not config_file.is_file():
        return None
    fields = common.read_json(config_file)
    if "latents_mean" in fields and "latents_std" in fields:
        return {"latents_mean": fields["latents_mean"], "latents_std": fields["latents_std"]}
    return None


def _job(path: Path, layout: str) -> Job:
    def open_():
        source = common.open_source(path)
        latents = _diffusers_latents(path / "config.json") if layout == "diffusers" else None
        return source, latents

    def validate():
        source, latents = open_()
        prepare(source, latents, what=f"VAE {path}")

    def convert(out_dir: Path, dtype: str):
        # The VAE runs in fp32 in the original code and its weights are small next to the DiT:
        # keep them fp32 whatever --dtype asks for the transformers.
        del dtype
        source, latents = open_()
        config, params = params_from_source(source, "fp32", latents)
        checkpoints.write_model_dir(
            out_dir, "vae", config.to_dict(), params, source=str(path), layout=layout
        )

    return Job("vae", f"VAE ({layout} layout, {path.name})", validate, convert)


def detect(source: Path) -> list[Job]:
    """A VAE in `source`: Wan2.2_VAE.pth / Wan2.1_VAE.pth (original) or vae/ (diffusers).

    If several are present the diffusers `vae/` wins, then Wan2.2 before Wan2.1 (one `vae` job).
    """
    source = Path(source)
    vae_dir = source / "vae"
    if vae_dir.is_dir() and any(vae_dir.glob(f"{DIFFUSERS_WEIGHTS}*.safetensors")):
        return [_job(vae_dir, "diffusers")]
    for name in ORIGINAL_FILES:
        if (source / name).is_file():
            return [_job(source / name, "original")]
    return []
