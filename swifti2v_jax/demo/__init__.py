"""The bundled demo: an example image, a default prompt, and the demo models.

`swifti2v_jax/demo/weights/` is where trained demo checkpoints go (dit/ stage2/ vae/ t5/
tokenizer/, made by `python -m swifti2v_jax.demo.reproduce --install`; docs/demo.md).
Without them (or for the A14B Stage I backbone) `build.ensure_random_demo()` writes tiny
random-init checkpoints of the same layout into a cache directory, so `sample.py` still
runs end to end (the video is then noise).
"""

import os
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
EXAMPLE_IMAGE = DEMO_DIR / "example.png"
BUNDLED_WEIGHTS = DEMO_DIR / "weights"
# The demo captions' form (demo/dataset.py: the example scene pans right).
EXAMPLE_PROMPT = "a textured scene with moving discs, the camera slowly pans to the right"


def cache_root() -> Path:
    """$SWIFTI2V_JAX_CACHE, else $XDG_CACHE_HOME/swifti2v_jax, else ~/.cache/swifti2v_jax."""
    if os.environ.get("SWIFTI2V_JAX_CACHE"):
        return Path(os.environ["SWIFTI2V_JAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "swifti2v_jax"
