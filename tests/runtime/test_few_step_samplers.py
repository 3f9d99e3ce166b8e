"""The few-step samplers (lcm, tcd, ddim_trailing, euler_trailing) against diffusers 0.36's LCMScheduler,
TCDScheduler and DDIM / Euler with timestep_spacing="trailing", step by step at 1 to 8 steps, txt2img and
img2img; and one UNet pass a step at guidance 1 for every sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sampler_parity import SHAPE, assert_same_run, diffusers_scheduler, fake_model, run_sdrun
from scheduler_configs import SD1_CONFIG

from sdrun.pipeline import Pipeline
from sdrun.samplers import SAMPLERS, SamplerError, make_sampler, sample
from sdrun.schedule import NoiseSchedule

FEW_STEP = ["lcm", "tcd", "ddim_trailing", "euler_trailing"]
INIT = np.random.default_rng(3).standard_normal(SHAPE, dtype=np.float32) * 0.8


@pytest.mark.parametrize("name", FEW_STEP)
@pytest.mark.parametrize("num_steps", [1, 2, 3, 4, 8])
def test_txt2img_matches_diffusers(name: str, num_steps: int) -> None:
    assert_same_run(name, SD1_CONFIG, num_steps)


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("num_steps", [2, 4, 6, 8])
def test_tcd_gamma_matches_diffusers(gamma: float, num_steps: int) -> None:
    assert_same_run("tcd", SD1_CONFIG, num_steps, eta=gamma)


def test_tcd_intermediate_timestep_rounds_as_diffusers() -> None:
    """(1 - gamma) t_next is 659.99997 here: diffusers' float32 product rounds it to 660 before the floor."""
    assert_same_run("tcd", SD1_CONFIG, 25, eta=0.28182810633472577)


@pytest.mark.parametrize("name", FEW_STEP)
@pytest.mark.parametrize("num_steps, strength", [(1, 1.0), (2, 0.5), (4, 0.3), (4, 0.75), (8, 0.5), (8, 0.9)])
def test_img2img_matches_diffusers(name: str, num_steps: int, strength: float) -> None:
    assert_same_run(name, SD1_CONFIG, num_steps, init=INIT, strength=strength)


@pytest.mark.parametrize("num_steps, strength", [(2, 0.05), (4, 0.1), (4, 0.2), (8, 0.17)])
def test_lcm_img2img_runs_every_step_lower_in_the_schedule(num_steps: int, strength: float) -> None:
    """Strengths that would leave no step to StableDiffusionImg2ImgPipeline's rule still run all the steps
    under LatentConsistencyModelImg2ImgPipeline's."""
    assert_same_run("lcm", SD1_CONFIG, num_steps, init=INIT, strength=strength)
    noise = np.zeros(SHAPE, np.float32)
    calls, _, _ = run_sdrun("lcm", SD1_CONFIG, num_steps, noise, 0, init=INIT, strength=strength)
    assert len(calls) == num_steps


@pytest.mark.parametrize("name", FEW_STEP)
def test_v_prediction_matches_diffusers(name: str) -> None:
    assert_same_run(name, {**SD1_CONFIG, "prediction_type": "v_prediction"}, 4)


@pytest.mark.parametrize("name", ["lcm", "tcd"])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_other_beta_schedules_match_diffusers(name: str, beta_schedule: str) -> None:
    config = {**SD1_CONFIG, "beta_schedule": beta_schedule, "beta_start": 0.0001, "beta_end": 0.02}
    assert_same_run(name, config, 4)


def test_lcm_clip_sample_matches_diffusers() -> None:
    assert_same_run("lcm", {**SD1_CONFIG, "clip_sample": True, "clip_sample_range": 0.5}, 4)


@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_distilled_timesteps_match_diffusers_at_every_step_count(name: str) -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    for num_steps in range(1, 51):
        reference = diffusers_scheduler(name, SD1_CONFIG)
        reference.set_timesteps(num_steps)
        timesteps = make_sampler(name, schedule, num_steps).timesteps
        np.testing.assert_array_equal(timesteps, reference.timesteps.numpy(), f"{num_steps} steps")


@pytest.mark.parametrize("strength", [0.1, 0.33, 0.5, 0.8])
def test_lcm_img2img_timesteps_match_diffusers(strength: float) -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    for num_steps in range(1, int(50 * strength) + 1):
        reference = diffusers_scheduler("lcm", SD1_CONFIG)
        reference.set_timesteps(num_steps, strength=strength)
        timesteps = make_sampler("lcm", schedule, num_steps, strength=strength).timesteps
        np.testing.assert_array_equal(timesteps, reference.timesteps.numpy(), f"{num_steps} steps")


@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_seed_decides_the_distilled_samplers(name: str) -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    noise = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)

    def run(seed: int) -> np.ndarray:
        return sample(name, fake_model, schedule, 4, noise, np.random.default_rng(seed))

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))


@pytest.mark.parametrize("name, eta", [("tcd", 0.0), ("ddim_trailing", 0.0), ("euler_trailing", None)])
def test_deterministic_few_step_samplers_draw_nothing(name: str, eta: float | None) -> None:
    noise = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    _, _, drew = run_sdrun(name, SD1_CONFIG, 4, noise, 0, eta=eta)
    assert drew == [False] * 4


@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_distilled_samplers_draw_on_every_step_but_the_last(name: str) -> None:
    noise = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    _, _, drew = run_sdrun(name, SD1_CONFIG, 4, noise, 0)
    assert drew == [True, True, True, False]


@pytest.mark.parametrize(
    "name, num_steps, options, message",
    [
        ("lcm", 51, {}, "lcm takes at most 50 steps .*: give fewer steps$"),
        ("tcd", 60, {}, "tcd takes at most 50 steps"),
        ("lcm", 8, {"strength": 0.1}, "lcm takes at most 5 steps at strength 0.1 .*or a higher strength"),
        ("tcd", 4, {"eta": 1.5}, "eta 1.5 for tcd is out of range: give a value from 0 to 1"),
        ("tcd", 4, {"eta": -0.1}, "eta -0.1 for tcd is out of range"),
        ("ddim_trailing", 4, {"eta": -1.0}, "eta -1.0 for ddim_trailing is out of range: give a value >= 0"),
        ("euler_trailing", 4, {"eta": 0.5}, "eta applies to the ddim, ddim_trailing, k_.*, tcd samplers"),
        ("lcm", 4, {"eta": 0.3}, "eta applies to .* only: leave it at 0 for lcm"),
    ],
)
def test_bad_few_step_settings_are_clear_errors(
    name: str, num_steps: int, options: dict, message: str
) -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    zeros = np.zeros(SHAPE, np.float32)
    init = {"init_latents": zeros} if "strength" in options else {}
    with pytest.raises(SamplerError, match=message):
        sample(name, fake_model, schedule, num_steps, zeros, np.random.default_rng(0), **init, **options)


@pytest.mark.parametrize("name", ["lcm", "tcd"])
@pytest.mark.parametrize("original_steps", [25, 100])
def test_the_configs_distillation_schedule_is_followed(name: str, original_steps: int) -> None:
    """A scheduler config's `original_inference_steps` other than the published models' 50 sets the
    timesteps (and img2img's start) as it does in diffusers."""
    config = {**SD1_CONFIG, "original_inference_steps": original_steps}
    assert_same_run(name, config, 4)
    assert_same_run(name, config, 4, init=INIT, strength=0.6)


def test_distilled_samplers_need_a_long_enough_training_schedule() -> None:
    schedule = NoiseSchedule.from_config({**SD1_CONFIG, "num_train_timesteps": 40})
    with pytest.raises(
        SamplerError, match="lcm steps on 50 of the training timesteps, and this model has 40"
    ):
        make_sampler("lcm", schedule, 4)


@pytest.fixture(scope="module")
def pipeline(tiny_onnx_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_onnx_dir, provider="cpu")


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("guidance_scale, batches", [(1.0, [1, 1, 1]), (7.5, [2, 2, 2])])
def test_guidance_one_is_one_unet_pass_a_step(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, name: str, guidance_scale: float, batches: list[int]
) -> None:
    """Pipeline.guided_model drops the unconditional batch at guidance 1, whatever the sampler."""
    unet = pipeline.sessions.get("unet")
    predict = unet.predict
    seen: list[int] = []

    def recording_unet(latents: np.ndarray, timestep: float, context: np.ndarray, *extra: object) -> object:
        seen.append(len(latents))
        assert len(context) == len(latents)
        return predict(latents, timestep, context, *extra)

    monkeypatch.setattr(unet, "predict", recording_unet)
    pipeline.generate("a small red cube", steps=3, seed=0, sampler=name, guidance_scale=guidance_scale)
    # A1111's second-order samplers (Heun, DPM2, ...) make two passes a step, of the same batch.
    assert seen[: len(batches)] == batches and set(seen) == set(batches)
