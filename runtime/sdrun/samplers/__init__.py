"""Samplers in numpy: the noise schedule plus a model callable in, latents out.

Every sampler matches its diffusers scheduler step for step (timesteps, model inputs, updates, img2img
start). Randomness comes only from the ``rng`` passed in: the stochastic samplers (ddpm, euler_a, and
ddim with eta > 0) draw exactly one ``rng.standard_normal(latents.shape, dtype=np.float32)`` per step,
after that step's model call, and nothing else. Latents stay float32, as in diffusers; the schedule's
coefficients are computed once per run in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Protocol

import numpy as np

from sdrun.errors import SettingsError
from sdrun.samplers.discrete import DDIM, DDPM
from sdrun.samplers.dpm_solver import DPMSolverPP2M
from sdrun.samplers.euler import Euler, EulerAncestral
from sdrun.samplers.prediction import Model
from sdrun.schedule import NoiseSchedule, ScheduleError

__all__ = [
    "SAMPLERS",
    "SamplerError",
    "Sampler",
    "check_sampler_name",
    "check_strength",
    "first_step",
    "make_sampler",
    "sample",
]


class SamplerError(SettingsError, ValueError):
    """A sampler name, step count, strength or eta the samplers cannot use."""


class Sampler(Protocol):
    timesteps: np.ndarray  # the model's timestep at each step of the full schedule

    def initial(self, noise: np.ndarray) -> np.ndarray: ...  # txt2img start from standard-normal noise

    def noised(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray: ...  # img2img start

    def steps(
        self, model: Model, x: np.ndarray, first: int, rng: np.random.Generator
    ) -> Iterator[np.ndarray]: ...


SAMPLERS: dict[str, Callable[[NoiseSchedule, int], Sampler]] = {
    "ddpm": DDPM,
    "ddim": DDIM,
    "euler": Euler,
    "euler_a": EulerAncestral,
    "dpmpp_2m": DPMSolverPP2M,
    "dpmpp_2m_karras": partial(DPMSolverPP2M, karras=True),
}


def check_sampler_name(name: str) -> None:
    if name not in SAMPLERS:
        raise SamplerError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def check_strength(strength: float) -> None:
    if not 0.0 < strength <= 1.0:
        raise SamplerError(f"strength {strength!r} is out of range: give a value in (0, 1]")


def first_step(num_steps: int, strength: float) -> int:
    """Index of the first step img2img runs (diffusers' StableDiffusionImg2ImgPipeline.get_timesteps)."""
    check_strength(strength)
    first = max(num_steps - min(int(num_steps * strength), num_steps), 0)
    if first >= num_steps:
        raise SamplerError(
            f"strength {strength} leaves none of the {num_steps} steps to run: raise strength or the steps"
        )
    return first


def make_sampler(name: str, schedule: NoiseSchedule, num_steps: int, eta: float = 0.0) -> Sampler:
    """The sampler ``name`` with its whole schedule for ``num_steps`` precomputed."""
    check_sampler_name(name)
    try:
        schedule.check_num_steps(num_steps)
    except ScheduleError as error:
        raise SamplerError(str(error)) from None
    if name == "ddim":
        if not eta >= 0.0:
            raise SamplerError(f"eta {eta!r} is negative: give eta >= 0 (0 is deterministic DDIM)")
        return DDIM(schedule, num_steps, eta)
    if eta != 0.0:
        raise SamplerError(f"eta applies to the ddim sampler only: leave it at 0 for {name}")
    return SAMPLERS[name](schedule, num_steps)


def sample(
    name: str,
    model: Model,
    schedule: NoiseSchedule,
    num_steps: int,
    noise: np.ndarray,
    rng: np.random.Generator,
    *,
    init_latents: np.ndarray | None = None,
    strength: float = 1.0,
    eta: float = 0.0,
    callback: Callable[[int, int, np.ndarray], bool | None] | None = None,
) -> np.ndarray:
    """Run sampler ``name`` for ``num_steps`` steps and return the float32 latents.

    txt2img starts from ``noise`` scaled to the sampler's initial noise level. img2img (``init_latents``
    given, already scaled by the VAE factor) skips the first steps as ``strength`` says and starts from
    ``init_latents`` noised to the first step it runs. ``callback(step, total, latents)`` follows every
    step (step counts from 0 within this run); a truthy return stops the run and returns those latents.
    """
    sampler = make_sampler(name, schedule, num_steps, eta)
    noise = np.asarray(noise, dtype=np.float32)
    if init_latents is None:
        if strength != 1.0:
            raise SamplerError(f"strength {strength} is for img2img only: give init_latents or leave it at 1")
        first, x = 0, sampler.initial(noise)
    else:
        init_latents = np.asarray(init_latents, dtype=np.float32)
        if init_latents.shape != noise.shape:
            raise SamplerError(
                f"init_latents shape {init_latents.shape} differs from the noise shape {noise.shape}: "
                "encode the image at the output size"
            )
        first = first_step(num_steps, strength)
        x = sampler.noised(init_latents, noise, first)
    total = num_steps - first
    steps = sampler.steps(model, x, first, rng)
    for step, x in enumerate(steps):
        if callback is not None and callback(step, total, x):
            break
    return x
