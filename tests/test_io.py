"""Image loading/fitting and the streaming mp4 writer (swifti2v_jax.io)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from swifti2v_jax.io import image as image_io
from swifti2v_jax.io import video as video_io

# --------------------------------------------------------------------------------------------
# Images


def _three_bands(width: int, height: int, vertical: bool = False) -> Image.Image:
    """Red | green | blue thirds (left to right, or top to bottom)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    length = height if vertical else width
    for band, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        sl = slice(band * length // 3, (band + 1) * length // 3)
        if vertical:
            pixels[sl] = colour
        else:
            pixels[:, sl] = colour
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    "source, target",
    [((400, 100), (64, 64)), ((100, 400), (64, 32)), ((30, 20), (128, 96)), ((64, 32), (64, 32))],
)
def test_crop_resize_sizes(source, target):
    out = image_io.crop_resize(_three_bands(*source), *target)
    assert out.size == target


def test_crop_resize_keeps_the_centre_of_a_wide_image():
    # 300x100 -> 64x64: scaled to 192x64, the middle 64 columns (the green band) remain.
    out = np.asarray(image_io.crop_resize(_three_bands(300, 100), 64, 64)).astype(int)
    assert out.shape == (64, 64, 3)
    assert (out[:, 4:-4, 1] > 200).all() and (out[:, 4:-4, 0] < 60).all()


def test_crop_resize_keeps_the_centre_of_a_tall_image():
    out = np.asarray(image_io.crop_resize(_three_bands(100, 300, True), 64, 64)).astype(int)
    assert (out[4:-4, :, 1] > 200).all() and (out[4:-4, :, 2] < 60).all()


def test_crop_resize_keeps_everything_when_the_aspect_matches():
    # Same aspect: no crop, the three bands survive in order.
    out = np.asarray(image_io.crop_resize(_three_bands(300, 100), 96, 32)).astype(int)
    assert out[16, 10, 0] > 200 and out[16, 48, 1] > 200 and out[16, 85, 2] > 200


def test_to_array_range():
    image = Image.fromarray(np.array([[[0, 128, 255]]], np.uint8))
    np.testing.assert_allclose(
        image_io.to_array(image)[0, 0], [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-6
    )


def _save(tmp_path, image: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_load_rgb_has_no_note(tmp_path):
    image, note = image_io.load_image(_save(tmp_path, _three_bands(30, 10), "rgb.png"))
    assert image.mode == "RGB" and image.size == (30, 10) and note is None


def test_load_rgba_composites_on_white(tmp_path):
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[:, :2] = (255, 0, 0, 255)  # opaque red
    pixels[:, 2:] = (0, 0, 255, 0)  # fully transparent blue
    path = _save(tmp_path, Image.fromarray(pixels, "RGBA"), "rgba.png")
    image, note = image_io.load_image(path)
    out = np.asarray(image)
    assert image.mode == "RGB" and "white" in note
    np.testing.assert_array_equal(out[:, :2], np.broadcast_to([255, 0, 0], (4, 2, 3)))
    np.testing.assert_array_equal(out[:, 2:], np.full((4, 2, 3), 255))


def test_load_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 2, 4))
    path = _save(tmp_path, image, "p.png", transparency=0)
    out, note = image_io.load_image(path)
    assert "white" in note
    np.testing.assert_array_equal(np.asarray(out)[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(np.asarray(out)[0, 3], [255, 255, 255])


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_load_greyscale_converts(tmp_path, mode):
    values = np.array([[0, 100], [200, 255]], np.uint16)
    if mode == "L":
        grey = Image.fromarray(values.astype(np.uint8), "L")
    else:
        grey = Image.fromarray(values * 257)  # uint16 -> mode I;16
        assert grey.mode == "I;16"
    image, note = image_io.load_image(_save(tmp_path, grey, f"grey{len(mode)}.png"))
    out = np.asarray(image)
    assert image.mode == "RGB" and "RGB" in note
    np.testing.assert_array_equal(out[..., 0], values)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_load_float_image_is_refused(tmp_path):
    path = _save(tmp_path, Image.fromarray(np.ones((4, 4), np.float32), "F"), "f.tiff")
    with pytest.raises(image_io.ImageError, match="mode 'F'.*8-bit RGB"):
        image_io.load_image(path)


def test_load_animated_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    image, note = image_io.load_image(path)
    assert "first of 2 frames" in note
    assert np.asarray(image)[0, 0, 0] > 200


@pytest.mark.parametrize("case", ["missing", "directory", "garbage", "truncated"])
def test_load_bad_files(tmp_path, case):
    path = tmp_path / "x.png"
    if case == "directory":
        path.mkdir()
    elif case == "garbage":
        path.write_text("not an image")
    elif case == "truncated":
        _save(tmp_path, Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3),
              np.uint8)), "full.png")  # fmt: skip
        data = (tmp_path / "full.png").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(image_io.ImageError) as info:
        image_io.load_image(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_best_output_size():
    # The TI2V-5B 720p setting: a 1280x704 image keeps its size at max_area 1280*704.
    assert image_io.best_output_size(1280, 704, 32, 32, 1280 * 704) == (1280, 704)
    for w, h in [(1000, 1000), (1920, 1080), (600, 1200), (3000, 500)]:
        ow, oh = image_io.best_output_size(w, h, 128, 128, 2560 * 1408)
        assert ow % 128 == 0 and oh % 128 == 0 and ow * oh <= 2560 * 1408
        assert abs(np.log((ow / oh) / (w / h))) < 0.25
    # A tie between the width-first (1792x1920) and height-first candidates: height-first wins.
    assert image_io.best_output_size(1000, 1000, 128, 128, 2560 * 1408) == (1920, 1792)


def test_parse_size():
    assert image_io.parse_size("2560x1408") == (2560, 1408)
    assert image_io.parse_size(" 64X32 ") == (64, 32)
    for bad in ["2560", "axb", "0x32", "-64x32", "64x32x2", ""]:
        with pytest.raises(ValueError, match="WIDTHxHEIGHT|positive"):
            image_io.parse_size(bad)


# --------------------------------------------------------------------------------------------
# Video


def _frames(n: int, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth frames (H.264 keeps them close), a different flat colour per frame."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 220, (n, 1, 1, 3))
    return np.broadcast_to(colours, (n, height, width, 3)).astype(np.uint8)


def test_frames_to_uint8():
    out = video_io.frames_to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0]))
    np.testing.assert_array_equal(out, [0, 0, 128, 255, 255])


def test_writer_streams_and_renames(tmp_path):
    path = tmp_path / "out.mp4"
    frames = _frames(9)
    writer = video_io.VideoWriter(path, 48, 32, fps=8)
    writer.write_frames(frames[:1])
    assert not path.exists() and writer.temporary_path.exists()
    writer.write_frames(frames[1:5])
    writer.write_frames(frames[5])  # a single [H, W, 3] frame
    writer.write_frames(frames[6:])
    assert writer.close() == path
    read, fps = video_io.read_video(path)
    assert read.shape == (9, 32, 48, 3) and fps == 8
    assert np.abs(read.astype(int) - frames.astype(int)).mean() < 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_writer_abort_and_exceptions_leave_nothing(tmp_path):
    path = tmp_path / "out.mp4"
    writer = video_io.VideoWriter(path, 48, 32)
    writer.write_frames(_frames(3))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="boom"):
        with video_io.VideoWriter(path, 48, 32) as writer:
            writer.write_frames(_frames(2))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # Closing without frames is an error, and also leaves nothing.
    with pytest.raises(video_io.VideoError, match="no frames"):
        video_io.VideoWriter(path, 48, 32).close()
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"old")
    with video_io.VideoWriter(path, 48, 32) as writer:
        writer.write_frames(_frames(2))
    assert video_io.read_video(path)[0].shape[0] == 2


def test_writer_creates_nothing_before_the_first_frame(tmp_path):
    path = tmp_path / "out.mp4"
    writer = video_io.VideoWriter(path, 48, 32)
    assert writer.temporary_path is None and list(tmp_path.iterdir()) == []
    writer.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_writer_output_mode_follows_the_umask(tmp_path, umask, mode):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"old")
    path.chmod(0o640)
    previous = os.umask(umask)
    try:
        with video_io.VideoWriter(path, 48, 32) as writer:
            writer.write_frames(_frames(1))
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def test_writer_rejects_bad_frames_and_sizes(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(video_io.VideoError, match="even"):
        video_io.VideoWriter(path, 47, 32)
    with video_io.VideoWriter(path, 48, 32) as writer:
        with pytest.raises(video_io.VideoError, match="uint8"):
            writer.write_frames(np.zeros((1, 32, 48, 3), np.float32))
        with pytest.raises(video_io.VideoError, match=r"\[n, 32, 48, 3\]"):
            writer.write_frames(np.zeros((1, 48, 32, 3), np.uint8))
        writer.write_frames(_frames(1))


def test_check_output_path(tmp_path):
    assert video_io.check_output_path(tmp_path / "a.mp4") == tmp_path / "a.mp4"
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "file").write_text("")
    cases = {
        tmp_path / "missing" / "a.mp4": "does not exist",
        tmp_path / "a.avi": "must end with .mp4",
        tmp_path / "dir.mp4": "is a directory",
        tmp_path / "file" / "a.mp4": "not a directory",
    }
    for path, message in cases.items():
        with pytest.raises(video_io.VideoError, match=message):
            video_io.check_output_path(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.mp4", "file"]


def test_fit_note_describes_what_crop_resize_does():
    image = Image.new("RGB", (512, 512))
    fitted = image_io.crop_resize(image, 128, 64)
    assert fitted.size == (128, 64)
    note = image_io.fit_note(image.size, 128, 64)
    assert (
        note == "512x512 downscaled to 128x128 and centre-cropped to 128x64 (aspect ratio differs)"
    )
    assert image_io.fit_note((256, 128), 128, 64) is None  # a plain downscale
    assert image_io.fit_note((64, 32), 128, 64) == "64x32 upscaled to 128x64"
    assert image_io.fit_note((128, 64), 128, 64) is None


def test_images_smaller_than_stage1_are_refused():
    image_io.check_large_enough((32, 16), 32, 16)
    for size in [(1, 1), (31, 100), (100, 15)]:
        with pytest.raises(image_io.ImageError, match="smaller than the Stage I size 32x16"):
            image_io.check_large_enough(size, 32, 16, "image x.png")
