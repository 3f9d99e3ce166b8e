"""Make the benchmark's models: one set of random SD 1.5 weights in every form the compared systems read.

    python benchmarks/prepare.py [--work build/bench] [--config tiny]

- diffusers/        a diffusers StableDiffusionPipeline with random weights (seed 0), save_pretrained
- sd15-random.safetensors   the same weights as an original single file (sdexport's save_original)
- sdrun-fp32/, sdrun-int8/, sdrun-int8-compact/  `sdexport build` of that file (timed, peak memory
  measured), as it is and with --quantize int8 and int8-compact
- optimum/          `optimum-cli export onnx` of diffusers/ (timed, peak memory measured)
- sdrun-fp16/       `sdexport build --precision fp16`, for the CUDA provider: only when --only names it
Each is skipped when it exists; --only makes just the folders it names (and the weights they need).
Times and peaks go to <work>/prepare.json. Nothing touches the network.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from child import ChildRun, run_child

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
CHECKPOINT = "sd15-random.safetensors"
BUILDS = {
    "sdrun-fp32": [],
    "sdrun-int8": ["--quantize", "int8"],
    "sdrun-int8-compact": ["--quantize", "int8-compact"],
    "sdrun-fp16": ["--precision", "fp16"],
}


def random_diffusers_pipeline(folder: Path, tiny: bool) -> None:
    """SD 1.5's diffusers pipeline (or the tiny config's) with diffusers' own random initialisation."""
    import torch
    import transformers
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from sdexport.checkpoints.diffusers_configs import (
        scheduler_config_to_diffusers,
        text_encoder_config_to_diffusers,
        unet_config_to_diffusers,
        vae_config_to_diffusers,
    )
    from sdexport.export.tokenizer_files import write_tokenizer
    from sdexport.models import StableDiffusionConfig

    config = StableDiffusionConfig.tiny() if tiny else StableDiffusionConfig()
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(_config_only(unet_config_to_diffusers(config.unet)))
    vae = AutoencoderKL.from_config(_config_only(vae_config_to_diffusers(config.vae)))
    text_config = _config_only(text_encoder_config_to_diffusers(config.text_encoder))
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_config))
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        write_tokenizer(Path(tokenizer_dir))
        tokenizer = transformers.CLIPTokenizer.from_pretrained(tokenizer_dir)
    scheduler = PNDMScheduler.from_config(_config_only(scheduler_config_to_diffusers(config)))
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)


def _config_only(config: dict) -> dict:
    """A config without the bookkeeping keys (`_class_name`, `_diffusers_version`, ...)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


def original_checkpoint(diffusers_dir: Path, path: Path) -> None:
    import torch

    from sdexport.checkpoints import load_model, save_original, write_config_yaml

    loaded = load_model(diffusers_dir)
    save_original(loaded.model, path, torch.float32)
    write_config_yaml(loaded.model.config, path.with_suffix(".yaml"))


def _record(results: dict, name: str, run: ChildRun) -> None:
    if run.returncode != 0:
        sys.exit(f"{name} failed ({run.returncode}):\n{run.output[-4000:]}")
    results[name] = {"seconds": run.seconds, "peak_mb": run.peak_mb, "command": run.command}
    print(f"{name}: {run.seconds} s, peak {run.peak_mb:.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("build/bench"))
    parser.add_argument("--config", choices=["sd15", "tiny"], default="sd15")
    parser.add_argument("--weights-only", action="store_true", help="stop before the timed exports")
    parser.add_argument("--only", nargs="+", choices=[*BUILDS, "optimum"], help="these folders alone")
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "prepare.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    env = dict(os.environ, **OFFLINE)
    python = sys.executable

    diffusers_dir = work / "diffusers"
    if not diffusers_dir.is_dir():
        started = time.perf_counter()
        random_diffusers_pipeline(diffusers_dir, tiny=args.config == "tiny")
        print(f"diffusers folder: {time.perf_counter() - started:.1f} s", flush=True)
    checkpoint = work / CHECKPOINT
    if not checkpoint.is_file():
        original_checkpoint(diffusers_dir, checkpoint)
        print(f"checkpoint: {checkpoint}", flush=True)
    if args.weights_only:
        return

    wanted = args.only or [name for name in (*BUILDS, "optimum") if name != "sdrun-fp16"]
    sdexport = [python, "-m", "sdexport", "build", str(checkpoint)]
    for name, extra in BUILDS.items():
        if name in wanted and not (work / name).is_dir():
            _record(
                results, f"sdexport build {name}", run_child([*sdexport, "-o", str(work / name), *extra], env)
            )
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    if "optimum" in wanted and not (work / "optimum").is_dir():
        optimum = [
            python,
            "-m",
            "optimum.commands.optimum_cli",
            "export",
            "onnx",
            "--model",
            str(diffusers_dir),
        ]
        _record(
            results,
            "optimum-cli export",
            run_child([*optimum, "--task", "text-to-image", str(work / "optimum")], env),
        )
    results_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
