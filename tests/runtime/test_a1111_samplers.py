"""AUTOMATIC1111's samplers (the k_* rows) against k-diffusion itself, driven as the web UI drives it
(a1111_reference): the same model function and the same noise, the same latents after every step, for
every sampler and schedule type, txt2img and img2img, epsilon and v prediction; and A1111's own DDIM
(k_ddim) against its loop restated in torch.

Noise: the ancestral samplers get our draws through k-diffusion's noise_sampler, the SDE ones our
Brownian path (sdrun.samplers.brownian), built from an rng seeded alike; A1111 builds the latter with
torchsde, which numpy cannot redraw, so for those two the test holds the step, not A1111's noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from a1111_reference import (
    A1111_SAMPLERS,
    SCHEDULE_NAMES,
    CompVisModel,
    a1111_sigmas,
    run_a1111,
    run_a1111_ddim,
    wrapper,
)
from kdiffusion_reference import load as load_kdiffusion
from kdiffusion_reference import requires_kdiffusion
from sampler_parity import SHAPE, fake_model, relative_error
from scheduler_configs import SD1_CONFIG

from sdrun.errors import SettingsError
from sdrun.samplers import SAMPLERS, first_step, make_sampler, sample, sampler_for_a1111
from sdrun.samplers.a1111_ddim import A1111DDIM
from sdrun.samplers.a1111_sigmas import DiscreteSigmas
from sdrun.samplers.a1111_sigmas import a1111_sigmas as our_sigmas
from sdrun.samplers.brownian import BrownianNoise
from sdrun.samplers.discrete import DDIM
from sdrun.schedule import NoiseSchedule

pytestmark = requires_kdiffusion

# float32 latents, computed with float64 coefficients here and float32 ones in torch.
RTOL = 2e-5
FAMILY = [name for name, spec in SAMPLERS.items() if spec.takes_schedule_type]
BROWNIAN = [name for name in A1111_SAMPLERS if A1111_SAMPLERS[name][2].get("brownian_noise")]
SCHEDULE_TYPES = [None, *SCHEDULE_NAMES]


class CountingGenerator:
    """A numpy generator that counts its draws."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self.draws = 0

    def standard_normal(self, *args, **kwargs) -> np.ndarray:
        self.draws += 1
        return self._rng.standard_normal(*args, **kwargs)


def _noise_sampler(name: str, rng: CountingGenerator):
    """What the reference hands k-diffusion: our draws, in the order our samplers make them."""
    if name in BROWNIAN:

        def brownian(sigmas: torch.Tensor):
            path = BrownianNoise(SHAPE, float(sigmas[sigmas > 0].min()), rng)
            return lambda sigma, sigma_next: torch.from_numpy(path(float(sigma), float(sigma_next)))

        return brownian
    return lambda sigmas: lambda sigma, sigma_next: torch.from_numpy(rng.standard_normal(SHAPE, np.float32))


def assert_same_run(
    name,
    steps,
    *,
    schedule_type=None,
    config=SD1_CONFIG,
    init=None,
    strength=1.0,
    eta=None,
    seed=3,
    reference_name=None,
):
    """Our row ``name`` against A1111's ``reference_name`` (the same by default)."""
    reference_name = reference_name or name
    schedule = NoiseSchedule.from_config(config)
    noise = np.random.default_rng(50 + seed).standard_normal(SHAPE, dtype=np.float32)
    model = CompVisModel(schedule.alphas_cumprod, fake_model)
    reference_rng = CountingGenerator(seed)
    if SAMPLERS[reference_name].a1111_timesteps:
        reference = run_a1111_ddim(
            model,
            schedule.prediction_type,
            steps,
            noise,
            lambda x: torch.from_numpy(reference_rng.standard_normal(SHAPE, dtype=np.float32)),
            init=init,
            strength=strength,
            eta=0.0 if eta is None else eta,
        )
    else:
        reference, _ = run_a1111(
            reference_name,
            model,
            schedule.prediction_type,
            steps,
            noise,
            _noise_sampler(reference_name, reference_rng),
            schedule_type=schedule_type,
            init=init,
            strength=strength,
            eta=1.0 if eta is None else eta,
        )
    calls, trajectory, totals, rng = [], [], set(), CountingGenerator(seed)

    def ours(x_in: np.ndarray, t: float) -> np.ndarray:
        calls.append((x_in.copy(), t))
        return fake_model(x_in, t)

    result = sample(
        name,
        ours,
        schedule,
        steps,
        noise,
        rng,
        init_latents=init,
        strength=strength,
        eta=eta,
        schedule_type=schedule_type,
        callback=lambda step, total, x: trajectory.append(x.copy()) or totals.add(total),
    )
    np.testing.assert_array_equal(result, trajectory[-1])
    assert totals == {len(reference)}, "the callback's total is the steps run"
    assert len(calls) == len(model.calls), "model calls"
    assert rng.draws == reference_rng.draws, "noise draws"
    for step, ((x_in, t), (ref_x_in, ref_t)) in enumerate(zip(calls, model.calls, strict=True)):
        assert t == pytest.approx(ref_t, rel=1e-5, abs=1e-3), f"timestep of call {step}"
        assert relative_error(x_in, ref_x_in) < RTOL, f"model input of call {step}"
    assert len(trajectory) == len(reference), "steps"
    for step, (x, ref) in enumerate(zip(trajectory, reference, strict=True)):
        assert x.dtype == np.float32
        assert relative_error(x, ref) < RTOL, f"latents after step {step}"


@pytest.mark.parametrize("schedule_type", SCHEDULE_TYPES)
@pytest.mark.parametrize("name", FAMILY)
def test_txt2img_matches_kdiffusion(name: str, schedule_type: str | None) -> None:
    assert_same_run(name, 12, schedule_type=schedule_type)


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("strength", [0.35, 0.75, 1.0])
def test_img2img_matches_a1111(name: str, strength: float) -> None:
    init = np.random.default_rng(9).standard_normal(SHAPE, dtype=np.float32)
    assert_same_run(name, 10, init=init, strength=strength)


@pytest.mark.parametrize("name", FAMILY)
def test_v_prediction_matches_kdiffusion(name: str) -> None:
    assert_same_run(name, 9, config={**SD1_CONFIG, "prediction_type": "v_prediction"}, schedule_type="Karras")


@pytest.mark.parametrize("name", [name for name in FAMILY if SAMPLERS[name].eta_default is not None])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_eta_matches_kdiffusion(name: str, eta: float) -> None:
    assert_same_run(name, 8, eta=eta)


@pytest.mark.parametrize("steps", [1, 2, 7, 20, 33])
@pytest.mark.parametrize("schedule_type", list(SCHEDULE_NAMES))
def test_schedule_types_match_a1111(schedule_type: str, steps: int) -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    inner = wrapper(CompVisModel(schedule.alphas_cumprod, fake_model), "epsilon")
    for name in ("k_euler", "k_dpm_2"):  # without and with the discarded next-to-last sigma
        reference = a1111_sigmas(inner, name, steps, schedule_type).numpy()
        discard = A1111_SAMPLERS[name][2].get("discard_next_to_last_sigma", False)
        ours = our_sigmas(DiscreteSigmas(schedule), steps, schedule_type, discard)
        np.testing.assert_allclose(ours, reference, rtol=2e-6, err_msg=f"{name} {schedule_type}")


@pytest.mark.parametrize("name", FAMILY)
def test_rows_are_a1111s_samplers(name: str) -> None:
    """Each row names the A1111 label of the k-diffusion function it runs, and Automatic picks A1111's
    schedule for it."""
    label, _, options = A1111_SAMPLERS[name]
    spec = SAMPLERS[name]
    assert spec.a1111_label == label
    assert SCHEDULE_NAMES[spec.a1111_schedule] == options.get("scheduler", "uniform")


def _increments(noise_sampler, sigmas: list[float]) -> np.ndarray:
    """DPM++ SDE's queries over a schedule: to each step's log-midpoint and to its end."""
    draws = []
    for sigma, sigma_next in zip(sigmas[:-2], sigmas[1:-1], strict=True):
        for to in (np.sqrt(sigma * sigma_next), sigma_next):
            draws.append(np.asarray(noise_sampler(sigma, to), dtype=np.float64).ravel())
    return np.stack(draws)


def test_brownian_path_has_torchsdes_law() -> None:
    """Our Brownian path and k-diffusion's BrownianTreeNoiseSampler (torchsde) give increments of the same
    law: each standard normal, a half step correlated with its full step as sqrt(share of the interval),
    separate steps independent."""
    sampling, _ = load_kdiffusion()
    sigmas = [14.6, 7.1, 3.0, 1.2, 0.4, 0.03, 0.0]
    shape = (1, 4, 64, 64)
    rng = np.random.default_rng(5)
    ours = _increments(BrownianNoise(shape, 0.03, rng), sigmas)
    tree = sampling.BrownianTreeNoiseSampler(torch.zeros(shape), 0.03, 14.6, seed=5)

    def theirs_at(sigma: float, sigma_next: float) -> torch.Tensor:
        exact = torch.float64  # the tree's bounds are float64: query it so, within them
        return tree(torch.tensor(sigma, dtype=exact), torch.tensor(sigma_next, dtype=exact))

    theirs = _increments(theirs_at, sigmas)
    np.testing.assert_allclose(np.corrcoef(ours), np.corrcoef(theirs), atol=0.03)
    np.testing.assert_allclose(ours.std(axis=1), 1.0, atol=0.02)
    np.testing.assert_allclose(theirs.std(axis=1), 1.0, atol=0.02)


@pytest.mark.parametrize("name", FAMILY)
def test_model_calls_bound_each_step(name: str) -> None:
    """The table's model_calls (the work bound's passes a step) is the most k-diffusion makes in a step."""
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    model = CompVisModel(schedule.alphas_cumprod, fake_model)
    noise = np.zeros(SHAPE, np.float32)
    trajectory, _ = run_a1111(
        name, model, schedule.prediction_type, 6, noise, _noise_sampler(name, CountingGenerator(0))
    )
    most = -(-len(model.calls) // len(trajectory))
    assert SAMPLERS[name].model_calls == most


DDIM_INIT = np.random.default_rng(9).standard_normal(SHAPE, dtype=np.float32)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("steps", [8, 7, 20, 30])
def test_ddim_txt2img_matches_a1111(steps: int, eta: float) -> None:
    assert_same_run("k_ddim", steps, eta=eta)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("strength", [0.45, 0.8])
@pytest.mark.parametrize("steps", [8, 7, 20, 30])
def test_ddim_img2img_matches_a1111(steps: int, strength: float, eta: float) -> None:
    assert_same_run("k_ddim", steps, init=DDIM_INIT, strength=strength, eta=eta)


def test_ddim_v_prediction_matches_a1111() -> None:
    config = {**SD1_CONFIG, "prediction_type": "v_prediction"}
    assert_same_run("k_ddim", 7, config=config, init=DDIM_INIT, strength=0.8, eta=0.5)


@pytest.mark.parametrize("init", [None, DDIM_INIT])
def test_diffusers_ddim_is_not_a1111s(init: np.ndarray | None) -> None:
    """The power of the DDIM comparison: diffusers' DDIM (the ddim row) fails it."""
    with pytest.raises(AssertionError):
        assert_same_run("ddim", 7, init=init, strength=1.0 if init is None else 0.8, reference_name="k_ddim")


def test_ddim_img2img_starts_one_level_above(monkeypatch: pytest.MonkeyPatch) -> None:
    """The power of the img2img comparison: noising to the first step's own level fails it."""
    def at_first_step(self: A1111DDIM, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        return DDIM.noised(self, x0, noise, index + 1)

    monkeypatch.setattr(A1111DDIM, "noised", at_first_step)
    with pytest.raises(AssertionError):
        assert_same_run("k_ddim", 20, init=DDIM_INIT, strength=0.8)


def test_a1111s_ddim_label_runs_k_ddim() -> None:
    """A1111's "DDIM" (Automatic or Uniform) is its own DDIM; SGM Uniform stays diffusers' trailing one."""
    schedules = (None, "Automatic", "Uniform")
    assert [sampler_for_a1111("DDIM", schedule) for schedule in schedules] == ["k_ddim"] * 3
    assert sampler_for_a1111("DDIM", "SGM Uniform") == "ddim_trailing"
    assert sampler_for_a1111("ddim") == "ddim"


def test_ddim_refuses_runs_without_a_step() -> None:
    """At 1 step the web UI's DDIM calls no model, nor below 2 steps of img2img's t_enc: refused."""
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    with pytest.raises(SettingsError, match="runs no step at 1 step"):
        make_sampler("k_ddim", schedule, 1)
    with pytest.raises(SettingsError, match="leaves none of the 10 steps"):
        first_step(10, 0.15, "k_ddim")  # t_enc 1: timesteps[:1], no model call
    assert first_step(10, 0.2, "k_ddim") == 8  # t_enc 2: one model call, at the second level from 1
