"""umT5 encoder: parity with transformers UMT5EncoderModel; converters (original and HF names)."""

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from conversion import common
from conversion import t5 as t5_conversion
from conversion.__main__ import convert as convert_all
from swifti2v_jax import checkpoints
from swifti2v_jax.models.t5 import T5Config, UMT5Encoder, init_params, relative_position_buckets
from swifti2v_jax.presets import t5 as t5_configs

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=100, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=3)


def _hf_model():
    torch.manual_seed(0)
    config = transformers.UMT5Config(
        **TINY,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        attn_implementation="eager",
    )
    model = transformers.UMT5EncoderModel(config).float().eval()
    with torch.no_grad():  # the default init is tiny; make every tensor matter
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_model():
    return _hf_model()


def _original_state_dict(model, dtype=torch.float32):
    out = {}
    for key, value in model.state_dict().items():
        if key == "encoder.embed_tokens.weight":
            continue
        out[t5_conversion.hf_to_original(key)] = value.detach().clone().to(dtype)
    return out


def _write_original(directory: Path, state_dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, directory / t5_conversion.ORIGINAL_FILE)
    return directory


def _convert(source: Path, out: Path, dtype: str = "fp32"):
    jobs = [job for job in t5_conversion.detect(source) if job.name == "t5"]
    assert len(jobs) == 1
    jobs[0].validate()
    jobs[0].convert(out, dtype)
    return checkpoints.load(out, kind="t5")


def _jax_forward(config_dict, params, ids, mask):
    config = T5Config.from_dict(config_dict)
    return np.asarray(UMT5Encoder(config).apply({"params": params}, ids, mask), np.float32)


def _relative_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_relative_buckets_match_transformers(hf_model):
    attention = hf_model.encoder.block[0].layer[0].SelfAttention
    length = 700  # beyond max_distance in both directions
    ours = relative_position_buckets(length, length, 32, 128)
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    theirs = attention._relative_position_bucket(rel).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert ours.min() == 0 and ours.max() == 31


def test_parity_with_transformers(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "src" / "text_encoder")
    config_dict, params = _convert(tmp_path / "src", tmp_path / "t5")
    assert config_dict == {**TINY, "num_buckets": 32, "max_distance": 128, "eps": 1e-6,
                           "dtype": "float32", "param_dtype": "float32"}  # fmt: skip

    rng = np.random.default_rng(0)
    length = 150  # covers exact, log-spaced and capped buckets
    ids = rng.integers(0, TINY["vocab_size"], (3, length)).astype(np.int32)
    unpadded = np.ones_like(ids)
    padded = unpadded.copy()
    padded[1, 40:] = 0
    padded[2, 1:] = 0
    for mask in (unpadded, padded):
        with torch.no_grad():
            expected = hf_model(
                input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)
            ).last_hidden_state.numpy()
        got = _jax_forward(config_dict, params, ids, mask)
        keep = mask.astype(bool)  # padded query rows are discarded by Wan; compare the rest
        error = _relative_error(got[keep], expected[keep])
        assert error <= 1e-4, error
    # The padding really changes the unpadded positions of the padded rows (mask is honoured).
    assert (
        np.abs(got[1, :40] - _jax_forward(config_dict, params, ids, unpadded)[1, :40]).max() > 1e-3
    )


def test_original_layout_matches_transformers_layout(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf" / "text_encoder")
    _, hf_params = _convert(tmp_path / "hf", tmp_path / "hf_out")
    source = _write_original(tmp_path / "orig", _original_state_dict(hf_model))
    config_dict, params = _convert(source, tmp_path / "orig_out")
    assert config_dict["num_layers"] == 3 and config_dict["d_kv"] == 8
    flat_hf, flat = common.flatten(hf_params), common.flatten(params)
    assert flat.keys() == flat_hf.keys()
    for key in flat:
        np.testing.assert_array_equal(flat[key], flat_hf[key])
    assert ("blocks_2", "attn", "relative_bias") in flat


def test_both_tied_embedding_names_accepted(hf_model, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "src" / "text_encoder"
    folder.mkdir(parents=True)
    state = {k: v.detach().clone().contiguous() for k, v in hf_model.state_dict().items()}
    state["encoder.embed_tokens.weight"] = state["shared.weight"].clone()
    save_file(state, folder / "model.safetensors")  # no config.json: shapes only
    _, params = _convert(tmp_path / "src", tmp_path / "out")
    np.testing.assert_array_equal(
        params["token_embedding"]["embedding"], state["shared.weight"].numpy()
    )
    del state["shared.weight"]
    save_file(state, folder / "model.safetensors")
    _, params = _convert(tmp_path / "src", tmp_path / "out2")
    np.testing.assert_array_equal(
        params["token_embedding"]["embedding"],
        state["encoder.embed_tokens.weight"].numpy(),
    )


def test_bf16_checkpoint_keeps_fp32_norms(hf_model, tmp_path):
    source = _write_original(tmp_path / "src", _original_state_dict(hf_model, torch.bfloat16))
    config_dict, params = _convert(source, tmp_path / "t5", dtype="bf16")
    assert config_dict["dtype"] == "bfloat16" and config_dict["param_dtype"] == "bfloat16"
    assert params["blocks_0"]["attn"]["q"]["kernel"].dtype == ml_dtypes.bfloat16
    assert params["blocks_0"]["norm1"]["scale"].dtype == np.float32
    ids = np.arange(20, dtype=np.int32)[None] % TINY["vocab_size"]
    mask = np.ones_like(ids)
    rounded = _hf_model()  # the same model with its weights rounded to bf16 like the file's
    with torch.no_grad():
        for param in rounded.parameters():
            param.copy_(param.to(torch.bfloat16).float())
        expected = rounded(input_ids=torch.from_numpy(ids).long()).last_hidden_state.numpy()
    # The bf16 file read exactly: computed in fp32 it is the rounded model. Measured 2.3e-6.
    exact = _jax_forward(dict(config_dict, dtype="float32"), params, ids, mask)
    assert _relative_error(exact, expected) < 1e-5
    # bf16 activations (residual stream and matmuls) on top. Measured 4.9e-2 relative L2
    # (7.7e-2 max|diff|/max|ref|): this tiny umT5's 0.3-scale weights give attention logits
    # of ~100, where bf16 rounds by ~0.5. Bound 2x the measured L2.
    got = _jax_forward(config_dict, params, ids, mask)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < 0.1


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda sd: sd.pop("blocks.1.attn.q.weight"), "blocks.1.attn.q.weight"),
        (lambda sd: sd.__setitem__("blocks.0.attn.extra.weight", torch.zeros(2)), "attn.extra"),
        (
            lambda sd: sd.__setitem__("blocks.2.ffn.fc2.weight", torch.zeros(32, 65)),
            "blocks.2.ffn.fc2.weight",
        ),
    ],
    ids=["missing", "unexpected", "wrong_shape"],
)
def test_conversion_errors_name_the_key(hf_model, tmp_path, edit, named):
    state = _original_state_dict(hf_model)
    edit(state)
    source = _write_original(tmp_path / "src", state)
    (job,) = [j for j in t5_conversion.detect(source) if j.name == "t5"]
    with pytest.raises(common.ConversionError, match=named.replace(".", r"\.")):
        job.validate()


def test_transformers_layout_errors_use_transformers_names(hf_model, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "src" / "text_encoder"
    folder.mkdir(parents=True)
    state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    del state["encoder.embed_tokens.weight"]
    del state["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
    save_file(state, folder / "model.safetensors")
    (job,) = t5_conversion.detect(tmp_path / "src")
    with pytest.raises(
        common.ConversionError, match=r"encoder\.block\.1\.layer\.1\.DenseReluDense"
    ):
        job.validate()


def test_cli_refuses_broken_checkpoint_and_writes_nothing(hf_model, tmp_path):
    state = _original_state_dict(hf_model)
    del state["norm.weight"]
    source = _write_original(tmp_path / "src", state)
    output = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "conversion", "--source", str(source), "--output", str(output)]
        + ["--only", "t5", "--dtype", "fp32"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "norm.weight" in result.stderr
    assert not output.exists()
    assert list(tmp_path.iterdir()) == [source]  # no leftover temporary directory


def test_driver_converts_encoder_and_tokenizer(hf_model, tmp_path):
    source = _write_original(tmp_path / "src", _original_state_dict(hf_model))
    tokenizer_dir = source / "google" / "umt5-xxl"
    tokenizer_dir.mkdir(parents=True)
    (tokenizer_dir / "tokenizer.json").write_text("{}")
    names = convert_all(source, tmp_path / "out", dtype="fp32", only=("t5",), log=lambda _: None)
    assert sorted(names) == ["t5", "tokenizer"]
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").read_text() == "{}"
    config_dict, _ = checkpoints.load(tmp_path / "out" / "t5", kind="t5")
    assert config_dict["vocab_size"] == TINY["vocab_size"]


def test_tokenizer_folder_without_tokenizer_json_is_refused(tmp_path):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "spiece.model").write_bytes(b"")
    (job,) = t5_conversion.detect(tmp_path)
    with pytest.raises(common.ConversionError, match="tokenizer.json"):
        job.validate()


def test_presets():
    xxl = T5Config.from_dict(t5_configs.get())
    assert (xxl.d_model, xxl.inner_dim, xxl.d_ff, xxl.num_layers) == (4096, 4096, 10240, 24)
    shapes = t5_conversion.expected_shapes(xxl)
    assert len(shapes) == 242  # the release file's tensor count (reference 3.4)
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert abs(total / 1e9 - 5.68) < 0.01
    tiny = T5Config.from_dict(t5_configs.get("tiny"))
    params = init_params(tiny, __import__("jax").random.key(0))
    assert params["blocks_0"]["norm1"]["scale"].dtype == jnp.float32
    with pytest.raises(ValueError, match="unknown T5 preset"):
        t5_configs.get("xl")
