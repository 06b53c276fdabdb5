"""Tokenizer, Wan's cut-and-zero-pad rule, the prompt cache and the negative prompt constants.

The tokenizer is trained here with the `tokenizers` library (T5-like specials: <pad>=0, </s>=1,
<unk>=2, a post-processor appending </s>); transformers reads the same file as the oracle.
"""

import os
from pathlib import Path

import jax
import numpy as np
import pytest

from swifti2v_jax import checkpoints, text
from swifti2v_jax.models.t5 import T5Config, UMT5Encoder, init_params
from swifti2v_jax.presets import t5 as t5_configs

SENTENCES = [
    "a cat walks on the beach at sunset",
    "the camera pans slowly over a green field",
    "a dog runs after a red ball",
    "waves crash on the rocks",
    "slow motion, cinematic lighting",
]
PROMPTS = ["a cat on the rocks", "  the dog &amp;amp; the   ball\n", "slow " * 700]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=80, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(SENTENCES * 10, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    folder = tmp_path_factory.mktemp("umt5-tokenizer")
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return text.Tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def model():
    config = T5Config.from_dict(t5_configs.tiny())
    return config, init_params(config, jax.random.key(0))


def test_clean_prompt():
    assert text.clean_prompt("  the dog &amp;amp; the \t ball\n") == "the dog & the ball"
    assert text.clean_prompt("&lt;b&gt;") == "<b>"


def test_tokenizer_matches_transformers(tokenizer, tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_dir / "tokenizer.json"),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    cleaned = [text.clean_prompt(p) for p in PROMPTS]
    expected = reference(
        cleaned,
        padding="max_length",
        truncation=True,
        max_length=512,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="np",
    )
    ids, mask = tokenizer(PROMPTS)
    assert ids.shape == mask.shape == (3, 512) and ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])


def test_tokenizer_ids_truncation_and_padding(tokenizer):
    assert (tokenizer.pad_id, tokenizer.eos_id) == (0, 1)
    ids, mask = tokenizer(PROMPTS)
    lengths = mask.sum(axis=1)
    # Short prompts: tokens, then </s>, then zeros.
    for row in (0, 1):
        n = lengths[row]
        assert 2 < n < 20
        assert ids[row, n - 1] == 1 and (ids[row, : n - 1] >= 2).all()
        assert (ids[row, n:] == 0).all() and (mask[row, n:] == 0).all()
    # An over-long prompt keeps 511 tokens and the </s> (like HF T5).
    assert lengths[2] == 512 and ids[2, -1] == 1 and (ids[2, :-1] != 1).all()
    assert 2 in tokenizer("z")[0][0, :3]  # unknown character -> <unk>
    short_ids, short_mask = tokenizer(PROMPTS[:1], max_length=8)
    assert short_ids.shape == (1, 8) and short_ids[0, short_mask[0].sum() - 1] == 1


def test_tokenizer_refuses_missing_file(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"")
    with pytest.raises(ValueError, match="tokenizer.json"):
        text.Tokenizer(tmp_path)


def test_encode_prompts_cuts_and_zero_pads(model, tokenizer):
    config, params = model
    assert tokenizer.vocab_size <= config.vocab_size
    out = text.encode_prompts(params, config, tokenizer, PROMPTS)
    assert out.shape == (3, 512, config.d_model) and out.dtype == np.float32
    ids, mask = tokenizer(PROMPTS)
    raw = np.asarray(UMT5Encoder(config).apply({"params": params}, ids, mask))
    for row, n in enumerate(mask.sum(axis=1)):
        np.testing.assert_allclose(out[row, :n], raw[row, :n], rtol=1e-4, atol=1e-5)
        assert (np.abs(out[row, :n]).sum(axis=-1) > 0).all()
        assert (out[row, n:] == 0).all()  # exactly zero, not just masked
    assert (np.abs(raw[0, mask[0].sum() :]) > 0).any()  # the encoder itself does not zero them


def _save_tiny_checkpoint(path: Path, params, config):
    checkpoints.save(path, "t5", config.to_dict(), params)
    return path


def test_prompt_encoder_cache(model, tokenizer, tmp_path, monkeypatch):
    config, params = model
    calls = []

    def make(identity):
        encoder = text.PromptEncoder(
            params, config, tokenizer, identity=identity, cache_dir=tmp_path / "cache",
            device="cpu", batch_size=2,
        )  # fmt: skip
        run = encoder._run_encoder
        monkeypatch.setattr(encoder, "_run_encoder", lambda *a: calls.append(1) or run(*a))
        return encoder

    encoder = make("checkpoint-a")
    assert all(
        leaf.devices() == {jax.devices("cpu")[0]} for leaf in jax.tree.leaves(encoder.params)
    )
    first = encoder(PROMPTS)
    assert len(calls) == 2  # 3 prompts in batches of 2
    reference = text.encode_prompts(params, config, tokenizer, PROMPTS)
    np.testing.assert_allclose(first, reference, rtol=1e-4, atol=1e-5)

    calls.clear()
    again = encoder(PROMPTS[::-1])
    assert calls == []  # every prompt came from the cache
    np.testing.assert_array_equal(again, first[::-1])

    other = make("checkpoint-b")
    other(PROMPTS[:1])
    assert calls == [1]  # another checkpoint misses

    calls.clear()
    encoder([PROMPTS[0], "a new prompt"])
    assert calls == [1]  # only the new prompt is encoded

    # A damaged entry is recomputed.
    file = encoder._cache_file(PROMPTS[0])
    file.write_bytes(b"garbage")
    calls.clear()
    np.testing.assert_array_equal(encoder(PROMPTS[:1]), first[:1])
    assert calls == [1]


def test_checkpoint_identity_and_from_checkpoint(model, tokenizer_dir, tmp_path):
    config, params = model
    first = _save_tiny_checkpoint(tmp_path / "a" / "t5", params, config)
    second = _save_tiny_checkpoint(tmp_path / "b" / "t5", params, config)
    identity = text.checkpoint_identity(first)
    assert identity == text.checkpoint_identity(first)
    assert identity != text.checkpoint_identity(second)
    stat = (first / "config.json").stat()
    os.utime(first / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert identity != text.checkpoint_identity(first)  # re-converted in place

    encoder = text.PromptEncoder.from_checkpoint(
        first, tokenizer_dir, cache_dir=tmp_path / "cache", device="cpu"
    )
    assert encoder.identity == text.checkpoint_identity(first)
    out = encoder(PROMPTS[:1])
    tok = text.Tokenizer(tokenizer_dir)
    np.testing.assert_allclose(
        out, text.encode_prompts(params, config, tok, PROMPTS[:1]), rtol=1e-6, atol=1e-7
    )
    with pytest.raises(ValueError, match="config.json"):
        text.checkpoint_identity(tmp_path)


def test_negative_prompt(model, tokenizer, tmp_path):
    assert text.DEFAULT_NEGATIVE_PROMPT.startswith("色调艳丽，过曝，静态，")
    assert text.DEFAULT_NEGATIVE_PROMPT.endswith("三条腿，背景人很多，倒着走")
    assert len(text.DEFAULT_NEGATIVE_PROMPT.split("，")) == 28
    assert text.DEFAULT_NEGATIVE_PROMPT_EN.startswith("Bright tones, overexposed, static")
    config, params = model
    encoder = text.PromptEncoder(params, config, tokenizer, identity="x", device="cpu")
    np.testing.assert_array_equal(encoder.negative(""), encoder([text.DEFAULT_NEGATIVE_PROMPT]))
    np.testing.assert_array_equal(encoder.negative("blurry"), encoder(["blurry"]))


def test_bad_inputs(model, tokenizer):
    config, params = model
    with pytest.raises(ValueError, match="strings"):
        tokenizer([1, 2])
    with pytest.raises(ValueError, match="batch_size"):
        text.PromptEncoder(params, config, tokenizer, identity="x", batch_size=0)
    with pytest.raises(ValueError, match="platform"):
        text.PromptEncoder(params, config, tokenizer, identity="x", device="nonexistent")
