"""Samplers that step between discrete training timesteps on x_t itself: DDPM and DDIM.

Both follow diffusers' DDPMScheduler (variance_type "fixed_small") and DDIMScheduler step for step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sdrun.samplers.prediction import Model, call_model, split_prediction
from sdrun.schedule import NoiseSchedule


class _DiscreteSampler:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) epsilon (Ho et al. 2020, eq. 4); the model sees x_t as is."""

    def __init__(self, schedule: NoiseSchedule, num_steps: int) -> None:
        self._on_timesteps(schedule, schedule.spaced_timesteps(num_steps, schedule.spacing("leading")))

    def _on_timesteps(self, schedule: NoiseSchedule, timesteps: np.ndarray) -> None:
        self.schedule = schedule
        self.timesteps = timesteps
        self._abar = schedule.alphas_cumprod[timesteps.astype(np.int64)]

    def initial(self, noise: np.ndarray) -> np.ndarray:
        return noise

    def noised(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        abar = self._abar[index]
        return float(abar**0.5) * x0 + float((1 - abar) ** 0.5) * noise

    def _denoise(self, model: Model, x: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(x_0, epsilon) predicted at step ``index``, x_0 clipped when the config asks for it."""
        output = call_model(model, x, float(self.timesteps[index]))
        abar = self._abar[index]
        x0, eps = split_prediction(
            output, x, float(abar**0.5), float((1 - abar) ** 0.5), self.schedule.prediction_type
        )
        if self.schedule.clip_sample:
            x0 = np.clip(x0, -self.schedule.clip_sample_range, self.schedule.clip_sample_range)
        return x0, eps


class DDPM(_DiscreteSampler):
    """Ancestral sampling of Ho et al. 2020 (eq. 11) written through the predicted x_0 (eq. 15) and the
    posterior q(x_prev | x_t, x_0) of eq. 7, with the fixed-small variance beta~ of eq. 7. Between strided
    timesteps t > prev, beta_t stands for 1 - abar_t / abar_prev.
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int) -> None:
        super().__init__(schedule, num_steps)
        abar_prev = np.append(self._abar[1:], 1.0)
        beta = 1 - self._abar / abar_prev
        self._x0_coef = (abar_prev**0.5 * beta / (1 - self._abar)).tolist()
        self._xt_coef = ((1 - beta) ** 0.5 * (1 - abar_prev) / (1 - self._abar)).tolist()
        variance = (1 - abar_prev) / (1 - self._abar) * beta  # zero on the last step, where abar_prev = 1
        self._std = np.sqrt(variance).tolist()

    def steps(
        self, model: Model, x: np.ndarray, first: int, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        for i in range(first, len(self.timesteps)):
            x0, _ = self._denoise(model, x, i)
            z = rng.standard_normal(x.shape, dtype=np.float32)
            x = self._x0_coef[i] * x0 + self._xt_coef[i] * x + self._std[i] * z
            yield x


class DDIM(_DiscreteSampler):
    """Song et al. 2021, eq. 12, with
    sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev) (eq. 16):
    eta = 0 is the deterministic DDIM, eta = 1 the DDPM variance.

    The previous timestep is t - T // num_steps whatever the spacing, and below 0 abar_prev is 1 if the
    config sets set_alpha_to_one, else abar_0: both as diffusers' DDIMScheduler, which draws no noise at
    eta 0.
    """

    draws_at_eta_zero = False

    def __init__(self, schedule: NoiseSchedule, num_steps: int, eta: float = 0.0) -> None:
        super().__init__(schedule, num_steps)
        prev = self.timesteps.astype(np.int64) - schedule.num_train_timesteps // num_steps
        final_abar = 1.0 if schedule.set_alpha_to_one else schedule.alphas_cumprod[0]
        self._step_to(np.where(prev >= 0, schedule.alphas_cumprod[np.maximum(prev, 0)], final_abar), eta)

    def _step_to(self, abar_prev: np.ndarray, eta: float) -> None:
        """The coefficients of the steps from each timestep's abar to ``abar_prev``."""
        self.eta = eta
        std = eta * ((1 - abar_prev) / (1 - self._abar) * (1 - self._abar / abar_prev)) ** 0.5
        self._x0_coef = (abar_prev**0.5).tolist()
        self._eps_coef = ((1 - abar_prev - std**2) ** 0.5).tolist()
        self._std = std.tolist()

    def steps(
        self, model: Model, x: np.ndarray, first: int, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        for i in range(first, len(self.timesteps)):
            x0, eps = self._denoise(model, x, i)
            x = self._x0_coef[i] * x0 + self._eps_coef[i] * eps
            if self.eta > 0 or self.draws_at_eta_zero:
                x = x + self._std[i] * rng.standard_normal(x.shape, dtype=np.float32)
            yield x
