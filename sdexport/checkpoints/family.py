"""Which model a single-file checkpoint holds, told from its tensor names and shapes before anything is
built: SD 1.x goes on, every other family stops here with a one-line error."""

from collections import Counter
from collections.abc import Mapping
from typing import Any

from sdexport.checkpoints.diffusers_layout import COMPONENT_PREFIXES
from sdexport.checkpoints.errors import CheckpointError

SUPPORTED = (
    "supported: Stable Diffusion 1.x (CLIP ViT-L text encoder, 4-channel UNet) as a .ckpt/.safetensors "
    "file or a diffusers folder"
)
_UNET = COMPONENT_PREFIXES["unet"]


def unsupported(found: str) -> CheckpointError:
    return CheckpointError(f"unsupported model: {found}; {SUPPORTED}")


def detect_family(state: Mapping[str, Any]) -> None:
    """Raise unless `state` (original keys) holds a SD 1.x model: UNet, VAE and CLIP text encoder."""
    if any(key.startswith("conditioner.embedders.") for key in state):
        raise unsupported("SDXL (text encoders under conditioner.embedders.*)")
    if _UNET + "label_emb.0.0.weight" in state:
        raise unsupported("a UNet with label_emb (SDXL or class-conditioned)")
    if any(key.startswith("cond_stage_model.model.") for key in state):
        raise unsupported("SD 2.x (OpenCLIP text encoder under cond_stage_model.model.*)")
    proj_in = state.get(_UNET + "middle_block.1.proj_in.weight")
    if proj_in is not None and getattr(proj_in, "ndim", 4) == 2:
        raise unsupported("SD 2.x (linear projections in the UNet's transformers)")
    conv_in = state.get(_UNET + "input_blocks.0.0.weight")
    if conv_in is not None and getattr(conv_in, "ndim", 0) == 4 and conv_in.shape[1] == 9:
        raise unsupported("an inpainting UNet (9 input channels)")
    absent = [
        prefix + "*" for prefix in COMPONENT_PREFIXES.values() if not any(k.startswith(prefix) for k in state)
    ]
    if absent:
        raise unsupported(f"found {_summary(state)}, without {', '.join(absent)}")


def _summary(state: Mapping[str, Any]) -> str:
    """'model (686 tensors), first_stage_model (248 tensors)': what a file holds, by its first key part."""
    if not state:
        return "no tensors"
    groups = Counter(key.split(".")[0][:40] for key in state)
    listed = [f"{name} ({count})" for name, count in groups.most_common(4)]
    more = f" and {len(groups) - 4} more groups" if len(groups) > 4 else ""
    return "entries " + ", ".join(listed) + more
