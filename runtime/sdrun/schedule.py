"""The training noise schedule (betas -> alphas_cumprod) and the inference timesteps drawn from it.

Read from a diffusers ``scheduler_config.json``. The timestep spacings ("leading", "trailing", "linspace")
are those of Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2,
computed exactly as diffusers computes them, so a step count means the same timesteps in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from sdrun.config_values import flag, real_number, whole_number
from sdrun.errors import ModelFolderError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction")

# SD 1.x's training schedule (the CompVis v1-inference.yaml values, as diffusers' PNDMScheduler config
# writes them); a key the config lacks takes its value from here. SD 1.x's own config names no
# timestep_spacing: then each sampler uses its diffusers scheduler's default, as diffusers does.
SD1_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "timestep_spacing": None,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    # The distillation schedule's length of consistency-distilled models (LCMScheduler's and TCDScheduler's
    # default, that of every published LCM, LCM-LoRA and TCD model).
    "original_inference_steps": 50,
}

# Far beyond any model's training schedule (SD's has 1000 steps), and cheap to hold.
MAX_TRAIN_TIMESTEPS = 100_000
_WHERE = "scheduler config"

# Config switches that change the schedule in ways this runtime does not implement; True is refused.
_UNSUPPORTED_SWITCHES = ("rescale_betas_zero_snr", "thresholding")


class ScheduleError(ModelFolderError, ValueError):
    """A scheduler config the runtime cannot use (or a step count its schedule does not have)."""


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) of Ho et al. 2020 (eq. 4).

    ``alphas_cumprod[t]`` is abar_t in float64. The other fields say how inference picks timesteps and
    how to read the model's output; ``timestep_spacing`` None leaves the spacing to each sampler.
    """

    alphas_cumprod: np.ndarray
    beta_schedule: str = "scaled_linear"
    timestep_spacing: str | None = None
    steps_offset: int = 1
    prediction_type: str = "epsilon"
    set_alpha_to_one: bool = False
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    original_inference_steps: int = 50

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoiseSchedule:
        """Build from a diffusers scheduler config dict; absent (or null) keys take SD 1.x's values."""
        if not isinstance(config, dict):
            raise ScheduleError("the scheduler config must be a JSON object: check scheduler_config.json")
        cfg = {**SD1_SCHEDULE, **{k: v for k, v in config.items() if v is not None}}
        for switch in _UNSUPPORTED_SWITCHES:
            if cfg.get(switch):
                raise ScheduleError(f"scheduler config sets {switch}=true, which sdrun does not support")
        _check_choice(cfg, "beta_schedule", BETA_SCHEDULES)
        _check_choice(cfg, "timestep_spacing", (*TIMESTEP_SPACINGS, None))
        _check_choice(cfg, "prediction_type", PREDICTION_TYPES)
        try:
            num_train = whole_number(cfg, "num_train_timesteps", _WHERE, 2, MAX_TRAIN_TIMESTEPS)
            if cfg["trained_betas"] is not None:
                betas = _trained_betas(cfg["trained_betas"], num_train)
            else:
                beta_start = real_number(cfg, "beta_start", _WHERE, 0.0, 1.0, open_low=True)
                beta_end = real_number(cfg, "beta_end", _WHERE, 0.0, 1.0, open_low=True)
                betas = make_betas(cfg["beta_schedule"], beta_start, beta_end, num_train)
            if not np.all((betas > 0) & (betas < 1)):
                raise ScheduleError(
                    "scheduler config gives betas outside (0, 1): check beta_start and beta_end"
                )
            return cls(
                alphas_cumprod=np.cumprod(1.0 - betas),
                beta_schedule=cfg["beta_schedule"],
                timestep_spacing=cfg["timestep_spacing"],
                steps_offset=whole_number(cfg, "steps_offset", _WHERE, 0, num_train - 1),
                prediction_type=cfg["prediction_type"],
                set_alpha_to_one=flag(cfg, "set_alpha_to_one", _WHERE, False),
                clip_sample=flag(cfg, "clip_sample", _WHERE, False),
                clip_sample_range=real_number(cfg, "clip_sample_range", _WHERE, 0.0, 1e6, open_low=True),
                original_inference_steps=whole_number(
                    cfg, "original_inference_steps", _WHERE, 1, MAX_TRAIN_TIMESTEPS
                ),
            )
        except ScheduleError:
            raise
        except ModelFolderError as error:
            raise ScheduleError(str(error)) from error

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @cached_property
    def train_sigmas(self) -> np.ndarray:
        """sigma_t = sqrt((1 - abar_t) / abar_t): the noise level of x_t / sqrt(abar_t) (Karras et al.)."""
        return np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)

    def check_num_steps(self, num_steps: int) -> None:
        if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= self.num_train_timesteps:
            raise ScheduleError(
                f"num_steps={num_steps!r}: expected an integer from 1 to {self.num_train_timesteps}"
            )

    def spacing(self, default: str) -> str:
        """The config's timestep spacing, or the sampler's ``default`` where the config names none."""
        return self.timestep_spacing or default

    def spaced_timesteps(self, num_steps: int, spacing: str, *, round_linspace: bool = True) -> np.ndarray:
        """``num_steps`` inference timesteps, descending, as float64 (whole numbers unless
        ``round_linspace`` is False, which keeps "linspace"'s fractions as diffusers' Euler schedulers do)."""
        if num_steps < 1:
            raise ScheduleError(f"num_steps={num_steps!r}: expected at least 1")
        last = self.num_train_timesteps
        if spacing == "linspace":
            steps = np.linspace(0, last - 1, num_steps)
            return (steps.round() if round_linspace else steps)[::-1].copy()
        if spacing == "leading":
            return (np.arange(num_steps) * (last // num_steps))[::-1] + float(self.steps_offset)
        return np.round(np.arange(last, 0, -last / num_steps)) - 1.0

    def sigma_at(self, timesteps: np.ndarray) -> np.ndarray:
        """sigma at (possibly fractional) timesteps, linear in t between the training steps."""
        return np.interp(timesteps, np.arange(self.num_train_timesteps), self.train_sigmas)

    def timestep_at(self, sigmas: np.ndarray) -> np.ndarray:
        """The fractional timestep of each sigma, linear in log sigma between the training steps."""
        return np.interp(np.log(sigmas), np.log(self.train_sigmas), np.arange(self.num_train_timesteps))

    def karras_sigmas(self, num_steps: int, rho: float = 7.0) -> np.ndarray:
        """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho."""
        sigma_min, sigma_max = self.train_sigmas[0], self.train_sigmas[-1]
        ramp = np.linspace(0.0, 1.0, num_steps)
        return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def _trained_betas(values: object, num_train: int) -> np.ndarray:
    if not isinstance(values, list) or len(values) != num_train:
        size = len(values) if isinstance(values, list) else "no list of"
        raise ScheduleError(
            f"scheduler config trained_betas has {size} values for num_train_timesteps={num_train}: "
            "make them agree"
        )
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        raise ScheduleError("scheduler config trained_betas must be numbers in (0, 1)")
    return np.asarray(values, dtype=np.float64)


def make_betas(
    beta_schedule: str, beta_start: float, beta_end: float, num_train_timesteps: int
) -> np.ndarray:
    """The training betas in float64."""
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, num_train_timesteps)
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return _cosine_betas(num_train_timesteps)
    raise ScheduleError(f"beta_schedule {beta_schedule!r}: choose one of {', '.join(BETA_SCHEDULES)}")


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021, eq. 17: abar(t) = cos^2((t/T + s)/(1 + s) pi/2), s = 0.008, betas capped."""
    t = np.arange(num_train_timesteps + 1) / num_train_timesteps
    alpha_bar = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def _check_choice(cfg: dict[str, Any], key: str, choices: tuple[str | None, ...]) -> None:
    if cfg[key] not in choices:
        named = ", ".join(choice for choice in choices if choice)
        raise ScheduleError(f"scheduler config {key}={repr(cfg[key])[:60]}: sdrun supports {named}")
