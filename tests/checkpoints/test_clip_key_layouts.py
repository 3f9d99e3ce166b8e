"""CLIP weights without `text_model.` (`cond_stage_model.transformer.embeddings.*`, `.encoder.*`,
`.final_layer_norm.*`, as NAI-lineage checkpoints hold them) load exactly like the standard layout; both
against the text encoder that diffusers' converter (convert_ldm_clip_checkpoint) gives transformers."""

from pathlib import Path

import pytest
import torch
import transformers
from checkpoint_helpers import random_model
from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
from safetensors.torch import save_file

from sdexport.checkpoints import CheckpointError, LoadedModel, load_model, write_config_yaml
from sdexport.checkpoints.diffusers_configs import text_encoder_config_to_diffusers
from sdexport.models import StableDiffusionConfig

CONFIG = StableDiffusionConfig.tiny()
CLIP = "cond_stage_model.transformer."
NESTED = CLIP + "text_model."
IDS = torch.tensor([[49406, 320, 1929, 539, 3309, 49407] + [49407] * 71, [49406, 7, 49407] + [0] * 74])


def unnested(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with its CLIP weights in the layout without `text_model.`."""
    return {key.replace(NESTED, CLIP): t for key, t in state.items()}


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    """The tiny model's weights, with the position ids that transformers saved as a buffer."""
    weights = dict(random_model(CONFIG, seed=4).state_dict())
    weights[NESTED + "embeddings.position_ids"] = torch.arange(77)[None]
    return weights


def load(folder: Path, state: dict[str, torch.Tensor], name: str) -> LoadedModel:
    path = folder / name
    if path.suffix == ".ckpt":
        torch.save({"state_dict": state}, path)
    else:
        save_file({key: t.contiguous() for key, t in state.items()}, str(path))
    config = folder / "tiny.yaml"
    write_config_yaml(CONFIG, config)
    return load_model(path, config=config)


def transformers_text_encoder(state: dict[str, torch.Tensor]) -> transformers.CLIPTextModel:
    """The text encoder from diffusers' conversion of `state`, loaded strictly where its keys fit."""
    model = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(**text_encoder_config_to_diffusers(CONFIG.text_encoder))
    ).eval()
    # transformers keeps the position ids as a buffer it does not save; diffusers' loader skips them.
    converted = {k: t for k, t in convert_ldm_clip_checkpoint(state).items() if "position_ids" not in k}
    # The converter only strips the prefix: keys without `text_model.` fit the CLIPTextTransformer inside.
    target = model if any(key.startswith("text_model.") for key in converted) else model.text_model
    target.load_state_dict(converted, strict=True)
    return model


@torch.no_grad()
def rel_errs(loaded: LoadedModel, reference: transformers.CLIPTextModel) -> tuple[float, float]:
    hidden, pooled = loaded.model.text_encoder(IDS)
    expected = reference(IDS)
    return (
        ((hidden - expected.last_hidden_state).norm() / expected.last_hidden_state.norm()).item(),
        ((pooled - expected.pooler_output).norm() / expected.pooler_output.norm()).item(),
    )


@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt"])
def test_both_layouts_match_diffusers_conversion(tmp_path: Path, state, name: str) -> None:
    for layout in (state, unnested(state)):
        loaded = load(tmp_path, layout, name)
        assert max(rel_errs(loaded, transformers_text_encoder(layout))) < 1e-5


def test_unnested_layout_loads_as_the_standard_one(tmp_path: Path, state) -> None:
    standard = load(tmp_path, state, "standard.safetensors")
    old = load(tmp_path, unnested(state), "unnested.safetensors")
    ours = old.model.state_dict()
    assert sorted(ours) == sorted(standard.model.state_dict())
    for key, tensor in standard.model.state_dict().items():
        assert torch.equal(ours[key], tensor), key
    assert any("without text_model." in note for note in old.notes)
    assert not any("without text_model." in note for note in standard.notes)


def test_the_layouts_differ_for_the_reference(state) -> None:
    """The unnested layout does not load into CLIPTextModel as it is: the renaming is needed."""
    model = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(**text_encoder_config_to_diffusers(CONFIG.text_encoder))
    )
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(convert_ldm_clip_checkpoint(unnested(state)), strict=True)


def test_a_weight_in_both_layouts_is_refused(tmp_path: Path, state) -> None:
    both = dict(state)
    both[CLIP + "final_layer_norm.weight"] = state[NESTED + "final_layer_norm.weight"] + 1
    with pytest.raises(
        CheckpointError, match=r"final_layer_norm.weight both with and without text_model"
    ) as caught:
        load(tmp_path, both, "both.safetensors")
    assert "\n" not in str(caught.value)
