"""The guidance-scale input of LCM-distilled UNets (LCM_Dreamshaper_v7 and its kind).

Latent consistency distillation folds classifier-free guidance into the model (Luo et al. 2023, sec. 4.2):
the UNet takes the guidance scale w as an embedding, `timestep_cond` [batch, time_cond_proj_dim] (optimum's
name for it), and runs once a step with no unconditional batch. The embedding is sinusoidal in 1000 w (the
VDM embedding, Kingma et al. 2021) and the distilled models were trained on w - 1 (diffusers'
LatentConsistencyModelPipeline: the Imagen form of guidance, where 1 means none).
"""

import math

import numpy as np

from sdrun.errors import ModelFolderError
from sdrun.graphs import Graph, GraphInput

# The UNet input that carries it, as optimum's UNet OnnxConfig names it.
GUIDANCE_INPUT = "timestep_cond"


def guidance_scale_embedding(guidance_scale: float, batch: int, dim: int) -> np.ndarray:
    """[batch, dim] float32: sin then cos of 1000 (guidance_scale - 1) at `dim // 2` frequencies from 1 down
    to 1/10000 (zero-padded to an odd `dim`), as diffusers' get_guidance_scale_embedding. Computed in float64:
    the arguments reach the thousands, where diffusers' float32 arithmetic is itself off by up to one float32
    step of the argument (about 1e-3 at guidance 15), and no float32 order of operations in numpy would
    reproduce torch's last bits."""
    half = dim // 2
    frequencies = np.exp(np.arange(half) * -(math.log(10000.0) / (half - 1)))
    arguments = 1000.0 * (guidance_scale - 1) * frequencies
    row = np.concatenate([np.sin(arguments), np.cos(arguments), np.zeros(dim % 2)]).astype(np.float32)
    return np.repeat(row[None], batch, axis=0)


def guidance_input(graph: Graph, dim: int | None) -> GraphInput | None:
    """The UNet graph's guidance-embedding input, checked against the width its config.json gives
    (`time_cond_proj_dim`, None for a UNet without one): a folder whose config and graph disagree is
    refused rather than run with the guidance left out or made up."""
    found = next((node for node in graph.inputs if node.name == GUIDANCE_INPUT), None)
    width = found.shape[-1] if found is not None and found.rank == 2 else None
    if found is None and dim is None:
        return None
    if found is None or dim is None or width != dim:
        graph_says = f"[batch, {width}]" if found is not None else "no such input"
        raise ModelFolderError(
            f"unet/config.json has time_cond_proj_dim={dim} but the unet graph's {GUIDANCE_INPUT} is "
            f"{graph_says}; export the model folder again"
        )
    return found
