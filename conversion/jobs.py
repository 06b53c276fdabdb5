"""What a converter component offers to `python -m conversion`.

Each component module (dit, vae, t5) exposes `detect(source: Path) -> list[Job]`: the things it
found in a checkpoint directory. `Job.validate()` checks keys and shapes without converting
(cheap), `Job.convert(out_dir, dtype)` writes one model directory with
`swifti2v_jax.checkpoints.write_model_dir`. The driver validates every job first, converts into
a temporary directory and renames it into place only when everything succeeded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass
class Job:
    name: str  # output subdirectory, e.g. "dit", "high_noise", "vae", "t5", "tokenizer"
    description: str
    validate: Callable[[], None]
    convert: Callable[..., None]  # (out_dir: Path, dtype[, quantize=...] when quantizable)
    quantizable: bool = False  # a DiT: accepts quantize='int8'|'fp8' (models/quant.py)
