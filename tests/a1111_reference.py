"""AUTOMATIC1111's k-diffusion sampling, driven as its web UI drives it, for the A1111 sampler tests.

The samplers, the denoiser wrapper (CompVisDenoiser / CompVisVDenoiser) and the Karras, exponential and
uniform schedules are k-diffusion's own (kdiffusion_reference). What A1111 adds around them is restated here
from its source (web UI 1.10): its sampler table (modules/sd_samplers_kdiffusion.py: each label's
k-diffusion function and options), the schedule types of modules/sd_schedulers.py that are not in
k-diffusion (SGM Uniform, Simple, Normal, over the wrapper's sigma_to_t and t_to_sigma), get_sigmas
(Automatic, the model's sigma range, discard_next_to_last_sigma), and txt2img's and img2img's starts
(KDiffusionSampler.sample and sample_img2img with sd_samplers_common.setup_img2img_steps). Its own DDIM
(modules/sd_samplers_timesteps_impl.ddim, driven by sd_samplers_timesteps.CompVisSampler) is restated here
in torch from its source, since the web UI cannot be imported.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from kdiffusion_reference import load

# sdrun row -> (A1111 label, k-diffusion function, A1111's options), as sd_samplers_kdiffusion.py lists them.
A1111_SAMPLERS = {
    "k_euler": ("Euler", "sample_euler", {}),
    "k_euler_a": ("Euler a", "sample_euler_ancestral", {"uses_ensd": True}),
    "k_heun": ("Heun", "sample_heun", {"second_order": True}),
    "k_lms": ("LMS", "sample_lms", {}),
    "k_dpm_2": ("DPM2", "sample_dpm_2", {"scheduler": "karras", "discard_next_to_last_sigma": True}),
    "k_dpm_2_a": (
        "DPM2 a",
        "sample_dpm_2_ancestral",
        {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True},
    ),
    "k_dpmpp_2s_a": ("DPM++ 2S a", "sample_dpmpp_2s_ancestral", {"scheduler": "karras", "uses_ensd": True}),
    "k_dpmpp_2m": ("DPM++ 2M", "sample_dpmpp_2m", {"scheduler": "karras"}),
    "k_dpmpp_sde": ("DPM++ SDE", "sample_dpmpp_sde", {"scheduler": "karras", "brownian_noise": True}),
    "k_dpmpp_2m_sde": (
        "DPM++ 2M SDE",
        "sample_dpmpp_2m_sde",
        {"scheduler": "exponential", "brownian_noise": True},
    ),
}
# The schedule types' labels and A1111's names for them (sd_schedulers.schedulers).
SCHEDULE_NAMES = {
    "Uniform": "uniform",
    "Karras": "karras",
    "Exponential": "exponential",
    "SGM Uniform": "sgm_uniform",
    "Simple": "simple",
    "Normal": "normal",
}


class CompVisModel:
    """The part of a CompVis LatentDiffusion model the wrapper uses: float32 alphas_cumprod (as ldm registers
    them) and apply_model, here a numpy function of (x_in, t), with every call recorded."""

    def __init__(self, alphas_cumprod: np.ndarray, function) -> None:
        self.alphas_cumprod = torch.tensor(alphas_cumprod, dtype=torch.float32)
        self.function = function
        self.calls: list[tuple[np.ndarray, float]] = []

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        x_in, timestep = x.numpy().copy(), float(t.reshape(-1)[0])
        self.calls.append((x_in, timestep))
        return torch.from_numpy(self.function(x_in, timestep))


def wrapper(model: CompVisModel, prediction_type: str):
    _, external = load()
    denoiser = external.CompVisVDenoiser if prediction_type == "v_prediction" else external.CompVisDenoiser
    return denoiser(model)


def _sgm_uniform(n, inner_model):
    start = inner_model.sigma_to_t(torch.tensor(inner_model.sigmas[-1].item()))
    end = inner_model.sigma_to_t(torch.tensor(inner_model.sigmas[0].item()))
    return [inner_model.t_to_sigma(ts) for ts in torch.linspace(start, end, n + 1)[:-1]] + [0.0]


def _normal(n, inner_model):
    start = inner_model.sigma_to_t(torch.tensor(inner_model.sigmas[-1].item()))
    end = inner_model.sigma_to_t(torch.tensor(inner_model.sigmas[0].item()))
    return [inner_model.t_to_sigma(ts) for ts in torch.linspace(start, end, n)] + [0.0]


def _simple(n, inner_model):
    stride = len(inner_model.sigmas) / n
    return [float(inner_model.sigmas[-(1 + int(x * stride))]) for x in range(n)] + [0.0]


def a1111_sigmas(inner_model, name: str, steps: int, schedule_type: str | None) -> torch.Tensor:
    """KDiffusionSampler.get_sigmas with the web UI's default options."""
    sampling, _ = load()
    options = A1111_SAMPLERS[name][2]
    discard = options.get("discard_next_to_last_sigma", False)
    steps += 1 if discard else 0
    scheduler = SCHEDULE_NAMES.get(schedule_type) if schedule_type not in (None, "Automatic") else None
    scheduler = scheduler or options.get("scheduler")
    sigma_min, sigma_max = inner_model.sigmas[0].item(), inner_model.sigmas[-1].item()
    if scheduler in (None, "uniform"):
        sigmas = inner_model.get_sigmas(steps)
    elif scheduler == "karras":
        sigmas = sampling.get_sigmas_karras(n=steps, sigma_min=sigma_min, sigma_max=sigma_max)
    elif scheduler == "exponential":
        sigmas = sampling.get_sigmas_exponential(n=steps, sigma_min=sigma_min, sigma_max=sigma_max)
    else:
        function = {"sgm_uniform": _sgm_uniform, "normal": _normal, "simple": _simple}[scheduler]
        sigmas = torch.FloatTensor(function(steps, inner_model))
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def run_a1111(
    name,
    model,
    prediction_type,
    steps,
    noise,
    noise_sampler,
    *,
    schedule_type=None,
    init=None,
    strength=1.0,
    eta=1.0,
):
    """A1111's run: (latents after each step, its sigmas). ``noise_sampler(sigmas)`` gives the noise
    sampler to hand k-diffusion (A1111 hands the SDE samplers a Brownian tree over the full schedule)."""
    sampling, _ = load()
    label, function, options = A1111_SAMPLERS[name]
    inner = wrapper(model, prediction_type)
    sigmas = a1111_sigmas(inner, name, steps, schedule_type)
    noise = torch.from_numpy(noise)
    if init is None:
        x, run_sigmas = noise * sigmas[0], sigmas
    else:
        t_enc = int(min(strength, 0.999) * steps)
        run_sigmas = sigmas[steps - t_enc - 1 :]
        x = torch.from_numpy(init) + noise * run_sigmas[0]
    trajectory = []

    def callback(state: dict) -> None:
        if state["i"] > 0:
            trajectory.append(state["x"].numpy().copy())

    kwargs = {}
    sampler = getattr(sampling, function)
    parameters = inspect.signature(sampler).parameters
    if "eta" in parameters:
        kwargs["eta"] = eta
    if "noise_sampler" in parameters:
        kwargs["noise_sampler"] = noise_sampler(sigmas)
    extra_args = {"cond": None}  # A1111 passes the conditioning through to apply_model
    result = sampler(inner, x, run_sigmas, extra_args=extra_args, callback=callback, disable=True, **kwargs)
    trajectory.append(result.numpy().copy())
    return trajectory, sigmas.numpy().astype(np.float64)


def a1111_ddim_timesteps(steps: int) -> torch.Tensor:
    """CompVisSampler.get_timesteps (no discarded next-to-last sigma): ascending."""
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


def _ddim(denoiser, x, timesteps, alphas_cumprod, eta, randn_like, callback):
    """sd_samplers_timesteps_impl.ddim: float32 alphas at the timesteps, float64 ones a level below."""
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    sigmas = eta * np.sqrt(
        (1 - alphas_prev.numpy()) / (1 - alphas.numpy()) * (1 - alphas.numpy() / alphas_prev.numpy())
    )
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = denoiser(x, timesteps[index].item() * s_in)
        a_t = alphas[index].item() * s_in
        a_prev = alphas_prev[index].item() * s_in
        sigma_t = sigmas[index].item() * s_in
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * s_in * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        noise = sigma_t * randn_like(x)  # drawn every step, eta 0 too
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
        callback(x.numpy().copy())
    return x


def run_a1111_ddim(model, prediction_type, steps, noise, randn_like, *, init=None, strength=1.0, eta=0.0):
    """The web UI's DDIM run (CompVisSampler.sample, or sample_img2img without img2img_fix_steps): the
    latents after each step. The denoiser is CompVisTimestepsDenoiser, or CompVisTimestepsVDenoiser's
    epsilon from v."""
    alphas_cumprod = model.alphas_cumprod

    def denoiser(x, t):
        output = model.apply_model(x, t)
        if prediction_type != "v_prediction":
            return output
        abar = alphas_cumprod[t.to(torch.int)][:, None, None, None]
        return abar.sqrt() * output + (1 - abar).sqrt() * x

    timesteps = a1111_ddim_timesteps(steps)
    x = torch.from_numpy(noise)
    if init is not None:
        t_enc = int(min(strength, 0.999) * steps)
        abar = alphas_cumprod[timesteps[t_enc]]
        x = torch.from_numpy(init) * torch.sqrt(abar) + x * torch.sqrt(1 - abar)
        timesteps = timesteps[:t_enc]
    trajectory = []
    _ddim(denoiser, x, timesteps, alphas_cumprod, eta, randn_like, trajectory.append)
    return trajectory
