"""Original (CompVis) single-file checkpoints: `.ckpt` with or without Lightning's `state_dict` wrapper,
and `.safetensors`; pruned or full (with the EMA copy of the UNet under `model_ema.*`); CLIP weights with
or without `text_model.`."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sdexport.checkpoints.config_file import find_config, read_config_yaml, read_use_ema
from sdexport.checkpoints.errors import CheckpointError
from sdexport.checkpoints.family import INPAINTING_IN_CHANNELS, SD1, detect_family
from sdexport.checkpoints.tensor_files import SAFETENSORS_SUFFIX, read_tensor_file
from sdexport.checkpoints.weights import build_model, dtype_name, split_unused
from sdexport.models import StableDiffusion, StableDiffusionConfig, UNetConfig
from sdexport.models.stable_diffusion import COMPONENT_PREFIXES

_UNET = COMPONENT_PREFIXES["unet"]
_CLIP = COMPONENT_PREFIXES["text_encoder"]
# The CLIP layout without `text_model.` (CLIPTextTransformer saved itself), as NAI-lineage files hold it.
_CLIP_UNNESTED = tuple(_CLIP + module for module in ("embeddings.", "encoder.", "final_layer_norm."))


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


def _nest_clip_keys(state: dict[str, Any], notes: list[str]) -> None:
    """Move CLIP weights saved without `text_model.` under it, in place (AUTOMATIC1111 renames them alike)."""
    unnested = [key for key in state if key.startswith(_CLIP_UNNESTED)]
    for key in unnested:
        nested = _CLIP + "text_model." + key.removeprefix(_CLIP)
        if nested in state:
            raise CheckpointError(f"holds {key} both with and without text_model.; keep one of the two")
        state[nested] = state.pop(key)
    if unnested:
        notes.append("CLIP weights without text_model. (the NAI-lineage layout) read as with it")


def _select_unet_weights(
    state: dict[str, Any], ema: bool | None, config_ema: bool | None, notes: list[str]
) -> str:
    """Put the chosen UNet weights under `model.diffusion_model.*` in place; return which set it was.

    ema: the user's choice. None follows the config file's `use_ema` (`config_ema`); when no config
    says, the non-EMA set, which AUTOMATIC1111, the CompVis scripts (v1-inference.yaml: use_ema False)
    and diffusers' single-file loader all sample with.
    """
    pairs = {key: _ema_key(key) for key in state if key.startswith(_UNET)}
    present = [key for key in pairs.values() if key in state]
    if not present:
        if ema:
            raise CheckpointError("has no EMA weights (model_ema.*); leave out --ema")
        return "only set"
    missing = [key for key in pairs.values() if key not in state]
    if ema is not None:
        wanted, reason = ema, "--ema" if ema else "--no-ema"
    elif config_ema is not None:
        wanted, reason = config_ema, f"the config's use_ema: {config_ema}"
    else:
        wanted, reason = False, "the default without a config's use_ema, as in AUTOMATIC1111 and diffusers"
    if ema and missing:
        raise CheckpointError(
            f"the EMA weights are incomplete ({len(missing)} of {len(pairs)} missing, e.g. {missing[0]}); "
            "use --no-ema"
        )
    if not wanted or missing:
        cause = f"{reason}, but the EMA set is incomplete" if wanted else reason
        hint = "; --ema for the EMA ones" if ema is None and not missing else ""
        notes.append(f"non-EMA UNet weights used ({cause}){hint}")
        return "non-ema"
    for key, ema_name in pairs.items():
        state[key] = state[ema_name]
    hint = "; --no-ema for the non-EMA ones" if ema is None else ""
    notes.append(f"EMA UNet weights used ({reason}){hint}")
    return "ema"


def _default_config(
    family: str, tensors: dict[str, torch.Tensor], prediction: str | None, notes: list[str]
) -> tuple[StableDiffusionConfig, str]:
    """The config of a file without a config file, with the UNet input channels its weights show (9: an
    inpainting model, as sd-v1-5-inpainting, which ships without one). SD 2.x's v-prediction and epsilon
    models have the same tensors: v-prediction at 768x768 (SD 2.0-v, 2.1) is assumed, as diffusers'
    single-file loader does, unless `prediction` says otherwise (epsilon: the 512x512 2.x-base models);
    SD 2.x inpainting (512-inpainting-ema) is epsilon at 512x512, as diffusers takes it too."""
    conv_in = tensors.get(_UNET + "input_blocks.0.0.weight")
    # 4 or 9 when it is a convolution's weight (detect_family); build_model names any other shape.
    in_channels = conv_in.shape[1] if conv_in is not None and conv_in.ndim == 4 else UNetConfig.in_channels
    inpainting = in_channels == INPAINTING_IN_CHANNELS
    if family == SD1:
        config, source = StableDiffusionConfig(), "SD 1.x defaults"
    else:
        config = StableDiffusionConfig.sd2(prediction or ("epsilon" if inpainting else "v_prediction"))
        if prediction is None and not inpainting:
            notes.append(
                "SD 2.x without a config file: v-prediction at 768x768 assumed (SD 2.0-v/2.1); "
                "--prediction epsilon for the 512x512 2.x-base models"
            )
        source = f"SD 2.x defaults ({config.prediction_type})"
    config.unet.in_channels = in_channels
    return config, source


def load_original(
    path: Path, config_path: Path | None, ema: bool | None, prediction: str | None = None
) -> OriginalCheckpoint:
    """Read, check and build an original single-file checkpoint (see `load_model`)."""
    notes: list[str] = []
    state = _unwrap(read_tensor_file(path), notes)
    _nest_clip_keys(state, notes)
    family = detect_family(state)
    config_file = find_config(path, config_path)
    config_ema = None if config_file is None else read_use_ema(config_file)
    weights = _select_unet_weights(state, ema, config_ema, notes)
    tensors, dropped = split_unused(state)
    if dropped:
        notes.append(
            f"ignored {len(dropped)} entries no network uses ({', '.join(sorted(dropped)[:3])}, ...)"
        )
    if config_file is None:
        config, config_source = _default_config(family, tensors, prediction, notes)
    else:
        config, config_source = read_config_yaml(config_file), str(config_file)
        notes.append(f"config from {config_file}")
    if prediction is not None:
        config.prediction_type = prediction
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
