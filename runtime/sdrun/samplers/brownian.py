"""Brownian noise for the SDE samplers (DPM++ SDE, DPM++ 2M SDE), in numpy.

k-diffusion draws their noise from a Brownian motion W over the noise levels, so that the noise of a step
and of its half step are the increments of one path: noise(sigma, sigma_next) =
(W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|), standard normal for each interval alone.
AUTOMATIC1111 builds that path with torchsde's BrownianTree from the image seed; its random bits cannot be
had without torch, so these samplers run right but do not redraw A1111's pictures bit for bit. Here the
path is built point by point: W(sigma_min) = 0, and each new level draws one
``rng.standard_normal(shape, dtype=np.float32)`` from the Brownian bridge between its known neighbours
(beyond them, from a free Brownian step).
"""

from __future__ import annotations

import bisect

import numpy as np

# Noise levels this close (relative) are the same point of the path: a level computed twice, once as
# exp(-log(sigma)), must not draw a second time.
_SAME_LEVEL = 1e-5


class BrownianNoise:
    def __init__(self, shape: tuple[int, ...], sigma_min: float, rng: np.random.Generator) -> None:
        self._shape = shape
        self._rng = rng
        self._levels = [float(sigma_min)]
        self._values = [np.zeros(shape, dtype=np.float64)]

    def __call__(self, sigma: float, sigma_next: float) -> np.ndarray:
        """The path's normalised increment from ``sigma`` to ``sigma_next``, float32."""
        increment = self._at(sigma_next) - self._at(sigma)
        return (increment / np.sqrt(abs(sigma_next - sigma))).astype(np.float32)

    def _at(self, level: float) -> np.ndarray:
        levels = self._levels
        i = bisect.bisect_left(levels, level)
        for j in (i - 1, i):
            if 0 <= j < len(levels) and abs(levels[j] - level) <= _SAME_LEVEL * max(levels[j], level):
                return self._values[j]
        z = self._rng.standard_normal(self._shape, dtype=np.float32).astype(np.float64)
        if i == 0 or i == len(levels):
            near = 0 if i == 0 else -1
            value = self._values[near] + np.sqrt(abs(level - levels[near])) * z
        else:
            low, high = levels[i - 1], levels[i]
            w = (level - low) / (high - low)
            mean = (1 - w) * self._values[i - 1] + w * self._values[i]
            value = mean + np.sqrt((level - low) * (high - level) / (high - low)) * z
        levels.insert(i, float(level))
        self._values.insert(i, value)
        return value
