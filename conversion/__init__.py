"""Converters from the public PyTorch Wan2.2 checkpoints to swifti2v-jax model directories."""
