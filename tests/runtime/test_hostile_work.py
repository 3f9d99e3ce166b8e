"""How much work one call may cost, and how soon it stops: the work bound (sdrun.limits) refuses a call
before any session runs, and a StopSignal (sdrun.stopping) stops a call within one UNet pass, VAE pass or
tile, whatever the sampler's step does between them."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_hostile_inputs import FAST, _bomb, assert_refused, sdrun

from sdrun import images
from sdrun.errors import SettingsError
from sdrun.images import open_image
from sdrun.limits import Limits, unet_pass_work
from sdrun.networks import UNetGraph, VaeDecoderGraph
from sdrun.pipeline import Pipeline
from sdrun.stopping import GenerationCancelled, StopSignal

PROMPT = "a red cube"


def test_a_pass_costs_as_measured_on_sd15() -> None:
    """The proxy against the step times it was fitted to (sdrun.limits): 0.93 s at 256, ~4.5 s at 512,
    ~270 s at 2048 (per guided step, SD 1.5 on 2 cores)."""
    assert unet_pass_work(64 * 64) == pytest.approx(1.0)
    assert unet_pass_work(32 * 32) == pytest.approx(0.93 / 4.5, rel=0.1)
    assert unet_pass_work(256 * 256) == pytest.approx(270 / 4.5, rel=0.05)


@pytest.fixture(scope="module")
def bounded(tiny_sdexport_dir: Path) -> Iterator[Pipeline]:
    """The tiny model (64x64 pictures: 0.0129 units a pass) with a bound of 1 unit of work."""
    with Pipeline.load(tiny_sdexport_dir, provider="cpu", limits=Limits(max_work=1.0)) as pipeline:
        yield pipeline


def test_work_above_the_bound_is_refused_before_any_session_runs(bounded: Pipeline) -> None:
    # 16 images x 150 steps x 2 guidance passes x 0.0129 = 61.7 units; 2 steps would fit (0.82).
    with pytest.raises(SettingsError, match=r"is 62 units of work, above the limit of 1 .*at most 2 steps"):
        bounded.prepare(PROMPT, num_images=16, steps=150, guidance_scale=7.0)
    # Guidance 1 runs one pass a step: twice the steps fit.
    with pytest.raises(SettingsError, match="at most 4 steps"):
        bounded.prepare(PROMPT, num_images=16, steps=150, guidance_scale=1.0)
    assert bounded.prepare(PROMPT, num_images=16, steps=2, guidance_scale=7.0).num_images == 16


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[str, int], None]], dict[str, int]]:
    """counted(during): UNet passes and VAE decoder calls counted, `during(kind, count)` run inside each
    (where another thread's interrupt or cancel would land)."""

    def install(during: Callable[[str, int], None]) -> dict[str, int]:
        counts = {"unet": 0, "vae": 0}

        def wrap(kind: str, original: Callable[..., Any]) -> Callable[..., Any]:
            def run(*args: Any, **kwargs: Any) -> Any:
                counts[kind] += 1
                during(kind, counts[kind])
                return original(*args, **kwargs)

            return run

        monkeypatch.setattr(UNetGraph, "predict", wrap("unet", UNetGraph.predict))
        monkeypatch.setattr(VaeDecoderGraph, "decode", wrap("vae", VaeDecoderGraph.decode))
        return counts

    return install


@pytest.fixture(scope="module")
def sequential(tiny_sdexport_dir: Path) -> Iterator[Pipeline]:
    """Guidance as two UNet passes a step, and the VAE decoded in tiles."""
    with Pipeline.load(
        tiny_sdexport_dir, provider="cpu", sequential_guidance=True, tiled_vae=True
    ) as pipeline:
        yield pipeline


def test_cancel_stops_within_one_unet_pass(sequential: Pipeline, counted) -> None:
    stop = StopSignal()
    counts = counted(lambda kind, count: stop.cancel())
    with pytest.raises(GenerationCancelled):
        sequential.generate(PROMPT, steps=3, guidance_scale=7.0, num_images=2, stop=stop)
    assert counts == {"unet": 1, "vae": 0}  # not the step's second pass, and nothing decoded


def test_interrupt_stops_within_one_unet_pass_and_decodes_what_was_reached(
    sequential: Pipeline, counted
) -> None:
    stop = StopSignal()
    counts = counted(lambda kind, count: stop.interrupt() if (kind, count) == ("unet", 3) else None)
    result = sequential.generate(PROMPT, steps=3, guidance_scale=7.0, num_images=2, seed=5, stop=stop)
    assert counts == {"unet": 3, "vae": 1}  # the second step's second pass never ran
    assert len(result.images) == 1 and result.stopped
    one_step = sequential.generate(PROMPT, steps=3, guidance_scale=7.0, seed=5, callback=lambda *a: True)
    assert result.images[0].tobytes() == one_step.images[0].tobytes()  # the latents of the first step


def test_cancel_stops_a_tiled_decode_within_one_tile(sequential: Pipeline, counted) -> None:
    stop = StopSignal()
    counts = counted(lambda kind, count: stop.cancel() if kind == "vae" else None)
    with pytest.raises(GenerationCancelled):
        # 384x384 is a 48x48 latent: 2x2 tiles of 40.
        sequential.generate(PROMPT, steps=1, width=384, height=384, stop=stop)
    assert counts == {"unet": 2, "vae": 1}


# Init images: what decoding one may take. The CLI runs in a child under test_hostile_inputs' memory limit.
ISSUE_SIDE = 7000  # the issue's images: 49 megapixels, within the CLI's 50-megapixel limit


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path


@pytest.mark.parametrize(("mode", "colour"), [("I;16", 40_000), ("RGBA", (200, 10, 10, 128))])
def test_large_init_images_convert_within_the_memory_limit(
    mode: str, colour: object, tiny_sdexport_dir: Path, work: Path
) -> None:
    """16-bit grey (1.42 GB peak before, converted as float64 arrays of the whole image) and RGBA (1.24 GB:
    four whole-image copies while compositing over white) ended in a MemoryError traceback under the
    1.5 GiB limit; converted in strips they take ~0.55 and ~0.7 GB."""
    path = work / "large.png"
    Image.new(mode, (ISSUE_SIDE, ISSUE_SIDE), colour).save(path, compress_level=1)
    out = work / "out" / "x.png"
    run = sdrun("a cube", "--model", tiny_sdexport_dir, "--init-image", path, "--out", out, *FAST, cwd=work)
    assert run.status == 0 and "Traceback" not in run.stderr, run.stderr
    with Image.open(out) as made:
        assert made.size == (64, 64)


def _ico_holding(png: Path, path: Path) -> Path:
    """An ICO file whose one image is the PNG `png` (PIL decodes an ICO's largest image when opening it)."""
    data = png.read_bytes()
    header = (0).to_bytes(2, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
    entry = bytes([0, 0, 0, 0]) + (1).to_bytes(2, "little") + (32).to_bytes(2, "little")
    entry += len(data).to_bytes(4, "little") + (6 + 16).to_bytes(4, "little")
    path.write_bytes(header + entry + data)
    return path


def _two_page_tiff(path: Path) -> Path:
    Image.new("RGB", (64, 64)).save(path, save_all=True, append_images=[Image.new("RGB", (640, 480))])
    return path


@pytest.mark.parametrize(
    "craft",
    [lambda w: _ico_holding(_bomb(w / "bomb.png"), w / "bomb.ico"), lambda w: _two_page_tiff(w / "p.tif")],
    ids=["ICO holding a 10000x10000 PNG", "TIFF of two pages of two sizes"],
)
def test_formats_of_several_images_are_refused_before_decoding(
    craft: Callable[[Path], Path], tiny_sdexport_dir: Path, work: Path
) -> None:
    path = craft(work)
    out = work / "out"
    run = sdrun(
        "a cube", "--model", tiny_sdexport_dir, "--init-image", path, "--out", out / "x.png", *FAST, cwd=work
    )
    assert_refused(run, "is not a PNG, JPEG or WebP image", out)
    assert run.seconds < 30


def test_webp_counts_twice_against_the_pixel_limit(tmp_path: Path) -> None:
    """libwebp's decoder holds two canvases beside PIL's copy (1.1 GB for 7000x7000 against 0.7 GB as PNG)."""
    for suffix in ("png", "webp"):
        Image.new("RGB", (100, 100), (9, 99, 199)).save(tmp_path / f"i.{suffix}")
    assert open_image(tmp_path / "i.png", 15_000).size == (100, 100)
    with pytest.raises(SettingsError, match="above the limit of 7,500 pixels for WebP"):
        open_image(tmp_path / "i.webp", 15_000)
    assert open_image(tmp_path / "i.webp", 20_000).format == "WEBP"


def _whole_image_rgb(image: Image.Image) -> Image.Image:
    """The conversion as it was before strips (sdrun.images.to_rgb at 88077fd), the reference."""
    if image.mode in ("I;16", "I"):
        levels = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(levels.round(), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def test_conversion_in_strips_gives_the_whole_conversions_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid images keep their pixels: strips of 7 pixels (partial ones too) against the whole image."""
    monkeypatch.setattr(images, "STRIP_PIXELS", 7)
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, (13, 5, 4), dtype=np.uint8)
    palette = Image.fromarray(samples[..., :3]).convert("P")
    palette.info["transparency"] = 3
    cases = [
        Image.fromarray(rng.integers(0, 65536, (13, 5), dtype=np.uint16)),
        Image.fromarray(samples, "RGBA"),
        Image.fromarray(samples[..., :2], "LA"),
        palette,
        Image.fromarray(samples[..., :3]),
    ]
    for image in cases:
        assert images.to_rgb(image).tobytes() == _whole_image_rgb(image).tobytes(), image.mode
