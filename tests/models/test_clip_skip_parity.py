"""CLIP skip (AUTOMATIC1111's "Clip skip: N") against transformers and diffusers on a random 3-layer text
encoder: the web UI's definition (hidden_states[-N] through final_layer_norm) and diffusers'
`encode_prompt(clip_skip=N - 1)`, which counts one less. The exported graph is checked in
tests/export/test_embedding_build.py."""

import copy
from pathlib import Path

import pytest
import torch
import transformers
from diffusers import StableDiffusionPipeline
from sd_reference import randomize_norms, rel_err, sd_token_ids, transformers_clip

from sdexport.export.tokenizer_files import write_tokenizer
from sdexport.models import CLIPTextConfig
from sdexport.models.clip import CLIPTextModel

TOLERANCE = 1e-4  # relative, as tests/models/test_clip_parity.py
CONFIG = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2)
PROMPT = "a small red circle on a blue background"


@pytest.fixture(scope="module")
def ours() -> CLIPTextModel:
    torch.manual_seed(3)
    model = CLIPTextModel(copy.deepcopy(CONFIG)).eval()
    randomize_norms(model, torch.Generator().manual_seed(4))
    return model


@pytest.fixture(scope="module")
def reference(ours: CLIPTextModel) -> transformers.CLIPTextModel:
    checkpoint = {f"cond_stage_model.transformer.{key}": value for key, value in ours.state_dict().items()}
    return transformers_clip(CONFIG, checkpoint)


def skipped(model: CLIPTextModel, clip_skip: int) -> CLIPTextModel:
    model = copy.deepcopy(model)
    model.config.clip_skip = clip_skip
    return model


def a1111_clip_skip(reference: transformers.CLIPTextModel, ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    """The web UI's FrozenCLIPEmbedderWithCustomWords.encode_with_transformers."""
    outputs = reference(input_ids=ids, output_hidden_states=True)
    if clip_skip == 1:
        return outputs.last_hidden_state
    return reference.text_model.final_layer_norm(outputs.hidden_states[-clip_skip])


@pytest.mark.parametrize("clip_skip", [1, 2, 3])
def test_clip_skip_matches_the_web_ui_definition(ours, reference, clip_skip: int) -> None:
    ids = sd_token_ids([3, 20, 75], 77, torch.Generator().manual_seed(0))
    with torch.no_grad():
        last, _ = skipped(ours, clip_skip)(ids)
        expected = a1111_clip_skip(reference, ids, clip_skip)
        # Power: the neighbouring layers (off by one either way, diffusers' count taken as ours) differ.
        for neighbour in {max(1, clip_skip - 1), min(3, clip_skip + 1)} - {clip_skip}:
            assert rel_err(last, a1111_clip_skip(reference, ids, neighbour)) > 100 * TOLERANCE
    assert rel_err(last, expected) < TOLERANCE


def test_clip_skip_matches_diffusers_encode_prompt_one_count_up(ours, reference, tmp_path: Path) -> None:
    """diffusers' clip_skip=1 is the web UI's (and ours) 2."""
    write_tokenizer(tmp_path)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    pipeline = StableDiffusionPipeline(
        vae=None,
        text_encoder=reference,
        tokenizer=tokenizer,
        unet=None,
        scheduler=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ids = torch.tensor([tokenizer(PROMPT, padding="max_length", max_length=77).input_ids])
    with torch.no_grad():
        for diffusers_skip in (1, 2):
            expected, _ = pipeline.encode_prompt(PROMPT, "cpu", 1, False, clip_skip=diffusers_skip)
            last, _ = skipped(ours, diffusers_skip + 1)(ids)
            assert rel_err(last, expected) < TOLERANCE
            # Power: the same number taken as ours is another layer.
            assert rel_err(skipped(ours, diffusers_skip)(ids)[0], expected) > 100 * TOLERANCE


def test_later_layers_do_not_run(ours) -> None:
    """With clip skip 2 the last layer's weights have no effect (so the exported graph leaves them out)."""
    ids = sd_token_ids([10], 77, torch.Generator().manual_seed(1))
    model = skipped(ours, 2)
    with torch.no_grad():
        before, _ = model(ids)
        model.text_model.encoder.layers[-1].mlp.fc2.weight.add_(1.0)
        after, _ = model(ids)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
