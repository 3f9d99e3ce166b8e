"""Euler samplers on the noise levels sigma, k-diffusion style: the latent is x = x_0 + sigma epsilon and
the model sees x / sqrt(sigma^2 + 1). As diffusers' EulerDiscreteScheduler and
EulerAncestralDiscreteScheduler step for step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sdrun.samplers.prediction import Model, call_model, split_prediction
from sdrun.schedule import NoiseSchedule


class _SigmaSampler:
    def __init__(self, schedule: NoiseSchedule, num_steps: int) -> None:
        self.prediction_type = schedule.prediction_type
        spacing = schedule.spacing("linspace")
        # Fractional timesteps under "linspace" spacing; sigma is interpolated linearly in t between them.
        self.timesteps = schedule.spaced_timesteps(num_steps, spacing, round_linspace=False)
        sigmas = np.append(schedule.sigma_at(self.timesteps), 0.0)
        self.sigmas = sigmas.tolist()
        self._input_scale = (1 / np.sqrt(sigmas**2 + 1)).tolist()
        # diffusers starts "leading" spacing at sqrt(sigma_max^2 + 1), the others at sigma_max.
        self._initial_sigma = float(np.hypot(sigmas[0], 1.0)) if spacing == "leading" else self.sigmas[0]

    def initial(self, noise: np.ndarray) -> np.ndarray:
        return self._initial_sigma * noise

    def noised(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        return x0 + self.sigmas[index] * noise

    def _denoise(self, model: Model, x: np.ndarray, index: int) -> np.ndarray:
        """D(x; sigma), the predicted x_0, from the model's prediction at step ``index``."""
        scale = self._input_scale[index]
        x_in = scale * x
        output = call_model(model, x_in, float(self.timesteps[index]))
        x0, _ = split_prediction(output, x_in, scale, self.sigmas[index] * scale, self.prediction_type)
        return x0


class Euler(_SigmaSampler):
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma
    (Karras et al. 2022, eq. 1 with sigma(t) = t and the score of eq. 3; Algorithm 2 without churn or
    the second-order correction)."""

    def steps(
        self, model: Model, x: np.ndarray, first: int, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        for i in range(first, len(self.timesteps)):
            sigma = self.sigmas[i]
            d = (x - self._denoise(model, x, i)) / sigma
            x = x + (self.sigmas[i + 1] - sigma) * d
            yield x


class EulerAncestral(_SigmaSampler):
    """An Euler step down to sigma_down, then fresh noise of std sigma_up, with
    sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2 and sigma_down^2 + sigma_up^2 = sigma_next^2
    (k-diffusion's sample_euler_ancestral with eta = 1)."""

    def __init__(self, schedule: NoiseSchedule, num_steps: int) -> None:
        super().__init__(schedule, num_steps)
        sigma, sigma_next = np.array(self.sigmas[:-1]), np.array(self.sigmas[1:])
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        self._sigma_up = sigma_up.tolist()
        # sqrt(sigma_next^2 - sigma_up^2) in closed form, which cannot round below zero.
        self._sigma_down = (sigma_next**2 / sigma).tolist()

    def steps(
        self, model: Model, x: np.ndarray, first: int, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        for i in range(first, len(self.timesteps)):
            sigma = self.sigmas[i]
            d = (x - self._denoise(model, x, i)) / sigma
            x = x + (self._sigma_down[i] - sigma) * d
            x = x + self._sigma_up[i] * rng.standard_normal(x.shape, dtype=np.float32)
            yield x
