"""Stable Diffusion 1.x and 2.x: the three networks under the original checkpoint's top-level names."""

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from sdexport.models.clip import CLIPTextConfig, CLIPTextModel
from sdexport.models.open_clip import OpenCLIPTextConfig, OpenCLIPTextModel
from sdexport.models.unet import UNetConfig, UNetModel
from sdexport.models.vae import AutoencoderKL, VAEConfig
from sdrun.schedule import SD1_SCHEDULE

# Where each network's weights sit in an original checkpoint: the attribute paths of StableDiffusion
# below, so every loader (single files, diffusers folders, LoRAs, family detection) reads them from here.
COMPONENT_PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}
# SD 2.x's text encoder (OpenCLIP) in place of COMPONENT_PREFIXES["text_encoder"].
OPEN_CLIP_PREFIX = "cond_stage_model.model."


@dataclass
class StableDiffusionConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    # CLIP ViT-L (SD 1.x) or OpenCLIP ViT-H (SD 2.x).
    text_encoder: CLIPTextConfig | OpenCLIPTextConfig = field(default_factory=CLIPTextConfig)
    # The training schedule: SD 1.x's, as sdrun assumes it where a folder's scheduler config is silent.
    beta_start: float = SD1_SCHEDULE["beta_start"]
    beta_end: float = SD1_SCHEDULE["beta_end"]
    beta_schedule: str = SD1_SCHEDULE["beta_schedule"]
    num_train_timesteps: int = SD1_SCHEDULE["num_train_timesteps"]
    prediction_type: str = SD1_SCHEDULE["prediction_type"]
    # The latent side the model was trained at (the original `model.params.image_size`, diffusers'
    # `sample_size`): runtimes take their default image size from it.
    sample_size: int = 64
    # The settings the model is meant to be sampled at (keys of sdrun.defaults.GenerationDefaults);
    # written into the exported folder, where sdrun takes them as its defaults.
    generation_defaults: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def tiny(cls) -> "StableDiffusionConfig":
        """A few-MB model with every structural feature of SD 1.x, for tests (real CLIP vocabulary)."""
        return cls(
            unet=UNetConfig(
                model_channels=32,
                channel_mult=(1, 2, 2),
                attention_resolutions=(1, 2),
                num_heads=2,
                context_dim=32,
                norm_groups=8,
            ),
            vae=VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=8),
            text_encoder=CLIPTextConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
            ),
            sample_size=8,
        )

    @classmethod
    def sd2(cls, prediction_type: str = "v_prediction") -> "StableDiffusionConfig":
        """SD 2.0/2.1: the 768x768 v-prediction models, or the 512x512 epsilon ones (2.x-base)."""
        return cls(
            unet=UNetConfig(context_dim=1024, num_head_channels=64, use_linear_in_transformer=True),
            text_encoder=OpenCLIPTextConfig(),
            prediction_type=prediction_type,
            sample_size=96 if prediction_type == "v_prediction" else 64,
        )

    @classmethod
    def tiny_sd2(cls) -> "StableDiffusionConfig":
        """`tiny()` with SD 2.x's structure: OpenCLIP text encoder, linear projections, fixed head width."""
        tiny = cls.tiny()
        # num_heads back at its default: unused beside num_head_channels, as config files leave it.
        tiny.unet = replace(tiny.unet, num_heads=UNetConfig.num_heads, num_head_channels=8)
        tiny.unet.use_linear_in_transformer = True
        tiny.text_encoder = OpenCLIPTextConfig(width=32, heads=2, layers=3)
        tiny.prediction_type = "v_prediction"
        return tiny


class DiffusionWrapper(nn.Module):
    """Holds the UNet as `diffusion_model`, giving the original `model.diffusion_model.*` keys."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.diffusion_model = UNetModel(config)


class FrozenCLIPEmbedder(nn.Module):
    """Holds the text encoder as `transformer`, giving the original `cond_stage_model.transformer.*` keys."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.transformer = CLIPTextModel(config)


class FrozenOpenCLIPEmbedder(nn.Module):
    """Holds the text encoder as `model`, giving the original `cond_stage_model.model.*` keys (SD 2.x)."""

    def __init__(self, config: OpenCLIPTextConfig):
        super().__init__()
        self.model = OpenCLIPTextModel(config)


class StableDiffusion(nn.Module):
    def __init__(self, config: StableDiffusionConfig):
        super().__init__()
        self.config = config
        self.model = DiffusionWrapper(config.unet)
        self.first_stage_model = AutoencoderKL(config.vae)
        self.cond_stage_model = (
            FrozenOpenCLIPEmbedder(config.text_encoder)
            if isinstance(config.text_encoder, OpenCLIPTextConfig)
            else FrozenCLIPEmbedder(config.text_encoder)
        )

    @property
    def unet(self) -> UNetModel:
        return self.model.diffusion_model

    @property
    def vae(self) -> AutoencoderKL:
        return self.first_stage_model

    @property
    def text_encoder(self) -> CLIPTextModel | OpenCLIPTextModel:
        if isinstance(self.cond_stage_model, FrozenOpenCLIPEmbedder):
            return self.cond_stage_model.model
        return self.cond_stage_model.transformer
