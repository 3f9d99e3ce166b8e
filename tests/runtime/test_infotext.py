"""The `parameters` text chunk: the AUTOMATIC1111 web UI's layout, written and read back."""

from pathlib import Path

import pytest
from PIL import Image

from sdrun.errors import SettingsError
from sdrun.infotext import format_parameters, parse_parameters, read_parameters, sdrun_version
from sdrun.png_files import read_png_settings, save_png
from sdrun.samplers import SAMPLER_TABLE, SAMPLERS
from sdrun.settings import ImageSettings

BASE = ImageSettings(
    prompt="a red cube",
    negative_prompt="",
    steps=20,
    sampler="euler_a",
    guidance_scale=7.0,
    seed=1,
    width=512,
    height=768,
    model="tiny-shapes",
)


def test_format_follows_the_web_ui_layout() -> None:
    settings = ImageSettings(**{**BASE.__dict__, "negative_prompt": "blurry", "strength": 0.75})
    assert format_parameters(settings) == (
        "a red cube\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7, Seed: 1, Size: 512x768, "
        f"Model: tiny-shapes, Denoising strength: 0.75, RNG: numpy, Version: {sdrun_version()}"
    )


@pytest.mark.parametrize("overlay", [True, False])
def test_inpainting_settings_round_trip(overlay: bool) -> None:
    """`Mask overlay: off` (sdrun's own field) only when the init image was not pasted back."""
    settings = ImageSettings(**{**BASE.__dict__, "strength": 0.6, "mask_blur": 4, "overlay": overlay})
    text = format_parameters(settings)
    assert ("Mask overlay: off" in text) is not overlay
    assert parse_parameters(text) == settings


def test_empty_negative_prompt_writes_no_line() -> None:
    assert "Negative prompt" not in format_parameters(BASE)


@pytest.mark.parametrize(
    "prompt, negative",
    [
        ("a cube, a sphere, and a cone", "blurry, dark"),
        ('a sign that says "open: 24h", neon', 'no "text"'),
        ("first line\nsecond line, with comma\nthird: colon", "bad\nworse"),
        ("café, naïve — 日本語 🙂", "ünïcode"),
        ("Steps: 3, looks like a field", ""),
    ],
)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_round_trip(prompt: str, negative: str, sampler: str) -> None:
    settings = ImageSettings(
        prompt=prompt,
        negative_prompt=negative,
        steps=31,
        sampler=sampler,
        guidance_scale=6.5,
        seed=4294967295,  # the top of the one seed range (sdrun.settings.MAX_SEED)
        width=640,
        height=384,
        model='odd, name: "v2"',
        strength=0.35,
    )
    assert parse_parameters(format_parameters(settings)) == settings


def test_every_sampler_has_a_label_of_its_own() -> None:
    names = {(spec.a1111_label, spec.a1111_schedule) for spec in SAMPLER_TABLE}
    assert len(names) == len(SAMPLER_TABLE)
    automatic = [spec.a1111_label for spec in SAMPLER_TABLE if spec.a1111_automatic]
    assert sorted(automatic) == sorted({spec.a1111_label for spec in SAMPLER_TABLE}), "one Automatic each"


def test_parses_what_the_web_ui_writes() -> None:
    text = (
        'masterpiece, best quality, "quoted" words\n'
        "a second prompt line\n"
        "Negative prompt: lowres, bad anatomy\n"
        "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3527823911, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, "
        'Lora hashes: "detail: 0a1b2c, style: 3d4e5f", Version: v1.10.1'
    )
    read = read_parameters(text)
    assert read.unhonoured == {"Lora hashes": "detail: 0a1b2c, style: 3d4e5f"}
    assert read.settings == ImageSettings(
        prompt='masterpiece, best quality, "quoted" words\na second prompt line',
        negative_prompt="lowres, bad anatomy",
        steps=28,
        sampler="dpmpp_2m_karras",
        guidance_scale=7.0,
        seed=3527823911,
        width=512,
        height=768,
        model="v1-5-pruned-emaonly",
        strength=0.45,
        clip_skip=2,
        model_hash="6ce0161689",
        random_source="gpu",  # no RNG field: the web UI's default source
    )


@pytest.mark.parametrize(
    "sampler_fields, expected",
    [
        ("Sampler: DPM++ 2M Karras", "dpmpp_2m_karras"),  # before web UI 1.9
        ("Sampler: DPM++ 2M", "dpmpp_2m"),
        ("Sampler: DPM++ 2M, Schedule type: Automatic", "dpmpp_2m_karras"),
        ("Sampler: Euler a, Schedule type: Automatic", "euler_a"),
        ("Sampler: Euler, Schedule type: Uniform", "euler"),
        ("Sampler: DDIM", "ddim"),
        ("Sampler: DPM++ SDE, Schedule type: Karras", "DPM++ SDE"),
        ("Sampler: Euler a, Schedule type: Karras", "Euler a Karras"),
        ("Sampler: DDIM, Schedule type: SGM Uniform", "ddim_trailing"),
        ("Sampler: Euler, Schedule type: SGM Uniform", "euler_trailing"),
        ("Sampler: LCM, Schedule type: Automatic", "lcm"),
        ("Sampler: TCD", "tcd"),
        ("Sampler: Euler a, Schedule type: SGM Uniform", "Euler a SGM Uniform"),
        ("Sampler: Euler, Schedule type: Exponential", "Euler Exponential"),
    ],
)
def test_web_ui_sampler_labels(sampler_fields: str, expected: str) -> None:
    text = f"a cat\nSteps: 20, {sampler_fields}, CFG scale: 7, Seed: 1, Size: 512x512"
    assert parse_parameters(text).sampler == expected


@pytest.mark.parametrize(
    "text, problem",
    [
        ("just a prompt", "Steps"),
        ("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1", "Size"),
        ("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: big", "Size"),
        ("a cat\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 8x8", "Steps"),
        ("a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 8x8, Mask overlay: 0", "overlay"),
    ],
)
def test_unreadable_parameters_are_a_clear_error(text: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        parse_parameters(text)


def test_png_file_round_trip(tmp_path: Path) -> None:
    settings = ImageSettings(**{**BASE.__dict__, "prompt": "emoji 🙂, not Latin-1"})
    path = tmp_path / "image.png"
    save_png(Image.new("RGB", (8, 8), "red"), path, settings)
    with Image.open(path) as image:
        assert image.text["parameters"] == format_parameters(settings)
    assert read_png_settings(path) == settings


def test_png_without_parameters_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(SettingsError, match="no 'parameters' text chunk"):
        read_png_settings(path)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(SettingsError, match="is not a PNG file"):
        read_png_settings(tmp_path / "text.png")


def test_clip_skip_is_written_as_the_web_ui_writes_it() -> None:
    """Only above 1 (the web UI leaves its default out), and read back."""
    skipped = ImageSettings(**{**BASE.__dict__, "clip_skip": 2})
    assert "Model: tiny-shapes, Clip skip: 2, RNG: numpy, Version: sdrun" in format_parameters(skipped)
    assert parse_parameters(format_parameters(skipped)) == skipped
    assert "Clip skip" not in format_parameters(BASE)
