"""VAE presets: `--config=configs/vae.py:NAME`; the table is swifti2v_jax/presets/vae.py."""

from swifti2v_jax import presets
from swifti2v_jax.presets import vae

get_config = presets.dispatch(vae.PRESETS, vae.DEFAULT, "VAE")
