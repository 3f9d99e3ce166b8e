"""The pixel judge reads the drawn data itself right, and is not fooled by what a caption does not say."""

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sdexport.tiny.shapes import PALETTE, Scene, all_scenes, draw, judge, parse_caption


def test_grammar_has_180_distinct_captions_with_color_unlike_background() -> None:
    scenes = all_scenes()
    assert len({scene.caption for scene in scenes}) == 180
    assert all(scene.color != scene.background for scene in scenes)
    assert parse_caption("a large red circle on a blue background") == Scene("large", "red", "circle", "blue")


@pytest.mark.parametrize(
    "caption",
    ["a large red circle on a red background", "a red circle", "a huge red circle on a blue background"],
)
def test_parse_caption_rejects_what_the_grammar_cannot_say(caption: str) -> None:
    with pytest.raises(ValueError, match="grammar"):
        parse_caption(caption)


def test_judge_reads_every_drawn_scene_right_including_size() -> None:
    rng = np.random.default_rng(123)
    wrong = [scene.caption for scene in all_scenes() * 5 if not judge(draw(scene, rng)).matches(scene, True)]
    assert wrong == []


def _polygon_image(corners: int, angle: float, radius: float = 20.0) -> np.ndarray:
    """A regular polygon drawn directly with PIL, independently of shapes.draw."""
    canvas = Image.new("RGB", (256, 256), PALETTE["black"])
    points = [(128 + 4 * radius * math.cos(angle + 2 * math.pi * k / corners),
               128 + 4 * radius * math.sin(angle + 2 * math.pi * k / corners)) for k in range(corners)]
    ImageDraw.Draw(canvas).polygon(points, fill=PALETTE["white"])
    return np.asarray(canvas.resize((64, 64), Image.BOX))


@pytest.mark.parametrize("angle", np.linspace(0.0, math.pi / 2, 7))
def test_shape_measure_is_rotation_invariant(angle: float) -> None:
    assert judge(_polygon_image(4, angle)).shape == "square"
    assert judge(_polygon_image(3, angle)).shape == "triangle"
    assert judge(_polygon_image(48, angle)).shape == "circle"


def test_plain_picture_has_no_shape_and_noise_does_not_change_the_verdict() -> None:
    plain = np.full((64, 64, 3), PALETTE["green"], dtype=np.uint8)
    assert judge(plain).shape == "none"
    scene = Scene("small", "yellow", "triangle", "blue")
    noisy = draw(scene, np.random.default_rng(0)).astype(np.int16)
    noisy += np.random.default_rng(1).integers(-25, 26, size=noisy.shape, dtype=np.int16)
    assert judge(np.clip(noisy, 0, 255).astype(np.uint8)).matches(scene, check_size=True)


def test_an_oval_is_not_a_triangle_and_a_blob_is_no_shape() -> None:
    """Best-fit templates: an elongated oval fits none of the three well enough, nor does a blob."""
    oval = Image.new("RGB", (256, 256), PALETTE["black"])
    ImageDraw.Draw(oval).ellipse([40, 100, 216, 156], fill=PALETTE["white"])
    judged = judge(np.asarray(oval.resize((64, 64), Image.BOX)))
    assert judged.shape == "blob" and judged.fit < 0.8
    blob = Image.new("RGB", (256, 256), PALETTE["black"])
    corners = [(60, 60), (200, 90), (120, 120), (190, 200), (70, 170)]
    ImageDraw.Draw(blob).polygon(corners, fill=PALETTE["white"])
    assert judge(np.asarray(blob.resize((64, 64), Image.BOX))).shape == "blob"
