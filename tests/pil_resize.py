"""An independent bicubic resize for checking the hybrid reference: Pillow's, channel by channel.

docs/design.md ("Data flow") upsamples the Stage I video with bicubic interpolation (Keys,
a = -0.5, half-pixel centres); Pillow's BICUBIC on float ("F") images is that method written by
someone else, so it checks `reference.resize_frames` rather than repeating it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def bicubic_upsample(frames, height: int, width: int) -> np.ndarray:
    """[B, n, h, w, C] -> [B, n, height, width, C], clipped to [-1, 1] like every reference."""
    frames = np.asarray(frames, np.float32)
    out = np.empty((*frames.shape[:2], height, width, frames.shape[-1]), np.float32)
    for index in np.ndindex(*frames.shape[:2]):
        for c in range(frames.shape[-1]):
            image = Image.fromarray(np.ascontiguousarray(frames[index][..., c]))  # mode F
            out[index][..., c] = np.asarray(image.resize((width, height), Image.BICUBIC))
    return np.clip(out, -1.0, 1.0)
