"""Samplers of consistency-distilled models: LCM (Luo et al. 2023, "Latent Consistency Models") and TCD
(Zheng et al. 2024, "Trajectory Consistency Distillation"), as diffusers' LCMScheduler and TCDScheduler
step for step.

Both step on the distillation schedule: the N timesteps t = k j - 1 (k = T // N, j = 1 .. N) the model was
distilled on (N: the scheduler config's `original_inference_steps`, 50 for the published models), of which
inference takes ``num_steps`` at evenly spaced indices from the top. The model sees x_t as is.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sdrun.samplers.prediction import Model, call_model, split_prediction
from sdrun.schedule import NoiseSchedule

# The boundary-condition scalings' constants: sigma_data as in Song et al. 2023 ("Consistency Models"), and
# the timestep multiplied by TIMESTEP_SCALING as LCM's distillation did (diffusers' timestep_scaling).
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def distillation_steps(schedule: NoiseSchedule, strength: float = 1.0) -> int:
    """How many timesteps of the distillation schedule lie within the top ``strength`` share of it: the
    most steps a run can take."""
    return int(schedule.original_inference_steps * strength)


def distillation_timesteps(schedule: NoiseSchedule, num_steps: int, strength: float = 1.0) -> np.ndarray:
    """``num_steps`` timesteps, descending, of the top ``strength`` share of the distillation schedule
    (diffusers' LCMScheduler.set_timesteps, and TCDScheduler's without original_inference_steps given)."""
    k = schedule.num_train_timesteps // schedule.original_inference_steps
    origin = np.arange(distillation_steps(schedule, strength), 0, -1) * k - 1
    indices = np.floor(np.linspace(0, len(origin), num_steps, endpoint=False)).astype(np.int64)
    return origin[indices].astype(np.float64)


class _ConsistencySampler:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) epsilon on the distillation schedule's timesteps."""

    def __init__(self, schedule: NoiseSchedule, num_steps: int, strength: float = 1.0) -> None:
        self.schedule = schedule
        self.timesteps = distillation_timesteps(schedule, num_steps, strength)
        self._abar = schedule.alphas_cumprod[self.timesteps.astype(np.int64)]
        self._alphas = np.sqrt(self._abar).tolist()
        self._sigmas = np.sqrt(1 - self._abar).tolist()

    def initial(self, noise: np.ndarray) -> np.ndarray:
        return noise

    def noised(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        return self._alphas[index] * x0 + self._sigmas[index] * noise

    def _predict(self, model: Model, x: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(x_0, epsilon) predicted at step ``index``."""
        output = call_model(model, x, float(self.timesteps[index]))
        alpha, sigma = self._alphas[index], self._sigmas[index]
        return split_prediction(output, x, alpha, sigma, self.schedule.prediction_type)


class LCM(_ConsistencySampler):
    """Multistep latent consistency sampling (Luo et al. 2023, Algorithm 1): the consistency function
    f(x, t) = c_skip(t) x + c_out(t) x_0(x, t) (Song et al. 2023, eq. 7) gives the denoised sample, which is
    noised again to the next timestep, x_next = sqrt(abar_next) f + sqrt(1 - abar_next) z; the last step
    returns f itself. With u = TIMESTEP_SCALING t: c_skip = sigma_data^2 / (u^2 + sigma_data^2) and
    c_out = u / sqrt(u^2 + sigma_data^2), so that f(x, 0) = x (the boundary condition).

    ``strength`` below 1 starts img2img lower in the distillation schedule, all ``num_steps`` steps still
    run (diffusers' LatentConsistencyModelImg2ImgPipeline). x_0 is clipped when the config asks for it.
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int, strength: float = 1.0) -> None:
        super().__init__(schedule, num_steps, strength)
        scaled = TIMESTEP_SCALING * self.timesteps
        self._c_skip = (SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)).tolist()
        self._c_out = (scaled / np.sqrt(scaled**2 + SIGMA_DATA**2)).tolist()

    def steps(
        self, model: Model, x: np.ndarray, first: int, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        last = len(self.timesteps) - 1
        clip = self.schedule.clip_sample_range if self.schedule.clip_sample else None
        for i in range(first, last + 1):
            x0, _ = self._predict(model, x, i)
            if clip is not None:
                x0 = np.clip(x0, -clip, clip)
            denoised = self._c_out[i] * x0 + self._c_skip[i] * x
            if i == last:
                x = denoised
            else:
                z = rng.standard_normal(x.shape, dtype=np.float32)
                x = self._alphas[i + 1] * denoised + self._sigmas[i + 1] * z
            yield x


class TCD(_ConsistencySampler):
    """Strategic stochastic sampling (Zheng et al. 2024): from x_t, go along the predicted (x_0, epsilon)
    to s = floor((1 - gamma) t_next), x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s) epsilon, then forward to
    t_next with fresh noise, x_next = sqrt(abar_next / abar_s) x_s + sqrt(1 - abar_next / abar_s) z.
    gamma = 0 is deterministic; the last step (t_next = 0) returns x_s. The config's clip_sample does not
    apply (nor does it in diffusers' TCDScheduler).
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int, gamma: float = 0.3) -> None:
        super().__init__(schedule, num_steps)
        self.gamma = gamma
        t_next = np.append(self.timesteps[1:], 0.0)
        # In float32 as diffusers computes it: the floor turns a last-bit difference into another timestep.
        s = np.floor(np.float32(1 - gamma) * t_next.astype(np.float32)).astype(np.int64)
        abar_s = schedule.alphas_cumprod[s]
        abar_next = schedule.alphas_cumprod[t_next.astype(np.int64)]
        self._s_alphas = np.sqrt(abar_s).tolist()
        self._s_sigmas = np.sqrt(1 - abar_s).tolist()
        self._forward_scale = np.sqrt(abar_next / abar_s).tolist()
        self._forward_std = np.sqrt(1 - abar_next / abar_s).tolist()

    def steps(
        self, model: Model, x: np.ndarray, first: int, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        last = len(self.timesteps) - 1
        for i in range(first, last + 1):
            x0, eps = self._predict(model, x, i)
            x = self._s_alphas[i] * x0 + self._s_sigmas[i] * eps
            if self.gamma > 0 and i < last:
                x = self._forward_scale[i] * x + self._forward_std[i] * rng.standard_normal(
                    x.shape, dtype=np.float32
                )
            yield x
