"""The PyTorch side of the GPU check (benchmarks/gpu_check.py): the same DiT forward on the same
weights through the OFFICIAL Wan2.2 model, whose code the user brings as a folder (a clone of
the Wan2.2 repository; nothing of it is in this repository), or else through diffusers'
`WanTransformer3DModel` (the oracle of tests/test_dit.py, which installs offline).

The JAX parameters go to PyTorch under the ORIGINAL Wan key names by inverting the production
converter's name and layout map (conversion/dit.py `flax_destination`), through DLPack, so the
weights never leave the device. Attention: flash-attn when the official code finds it,
PyTorch SDPA otherwise (official: its own `attention` fallback; diffusers: SDPA).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np

from benchmarks.common import DiTProgram
from conversion import common as conversion_common
from conversion import dit as dit_conversion
from swifti2v_jax.models.dit import DiTConfig

OFFICIAL_PACKAGE = "_wan22_official_modules"


def official_model_file(code: Path) -> Path:
    return Path(code) / "wan" / "modules" / "model.py"


def check_official_code(code: Path | None) -> None:
    """One clear line before any work when --wan-code is not a Wan2.2 clone."""
    if code is not None and not official_model_file(code).is_file():
        raise SystemExit(
            f"--wan-code {code}: no wan/modules/model.py there; give a clone of the official "
            "Wan2.2 repository (git clone https://github.com/Wan-Video/Wan2.2)"
        )


def _leaf(params, path: tuple[str, ...], layer: int | None):
    for part in path:
        params = params[part]
    return params if layer is None else params[layer]


def torch_state_dict(params, config: DiTConfig) -> dict:
    """Our Flax DiT parameters as a PyTorch state dict under the original Wan key names (the
    inverse of conversion/dit.py: linear kernels transposed back, the patch embedding back to
    [O, I, D, H, W]). Tensors share the JAX buffers' device (DLPack)."""
    import torch

    out = {}
    for name in dit_conversion.expected_shapes(config):
        path, transform, layer = dit_conversion.flax_destination(name)
        tensor = torch.from_dlpack(_leaf(params, path, layer))
        if transform is conversion_common.linear:
            tensor = tensor.T
        elif transform is conversion_common.conv3d:
            tensor = tensor.permute(4, 3, 0, 1, 2)
        elif transform is not None:
            raise AssertionError(f"no inverse for the transform of {name}")
        out[name] = tensor.contiguous()
    return out


def _import_official(code: Path):
    """wan/modules/model.py (and the attention module it imports) without running
    wan/__init__.py, which imports every pipeline and its dependencies."""
    if OFFICIAL_PACKAGE not in sys.modules:
        package = types.ModuleType(OFFICIAL_PACKAGE)
        package.__path__ = [str(Path(code) / "wan" / "modules")]
        sys.modules[OFFICIAL_PACKAGE] = package
    model = importlib.import_module(f"{OFFICIAL_PACKAGE}.model")
    attention = importlib.import_module(f"{OFFICIAL_PACKAGE}.attention")
    return model, attention


class TorchTwin:
    """A PyTorch Wan DiT holding the JAX run's weights; `forward(program, inputs)` returns a
    zero-argument callable that runs one forward and returns [B, T, H, W, C] on the device."""

    def __init__(self, config: DiTConfig, params, device: str, code: Path | None = None):
        import torch

        self.config = config
        self.device = torch.device(device)
        # bf16 on GPU as the official sampler runs (with autocast); fp32 on CPU (dry run), where
        # the official code's CUDA autocast does not apply.
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        state = torch_state_dict(params, config)
        if code is None:
            self.implementation, self.attention = "diffusers WanTransformer3DModel", "sdpa"
            self.model = self._diffusers(state)
        else:
            self.implementation = f"official Wan2.2 WanModel ({code})"
            self.model = self._official(state, code)
        self.model.eval().requires_grad_(False)

    def _build(self, make, state: dict):
        import torch

        with torch.device(self.device):
            model = make()
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"PyTorch twin keys: missing {missing[:5]}, unexpected "
                               f"{unexpected[:5]}")  # fmt: skip
        if self.dtype == torch.float32:
            return model  # built in fp32
        # As diffusers' from_pretrained(torch_dtype=bf16): the modules it names stay fp32, and so
        # do parameters held outside leaf modules (modulation tables, as in our JAX model).
        keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
        for name, module in model.named_modules():
            if not list(module.children()) and not keep.intersection(name.split(".")):
                module.to(self.dtype)
        return model

    def _diffusers(self, state: dict):
        from diffusers import WanTransformer3DModel

        cfg = self.config
        kwargs = dict(
            patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
            attention_head_dim=cfg.head_dim, in_channels=cfg.in_dim, out_channels=cfg.out_dim,
            text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim,
            num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            eps=cfg.eps,
        )  # fmt: skip
        renamed = {dit_conversion.original_to_diffusers(k): v for k, v in state.items()}
        return self._build(lambda: WanTransformer3DModel(**kwargs), renamed)

    def _official(self, state: dict, code: Path):
        import torch

        model_module, attention_module = _import_official(code)
        if not (attention_module.FLASH_ATTN_2_AVAILABLE or attention_module.FLASH_ATTN_3_AVAILABLE):
            # Their `attention` falls back to torch SDPA (`flash_attention` would assert): in bf16
            # on CUDA and the output in the query's dtype, as their flash_attention; in the
            # query's dtype on a CPU (the fp32 dry run).
            def sdpa(q, k, v, **kwargs):
                dtype = torch.bfloat16 if q.is_cuda else q.dtype
                return attention_module.attention(q, k, v, dtype=dtype, **kwargs).to(q.dtype)

            model_module.flash_attention = sdpa
            self.attention = "sdpa (official attention() fallback, no flash-attn)"
        else:
            self.attention = "flash-attn (official flash_attention)"
        cfg = self.config
        kwargs = dict(
            model_type=cfg.model_type, patch_size=tuple(cfg.patch_size), text_len=512,
            in_dim=cfg.in_dim, dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim,
            text_dim=cfg.text_dim, out_dim=cfg.out_dim, num_heads=cfg.num_heads,
            num_layers=cfg.num_layers, window_size=(-1, -1), qk_norm=True,
            cross_attn_norm=True, eps=cfg.eps,
        )  # fmt: skip
        self.official = True
        return self._build(lambda: model_module.WanModel(**kwargs), state)

    def forward(self, program: DiTProgram, inputs):
        """inputs: the numpy (latents [B,T,H,W,C], per-frame timesteps [B,T], context) of the
        JAX run; diffusers and the official TI2V path take per-token timesteps [B, L]."""
        import torch

        latents, timesteps, context = inputs
        frames = program.latent_grid[0] // program.model.patch_size[0]
        per_token = np.repeat(timesteps, program.tokens // frames, axis=1)
        hidden = torch.from_numpy(latents).permute(0, 4, 1, 2, 3).to(self.device, self.dtype)
        t = torch.from_numpy(per_token).to(self.device)
        text = torch.from_numpy(context).to(self.device, self.dtype)
        official = getattr(self, "official", False)
        autocast = torch.amp.autocast(self.device.type, dtype=self.dtype,
                                      enabled=self.device.type == "cuda")  # fmt: skip

        def run():
            with torch.inference_mode(), autocast:
                if official:
                    out = self.model([hidden[0]], t=t, context=[text[0]], seq_len=program.tokens)
                    out = out[0][None]
                else:
                    out = self.model(hidden_states=hidden, timestep=t,
                                     encoder_hidden_states=text, return_dict=False)[0]  # fmt: skip
            return out.permute(0, 2, 3, 4, 1)

        return run

    def release(self) -> None:
        import torch

        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def torch_versions() -> dict:
    try:
        import torch
    except ImportError:
        return dict(torch=None)
    cuda = torch.version.cuda if torch.cuda.is_available() else None
    return dict(torch=torch.__version__, torch_cuda=cuda)
