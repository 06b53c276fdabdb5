"""Synthetic records with the prepared-data layout, for runs without a data set (tiny preset).

Record i is a pure function of (seed, i), so a run on synthetic data is reproducible and its
grain iterator checkpoints like a real one. The latents are random, the reference is the
latents plus noise (block 0 exact, as for a hybrid reference) and the text embedding has a
random true length: the shapes and the code path are real, the content is not.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from swifti2v_jax.data import records


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    num_records: int = 64
    num_blocks: int = 5  # latent frames T
    height: int = 4  # latent height h
    width: int = 4
    channels: int = 48  # z
    text_len: int = 8  # longest true prompt length stored
    text_dim: int = 32
    reference_noise: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name not in ("reference_noise", "seed") and value < 1:
                raise ValueError(f"synthetic data {field.name} must be >= 1, got {value}")


class SyntheticSource:
    """A grain random-access source of synthetic record dicts."""

    def __init__(self, spec: SyntheticSpec):
        self.spec = spec

    def __len__(self) -> int:
        return self.spec.num_records

    def __getitem__(self, index: int) -> dict:
        spec = self.spec
        if not 0 <= index < spec.num_records:
            raise IndexError(index)
        rng = np.random.default_rng((spec.seed, int(index)))
        shape = (spec.num_blocks, spec.height, spec.width, spec.channels)
        latents = rng.standard_normal(shape).astype(np.float32)
        reference = latents + spec.reference_noise * rng.standard_normal(shape).astype(np.float32)
        reference[0] = latents[0]
        length = int(rng.integers(1, spec.text_len + 1))
        context = rng.standard_normal((length, spec.text_dim)).astype(np.float32)
        return records.make_record(
            latents, reference, context, f"synthetic clip {index}", f"synthetic-{index}", "float32"
        )

    def __repr__(self) -> str:
        return f"SyntheticSource({self.spec})"
