"""Measure one system, in this process, on the weights that prepare.py made:

    python benchmarks/systems.py SYSTEM --work build/bench --size 512 --out result.json [--full]

SYSTEM is one of:
- sdrun            `sdrun` on sdrun-fp32/ (our build); `--folder` picks another (sdrun-int8, optimum)
- torch            our PyTorch modules in eager mode, loaded from the original file, numpy sampler
- diffusers        diffusers' StableDiffusionPipeline on diffusers/ (PyTorch, CPU)
- optimum          optimum's ORTStableDiffusionPipeline on optimum/ (what optimum-cli exported)

Every system measures the same stages (see sdrun.bench.bench_folder) with the same prompt, guidance
7.5, Euler sampling (one UNet evaluation per step) and batch 2 for the guided UNet step.

With `--provider cuda`, sdrun runs on onnxruntime's CUDA provider (give it --folder sdrun-fp16) and
diffusers in float16 on the GPU; the GPU's peak memory over the run (NVML, the device's used memory
above its level at the start) is added to the report.
"""

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from sdrun.bench import (
    BENCH_GUIDANCE,
    BENCH_NEGATIVE,
    BENCH_PROMPT,
    BENCH_SAMPLER,
    UNET_TIMESTEP,
    Report,
    bench_folder,
    sampler_seconds_per_step,
    timed,
    write_json,
)

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _torch_steps(
    report: Report, latent_shape: tuple[int, ...], repeats: int, encode, unet, decode, device: str = "cpu"  # noqa: ANN001
) -> None:
    """The shared stages of the PyTorch systems: text encoding, guided UNet step, VAE decode; on a GPU,
    each timed call waits for the GPU to finish."""
    import torch

    if device == "cuda":
        encode, unet, decode = (_synchronized(function) for function in (encode, unet, decode))
    with torch.inference_mode():
        with report.stage("text encoding (batch 2)") as stage:
            context = timed(stage, encode, repeats + 1)
        latents = torch.randn(latent_shape, generator=torch.Generator().manual_seed(0))
        latents = latents.to(device, context.dtype)

        def guided_step() -> torch.Tensor:
            out = unet(torch.cat([latents, latents]), torch.tensor(UNET_TIMESTEP), context)
            uncond, cond = out.chunk(2)
            return uncond + BENCH_GUIDANCE * (cond - uncond)

        with report.stage("UNet first call (batch 2)") as stage:
            timed(stage, guided_step)
        with report.stage("UNet step, guidance (batch 2)") as stage:
            timed(stage, guided_step, repeats)
        with report.stage("VAE decode (1 image)") as stage:
            timed(stage, lambda: decode(latents), repeats)


def bench_torch(work: Path, size: int, repeats: int, steps: int, full: bool) -> Report:
    """Our scratch modules, eager, fed by sdrun's tokenizer; the whole generation uses the numpy sampler."""
    import torch

    from sdexport.checkpoints import load_model
    from sdrun.schedule import NoiseSchedule
    from sdrun.tokenizer import CLIPTokenizer

    folder = work / "sdrun-fp32"
    report = Report("torch (ours, eager)", size)
    with report.stage("create sessions", note="load_model") as stage:
        model = timed(stage, lambda: load_model(work / "sd15-random.safetensors").model.eval())
    tokenizer = CLIPTokenizer.from_folder(folder / "tokenizer")
    schedule = NoiseSchedule.from_config(_json(folder / "scheduler" / "scheduler_config.json"))
    scale = model.config.vae.scaling_factor

    def encode() -> torch.Tensor:
        ids = torch.from_numpy(tokenizer.encode([BENCH_NEGATIVE, BENCH_PROMPT]))
        return model.text_encoder(ids)[0]

    shape = (1, model.config.unet.in_channels, size // 8, size // 8)
    _torch_steps(report, shape, repeats, encode, model.unet, lambda z: model.vae.decode(z / scale))
    with report.stage("sampler per step", note=BENCH_SAMPLER) as stage:
        for _ in range(repeats):
            stage.seconds.append(sampler_seconds_per_step(BENCH_SAMPLER, schedule, steps, shape))
    if full:
        from sdrun.samplers import sample

        def generate() -> torch.Tensor:
            with torch.inference_mode():
                context = encode()
                pair = context.shape[0]

                def guided(x: np.ndarray, t: float) -> np.ndarray:
                    x2 = torch.from_numpy(np.concatenate([x] * pair))
                    uncond, cond = model.unet(x2, torch.tensor(float(t)), context).chunk(2)
                    return (uncond + BENCH_GUIDANCE * (cond - uncond)).numpy()

                rng = np.random.default_rng(0)
                noise = rng.standard_normal(shape, dtype=np.float32)
                latents = sample(BENCH_SAMPLER, guided, schedule, steps, noise, rng)
                return model.vae.decode(torch.from_numpy(latents) / scale)

        with report.stage(f"generation, {steps} steps", note=BENCH_SAMPLER) as stage:
            timed(stage, generate)
    return report


def _synchronized(function: Callable[..., Any]) -> Callable[..., Any]:
    import torch

    def run(*args: Any) -> Any:
        result = function(*args)
        torch.cuda.synchronize()
        return result

    return run


def _diffusers_like(  # noqa: ANN001
    report: Report,
    pipe,
    size: int,
    repeats: int,
    steps: int,
    full: bool,
    device: str = "cpu",
    generations: int = 1,
) -> None:
    """Stages of a diffusers-API pipeline (diffusers' own, or optimum's on onnxruntime)."""
    import torch
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    latent_scale = pipe.vae.config.scaling_factor

    def encode() -> torch.Tensor:
        cond, uncond = pipe.encode_prompt(BENCH_PROMPT, device, 1, True, BENCH_NEGATIVE)
        return torch.cat([uncond, cond])

    def unet(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return pipe.unet(x, t, encoder_hidden_states=context).sample

    def decode(z: torch.Tensor) -> torch.Tensor:
        return pipe.vae.decode(z / latent_scale).sample

    factor = pipe.vae_scale_factor  # image pixels per latent pixel
    shape = (1, pipe.unet.config.in_channels, size // factor, size // factor)
    _torch_steps(report, shape, repeats, encode, unet, decode, device)
    with report.stage("sampler per step", note="diffusers' EulerDiscreteScheduler") as stage:
        for _ in range(repeats):
            stage.seconds.append(_scheduler_seconds_per_step(pipe.scheduler, steps, shape))
    if full:
        with report.stage(f"generation, {steps} steps", note=BENCH_SAMPLER) as stage:
            timed(
                stage,
                lambda: pipe(
                    BENCH_PROMPT,
                    negative_prompt=BENCH_NEGATIVE,
                    num_inference_steps=steps,
                    guidance_scale=BENCH_GUIDANCE,
                    height=size,
                    width=size,
                    generator=torch.Generator().manual_seed(0),
                ),
                generations,
            )


def _scheduler_seconds_per_step(scheduler, steps: int, shape: tuple[int, ...]) -> float:  # noqa: ANN001
    """A diffusers scheduler's own time per step (input scaling and update), the model's output given."""
    import torch

    generator = torch.Generator().manual_seed(0)
    latents, prediction = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    scheduler.set_timesteps(steps)
    started = time.perf_counter()
    for t in scheduler.timesteps:
        scheduler.scale_model_input(latents, t)
        latents = scheduler.step(prediction, t, latents).prev_sample
    return (time.perf_counter() - started) / steps


def bench_diffusers(
    work: Path, size: int, repeats: int, steps: int, full: bool, device: str = "cpu", generations: int = 1
) -> Report:
    """diffusers in float32 on the CPU, or in float16 on the GPU (its own fp16 path: SDPA attention)."""
    import torch
    from diffusers import StableDiffusionPipeline

    dtype = torch.float16 if device == "cuda" else torch.float32
    report = Report("diffusers (PyTorch)" + (" fp16, CUDA" if device == "cuda" else ""), size)

    def load() -> StableDiffusionPipeline:
        folder = work / "diffusers"
        pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
        return pipe.to(device)

    with report.stage("create sessions", note="from_pretrained") as stage:
        pipe = timed(stage, load)
    pipe.set_progress_bar_config(disable=True)
    _diffusers_like(report, pipe, size, repeats, steps, full, device, generations)
    if device == "cuda":
        report.info["torch_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return report


def bench_optimum(work: Path, size: int, repeats: int, steps: int, full: bool) -> Report:
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    report = Report("optimum (onnxruntime)", size)
    with report.stage("create sessions", note="from_pretrained") as stage:
        pipe = timed(
            stage,
            lambda: ORTStableDiffusionPipeline.from_pretrained(work / "optimum", local_files_only=True),
        )
    pipe.set_progress_bar_config(disable=True)
    _diffusers_like(report, pipe, size, repeats, steps, full)
    return report


class GpuPeak:
    """The GPU's used memory, sampled every few milliseconds, over its level when the block starts."""

    def __init__(self, interval: float = 0.005) -> None:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        self._used = lambda: pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used
        self._interval = interval
        self._stop = threading.Event()
        self._baseline = self._peak = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self._used())

    def __enter__(self) -> "GpuPeak":
        self._baseline = self._peak = self._used()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round((self._peak - self._baseline) / 2**20, 1)


def _json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("system", choices=["sdrun", "torch", "diffusers", "optimum"])
    parser.add_argument("--work", type=Path, default=Path("build/bench"))
    parser.add_argument(
        "--folder", help="sdrun: the model folder under --work [sdrun-fp32]", default="sdrun-fp32"
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--full", action="store_true", help="also a whole generation of --steps steps")
    parser.add_argument("--generations", type=int, default=1, help="sdrun, diffusers: times to time it")
    parser.add_argument("--low-memory", action="store_true", help="sdrun: the low-memory mode")
    parser.add_argument("--fast", action="store_true", help="sdrun: the fast mode (memory arena)")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu", help="sdrun and diffusers")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.update(OFFLINE)
    if args.provider == "cuda" and args.system in ("torch", "optimum"):
        parser.error(f"{args.system} is measured on the CPU only")
    started = time.perf_counter()
    with GpuPeak() if args.provider == "cuda" else nullcontext() as gpu:
        if args.system == "sdrun":
            report = bench_folder(
                args.work / args.folder,
                args.size,
                repeats=args.repeats,
                steps=args.steps,
                full=args.full,
                generations=args.generations,
                provider=args.provider,
                low_memory=args.low_memory,
                fast=args.fast,
                log=lambda line: print(line, file=sys.stderr, flush=True),
            )
            modes = {"low memory": args.low_memory, "fast": args.fast, "CUDA": args.provider == "cuda"}
            notes = [args.folder, *(mode for mode, chosen in modes.items() if chosen)]
            report.system = f"sdrun ({', '.join(notes)})"
        elif args.system == "diffusers":
            report = bench_diffusers(
                args.work, args.size, args.repeats, args.steps, args.full, args.provider, args.generations
            )
        else:
            bench = {"torch": bench_torch, "optimum": bench_optimum}[args.system]
            report = bench(args.work, args.size, args.repeats, args.steps, args.full)
    if gpu is not None:
        report.info["gpu_peak_mb"] = gpu.peak_mb
    report.info["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_json(report, args.out)
    print(report.format())


if __name__ == "__main__":
    main()
