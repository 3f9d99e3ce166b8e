"""What every sampler shares: the model's call signature and reading its output as x_0 and epsilon."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# model(x_in, t) -> raw output (epsilon or v) for the scaled input x_in at timestep t, guidance applied.
Model = Callable[[np.ndarray, float], np.ndarray]


def split_prediction(
    output: np.ndarray, x: np.ndarray, alpha: float, sigma: float, prediction_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """(x_0, epsilon) of x = alpha x_0 + sigma epsilon, from the model's epsilon or its
    v = alpha epsilon - sigma x_0 (Salimans & Ho 2022, sec. 4 and appendix D)."""
    if prediction_type == "epsilon":
        return (x - sigma * output) / alpha, output
    return alpha * x - sigma * output, alpha * output + sigma * x


def call_model(model: Model, x_in: np.ndarray, timestep: float) -> np.ndarray:
    return np.asarray(model(x_in, timestep), dtype=np.float32)
