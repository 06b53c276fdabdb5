"""sample.py settings: `get_config(preset)`, the presets of swifti2v_jax/presets/sample.py.

  demo (default), swifti2v_2k, swifti2v_2k_ti2v, swifti2v_2k_concat, swifti2v_2k_24gb (see that
  module).

Pick one with `--config=configs/sample.py:swifti2v_2k`; override any field with
`--config.stage2.steps=30` and the like.
"""

from swifti2v_jax.presets.sample import PRESETS, get_config  # noqa: F401
