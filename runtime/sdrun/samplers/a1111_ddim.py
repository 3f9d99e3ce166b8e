"""AUTOMATIC1111's own DDIM, its "DDIM" label (modules/sd_samplers_timesteps_impl.ddim): Song et al. 2021,
eq. 12 with the sigma of eq. 16 (sdrun.samplers.discrete.DDIM), on the web UI's timesteps, not diffusers'.

The web UI takes the timesteps 1, 1 + s, 1 + 2s, ... below 1000 (s = 1000 // steps, capped at 999): one or
more above `steps` of them when 1000 % steps != 0 (7 steps: 8). It calls the model at each but the lowest,
from the top down, each step going to the one below, so a run ends at timestep 1 with no step to abar = 1,
and makes one model call fewer than `steps` when 1000 % steps == 0. txt2img starts from the noise as is.
img2img (sample_img2img with setup_img2img_steps) runs the steps below the t_enc-th timestep,
t_enc = int(min(strength, 0.999) steps), from the latents noised to that timestep: one level above the
first step it runs. Every step draws a noise (sigma_t randn_like), at eta 0 too, where it adds nothing.
"""

from __future__ import annotations

import numpy as np

from sdrun.errors import SettingsError
from sdrun.samplers.discrete import DDIM
from sdrun.schedule import NoiseSchedule

# The web UI spaces its timesteps over 1000 whatever the model's schedule says.
A1111_TRAIN_STEPS = 1000


def a1111_levels(num_steps: int) -> np.ndarray:
    """The web UI's timesteps for ``num_steps``, descending, as float64."""
    stride = A1111_TRAIN_STEPS // num_steps
    ascending = np.minimum(np.arange(0, A1111_TRAIN_STEPS, stride) + 1, A1111_TRAIN_STEPS - 1)
    return ascending[::-1].astype(np.float64)


def img2img_first_step(num_steps: int, strength: float) -> int:
    """The index of the first step img2img runs: the t_enc-th timestep's is one above it."""
    return len(a1111_levels(num_steps)) - int(min(strength, 0.999) * num_steps)


class A1111DDIM(DDIM):
    """DDIM's step between neighbouring levels of the web UI's timesteps: ``timesteps`` are the levels the
    model is called at (all but the lowest); ``noised(x0, noise, index)`` takes any level, the lowest too."""

    draws_at_eta_zero = True

    def __init__(self, schedule: NoiseSchedule, num_steps: int, eta: float = 0.0) -> None:
        if schedule.num_train_timesteps != A1111_TRAIN_STEPS or num_steps < 2:
            raise SettingsError(
                f"the web UI's DDIM runs no step at {num_steps} step(s) of a {schedule.num_train_timesteps}-"
                f"timestep schedule: give 2 or more steps of a {A1111_TRAIN_STEPS}-timestep model, or use "
                "ddim"
            )
        # DDIM's own __init__ is for diffusers' timesteps: these are the web UI's.
        self._on_timesteps(schedule, a1111_levels(num_steps))
        self._step_to(np.append(self._abar[1:], self._abar[-1]), eta)  # the lowest level steps nowhere
        self.timesteps = self.timesteps[:-1]
