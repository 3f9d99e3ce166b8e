"""Records AUTOMATIC1111's UniPC runs into a1111_unipc.npz, for tests/runtime/test_a1111_unipc.py.

Run outside the project (it imports nothing of it) with torch and numpy, on a copy of the web UI's
modules/models/diffusion/uni_pc/uni_pc.py kept out of the repository:
    python tests/runtime/data/make_a1111_unipc.py /tmp/unipc_ref COMMIT
It drives the copy as modules/sd_samplers_timesteps_impl.unipc does with the web UI's default options
(UniPCCFG's model input time, predict_x0, variant bh1, time_uniform, multistep, order 3, lower order
final), on CompVisSampler.get_timesteps' count of steps, SD 1.x's alphas_cumprod in float32 (as ldm
registers them) and sampler_parity.fake_model (restated below) as the eps model, and at 8 steps as a v model
too (vsteps8_*) through CompVisTimestepsVDenoiser's epsilon from v.
"""

import datetime
import json
import sys

import numpy as np
import torch

sys.path.insert(0, sys.argv[1])
import uni_pc  # noqa: E402  (the copy, found on the path given)

SHAPE = (1, 4, 8, 8)
STEPS = (3, 7, 8, 20)
NOISE_SEED = 53


def fake_model(x: np.ndarray, t: float) -> np.ndarray:
    """tests/runtime/sampler_parity.fake_model."""
    x = np.asarray(x, dtype=np.float32)
    mix = 0.6 * x + 0.2 * np.roll(x, 1, axis=-1) - 0.1 * np.roll(x, 1, axis=1)
    return (np.tanh(mix) * (0.5 + t / 2000.0) + 0.05 * np.sin(t / 37.0 + x)).astype(np.float32)


def alphas_cumprod() -> torch.Tensor:
    """SD 1.x's scaled-linear schedule, 0.00085 to 0.012 over 1000 timesteps."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)


def run(steps: int, noise: np.ndarray, v_prediction: bool = False) -> dict[str, np.ndarray]:
    calls, trajectory = [], []
    abar = alphas_cumprod()
    timesteps = torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

    class Sampler(uni_pc.UniPC):  # sd_samplers_timesteps_impl.UniPCCFG without the CFG denoiser
        def model(self, x, t):
            t_input = (t - 1.0 / self.noise_schedule.total_N) * 1000.0
            calls.append((x.numpy().copy(), float(t_input.reshape(-1)[0])))
            output = torch.from_numpy(fake_model(x.numpy(), float(t_input.reshape(-1)[0])))
            if not v_prediction:
                return output
            # sd_samplers_timesteps.CompVisTimestepsVDenoiser.predict_eps_from_z_and_v
            a = abar[t_input.to(torch.int)][:, None, None, None]
            return a.sqrt() * output + (1 - a).sqrt() * x

    ns = uni_pc.NoiseScheduleVP("discrete", alphas_cumprod=abar)
    sampler = Sampler(None, ns, predict_x0=True, thresholding=False, variant="bh1")
    sampler.after_update = lambda x, model_x: trajectory.append(x.numpy().copy())
    result = sampler.sample(
        torch.from_numpy(noise),
        steps=len(timesteps),
        t_start=None,
        skip_type="time_uniform",
        method="multistep",
        order=3,
        lower_order_final=True,
    )
    assert np.array_equal(result.numpy(), trajectory[-1])
    key = f"{'v' if v_prediction else ''}steps{steps}"
    return {
        f"{key}_latents": np.stack(trajectory),
        f"{key}_call_inputs": np.stack([x for x, _ in calls]),
        f"{key}_call_timesteps": np.array([t for _, t in calls]),
    }


def main() -> None:
    noise = np.random.default_rng(NOISE_SEED).standard_normal(SHAPE, dtype=np.float32)
    arrays = {"noise": noise}
    for steps in STEPS:
        arrays.update(run(steps, noise))
    arrays.update(run(8, noise, v_prediction=True))
    source = {
        "repository": "https://github.com/AUTOMATIC1111/stable-diffusion-webui",
        "path": "modules/models/diffusion/uni_pc/uni_pc.py",
        "commit": sys.argv[2],
        "driver": "modules/sd_samplers_timesteps_impl.py unipc, modules/sd_samplers_timesteps.py",
        "computed": datetime.date.today().isoformat(),
        "how": __doc__,
        "torch": torch.__version__,
    }
    np.savez_compressed(
        "tests/runtime/data/a1111_unipc.npz", source=np.array(json.dumps(source)), **arrays
    )


main()
