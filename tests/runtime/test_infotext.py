"""The `parameters` text chunk: the AUTOMATIC1111 web UI's layout, written and read back."""

from pathlib import Path

import pytest
from PIL import Image

from sdrun.errors import SettingsError
from sdrun.infotext import format_parameters, parse_parameters, read_parameters, sdrun_version
from sdrun.png_files import read_png_settings, save_png
from sdrun.samplers import SAMPLERS, resolve_schedule_type
from sdrun.settings import ImageSettings

BASE = ImageSettings(
    prompt="a red cube",
    negative_prompt="",
    steps=20,
    sampler="k_euler_a",
    guidance_scale=7.0,
    seed=1,
    width=512,
    height=768,
    model="tiny-shapes",
    schedule_type="Uniform",
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
        schedule_type=resolve_schedule_type(sampler, None),  # as prepare records it
    )
    assert parse_parameters(format_parameters(settings)) == settings


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sdrun_sampler_key_only_where_a1111s_names_stand_for_another(sampler: str) -> None:
    """A1111's labels read as its own samplers (k_*): sdrun's diffusers-discretised rows that share a label
    (euler_a is "Euler a") say which they are in a key of sdrun's own; the others need none."""
    settings = ImageSettings(**{**BASE.__dict__, "sampler": sampler, "schedule_type": None})
    settings = ImageSettings(**{**settings.__dict__, "schedule_type": resolve_schedule_type(sampler, None)})
    claimed = sampler in ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "euler_trailing", "ddim")
    assert ("sdrun sampler: " in format_parameters(settings)) is claimed


def test_diffusers_rows_keep_the_web_ui_layout() -> None:
    settings = ImageSettings(**{**BASE.__dict__, "sampler": "euler_a", "schedule_type": None})
    assert format_parameters(settings).endswith(
        "Steps: 20, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7, Seed: 1, Size: 512x768, "
        f"Model: tiny-shapes, RNG: numpy, sdrun sampler: euler_a, Version: {sdrun_version()}"
    )


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
        sampler="k_dpmpp_2m",
        guidance_scale=7.0,
        seed=3527823911,
        width=512,
        height=768,
        model="v1-5-pruned-emaonly",
        strength=0.45,
        clip_skip=2,
        model_hash="6ce0161689",
        random_source="gpu",  # no RNG field: the web UI's default source
        schedule_type="Karras",
    )


@pytest.mark.parametrize(
    "sampler_fields, expected",
    [
        ("Sampler: DPM++ 2M Karras", ("k_dpmpp_2m", "Karras")),  # before web UI 1.9
        ("Sampler: DPM++ SDE Karras", ("k_dpmpp_sde", "Karras")),
        ("Sampler: DPM2 a Karras", ("k_dpm_2_a", "Karras")),
        ("Sampler: DPM++ 2M SDE Exponential", ("k_dpmpp_2m_sde", "Exponential")),  # web UI 1.6 to 1.8
        ("Sampler: DPM++ 2M", ("k_dpmpp_2m", "Uniform")),  # no schedule type: before 1.9, or Uniform
        ("Sampler: DPM++ 2M, Schedule type: Automatic", ("k_dpmpp_2m", None)),
        ("Sampler: Euler a", ("k_euler_a", "Uniform")),
        ("Sampler: Euler a, Schedule type: Automatic", ("k_euler_a", None)),
        ("Sampler: Euler, Schedule type: Uniform", ("k_euler", "Uniform")),
        ("Sampler: DDIM", ("k_ddim", None)),
        ("Sampler: DPM++ SDE, Schedule type: Karras", ("k_dpmpp_sde", "Karras")),
        ("Sampler: Euler a, Schedule type: Karras", ("k_euler_a", "Karras")),
        ("Sampler: DDIM, Schedule type: SGM Uniform", ("ddim_trailing", None)),
        ("Sampler: Euler, Schedule type: SGM Uniform", ("k_euler", "SGM Uniform")),
        ("Sampler: LCM, Schedule type: Automatic", ("lcm", None)),
        ("Sampler: TCD", ("tcd", None)),
        ("Sampler: Heun, Schedule type: Simple", ("k_heun", "Simple")),
        ("Sampler: Euler, Schedule type: Exponential", ("k_euler", "Exponential")),
        ("Sampler: DDIM, Schedule type: Karras", ("DDIM Karras", None)),
        ("Sampler: euler_a, Schedule type: Karras", ("euler_a", None)),  # sdrun's own name
    ],
)
def test_web_ui_sampler_labels(sampler_fields: str, expected: tuple[str, str | None]) -> None:
    text = f"a cat\nSteps: 20, {sampler_fields}, CFG scale: 7, Seed: 1, Size: 512x512"
    parsed = parse_parameters(text)
    assert (parsed.sampler, parsed.schedule_type) == expected


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
