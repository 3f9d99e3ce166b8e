"""Samplers in numpy: the noise schedule plus a model callable in, latents out.

Every sampler matches its diffusers scheduler step for step (timesteps, model inputs, updates, img2img
start). Randomness comes only from the ``rng`` passed in: every step that re-injects noise draws exactly
one ``rng.standard_normal(latents.shape, dtype=np.float32)``, after that step's model call, and nothing
else is drawn. Those steps are: every step of ddpm, of euler_a, and of ddim and ddim_trailing with
eta > 0; every step but the last of lcm, and of tcd with gamma (its eta) > 0. Latents stay float32, as in
diffusers; the schedule's coefficients are computed once per run in float64.

A sampler goes on from the very array it yielded, so that ``sample`` can paste known latents into it
(KnownLatents: inpainting with a plain UNet) and every sampler takes them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

import numpy as np

from sdrun.errors import SettingsError, quoted
from sdrun.samplers.consistency import LCM, TCD, distillation_steps
from sdrun.samplers.discrete import DDIM, DDPM
from sdrun.samplers.dpm_solver import DPMSolverPP2M
from sdrun.samplers.euler import Euler, EulerAncestral
from sdrun.samplers.prediction import Model
from sdrun.schedule import NoiseSchedule, ScheduleError

__all__ = [
    "SAMPLERS",
    "KnownLatents",
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


@dataclass(frozen=True)
class KnownLatents:
    """Latents kept where ``mask`` is 0 (1 where the sampler paints; it broadcasts over the channels), as
    diffusers' StableDiffusionInpaintPipeline keeps them for a 4-channel UNet: after each step they are
    pasted in noised to the next step's level with the run's starting noise, and as they are after the
    last step."""

    latents: np.ndarray
    mask: np.ndarray

    def paste(self, sampler: Sampler, x: np.ndarray, noise: np.ndarray, next_index: int) -> None:
        """Blend into ``x`` in place (the sampler goes on from it) after the step before ``next_index``."""
        known = self.latents
        if next_index < len(sampler.timesteps):
            known = sampler.noised(known, noise, next_index)
        x[...] = (1 - self.mask) * known + self.mask * x


def _trailing(sampler: Callable[..., Sampler]) -> Callable[..., Sampler]:
    """``sampler`` on "trailing" timesteps whatever the config says (Lin et al. 2023, Table 2), as
    diffusers' ``Scheduler.from_config(config, timestep_spacing="trailing")``."""

    def make(schedule: NoiseSchedule, *args: float) -> Sampler:
        return sampler(replace(schedule, timestep_spacing="trailing"), *args)

    return make


SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "ddpm": DDPM,
    "ddim": DDIM,
    "euler": Euler,
    "euler_a": EulerAncestral,
    "dpmpp_2m": DPMSolverPP2M,
    "dpmpp_2m_karras": partial(DPMSolverPP2M, karras=True),
    "lcm": LCM,
    "tcd": TCD,
    "ddim_trailing": _trailing(DDIM),
    "euler_trailing": _trailing(Euler),
}
# The samplers that take eta, with its value when none is given: DDIM's eta (Song et al. 2021, eq. 16; 0 is
# deterministic) and TCD's gamma (Zheng et al. 2024; diffusers passes it as eta too, 0.3 by default).
ETA_DEFAULTS = {"ddim": 0.0, "ddim_trailing": 0.0, "tcd": 0.3}
_ETA_MAXIMA = {"tcd": 1.0}
# Samplers that run on their distillation schedule, so no more steps than it has.
DISTILLED = ("lcm", "tcd")
# Samplers whose img2img strength picks their timesteps instead of skipping first steps: all the steps run,
# within the strength's share of the schedule (diffusers' LatentConsistencyModelImg2ImgPipeline).
STRENGTH_SETS_TIMESTEPS = ("lcm",)


def check_sampler_name(name: str) -> None:
    if not isinstance(name, str) or name not in SAMPLERS:
        raise SamplerError(f"unknown sampler {quoted(name)}: choose one of {', '.join(SAMPLERS)}")


def check_strength(strength: float) -> None:
    if not 0.0 < strength <= 1.0:
        raise SamplerError(f"strength {strength!r} is out of range: give a value in (0, 1]")


def first_step(num_steps: int, strength: float, sampler: str = "") -> int:
    """Index of the first step img2img runs (diffusers' StableDiffusionImg2ImgPipeline.get_timesteps), 0 for
    the samplers in STRENGTH_SETS_TIMESTEPS."""
    check_strength(strength)
    if sampler in STRENGTH_SETS_TIMESTEPS:
        return 0
    first = max(num_steps - min(int(num_steps * strength), num_steps), 0)
    if first >= num_steps:
        raise SamplerError(
            f"strength {strength} leaves none of the {num_steps} steps to run: raise strength or the steps"
        )
    return first


def make_sampler(
    name: str, schedule: NoiseSchedule, num_steps: int, eta: float | None = None, strength: float = 1.0
) -> Sampler:
    """The sampler ``name`` with its whole schedule for ``num_steps`` precomputed. ``eta`` None is the
    sampler's default (ETA_DEFAULTS); ``strength`` is the img2img strength, which only the samplers in
    STRENGTH_SETS_TIMESTEPS need here."""
    check_sampler_name(name)
    try:
        schedule.check_num_steps(num_steps)
    except ScheduleError as error:
        raise SamplerError(str(error)) from error
    check_strength(strength)
    own_strength = name in STRENGTH_SETS_TIMESTEPS
    if name in DISTILLED:
        _check_distilled_steps(name, schedule, num_steps, strength if own_strength else 1.0)
    if name not in ETA_DEFAULTS:
        if eta not in (None, 0.0):
            named = ", ".join(ETA_DEFAULTS)
            raise SamplerError(f"eta applies to the {named} samplers only: leave it at 0 for {name}")
        sampler = SAMPLERS[name]
        return sampler(schedule, num_steps, strength) if own_strength else sampler(schedule, num_steps)
    eta = ETA_DEFAULTS[name] if eta is None else eta
    most = _ETA_MAXIMA.get(name)
    if not (eta >= 0.0 and (most is None or eta <= most)):
        allowed = ">= 0" if most is None else f"from 0 to {most}"
        raise SamplerError(
            f"eta {eta!r} for {name} is out of range: give a value {allowed} (0 is deterministic)"
        )
    return SAMPLERS[name](schedule, num_steps, eta)


def _check_distilled_steps(name: str, schedule: NoiseSchedule, num_steps: int, strength: float) -> None:
    if schedule.num_train_timesteps < schedule.original_inference_steps:
        raise SamplerError(
            f"{name} steps on {schedule.original_inference_steps} of the training timesteps, and this "
            f"model has {schedule.num_train_timesteps}: choose another sampler"
        )
    most = distillation_steps(schedule, strength)
    if num_steps > most:
        within = f" at strength {strength}" if strength != 1.0 else ""
        fix = "give fewer steps or a higher strength" if within else "give fewer steps"
        raise SamplerError(
            f"{name} takes at most {most} steps{within} (the timesteps of its distillation schedule): {fix}"
        )


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
    eta: float | None = None,
    callback: Callable[[int, int, np.ndarray], bool | None] | None = None,
    known: KnownLatents | None = None,
) -> np.ndarray:
    """Run sampler ``name`` for ``num_steps`` steps and return the float32 latents.

    txt2img starts from ``noise`` scaled to the sampler's initial noise level. img2img (``init_latents``
    given, already scaled by the VAE factor) skips the first steps as ``strength`` says (or, for the
    samplers in STRENGTH_SETS_TIMESTEPS, runs them all lower in the schedule) and starts from
    ``init_latents`` noised to the first step it runs. ``eta`` None is the sampler's default. ``known``
    latents are pasted outside their mask after every step.
    ``callback(step, total, latents)`` follows every step (step counts from 0 within this run); a truthy
    return stops the run and returns those latents.
    """
    if init_latents is None and strength != 1.0:
        raise SamplerError(f"strength {strength} is for img2img only: give init_latents or leave it at 1")
    sampler = make_sampler(name, schedule, num_steps, eta, strength)
    noise = np.asarray(noise, dtype=np.float32)
    if init_latents is None:
        first, x = 0, sampler.initial(noise)
    else:
        init_latents = np.asarray(init_latents, dtype=np.float32)
        if init_latents.shape != noise.shape:
            raise SamplerError(
                f"init_latents shape {init_latents.shape} differs from the noise shape {noise.shape}: "
                "encode the image at the output size"
            )
        first = first_step(num_steps, strength, name)
        x = sampler.noised(init_latents, noise, first)
    total = num_steps - first
    steps = sampler.steps(model, x, first, rng)
    for step, x in enumerate(steps):
        if known is not None:
            known.paste(sampler, x, noise, first + step + 1)
        if callback is not None and callback(step, total, x):
            break
    return x
