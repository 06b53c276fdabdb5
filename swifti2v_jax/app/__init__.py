"""The web app: `python -m swifti2v_jax.app` (docs/app.md).

engine.py runs one generation at a time on resident models in a worker thread, through the same
entry point as sample.py (swifti2v_jax/generation.py); view.py turns its progress into what the
page shows; ui.py is the gradio page; __main__.py the command line.
"""
