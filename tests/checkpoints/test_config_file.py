"""The model config file: the original v1-inference.yaml must read as SD 1.x; our files read back."""

from pathlib import Path

import pytest

from sdexport.checkpoints import CheckpointError, read_config_yaml, write_config_yaml
from sdexport.models import CLIPTextConfig, StableDiffusionConfig, UNetConfig, VAEConfig

# configs/stable-diffusion/v1-inference.yaml of CompVis/stable-diffusion, as published.
V1_INFERENCE_YAML = """\
model:
  base_learning_rate: 1.0e-04
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 64
    channels: 4
    cond_stage_trainable: false   # Note: different from the one we trained before
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: 0.18215
    use_ema: False

    scheduler_config: # 10000 warmup steps
      target: ldm.lr_scheduler.LambdaLinearScheduler
      params:
        warm_up_steps: [ 10000 ]
        cycle_lengths: [ 10000000000000 ] # incredibly large number to prevent corner cases
        f_start: [ 1.e-6 ]
        f_max: [ 1. ]
        f_min: [ 1. ]

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_heads: 8
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: 768
        use_checkpoint: True
        legacy: False

    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult:
          - 1
          - 2
          - 4
          - 4
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
"""


UNET_PARAMS = "model:\n  params:\n    unet_config:\n      params:\n        "


def yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_original_v1_inference_yaml_is_sd1(tmp_path: Path) -> None:
    config = read_config_yaml(yaml_file(tmp_path, V1_INFERENCE_YAML))
    assert config.unet == UNetConfig(
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=(4, 2, 1),
        num_res_blocks=2,
        channel_mult=(1, 2, 4, 4),
        num_heads=8,
        transformer_depth=1,
        context_dim=768,
        norm_groups=32,
    )
    assert config.vae == VAEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, scaling_factor=0.18215)
    assert config.text_encoder == CLIPTextConfig()  # ViT-L/14: 768 wide, 12 layers, 12 heads
    assert (config.beta_start, config.beta_end, config.num_train_timesteps) == (0.00085, 0.012, 1000)
    # The original's "linear" schedule is linear in sqrt(beta): diffusers' "scaled_linear".
    assert (config.beta_schedule, config.prediction_type) == ("scaled_linear", "epsilon")
    assert config.sample_size == 64  # model.params.image_size: the latent side (512 px images)


@pytest.mark.parametrize(
    "config",
    [
        StableDiffusionConfig(),
        StableDiffusionConfig.tiny(),
        StableDiffusionConfig(
            unet=UNetConfig(model_channels=64, norm_groups=16, transformer_depth=2),
            vae=VAEConfig(embed_dim=8, z_channels=8, scaling_factor=0.5),
            text_encoder=CLIPTextConfig(vocab_size=1000, max_position_embeddings=32, layer_norm_eps=1e-6),
            beta_schedule="linear",
            prediction_type="v_prediction",
            num_train_timesteps=500,
            sample_size=8,
            generation_defaults={"sampler": "ddim", "steps": 30, "guidance_scale": 4.0},
        ),
    ],
    ids=["sd1", "tiny", "other"],
)
def test_written_config_reads_back(tmp_path: Path, config: StableDiffusionConfig) -> None:
    path = tmp_path / "model.yaml"
    write_config_yaml(config, path)
    assert read_config_yaml(path) == config


def test_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    """YAML 1.1 reads 1e-6 (no dot) as a string; a config written by hand may have it."""
    text = V1_INFERENCE_YAML + "      params:\n        layer_norm_eps: 1e-6\n"
    assert read_config_yaml(yaml_file(tmp_path, text)).text_encoder.layer_norm_eps == 1e-6


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: [unclosed", "is not valid YAML"),
        ("just a string", "has no model.params"),
        (UNET_PARAMS + "model_channels: wide\n", "unet_config.params.model_channels must be a positive int"),
        ("model:\n  params:\n    network_config: {}\n", "SDXL"),
        (
            "model:\n  params:\n    cond_stage_config:\n"
            "      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder\n",
            "SD 2.x",
        ),
        ("model:\n  params:\n    parameterization: x0\n", "parameterization"),
    ],
)
def test_bad_config(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(CheckpointError, match=expected) as caught:
        read_config_yaml(yaml_file(tmp_path, text))
    assert "\n" not in str(caught.value)


def test_generation_defaults_of_unknown_settings_are_refused(tmp_path: Path) -> None:
    text = V1_INFERENCE_YAML + "generation_defaults:\n  cfg: 4\n"
    with pytest.raises(CheckpointError, match="generation_defaults"):
        read_config_yaml(yaml_file(tmp_path, text))
