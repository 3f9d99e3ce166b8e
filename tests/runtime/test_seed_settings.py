"""The random source and the web UI's seed features as settings: checked by `prepare`, carried into each
image's settings and its PNG text (written and read as the web UI does), reaching the draws of the
pipeline, and given on the command line."""

import copy
from pathlib import Path

import numpy as np
import pytest
from cli_runs import assert_one_line_error, png_parameters, png_pixels, run_cli
from test_seed_features import reference_draws

from sdrun.errors import SettingsError
from sdrun.infotext import format_parameters, parse_parameters
from sdrun.pipeline import Pipeline
from sdrun.settings import ImageSettings

pytest.importorskip("torch")

BASE = ImageSettings(
    prompt="a cube", negative_prompt="", steps=20, sampler="euler_a", guidance_scale=7.0, seed=3, width=512,
    height=768,
)  # fmt: skip
WEB_UI_LINE = "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 3, Size: 512x768"


@pytest.fixture(scope="module")
def pipeline(tiny_onnx_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_onnx_dir, provider="cpu")


def test_the_web_uis_keys_are_written_as_it_writes_them() -> None:
    settings = ImageSettings(
        **{**BASE.__dict__, "model": "m", "random_source": "cpu", "eta_noise_seed_delta": 31337, "subseed": 9,
           "subseed_strength": 0.25, "seed_resize_from": (640, 512), "clip_skip": 2}
    )  # fmt: skip
    assert (
        "Size: 512x768, Model: m, Variation seed: 9, Variation seed strength: 0.25, "
        "Seed resize from: 640x512, Clip skip: 2, ENSD: 31337, RNG: CPU, "
    ) in format_parameters(settings)
    assert parse_parameters(format_parameters(settings)) == settings


@pytest.mark.parametrize(
    "source, field", [(None, "RNG: numpy"), ("gpu", None), ("cpu", "RNG: CPU"), ("nv", "RNG: NV")]
)
def test_each_source_round_trips_and_gpu_is_the_web_uis_unwritten_default(source, field) -> None:
    settings = ImageSettings(**{**BASE.__dict__, "random_source": source})
    text = format_parameters(settings)
    assert ("RNG" in text) is (field is not None) and (field is None or f"{field}, " in text)
    assert parse_parameters(text) == settings


def test_a_web_ui_text_without_rng_was_drawn_on_its_gpu_source() -> None:
    assert parse_parameters(f"a cube\n{WEB_UI_LINE}").random_source == "gpu"
    assert parse_parameters(f"a cube\n{WEB_UI_LINE}, RNG: NV").random_source == "nv"
    varied = "Variation seed: 12, Variation seed strength: 0.5, ENSD: 31337"
    read = parse_parameters(f"a cube\n{WEB_UI_LINE}, {varied}")
    assert (read.subseed, read.subseed_strength, read.eta_noise_seed_delta) == (12, 0.5, 31337)
    with pytest.raises(SettingsError, match="RNG: 'Philox' is not a random source"):
        parse_parameters(f"a cube\n{WEB_UI_LINE}, RNG: Philox")
    with pytest.raises(SettingsError, match="Seed resize from"):
        parse_parameters(f"a cube\n{WEB_UI_LINE}, Seed resize from: -1x-1")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"random_source": "cuda"}, "random source 'cuda' is unknown: give one of numpy, gpu, cpu, nv"),
        ({"eta_noise_seed_delta": -1}, "eta noise seed delta (ENSD) must be a whole number"),
        ({"eta_noise_seed_delta": True}, "eta noise seed delta (ENSD) must be a whole number"),
        ({"subseed_strength": 1.5}, "variation seed strength 1.5 is out of range"),
        ({"subseed": 2**32, "subseed_strength": 0.5}, "variation seed must be a whole number"),
        ({"seed_resize_from": (0, 64)}, "seed resize from must be (width, height)"),
        ({"seed_resize_from": "64x64"}, "seed resize from must be (width, height)"),
        ({"seed_resize_from": (100_000, 100_000)}, "above the limit"),
    ],
)
def test_prepare_refuses_bad_values_in_one_line(pipeline: Pipeline, fields: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        pipeline.prepare("a cube", **fields)
    assert "\n" not in str(refused.value)


def test_a_strength_without_a_subseed_picks_a_random_one(pipeline: Pipeline) -> None:
    request = pipeline.prepare("a cube", seed=1, subseed_strength=0.5, random_source="GPU")
    assert request.subseed is not None and request.random_source == "gpu"
    assert pipeline.prepare("a cube", seed=1, subseed=4).image_settings(0, "m", 1).subseed is None


def test_the_pipeline_draws_each_images_web_ui_noise(pipeline: Pipeline, monkeypatch) -> None:
    """Two images with every feature on: each starts from the reference's first draw and samples from its
    later ones (the seed stays, the subseed counts up)."""
    seen = []
    denoise = Pipeline.denoise

    def spy(self, embeddings, noise, rng, **kwargs):
        seen.append((noise.copy(), copy.deepcopy(rng)))
        return denoise(self, embeddings, noise, rng, **kwargs)

    monkeypatch.setattr(Pipeline, "denoise", spy)
    features = dict(random_source="cpu", eta_noise_seed_delta=7, subseed=4, subseed_strength=0.5,
                    seed_resize_from=(48, 80))  # fmt: skip
    made = pipeline.generate("a cube", seed=3, steps=2, sampler="euler_a", num_images=2, **features)
    latent = pipeline.facts.latent_shape(64, 64)
    for index, ((noise, rng), settings) in enumerate(zip(seen, made.settings, strict=True)):
        assert (settings.seed, settings.subseed) == (3, 4 + index)
        expected = reference_draws(3, 4 + index, 0.5, (48, 80), 7, shape=latent[1:])
        np.testing.assert_allclose(noise.reshape(latent[1:]), expected[0], rtol=0, atol=2e-6)
        np.testing.assert_array_equal(rng.standard_normal(latent).reshape(latent[1:]), expected[1])


def test_the_cli_takes_the_options_and_reproduces_the_png(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    first, again, numpy_drawn = tmp_path / "first.png", tmp_path / "again.png", tmp_path / "numpy.png"
    options = "--random-source CPU --ensd 31337 --subseed 9 --subseed-strength 0.4 --seed-resize-from 48x80"
    options = [*options.split(), "--sampler", "euler_a", "--steps", "3", "--seed", "5"]
    result = run_cli("a cube", "--model", tiny_onnx_dir, "--out", first, *options)
    assert result.exit_code == 0, result.output
    assert (
        "Variation seed: 9, Variation seed strength: 0.4, Seed resize from: 48x80, ENSD: 31337, RNG: CPU, "
    ) in png_parameters(first)
    settings = parse_parameters(png_parameters(first))
    assert (settings.random_source, settings.eta_noise_seed_delta, settings.subseed) == ("cpu", 31337, 9)
    assert (settings.subseed_strength, settings.seed_resize_from) == (0.4, (48, 80))
    assert run_cli("--from-png", first, "--model", tiny_onnx_dir, "--out", again).exit_code == 0
    np.testing.assert_array_equal(png_pixels(first), png_pixels(again))
    result = run_cli(
        "--from-png", first, "--model", tiny_onnx_dir, "--out", numpy_drawn, "--random-source", "numpy"
    )
    assert result.exit_code == 0, result.output
    moved = np.abs(png_pixels(first) - png_pixels(numpy_drawn)).max()
    assert moved > 10, "power: the source reaches the draws"
    assert_one_line_error(
        run_cli("a cube", "--model", tiny_onnx_dir, "--seed-resize-from", "48 by 80"), "is not WIDTHxHEIGHT"
    )
