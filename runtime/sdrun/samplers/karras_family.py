"""AUTOMATIC1111's k-diffusion samplers, deterministic ones: Euler, Heun, LMS, DPM2 and DPM++ 2M, as
k-diffusion's sample_* functions run them on A1111's noise levels (sdrun.samplers.a1111_sigmas).

The latent is x = x_0 + sigma epsilon; the model sees x / sqrt(sigma^2 + 1) at the fractional timestep of
sigma (k-diffusion's CompVisDenoiser and CompVisVDenoiser), and D(x; sigma) is its x_0. A run starts at
x = sigma_0 noise (A1111's txt2img without the SGM noise multiplier); img2img runs the schedule's tail
from x_0 + sigma_first noise as a run of its own (multistep history starts afresh), as A1111's
sample_img2img hands k-diffusion the tail. k-diffusion draws an unused churn noise at every step of Euler,
Heun and DPM2 (s_churn is 0 in A1111); these samplers draw nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from sdrun import a1111
from sdrun.samplers.a1111_sigmas import DiscreteSigmas, a1111_sigmas
from sdrun.samplers.prediction import Model, call_model, split_prediction
from sdrun.schedule import NoiseSchedule

# k-diffusion's sample_lms order.
LMS_ORDER = 4


class KarrasSampler:
    """What the family shares: A1111's noise levels for a schedule type, D(x; sigma) and the starts.
    ``automatic`` is the schedule type A1111's "Automatic" picks for the sampler; ``discard_penultimate``
    its option of that name."""

    automatic = a1111.UNIFORM
    discard_penultimate = False

    def __init__(self, schedule: NoiseSchedule, num_steps: int, *, schedule_type: str | None = None) -> None:
        self.prediction_type = schedule.prediction_type
        self._table = DiscreteSigmas(schedule)
        kind = self.automatic if schedule_type in (None, a1111.AUTOMATIC) else schedule_type
        sigmas = a1111_sigmas(self._table, num_steps, kind, self.discard_penultimate)
        self.sigmas: list[float] = sigmas.tolist()
        self.timesteps = self._table.sigma_to_t(np.array(self.sigmas[:-1]))

    def initial(self, noise: np.ndarray) -> np.ndarray:
        return self.sigmas[0] * noise

    def noised(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        return x0 + self.sigmas[index] * noise

    def steps(
        self, model: Model, x: np.ndarray, first: int, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        return self._run(model, x, self.sigmas[first:], rng)

    def _run(
        self, model: Model, x: np.ndarray, sigmas: Sequence[float], rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def _denoised(self, model: Model, x: np.ndarray, sigma: float) -> np.ndarray:
        """D(x; sigma) from the model's epsilon or v at sigma's fractional timestep."""
        scale = 1 / math.sqrt(sigma**2 + 1)
        x_in = scale * x
        output = call_model(model, x_in, float(self._table.sigma_to_t(sigma)))
        return split_prediction(output, x_in, scale, sigma * scale, self.prediction_type)[0]

    def _slope(self, model: Model, x: np.ndarray, sigma: float) -> np.ndarray:
        """dx/dsigma = (x - D(x; sigma)) / sigma, the probability-flow ODE (Karras et al. 2022, eq. 3)."""
        return (x - self._denoised(model, x, sigma)) / sigma

    def _dpm2_step(self, model: Model, x: np.ndarray, sigma: float, target: float) -> np.ndarray:
        """x moved from sigma to `target` by DPM-Solver-2 (the slope at the log-midpoint carries the whole
        step), or by Euler's method when `target` is 0."""
        d = self._slope(model, x, sigma)
        if target == 0:
            return x + (target - sigma) * d
        sigma_mid = log_midpoint(sigma, target)
        x_2 = x + (sigma_mid - sigma) * d
        return x + (target - sigma) * self._slope(model, x_2, sigma_mid)


def intervals(sigmas: Sequence[float]) -> Iterator[tuple[float, float]]:
    """(sigma, sigma_next) of each step."""
    return zip(sigmas[:-1], sigmas[1:], strict=True)


def log_midpoint(sigma: float, sigma_next: float) -> float:
    """The noise level halfway between two in log sigma (DPM-Solver-2's intermediate point)."""
    return math.exp((math.log(sigma) + math.log(sigma_next)) / 2)


class KEuler(KarrasSampler):
    """Euler's method on the ODE (Karras et al. 2022, Algorithm 2 without churn)."""

    def _run(self, model, x, sigmas, rng):
        for sigma, sigma_next in intervals(sigmas):
            x = x + (sigma_next - sigma) * self._slope(model, x, sigma)
            yield x


class KHeun(KarrasSampler):
    """Heun's method (Karras et al. 2022, Algorithm 2 without churn): an Euler step, then the mean of the
    slopes at both ends; the last step, to sigma 0, is Euler's."""

    def _run(self, model, x, sigmas, rng):
        for sigma, sigma_next in intervals(sigmas):
            d, dt = self._slope(model, x, sigma), sigma_next - sigma
            if sigma_next == 0:
                x = x + dt * d
            else:
                x_2 = x + dt * d
                x = x + dt * ((d + self._slope(model, x_2, sigma_next)) / 2)
            yield x


class KDPM2(KarrasSampler):
    """DPM-Solver-2 on the ODE (Lu et al. 2022, Algorithm 1, in k-diffusion's sigma form): the slope at the
    log-midpoint carries the whole step; the last step is Euler's."""

    automatic = a1111.KARRAS
    discard_penultimate = True

    def _run(self, model, x, sigmas, rng):
        for sigma, sigma_next in intervals(sigmas):
            x = self._dpm2_step(model, x, sigma, sigma_next)
            yield x


class KLMS(KarrasSampler):
    """Linear multistep (Adams-Bashforth) of up to order 4 on the ODE: the slopes of the last steps are
    extrapolated by their Lagrange polynomial in sigma, integrated exactly over the step."""

    def _run(self, model, x, sigmas, rng):
        slopes: list[np.ndarray] = []
        for i in range(len(sigmas) - 1):
            slopes = [*slopes[-(LMS_ORDER - 1) :], self._slope(model, x, sigmas[i])]
            coeffs = lms_coefficients(sigmas, i, len(slopes))
            x = x + sum(c * d for c, d in zip(coeffs, reversed(slopes), strict=True))
            yield x


def lms_coefficients(sigmas: Sequence[float], i: int, order: int) -> list[float]:
    """The integral from sigmas[i] to sigmas[i + 1] of each Lagrange basis polynomial over
    sigmas[i], sigmas[i - 1], ..., sigmas[i - order + 1] (newest first)."""
    nodes = [sigmas[i - j] for j in range(order)]
    coeffs = []
    for j, node in enumerate(nodes):
        basis = np.polynomial.Polynomial([1.0])
        for other in nodes[:j] + nodes[j + 1 :]:
            basis = basis * np.polynomial.Polynomial([-other, 1.0]) / (node - other)
        antiderivative = basis.integ()
        coeffs.append(float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i])))
    return coeffs


class KDPMPP2M(KarrasSampler):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) in lambda = -log sigma:
    x_next = (sigma_next / sigma) x - (e^-h - 1) D', with D' = D on the first step and the last (to sigma 0,
    which lands on D), else D + (D - D_prev) / (2r), r = h_prev / h."""

    automatic = a1111.KARRAS

    def _run(self, model, x, sigmas, rng):
        previous = None
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = self._denoised(model, x, sigma)
            if sigma_next == 0:
                x = denoised
            else:
                h = math.log(sigma) - math.log(sigma_next)
                target = denoised
                if previous is not None:
                    half_inv_r = h / (math.log(sigmas[i - 1]) - math.log(sigma)) / 2
                    target = denoised + half_inv_r * (denoised - previous)
                x = (sigma_next / sigma) * x - math.expm1(-h) * target
            previous = denoised
            yield x
