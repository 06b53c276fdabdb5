"""Prompts -> umT5 context embeddings [B, 512, d_model], with Wan2.2's exact semantics.

Wan cleans the text, tokenizes it to 512 ids (`</s>` appended, `<pad>` = 0 after it), runs the
encoder on all 512 positions with the padding mask, then keeps each prompt's first
`true length` rows (EOS included) and zero-pads back to 512. The DiT attends to all 512 rows,
so the zeros matter: do not hand it the encoder's raw output at padded positions.

`PromptEncoder` wraps this for sampling and data preparation: one compiled program, an
on-disk cache keyed by prompt and checkpoint, and the option to run on the host CPU while
the DiT owns the accelerator (the official `--t5_cpu`).
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from swifti2v_jax.models.t5 import T5Config, UMT5Encoder

TEXT_LEN = 512

# The official Wan2.2 default (`sample_neg_prompt` in wan/configs), substituted when the user's
# negative prompt is empty. Diffusers pipelines default to an empty negative prompt instead.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
# The English rendering used by the diffusers docs and MaxDiffusion configs.
DEFAULT_NEGATIVE_PROMPT_EN = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, "
    "images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, "
    "incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people "
    "in the background, walking backwards"
)


def clean_prompt(text: str) -> str:
    """Wan's `whitespace` cleaning: ftfy fix (when installed), HTML unescape twice, collapse spaces.

    Without ftfy, mojibake is not repaired; width/ligature differences are normalised by the
    umT5 tokenizer's own NFKC normalizer anyway.
    """
    try:
        import ftfy
    except ImportError:  # optional: not a dependency of this package
        pass
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class Tokenizer:
    """The umT5 tokenizer from a HF `tokenizer.json`, with T5's `add_special_tokens` semantics.

    `path` is a tokenizer folder (the checkpoint's `google/umt5-xxl/`, a diffusers `tokenizer/`,
    or a converted `OUTPUT/tokenizer/`) or the `tokenizer.json` file itself.
    """

    def __init__(self, path: str | os.PathLike, text_len: int = TEXT_LEN, clean: bool = True):
        import tokenizers

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            hint = ""
            if (path / "spiece.model").is_file():
                hint = (
                    " (only spiece.model is there; write tokenizer.json once with transformers: "
                    "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))"
                )
            raise ValueError(f"no tokenizer.json in {path}{hint}")
        if text_len < 1:
            raise ValueError(f"text_len must be >= 1, got {text_len}")
        self._tokenizer = tokenizers.Tokenizer.from_file(str(file))
        # Truncation, EOS and padding are done below, whatever the file configures.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.pad_id = self._special_id("<pad>", file)
        self.eos_id = self._special_id("</s>", file)
        self.text_len = text_len
        self.clean = clean
        self.fingerprint = hashlib.sha256(file.read_bytes()).hexdigest()

    def _special_id(self, token: str, file: Path) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{file} has no {token} token; is it a T5 tokenizer?")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def count(self, text: str) -> int:
        """Tokens `text` takes with its `</s>` (before the cut at text_len)."""
        text = clean_prompt(text) if self.clean else text
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids) + 1

    def __call__(
        self, texts: str | Sequence[str], max_length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> ids [B, max_length] int32 and mask [B, max_length] int32 (1 = token).

        Like HF T5 with padding='max_length', truncation=True: at most max_length - 1 text
        tokens, then `</s>`, then `<pad>` up to max_length.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("prompts must be strings")
        max_length = self.text_len if max_length is None else max_length
        if self.clean:
            texts = [clean_prompt(t) for t in texts]
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ids = np.full((len(texts), max_length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), max_length), np.int32)
        for row, encoding in enumerate(encodings):
            tokens = encoding.ids[: max_length - 1] + [self.eos_id]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask


def _as_config(config) -> T5Config:
    return config if isinstance(config, T5Config) else T5Config.from_dict(config)


@functools.cache
def _compiled_encoder(config: T5Config):
    model = UMT5Encoder(config)

    def run(params, ids, mask):
        hidden = model.apply({"params": params}, ids, mask).astype(jnp.float32)
        # Cut to the true length (EOS included) and zero-pad back, as Wan does.
        lengths = jnp.sum(mask, axis=-1, keepdims=True)
        keep = jnp.arange(ids.shape[1])[None, :] < lengths
        return jnp.where(keep[..., None], hidden, 0.0)

    return jax.jit(run)


def encode_prompts(
    params, config, tokenizer: Tokenizer, prompts: str | Sequence[str], text_len: int = TEXT_LEN
) -> np.ndarray:
    """Prompts -> [B, text_len, d_model] float32; rows past each prompt's true length are 0."""
    config = _as_config(config)
    ids, mask = tokenizer(prompts, max_length=text_len)
    return np.asarray(_compiled_encoder(config)(params, ids, mask))


def checkpoint_identity(model_dir: str | os.PathLike) -> str:
    """Identifies a converted T5 directory: its config.json contents, absolute path and mtime."""
    model_dir = Path(model_dir).absolute()
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{model_dir} has no config.json; is it a converted T5 directory?")
    digest = hashlib.sha256(config_file.read_bytes())
    digest.update(str(model_dir).encode())
    digest.update(str(config_file.stat().st_mtime_ns).encode())
    return digest.hexdigest()


class PromptEncoder:
    """Encodes prompts with a fixed program, caching each result on disk.

    Args:
      params, config, tokenizer: the umT5 weights, its config (T5Config or dict) and tokenizer.
      identity: a string naming the checkpoint (see `checkpoint_identity`); part of the cache key.
      cache_dir: where cached embeddings live (one .npy per prompt); None disables the cache.
      device: None (default device), a platform name such as 'cpu' (the official `--t5_cpu`:
        the encoder runs on the host while the DiT uses the accelerator), or a jax.Device.
      batch_size: prompts per encoder call; shorter batches are padded so the encoder
        compiles once.
    """

    def __init__(
        self,
        params,
        config,
        tokenizer: Tokenizer,
        *,
        identity: str,
        cache_dir: str | os.PathLike | None = None,
        device: str | jax.Device | None = None,
        batch_size: int = 1,
        text_len: int = TEXT_LEN,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config = _as_config(config)
        self.tokenizer = tokenizer
        self.identity = identity
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.batch_size = batch_size
        self.text_len = text_len
        self.device = _resolve_device(device)
        self.params = jax.device_put(params, self.device)  # moved once, not per call
        self._encode = _compiled_encoder(self.config)

    @classmethod
    def from_checkpoint(
        cls,
        t5_dir: str | os.PathLike,
        tokenizer_dir: str | os.PathLike | None = None,
        **kwargs,
    ) -> PromptEncoder:
        """From converted directories; the tokenizer defaults to the sibling `tokenizer/`."""
        from swifti2v_jax import checkpoints

        t5_dir = Path(t5_dir)
        tokenizer_dir = t5_dir.parent / "tokenizer" if tokenizer_dir is None else tokenizer_dir
        tokenizer = Tokenizer(tokenizer_dir, text_len=kwargs.get("text_len", TEXT_LEN))
        config, params = checkpoints.load(t5_dir, kind="t5")
        return cls(params, config, tokenizer, identity=checkpoint_identity(t5_dir), **kwargs)

    def cache_key(self, prompt: str) -> str:
        record = [self.identity, self.tokenizer.fingerprint, self.text_len, prompt]
        return hashlib.sha256(json.dumps(record, ensure_ascii=False).encode()).hexdigest()

    def __call__(self, prompts: str | Sequence[str]) -> np.ndarray:
        """-> [B, text_len, d_model] float32 on the host (zero rows past each true length)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out = np.zeros((len(prompts), self.text_len, self.config.d_model), np.float32)
        misses = []
        for row, prompt in enumerate(prompts):
            cached = self._read_cache(prompt)
            if cached is None:
                misses.append(row)
            else:
                out[row, : len(cached)] = cached
        for start in range(0, len(misses), self.batch_size):
            rows = misses[start : start + self.batch_size]
            batch = [prompts[r] for r in rows]
            batch += [""] * (self.batch_size - len(batch))  # fixed shape: one compilation
            ids, mask = self.tokenizer(batch, max_length=self.text_len)
            embeddings = self._run_encoder(ids, mask)
            for i, row in enumerate(rows):
                out[row] = embeddings[i]
                self._write_cache(prompts[row], embeddings[i, : mask[i].sum()])
        return out

    def negative(self, negative_prompt: str = "") -> np.ndarray:
        """The official rule: an empty negative prompt means DEFAULT_NEGATIVE_PROMPT."""
        return self([negative_prompt or DEFAULT_NEGATIVE_PROMPT])

    def _run_encoder(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        ids, mask = jax.device_put((ids, mask), self.device)
        return np.asarray(self._encode(self.params, ids, mask))

    def _cache_file(self, prompt: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = self.cache_key(prompt)
        return self.cache_dir / key[:2] / f"{key}.npy"

    def _read_cache(self, prompt: str) -> np.ndarray | None:
        file = self._cache_file(prompt)
        if file is None or not file.is_file():
            return None
        try:
            cached = np.load(file)
        except (OSError, ValueError):  # a damaged entry is recomputed and rewritten
            return None
        if cached.ndim != 2 or cached.shape[1] != self.config.d_model:
            return None
        return cached

    def _write_cache(self, prompt: str, embedding: np.ndarray) -> None:
        file = self._cache_file(prompt)
        if file is None:
            return
        file.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a crash never leaves a truncated entry under the real name.
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=file.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(embedding, np.float32))
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _resolve_device(device) -> jax.Device:
    if device is None:
        return jax.devices()[0]
    if isinstance(device, str):
        try:
            return jax.devices(device)[0]
        except RuntimeError as e:
            raise ValueError(f"no JAX device of platform {device!r}: {e}") from e
    return device
