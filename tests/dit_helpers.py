"""Tiny diffusers Wan transformers and their checkpoints, shared by DiT, CSG and benchmark tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from swifti2v_jax.models.dit import DiTConfig


def diffusers_kwargs(config: DiTConfig) -> dict:
    return dict(
        patch_size=config.patch_size,
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=config.in_dim,
        out_channels=config.out_dim,
        text_dim=config.text_dim,
        freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=config.eps,
    )


def make_diffusers_model(config: DiTConfig, seed: int = 0):
    """A diffusers WanTransformer3DModel with every parameter randomised (norms near 1)."""
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**diffusers_kwargs(config)).float().eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise / max(1.0, param.shape[-1] ** 0.5) * 4)
    return model


def release_names() -> dict[str, str]:
    """Diffusers name -> ORIGINAL name, from the release key table (not from the converter)."""
    table = json.loads((Path(__file__).parent / "data" / "wan22_dit_keys.json").read_text())
    return {d: o for entry in ("ti2v_5b", "i2v_a14b_expert") for o, d, _ in table[entry]["tensors"]}


def original_state_dict(model) -> dict[str, np.ndarray]:
    """The diffusers model's tensors under the ORIGINAL Wan release names (tiny models use a
    subset of the release's block indices, so every name is in the table)."""
    names = release_names()
    return {names[k]: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def write_original_layout(directory: Path, config: DiTConfig, tensors: dict, shards: int = 2):
    """Writes a Wan release-style directory: config.json + sharded safetensors + index."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    fields = dict(
        _class_name="WanModel",
        _diffusers_version="0.33.0",
        model_type=config.model_type,
        dim=config.dim,
        ffn_dim=config.ffn_dim,
        freq_dim=config.freq_dim,
        in_dim=config.in_dim,
        out_dim=config.out_dim,
        num_heads=config.num_heads,
        num_layers=config.num_layers,
        eps=config.eps,
        text_len=512,
        text_dim=config.text_dim,
    )
    (directory / "config.json").write_text(json.dumps(fields))
    names = sorted(tensors)
    weight_map = {}
    for shard in range(shards):
        file = f"diffusion_pytorch_model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: np.ascontiguousarray(tensors[n]) for n in names[shard::shards]}
        save_file(part, str(directory / file))
        weight_map.update({n: file for n in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
