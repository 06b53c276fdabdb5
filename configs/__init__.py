"""Config files for train.py / sample.py (`--config=configs/stage2.py:tiny`), run from a checkout.

Each file exports `get_config(preset)`; files with named presets build it with
`swifti2v_jax.presets.dispatch`. Model presets (DiT, VAE, umT5) live in the package
(swifti2v_jax/presets/); configs/dit.py, t5.py and vae.py only serve them to the command line.
This folder is not installed and library code never imports it.
"""
