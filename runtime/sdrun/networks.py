"""The four networks of a Stable Diffusion folder, each a Graph that finds its own inputs when it opens
and offers one typed call: the pipeline reads as the algorithm and never handles input names.

Inputs are found by rank, not by name (sdrun.graphs): exporters name them differently.
"""

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from sdrun.errors import SettingsError
from sdrun.graphs import Graph
from sdrun.guidance_embedding import guidance_input


@dataclass(frozen=True)
class LatentDistribution:
    """The VAE encoder's diagonal Gaussian over latents (Kingma & Welling 2014), before scaling."""

    mean: np.ndarray
    std: np.ndarray

    def sample(self, noise: np.ndarray) -> np.ndarray:
        return self.mean + self.std * noise


class TextEncoderGraph(Graph):
    """Token ids [batch, 77] -> the last hidden states [batch, 77, width]."""

    def __init__(self, component: str, session: ort.InferenceSession) -> None:
        super().__init__(component, session)
        self.input_ids = self.input_of_rank(2)
        self.check_inputs([self.input_ids])
        # optimum's graphs also return the pooled output, first; older exports have one unnamed output.
        self.hidden_output = "last_hidden_state" if "last_hidden_state" in self.output_names else None

    def encode(self, ids: np.ndarray) -> np.ndarray:
        return self.run({self.input_ids: ids}, self.hidden_output, shape=(*ids.shape, None))


class UNetGraph(Graph):
    """The noise (or v) prediction for latents at a timestep, given the text context; an LCM-distilled
    UNet also takes the guidance scale's embedding (sdrun.guidance_embedding)."""

    def __init__(
        self, component: str, session: ort.InferenceSession, guidance_embedding_dim: int | None
    ) -> None:
        super().__init__(component, session)
        self.sample = self.input_of_rank(4)
        self.timestep = self.input_of_rank(0, 1)
        self.context = self.input_of_rank(3)
        self.timestep_cond = guidance_input(self, guidance_embedding_dim)
        known = [self.sample, self.timestep, self.context, self.timestep_cond]
        self.check_inputs([node for node in known if node is not None])

    def check_context(self, length: int) -> None:
        """Refuse a text context of `length` tokens when the graph fixes another (a prompt past 75 tokens
        needs 77 per chunk of 75)."""
        fixed = self.context.shape[1]
        if isinstance(fixed, int) and fixed != length:
            raise SettingsError(
                f"this UNet graph takes a text context of {fixed} tokens only and the prompts need {length}: "
                "shorten them to 75 tokens each, or export the model again (sdexport's UNet takes any length)"
            )

    @property
    def batch_of_one(self) -> bool:
        """Exported with a fixed batch of one: the guidance pair must then run as two calls."""
        return self.sample.shape[0] == 1

    def predict(
        self,
        latents: np.ndarray,
        timestep: float,
        context: np.ndarray,
        guidance: np.ndarray | None = None,
        conditioning: np.ndarray | None = None,
    ) -> np.ndarray:
        """One call; `context` and `guidance` (an LCM UNet's embedding) have one row per latent, and so has
        an inpainting UNet's `conditioning` (the mask and masked-image latents), which follows the
        latents' channels in the sample."""
        node = self.timestep
        batch = latents.shape[0]
        # A timestep of rank 1 has the batch's length, or the fixed length the graph declares.
        shape = () if node.rank == 0 else (node.shape[0] if isinstance(node.shape[0], int) else batch,)
        sample = latents if conditioning is None else np.concatenate([latents, conditioning], axis=1)
        feeds = {self.sample: sample, self.timestep: np.full(shape, timestep), self.context: context}
        if guidance is not None and self.timestep_cond is not None:
            feeds[self.timestep_cond] = guidance
        return self.run(feeds, shape=latents.shape)


class VaeEncoderGraph(Graph):
    """Pixels in [-1, 1], [1, 3, H, W] -> the latent distribution at 1/`vae_factor` of the size. TAESD's
    encoder (`tiny`) gives one latent: a distribution of zero spread."""

    def __init__(
        self, component: str, session: ort.InferenceSession, latent_channels: int, vae_factor: int, tiny: bool
    ) -> None:
        super().__init__(component, session)
        self.pixels = self.input_of_rank(4)
        self.latent_channels, self.vae_factor, self.tiny = latent_channels, vae_factor, tiny

    def encode(self, pixels: np.ndarray) -> LatentDistribution:
        latent_side = pixels.shape[2] // self.vae_factor, pixels.shape[3] // self.vae_factor
        channels = self.latent_channels if self.tiny else 2 * self.latent_channels
        parameters = self.run({self.pixels: pixels}, shape=(1, channels, *latent_side))
        if self.tiny:
            return LatentDistribution(parameters, np.zeros_like(parameters))
        mean, logvar = np.split(parameters, 2, axis=1)
        # The clamp of diffusers' DiagonalGaussianDistribution keeps exp() finite.
        return LatentDistribution(mean, np.exp(0.5 * np.clip(logvar, -30.0, 20.0)))


class VaeDecoderGraph(Graph):
    """Unscaled latents [1, C, h, w] -> pixels in [-1, 1], [1, 3, h * vae_factor, w * vae_factor]."""

    def __init__(self, component: str, session: ort.InferenceSession, vae_factor: int) -> None:
        super().__init__(component, session)
        self.latent_sample = self.input_of_rank(4)
        self.vae_factor = vae_factor

    def decode(self, latents: np.ndarray) -> np.ndarray:
        shape = (1, 3, latents.shape[2] * self.vae_factor, latents.shape[3] * self.vae_factor)
        return self.run({self.latent_sample: latents}, shape=shape)
