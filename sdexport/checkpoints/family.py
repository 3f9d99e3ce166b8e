"""Which model a single-file checkpoint holds, told from its tensor names and shapes before anything is
built: SD 1.x and SD 2.x go on, every other family stops here with a one-line error."""

from collections import Counter
from collections.abc import Mapping
from typing import Any

from sdexport.checkpoints.errors import CheckpointError
from sdexport.models.stable_diffusion import COMPONENT_PREFIXES, OPEN_CLIP_PREFIX

SUPPORTED = (
    "supported: Stable Diffusion 1.x (CLIP ViT-L text encoder) and 2.x (OpenCLIP ViT-H), with a 4-channel "
    "or 9-channel (inpainting) UNet, as a .ckpt/.safetensors file or a diffusers folder"
)
_UNET = COMPONENT_PREFIXES["unet"]
SD1, SD2 = "SD 1.x", "SD 2.x"
# A UNet's input channels: the latents (4), or latents, mask and masked-image latents (9: inpainting).
INPAINTING_IN_CHANNELS = 9
UNET_IN_CHANNELS = (4, INPAINTING_IN_CHANNELS)


def unsupported(found: str) -> CheckpointError:
    return CheckpointError(f"unsupported model: {found}; {SUPPORTED}")


def detect_family(state: Mapping[str, Any]) -> str:
    """SD1 or SD2 for `state` (original keys) holding UNet, VAE and text encoder of either; else raise.

    SD 2.x is told by its OpenCLIP text encoder (`cond_stage_model.model.*`).
    """
    if any(key.startswith("conditioner.embedders.") for key in state):
        raise unsupported("SDXL (text encoders under conditioner.embedders.*)")
    if _UNET + "label_emb.0.0.weight" in state:
        raise unsupported("a UNet with label_emb (SDXL or class-conditioned)")
    family = SD2 if any(key.startswith(OPEN_CLIP_PREFIX) for key in state) else SD1
    proj_in = state.get(_UNET + "middle_block.1.proj_in.weight")
    if family == SD1 and proj_in is not None and getattr(proj_in, "ndim", 4) == 2:
        raise unsupported("a SD 2.x UNet (linear projections) without the OpenCLIP text encoder")
    conv_in = state.get(_UNET + "input_blocks.0.0.weight")
    if conv_in is not None and getattr(conv_in, "ndim", 0) == 4 and conv_in.shape[1] not in UNET_IN_CHANNELS:
        raise unsupported(f"a UNet with {conv_in.shape[1]} input channels (InstructPix2Pix takes 8)")
    prefixes = {**COMPONENT_PREFIXES, **({"text_encoder": OPEN_CLIP_PREFIX} if family == SD2 else {})}
    absent = [prefix + "*" for prefix in prefixes.values() if not any(k.startswith(prefix) for k in state)]
    if absent:
        raise unsupported(f"found {_summary(state)}, without {', '.join(absent)}")
    return family


def _summary(state: Mapping[str, Any]) -> str:
    """'model (686 tensors), first_stage_model (248 tensors)': what a file holds, by its first key part."""
    if not state:
        return "no tensors"
    groups = Counter(key.split(".")[0][:40] for key in state)
    listed = [f"{name} ({count})" for name, count in groups.most_common(4)]
    more = f" and {len(groups) - 4} more groups" if len(groups) > 4 else ""
    return "entries " + ", ".join(listed) + more
