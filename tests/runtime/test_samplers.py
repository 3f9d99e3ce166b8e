"""Step-by-step parity of sdrun's numpy samplers with diffusers 0.36's schedulers (driven as in
sampler_parity), at the usual step counts; the few-step samplers' own cases are in test_few_step_samplers.
"""

from __future__ import annotations

import numpy as np
import pytest
from sampler_parity import (
    RTOL,
    SHAPE,
    assert_same_run,
    diffusers_scheduler,
    fake_model,
    relative_error,
    run_diffusers,
)
from scheduler_configs import SD1_CONFIG

from sdrun.errors import SdrunError
from sdrun.samplers import (
    SAMPLERS,
    SamplerError,
    check_sampler_name,
    first_step,
    make_sampler,
    sample,
)
from sdrun.schedule import NoiseSchedule

# The rows that run on their diffusers scheduler's timesteps (A1111's own are test_a1111_samplers', its
# UniPC, k_unipc, test_a1111_unipc's).
DIFFUSERS_ROWS = [
    name
    for name, spec in SAMPLERS.items()
    if not (spec.takes_schedule_type or spec.a1111_timesteps) and name != "k_unipc"
]


@pytest.mark.parametrize("name", DIFFUSERS_ROWS)
@pytest.mark.parametrize("num_steps", [10, 25])
def test_txt2img_matches_diffusers_sd1(name: str, num_steps: int) -> None:
    assert_same_run(name, SD1_CONFIG, num_steps)


@pytest.mark.parametrize("name", DIFFUSERS_ROWS)
@pytest.mark.parametrize(
    "spacing,num_steps",
    [("leading", 10), ("trailing", 10), ("linspace", 25), ("trailing", 7), ("leading", 30)],
)
def test_txt2img_matches_diffusers_spacing(name: str, spacing: str, num_steps: int) -> None:
    assert_same_run(name, {**SD1_CONFIG, "timestep_spacing": spacing}, num_steps)


@pytest.mark.parametrize("name", DIFFUSERS_ROWS)
def test_v_prediction_matches_diffusers(name: str) -> None:
    assert_same_run(name, {**SD1_CONFIG, "prediction_type": "v_prediction"}, 20)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "euler_a", "dpmpp_2m"])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_other_beta_schedules_match_diffusers(name: str, beta_schedule: str) -> None:
    config = {**SD1_CONFIG, "beta_schedule": beta_schedule, "beta_start": 0.0001, "beta_end": 0.02}
    assert_same_run(name, config, 15)


def test_karras_on_the_linear_schedule_is_within_diffusers_float32_error() -> None:
    """diffusers takes sigma_min = sqrt((1 - abar_0) / abar_0) in float32, where 1 - abar_0 = beta_0 = 1e-4
    cancels: 8e-5 off the float64 value, which moves every Karras sigma. (Under SD's schedule the
    difference is 1.3e-5 and the 1e-5 bound holds; diffusers fails on Karras with the cosine schedule,
    whose rounded timesteps repeat.)"""
    config = {**SD1_CONFIG, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}
    assert_same_run("dpmpp_2m_karras", config, 15, rtol=5e-5)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_matches_diffusers(eta: float) -> None:
    assert_same_run("ddim", SD1_CONFIG, 20, eta=eta)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_clip_sample_and_set_alpha_to_one_match_diffusers(name: str) -> None:
    config = {**SD1_CONFIG, "clip_sample": True, "clip_sample_range": 0.5, "set_alpha_to_one": True}
    assert_same_run(name, config, 10)


@pytest.mark.parametrize("name", [name for name in DIFFUSERS_ROWS if not SAMPLERS[name].distilled])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_match_diffusers(name: str, spacing: str) -> None:
    config = {**SD1_CONFIG, "timestep_spacing": spacing}
    schedule = NoiseSchedule.from_config(config)
    for num_steps in [1, 2, 3, 7, 10, 13, 20, 25, 30, 50, 150, 999]:
        reference = diffusers_scheduler(name, config)
        reference.set_timesteps(num_steps)
        expected = reference.timesteps.numpy().astype(np.float64)
        actual = make_sampler(name, schedule, num_steps).timesteps
        assert actual.shape == expected.shape, f"{num_steps} steps"
        np.testing.assert_allclose(actual, expected, rtol=1e-6, err_msg=f"{num_steps} steps")


@pytest.mark.parametrize("name", DIFFUSERS_ROWS)
@pytest.mark.parametrize("strength", [0.3, 0.5, 0.75, 1.0])
def test_img2img_matches_diffusers(name: str, strength: float) -> None:
    init = np.random.default_rng(3).standard_normal(SHAPE, dtype=np.float32) * 0.8
    num_steps = 12
    noise = np.random.default_rng(4).standard_normal(SHAPE, dtype=np.float32)
    step_noises = [np.zeros(SHAPE, np.float32)] * num_steps
    ref_calls, _, ref_start, _ = run_diffusers(
        name, SD1_CONFIG, num_steps, noise, step_noises, init=init, strength=strength
    )
    sampler = make_sampler(name, NoiseSchedule.from_config(SD1_CONFIG), num_steps, strength=strength)
    first = first_step(num_steps, strength, name)
    assert num_steps - first == len(ref_calls)
    assert relative_error(sampler.noised(init, noise, first), ref_start) < RTOL
    assert_same_run(name, SD1_CONFIG, num_steps, init=init, strength=strength)


@pytest.mark.parametrize("name", ["ddpm", "euler_a", "ddim"])
def test_seed_decides_the_stochastic_samplers(name: str) -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    noise = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    eta = 1.0 if name == "ddim" else 0.0

    def run(seed: int) -> np.ndarray:
        return sample(name, fake_model, schedule, 8, noise, np.random.default_rng(seed), eta=eta)

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))


def test_global_rng_is_untouched() -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    noise = np.zeros(SHAPE, np.float32)
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    sample("euler_a", fake_model, schedule, 4, noise, np.random.default_rng(0))
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_callback_stops_the_run() -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    noise = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    seen = []

    def stop_after_three(step: int, total: int, latents: np.ndarray) -> bool:
        seen.append((step, total, latents.copy()))
        return step == 2

    rng = np.random.default_rng(0)
    result = sample("dpmpp_2m", fake_model, schedule, 10, noise, rng, callback=stop_after_three)
    assert [(step, total) for step, total, _ in seen] == [(0, 10), (1, 10), (2, 10)]
    np.testing.assert_array_equal(result, seen[-1][2])


def test_unknown_sampler_is_a_clear_error() -> None:
    with pytest.raises(SamplerError, match="unknown sampler 'heun'.*ddpm, ddim, euler, euler_a, dpmpp_2m"):
        check_sampler_name("heun")
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    with pytest.raises(SdrunError, match="unknown sampler"):
        sample("heun", fake_model, schedule, 10, np.zeros(SHAPE, np.float32), np.random.default_rng(0))


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5, float("nan")])
def test_strength_out_of_range_is_a_clear_error(strength: float) -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    zeros = np.zeros(SHAPE, np.float32)
    with pytest.raises(SamplerError, match=r"strength .* out of range.*\(0, 1\]"):
        sample(
            "ddim",
            fake_model,
            schedule,
            10,
            zeros,
            np.random.default_rng(0),
            init_latents=zeros,
            strength=strength,
        )


def test_bad_settings_are_clear_errors() -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    zeros = np.zeros(SHAPE, np.float32)
    rng = np.random.default_rng(0)
    with pytest.raises(SamplerError, match="leaves none of the 10 steps"):
        sample("ddim", fake_model, schedule, 10, zeros, rng, init_latents=zeros, strength=0.05)
    with pytest.raises(SamplerError, match="img2img only"):
        sample("ddim", fake_model, schedule, 10, zeros, rng, strength=0.5)
    with pytest.raises(SamplerError, match="eta applies to the ddim, ddim_trailing, k_.*, tcd samplers"):
        sample("euler", fake_model, schedule, 10, zeros, rng, eta=0.5)
    with pytest.raises(SamplerError, match="num_steps=0"):
        sample("euler", fake_model, schedule, 0, zeros, rng)
    with pytest.raises(SamplerError, match="num_steps=1001"):
        sample("euler", fake_model, schedule, 1001, zeros, rng)
    with pytest.raises(SamplerError, match="init_latents shape"):
        sample("euler", fake_model, schedule, 10, zeros, rng, init_latents=zeros[:, :3], strength=0.5)
