"""The model the samplers call, model(x, t) -> the noise prediction with guidance applied: classifier-free
guidance over the UNet's conditional and unconditional predictions, or the guidance scale given to an LCM
UNet as its input."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sdrun.guidance_embedding import guidance_scale_embedding
from sdrun.samplers.prediction import Model

# predict(x, t, context, guidance embedding or None, inpainting conditioning or None): one UNet pass.
Predict = Callable[[np.ndarray, float, np.ndarray, np.ndarray | None, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class PromptEmbeddings:
    """The text encoder's last hidden states for the prompt, and for the negative prompt unless unused."""

    conditional: np.ndarray
    unconditional: np.ndarray | None


def unconditional_pass(guidance_scale: float, guidance_embedding_dim: int | None) -> bool:
    """Whether guidance runs an unconditional UNet pass beside the conditional one (two a step): not at
    scale 1, and not under an LCM UNet, whose guidance is an input."""
    return guidance_scale != 1.0 and guidance_embedding_dim is None


def guided_model(
    predict: Predict,
    embeddings: PromptEmbeddings,
    guidance_scale: float,
    *,
    guidance_embedding_dim: int | None,
    sequential: bool,
    conditioning: np.ndarray | None = None,
    before_pass: Callable[[], None] | None = None,
) -> Model:
    """model(x, t): classifier-free guidance, eps_u + s (eps_c - eps_u) (Ho & Salimans 2022, eq. 6), or the
    conditional prediction alone when there is no negative; an LCM UNet (`guidance_embedding_dim`) is
    given the guidance scale as its embedding instead, in one pass. `sequential` runs the two guidance
    passes one after the other instead of as one batch of two. An inpainting UNet's `conditioning` (mask
    and masked-image latents, [1, 5, h, w]) goes with every latent it sees. `before_pass()` runs before
    every UNet pass (sdrun.stopping.StopSignal.before_unet_pass)."""
    cond, uncond = embeddings.conditional, embeddings.unconditional

    def unet(x: np.ndarray, t: float, context: np.ndarray, guidance: np.ndarray | None = None) -> np.ndarray:
        if before_pass is not None:
            before_pass()
        extra = None if conditioning is None else np.repeat(conditioning, len(x), axis=0)
        return predict(x, t, context, guidance, extra)

    if guidance_embedding_dim is not None:
        guidance = guidance_scale_embedding(guidance_scale, 1, guidance_embedding_dim)

        def embedded(x: np.ndarray, t: float) -> np.ndarray:
            batch = len(x)
            return unet(x, t, np.repeat(cond, batch, axis=0), np.repeat(guidance, batch, axis=0))

        return embedded

    def model(x: np.ndarray, t: float) -> np.ndarray:
        if uncond is None:
            return unet(x, t, np.repeat(cond, len(x), axis=0))
        if sequential:
            out_uncond = unet(x, t, np.repeat(uncond, len(x), axis=0))
            out_cond = unet(x, t, np.repeat(cond, len(x), axis=0))
        else:
            context = np.concatenate([np.repeat(uncond, len(x), axis=0), np.repeat(cond, len(x), axis=0)])
            out_uncond, out_cond = np.split(unet(np.concatenate([x, x]), t, context), 2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    return model
