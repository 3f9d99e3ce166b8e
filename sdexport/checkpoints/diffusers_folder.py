"""Diffusers folders: `unet/`, `vae/`, `text_encoder/` (config.json + weights) and `scheduler/`.

The configs come from the folder's JSON files (read by `diffusers_configs`) and the weights go through
the one key mapping of `diffusers_weights` into the original layout, where they are checked and built
like a single file.
"""

from pathlib import Path
from typing import Any

from torch import Tensor

from sdexport.checkpoints.diffusers_configs import (
    schedule_from_diffusers,
    text_encoder_config_from_diffusers,
    unet_config_from_diffusers,
    vae_config_from_diffusers,
)
from sdexport.checkpoints.diffusers_weights import diffusers_to_original
from sdexport.checkpoints.errors import CheckpointError
from sdexport.checkpoints.family import UNET_IN_CHANNELS, unsupported
from sdexport.checkpoints.json_files import read_json_object
from sdexport.checkpoints.tensor_files import read_sharded, read_tensor_file
from sdexport.checkpoints.weights import build_model, dtype_name, split_unused
from sdexport.models import StableDiffusion, StableDiffusionConfig

COMPONENTS = ("unet", "vae", "text_encoder")
# Preferred first: full precision over the fp16 variant (taken only when it is the one there), then
# safetensors over pickles; each in one file or sharded (an index naming its parts), as save_pretrained
# writes them.
_WEIGHT_FILES = tuple(
    name
    for variant in ("", ".fp16")
    for suffix in (".safetensors", ".bin")
    for stem in ("diffusion_pytorch_model", "model", "pytorch_model")
    for name in (f"{stem}{variant}{suffix}", f"{stem}{suffix}.index{variant}.json")
)
# The settings an LCM-distilled UNet (time_cond_proj_dim) is sampled at: its own sampler and steps, and
# LatentConsistencyModelPipeline's default guidance scale (that of LCM_Dreamshaper_v7), fed as its embedding.
LCM_UNET_DEFAULTS = {"sampler": "lcm", "steps": 4, "guidance_scale": 8.5}


def is_diffusers_folder(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() or (folder / "unet" / "config.json").is_file()


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object of one of the folder's configs, read bounded (a folder may be a stranger's)."""
    name = f"{path.parent.name}/{path.name}"
    if not path.exists():
        raise CheckpointError(f"{name} is missing")
    return read_json_object(path, name)


def _optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def detect_diffusers_family(folder: Path) -> None:
    """Raise unless the folder's configs describe a SD 1.x or 2.x pipeline."""
    pipeline = str(_optional_json(folder / "model_index.json").get("_class_name", ""))
    if "XL" in pipeline:
        raise unsupported(f"SDXL ({pipeline})")
    if (folder / "text_encoder_2").is_dir():
        raise unsupported("SDXL (a second text encoder, text_encoder_2/)")
    unet = _optional_json(folder / "unet" / "config.json")
    if unet.get("addition_embed_type") == "text_time":
        raise unsupported("SDXL (unet addition_embed_type text_time)")
    if unet.get("in_channels", 4) not in UNET_IN_CHANNELS:
        raise unsupported(f"a UNet with {unet['in_channels']} input channels (InstructPix2Pix takes 8)")


def _weights_file(folder: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"{folder.name}/ has no weights file (expected {_WEIGHT_FILES[0]} or {_WEIGHT_FILES[2]}, "
        "or their .bin, .fp16 or sharded .index.json forms)"
    )


def _read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file, or of all the parts that an index file names."""
    tensors = read_sharded(path) if path.suffix == ".json" else read_tensor_file(path)
    return {key: t for key, t in tensors.items() if isinstance(t, Tensor)}


def read_diffusers_config(folder: Path) -> tuple[StableDiffusionConfig, list[str]]:
    """The model config of a diffusers folder, and notes on what was assumed."""
    notes = []
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        schedule = schedule_from_diffusers(read_json(scheduler))
    else:
        schedule = {}
        notes.append("no scheduler/scheduler_config.json: SD 1.x training schedule assumed")
    unet = read_json(folder / "unet" / "config.json")
    unet_config = unet_config_from_diffusers(unet)
    config = StableDiffusionConfig(
        unet=unet_config,
        vae=vae_config_from_diffusers(read_json(folder / "vae" / "config.json")),
        text_encoder=text_encoder_config_from_diffusers(read_json(folder / "text_encoder" / "config.json")),
        sample_size=int(unet.get("sample_size", StableDiffusionConfig.sample_size)),
        generation_defaults=dict(LCM_UNET_DEFAULTS) if unet_config.time_cond_proj_dim else {},
        **schedule,
    )
    return config, notes


def load_diffusers(folder: Path) -> tuple[StableDiffusion, str, list[str]]:
    """Read, check and build a diffusers folder: (model, weights dtype, notes)."""
    if (folder / "unet" / "model.onnx").is_file():
        raise CheckpointError("is an exported ONNX folder; sdexport reads PyTorch checkpoints")
    if not is_diffusers_folder(folder):
        raise CheckpointError(
            "is a folder but not a diffusers model (no model_index.json or unet/config.json); "
            "give a .ckpt/.safetensors file or a diffusers folder"
        )
    detect_diffusers_family(folder)
    config, notes = read_diffusers_config(folder)
    state: dict[str, Tensor] = {}
    for component in COMPONENTS:
        path = _weights_file(folder / component)
        tensors = _read_weights(path)
        converted, unmapped = diffusers_to_original(component, tensors, config)
        if unmapped:
            raise CheckpointError(
                f"{component}/{path.name}: {len(unmapped)} unexpected tensors, not in SD 1.x/2.x "
                f"({', '.join(unmapped[:3])})"
            )
        state.update(converted)
        if path.name.split(".")[-2] == "fp16":
            notes.append(f"{component}: only the fp16 variant {path.name} found")
    # Drops the text encoder's position ids, which older transformers saved.
    tensors, _ = split_unused(state)
    model = build_model(tensors, config, f"{folder.name}/*/config.json")
    return model, dtype_name(tensors.values()), notes
