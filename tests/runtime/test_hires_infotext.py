"""The hires fix in the `parameters` text: written with the web UI's keys, in its order, with the first
pass's Size (as its create_infotext writes p.width x p.height), and read back from texts the web UI wrote."""

import pytest

from sdrun.infotext import format_parameters, parse_parameters, sdrun_version
from sdrun.settings import HiresFix, ImageSettings

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


def test_written_as_the_web_ui_writes_it() -> None:
    hires = HiresFix(scale=2.0, steps=10, upscaler="Latent", strength=0.7, sampler="euler_a")
    assert format_parameters(ImageSettings(**{**BASE.__dict__, "hires": hires})) == (
        "a red cube\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7, Seed: 1, Size: 512x768, "
        "Model: tiny-shapes, Denoising strength: 0.7, RNG: numpy, Hires upscale: 2, Hires steps: 10, "
        f"Hires upscaler: Latent, sdrun sampler: euler_a, Version: {sdrun_version()}"
    )


def test_read_from_the_web_ui() -> None:
    """A text as the web UI 1.10 writes it (its keys in its order; Version and Model hash ignored)."""
    text = (
        "a castle\nNegative prompt: fog\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, "
        'Hires sampler: Euler, Hires prompt: "a castle, detailed", Hires resize: 1024x0, Hires steps: 12, '
        "Hires upscaler: Latent (bicubic antialiased), Hires schedule type: Uniform, Version: v1.10.1"
    )
    settings = parse_parameters(text)
    assert (settings.width, settings.height, settings.strength) == (512, 512, None)
    assert (settings.sampler, settings.schedule_type) == ("k_dpmpp_2m", "Karras")
    assert settings.hires == HiresFix(
        resize=(1024, 0),
        upscaler="Latent (bicubic antialiased)",
        steps=12,
        strength=0.45,
        prompt="a castle, detailed",
        sampler="k_euler",
        schedule_type="Uniform",
    )


def test_a_text_without_hires_keys_has_no_hires_fix() -> None:
    text = "a cube\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 512x512, Denoising strength: 0.5"
    settings = parse_parameters(text)
    assert settings.hires is None and settings.strength == 0.5


@pytest.mark.parametrize(
    "hires",
    [
        HiresFix(scale=1.5, upscaler="Lanczos", strength=0.55, sampler="euler_a"),
        HiresFix(resize=(1024, 1536), upscaler="Latent (nearest-exact)", steps=7, sampler="dpmpp_2m_karras"),
        HiresFix(prompt="a blue cube, sharp", negative_prompt="blurry", sampler="euler_a", upscaler="None"),
        HiresFix(steps=5, sampler="k_dpmpp_2m", schedule_type="Exponential"),
    ],
)
def test_round_trip(hires: HiresFix) -> None:
    settings = ImageSettings(**{**BASE.__dict__, "hires": hires})
    assert parse_parameters(format_parameters(settings)) == settings
