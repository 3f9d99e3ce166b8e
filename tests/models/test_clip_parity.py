"""Our CLIP text encoder against transformers' CLIPTextModel holding the same (original-layout) weights."""

import pytest
import torch
from sd_reference import rel_err, sd_token_ids, transformers_clip

from sdexport.models import StableDiffusion


@pytest.fixture(scope="module")
def reference(tiny_sd: StableDiffusion, tiny_checkpoint: dict[str, torch.Tensor]):
    return transformers_clip(tiny_sd.config.text_encoder, tiny_checkpoint)


def test_outputs_match_transformers(tiny_sd: StableDiffusion, reference) -> None:
    # Prompts of different lengths put the end-of-text token (the pooled position) in different places.
    ids = sd_token_ids([0, 5, 30, 75], 77, torch.Generator().manual_seed(0))
    with torch.no_grad():
        last, pooled = tiny_sd.text_encoder(ids)
        ref = reference(input_ids=ids)
    assert last.shape == ref.last_hidden_state.shape
    assert pooled.shape == ref.pooler_output.shape
    assert rel_err(last, ref.last_hidden_state) < 1e-4
    assert rel_err(pooled, ref.pooler_output) < 1e-4


def test_attention_is_causal(tiny_sd: StableDiffusion) -> None:
    """Changing a later token leaves earlier positions untouched, as in the original's causal mask."""
    gen = torch.Generator().manual_seed(1)
    ids = sd_token_ids([20], 77, gen)
    changed = ids.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 49406
    with torch.no_grad():
        a, _ = tiny_sd.text_encoder(ids)
        b, _ = tiny_sd.text_encoder(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])
