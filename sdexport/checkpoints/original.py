"""Original (CompVis) single-file checkpoints: `.ckpt` with or without Lightning's `state_dict` wrapper,
and `.safetensors`; pruned or full (with the EMA copy of the UNet under `model_ema.*`)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sdexport.checkpoints.config_file import find_config, read_config_yaml
from sdexport.checkpoints.diffusers_layout import COMPONENT_PREFIXES
from sdexport.checkpoints.errors import CheckpointError
from sdexport.checkpoints.family import detect_family
from sdexport.checkpoints.tensor_files import SAFETENSORS_SUFFIX, read_tensor_file
from sdexport.checkpoints.weights import build_model, dtype_name, split_unused
from sdexport.models import StableDiffusion, StableDiffusionConfig

_UNET = COMPONENT_PREFIXES["unet"]


@dataclass
class OriginalCheckpoint:
    model: StableDiffusion
    weights: str
    source_dtype: str
    notes: list[str]


def _ema_key(key: str) -> str:
    """LitEma's name for the EMA copy: model.diffusion_model.a.0.w -> model_ema.diffusion_modela0w."""
    return "model_ema." + key.removeprefix("model.").replace(".", "")


def _unwrap(top: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """The state dict inside a Lightning checkpoint (noting its training step), or the file itself."""
    state = top.get("state_dict")
    if not isinstance(state, dict):
        return top
    progress = [f"{key} {top[key]}" for key in ("global_step", "epoch") if isinstance(top.get(key), int)]
    notes.append("Lightning checkpoint" + (f" ({', '.join(progress)})" if progress else ""))
    return state


def _select_unet_weights(state: dict[str, Any], ema: bool | None, notes: list[str]) -> str:
    """Put the chosen UNet weights under `model.diffusion_model.*` in place; return which set it was."""
    pairs = {key: _ema_key(key) for key in state if key.startswith(_UNET)}
    present = [key for key in pairs.values() if key in state]
    if not present:
        if ema:
            raise CheckpointError("has no EMA weights (model_ema.*); leave out --ema")
        return "only set"
    missing = [key for key in pairs.values() if key not in state]
    if ema is False or (ema is None and missing):
        notes.append(
            "non-EMA UNet weights used" + (" (the EMA set is incomplete)" if missing else "; --ema for EMA")
        )
        return "non-ema"
    if missing:
        raise CheckpointError(
            f"the EMA weights are incomplete ({len(missing)} of {len(pairs)} missing, e.g. {missing[0]}); "
            "use --no-ema"
        )
    for key, ema_name in pairs.items():
        state[key] = state[ema_name]
    notes.append("EMA UNet weights used; --no-ema for the non-EMA ones")
    return "ema"


def load_original(path: Path, config_path: Path | None, ema: bool | None) -> OriginalCheckpoint:
    """Read, check and build an original single-file checkpoint (see `load_model`)."""
    notes: list[str] = []
    state = _unwrap(read_tensor_file(path), notes)
    detect_family(state)
    weights = _select_unet_weights(state, ema, notes)
    tensors, dropped = split_unused(state)
    if dropped:
        notes.append(
            f"ignored {len(dropped)} entries no network uses ({', '.join(sorted(dropped)[:3])}, ...)"
        )
    config_file = find_config(path, config_path)
    if config_file is None:
        config, config_source = StableDiffusionConfig(), "SD 1.x defaults"
    else:
        config, config_source = read_config_yaml(config_file), str(config_file)
        notes.append(f"config from {config_file}")
    model = build_model(tensors, config, config_source)
    return OriginalCheckpoint(model, weights, dtype_name(tensors.values()), notes)


def save_original(model: StableDiffusion, path: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write `model` as an original-layout `.safetensors` checkpoint with floating weights in `dtype`."""
    if path.suffix != SAFETENSORS_SUFFIX:
        raise CheckpointError(f"{path}: save_original writes {SAFETENSORS_SUFFIX} files")
    tensors = {
        key: (t.to(dtype) if t.is_floating_point() else t).detach().cpu().contiguous()
        for key, t in model.state_dict().items()
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
