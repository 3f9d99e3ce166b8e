"""AUTOMATIC1111's noise levels: k-diffusion's discrete-sigma view of the training schedule, and the web UI's
schedule types over it (its modules/sd_schedulers.py and KDiffusionSampler.get_sigmas).

The model was trained at the 1000 sigmas of its timesteps (k-diffusion's DiscreteSchedule). A noise level
between two of them has the fractional timestep found by interpolating linearly in log sigma, and a
fractional timestep the sigma found the same way. The table is computed in float32, as the CompVis
checkpoint that A1111 wraps holds ``alphas_cumprod``; the schedules over it in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sdrun import a1111
from sdrun.schedule import NoiseSchedule

# Karras et al. 2022, eq. 5, with the rho A1111 leaves at k-diffusion's default.
KARRAS_RHO = 7.0


class DiscreteSigmas:
    """sigma_t = sqrt((1 - abar_t) / abar_t) at every training timestep t, ascending in t."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        alphas_cumprod = schedule.alphas_cumprod.astype(np.float32)
        table = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas = table.astype(np.float64)
        self._log_sigmas = np.log(table).astype(np.float64)
        self._t = np.arange(len(table), dtype=np.float64)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: np.ndarray | float) -> np.ndarray:
        """The fractional timestep of each sigma (clamped to the table's range)."""
        return np.interp(np.log(sigma), self._log_sigmas, self._t)

    def t_to_sigma(self, t: np.ndarray) -> np.ndarray:
        return np.exp(np.interp(t, self._t, self._log_sigmas))


def _uniform(n: int, table: DiscreteSigmas) -> np.ndarray:
    """k-diffusion's get_sigmas: n timesteps evenly spaced from the last training step down to 0."""
    return table.t_to_sigma(np.linspace(len(table.sigmas) - 1, 0, n))


def _karras(n: int, table: DiscreteSigmas) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    top, bottom = table.sigma_max ** (1 / KARRAS_RHO), table.sigma_min ** (1 / KARRAS_RHO)
    return (top + ramp * (bottom - top)) ** KARRAS_RHO


def _exponential(n: int, table: DiscreteSigmas) -> np.ndarray:
    return np.exp(np.linspace(np.log(table.sigma_max), np.log(table.sigma_min), n))


def _timestep_range(table: DiscreteSigmas) -> tuple[float, float]:
    return float(table.sigma_to_t(table.sigma_max)), float(table.sigma_to_t(table.sigma_min))


def _sgm_uniform(n: int, table: DiscreteSigmas) -> np.ndarray:
    """n + 1 evenly spaced timesteps from the top, the bottom one left out."""
    return table.t_to_sigma(np.linspace(*_timestep_range(table), n + 1)[:-1])


def _normal(n: int, table: DiscreteSigmas) -> np.ndarray:
    return table.t_to_sigma(np.linspace(*_timestep_range(table), n))


def _simple(n: int, table: DiscreteSigmas) -> np.ndarray:
    """Every (len / n)-th training sigma from the top, each index truncated."""
    stride = len(table.sigmas) / n
    return table.sigmas[[-(1 + int(i * stride)) for i in range(n)]]


# Schedule type -> the n noise levels it puts on the table (a final 0 is appended to every one).
SCHEDULE_TYPES: dict[str, Callable[[int, DiscreteSigmas], np.ndarray]] = {
    a1111.UNIFORM: _uniform,
    a1111.KARRAS: _karras,
    a1111.EXPONENTIAL: _exponential,
    a1111.SGM_UNIFORM: _sgm_uniform,
    a1111.SIMPLE: _simple,
    a1111.NORMAL: _normal,
}


def a1111_sigmas(
    table: DiscreteSigmas, num_steps: int, schedule_type: str, discard_penultimate: bool = False
) -> np.ndarray:
    """The num_steps + 1 noise levels of a run, ending in 0. ``discard_penultimate`` (A1111's DPM2 and
    DPM2 a): make one level more and drop the one before the final 0, whose second-order step would
    otherwise land on a tiny sigma."""
    count = num_steps + 1 if discard_penultimate else num_steps
    sigmas = np.append(SCHEDULE_TYPES[schedule_type](count, table), 0.0)
    return np.delete(sigmas, -2) if discard_penultimate else sigmas
