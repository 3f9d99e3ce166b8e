"""Init images read as a person sees them: 16-bit samples scaled, EXIF orientation applied, transparency
over white, size checked from the header before decoding, and scaled to the model's pixel count."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdrun.errors import SettingsError
from sdrun.images import fit_within, load_rgb, open_image, oriented_size


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    levels = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(levels).save(tmp_path / "grey16.png")  # mode I;16; PIL's own convert gives 0 255 255 255
    rgb = np.asarray(load_rgb(open_image(tmp_path / "grey16.png", 100), (4, 4)))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 1, 128, 255])
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """A picture stored sideways with orientation 6 (rotate 90 degrees clockwise to view) comes back as
    drawn: its red top-left corner where it was."""
    drawn = np.zeros((6, 4, 3), dtype=np.uint8)
    drawn[:2, :2] = (255, 0, 0)
    stored = Image.fromarray(np.rot90(drawn, k=1).copy())  # turned a quarter anticlockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "turned.png", exif=exif)
    opened = open_image(tmp_path / "turned.png", 100)
    assert opened.size == (6, 4) and oriented_size(opened) == (4, 6)
    np.testing.assert_array_equal(np.asarray(load_rgb(opened, (4, 6))), drawn)


def test_transparency_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 255, 255)  # opaque blue; the rest transparent black
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    rgb = np.asarray(load_rgb(open_image(tmp_path / "alpha.png", 100), (2, 2)))
    assert tuple(rgb[0, 0]) == (0, 0, 255) and (rgb[1, 1] == 255).all()


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    Image.new("L", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(SettingsError, match=r"300x200 \(60,000 pixels\), above the limit of 59,999"):
        open_image(tmp_path / "big.png", 59_999)
    assert open_image(tmp_path / "big.png", 60_000).size == (300, 200)


def test_larger_images_fit_the_model_pixel_count() -> None:
    assert fit_within(4032, 3024, 512 * 512, 8) == (584, 440)
    assert fit_within(300, 200, 512 * 512, 8) == (296, 200)  # smaller: rounded down only
    assert fit_within(1024, 1024, 512 * 512, 64) == (512, 512)
