"""LCM-distilled UNets end to end: a tiny random LatentConsistencyModelPipeline (diffusers) is exported by
`sdexport build` with the UNet's `timestep_cond` input as optimum declares it, and sdrun's latents match
diffusers' pipeline started from the same noise and fed the same per-step noise."""

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from diffusers import (
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers import scheduling_lcm
from optimum.exporters.onnx.model_configs import UNetOnnxConfig
from optimum.onnxruntime import ORTDiffusionPipeline, ORTLatentConsistencyModelPipeline

from sdrun.cli import main
from sdrun.errors import ModelFolderError
from sdrun.pipeline import Pipeline
from sdrun.request import NegativePromptIgnoredWarning

PROMPT = "a red cube on a wooden table, studio light"
COND_DIM = 32
SIZE = 64
# Relative error of the final latents (ONNX against PyTorch, float32): measured 2e-5 at guidance 8.5, mostly
# diffusers' float32 rounding of the guidance embedding (sdrun.guidance_embedding), 6e-6 at 3.0; feeding w
# instead of w - 1, or leaving the embedding out, lands above 0.1.
LATENT_RTOL = 1e-4
# timestep_cond, sdrun's (float64) against diffusers' (float32 on arguments up to 1000 (w - 1)): measured
# 1.9e-4 at guidance 8.5 and 2.3e-5 at 2.0; the embedding of w instead of w - 1, or of 2.0 instead of 8.5,
# is off by 1.76 and 1.86.
GUIDANCE_EMBEDDING_ATOL = 1e-3


@pytest.fixture(scope="module")
def lcm_diffusers_dir(tmp_path_factory: pytest.TempPathFactory, tiny_diffusers_dir: Path) -> Path:
    """The tiny random pipeline with its UNet given a guidance-embedding projection, as an LCM pipeline."""
    base = StableDiffusionPipeline.from_pretrained(tiny_diffusers_dir)
    torch.manual_seed(11)
    config = {key: value for key, value in base.unet.config.items() if not key.startswith("_")}
    unet = UNet2DConditionModel(**{**config, "time_cond_proj_dim": COND_DIM})
    with torch.no_grad():  # a projection strong enough for the guidance scale to show in the picture
        unet.time_embedding.cond_proj.weight.mul_(20)
    pipeline = LatentConsistencyModelPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=unet,
        scheduler=LCMScheduler.from_config(base.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("lcm-diffusers")
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lcm_folder(tmp_path_factory: pytest.TempPathFactory, lcm_diffusers_dir: Path) -> Path:
    """`sdexport build` of it, validated like any build; do not modify."""
    out = tmp_path_factory.mktemp("lcm-sdexport") / "lcm"
    build = "from sdexport.cli import main; main()"
    command = [sys.executable, "-c", build, "build", str(lcm_diffusers_dir), "--output", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def reference(lcm_diffusers_dir: Path) -> LatentConsistencyModelPipeline:
    return LatentConsistencyModelPipeline.from_pretrained(lcm_diffusers_dir).to(torch.float32)


@pytest.fixture(scope="module")
def pipeline(lcm_folder: Path) -> Pipeline:
    return Pipeline.load(lcm_folder, provider="cpu")


def test_the_build_declares_timestep_cond_and_lcm_defaults(lcm_folder: Path) -> None:
    manifest = json.loads((lcm_folder / "sdexport_manifest.json").read_text())
    assert manifest["generation_defaults"] == {"sampler": "lcm", "steps": 4, "guidance_scale": 8.5}
    unet = manifest["components"]["unet"]
    assert {"name": "timestep_cond", "dtype": "float32", "shape": ["batch", COND_DIM]} in unet["inputs"]
    checks = unet["validation"]["checks"]
    assert checks and all(check["max_abs_error"] <= check["limit"] for check in checks)
    assert "timestep_cond" in checks[0]["inputs"]
    config = json.loads((lcm_folder / "unet" / "config.json").read_text())
    assert config["time_cond_proj_dim"] == COND_DIM


def test_unet_inputs_are_those_optimum_declares(lcm_folder: Path) -> None:
    """Names, order, dtypes, and dynamic and fixed axes of optimum-onnx's UNet OnnxConfig, made from the
    exported unet/config.json, so that optimum's pipelines feed our graph and sdrun feeds theirs."""
    manifest = json.loads((lcm_folder / "sdexport_manifest.json").read_text())
    ours = manifest["components"]["unet"]["inputs"]
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(lcm_folder / "unet"))
    optimum = UNetOnnxConfig(unet.config, task="semantic-segmentation")
    dummies = optimum.generate_dummy_inputs(framework="pt")
    assert [node["name"] for node in ours] == list(optimum.inputs)
    for node in ours:
        dummy, dynamic = dummies[node["name"]], optimum.inputs[node["name"]]
        assert node["dtype"] == "float32" and dummy.dtype == torch.float32
        assert len(node["shape"]) == dummy.ndim
        assert {axis for axis, dim in enumerate(node["shape"]) if isinstance(dim, str)} == set(dynamic)
        fixed = [(dim, dummy.shape[axis]) for axis, dim in enumerate(node["shape"]) if axis not in dynamic]
        assert all(ours_dim == theirs for ours_dim, theirs in fixed), node


def test_exported_unet_matches_diffusers_given_the_same_timestep_cond(lcm_folder: Path, reference) -> None:
    gen = torch.Generator().manual_seed(2)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    context = torch.randn(2, 77, 32, generator=gen)
    w = torch.tensor([7.5, 2.0])
    cond = reference.get_guidance_scale_embedding(w, embedding_dim=COND_DIM)
    with torch.no_grad():
        theirs = reference.unet(sample, torch.tensor(499.0), context, timestep_cond=cond).sample.numpy()
    session = ort.InferenceSession(lcm_folder / "unet" / "model.onnx", providers=["CPUExecutionProvider"])
    feeds = {
        "sample": sample.numpy(),
        "timestep": np.array(499.0, np.float32),
        "encoder_hidden_states": context.numpy(),
        "timestep_cond": cond.numpy(),
    }
    (ours,) = session.run(["out_sample"], feeds)
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < LATENT_RTOL


def _diffusers_latents(reference, steps: int, guidance: float, noise: np.ndarray, seed: int) -> np.ndarray:
    """LatentConsistencyModelPipeline's final latents, its per-step noise taken from default_rng(seed) in
    sdrun's documented order (one draw of the latent's shape after each step but the last)."""
    rng = np.random.default_rng(seed)
    original = scheduling_lcm.randn_tensor
    scheduling_lcm.randn_tensor = lambda shape, **_: torch.from_numpy(rng.standard_normal(shape, np.float32))
    try:
        latents = reference(
            PROMPT,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=SIZE,
            width=SIZE,
            latents=torch.from_numpy(noise.copy()),
            output_type="latent",
        ).images
    finally:
        scheduling_lcm.randn_tensor = original
    return latents.numpy()


@pytest.mark.parametrize(("steps", "guidance"), [(2, 8.5), (4, 8.5), (4, 3.0)])
def test_latents_match_latent_consistency_pipeline(
    reference, pipeline: Pipeline, steps: int, guidance: float
) -> None:
    seed = 5
    noise = np.random.default_rng(100).standard_normal((1, 4, SIZE // 8, SIZE // 8), dtype=np.float32)
    theirs = _diffusers_latents(reference, steps, guidance, noise, seed)

    batches = []
    unet = pipeline.sessions.get("unet")
    predict = unet.predict

    def counted(latents, *args):
        batches.append(len(latents))
        return predict(latents, *args)

    unet.predict = counted
    try:
        embeddings = pipeline.encode_prompt(PROMPT, "", guidance)
        rng = np.random.default_rng(seed)
        ours = pipeline.denoise(embeddings, noise, rng, steps=steps, guidance_scale=guidance, sampler="lcm")
    finally:
        del unet.predict
    assert embeddings.unconditional is None
    assert batches == [1] * steps, "one UNet pass of one latent a step"
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < LATENT_RTOL


def test_optimum_opens_our_folder_as_its_lcm_pipeline_and_matches_diffusers(
    lcm_folder: Path, reference: LatentConsistencyModelPipeline
) -> None:
    """model_index.json names LatentConsistencyModelPipeline and the scheduler LCMScheduler, so optimum's
    auto pipeline opens the folder as ORTLatentConsistencyModelPipeline; from the same latents and
    generator its latents are diffusers' (the per-step noise is drawn by the same LCMScheduler)."""
    onnx_pipeline = ORTDiffusionPipeline.from_pretrained(lcm_folder)
    assert isinstance(onnx_pipeline, ORTLatentConsistencyModelPipeline)
    assert isinstance(onnx_pipeline.scheduler, LCMScheduler)
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(0))
    latents = {}
    for name, pipe in (("optimum", onnx_pipeline), ("diffusers", reference)):
        latents[name] = pipe(
            PROMPT,
            num_inference_steps=4,
            guidance_scale=8.5,
            height=SIZE,
            width=SIZE,
            latents=noise.clone(),
            generator=torch.Generator().manual_seed(1),
            output_type="latent",
        ).images
        latents[name] = np.asarray(latents[name], dtype=np.float32)
    theirs = latents["diffusers"]
    assert np.linalg.norm(latents["optimum"] - theirs) / np.linalg.norm(theirs) < LATENT_RTOL


def _diffusers_timestep_cond(reference: LatentConsistencyModelPipeline, guidance: float) -> np.ndarray:
    """What LatentConsistencyModelPipeline feeds its UNet as timestep_cond at this guidance scale."""
    fed: list[np.ndarray] = []

    def record(module, args, kwargs) -> None:
        fed.append(kwargs["timestep_cond"].numpy().copy())

    hook = reference.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        reference(
            PROMPT,
            num_inference_steps=1,
            guidance_scale=guidance,
            height=SIZE,
            width=SIZE,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        hook.remove()
    assert len(fed) == 1
    return fed[0]


def test_guidance_reaches_the_unet_as_diffusers_embeds_it(
    pipeline: Pipeline, reference: LatentConsistencyModelPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--guidance w reaches the UNet's timestep_cond as LatentConsistencyModelPipeline feeds it (its
    embedding of w - 1), at the folder's default (8.5) and at another scale, on every step."""
    fed: list[np.ndarray] = []
    run = ort.InferenceSession.run

    def recording(session, outputs, feeds, *args, **kwargs):
        if "timestep_cond" in feeds:
            fed.append(np.array(feeds["timestep_cond"]))
        return run(session, outputs, feeds, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", recording)
    default = pipeline.generate(PROMPT, seed=3)
    assert (default.settings[0].sampler, default.settings[0].steps) == ("lcm", 4)
    assert default.settings[0].guidance_scale == 8.5
    at_default, fed[:] = list(fed), []
    other = pipeline.generate(PROMPT, seed=3, guidance_scale=2.0)
    at_other = list(fed)
    for guidance, ours in ((8.5, at_default), (2.0, at_other)):
        theirs = _diffusers_timestep_cond(reference, guidance)
        assert len(ours) == 4, "one UNet pass a step"
        for step in ours:
            np.testing.assert_allclose(step, theirs, rtol=0, atol=GUIDANCE_EMBEDDING_ATOL)
    difference = np.abs(np.asarray(default.images[0], float) - np.asarray(other.images[0], float))
    assert difference.mean() > 1, "the guidance shows in the picture"


def test_a_negative_prompt_is_reported_ignored(pipeline: Pipeline, lcm_folder: Path, tmp_path: Path) -> None:
    with pytest.warns(NegativePromptIgnoredWarning, match="under an LCM UNet"):
        with_negative = pipeline.generate(PROMPT, "blurry", seed=3, steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NegativePromptIgnoredWarning)
        without = pipeline.generate(PROMPT, seed=3, steps=2)
    assert np.array_equal(np.asarray(with_negative.images[0]), np.asarray(without.images[0]))
    out = tmp_path / "out.png"
    arguments = [PROMPT, "--model", lcm_folder, "--negative", "blurry", "--steps", 1, "--out", out]
    result = CliRunner().invoke(main, [str(argument) for argument in arguments])
    assert result.exit_code == 0, result.output
    assert "Warning: the negative prompt is ignored under an LCM UNet" in result.stderr


def test_a_config_that_disagrees_with_the_graph_is_refused(lcm_folder: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(lcm_folder, tmp_path / "copy"))
    config_path = copy / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["time_cond_proj_dim"] = None
    config_path.write_text(json.dumps(config))
    (copy / "sdexport_manifest.json").unlink()  # which would refuse the edited config by its size
    with pytest.raises(ModelFolderError, match="time_cond_proj_dim=None but the unet graph's timestep_cond"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the folder is not verified without its manifest
            Pipeline.load(copy, provider="cpu")
