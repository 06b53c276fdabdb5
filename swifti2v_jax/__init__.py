"""SwiftI2V in JAX/Flax: 2K image-to-video with Conditional Segment-wise Generation on Wan2.2."""

__version__ = "0.1.0"
