"""AUTOMATIC1111's stochastic k-diffusion samplers: Euler a, DPM2 a, DPM++ 2S a, DPM++ SDE and DPM++ 2M SDE,
as k-diffusion's sample_* functions run them (sdrun.samplers.karras_family has the shared parts).

``eta`` scales the noise each step re-injects (A1111's "Eta", 1 by default; 0 makes them deterministic).
The ancestral ones draw one ``rng.standard_normal(x.shape, dtype=np.float32)`` on every step but the last
(DPM2 a and DPM++ 2S a: every step that does not land on sigma 0), after that step's model calls; the SDE
ones draw from a Brownian path (sdrun.samplers.brownian), as A1111 does with torchsde.
"""

from __future__ import annotations

import math

import numpy as np

from sdrun import a1111
from sdrun.samplers.brownian import BrownianNoise
from sdrun.samplers.karras_family import KarrasSampler, intervals, log_midpoint
from sdrun.schedule import NoiseSchedule


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up): the deterministic step goes down to sigma_down, then fresh noise of std
    sigma_up brings the level back to sigma_next (sigma_down^2 + sigma_up^2 = sigma_next^2); eta scales
    sigma_up from the DDPM posterior's (Ho et al. 2020, eq. 7) towards 0."""
    if not eta:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - sigma_up**2) ** 0.5, sigma_up


class _Stochastic(KarrasSampler):
    def __init__(
        self, schedule: NoiseSchedule, num_steps: int, eta: float = 1.0, *, schedule_type: str | None = None
    ) -> None:
        super().__init__(schedule, num_steps, schedule_type=schedule_type)
        self.eta = eta


def _noise(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return rng.standard_normal(x.shape, dtype=np.float32)


class KEulerAncestral(_Stochastic):
    """An Euler step down to sigma_down, then noise of std sigma_up."""

    def _run(self, model, x, sigmas, rng):
        for sigma, sigma_next in intervals(sigmas):
            d = self._slope(model, x, sigma)
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.eta)
            x = x + (sigma_down - sigma) * d
            if sigma_next > 0:
                x = x + sigma_up * _noise(rng, x)
            yield x


class KDPM2Ancestral(_Stochastic):
    """A DPM-Solver-2 step down to sigma_down, then noise of std sigma_up; Euler's step where sigma_down
    is 0."""

    automatic = a1111.KARRAS
    discard_penultimate = True

    def _run(self, model, x, sigmas, rng):
        for sigma, sigma_next in intervals(sigmas):
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.eta)
            x = self._dpm2_step(model, x, sigma, sigma_down)
            if sigma_down != 0:
                x = x + sigma_up * _noise(rng, x)
            yield x


class KDPMPP2SAncestral(_Stochastic):
    """A DPM-Solver++(2S) step (Lu et al. 2022, "DPM-Solver++", Algorithm 1 with r = 1/2) down to
    sigma_down, then noise of std sigma_up."""

    automatic = a1111.KARRAS

    def _run(self, model, x, sigmas, rng):
        for sigma, sigma_next in intervals(sigmas):
            denoised = self._denoised(model, x, sigma)
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.eta)
            if sigma_down == 0:
                x = x + (sigma_down - sigma) * ((x - denoised) / sigma)
            else:
                h = math.log(sigma) - math.log(sigma_down)
                sigma_mid = sigma * math.exp(-h / 2)
                x_2 = (sigma_mid / sigma) * x - math.expm1(-h / 2) * denoised
                x = (sigma_down / sigma) * x - math.expm1(-h) * self._denoised(model, x_2, sigma_mid)
            if sigma_next > 0:
                x = x + sigma_up * _noise(rng, x)
            yield x


class _Brownian(_Stochastic):
    def _path(self, x: np.ndarray, rng: np.random.Generator) -> BrownianNoise:
        """The run's Brownian path, over the whole schedule's levels (img2img's tail included), as A1111."""
        return BrownianNoise(x.shape, min(sigma for sigma in self.sigmas if sigma > 0), rng)


class KDPMPPSDE(_Brownian):
    """DPM-Solver++ with noise (k-diffusion's sample_dpmpp_sde, r = 1/2): an ancestral half step to the
    log-midpoint, then an ancestral full step on the midpoint's x_0 prediction (at r = 1/2 the weight
    1/(2r) of k-diffusion's blend puts all of it there)."""

    automatic = a1111.KARRAS

    def _run(self, model, x, sigmas, rng):
        noise = self._path(x, rng)
        for sigma, sigma_next in intervals(sigmas):
            denoised = self._denoised(model, x, sigma)
            if sigma_next == 0:
                x = x + (sigma_next - sigma) * ((x - denoised) / sigma)
            else:
                sigma_mid = log_midpoint(sigma, sigma_next)
                x_2 = self._ancestral(x, denoised, sigma, sigma_mid, noise)
                x = self._ancestral(x, self._denoised(model, x_2, sigma_mid), sigma, sigma_next, noise)
            yield x

    def _ancestral(
        self, x: np.ndarray, denoised: np.ndarray, sigma: float, sigma_to: float, noise: BrownianNoise
    ) -> np.ndarray:
        """A first-order DPM-Solver++ step from sigma down to sigma_down, plus the path's noise."""
        sigma_down, sigma_up = ancestral_step(sigma, sigma_to, self.eta)
        x = (sigma_down / sigma) * x - math.expm1(math.log(sigma_down) - math.log(sigma)) * denoised
        return x + sigma_up * noise(sigma, sigma_to)


class KDPMPP2MSDE(_Brownian):
    """DPM-Solver++(2M) SDE (k-diffusion's sample_dpmpp_2m_sde, midpoint form): the 2M update with the
    noise an SDE step of size eta h re-injects; the last step lands on D."""

    automatic = a1111.EXPONENTIAL

    def _run(self, model, x, sigmas, rng):
        noise = self._path(x, rng)
        previous, h_previous = None, 0.0
        for sigma, sigma_next in intervals(sigmas):
            denoised = self._denoised(model, x, sigma)
            if sigma_next == 0:
                x = denoised
            else:
                h = math.log(sigma) - math.log(sigma_next)
                eta_h = self.eta * h
                kept = -math.expm1(-h - eta_h)
                x = (sigma_next / sigma) * math.exp(-eta_h) * x + kept * denoised
                if previous is not None:
                    x = x + 0.5 * kept * (h / h_previous) * (denoised - previous)
                if self.eta:
                    x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * noise(sigma, sigma_next)
                h_previous = h
            previous = denoised
            yield x
