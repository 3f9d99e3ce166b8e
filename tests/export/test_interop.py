"""Our graphs against independent implementations, and optimum's pipeline on a folder we built.

The tiny random-weight diffusers pipeline of tests/conftest.py is the source: our loader reads it, our
build exports it, and diffusers/transformers run the very same weights as the reference.
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from export_helpers import ATOL, Built
from optimum.onnxruntime import ORTStableDiffusionPipeline
from transformers import CLIPTextModel


def _run(folder: Path, component: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(folder / component / "model.onnx").run(None, feeds)


def _close(actual: np.ndarray, expected: torch.Tensor) -> None:
    np.testing.assert_allclose(actual, expected.detach().numpy(), atol=ATOL, rtol=1e-4)


def test_text_encoder_matches_transformers(built: Built, tiny_diffusers_dir: Path) -> None:
    reference = CLIPTextModel.from_pretrained(tiny_diffusers_dir / "text_encoder").eval()
    ids = np.full((2, 77), 49407, dtype=np.int64)
    ids[:, 0] = 49406
    ids[0, 1:4] = [320, 2368, 530]
    ids[1, 1:9] = np.arange(1000, 1008)
    hidden, pooled = _run(built.folder, "text_encoder", {"input_ids": ids})
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids))
    _close(hidden, expected.last_hidden_state)
    _close(pooled, expected.pooler_output)


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 8, 8), (3, 9, 13)])
def test_unet_matches_diffusers_at_any_latent_size(
    built: Built, tiny_diffusers_dir: Path, batch: int, height: int, width: int
) -> None:
    reference = UNet2DConditionModel.from_pretrained(tiny_diffusers_dir / "unet").eval()
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((batch, 4, height, width), dtype=np.float32)
    context = rng.standard_normal((batch, 77, 32), dtype=np.float32)
    timestep = np.array(777.0, dtype=np.float32)
    feeds = {"sample": sample, "timestep": timestep, "encoder_hidden_states": context}
    (out,) = _run(built.folder, "unet", feeds)
    with torch.no_grad():
        expected = reference(torch.from_numpy(sample), torch.from_numpy(timestep), torch.from_numpy(context))
    _close(out, expected.sample)


def test_vae_graphs_match_diffusers(built: Built, tiny_diffusers_dir: Path) -> None:
    reference = AutoencoderKL.from_pretrained(tiny_diffusers_dir / "vae").eval()
    rng = np.random.default_rng(1)
    image = rng.uniform(-1, 1, (2, 3, 72, 104)).astype(np.float32)
    latent = rng.standard_normal((2, 4, 9, 13), dtype=np.float32)
    (moments,) = _run(built.folder, "vae_encoder", {"sample": image})
    (decoded,) = _run(built.folder, "vae_decoder", {"latent_sample": latent})
    with torch.no_grad():
        expected_moments = reference.encode(torch.from_numpy(image)).latent_dist.parameters
        expected_image = reference.decode(torch.from_numpy(latent)).sample
    _close(moments, expected_moments)
    _close(decoded, expected_image)


def test_optimum_pipeline_runs_our_folder_like_diffusers(built: Built, tiny_diffusers_dir: Path) -> None:
    """optimum's onnxruntime pipeline loads the folder as it is (configs, tokenizer, scheduler, graphs)
    and gives diffusers' PyTorch pipeline's image from the same starting latents."""
    onnx_pipeline = ORTStableDiffusionPipeline.from_pretrained(built.folder)
    assert isinstance(onnx_pipeline.scheduler, PNDMScheduler)
    torch_pipeline = StableDiffusionPipeline.from_pretrained(
        tiny_diffusers_dir, scheduler=PNDMScheduler.from_pretrained(built.folder / "scheduler")
    )
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    settings = {
        "prompt": "a red cube on a wooden table",
        "negative_prompt": "blurry",
        "num_inference_steps": 4,
        "guidance_scale": 7.5,
        "height": 64,
        "width": 64,
        "output_type": "np",
    }
    ours = onnx_pipeline(latents=latents.clone(), **settings).images
    theirs = torch_pipeline(latents=latents.clone(), **settings).images
    assert ours.shape == theirs.shape == (1, 64, 64, 3)
    assert np.abs(ours - theirs).max() < 1e-4
    assert ours.std() > 0.01, "a flat image would hide differences"
