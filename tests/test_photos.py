"""Photograph clips (data/photos.py): the split, determinism, shapes and the shared camera."""

import dataclasses

import numpy as np
import pytest

from swifti2v_jax.data import photos, procedural
from swifti2v_jax.demo import dataset


def test_split_is_disjoint_and_every_photo_ships():
    assert not set(photos.TRAIN_PHOTOS) & set(photos.HELD_OUT_PHOTOS)
    assert len(photos.HELD_OUT_PHOTOS) >= 4
    for name in (*photos.TRAIN_PHOTOS, *photos.HELD_OUT_PHOTOS):
        image = photos.load_photo(name)
        assert image.ndim == 3 and image.shape[-1] == 3 and 0 <= image.min() <= image.max() <= 1


def test_held_out_photos_never_appear_in_training_clips():
    held_out = set(photos.HELD_OUT_PHOTOS)
    for seed in range(300):
        assert not set(photos.random_photo_scene(seed, "train").photos) & held_out
        assert set(photos.random_photo_scene(seed, "held_out").photos) <= held_out
    # The demo data builder's photo clips come from the training split.
    *_, prompt, name = dataset.source_clip("photo", 3, 5, 16, 32, 4)
    assert name == "photo-3" and prompt.startswith("a photograph")
    with pytest.raises(ValueError, match="split"):
        photos.random_photo_scene(0, "test")


def test_render_pair_is_deterministic_with_the_procedural_shapes():
    high, low = photos.render_pair(4, 5, 16, 32, factor=4)
    assert high.shape == (5, 16, 32, 3) and low.shape == (5, 4, 8, 3)
    assert high.dtype == np.float32 and -1 <= high.min() and high.max() <= 1
    np.testing.assert_allclose(low, procedural.box_downsample(high, 4), atol=1e-6)
    again, _ = photos.render_pair(4, 5, 16, 32, factor=4)
    np.testing.assert_array_equal(high, again)
    other, _ = photos.render_pair(5, 5, 16, 32, factor=4)
    assert np.abs(other - high).mean() > 0.05
    step = np.abs(high[1:] - high[:-1]).mean()  # the camera moves, but not wildly
    assert 1e-3 < step < 0.3
    with pytest.raises(ValueError, match="4k\\+1"):
        photos.render_pair(0, 4, 32, 64)


def test_frame_zero_is_the_photo_at_t0_and_the_camera_pans_by_whole_pixels():
    scene = photos.random_photo_scene(1_000_000, "held_out")
    clip = photos.render(scene, 5, 32, 64)
    np.testing.assert_allclose(clip[0], photos.render(scene, 1, 32, 64)[0], atol=1e-6)
    # No layers, no zoom or rotation, a pan of exactly 2 output pixels per frame to the right:
    # frame t is frame 0 moved left by 2t pixels (where both frames see the photo).
    still = dataclasses.replace(scene, layers=(), zoom=0.0, rotation=0.0, view=1.0)
    panning = dataclasses.replace(still, pan=(2.0 / 32, 0.0))
    clip = photos.render(panning, 5, 32, 64)
    for t in range(1, 5):
        np.testing.assert_allclose(clip[t, :, : 64 - 2 * t], clip[0, :, 2 * t :], atol=2e-3)
    # The background photo fills the view of a FILL_FRAMES clip (no mirrored edge) and the
    # frame at t=0 shows the photo: a static camera gives identical frames.
    static = dataclasses.replace(still, pan=(0.0, 0.0))
    frames = photos.render(static, 5, 32, 64)
    np.testing.assert_array_equal(frames[0], frames[4])
    assert frames[0].std() > 0.05
