"""The tiny model's world: one shape on a plain background, its caption grammar, and a judge of pixels.

The judge reads only pixels: the background colour from a ring along the border, the shape's mask
(pixels far from the background), its colour (the palette colour nearest the mask's median), its size from
its area, and its outline by best-fit templates: the ideal circle, square and equilateral triangle of the
mask's area, centred on its centroid and turned to fit best, are each laid over the mask, and the one of
highest intersection over union wins; below MIN_TEMPLATE_IOU the mask is no shape at all ("blob"), so
that an oval is not a triangle and a blob is not a square.
"""

import itertools
import math
import re
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Shape area in pixels of a 64x64 image; the gap between the ranges is what the judge splits on.
AREA_RANGES = {"small": (260.0, 400.0), "large": (720.0, 1050.0)}
# The least overlap with the best template for a mask to count as that shape. Drawn shapes fit theirs
# at 0.9 or more (small ones, with their antialiased edges, at 0.86 or more); the same-area circle and
# square, centred, overlap at about 0.83, and a circle and a triangle at about 0.7.
MIN_TEMPLATE_IOU = 0.8
# Turns tried for each template: the square repeats every 90 degrees, the triangle every 120.
_TEMPLATE_TURNS = {"square": (4, np.radians(np.arange(0.0, 90.0, 3.0))),
                   "triangle": (3, np.radians(np.arange(0.0, 120.0, 3.0)))}
_TEMPLATE_SUBSAMPLES = 4
IMAGE_SIZE = 64
# Pixels between a shape and the picture's edge, at least; the judge reads the background from a ring
# of BORDER_RING pixels along the edge (its median, so a shape reaching into the ring does not matter).
SHAPE_MARGIN = 2
BORDER_RING = 6
_SUPERSAMPLE = 4
_CAPTION = re.compile(r"^a (\w+) (\w+) (\w+) on a (\w+) background$")


@dataclass(frozen=True)
class Scene:
    size: str
    color: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.color} {self.shape} on a {self.background} background"


def all_scenes() -> list[Scene]:
    """The 180 captions of the grammar, in a fixed order."""
    return [
        Scene(size, color, shape, background)
        for size, shape, color, background in itertools.product(SIZES, SHAPES, PALETTE, PALETTE)
        if color != background
    ]


def parse_caption(caption: str) -> Scene:
    """The scene a caption of the grammar names; ValueError for anything else."""
    match = _CAPTION.match(caption.strip().lower())
    scene = Scene(*match.groups()) if match else None
    if scene is None or scene not in set(all_scenes()):
        raise ValueError(
            f"not a caption of the grammar 'a SIZE COLOR SHAPE on a BACKGROUND background': {caption!r}"
        )
    return scene


def _outline(shape: str, area: float, angle: float) -> list[tuple[float, float]]:
    """Polygon corners around the origin for a square or equilateral triangle of the given area."""
    if shape == "square":
        circumradius, corners = math.sqrt(area / 2.0), 4
    else:
        circumradius, corners = math.sqrt(4.0 * area / (3.0 * math.sqrt(3.0))), 3
    return [
        (circumradius * math.cos(angle + 2 * math.pi * k / corners),
         circumradius * math.sin(angle + 2 * math.pi * k / corners))
        for k in range(corners)
    ]


def draw(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A uint8 [64, 64, 3] picture of the scene at a random position, rotation and area within its size."""
    area = rng.uniform(*AREA_RANGES[scene.size])
    angle = rng.uniform(0.0, 2.0 * math.pi)
    if scene.shape == "circle":
        points = None
        reach = math.sqrt(area / math.pi)
    else:
        points = _outline(scene.shape, area, angle)
        reach = max(math.hypot(x, y) for x, y in points)
    margin = reach + SHAPE_MARGIN
    cx, cy = rng.uniform(margin, IMAGE_SIZE - margin, size=2)

    scale = _SUPERSAMPLE
    canvas = Image.new("RGB", (IMAGE_SIZE * scale, IMAGE_SIZE * scale), PALETTE[scene.background])
    pen = ImageDraw.Draw(canvas)
    if points is None:
        box = [(cx - reach) * scale, (cy - reach) * scale, (cx + reach) * scale, (cy + reach) * scale]
        pen.ellipse(box, fill=PALETTE[scene.color])
    else:
        pen.polygon([((cx + x) * scale, (cy + y) * scale) for x, y in points], fill=PALETTE[scene.color])
    # Averaging the supersampled pixels antialiases the edges.
    return np.asarray(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX))


def nearest_color(rgb: np.ndarray) -> str:
    names = list(PALETTE)
    colors = np.array([PALETTE[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(np.linalg.norm(colors - rgb, axis=1)))]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, label = 0, 0, 0
    height, width = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        label += 1
        labels[start] = label
        queue, size = deque([start]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else mask


@dataclass(frozen=True)
class Judgement:
    """What the judge saw; `shape` is 'none' when nothing stands out from the background, 'blob' when
    what stands out fits no template; `fit` is the best template's intersection over union."""

    size: str
    color: str
    shape: str
    background: str
    area: float
    fit: float

    def matches(self, scene: Scene, check_size: bool = False) -> bool:
        """Right shape, colour and background (and size when asked)."""
        same = (self.shape, self.color, self.background) == (scene.shape, scene.color, scene.background)
        return same and (not check_size or self.size == scene.size)


def template_fits(mask: np.ndarray) -> dict[str, float]:
    """Intersection over union of the mask with the best-turned circle, square and triangle of its area
    centred on its centroid (each template's pixel coverage from 4x4 samples a pixel)."""
    ys, xs = np.nonzero(mask)
    area = float(mask.sum())
    offsets = (np.arange(_TEMPLATE_SUBSAMPLES) + 0.5) / _TEMPLATE_SUBSAMPLES - 0.5
    grid_y = np.arange(mask.shape[0])[:, None] + offsets[None, :]
    grid_x = np.arange(mask.shape[1])[:, None] + offsets[None, :]
    # Sample points relative to the centroid, as [H, S, W, S].
    dy = (grid_y - ys.mean())[:, :, None, None]
    dx = (grid_x - xs.mean())[None, None, :, :]
    target = mask.astype(np.float64)

    def iou(inside: np.ndarray) -> float:
        coverage = inside.mean(axis=(1, 3))
        return float(np.minimum(coverage, target).sum() / np.maximum(coverage, target).sum())

    fits = {"circle": iou(dy**2 + dx**2 <= area / math.pi)}
    for shape, (corners, turns) in _TEMPLATE_TURNS.items():
        # A regular polygon of this area is the intersection of half-planes at its inradius.
        inradius = math.sqrt(area / (corners * math.tan(math.pi / corners)))
        best = 0.0
        for turn in turns:
            inside = np.ones(np.broadcast_shapes(dy.shape, dx.shape), dtype=bool)
            for k in range(corners):
                normal = turn + 2 * math.pi * k / corners
                inside &= dx * math.cos(normal) + dy * math.sin(normal) <= inradius
            best = max(best, iou(inside))
        fits[shape] = best
    return fits


def judge(image: np.ndarray) -> Judgement:
    """Read the scene from a uint8 [H, W, 3] picture (any square size; areas are rescaled to 64x64)."""
    pixels = np.asarray(image, dtype=np.float64)[..., :3]
    height, width = pixels.shape[:2]
    ring = max(1, round(BORDER_RING * height / IMAGE_SIZE))
    border = np.concatenate([pixels[:ring].reshape(-1, 3), pixels[-ring:].reshape(-1, 3),
                             pixels[:, :ring].reshape(-1, 3), pixels[:, -ring:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(pixels - background, axis=-1)
    # Shapes keep clear of the outermost pixels, where convolution padding leaves a decoder's artefacts.
    frame = max(1, round(SHAPE_MARGIN * height / IMAGE_SIZE))
    distance[:frame], distance[-frame:], distance[:, :frame], distance[:, -frame:] = 0, 0, 0, 0
    rough = distance > 60.0
    if rough.sum() < 4:
        return Judgement("small", "none", "none", nearest_color(background), 0.0, 0.0)
    color = np.median(pixels[_largest_component(rough)], axis=0)
    # Half way between the two colours counts antialiased edge pixels as often in as out: an unbiased area.
    mask = _largest_component(distance > 0.5 * np.linalg.norm(color - background))
    fits = template_fits(mask)
    best = max(fits, key=fits.__getitem__)
    shape = best if fits[best] >= MIN_TEMPLATE_IOU else "blob"
    area_64 = float(mask.sum()) * (IMAGE_SIZE * IMAGE_SIZE) / (height * width)
    size_split = math.sqrt(AREA_RANGES["small"][1] * AREA_RANGES["large"][0])
    size = "small" if area_64 < size_split else "large"
    return Judgement(size, nearest_color(color), shape, nearest_color(background), area_64, fits[best])
