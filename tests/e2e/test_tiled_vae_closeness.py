"""Tiled VAE decoding comes close to the whole decode on a trained decoder (the embedded model's), at a
size where the pipeline tiles by itself; sdrun.tiled_vae says why it is close and not equal.

The latents are those of a real picture: an 832x832 mosaic of the model's own drawings, through its VAE
encoder. The bounds have power: tiles misplaced by one latent pixel, or tiles so small that group norms
see little, are each refused by them.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdrun.images import from_pixels
from sdrun.networks import VaeDecoderGraph
from sdrun.pipeline import AUTO_TILE_PIXELS, Pipeline
from sdrun.tiled_vae import DEFAULT_TILE, decode_tiled

SIDE = 832  # pixels, above AUTO_TILE_PIXELS: 104 latent pixels a side, 3x3 tiles of DEFAULT_TILE
# In levels of 255; measured at 768x768: mean 0.9, 99th percentile 15.
MAX_MEAN_DIFFERENCE = 2.0
MAX_P99_DIFFERENCE = 30.0


@pytest.fixture(scope="module")
def whole(tiny_folder: Path) -> Pipeline:
    return Pipeline.load(tiny_folder, provider="cpu", tiled_vae=False)


@pytest.fixture(scope="module")
def latents(whole: Pipeline) -> np.ndarray:
    drawings = [
        image
        for prompt in ("a red circle", "a small blue square on a yellow background", "a big green triangle")
        for image in whole.generate(prompt, seed=1, num_images=3).images
    ]
    rng = np.random.default_rng(0)
    mosaic = Image.new("RGB", (SIDE, SIDE))
    tile = drawings[0].width
    for top in range(0, SIDE, tile):
        for left in range(0, SIDE, tile):
            mosaic.paste(drawings[rng.integers(len(drawings))], (left, top))
    return whole.encode_image(mosaic).mean * whole.facts.latent_scale


def _levels(whole_image: Image.Image, other: Image.Image) -> tuple[float, float]:
    """Mean and 99th percentile of the absolute difference, in levels."""
    difference = np.abs(np.asarray(whole_image, float) - np.asarray(other, float))
    return float(difference.mean()), float(np.percentile(difference, 99))


def _close(whole_image: Image.Image, other: Image.Image) -> bool:
    mean, p99 = _levels(whole_image, other)
    return mean < MAX_MEAN_DIFFERENCE and p99 < MAX_P99_DIFFERENCE


def test_tiled_decode_is_close_to_the_whole(tiny_folder: Path, whole: Pipeline, latents: np.ndarray) -> None:
    (reference,) = whole.decode(latents)
    (tiled,) = Pipeline.load(tiny_folder, provider="cpu", tiled_vae=True).decode(latents)
    assert _close(reference, tiled), _levels(reference, tiled)
    # Left to itself, the pipeline tiles at this size.
    assert SIDE * SIDE > AUTO_TILE_PIXELS
    (automatic,) = Pipeline.load(tiny_folder, provider="cpu").decode(latents)
    assert np.array_equal(np.asarray(automatic), np.asarray(tiled))


def _decode_with(
    whole: Pipeline, latents: np.ndarray, decoder: Callable, tile: int, overlap: int
) -> Image.Image:
    facts = whole.facts
    return from_pixels(decode_tiled(decoder, latents / facts.latent_scale, facts.vae_factor, tile, overlap))


def test_the_bounds_refuse_broken_tiling(whole: Pipeline, latents: np.ndarray) -> None:
    (reference,) = whole.decode(latents)
    decode = whole.sessions.get(whole.facts.vae_decoder)
    assert isinstance(decode, VaeDecoderGraph)
    misplaced = _decode_with(
        whole, latents, lambda tile: decode.decode(np.roll(tile, 1, axis=3)), DEFAULT_TILE, 8
    )
    assert not _close(reference, misplaced), _levels(reference, misplaced)
    tiny_tiles = _decode_with(whole, latents, decode.decode, 8, 2)
    assert not _close(reference, tiny_tiles), _levels(reference, tiny_tiles)
