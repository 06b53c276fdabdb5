"""Ahead-of-time TPU compiles of every production program (see __main__.py)."""
