"""T5 presets: `--config=configs/t5.py:NAME`; the table is swifti2v_jax/presets/t5.py."""

from swifti2v_jax import presets
from swifti2v_jax.presets import t5

get_config = presets.dispatch(t5.PRESETS, t5.DEFAULT, "T5")
