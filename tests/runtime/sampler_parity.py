"""Driving sdrun's samplers and diffusers 0.36's schedulers side by side, for the sampler parity tests.

diffusers is driven as its pipelines drive it: scheduler configs come from the SD 1.x PNDMScheduler config
(the way `Scheduler.from_config(pipe.scheduler.config)` swaps schedulers), and the per-step noise is fed to
it from the same numpy draws sdrun documents (one standard normal per step that re-injects noise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    TCDScheduler,
)
from diffusers.schedulers import (
    scheduling_ddpm,
    scheduling_euler_ancestral_discrete,
    scheduling_lcm,
    scheduling_tcd,
)

from sdrun.samplers import sample
from sdrun.schedule import NoiseSchedule

# sdrun sampler -> diffusers scheduler class and the options that select the same algorithm.
REFERENCES = {
    "ddpm": (DDPMScheduler, {"variance_type": "fixed_small"}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
    "ddim_trailing": (DDIMScheduler, {"timestep_spacing": "trailing"}),
    "euler_trailing": (EulerDiscreteScheduler, {"timestep_spacing": "trailing"}),
}
# The schedulers that draw their per-step noise through randn_tensor in the named module.
RANDN_MODULES = {
    "ddpm": scheduling_ddpm,
    "euler_a": scheduling_euler_ancestral_discrete,
    "lcm": scheduling_lcm,
    "tcd": scheduling_tcd,
}
# The schedulers whose step takes eta (TCD's is the gamma of Zheng et al. 2024).
ETA_STEPS = (DDIMScheduler, TCDScheduler)
# Run by diffusers' LatentConsistencyModelImg2ImgPipeline, which hands the strength to set_timesteps and runs
# every step; the others as StableDiffusionImg2ImgPipeline, which skips the first steps.
STRENGTH_IN_SET_TIMESTEPS = ("lcm",)
SHAPE = (1, 4, 8, 8)
RTOL = 1e-5


def fake_model(x: np.ndarray, t: float) -> np.ndarray:
    """A smooth stand-in for the guided UNet: its output depends on the input and the timestep."""
    x = np.asarray(x, dtype=np.float32)
    mix = 0.6 * x + 0.2 * np.roll(x, 1, axis=-1) - 0.1 * np.roll(x, 1, axis=1)
    return (np.tanh(mix) * (0.5 + t / 2000.0) + 0.05 * np.sin(t / 37.0 + x)).astype(np.float32)


def diffusers_scheduler(name: str, config: dict):
    scheduler_class, options = REFERENCES[name]
    pndm_config = PNDMScheduler.from_config(config).config  # carries PNDM's defaults, as a pipeline's does
    return scheduler_class.from_config(pndm_config, **options)


def run_diffusers(name, config, num_steps, noise, step_noises, *, init=None, strength=1.0, eta=None):
    """diffusers' denoising loop: (model calls [(x_in, t)], latents after each step, start latents, whether
    each step drew noise). ``eta`` None leaves the step's own default."""
    scheduler = diffusers_scheduler(name, config)
    own_strength = name in STRENGTH_IN_SET_TIMESTEPS
    scheduler.set_timesteps(num_steps, **({"strength": strength} if own_strength else {}))
    timesteps = scheduler.timesteps
    noise = torch.from_numpy(noise)
    if init is None:
        latents = noise * scheduler.init_noise_sigma
    else:  # prepare_latents, after StableDiffusionImg2ImgPipeline.get_timesteps unless the strength is own
        if not own_strength:
            init_timestep = min(int(num_steps * strength), num_steps)
            t_start = max(num_steps - init_timestep, 0)
            timesteps = timesteps[t_start * scheduler.order :]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * scheduler.order)
        latents = scheduler.add_noise(torch.from_numpy(init), noise, timesteps[:1])
    start = latents.numpy().copy()
    calls, trajectory, drew = [], [], []
    current = {}
    module = RANDN_MODULES.get(name)
    original_randn = module.randn_tensor if module else None

    def randn(*args, **kwargs) -> torch.Tensor:
        current["drawn"] = True
        return torch.from_numpy(current["noise"])

    if module:
        module.randn_tensor = randn
    try:
        for i, t in enumerate(timesteps):
            x_in = scheduler.scale_model_input(latents, t)
            calls.append((x_in.numpy().copy(), float(t)))
            output = torch.from_numpy(fake_model(x_in.numpy(), float(t)))
            current.update(noise=step_noises[i], drawn=False)
            kwargs = {}
            if isinstance(scheduler, ETA_STEPS) and eta is not None:
                kwargs["eta"] = eta
            if isinstance(scheduler, DDIMScheduler) and eta:
                kwargs["variance_noise"] = torch.from_numpy(step_noises[i])
                current["drawn"] = True
            latents = scheduler.step(output, t, latents, **kwargs).prev_sample
            trajectory.append(latents.numpy().copy())
            drew.append(current["drawn"])
    finally:
        if module:
            module.randn_tensor = original_randn
    return calls, trajectory, start, drew


class RecordingGenerator:
    """A numpy generator that notes each draw in a shared event list."""

    def __init__(self, seed: int, events: list[str]) -> None:
        self._rng = np.random.default_rng(seed)
        self._events = events

    def standard_normal(self, *args, **kwargs) -> np.ndarray:
        self._events.append("draw")
        return self._rng.standard_normal(*args, **kwargs)


def run_sdrun(name, config, num_steps, noise, seed, *, init=None, strength=1.0, eta=None):
    """sdrun's loop: (model calls [(x_in, t)], latents after each step, whether each step drew noise), after
    checking that every draw came after its step's model call, one at most per step."""
    calls, trajectory, events = [], [], []

    def model(x_in: np.ndarray, t: float) -> np.ndarray:
        events.append("model")
        calls.append((x_in.copy(), t))
        return fake_model(x_in, t)

    def record(step: int, total: int, latents: np.ndarray) -> None:
        assert latents.dtype == np.float32
        trajectory.append(latents.copy())

    schedule = NoiseSchedule.from_config(config)
    rng = RecordingGenerator(seed, events)
    result = sample(
        name,
        model,
        schedule,
        num_steps,
        noise,
        rng,
        init_latents=init,
        strength=strength,
        eta=eta,
        callback=record,
    )
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, trajectory[-1])
    steps = " ".join(events).split("model")
    assert steps[0] == "", "a draw before the first model call"
    drew = [step.strip() == "draw" for step in steps[1:]]
    assert all(step.strip() in ("", "draw") for step in steps[1:]), f"draws per step: {events}"
    return calls, trajectory, drew


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours.astype(np.float64) - reference) / np.linalg.norm(reference))


def assert_same_run(name, config, num_steps, *, init=None, strength=1.0, eta=None, seed=7, rtol=RTOL):
    """Both loops make the same model calls, draw noise on the same steps and reach the same latents after
    every step."""
    noise = np.random.default_rng(100 + seed).standard_normal(SHAPE, dtype=np.float32)
    draws = np.random.default_rng(seed)  # sdrun's documented draw order: one per step that draws
    step_noises = [draws.standard_normal(SHAPE, dtype=np.float32) for _ in range(num_steps)]
    ref_calls, ref_trajectory, _, ref_drew = run_diffusers(
        name, config, num_steps, noise, step_noises, init=init, strength=strength, eta=eta
    )
    calls, trajectory, drew = run_sdrun(
        name, config, num_steps, noise, seed, init=init, strength=strength, eta=eta
    )
    assert len(calls) == len(ref_calls) == len(trajectory) == len(ref_trajectory)
    # A draw on the last step changes nothing (diffusers' DDPM skips it at t = 0, sdrun's draws it).
    assert drew[:-1] == ref_drew[:-1], "the steps that draw noise"
    for step, ((x_in, t), (ref_x_in, ref_t)) in enumerate(zip(calls, ref_calls, strict=True)):
        assert t == pytest.approx(ref_t, rel=1e-6, abs=1e-4), f"timestep of step {step}"
        assert relative_error(x_in, ref_x_in) < rtol, f"model input of step {step}"
    for step, (latents, ref_latents) in enumerate(zip(trajectory, ref_trajectory, strict=True)):
        assert relative_error(latents, ref_latents) < rtol, f"latents after step {step}"
