"""The bundled demo: a procedurally drawn example image, a default prompt, and tiny models.

`swifti2v_jax/demo/weights/` holds trained demo checkpoints when they are shipped; until then
`build.ensure_random_demo()` writes tiny random-init checkpoints (same layout) into a cache
directory, so `sample.py` runs end to end with no downloads (the video is then noise).
"""

import os
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
EXAMPLE_IMAGE = DEMO_DIR / "example.png"
BUNDLED_WEIGHTS = DEMO_DIR / "weights"
EXAMPLE_PROMPT = (
    "a small sailing boat drifts across a calm mountain lake at sunset, gentle ripples, "
    "the camera slowly pans to the right"
)


def cache_root() -> Path:
    """$SWIFTI2V_JAX_CACHE, else $XDG_CACHE_HOME/swifti2v_jax, else ~/.cache/swifti2v_jax."""
    if os.environ.get("SWIFTI2V_JAX_CACHE"):
        return Path(os.environ["SWIFTI2V_JAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "swifti2v_jax"
