"""Wan2.2 DiT checkpoints (original release or diffusers layout) -> swifti2v-jax `dit` directories.

Original layout: `config.json` (class WanModel) + `diffusion_pytorch_model*.safetensors` (+ index),
at the root (TI2V-5B) or in `high_noise_model/` and `low_noise_model/` (A14B).
Diffusers layout: `transformer/` (+ `transformer_2/` = low-noise expert for A14B).

Every tensor name is first brought to the ORIGINAL naming (docs/design.md, "Checkpoint key
maps"), then mapped to a Flax parameter path. Block tensors are written into preallocated
`[num_layers, ...]` buffers, one tensor at a time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from conversion import common
from conversion.jobs import Job
from swifti2v_jax import checkpoints
from swifti2v_jax.models import quant
from swifti2v_jax.models.dit import DiTConfig

# Parameters kept in fp32 whatever --dtype says (norms, modulation tables, time path, head).
_FP32_PATTERNS = ("norm", "modulation", "time_", "head")

# --------------------------------------------------------------------------------------------
# Name mapping: diffusers -> original


_DIFFUSERS_RULES = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("attn1.to_out.0", "self_attn.o"),
    ("attn2.to_out.0", "cross_attn.o"),
    ("attn1.to_", "self_attn."),
    ("attn2.to_", "cross_attn."),
    ("attn1.norm_", "self_attn.norm_"),
    ("attn2.norm_", "cross_attn.norm_"),
]


def diffusers_to_original(name: str) -> str:
    if name == "scale_shift_table":
        return "head.modulation"
    if name.startswith("proj_out."):
        return "head.head." + name[len("proj_out.") :]
    for old, new in _DIFFUSERS_RULES:
        name = name.replace(old, new)
    name = re.sub(r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation", name)
    # diffusers norm2 is the affine cross-attention norm, the original's norm3.
    return re.sub(r"^(blocks\.\d+)\.norm2\.", r"\1.norm3.", name)


def original_to_diffusers(name: str) -> str:
    """The inverse mapping (used by tests to write diffusers-named checkpoints)."""
    if name == "head.modulation":
        return "scale_shift_table"
    if name.startswith("head.head."):
        return "proj_out." + name[len("head.head.") :]
    name = re.sub(r"^(blocks\.\d+)\.modulation$", r"\1.scale_shift_table", name)
    name = re.sub(r"^(blocks\.\d+)\.norm3\.", r"\1.norm2.", name)
    for new, old in reversed(_DIFFUSERS_RULES):
        if old in ("self_attn.", "cross_attn."):
            name = re.sub(rf"{re.escape(old)}([qkv])\.", rf"{new}\1.", name)
        else:
            name = name.replace(old, new)
    return name


# --------------------------------------------------------------------------------------------
# Expected original keys and their Flax destinations


def expected_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    d, pt, ph, pw = config.dim, *config.patch_size
    shapes = {
        "patch_embedding.weight": (d, config.in_dim, pt, ph, pw),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, config.text_dim),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, config.freq_dim),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
        "head.modulation": (1, 2, d),
        "head.head.weight": (pt * ph * pw * config.out_dim, d),
        "head.head.bias": (pt * ph * pw * config.out_dim,),
    }
    for n in range(config.num_layers):
        b = f"blocks.{n}"
        shapes[f"{b}.modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{b}.{attn}.{proj}.weight"] = (d, d)
                shapes[f"{b}.{attn}.{proj}.bias"] = (d,)
            shapes[f"{b}.{attn}.norm_q.weight"] = (d,)
            shapes[f"{b}.{attn}.norm_k.weight"] = (d,)
        shapes[f"{b}.norm3.weight"] = (d,)
        shapes[f"{b}.norm3.bias"] = (d,)
        shapes[f"{b}.ffn.0.weight"] = (config.ffn_dim, d)
        shapes[f"{b}.ffn.0.bias"] = (config.ffn_dim,)
        shapes[f"{b}.ffn.2.weight"] = (d, config.ffn_dim)
        shapes[f"{b}.ffn.2.bias"] = (d,)
    return shapes


_TOP_LEVEL = {
    "patch_embedding.weight": (("patch_embedding_kernel",), common.conv3d),
    "patch_embedding.bias": (("patch_embedding_bias",), None),
    "head.modulation": (("head_modulation",), None),
}
_LINEARS = {
    "text_embedding.0": "text_embedding_0",
    "text_embedding.2": "text_embedding_2",
    "time_embedding.0": "time_embedding_0",
    "time_embedding.2": "time_embedding_2",
    "time_projection.1": "time_projection",
    "head.head": "head",
}


def flax_destination(name: str):
    """Original key -> (flax path, transform, layer index or None)."""
    if name in _TOP_LEVEL:
        path, fn = _TOP_LEVEL[name]
        return path, fn, None
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if match is None:
        module, _, leaf = name.rpartition(".")
        path = (_LINEARS[module], "kernel" if leaf == "weight" else "bias")
        return path, (common.linear if leaf == "weight" else None), None
    layer, rest = int(match.group(1)), match.group(2)
    if rest == "modulation":
        return ("blocks", "modulation"), None, layer
    module, _, leaf = rest.rpartition(".")
    parts = module.split(".")
    if parts[-1] in ("norm_q", "norm_k") or parts[0] == "norm3":
        leaf_name = "scale" if leaf == "weight" else "bias"
        return ("blocks", *parts, leaf_name), None, layer
    if parts[0] == "ffn":
        parts = [f"ffn_{parts[1]}"]
    leaf_name = "kernel" if leaf == "weight" else "bias"
    return ("blocks", *parts, leaf_name), (common.linear if leaf == "weight" else None), layer


def _keeps_fp32(path: tuple[str, ...]) -> bool:
    return any(pattern in part for part in path for pattern in _FP32_PATTERNS)


# --------------------------------------------------------------------------------------------
# Configs


def config_from_json(fields: Mapping, diffusers: bool) -> DiTConfig:
    if diffusers:
        if fields.get("image_dim") or fields.get("added_kv_proj_dim"):
            raise common.ConversionError(
                "this transformer has an image-embedding branch (Wan2.1 I2V/FLF2V); "
                "only Wan2.2 DiTs are supported"
            )
        in_dim = fields.get("in_channels", 16)
        heads = fields.get("num_attention_heads", 40)
        cfg = dict(
            dim=heads * fields.get("attention_head_dim", 128),
            num_heads=heads,
            ffn_dim=fields.get("ffn_dim", 13824),
            num_layers=fields.get("num_layers", 40),
            in_dim=in_dim,
            out_dim=fields.get("out_channels", 16),
            text_dim=fields.get("text_dim", 4096),
            freq_dim=fields.get("freq_dim", 256),
            eps=fields.get("eps", 1e-6),
            patch_size=tuple(fields.get("patch_size", (1, 2, 2))),
            model_type={48: "ti2v", 36: "i2v", 16: "t2v"}.get(in_dim, "ti2v"),
        )
    else:
        cfg = dict(
            dim=fields.get("dim", 2048),
            num_heads=fields.get("num_heads", 16),
            ffn_dim=fields.get("ffn_dim", 8192),
            num_layers=fields.get("num_layers", 32),
            in_dim=fields.get("in_dim", 16),
            out_dim=fields.get("out_dim", 16),
            text_dim=fields.get("text_dim", 4096),
            freq_dim=fields.get("freq_dim", 256),
            eps=fields.get("eps", 1e-6),
            patch_size=tuple(fields.get("patch_size", (1, 2, 2))),
            model_type=fields.get("model_type", "t2v"),
        )
    return DiTConfig(**cfg)


# --------------------------------------------------------------------------------------------
# LoRA merging


_LORA_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
_LORA_SUFFIXES = {
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".alpha": "alpha",
    ".diff": "diff",
    ".diff_b": "diff_b",
}


def load_lora_deltas(path: Path, scale: float, valid: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """A LoRA file -> {original weight/bias name: fp32 delta}; refuses unknown targets."""
    source = common.open_source(Path(path))
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key in source:
        name = key
        for prefix in _LORA_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        for suffix, kind in _LORA_SUFFIXES.items():
            if name.endswith(suffix):
                groups.setdefault(name[: -len(suffix)], {})[kind] = source[key]
                break
        else:
            raise common.ConversionError(f"LoRA {path}: unrecognised tensor {key}")
    deltas, unknown = {}, []
    for module, parts in groups.items():
        weight_name = module + ".weight"
        if weight_name not in valid:
            weight_name = diffusers_to_original(weight_name)
        if weight_name not in valid:
            unknown.append(module)
            continue
        delta = np.zeros(valid[weight_name], np.float32)
        if "up" in parts or "down" in parts:
            if not ("up" in parts and "down" in parts):
                raise common.ConversionError(f"LoRA {path}: {module} lacks its up or down matrix")
            up = parts["up"].astype(np.float32)
            down = parts["down"].astype(np.float32)
            rank = down.shape[0]
            alpha = float(parts["alpha"]) if "alpha" in parts else rank
            low_rank = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
            delta += (alpha / rank) * low_rank.reshape(delta.shape)
        if "diff" in parts:
            delta += parts["diff"].astype(np.float32).reshape(delta.shape)
        deltas[weight_name] = scale * delta
        if "diff_b" in parts:
            bias_name = weight_name[: -len(".weight")] + ".bias"
            deltas[bias_name] = scale * parts["diff_b"].astype(np.float32)
    if unknown:
        raise common.ConversionError(
            f"LoRA {path} targets modules the model does not have: "
            f"{', '.join(sorted(unknown)[:20])}"
        )
    return deltas


# --------------------------------------------------------------------------------------------
# Conversion


def convert_source(
    source: common.TensorSource,
    config: DiTConfig,
    dtype: str = "fp32",
    diffusers: bool = False,
    lora_deltas: Mapping[str, np.ndarray] | None = None,
    what: str = "DiT checkpoint",
):
    """Tensor source -> Flax params (numpy), after checking every key and shape."""
    rename = diffusers_to_original if diffusers else (lambda n: n)
    renamed = _renamed(source, rename)
    shapes = expected_shapes(config)
    common.check_keys(renamed, shapes, what)
    target = common.DTYPES[dtype]
    params: dict = {}
    stacked: dict[tuple[str, ...], np.ndarray] = {}
    for name in renamed:
        path, transform, layer = flax_destination(name)
        tensor = renamed[name]
        if lora_deltas and name in lora_deltas:
            tensor = tensor.astype(np.float32) + lora_deltas[name]
        if transform is not None:
            tensor = transform(tensor)
        tensor_dtype = np.float32 if _keeps_fp32(path) else target
        tensor = common.cast(tensor, tensor_dtype)
        if layer is None:
            common.set_nested(params, path, tensor)
            continue
        if path not in stacked:
            stacked[path] = np.zeros((config.num_layers, *tensor.shape), tensor.dtype)
            common.set_nested(params, path, stacked[path])
        stacked[path][layer] = tensor
    return params


def _renamed(source: common.TensorSource, rename) -> common.RenamedSource:
    return common.RenamedSource(source, {rename(k): k for k in source})


def _read_config(directory: Path) -> dict:
    return common.read_json(directory / "config.json")


def _is_diffusers_transformer(directory: Path) -> bool:
    if not (directory / "config.json").is_file():
        return False
    return _read_config(directory).get("_class_name") == "WanTransformer3DModel"


def _is_original_dit(directory: Path) -> bool:
    if not (directory / "config.json").is_file():
        return False
    fields = _read_config(directory)
    return fields.get("_class_name") == "WanModel" or ("dim" in fields and "num_heads" in fields)


def _job(name: str, directory: Path, diffusers: bool, loras, lora_scale: float) -> Job:
    config = config_from_json(_read_config(directory), diffusers)
    layout = "diffusers" if diffusers else "original"
    what = f"DiT checkpoint {directory} ({layout} layout)"

    def validate():
        source = common.SafetensorsSource.from_dir(directory)
        rename = diffusers_to_original if diffusers else (lambda n: n)
        common.check_keys(_renamed(source, rename), expected_shapes(config), what)
        shapes = expected_shapes(config)
        for lora in loras.get(name, []) + loras.get("*", []):
            load_lora_deltas(lora, lora_scale, shapes)

    def convert(out_dir: Path, dtype: str, quantize: str = "native"):
        shapes = expected_shapes(config)
        deltas: dict[str, np.ndarray] = {}
        for lora in loras.get(name, []) + loras.get("*", []):
            for key, delta in load_lora_deltas(lora, lora_scale, shapes).items():
                deltas[key] = deltas.get(key, 0) + delta
        source = common.SafetensorsSource.from_dir(directory)
        params = convert_source(source, config, dtype, diffusers, deltas, what)
        params = quant.quantize_params(params, quantize)  # blocks' kernels; the rest at dtype
        param_dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
        config_out = config.replace(param_dtype=param_dtype).to_dict()
        checkpoints.write_model_dir(
            out_dir,
            "dit",
            config_out,
            params,
            source=str(directory),
            layout=layout,
            loras=[str(p) for p in loras.get(name, []) + loras.get("*", [])],
            weights=quantize,
        )

    return Job(
        name,
        f"DiT {directory.name or directory} ({layout}, {config.model_type})",
        validate,
        convert,
        quantizable=True,
    )


def parse_loras(specs) -> dict[str, list[Path]]:
    """`PATH` applies to every DiT; `NAME=PATH` to one (dit, high_noise or low_noise)."""
    out: dict[str, list[Path]] = {}
    for spec in specs:
        text = str(spec)
        name, sep, path = text.partition("=")
        if not sep or "/" in name:
            name, path = "*", text
        if name not in ("*", "dit", "high_noise", "low_noise"):
            raise common.ConversionError(
                f"--lora {text}: expert must be dit, high_noise or low_noise"
            )
        if not Path(path).is_file():
            raise common.ConversionError(f"--lora {text}: no such file")
        out.setdefault(name, []).append(Path(path))
    return out


def detect(source: Path, loras=(), lora_scale: float = 1.0) -> list[Job]:
    source = Path(source)
    loras = parse_loras(loras)
    experts = [("high_noise", "high_noise_model"), ("low_noise", "low_noise_model")]
    if all(_is_original_dit(source / sub) for _, sub in experts):
        return [_job(name, source / sub, False, loras, lora_scale) for name, sub in experts]
    if _is_diffusers_transformer(source / "transformer"):
        if _is_diffusers_transformer(source / "transformer_2"):
            return [
                _job("high_noise", source / "transformer", True, loras, lora_scale),
                _job("low_noise", source / "transformer_2", True, loras, lora_scale),
            ]
        return [_job("dit", source / "transformer", True, loras, lora_scale)]
    if _is_diffusers_transformer(source):
        return [_job("dit", source, True, loras, lora_scale)]
    if _is_original_dit(source):
        return [_job("dit", source, False, loras, lora_scale)]
    if loras:
        raise common.ConversionError(f"--lora given but no DiT checkpoint found in {source}")
    return []
