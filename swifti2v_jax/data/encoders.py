"""The encoders data preparation runs (prepare.py): the VAE for clips and references, umT5
(or precomputed embeddings) for captions.

`build_encoders` spreads each batch of clips over this process's local devices (one clip per
device, the VAE replicated): a host with 8 chips encodes 8 clips at a time, and with several
processes (swifti2v_jax/launch.py) each works on its own devices only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from swifti2v_jax.csg import contract, reference
from swifti2v_jax.data import records, videos


@dataclasses.dataclass(frozen=True)
class Encoders:
    """encode_video: [1, F, H, W, 3] in [-1, 1] -> [1, T, h, w, z] normalised latents;
    encode_text: list of prompts -> [B, text_len, d] with zero rows past each prompt;
    encode_reference: (low-res video [1, F, h, w, 3], first frame [1, H, W, 3]) -> z_ref,
    the hybrid reference builder (None: `encode_video` of `reference.hybrid_reference`)."""

    encode_video: Callable[[np.ndarray], np.ndarray]
    encode_text: Callable[[list[str]], np.ndarray]
    temporal_factor: int = 4
    spatial_factor: int = 16
    encode_reference: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    batch: int = 1  # clips per encode_video / encode_reference call
    # The VAE's normalisation, recorded in dataset.json (csg/contract.py latent_statistics)
    latent_statistics: dict | None = None

    def reference(self, video_low: np.ndarray, image: np.ndarray) -> np.ndarray:
        if self.encode_reference is not None:
            return np.asarray(self.encode_reference(video_low, image))
        return np.asarray(self.encode_video(reference.hybrid_reference(video_low, image)))


def _local_device_count() -> int:
    import jax

    return jax.local_device_count()


def _local_batches():
    """-> (place, params_on): put a batch [B, ...] split over the local devices (padded to a
    multiple of their count by repeating the last item; -> (array, B)), and a tree replicated
    on them."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.local_devices()), ("batch",))
    count = mesh.size

    def place(x):
        x = np.asarray(x, np.float32)
        pad = -x.shape[0] % count
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        return jax.device_put(x, NamedSharding(mesh, P("batch"))), x.shape[0] - pad

    return place, lambda tree: jax.device_put(tree, NamedSharding(mesh, P()))


def build_encoders(
    vae_dir: str,
    *,
    t5_dir: str | None = None,
    tokenizer_dir: str | None = None,
    text_embeddings_dir: str | None = None,
    text_len: int = 512,
) -> Encoders:
    """Encoders from converted model directories (`python -m conversion` output)."""
    from swifti2v_jax import checkpoints, text
    from swifti2v_jax.models import vae

    vae_config, vae_params = checkpoints.load(vae_dir, kind="vae")
    vae_config = vae.as_config(vae_config)
    place, replicate = _local_batches()
    vae_params = replicate(vae_params)

    def encode_video(video):
        video, count = place(video)
        return np.asarray(vae.encode(vae_params, vae_config, video))[:count]

    def encode_reference(video_low, image):
        (video_low, count), (image, _) = place(video_low), place(image)
        z_ref = reference.encode_hybrid_reference(vae_params, vae_config, video_low, image)
        return np.asarray(z_ref)[:count]

    if text_embeddings_dir is not None:
        encode_text = _PrecomputedText(Path(text_embeddings_dir), text_len)
    else:
        if t5_dir is None:
            raise ValueError("give --t5 (a converted umT5 directory) or --text-embeddings")
        if tokenizer_dir is None and not (Path(t5_dir).parent / "tokenizer").is_dir():
            raise ValueError(f"no --tokenizer given and {Path(t5_dir).parent / 'tokenizer'} "
                             "does not exist")  # fmt: skip
        # the one prompt encoder (sampling's): prompts -> [B, text_len, d], zero rows past each
        encode_text = text.PromptEncoder.from_checkpoint(t5_dir, tokenizer_dir, text_len=text_len)

    return Encoders(
        encode_video=encode_video,
        encode_text=encode_text,
        temporal_factor=vae.temporal_factor(vae_config),
        spatial_factor=vae.spatial_factor(vae_config),
        encode_reference=encode_reference,
        batch=_local_device_count(),
        latent_statistics=contract.latent_statistics(vae_config),
    )


class _PrecomputedText:
    """Text embeddings precomputed elsewhere: `<folder>/<sha1 of the caption>.npy`."""

    def __init__(self, folder: Path, text_len: int):
        if not folder.is_dir():
            raise ValueError(f"--text-embeddings folder {folder} does not exist")
        self.folder, self.text_len = folder, text_len

    def __call__(self, prompts):
        import hashlib

        out = []
        for prompt in prompts:
            file = self.folder / f"{hashlib.sha1(prompt.encode()).hexdigest()}.npy"
            if not file.is_file():
                raise videos.VideoError(f"no precomputed text embedding {file.name} for caption")
            out.append(records.pad_context(np.load(file), self.text_len))
        return np.stack(out)
