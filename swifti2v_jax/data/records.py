"""One training example on disk: precomputed latents, reference latents and text embedding.

Fields (the same in ArrayRecord shards written by prepare.py and in the tfds builder):

    latents    [T, h, w, z]  normalised VAE latents of the clip (float16 or float32)
    reference  [T, h, w, z]  z_ref: latents of the degraded hybrid reference (block 0 = anchor)
    context    [L, d]        umT5 embedding cut to the prompt's true length (padded when loaded)
    caption    str
    name       str           the video's file stem

optionally (data/rollout.py adds it):

    generated  [T, h, w, z]  the clip as a Stage II model generated it (CSG on `reference`):
                             training can take neighbour blocks from it (loader.WindowSpec)

An ArrayRecord entry is these arrays serialised with `np.savez` (no pickle), so shards are
readable with numpy alone.
"""

from __future__ import annotations

import io

import numpy as np

ARRAY_FIELDS = ("latents", "reference", "context")
OPTIONAL_ARRAY_FIELDS = ("generated",)
TEXT_FIELDS = ("caption", "name")
STORAGE_DTYPES = ("float16", "float32")


def make_record(latents, reference, context, caption: str, name: str, dtype="float16") -> dict:
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    latents, reference = np.asarray(latents), np.asarray(reference)
    context = np.asarray(context)
    if latents.ndim != 4 or reference.shape != latents.shape:
        raise ValueError(
            f"latents and reference must both be [T, h, w, z], got {latents.shape} and "
            f"{reference.shape}"
        )
    if context.ndim != 2 or context.shape[0] < 1:
        raise ValueError(f"context must be [L >= 1, d], got {context.shape}")
    return {
        "latents": latents.astype(dtype),
        "reference": reference.astype(dtype),
        "context": context.astype(dtype),
        "caption": caption,
        "name": name,
    }


def with_generated(record: dict, generated) -> dict:
    """The record plus its `generated` latents (same shape as `latents`, stored alike)."""
    generated = np.asarray(generated)
    if generated.shape != record["latents"].shape:
        raise ValueError(
            f"generated latents {generated.shape} must match latents {record['latents'].shape}"
        )
    return {**record, "generated": generated.astype(record["latents"].dtype)}


def trim_context(embedding: np.ndarray) -> np.ndarray:
    """[text_len, d] with zero rows past the prompt -> its first `true length` rows (>= 1)."""
    nonzero = np.flatnonzero(np.any(embedding != 0, axis=-1))
    length = int(nonzero[-1]) + 1 if nonzero.size else 1
    return embedding[:length]


def pad_context(context: np.ndarray, text_len: int) -> np.ndarray:
    if context.shape[0] >= text_len:
        return context[:text_len]
    pad = np.zeros((text_len - context.shape[0], context.shape[1]), context.dtype)
    return np.concatenate([context, pad], axis=0)


def serialize(record: dict) -> bytes:
    buffer = io.BytesIO()
    arrays = {name: record[name] for name in ARRAY_FIELDS}
    arrays.update({name: record[name] for name in OPTIONAL_ARRAY_FIELDS if name in record})
    texts = {name: np.asarray(str(record[name])) for name in TEXT_FIELDS}
    np.savez(buffer, **arrays, **texts)
    return buffer.getvalue()


def deserialize(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        record = {name: archive[name] for name in ARRAY_FIELDS}
        record.update({name: archive[name] for name in OPTIONAL_ARRAY_FIELDS if name in archive})
        record.update({name: str(archive[name]) for name in TEXT_FIELDS})
    return record


def as_record(element) -> dict:
    """A record from any source: serialised bytes (ArrayRecord) or a tfds/synthetic dict."""
    if isinstance(element, bytes | bytearray):
        return deserialize(bytes(element))
    record = dict(element)
    for name in TEXT_FIELDS:
        value = record.get(name, "")
        record[name] = value.decode() if isinstance(value, bytes) else str(value)
    return record
