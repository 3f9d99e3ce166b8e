"""The schedule_type setting from the call to the sampler: prepare checks it (one-line errors), resolves
Automatic as AUTOMATIC1111 does, and the UNet sees the timesteps of A1111's noise levels for it (from
k-diffusion's wrapper and A1111's schedule definitions, a1111_reference); the picture's infotext says it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from a1111_reference import CompVisModel, a1111_sigmas, wrapper
from cli_runs import assert_one_line_error, png_parameters, png_pixels, run_cli
from kdiffusion_reference import requires_kdiffusion

from sdrun.errors import SettingsError
from sdrun.infotext import format_parameters, parse_parameters
from sdrun.pipeline import Pipeline
from sdrun.settings import GenerationSettings

PROMPT = "a small red cube"


@pytest.fixture(scope="module")
def pipeline(tiny_onnx_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_onnx_dir, provider="cpu")


@pytest.mark.parametrize(
    "sampler, given, recorded",
    [
        ("k_dpmpp_2m", None, "Karras"),  # Automatic: A1111's pick for DPM++ 2M
        ("k_dpmpp_2m", "Automatic", "Karras"),
        ("k_dpmpp_2m_sde", None, "Exponential"),
        ("k_euler_a", None, "Uniform"),
        ("k_euler", "sgm_uniform", "SGM Uniform"),  # the API's name
        ("k_heun", "KARRAS", "Karras"),
        ("euler_a", None, None),  # diffusers' rows take none
    ],
)
def test_prepare_resolves_the_schedule_type(pipeline: Pipeline, sampler, given, recorded) -> None:
    assert pipeline.prepare(PROMPT, sampler=sampler, schedule_type=given).schedule_type == recorded


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"sampler": "lcm", "schedule_type": "Karras"}, "lcm runs on its own timesteps and takes no"),
        ({"sampler": "euler_a", "schedule_type": "Uniform"}, "euler_a runs on its own timesteps"),
        ({"sampler": "k_euler", "schedule_type": "Beta"}, "unknown schedule type 'Beta': choose one of"),
        ({"sampler": "k_euler", "schedule_type": 3}, "unknown schedule type"),
    ],
)
def test_bad_schedule_types_are_one_line_errors(pipeline: Pipeline, fields: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        pipeline.prepare(PROMPT, **fields)
    assert "\n" not in str(caught.value)


@requires_kdiffusion
@pytest.mark.parametrize("schedule_type", [None, "uniform", "Exponential", "SGM Uniform", "Simple", "Normal"])
def test_the_unet_sees_a1111s_timesteps(pipeline: Pipeline, monkeypatch, schedule_type: str | None) -> None:
    unet = pipeline.sessions.get("unet")
    predict, seen = unet.predict, []

    def recording_unet(latents, timestep, *rest):
        seen.append(float(np.asarray(timestep).reshape(-1)[0]))
        return predict(latents, timestep, *rest)

    monkeypatch.setattr(unet, "predict", recording_unet)
    made = pipeline.generate(
        PROMPT, steps=6, seed=2, sampler="k_dpmpp_2m", schedule_type=schedule_type, guidance_scale=1.0
    )
    label = {None: "Karras", "uniform": "Uniform"}.get(schedule_type, schedule_type)
    schedule = pipeline.schedule
    inner = wrapper(CompVisModel(schedule.alphas_cumprod, None), schedule.prediction_type)
    sigmas = a1111_sigmas(inner, "k_dpmpp_2m", 6, None if schedule_type is None else label)
    expected = inner.sigma_to_t(sigmas[:-1]).numpy()
    np.testing.assert_allclose(seen, expected, rtol=1e-5, atol=1e-3)
    settings = made.settings[0]
    assert f"Sampler: DPM++ 2M, Schedule type: {label}," in format_parameters(settings)
    assert parse_parameters(format_parameters(settings)) == settings
    again = GenerationSettings.from_image(settings)
    assert again.schedule_type == label
    assert GenerationSettings.from_image(settings, sampler="ddim").schedule_type is None, "goes with it"


def test_the_cli_takes_a_schedule_type_and_the_png_says_it(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cube.png"
    args = (PROMPT, "--model", tiny_onnx_dir, "--steps", 3, "--seed", 4, "--sampler", "k_euler_a")
    made = run_cli(*args, "--schedule-type", "sgm_uniform", "--out", out)
    assert made.exit_code == 0, made.output
    assert "Sampler: Euler a, Schedule type: SGM Uniform," in png_parameters(out)
    again = tmp_path / "again.png"
    assert run_cli("--from-png", out, "--model", tiny_onnx_dir, "--out", again).exit_code == 0
    np.testing.assert_array_equal(png_pixels(again), png_pixels(out))
    refused = run_cli(PROMPT, "--model", tiny_onnx_dir, "--sampler", "lcm", "--schedule-type", "karras")
    assert_one_line_error(refused, "lcm runs on its own timesteps and takes no schedule type (Karras)")
