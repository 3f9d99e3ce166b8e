"""SD 2.x checkpoints through our loaders: a diffusers folder that diffusers and transformers wrote (their
SD 2.x settings: linear projections, per-block heads, a GELU CLIPTextModel of `layers - 1` blocks, a
v-prediction scheduler), original single files with and without their config file, and the official
`v2-inference(-v).yaml` settings."""

from pathlib import Path

import pytest
import torch
import yaml
from checkpoint_helpers import random_model
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file
from sd2_pipeline import SAMPLE_SIZE, tiny_sd2_pipeline
from torch import Tensor, nn

from sdexport.checkpoints import CheckpointError, load_model
from sdexport.checkpoints.config_file import read_config_yaml, write_config_yaml
from sdexport.checkpoints.family import SD1, SD2, detect_family
from sdexport.models import OpenCLIPTextConfig, StableDiffusion, StableDiffusionConfig

TOLERANCE = 1e-4
OPEN_CLIP = "cond_stage_model.model."


def rel_err(ours: Tensor, ref: Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory) -> tuple[StableDiffusionPipeline, Path]:
    folder = tmp_path_factory.mktemp("sd2") / "model"
    pipeline = tiny_sd2_pipeline()
    pipeline.save_pretrained(folder)
    return pipeline, folder


@torch.no_grad()
def test_diffusers_folder_matches_diffusers(diffusers_folder) -> None:
    reference, folder = diffusers_folder
    loaded = load_model(folder)
    config = loaded.model.config
    assert isinstance(config.text_encoder, OpenCLIPTextConfig) and config.text_encoder.layers == 3
    assert config.unet.num_head_channels == 8 and config.unet.use_linear_in_transformer
    assert (config.prediction_type, config.sample_size) == ("v_prediction", SAMPLE_SIZE)
    generator = torch.Generator().manual_seed(10)
    sample = torch.randn(2, 4, 12, 16, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    timestep = torch.tensor([3.0, 801.0])
    expected = reference.unet(sample, timestep, encoder_hidden_states=context).sample
    assert rel_err(loaded.model.unet(sample, timestep, context), expected) < TOLERANCE
    ids = torch.tensor([[49406, 320, 1929, 539, 3309, 49407] + [0] * 71, [49406, 7, 49407] + [0] * 74])
    hidden, pooled = loaded.model.text_encoder(ids)
    expected_text = reference.text_encoder(ids)
    assert rel_err(hidden, expected_text.last_hidden_state) < TOLERANCE
    assert rel_err(pooled, expected_text.pooler_output) < TOLERANCE


def test_prediction_override(diffusers_folder) -> None:
    _, folder = diffusers_folder
    assert load_model(folder, prediction="epsilon").model.config.prediction_type == "epsilon"


def _full_state(model: nn.Module, layers: int) -> dict[str, Tensor]:
    """A SD 2.x file's tensors: with the text model's last block, projection and logit_scale."""
    state = {key: t.clone() for key, t in model.state_dict().items()}
    first = f"{OPEN_CLIP}transformer.resblocks.0."
    for key in [key for key in state if key.startswith(first)]:
        state[key.replace(".0.", f".{layers - 1}.", 1)] = torch.randn(state[key].shape)
    state[OPEN_CLIP + "text_projection"] = torch.randn(32, 32)
    state[OPEN_CLIP + "logit_scale"] = torch.tensor(4.6)
    return state


@pytest.fixture(scope="module")
def sd2_file(tmp_path_factory) -> tuple[nn.Module, Path]:
    config = StableDiffusionConfig.tiny_sd2()
    model = random_model(config)
    path = tmp_path_factory.mktemp("sd2file") / "tiny-v.safetensors"
    save_file(_full_state(model, config.text_encoder.layers), str(path))
    return model, path


def test_single_file_with_its_config(sd2_file) -> None:
    model, path = sd2_file
    write_config_yaml(model.config, path.with_suffix(".yaml"))
    try:
        loaded = load_model(path)
    finally:
        path.with_suffix(".yaml").unlink()
    assert loaded.model.config == model.config
    state = loaded.model.state_dict()
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[key], tensor) for key, tensor in model.state_dict().items())


def test_bare_single_file_takes_the_documented_rule(sd2_file) -> None:
    """No config file: SD 2.x is told from the keys, and the ViT-H / 768 v-prediction sizes are assumed."""
    _, path = sd2_file
    with pytest.raises(CheckpointError, match=r"SD 2\.x defaults \(v_prediction\)") as error:
        load_model(path)
    assert "\n" not in str(error.value)
    with pytest.raises(CheckpointError, match=r"SD 2\.x defaults \(epsilon\)"):
        load_model(path, prediction="epsilon")


def test_family_from_the_keys() -> None:
    with torch.device("meta"):
        sd2 = dict(StableDiffusion(StableDiffusionConfig.sd2()).state_dict())
        sd1 = dict(StableDiffusion(StableDiffusionConfig()).state_dict())
    assert detect_family(sd2) == SD2
    assert detect_family(sd1) == SD1
    with pytest.raises(CheckpointError, match="SDXL"):
        detect_family(
            {
                **sd2,
                "conditioner.embedders.1.model.positional_embedding": sd2[OPEN_CLIP + "positional_embedding"],
            }
        )


# The settings of the official v2-inference.yaml and v2-inference-v.yaml (Stability-AI/stablediffusion).
_V2_YAML = """
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    {parameterization}
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    image_size: 64
    scale_factor: 0.18215
    use_ema: False
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        use_fp16: True
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_head_channels: 64
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 1024
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult: [1, 2, 4, 4]
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"""


@pytest.mark.parametrize(
    ("parameterization", "expected"),
    [
        ('parameterization: "v"', StableDiffusionConfig.sd2("v_prediction")),
        ("", StableDiffusionConfig.sd2("epsilon")),
    ],
)
def test_official_v2_configs(tmp_path: Path, parameterization: str, expected: StableDiffusionConfig) -> None:
    path = tmp_path / "v2.yaml"
    path.write_text(_V2_YAML.format(parameterization=parameterization))
    assert read_config_yaml(path) == expected


def test_yaml_round_trip_and_layer_check(tmp_path: Path) -> None:
    config = StableDiffusionConfig.tiny_sd2()
    write_config_yaml(config, tmp_path / "tiny.yaml")
    assert read_config_yaml(tmp_path / "tiny.yaml") == config
    document = yaml.safe_load((tmp_path / "tiny.yaml").read_text())
    document["model"]["params"]["cond_stage_config"]["params"]["layer"] = "last"
    (tmp_path / "last.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(CheckpointError, match="layer 'last' is not supported"):
        read_config_yaml(tmp_path / "last.yaml")
