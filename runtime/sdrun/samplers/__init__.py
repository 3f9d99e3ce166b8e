"""Samplers in numpy: the noise schedule plus a model callable in, latents out.

Every sampler matches its diffusers scheduler step for step (timesteps, model inputs, updates, img2img
start), but AUTOMATIC1111's own: the k_* rows, which match k-diffusion's functions on A1111's noise levels
(sdrun.samplers.karras_family), and k_ddim, A1111's DDIM (sdrun.samplers.a1111_ddim). Randomness comes only
from the ``rng`` passed in, as ``rng.standard_normal(latents.shape, dtype=np.float32)`` draws and nothing
else. The diffusers rows draw exactly one, after that step's model call, on every step that re-injects
noise: every step of ddpm, of euler_a, and of ddim and ddim_trailing with eta > 0; every step but the last
of lcm, and of tcd with gamma (its eta) > 0. The k_* rows draw as k-diffusion does
(sdrun.samplers.karras_ancestral), k_ddim as A1111 does: one every step, at eta 0 too. Latents stay float32,
as in diffusers; the schedule's coefficients are computed once per run in float64.

A sampler goes on from the very array it yielded, so that ``sample`` can paste known latents into it
(KnownLatents: inpainting with a plain UNet) and every sampler takes them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

import numpy as np

from sdrun import a1111
from sdrun.errors import SettingsError, quoted
from sdrun.samplers.a1111_ddim import A1111DDIM, a1111_levels, img2img_first_step
from sdrun.samplers.a1111_sigmas import SCHEDULE_TYPES
from sdrun.samplers.a1111_unipc import A1111UniPC
from sdrun.samplers.consistency import LCM, TCD, distillation_steps
from sdrun.samplers.discrete import DDIM, DDPM
from sdrun.samplers.dpm_solver import DPMSolverPP2M
from sdrun.samplers.euler import Euler, EulerAncestral
from sdrun.samplers.karras_ancestral import (
    KDPMPP2MSDE,
    KDPMPPSDE,
    KDPM2Ancestral,
    KDPMPP2SAncestral,
    KEulerAncestral,
)
from sdrun.samplers.karras_family import KDPM2, KDPMPP2M, KLMS, KarrasSampler, KEuler, KHeun
from sdrun.samplers.prediction import Model
from sdrun.schedule import NoiseSchedule, ScheduleError

__all__ = [
    "SAMPLERS",
    "SAMPLER_TABLE",
    "SamplerSpec",
    "KnownLatents",
    "SamplerError",
    "Sampler",
    "SamplingStopped",
    "check_sampler_name",
    "check_schedule_type",
    "resolve_schedule_type",
    "a1111_sampler",
    "check_strength",
    "first_step",
    "make_sampler",
    "a1111_names",
    "sample",
    "sampler_for_a1111",
]


class SamplerError(SettingsError, ValueError):
    """A sampler name, step count, strength or eta the samplers cannot use."""


class SamplingStopped(Exception):
    """Raised by a model before its pass to end sampling there: `sample` returns the latents of the last
    finished step (the starting latents if none has finished)."""


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


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: how it is made and what it takes. `eta_default` None: it takes no eta; else the eta
    used when none is given, up to `eta_max` (None: no maximum). `distilled`: it runs on its distillation
    schedule, so no more steps than that has. `strength_sets_timesteps`: its img2img strength picks its
    timesteps instead of skipping first steps (all the steps run, within the strength's share of the
    schedule, as diffusers' LatentConsistencyModelImg2ImgPipeline). `a1111_label` and `a1111_schedule`
    name it as AUTOMATIC1111 does; `a1111_automatic` marks the schedule that A1111's "Automatic" picks for
    that label. `takes_schedule_type`: it is one of A1111's own k-diffusion samplers, on A1111's noise
    levels for a schedule type (`a1111_schedule` is the one "Automatic" picks) and with A1111's img2img
    steps; the others run on their diffusers scheduler's timesteps. `model_calls`: the model calls a step
    makes at most (A1111's "second_order" samplers make two), for the bound on a call's work.
    `a1111_timesteps`: it is A1111's own DDIM, on A1111's timesteps (more steps than asked for at some step
    counts) and img2img steps, starting one level above its first step. `txt2img_only`: it refuses img2img."""

    name: str
    make: Callable[..., Sampler]
    a1111_label: str
    a1111_schedule: str = a1111.UNIFORM
    a1111_automatic: bool = True
    eta_default: float | None = None
    eta_max: float | None = None
    distilled: bool = False
    strength_sets_timesteps: bool = False
    takes_schedule_type: bool = False
    model_calls: int = 1
    a1111_timesteps: bool = False
    txt2img_only: bool = False


def _a1111(
    name: str,
    sampler: type[KarrasSampler],
    label: str,
    eta_default: float | None = None,
    model_calls: int = 1,
) -> SamplerSpec:
    """A row of A1111's k-diffusion family; those that take an eta take A1111's "Eta" (1 by default)."""
    return SamplerSpec(
        name,
        sampler,
        label,
        sampler.automatic,
        eta_default=eta_default,
        takes_schedule_type=True,
        model_calls=model_calls,
    )


# DDIM's eta: Song et al. 2021, eq. 16 (0 is deterministic); TCD's gamma: Zheng et al. 2024 (diffusers
# passes it as eta too, 0.3 by default).
SAMPLER_TABLE = (
    SamplerSpec("ddpm", DDPM, "DDPM"),
    SamplerSpec("ddim", DDIM, "DDIM", eta_default=0.0),
    SamplerSpec("euler", Euler, "Euler"),
    SamplerSpec("euler_a", EulerAncestral, "Euler a"),
    SamplerSpec("dpmpp_2m", DPMSolverPP2M, "DPM++ 2M", a1111_automatic=False),
    SamplerSpec("dpmpp_2m_karras", partial(DPMSolverPP2M, karras=True), "DPM++ 2M", a1111.KARRAS),
    SamplerSpec("lcm", LCM, "LCM", distilled=True, strength_sets_timesteps=True),
    SamplerSpec("tcd", TCD, "TCD", eta_default=0.3, eta_max=1.0, distilled=True),
    SamplerSpec(
        "ddim_trailing", _trailing(DDIM), "DDIM", a1111.SGM_UNIFORM, a1111_automatic=False, eta_default=0.0
    ),
    SamplerSpec("euler_trailing", _trailing(Euler), "Euler", a1111.SGM_UNIFORM, a1111_automatic=False),
    _a1111("k_euler", KEuler, "Euler"),
    _a1111("k_euler_a", KEulerAncestral, "Euler a", 1.0),
    _a1111("k_heun", KHeun, "Heun", model_calls=2),
    _a1111("k_lms", KLMS, "LMS"),
    _a1111("k_dpm_2", KDPM2, "DPM2", model_calls=2),
    _a1111("k_dpm_2_a", KDPM2Ancestral, "DPM2 a", 1.0, 2),
    _a1111("k_dpmpp_2s_a", KDPMPP2SAncestral, "DPM++ 2S a", 1.0, 2),
    _a1111("k_dpmpp_2m", KDPMPP2M, "DPM++ 2M"),
    _a1111("k_dpmpp_sde", KDPMPPSDE, "DPM++ SDE", 1.0, 2),
    _a1111("k_dpmpp_2m_sde", KDPMPP2MSDE, "DPM++ 2M SDE", 1.0),
    SamplerSpec("k_ddim", A1111DDIM, "DDIM", eta_default=0.0, a1111_timesteps=True),
    SamplerSpec("k_unipc", A1111UniPC, "UniPC", txt2img_only=True),
)
SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in SAMPLER_TABLE}


# Before web UI 1.9 the schedule was part of some labels ("DPM++ 2M Karras", "DPM++ 2M SDE Exponential").
_LABEL_SCHEDULES = (a1111.KARRAS, a1111.EXPONENTIAL)


def a1111_sampler(label: str, schedule: str | None = None) -> tuple[str, str | None]:
    """The sdrun sampler and schedule type (None: Automatic) that AUTOMATIC1111's sampler `label` and
    schedule type (its label or its API's name) stand for. A1111's k-diffusion labels run on the rows of
    that family; no schedule type is Uniform there (an infotext names it for every sampler whose Automatic
    is another, and before web UI 1.9 there was none). Its other labels (DDIM, LCM, ...) run on the row whose
    schedule it is, "Automatic" being the label's own. sdrun's own names pass through. A combination sdrun
    lacks comes back as a name that is not a sampler's, for the error message ("DDIM Karras")."""
    if label in SAMPLERS:
        return label, schedule if SAMPLERS[label].takes_schedule_type else None
    for suffix in _LABEL_SCHEDULES:
        if label.endswith(f" {suffix}"):
            label, schedule = label[: -len(suffix) - 1], suffix
    rows = [spec for spec in SAMPLER_TABLE if spec.a1111_label.lower() == label.lower()]
    family = [spec for spec in rows if spec.takes_schedule_type]
    if family:
        if schedule is None:
            return family[0].name, a1111.UNIFORM
        return family[0].name, None if schedule.lower() == a1111.AUTOMATIC.lower() else schedule
    for spec in sorted(rows, key=lambda spec: not spec.a1111_timesteps):  # A1111's own DDIM first
        automatic = schedule == a1111.AUTOMATIC and spec.a1111_automatic
        if automatic or spec.a1111_schedule == (schedule or a1111.UNIFORM):
            return spec.name, None
    return (f"{label} {schedule}" if rows else label), None


def sampler_for_a1111(label: str, schedule: str | None = None) -> str:
    """The sdrun sampler of `a1111_sampler`."""
    return a1111_sampler(label, schedule)[0]


def a1111_names(sampler: str, schedule_type: str | None = None) -> tuple[str, str]:
    """AUTOMATIC1111's sampler label and schedule type for the sdrun sampler (a name sdrun lacks as is) and
    its schedule type (None: Automatic, written as the one it picks)."""
    spec = SAMPLERS.get(sampler)
    if spec is None:
        return sampler, a1111.UNIFORM
    return spec.a1111_label, resolve_schedule_type(sampler, schedule_type) or spec.a1111_schedule


def resolve_schedule_type(sampler: str, schedule_type: str | None) -> str | None:
    """The schedule type the sampler runs on, "Automatic" (None) resolved to the one A1111 picks for it;
    None for a sampler that takes none."""
    spec = SAMPLERS[sampler]
    return (check_schedule_type(schedule_type) or spec.a1111_schedule) if spec.takes_schedule_type else None


def check_schedule_type(schedule_type: str | None) -> str | None:
    """A1111's label of a schedule type given by its label or its API's name (any case); None for
    Automatic."""
    if schedule_type is None:
        return None
    labels = {label.lower(): label for label in (a1111.AUTOMATIC, *SCHEDULE_TYPES)}
    key = str(schedule_type).lower()
    label = labels.get(key) or a1111.SCHEDULER_NAMES.get(key)
    if label not in labels.values():
        raise SamplerError(
            f"unknown schedule type {quoted(str(schedule_type))}: choose one of {', '.join(labels.values())}"
        )
    return None if label == a1111.AUTOMATIC else label


def check_sampler_name(name: str) -> None:
    if not isinstance(name, str) or name not in SAMPLERS:
        raise SamplerError(f"unknown sampler {quoted(name)}: choose one of {', '.join(SAMPLERS)}")


def check_strength(strength: float) -> None:
    if not 0.0 < strength <= 1.0:
        raise SamplerError(f"strength {strength!r} is out of range: give a value in (0, 1]")


def first_step(num_steps: int, strength: float, sampler: str = "") -> int:
    """Index of the first step img2img runs (diffusers' StableDiffusionImg2ImgPipeline.get_timesteps; A1111's
    for its own samplers), 0 for the samplers whose strength sets their timesteps."""
    check_strength(strength)
    if sampler in SAMPLERS and SAMPLERS[sampler].txt2img_only:
        raise SamplerError(f"{sampler} is for txt2img only: choose another sampler for img2img (k_dpmpp_2m)")
    if sampler in SAMPLERS and SAMPLERS[sampler].strength_sets_timesteps:
        return 0
    if sampler in SAMPLERS and SAMPLERS[sampler].a1111_timesteps:
        first = img2img_first_step(num_steps, strength)
        if first >= len(a1111_levels(num_steps)) - 1:  # the lowest level is where the steps go, not from
            raise SamplerError(
                f"strength {strength} leaves none of the {num_steps} steps of the web UI's DDIM to run: "
                "raise strength or the steps"
            )
        return first
    if sampler in SAMPLERS and SAMPLERS[sampler].takes_schedule_type:
        # A1111's sample_img2img: t_enc = int(min(strength, 0.999) steps), and k-diffusion runs the last
        # t_enc + 1 noise levels of the schedule (one step more than t_enc), so never none.
        return num_steps - int(min(strength, 0.999) * num_steps) - 1
    first = max(num_steps - min(int(num_steps * strength), num_steps), 0)
    if first >= num_steps:
        raise SamplerError(
            f"strength {strength} leaves none of the {num_steps} steps to run: raise strength or the steps"
        )
    return first


def make_sampler(
    name: str,
    schedule: NoiseSchedule,
    num_steps: int,
    eta: float | None = None,
    strength: float = 1.0,
    schedule_type: str | None = None,
) -> Sampler:
    """The sampler ``name`` with its whole schedule for ``num_steps`` precomputed. ``eta`` None is the
    sampler's default; ``strength`` is the img2img strength, which only the samplers whose strength sets
    their timesteps need here; ``schedule_type`` (A1111's label or API name, None for Automatic) is for the
    samplers that take one."""
    check_sampler_name(name)
    schedule_type = check_schedule_type(schedule_type)
    try:
        schedule.check_num_steps(num_steps)
    except ScheduleError as error:
        raise SamplerError(str(error)) from error
    check_strength(strength)
    spec = SAMPLERS[name]
    if schedule_type is not None and not spec.takes_schedule_type:
        family = ", ".join(other.name for other in SAMPLER_TABLE if other.takes_schedule_type)
        raise SamplerError(
            f"{name} runs on its own timesteps and takes no schedule type ({schedule_type}): leave it at "
            f"Automatic, or choose one of {family}"
        )
    make = partial(spec.make, schedule_type=schedule_type) if spec.takes_schedule_type else spec.make
    if spec.distilled:
        _check_distilled_steps(name, schedule, num_steps, strength if spec.strength_sets_timesteps else 1.0)
    if spec.eta_default is None:
        if eta not in (None, 0.0):
            named = ", ".join(sorted(other.name for other in SAMPLER_TABLE if other.eta_default is not None))
            raise SamplerError(f"eta applies to the {named} samplers only: leave it at 0 for {name}")
        if spec.strength_sets_timesteps:
            return make(schedule, num_steps, strength)
        return make(schedule, num_steps)
    eta = spec.eta_default if eta is None else eta
    most = spec.eta_max
    if not (eta >= 0.0 and (most is None or eta <= most)):
        allowed = ">= 0" if most is None else f"from 0 to {most}"
        raise SamplerError(
            f"eta {eta!r} for {name} is out of range: give a value {allowed} (0 is deterministic)"
        )
    return make(schedule, num_steps, eta)


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
    schedule_type: str | None = None,
) -> np.ndarray:
    """Run sampler ``name`` for ``num_steps`` steps and return the float32 latents.

    txt2img starts from ``noise`` scaled to the sampler's initial noise level. img2img (``init_latents``
    given, already scaled by the VAE factor) skips the first steps as ``strength`` says (or, for the
    samplers whose strength sets their timesteps, runs them all lower in the schedule) and starts from
    ``init_latents`` noised to the first step it runs (A1111's DDIM: one level above). ``eta`` None is the
    sampler's default. ``known`` latents are pasted outside their mask after every step.
    ``schedule_type``: see make_sampler. ``callback(step, total, latents)`` follows every step (step counts
    from 0 within this run, of the ``total`` it runs); a truthy return stops the run and returns those
    latents. A model raising SamplingStopped stops it too, within a step.
    """
    if init_latents is None and strength != 1.0:
        raise SamplerError(f"strength {strength} is for img2img only: give init_latents or leave it at 1")
    sampler = make_sampler(name, schedule, num_steps, eta, strength, schedule_type)
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
        x = sampler.noised(init_latents, noise, first - 1 if SAMPLERS[name].a1111_timesteps else first)
    total = len(sampler.timesteps) - first
    steps = sampler.steps(model, x, first, rng)
    try:
        for step, x in enumerate(steps):
            if known is not None:
                known.paste(sampler, x, noise, first + step + 1)
            if callback is not None and callback(step, total, x):
                break
    except SamplingStopped:
        pass  # x is the last step's, as the samplers make a new array each step
    return x
