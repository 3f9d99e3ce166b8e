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
    """The UNet's text contexts [1, 77 k, width] (sdrun.text_conditioning) for the prompt, and for the
    negative prompt unless unused.

    With prompt editing, a schedule replaces each context: (last model call, context) pairs in order, each
    used up to and including its call (A1111's end_at_step, counted in model calls from 0, as its
    CFGDenoiser counts them). `padding`, the empty prompt's context, asks for A1111's "Pad conds": the
    shorter context is padded with it to the other's length and both share one UNet batch; without it,
    contexts of different lengths run as two UNet passes."""

    conditional: np.ndarray
    unconditional: np.ndarray | None
    conditional_schedule: tuple[tuple[int, np.ndarray], ...] = ()
    unconditional_schedule: tuple[tuple[int, np.ndarray], ...] = ()
    padding: np.ndarray | None = None

    def at(self, call: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The conditional and unconditional contexts for model call `call` (from 0)."""
        cond = _scheduled(self.conditional_schedule, call, self.conditional)
        uncond = self.unconditional
        if uncond is not None:
            uncond = _scheduled(self.unconditional_schedule, call, uncond)
        if self.padding is None or uncond is None:
            return cond, uncond
        return _padded(cond, uncond, self.padding), _padded(uncond, cond, self.padding)

    @property
    def contexts(self) -> list[np.ndarray]:
        """Every context the UNet may be given."""
        found = [self.conditional, *[context for _, context in self.conditional_schedule]]
        if self.unconditional is not None:
            found += [self.unconditional, *[context for _, context in self.unconditional_schedule]]
        return found


def _scheduled(schedule: tuple[tuple[int, np.ndarray], ...], call: int, fixed: np.ndarray) -> np.ndarray:
    # Past the schedule's end A1111 falls back to its first entry (reconstruct_cond_batch's index 0).
    if not schedule:
        return fixed
    return next((context for last, context in schedule if call <= last), schedule[0][1])


def _padded(context: np.ndarray, other: np.ndarray, padding: np.ndarray) -> np.ndarray:
    """`context` followed by as many copies of `padding` as it is chunks shorter than `other`."""
    missing = (other.shape[1] - context.shape[1]) // padding.shape[1]
    return np.concatenate([context, *[padding] * missing], axis=1) if missing > 0 else context


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
    passes one after the other instead of as one batch of two, as contexts of different lengths always run.
    An inpainting UNet's `conditioning` (mask and masked-image latents, [1, 5, h, w]) goes with every
    latent it sees. `before_pass()` runs before every UNet pass (sdrun.stopping.StopSignal.before_unet_pass).
    Each call of the model counts one call of the embeddings' editing schedule (a sampler that calls the
    model twice a step counts two)."""
    calls = 0

    def contexts() -> tuple[np.ndarray, np.ndarray | None]:
        nonlocal calls
        calls += 1
        return embeddings.at(calls - 1)

    def unet(x: np.ndarray, t: float, context: np.ndarray, guidance: np.ndarray | None = None) -> np.ndarray:
        if before_pass is not None:
            before_pass()
        extra = None if conditioning is None else np.repeat(conditioning, len(x), axis=0)
        return predict(x, t, context, guidance, extra)

    if guidance_embedding_dim is not None:
        guidance = guidance_scale_embedding(guidance_scale, 1, guidance_embedding_dim)

        def embedded(x: np.ndarray, t: float) -> np.ndarray:
            batch = len(x)
            cond, _ = contexts()
            return unet(x, t, np.repeat(cond, batch, axis=0), np.repeat(guidance, batch, axis=0))

        return embedded

    def model(x: np.ndarray, t: float) -> np.ndarray:
        cond, uncond = contexts()
        if uncond is None:
            return unet(x, t, np.repeat(cond, len(x), axis=0))
        if sequential or cond.shape[1] != uncond.shape[1]:
            out_uncond = unet(x, t, np.repeat(uncond, len(x), axis=0))
            out_cond = unet(x, t, np.repeat(cond, len(x), axis=0))
        else:
            context = np.concatenate([np.repeat(uncond, len(x), axis=0), np.repeat(cond, len(x), axis=0)])
            out_uncond, out_cond = np.split(unet(np.concatenate([x, x]), t, context), 2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    return model
