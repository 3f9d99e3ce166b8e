"""A whole 512x512 SD 1.5 picture: the 20-step default against the few-step path (issue 11).

    python benchmarks/few_step.py [--work build/bench] [--size 512] [--repeats 2] [--only NAME ...]
        [--openvino-python .venv/openvino/bin/python] [--out build/bench/few_step.json]

Needs benchmarks/prepare.py's random SD 1.5 weights (`prepare.py --weights-only`). Makes, when absent:
- <work>/lcm-lora-random.safetensors  a LoRA with the shape of the published LCM-LoRA for SD 1.5 (peft
  layout, rank 64, on every layer it touches), random, its up matrices scaled down so that the merged
  weights stay close to the base ones (random weights draw noise either way: only the time counts here)
- <work>/taesd-random/                diffusers' AutoencoderTiny with its own random initialisation
- <work>/sdrun-fp32/, sdrun-lcm/ (the LoRA and the tiny decoder baked in, defaults lcm / 4 steps /
  guidance 1 / tiny), sdrun-lcm-int8/, and for the OpenVINO rows sdrun-fp32-openvino/ and
  sdrun-lcm-openvino/ (`--target openvino`)

Then each configuration runs in a fresh process (benchmarks/child.py) that loads the pipeline, makes
one picture to warm up (untimed), then `--repeats` pictures, each timed whole: text encoding, every
UNet pass, decoding, PNG-ready image. The result is the best and the median of those, and the child's
peak resident memory. The decoders alone are timed the same way, at 512 and 1024.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from child import run_child

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photograph of an astronaut riding a horse"
LORA_FILE = "lcm-lora-random.safetensors"
TINY_VAE = "taesd-random"
LCM_DEFAULTS = ["--default-sampler", "lcm", "--default-steps", "4", "--default-guidance", "1"]
# The layers the published LCM-LoRA for SD 1.5 adapts (its adapter config's target_modules).
LCM_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)  # fmt: skip
LCM_RANK = 64


def builds(work: Path) -> dict[str, list[str]]:
    """Folder name -> `sdexport build` options after the checkpoint."""
    lcm = ["--lora", str(work / LORA_FILE), "--tiny-vae", str(work / TINY_VAE), *LCM_DEFAULTS]
    return {
        "sdrun-fp32": [],
        "sdrun-lcm": lcm,
        "sdrun-lcm-int8": [*lcm, "--quantize", "int8"],
        "sdrun-fp32-openvino": ["--target", "openvino"],
        "sdrun-lcm-openvino": [*lcm, "--target", "openvino"],
    }


# name -> (folder, provider, generation settings); OpenVINO rows run in --openvino-python's environment.
PICTURES: dict[str, tuple[str, str, dict]] = {
    "default: euler_a, 20 steps, guidance 7.5, full VAE": (
        "sdrun-fp32", "cpu", {"sampler": "euler_a", "steps": 20, "guidance_scale": 7.5, "vae": "full"}
    ),
    "LCM-LoRA: lcm, 4 steps, guidance 1, full VAE": (
        "sdrun-lcm", "cpu", {"steps": 4, "vae": "full"}
    ),
    "LCM-LoRA: lcm, 4 steps, guidance 1, tiny VAE": ("sdrun-lcm", "cpu", {"steps": 4, "vae": "tiny"}),
    "LCM-LoRA: lcm, 2 steps, guidance 1, tiny VAE": ("sdrun-lcm", "cpu", {"steps": 2, "vae": "tiny"}),
    "LCM-LoRA: lcm, 1 step, guidance 1, tiny VAE": ("sdrun-lcm", "cpu", {"steps": 1, "vae": "tiny"}),
    "LCM-LoRA int8: lcm, 4 steps, guidance 1, tiny VAE": (
        "sdrun-lcm-int8", "cpu", {"steps": 4, "vae": "tiny"}
    ),
    "LCM-LoRA int8: lcm, 2 steps, guidance 1, tiny VAE": (
        "sdrun-lcm-int8", "cpu", {"steps": 2, "vae": "tiny"}
    ),
    "OpenVINO bf16, default: euler_a, 20 steps, guidance 7.5, full VAE": (
        "sdrun-fp32-openvino", "openvino",
        {"sampler": "euler_a", "steps": 20, "guidance_scale": 7.5, "vae": "full"},
    ),
    "OpenVINO bf16, LCM-LoRA: lcm, 4 steps, guidance 1, tiny VAE": (
        "sdrun-lcm-openvino", "openvino", {"steps": 4, "vae": "tiny"}
    ),
    "OpenVINO bf16, LCM-LoRA: lcm, 2 steps, guidance 1, tiny VAE": (
        "sdrun-lcm-openvino", "openvino", {"steps": 2, "vae": "tiny"}
    ),
}  # fmt: skip
DECODERS = {"tiny": "sdrun-lcm", "full": "sdrun-lcm"}


def random_lcm_lora(diffusers_dir: Path, path: Path) -> None:
    """A peft-layout LoRA on every layer the LCM-LoRA for SD 1.5 adapts, with random factors."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    config = UNet2DConditionModel.load_config(diffusers_dir / "unet")
    with torch.device("meta"):  # only the layer names and shapes are needed
        unet = UNet2DConditionModel.from_config(config)
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, module in unet.named_modules():
        if not name.endswith(LCM_TARGETS) or not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        if isinstance(module, torch.nn.Linear):
            down_shape, up_shape = (LCM_RANK, module.in_features), (module.out_features, LCM_RANK)
        else:
            kernel = module.kernel_size
            down_shape = (LCM_RANK, module.in_channels, *kernel)
            up_shape = (module.out_channels, LCM_RANK, 1, 1)
        tensors[f"unet.{name}.lora_A.weight"] = torch.randn(down_shape, generator=generator) / 8
        tensors[f"unet.{name}.lora_B.weight"] = torch.randn(up_shape, generator=generator) * 1e-3
    save_file(tensors, str(path))


def random_tiny_vae(folder: Path) -> None:
    from diffusers import AutoencoderTiny

    AutoencoderTiny().save_pretrained(folder)


def prepare(work: Path, wanted: set[str], results: dict) -> None:
    checkpoint = work / "sd15-random.safetensors"
    if not checkpoint.is_file():
        sys.exit(f"{checkpoint} is missing: run benchmarks/prepare.py --work {work} --weights-only first")
    if not (work / LORA_FILE).is_file():
        random_lcm_lora(work / "diffusers", work / LORA_FILE)
    if not (work / TINY_VAE).is_dir():
        random_tiny_vae(work / TINY_VAE)
    command = [sys.executable, "-m", "sdexport", "build", str(checkpoint)]
    for name, options in builds(work).items():
        if name in wanted and not (work / name).is_dir():
            run = run_child([*command, "-o", str(work / name), *options])
            if run.returncode != 0:
                sys.exit(f"building {name} failed:\n{run.output[-4000:]}")
            results["builds"][name] = {"seconds": run.seconds, "peak_mb": run.peak_mb}
            print(f"built {name}: {run.seconds} s, peak {run.peak_mb:.0f} MiB", flush=True)


def child_pictures(folder: str, provider: str, settings: dict, size: int, repeats: int) -> dict:
    """In the child: load, one picture to warm up, then `repeats` timed pictures."""
    from sdrun import Pipeline

    vae = settings.pop("vae")
    started = time.perf_counter()
    pipeline = Pipeline.load(folder, provider, vae=vae)
    load_seconds = time.perf_counter() - started
    seconds = []
    for seed in range(repeats + 1):
        started = time.perf_counter()
        pipeline.generate(PROMPT, seed=seed, width=size, height=size, **settings)
        seconds.append(time.perf_counter() - started)
    return {"load": load_seconds, "warm-up": seconds[0], "seconds": seconds[1:]}


def child_decoder(folder: str, vae: str, size: int, repeats: int) -> dict:
    import numpy as np

    from sdrun import Pipeline

    pipeline = Pipeline.load(folder, "cpu", vae=vae)
    latents = np.random.default_rng(0).standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
    seconds = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        pipeline.decode(latents)
        seconds.append(time.perf_counter() - started)
    return {"warm-up": seconds[0], "seconds": seconds[1:]}


def _in_child(python: str, job: dict, out: Path) -> dict:
    run = run_child([python, __file__, "--child", json.dumps(job), "--out", str(out)])
    if run.returncode != 0:
        return {"error": run.output[-2000:]}
    measured = json.loads(out.read_text())
    measured["peak_mb"] = run.peak_mb
    if measured["seconds"]:
        measured["best"] = min(measured["seconds"])
        measured["median"] = statistics.median(measured["seconds"])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="+", help="these picture rows (by a part of their name) alone")
    parser.add_argument("--openvino-python", default=str(ROOT / ".venv" / "openvino" / "bin" / "python"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        measured = child_decoder(**job) if "vae" in job else child_pictures(**job)
        args.out.write_text(json.dumps(measured))
        return

    work: Path = args.work.resolve()
    out = args.out or work / "few_step.json"
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "size": args.size}
    results |= {"builds": {}, "pictures": {}, "decoders": {}}
    rows = {
        name: row
        for name, row in PICTURES.items()
        if not args.only or any(part in name for part in args.only)
    }
    openvino = Path(args.openvino_python).is_file()
    prepare(work, {folder for folder, provider, _ in rows.values() if provider == "cpu" or openvino}, results)
    if args.prepare_only:
        return
    scratch = work / "few_step_child.json"
    env_python = {"cpu": sys.executable, "openvino": args.openvino_python}
    for name, (folder, provider, settings) in rows.items():
        if provider == "openvino" and not openvino:
            continue
        job = {"folder": str(work / folder), "provider": provider, "settings": settings}
        job |= {"size": args.size, "repeats": args.repeats}
        measured = _in_child(env_python[provider], job, scratch)
        results["pictures"][name] = measured
        print(f"{name}: {json.dumps(measured)}", flush=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.only:
        for vae, folder in DECODERS.items():
            for size in (512, 1024):
                job = {"folder": str(work / folder), "vae": vae, "size": size, "repeats": args.repeats}
                measured = _in_child(sys.executable, job, scratch)
                results["decoders"][f"{vae} decoder, {size}x{size}"] = measured
                print(f"{vae} decoder {size}: {json.dumps(measured)}", flush=True)
                out.write_text(json.dumps(results, indent=2) + "\n")
    os.remove(scratch)


if __name__ == "__main__":
    main()
