"""Tiled VAE decoding: tiles placed and weighted exactly (on a decoder without context), seamless across
tile borders on the tiny optimum-exported VAE decoder, and the whole decode when one tile covers it.

How close tiles come to the whole decode depends on the decoder: its group norms and mid-block attention
see one tile, and with random weights that shifts each tile's tone a lot (tens of levels at the tiny
sizes here), so closeness is checked on the trained tiny-shapes VAE instead
(tests/e2e/test_tiled_vae_closeness.py)."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sdrun.errors import SettingsError
from sdrun.tiled_vae import decode_tiled, tile_starts

FACTOR = 8  # the tiny VAE's four levels halve three times
LATENT = (1, 4, 24, 40)
TILE, OVERLAP = 16, 6


@pytest.fixture(scope="module")
def decoder(tiny_onnx_dir: Path):  # noqa: ANN201 - a closure over the session
    session = ort.InferenceSession(
        str(tiny_onnx_dir / "vae_decoder" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda latents: session.run(None, {name: latents})[0]


@pytest.fixture(scope="module")
def latents() -> np.ndarray:
    """A smooth random latent, as sampled latents are: neighbouring pixels alike, so decoded images have
    small gradients against which a seam would stand out."""
    rng = np.random.default_rng(0)
    coarse = rng.standard_normal((1, 4, LATENT[2] // 4, LATENT[3] // 4), dtype=np.float32)
    return np.ascontiguousarray(coarse.repeat(4, axis=2).repeat(4, axis=3))


def _border_columns(starts: list[int]) -> list[int]:
    """Pixel columns j where a tile begins or ends between j and j + 1."""
    edges = {start * FACTOR for start in starts[1:]} | {(start + TILE) * FACTOR for start in starts[:-1]}
    return sorted(edge - 1 for edge in edges)


def _column_jumps(pixels: np.ndarray) -> np.ndarray:
    """Mean absolute difference between each pixel column and the next."""
    return np.abs(np.diff(pixels, axis=3)).mean(axis=(0, 1, 2))


def _hard_cut_decode(decoder, latents: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """The same tiles pasted over each other without blending: what the seam check must catch."""
    out = np.zeros((1, 3, LATENT[2] * FACTOR, LATENT[3] * FACTOR), dtype=np.float32)
    for top in tile_starts(LATENT[2], TILE, OVERLAP):
        for left in tile_starts(LATENT[3], TILE, OVERLAP):
            tile = decoder(np.ascontiguousarray(latents[:, :, top : top + TILE, left : left + TILE]))
            out[:, :, top * FACTOR : (top + TILE) * FACTOR, left * FACTOR : (left + TILE) * FACTOR] = tile
    return out


def test_tiles_cover_the_side_with_the_overlap_asked() -> None:
    for side in (16, 17, 40, 64, 129):
        starts = tile_starts(side, TILE, OVERLAP)
        assert starts[0] == 0 and starts[-1] + min(TILE, side) == side
        assert all(b - a <= TILE - OVERLAP for a, b in zip(starts, starts[1:], strict=False))


def _pointwise_decoder(latents: np.ndarray) -> np.ndarray:
    """A decoder with no context at all (a channel mix, then nearest upsampling): every tile of it is
    exact, so the blended result must equal the whole decode wherever the weights put it."""
    mix = np.array([[0.5, -0.2, 0.1, 0.3], [0.1, 0.4, -0.3, 0.2], [-0.2, 0.1, 0.6, -0.1]], dtype=np.float32)
    pixels = np.einsum("oc,bchw->bohw", mix, latents)
    return pixels.repeat(FACTOR, axis=2).repeat(FACTOR, axis=3)


def test_tiles_are_placed_and_weighted_exactly(latents: np.ndarray) -> None:
    whole = _pointwise_decoder(latents)
    for tile, overlap in ((TILE, OVERLAP), (7, 3), (24, 20)):
        tiled = decode_tiled(_pointwise_decoder, latents, FACTOR, tile, overlap)
        np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)


def test_tiled_decode_has_no_seams(decoder, latents: np.ndarray) -> None:  # noqa: ANN001
    borders = _border_columns(tile_starts(LATENT[3], TILE, OVERLAP))
    typical = np.median(_column_jumps(decoder(latents)))

    blended = _column_jumps(decode_tiled(decoder, latents, FACTOR, TILE, OVERLAP))
    assert blended[borders].max() < 2 * typical

    # The check can fail: unblended tiles leave steps at their borders.
    pasted = _column_jumps(_hard_cut_decode(decoder, latents))
    assert pasted[borders].max() > 2 * typical


def test_one_tile_is_the_whole_decode(decoder, latents: np.ndarray) -> None:  # noqa: ANN001
    small = np.ascontiguousarray(latents[:, :, :TILE, :TILE])
    np.testing.assert_array_equal(decode_tiled(decoder, small, FACTOR, TILE, OVERLAP), decoder(small))


@pytest.mark.parametrize("overlap", [0, TILE])
def test_overlap_out_of_range_is_refused(decoder, latents: np.ndarray, overlap: int) -> None:  # noqa: ANN001
    with pytest.raises(SettingsError, match="overlap"):
        decode_tiled(decoder, latents, FACTOR, TILE, overlap)
