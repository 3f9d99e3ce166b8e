"""sdrun's NoiseSchedule against diffusers 0.36's schedulers: betas, alphas_cumprod, sigmas, timesteps.

diffusers keeps the schedule in float32 and sdrun in float64, so values agree to float32's rounding:
abar_t accumulates up to 1000 roundings (2e-5), and sigma_t = sqrt((1 - abar_t) / abar_t) also carries
the cancellation in 1 - abar_t (about 1e-7 absolute) where abar_t is near 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from scheduler_configs import SD1_CONFIG

from sdrun.errors import SdrunError
from sdrun.schedule import NoiseSchedule, ScheduleError

BETA_CONFIGS = [
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 500},
]
CUMPROD_RTOL = 2e-5


def assert_sigmas_close(schedule: NoiseSchedule, timesteps: np.ndarray, ours: np.ndarray, reference) -> None:
    """Within float32's error of diffusers' sigmas at ``timesteps`` (see the module docstring)."""
    one_minus_abar = 1 - np.interp(
        timesteps, np.arange(schedule.num_train_timesteps), schedule.alphas_cumprod
    )
    tolerance = CUMPROD_RTOL + 1e-7 / one_minus_abar
    error = np.abs(ours / np.asarray(reference, dtype=np.float64) - 1)
    assert np.all(error <= tolerance), f"worst at t={timesteps[np.argmax(error / tolerance)]}"


@pytest.mark.parametrize(
    "betas", BETA_CONFIGS, ids=lambda c: f"{c['beta_schedule']}-{c.get('num_train_timesteps')}"
)
def test_alphas_cumprod_match_diffusers(betas: dict) -> None:
    reference = DDIMScheduler(**betas)
    schedule = NoiseSchedule.from_config(betas)
    assert schedule.alphas_cumprod.dtype == np.float64
    assert schedule.num_train_timesteps == reference.config.num_train_timesteps
    np.testing.assert_allclose(schedule.alphas_cumprod, reference.alphas_cumprod.numpy(), rtol=CUMPROD_RTOL)


def test_trained_betas_are_used_as_given() -> None:
    betas = np.linspace(0.0002, 0.03, 1000) ** 1.1
    reference = DDIMScheduler(trained_betas=betas.tolist())
    schedule = NoiseSchedule.from_config({"trained_betas": betas.tolist()})
    np.testing.assert_allclose(schedule.alphas_cumprod, reference.alphas_cumprod.numpy(), rtol=CUMPROD_RTOL)


def test_absent_keys_take_sd1_values() -> None:
    reference = DDIMScheduler.from_config(SD1_CONFIG)
    schedule = NoiseSchedule.from_config({})
    np.testing.assert_allclose(schedule.alphas_cumprod, reference.alphas_cumprod.numpy(), rtol=CUMPROD_RTOL)
    assert schedule.steps_offset == reference.config.steps_offset == 1
    assert schedule.prediction_type == reference.config.prediction_type == "epsilon"
    assert schedule.set_alpha_to_one is reference.config.set_alpha_to_one is False
    assert schedule.clip_sample is reference.config.clip_sample is False
    # SD 1.x's config names no spacing; each sampler then takes its diffusers scheduler's default.
    assert schedule.timestep_spacing is None
    assert schedule.spacing("leading") == "leading"


def test_config_values_are_read() -> None:
    config = {
        **SD1_CONFIG,
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
        "steps_offset": 0,
    }
    schedule = NoiseSchedule.from_config(config)
    assert (schedule.prediction_type, schedule.timestep_spacing, schedule.steps_offset) == (
        "v_prediction",
        "trailing",
        0,
    )
    assert schedule.spacing("linspace") == "trailing"


@pytest.mark.parametrize("betas", BETA_CONFIGS[:3], ids=lambda c: c["beta_schedule"])
def test_train_sigmas_match_diffusers(betas: dict) -> None:
    reference = EulerDiscreteScheduler(**betas)  # before set_timesteps: all training sigmas, descending
    schedule = NoiseSchedule.from_config(betas)
    timesteps = np.arange(schedule.num_train_timesteps)
    assert_sigmas_close(schedule, timesteps, schedule.train_sigmas, reference.sigmas.numpy()[-2::-1])


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_spaced_timesteps_match_ddim(spacing: str, steps_offset: int) -> None:
    config = {**SD1_CONFIG, "timestep_spacing": spacing, "steps_offset": steps_offset}
    schedule = NoiseSchedule.from_config(config)
    reference = DDIMScheduler.from_config(config)
    for num_steps in range(1, 101):
        reference.set_timesteps(num_steps)
        actual = schedule.spaced_timesteps(num_steps, spacing)
        np.testing.assert_array_equal(actual, reference.timesteps.numpy(), err_msg=f"{num_steps} steps")


def test_fractional_linspace_and_sigma_at_match_euler() -> None:
    config = {**SD1_CONFIG, "timestep_spacing": "linspace"}
    schedule = NoiseSchedule.from_config(config)
    reference = EulerDiscreteScheduler.from_config(config)
    for num_steps in (7, 25, 33):
        reference.set_timesteps(num_steps)
        timesteps = schedule.spaced_timesteps(num_steps, "linspace", round_linspace=False)
        np.testing.assert_allclose(timesteps, reference.timesteps.numpy(), rtol=1e-6)
        assert not np.all(timesteps == timesteps.round())
        assert_sigmas_close(schedule, timesteps, schedule.sigma_at(timesteps), reference.sigmas.numpy()[:-1])


@pytest.mark.parametrize("num_steps", [5, 20, 50])
def test_karras_sigmas_and_their_timesteps_match_diffusers(num_steps: int) -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    reference = DPMSolverMultistepScheduler.from_config(SD1_CONFIG, use_karras_sigmas=True)
    reference.set_timesteps(num_steps)
    sigmas = schedule.karras_sigmas(num_steps)
    # Every Karras sigma leans on sigma_min = sigma_0, which carries the cancellation at t = 0.
    error = np.abs(sigmas / reference.sigmas.numpy()[:-1] - 1)
    assert error.max() < CUMPROD_RTOL + 1e-7 / (1 - schedule.alphas_cumprod[0])
    assert sigmas[0] == pytest.approx(float(reference.sigmas[0]), rel=1e-6)
    np.testing.assert_array_equal(schedule.timestep_at(sigmas).round(), reference.timesteps.numpy())


def test_timestep_at_inverts_sigma_at() -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    timesteps = np.array([0.0, 0.25, 17.5, 500.0, 998.9, 999.0])
    np.testing.assert_allclose(
        schedule.timestep_at(schedule.train_sigmas[timesteps.astype(int)]), timesteps.astype(int), atol=1e-9
    )


@pytest.mark.parametrize(
    "override,message",
    [
        ({"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid'.*linear, scaled_linear, squaredcos_cap_v2"),
        ({"prediction_type": "sample"}, "prediction_type='sample'.*epsilon, v_prediction"),
        ({"timestep_spacing": "uniform"}, "timestep_spacing='uniform'.*leading, trailing, linspace"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=true"),
        ({"thresholding": True}, "thresholding=true"),
        ({"trained_betas": [0.01] * 10}, "trained_betas has 10 values for num_train_timesteps=1000"),
        ({"num_train_timesteps": "1000"}, "num_train_timesteps='1000'"),
    ],
)
def test_bad_configs_are_clear_errors(override: dict, message: str) -> None:
    with pytest.raises(ScheduleError, match=message) as caught:
        NoiseSchedule.from_config({**SD1_CONFIG, **override})
    assert isinstance(caught.value, SdrunError)
    assert "\n" not in str(caught.value)


def test_non_dict_config_is_a_clear_error() -> None:
    with pytest.raises(ScheduleError, match="JSON object"):
        NoiseSchedule.from_config(["beta_start", 0.1])  # type: ignore[arg-type]


def test_step_count_is_checked() -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    for bad in (0, 1001, 2.5):
        with pytest.raises(ScheduleError, match=f"num_steps={bad!r}"):
            schedule.check_num_steps(bad)  # type: ignore[arg-type]
    schedule.check_num_steps(1000)
