"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), as diffusers' DPMSolverMultistepScheduler
with algorithm_type "dpmsolver++", solver_order 2 and its defaults (midpoint, final sigma zero).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sdrun.samplers.prediction import Model, call_model, split_prediction
from sdrun.schedule import NoiseSchedule


class DPMSolverPP2M:
    """On x_t = alpha_t x_0 + sigma_t epsilon, with lambda = log(alpha / sigma) and h = lambda_t - lambda_s:

        x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D,
        D = x0_s (first order), or (1 + 1/(2r)) x0_s - 1/(2r) x0_prev with r = h_prev / h (second order).

    The first step of a run, and the last (which lands on sigma = 0), are first order.
    With ``karras`` the noise levels are those of Karras et al. 2022 (eq. 5), at timesteps rounded to whole
    numbers (except for the cosine schedule), as diffusers' use_karras_sigmas does.
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int, karras: bool = False) -> None:
        self.prediction_type = schedule.prediction_type
        if karras:
            sigmas = schedule.karras_sigmas(num_steps)
            timesteps = schedule.timestep_at(sigmas)
            self.timesteps = timesteps if schedule.beta_schedule == "squaredcos_cap_v2" else timesteps.round()
        else:
            # diffusers spaces num_steps + 1 points and drops the last (t = 0) under leading and linspace.
            spacing = schedule.spacing("linspace")
            count = num_steps if spacing == "trailing" else num_steps + 1
            self.timesteps = schedule.spaced_timesteps(count, spacing)[:num_steps]
            sigmas = schedule.sigma_at(self.timesteps)
        # The variance-preserving form of each noise level s: alpha = 1/sqrt(1 + s^2), sigma = s alpha.
        ve_sigmas = np.append(sigmas, 0.0)
        alphas = 1 / np.sqrt(ve_sigmas**2 + 1)
        vp_sigmas = ve_sigmas * alphas
        # lambda = +inf at the final sigma = 0, and h = 0 where a schedule repeats a sigma (as in diffusers).
        with np.errstate(divide="ignore"):
            lambdas = -np.log(ve_sigmas)  # log(alpha / sigma)
            h = np.diff(lambdas)
            self._half_inv_r = np.append(np.nan, 0.5 * h[1:] / h[:-1]).tolist()  # 1/(2r) at step i >= 1
        self._alphas = alphas.tolist()
        self._sigmas = vp_sigmas.tolist()
        self._x_coef = (vp_sigmas[1:] / vp_sigmas[:-1]).tolist()
        self._d_coef = (-alphas[1:] * np.expm1(-h)).tolist()

    def initial(self, noise: np.ndarray) -> np.ndarray:
        return noise

    def noised(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        return self._alphas[index] * x0 + self._sigmas[index] * noise

    def steps(
        self, model: Model, x: np.ndarray, first: int, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        last = len(self.timesteps) - 1
        x0_prev = None
        for i in range(first, last + 1):
            output = call_model(model, x, float(self.timesteps[i]))
            x0, _ = split_prediction(output, x, self._alphas[i], self._sigmas[i], self.prediction_type)
            d = x0 if x0_prev is None or i == last else x0 + self._half_inv_r[i] * (x0 - x0_prev)
            x = self._x_coef[i] * x + self._d_coef[i] * d
            x0_prev = x0
            yield x
