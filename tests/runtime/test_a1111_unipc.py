"""sdrun's k_unipc row against AUTOMATIC1111's UniPC as the web UI runs it (data/a1111_unipc.npz: the web
UI's own uni_pc.py run outside the project by data/make_a1111_unipc.py, on sampler_parity.fake_model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler
from sampler_parity import SHAPE, fake_model, relative_error
from scheduler_configs import SD1_CONFIG

from sdrun.errors import SettingsError
from sdrun.samplers import SAMPLERS, a1111_unipc, first_step, make_sampler, sample, sampler_for_a1111
from sdrun.schedule import NoiseSchedule

DATA = np.load(Path(__file__).parent / "data" / "a1111_unipc.npz")
# float32 latents, computed with float64 coefficients here and float32 ones in torch.
RTOL = 2e-5


def run(
    name: str, steps: int, config: dict = SD1_CONFIG
) -> tuple[list[np.ndarray], list[tuple[np.ndarray, float]]]:
    """Our run of ``name`` from the recorded noise: the latents after each step, and the model calls."""
    calls, trajectory = [], []

    def model(x_in: np.ndarray, t: float) -> np.ndarray:
        calls.append((x_in.copy(), t))
        return fake_model(x_in, t)

    schedule = NoiseSchedule.from_config(config)
    rng = np.random.default_rng(0)
    result = sample(
        name, model, schedule, steps, DATA["noise"], rng, callback=lambda s, n, x: trajectory.append(x.copy())
    )
    np.testing.assert_array_equal(result, trajectory[-1])
    return trajectory, calls


def assert_matches_a1111(name: str, steps: int, config: dict = SD1_CONFIG) -> None:
    trajectory, calls = run(name, steps, config)
    key = f"{'v' if config.get('prediction_type') == 'v_prediction' else ''}steps{steps}"
    reference = DATA[f"{key}_latents"]
    assert len(calls) == len(DATA[f"{key}_call_timesteps"]), "model calls"
    for call, ((x_in, t), ref_x_in, ref_t) in enumerate(
        zip(calls, DATA[f"{key}_call_inputs"], DATA[f"{key}_call_timesteps"], strict=True)
    ):
        assert t == pytest.approx(ref_t, rel=1e-5, abs=1e-3), f"timestep of call {call}"
        assert relative_error(x_in, ref_x_in) < RTOL, f"model input of call {call}"
    assert len(trajectory) == len(reference), "steps"
    for step, (x, ref) in enumerate(zip(trajectory, reference, strict=True)):
        assert x.dtype == np.float32
        assert relative_error(x, ref) < RTOL, f"latents after step {step}"


def test_data_says_where_it_comes_from() -> None:
    source = json.loads(str(DATA["source"]))
    assert source["path"] == "modules/models/diffusion/uni_pc/uni_pc.py" and len(source["commit"]) == 40
    assert DATA["noise"].shape == SHAPE


@pytest.mark.parametrize("steps", [3, 7, 8, 20])
def test_txt2img_matches_a1111(steps: int) -> None:
    """7 steps run 8, as the web UI's DDIM timesteps do; 3 is the fewest that order 3 takes."""
    assert_matches_a1111("k_unipc", steps)


def test_v_prediction_matches_a1111() -> None:
    """Epsilon from v as CompVisTimestepsVDenoiser takes it, at the fractional timestep cut to an integer."""
    assert_matches_a1111("k_unipc", 8, {**SD1_CONFIG, "prediction_type": "v_prediction"})


@pytest.mark.parametrize("steps", [8, 20])
def test_diffusers_unipc_is_not_a1111s(steps: int) -> None:
    """The power of the comparison: diffusers' UniPC (order 3, bh2, its own timesteps, a last step to
    abar_0) ends elsewhere, by 50 RTOL at 20 steps."""
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    scheduler = UniPCMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", solver_order=3
    )
    scheduler.set_timesteps(steps)
    x = torch.from_numpy(DATA["noise"].copy()) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = torch.from_numpy(fake_model(x.numpy(), float(t)))
        x = scheduler.step(eps, t, x).prev_sample
    assert schedule.num_train_timesteps == 1000
    assert relative_error(x.numpy(), DATA[f"steps{steps}_latents"][-1]) > 10 * RTOL


@pytest.mark.parametrize("order", [2, 4])
def test_other_orders_are_not_a1111s(monkeypatch: pytest.MonkeyPatch, order: int) -> None:
    """The power of the comparison: another order than the web UI's 3 fails it."""
    monkeypatch.setattr(a1111_unipc, "ORDER", order)
    with pytest.raises(AssertionError):
        assert_matches_a1111("k_unipc", 20)


def test_a1111s_unipc_label_runs_k_unipc() -> None:
    assert sampler_for_a1111("UniPC") == sampler_for_a1111("UniPC", "Automatic") == "k_unipc"
    assert SAMPLERS["k_unipc"].a1111_label == "UniPC"


def test_unipc_refuses_img2img_and_too_few_steps() -> None:
    schedule = NoiseSchedule.from_config(SD1_CONFIG)
    with pytest.raises(SettingsError, match="k_unipc is for txt2img only"):
        first_step(20, 0.5, "k_unipc")
    with pytest.raises(SettingsError, match="at least 3 steps, not 2"):
        make_sampler("k_unipc", schedule, 2)
