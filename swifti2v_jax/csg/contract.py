"""A trained DiT's sampling contract: what it was trained with, saved beside its model config.

A training run's export (training/dit_training.py) writes it into the model directory's
config.json under `trained_with`; sampling (sampling/models.py) reads it and refuses a preset
that contradicts it, naming the field, before any weight is loaded. A model directory without
one (a converted public checkpoint, an export made before the contract existed) is not checked.
docs/design.md, "Map of knobs".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from swifti2v_jax.csg import layout

KEY = "trained_with"  # the model directory's config.json entry
DATASET_KEY = "latent_statistics"  # the prepared data's dataset.json entry (data/prepare.py)


class ContractError(ValueError):
    """A sampling setting contradicts what the model was trained with."""


@dataclasses.dataclass(frozen=True)
class TrainedWith:
    """conditioning: training/loss.py's ('concat': [latent, z_ref] on channels; 'none': the
    image-to-video layout of Stage I). The window layout is csg/layout.py's. text_len: the
    prompt rows. latents_mean / latents_std: the normalisation of the VAE that encoded the
    training data (None: not recorded by the data preparation)."""

    conditioning: str
    noisy_blocks: int
    neighbours: int
    end_to_end: bool
    text_len: int
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    @classmethod
    def read(cls, metadata: Mapping) -> TrainedWith | None:
        """From a model directory's config.json content; None if it has no contract."""
        fields = metadata.get(KEY)
        if fields is None:
            return None
        fields = dict(fields)
        for name in ("latents_mean", "latents_std"):
            if fields.get(name) is not None:
                fields[name] = tuple(float(v) for v in fields[name])
        return cls(**fields)

    def to_metadata(self) -> dict:
        """The config.json entry (checkpoints.save metadata; JSON writes the tuples as lists)."""
        return {KEY: dataclasses.asdict(self)}

    def check(
        self,
        what: str,
        *,
        text_len: int,
        latents_mean: Sequence[float],
        latents_std: Sequence[float],
        window: layout.WindowLayout | None = None,
        conditioning: str | None = None,
        section: str = "stage2",
    ) -> None:
        """ContractError (one line, the first contradiction) if a setting disagrees.

        `window` and `conditioning`: the Stage II sampler's (`section` names it); a sampler
        window of `end_to_end` is the end-to-end baseline (docs/design.md, "CSG rules") and is
        not held to the trained M and N."""
        checks = [("text_len", "text_len", self.text_len, text_len)]
        if conditioning is not None and self.conditioning == "concat":
            checks.append((f"{section}.conditioning", "conditioning", "concat", conditioning))
        if window is not None and not window.end_to_end and not self.end_to_end:
            checks.append((f"{section}.noisy_blocks", "noisy_blocks", self.noisy_blocks,
                           window.noisy_blocks))  # fmt: skip
            checks.append((f"{section}.neighbours", "neighbours", self.neighbours,
                           window.neighbours))  # fmt: skip
        for knob, field, trained, value in checks:
            if trained != value:
                raise ContractError(
                    f"{what} was trained with {field}={trained!r} but the preset sets "
                    f"{knob}={value!r}; use --config.{knob}={trained!r}"
                )
        for field, trained, value in (
            ("latents_mean", self.latents_mean, latents_mean),
            ("latents_std", self.latents_std, latents_std),
        ):
            if trained is not None and not _close(trained, value):
                raise ContractError(
                    f"{what} was trained on latents of another VAE normalisation ({field} "
                    "differs from its VAE's config): use the VAE its data was encoded with"
                )


def latent_statistics(vae_config) -> dict:
    """What data preparation records of the VAE that encodes its latents (DATASET_KEY)."""
    return {
        "latents_mean": [float(v) for v in vae_config.latents_mean],
        "latents_std": [float(v) for v in vae_config.latents_std],
    }


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-6 * max(1.0, abs(x)) for x, y in zip(a, b))
