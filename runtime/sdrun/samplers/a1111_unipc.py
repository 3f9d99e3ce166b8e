"""AUTOMATIC1111's "UniPC" (modules/sd_samplers_timesteps_impl.unipc): UniPC (Zhao et al. 2023), multistep,
predicting x_0, its B(h) = h variant ("bh1"), order 3 with lower orders at the end, on time-uniform steps of
the continuous time of DPM-Solver's discrete VP schedule: the web UI's default options. txt2img only.

The web UI runs as many steps as its DDIM has timesteps (sdrun.samplers.a1111_ddim.a1111_levels: more than
asked for at some step counts), from t = 1 down to t = 1/N (N the training timesteps), and calls the model at
(t - 1/N) N' with N' = 1000, a fractional timestep. log alpha_t is interpolated linearly between the
training timesteps, at t = (n + 1) / N. A step predicts x_t from the last `order` x_0 predictions, calls the
model there, and corrects x_t with that call's x_0, which the next step takes as its newest; the last step
makes no call and no correction, so a run makes as many model calls as steps. txt2img starts from the noise
as is and draws no noise.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from math import factorial

import numpy as np

from sdrun.errors import SettingsError
from sdrun.samplers.a1111_ddim import A1111_TRAIN_STEPS, a1111_levels
from sdrun.samplers.prediction import Model, call_model
from sdrun.schedule import NoiseSchedule

ORDER = 3  # the web UI's uni_pc_order
# (lambda_t, x_0 predicted at t) of the last ORDER model calls, the newest last.
History = deque[tuple[float, np.ndarray]]


class A1111UniPC:
    """The web UI's UniPC over ``schedule`` for ``num_steps`` (as asked; more run at some counts)."""

    def __init__(self, schedule: NoiseSchedule, num_steps: int) -> None:
        steps = len(a1111_levels(num_steps))
        if steps < ORDER:  # the web UI asserts it: "UniPC order must be < sampling steps"
            raise SettingsError(
                f"the web UI's UniPC runs order {ORDER} and takes at least {ORDER} steps, not {num_steps}: "
                f"give {ORDER} or more steps"
            )
        abar = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
        total = len(abar)
        self._abar = abar
        self._prediction_type = schedule.prediction_type
        # The continuous times from t = 1 down to the first training timestep, and their log alpha.
        t = np.linspace(1.0, 1.0 / total, steps + 1)
        log_alpha = np.interp(t, np.arange(1, total + 1) / total, 0.5 * np.log(abar))
        self._alpha = np.exp(log_alpha)
        self._sigma = np.sqrt(1.0 - np.exp(2.0 * log_alpha))
        self._lambda = log_alpha - np.log(self._sigma)
        self._model_t = (t - 1.0 / total) * A1111_TRAIN_STEPS
        self.timesteps = self._model_t[:-1]  # the last step calls no model

    def initial(self, noise: np.ndarray) -> np.ndarray:
        return noise.astype(np.float32, copy=True)

    def noised(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        raise SettingsError("k_unipc (the web UI's UniPC) is txt2img only: use k_dpmpp_2m for img2img")

    def _x0(self, model: Model, x: np.ndarray, i: int) -> np.ndarray:
        """x_0 from the model's call at the i-th time."""
        t = float(self._model_t[i])
        output = call_model(model, x, t)
        if self._prediction_type == "v_prediction":
            # CompVisTimestepsVDenoiser's epsilon from v reads abar at the timestep truncated to an integer.
            abar = self._abar[int(np.float32(t))]
            output = np.sqrt(abar) * output + np.sqrt(1.0 - abar) * x
        return ((x - self._sigma[i] * output) / self._alpha[i]).astype(np.float32)

    def _order(self, step: int) -> int:
        """The order of step ``step`` (1-based): lower at the start (history) and at the end."""
        steps = len(self._lambda) - 1
        return step if step < ORDER else min(ORDER, steps + 1 - step)

    def steps(
        self, model: Model, x: np.ndarray, first: int, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        steps = len(self._lambda) - 1
        history: History = deque([(self._lambda[0], self._x0(model, x, 0))], ORDER)
        for step in range(1, steps + 1):
            x, newest = self._update(model, x, history, step, corrector=step < steps)
            if step < steps:
                history.append((self._lambda[step], newest))
            yield x

    def _update(
        self, model: Model, x: np.ndarray, history: History, step: int, corrector: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One step to the step-th time: the corrected x_t and the x_0 called at the predicted one."""
        order = self._order(step)
        lam0, x0_prev = history[-1]
        h = self._lambda[step] - lam0
        # Earlier x_0 as divided differences against the newest, at their ratios of log-SNR steps.
        older = [history[-1 - k] for k in range(1, order)]
        ratios = np.array([(lam - lam0) / h for lam, _ in older] + [1.0])
        diffs = [(x0 - x0_prev) / r for (_, x0), r in zip(older, ratios, strict=False)]
        # The order conditions' right-hand side b_k = k! hh phi_{k+1}(hh) / B(hh), hh = -h as x_0 is predicted
        # and B(hh) = hh ("bh1"); phi runs through hh phi_{k+1}(hh).
        hh = -h
        phi = np.expm1(hh) / hh - 1.0
        b = []
        for k in range(1, order + 1):
            b.append(phi * factorial(k) / hh)
            phi = phi / hh - 1.0 / factorial(k + 1)
        powers = np.vander(ratios, order, increasing=True).T  # row k: ratios ** k
        alpha, sigma = self._alpha[step], self._sigma[step]
        base = (sigma / self._sigma[step - 1]) * x - (alpha * np.expm1(hh)) * x0_prev
        if diffs:
            rho = [0.5] if order == 2 else np.linalg.solve(powers[:-1, :-1], b[:-1])
            x = base - (alpha * hh) * sum(r * d for r, d in zip(rho, diffs, strict=True))
        else:
            x = base
        x = x.astype(np.float32)
        if not corrector:
            return x, None
        x0_t = self._x0(model, x, step)
        rho = [0.5] if order == 1 else np.linalg.solve(powers, b)
        residual = sum((r * d for r, d in zip(rho[:-1], diffs, strict=True)), rho[-1] * (x0_t - x0_prev))
        return (base - (alpha * hh) * residual).astype(np.float32), x0_t
