"""A tiny SD 2.x model through `sdexport build` and sdrun, against diffusers' StableDiffusionPipeline on the
same weights (tests/sd2_pipeline.py): the folder says what diffusers' SD 2.x folders say, its tokenizer
pads as SD 2.x's does, sdrun's v-prediction latents match diffusers' step for step, fp16 builds keep
the attention in float32, optimum's pipeline runs our folder as diffusers runs the model, and sdrun runs
optimum's export of the model as it runs ours."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from export_helpers import OPTIMUM_LATENT_RTOL
from optimum.onnxruntime import ORTStableDiffusionPipeline
from optimum_cli import optimum_export
from sd2_pipeline import SAMPLE_SIZE, save_without_tokenizer, tiny_sd2_pipeline

from sdexport.checkpoints import load_model
from sdexport.export.folder import BuildOptions, build_folder
from sdrun.folder import UnverifiedFolderWarning
from sdrun.folder_files import parse_json, read_text
from sdrun.pipeline import Pipeline
from sdrun.tokenizer import CLIPTokenizer

# Float32 ONNX against float32 PyTorch (as tests/runtime/test_pipeline_parity.py).
LATENT_RTOL = 1e-5
PROMPT = "a red cube on a wooden table! studio light"
NEGATIVE = "blurry, low quality"
GUIDANCE = 7.5
STEPS = 6
SIZE = 64


@pytest.fixture(scope="module")
def reference() -> StableDiffusionPipeline:
    return tiny_sd2_pipeline()


@pytest.fixture(scope="module")
def source(tmp_path_factory, reference: StableDiffusionPipeline) -> Path:
    folder = tmp_path_factory.mktemp("sd2-diffusers") / "tiny-sd2"
    save_without_tokenizer(reference, folder)
    return folder


def _build(source: Path, target: Path, **options: object) -> Path:
    build_folder(load_model(source), target, BuildOptions(**options), log=lambda _: None)
    return target


@pytest.fixture(scope="module")
def folder(tmp_path_factory, source: Path) -> Path:
    return _build(source, tmp_path_factory.mktemp("sd2-built") / "tiny-sd2")


def _json(path: Path) -> dict:
    return parse_json(read_text(path), str(path))


def test_folder_describes_sd2(folder: Path) -> None:
    text = _json(folder / "text_encoder" / "config.json")
    assert (text["hidden_act"], text["num_hidden_layers"], text["hidden_size"]) == ("gelu", 2, 32)
    unet = _json(folder / "unet" / "config.json")
    assert (unet["use_linear_projection"], unet["attention_head_dim"]) == (True, [4, 8, 8])
    assert unet["cross_attention_dim"] == 32 and unet["sample_size"] == SAMPLE_SIZE
    assert _json(folder / "scheduler" / "scheduler_config.json")["prediction_type"] == "v_prediction"
    assert _json(folder / "tokenizer" / "tokenizer_config.json")["pad_token"] == "!"
    components = _json(folder / "sdexport_manifest.json")["components"]
    checks = [check for component in components.values() for check in component["validation"]["checks"]]
    assert checks and all(check["max_abs_error"] <= check["limit"] for check in checks)
    assert Pipeline.load(folder, provider="cpu").facts.default_size == SAMPLE_SIZE * 8


def test_tokenizer_matches_sd2s(folder: Path, reference: StableDiffusionPipeline) -> None:
    prompts = [PROMPT, "!!", "a cat", ""]
    ours = CLIPTokenizer.from_folder(folder / "tokenizer").encode(prompts)
    theirs = reference.tokenizer(prompts, padding="max_length", max_length=77).input_ids
    assert ours.tolist() == theirs
    assert ours[2, -1] == 0  # padded with "!" (id 0), not with the end token


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_v_prediction_latents_match_diffusers(
    folder: Path, reference: StableDiffusionPipeline, sampler: str
) -> None:
    scheduler = reference.scheduler
    if sampler == "euler":
        scheduler = EulerDiscreteScheduler.from_config(scheduler.config)
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(3))
    theirs = StableDiffusionPipeline(**{**reference.components, "scheduler": scheduler})(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=SIZE,
        width=SIZE,
        latents=noise.clone(),
        output_type="latent",
    ).images.numpy()
    ours = sdrun_latents(folder, noise.numpy(), sampler)
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < LATENT_RTOL


def sdrun_latents(folder: Path, noise: np.ndarray, sampler: str) -> np.ndarray:
    """sdrun's final latents on `folder` from `noise`, with this file's prompt and settings."""
    with Pipeline.load(folder, provider="cpu") as pipeline:
        embeddings = pipeline.encode_prompt(PROMPT, NEGATIVE, GUIDANCE)
        return pipeline.denoise(
            embeddings,
            noise,
            np.random.default_rng(0),
            steps=STEPS,
            guidance_scale=GUIDANCE,
            sampler=sampler,
        )


def test_optimum_pipeline_runs_our_folder_like_diffusers(
    folder: Path, reference: StableDiffusionPipeline
) -> None:
    """optimum's onnxruntime pipeline reads the folder's v-prediction schedule and gives diffusers' image."""
    onnx_pipeline = ORTStableDiffusionPipeline.from_pretrained(folder)
    assert onnx_pipeline.scheduler.config.prediction_type == "v_prediction"
    torch_pipeline = StableDiffusionPipeline(**{**reference.components, "scheduler": onnx_pipeline.scheduler})
    latents = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(0))
    settings = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "num_inference_steps": 4,
        "guidance_scale": GUIDANCE,
        "height": SIZE,
        "width": SIZE,
        "output_type": "np",
    }
    ours = onnx_pipeline(latents=latents.clone(), **settings).images
    theirs = torch_pipeline(latents=latents.clone(), **settings).images
    assert ours.shape == theirs.shape == (1, SIZE, SIZE, 3)
    assert np.abs(ours - theirs).max() < 1e-4
    assert ours.std() > 0.01, "a flat image would hide differences"


def test_sdrun_runs_optimums_export_like_ours(
    tmp_path_factory, folder: Path, reference: StableDiffusionPipeline
) -> None:
    """optimum exports the diffusers folder with its own tokenizer; sdrun's latents are ours."""
    source = tmp_path_factory.mktemp("sd2-diffusers-with-tokenizer") / "tiny-sd2"
    reference.save_pretrained(source)
    optimum_folder = tmp_path_factory.mktemp("sd2-optimum") / "tiny-sd2"
    optimum_export(source, optimum_folder)
    noise = np.random.default_rng(5).standard_normal((1, 4, SIZE // 8, SIZE // 8), dtype=np.float32)
    with pytest.warns(UnverifiedFolderWarning):
        theirs = sdrun_latents(optimum_folder, noise, "euler")
    ours = sdrun_latents(folder, noise, "euler")
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < OPTIMUM_LATENT_RTOL


def _attention_inputs_from_float32(graph: Path) -> list[bool]:
    """For each fused attention node of a graph: whether its query arrives as float32 (a Cast to float)."""
    model = onnx.load(graph, load_external_data=False)
    producer = {output: node for node in model.graph.node for output in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type == "MultiHeadAttention":
            cast = producer.get(node.input[0])
            to = next((a.i for a in cast.attribute if a.name == "to"), None) if cast is not None else None
            found.append(cast is not None and cast.op_type == "Cast" and to == onnx.TensorProto.FLOAT)
    return found


def test_fp16_build_keeps_attention_in_float32(tmp_path: Path, source: Path) -> None:
    built = _build(source, tmp_path / "fp16", precision="fp16")
    kept = _attention_inputs_from_float32(built / "unet" / "model.onnx")
    assert kept and all(kept)
