"""VAE converters: original `.pth` and diffusers `vae/` layouts, shape inference, key checks."""

import json
import re

import jax
import numpy as np
import pytest

from conversion import common
from conversion import vae as convert_vae
from conversion.__main__ import convert as convert_all
from swifti2v_jax import checkpoints
from swifti2v_jax.models import vae
from swifti2v_jax.presets import vae as vae_configs

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from tests.test_vae import build_reference, diffusers_kwargs  # noqa: E402

_RES_LEAVES = {
    "norm1.gamma": "residual.0.gamma",
    "norm2.gamma": "residual.3.gamma",
    "conv1.": "residual.2.",
    "conv2.": "residual.6.",
    "conv_shortcut.": "shortcut.",
}
# a residual block in diffusers naming: `...resnets.J.` or a flat Wan2.1 `encoder.down_blocks.K.`
_RES_BLOCK = re.compile(
    r"^(.*\.(?:resnets\.\d+|down_blocks\.\d+))\.(norm1\.gamma|norm2\.gamma|conv1\.|conv2\.|conv_shortcut\.)(.*)$"
)


def diffusers_to_original(name: str, variant: str, num_res_blocks: int) -> str:
    """The inverse of the Wan VAE renaming (docs/design.md, "Checkpoint key maps"), written
    independently of the converter's forward rules so that a mistake in either shows up."""
    top = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2."}
    for new, old in top.items():
        if name.startswith(new):
            return old + name[len(new) :]
    m = _RES_BLOCK.match(name)
    if m:
        name = m.group(1) + "." + _RES_LEAVES[m.group(2)] + m.group(3)
    name = re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", name)
    name = re.sub(r"^(encoder|decoder)\.norm_out\.gamma$", r"\1.head.0.gamma", name)
    name = re.sub(r"^(encoder|decoder)\.conv_out\.", r"\1.head.2.", name)
    name = name.replace(".mid_block.resnets.0.", ".middle.0.")
    name = name.replace(".mid_block.attentions.0.", ".middle.1.")
    name = name.replace(".mid_block.resnets.1.", ".middle.2.")
    if variant == "wan22":
        name = re.sub(
            r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.",
            r"encoder.downsamples.\1.downsamples.\2.",
            name,
        )
        name = re.sub(
            r"^encoder\.down_blocks\.(\d+)\.downsampler\.",
            rf"encoder.downsamples.\1.downsamples.{num_res_blocks}.",
            name,
        )
        name = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
            r"decoder.upsamples.\1.upsamples.\2.",
            name,
        )
        name = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsampler\.",
            rf"decoder.upsamples.\1.upsamples.{num_res_blocks + 1}.",
            name,
        )
    else:
        name = re.sub(r"^encoder\.down_blocks\.", "encoder.downsamples.", name)
        per_stage = num_res_blocks + 2
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)$", name)
        if m:
            stage, _, j, rest = m.groups()
            k = int(stage) * per_stage + (int(j) if j is not None else num_res_blocks + 1)
            name = f"decoder.upsamples.{k}.{rest}"
    return name


def original_state(model, config: vae.VAEConfig) -> dict:
    return {
        diffusers_to_original(k, config.variant, config.num_res_blocks): v.detach().clone()
        for k, v in model.state_dict().items()
    }


def assert_trees_equal(a, b):
    flat_a, flat_b = common.flatten(a), common.flatten(b)
    assert set(flat_a) == set(flat_b)
    for key in flat_a:
        np.testing.assert_array_equal(
            np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=str(key)
        )


# ---------------------------------------------------------------------------------------------
# Full-size key tables, from meta tensors (no data)

DOCUMENTED = {  # the release (ORIGINAL names and PyTorch shapes)
    "wan22": {
        "encoder.conv1.weight": (160, 12, 3, 3, 3),
        "decoder.conv1.weight": (1024, 48, 3, 3, 3),
        "encoder.downsamples.1.downsamples.0.shortcut.weight": (320, 160, 1, 1, 1),
        "encoder.downsamples.1.downsamples.2.time_conv.weight": (320, 320, 3, 1, 1),
        "encoder.downsamples.0.downsamples.2.resample.1.weight": (160, 160, 3, 3),
        "decoder.upsamples.0.upsamples.3.time_conv.weight": (2048, 1024, 3, 1, 1),
        "decoder.upsamples.2.upsamples.3.resample.1.weight": (512, 512, 3, 3),
        "decoder.upsamples.3.upsamples.2.residual.6.weight": (256, 256, 3, 3, 3),
        "encoder.middle.1.norm.gamma": (640, 1, 1),
        "decoder.middle.1.to_qkv.weight": (3072, 1024, 1, 1),
        "encoder.head.0.gamma": (640, 1, 1, 1),
        "encoder.head.2.weight": (96, 640, 3, 3, 3),
        "decoder.head.2.weight": (12, 256, 3, 3, 3),
        "conv1.weight": (96, 96, 1, 1, 1),
        "conv2.weight": (48, 48, 1, 1, 1),
    },
    "wan21": {
        "encoder.conv1.weight": (96, 3, 3, 3, 3),
        "decoder.conv1.weight": (384, 16, 3, 3, 3),
        "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
        "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
        "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
        "encoder.downsamples.10.residual.6.weight": (384, 384, 3, 3, 3),
        "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
        "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
        "decoder.upsamples.14.residual.6.weight": (96, 96, 3, 3, 3),
        "conv1.weight": (32, 32, 1, 1, 1),
        "conv2.weight": (16, 16, 1, 1, 1),
    },
}


@pytest.mark.parametrize("variant,count", [("wan22", 196), ("wan21", 194)])
def test_full_size_key_tables_match_reference(variant, count):
    config = vae.as_config(vae_configs.get(variant))
    with torch.device("meta"):
        model = diffusers.AutoencoderKLWan(**diffusers_kwargs(config))
    diffusers_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    layout = convert_vae.expected_layout(config)
    assert {k: v[0] for k, v in layout.items()} == diffusers_shapes
    original = {
        diffusers_to_original(k, variant, config.num_res_blocks): v
        for k, v in model.state_dict().items()
    }
    assert len(original) == count
    for key, shape in DOCUMENTED[variant].items():
        assert tuple(original[key].shape) == shape, key
    # the converter's own rules rename all of them back, and infer the architecture
    source = convert_vae.DictSource(original)
    renamed, inferred, _ = convert_vae.prepare(source)
    assert set(renamed) == set(diffusers_shapes)
    assert inferred == config


# ---------------------------------------------------------------------------------------------
# Tiny checkpoints on disk


@pytest.mark.parametrize("variant", ["wan22", "wan21"])
def test_original_pth_converts_to_the_same_params(tmp_path, variant):
    model, config, params = build_reference(variant)
    filename = "Wan2.2_VAE.pth" if variant == "wan22" else "Wan2.1_VAE.pth"
    torch.save(original_state(model, config), tmp_path / filename)
    jobs = convert_vae.detect(tmp_path)
    assert [job.name for job in jobs] == ["vae"]
    jobs[0].validate()
    jobs[0].convert(tmp_path / "out", "fp32")
    config_dict, loaded = checkpoints.load(tmp_path / "out", kind="vae")
    assert vae.VAEConfig.from_dict(config_dict) == config
    assert_trees_equal(loaded, params)


def test_diffusers_dir_converts_with_its_latent_constants(tmp_path):
    model, config, params = build_reference("wan22")
    model.save_pretrained(tmp_path / "src" / "vae")
    config_file = tmp_path / "src" / "vae" / "config.json"
    fields = json.loads(config_file.read_text())
    custom = [m + 0.5 for m in config.latents_mean]  # the converter must take them from here
    config_file.write_text(json.dumps({**fields, "latents_mean": custom}))
    names = convert_all(
        tmp_path / "src", tmp_path / "out", dtype="bf16", only=("vae",), log=lambda *_: None
    )
    assert names == ["vae"]
    config_dict, loaded = checkpoints.load(tmp_path / "out" / "vae", kind="vae")
    assert config_dict["latents_mean"] == pytest.approx(custom)
    assert vae.VAEConfig.from_dict(config_dict) == config.replace(latents_mean=tuple(custom))
    # --dtype bf16 is for the transformers: the VAE keeps its fp32 weights exactly.
    for key, value in common.flatten(loaded).items():
        assert value.dtype == np.float32, key
        np.testing.assert_array_equal(value, np.asarray(common.flatten(params)[key]))


def test_detect_prefers_diffusers_then_wan22_and_finds_nothing_elsewhere(tmp_path):
    assert convert_vae.detect(tmp_path) == []
    (tmp_path / "Wan2.1_VAE.pth").write_bytes(b"")
    (tmp_path / "Wan2.2_VAE.pth").write_bytes(b"")
    assert "Wan2.2_VAE.pth" in convert_vae.detect(tmp_path)[0].description


def test_bad_checkpoints_are_refused_with_all_problems_listed():
    model, config, _ = build_reference("wan21")
    state = dict(model.state_dict())
    state.pop("decoder.mid_block.attentions.0.proj.bias")
    state["encoder.conv_out.bias"] = torch.zeros(5)
    state["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(common.ConversionError) as error:
        convert_vae.params_from_source(state)
    message = str(error.value)
    assert "missing keys (1): decoder.mid_block.attentions.0.proj.bias" in message
    assert "unexpected keys (1): decoder.extra.weight" in message
    assert "encoder.conv_out.bias: checkpoint (5,)" in message
    with pytest.raises(common.ConversionError, match="encoder.conv_in.weight is missing"):
        convert_vae.params_from_source({"post_quant_conv.weight": torch.zeros(16, 16, 1, 1, 1)})


def test_converted_params_have_the_init_structure():
    """Conversion output has exactly the structure (and shapes) of the module's own init.
    (That the converted params drive the model like diffusers' is
    tests/test_vae.py::test_encode_decode_match_diffusers.)"""
    for variant in ("wan22", "wan21"):
        _, config, params = build_reference(variant)
        expected = jax.tree.map(lambda x: x.shape, vae.abstract_params(config))
        assert jax.tree.map(lambda x: x.shape, params) == expected
