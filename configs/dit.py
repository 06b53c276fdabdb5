"""DiT presets: `--config=configs/dit.py:NAME`; the table is swifti2v_jax/presets/dit.py."""

from swifti2v_jax import presets
from swifti2v_jax.presets import dit

get_config = presets.dispatch(dit.PRESETS, dit.DEFAULT, "DiT")
