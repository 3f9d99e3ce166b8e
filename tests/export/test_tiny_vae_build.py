"""`build_folder(..., tiny_vae=...)`: TAESD's graphs beside the full VAE's, under vae_decoder's contract,
against diffusers' AutoencoderTiny holding the same (random) weights."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from export_helpers import Built
from safetensors.torch import save_file
from taesd_reference import madebyollin_state_dicts, random_autoencoder_tiny, save_madebyollin_files

from sdexport.checkpoints import LoadedModel
from sdexport.checkpoints.taesd_files import load_taesd
from sdexport.cli import main
from sdexport.export.errors import BuildError
from sdexport.export.folder import BuildOptions, build_folder
from sdrun.folder import sha256_of

SCALING_FACTOR = 0.18215  # the tiny pipeline's VAE config (diffusers' default)


@pytest.fixture(scope="module")
def reference():
    return random_autoencoder_tiny(seed=3)


@pytest.fixture(scope="module")
def taesd_files(tmp_path_factory: pytest.TempPathFactory, reference) -> tuple[Path, Path]:
    return save_madebyollin_files(reference, tmp_path_factory.mktemp("taesd"))


@pytest.fixture(scope="module")
def built_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_loaded: LoadedModel, taesd_files) -> Built:
    folder = tmp_path_factory.mktemp("built-tiny-vae") / "tiny"
    log: list[str] = []
    build_folder(tiny_loaded, folder, BuildOptions(), log=log.append, tiny_vae=load_taesd(taesd_files))
    return Built(folder, log, tiny_loaded)


def _run(folder: Path, component: str, feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(folder / component / "model.onnx")
    (name,) = [node.name for node in session.get_inputs()]
    return session.run(None, {name: feed})[0]


def test_folder_has_the_tiny_graphs_configs_and_manifest_entry(built_tiny: Built, taesd_files) -> None:
    manifest = json.loads((built_tiny.folder / "sdexport_manifest.json").read_text())
    for component in ("vae_decoder_tiny", "vae_encoder_tiny"):
        assert f"{component}/model.onnx" in manifest["files"]
        config = json.loads((built_tiny.folder / component / "config.json").read_text())
        assert config["_class_name"] == "AutoencoderTiny"
        assert config["scaling_factor"] == SCALING_FACTOR  # the units its latent_sample is in
        assert manifest["components"][component]["validation"]["checks"]
    assert manifest["components"]["vae_decoder_tiny"]["inputs"][0]["name"] == "latent_sample"
    assert manifest["components"]["vae_encoder_tiny"]["outputs"][0]["name"] == "latent_sample"
    assert manifest["tiny_vae"] == {
        "layout": "madebyollin",
        "files": [{"name": path.name, "sha256": sha256_of(path)} for path in taesd_files],
    }
    # The full VAE is still there, and diffusers' pipeline index does not name the extra graphs.
    assert (built_tiny.folder / "vae_decoder" / "model.onnx").is_file()
    assert "vae_decoder_tiny" not in (built_tiny.folder / "model_index.json").read_text()


def test_tiny_decoder_graph_is_autoencoder_tiny_decode(built_tiny: Built, reference) -> None:
    """The graph takes what vae_decoder takes (latents / scaling factor) and gives [-1, 1], as diffusers'
    pipelines get from AutoencoderTiny.decode on the diffusion model's latents."""
    latents = torch.randn(2, 4, 9, 13, generator=torch.Generator().manual_seed(4))
    pixels = _run(built_tiny.folder, "vae_decoder_tiny", (latents / SCALING_FACTOR).numpy())
    with torch.no_grad():
        expected = reference.decode(latents).sample.numpy()
    np.testing.assert_allclose(pixels, expected, atol=1e-4, rtol=1e-4)


def test_tiny_encoder_graph_is_autoencoder_tiny_encode(built_tiny: Built, reference) -> None:
    image = torch.rand(1, 3, 72, 40, generator=torch.Generator().manual_seed(5)) * 2 - 1
    latent = _run(built_tiny.folder, "vae_encoder_tiny", image.numpy())
    with torch.no_grad():
        expected = reference.encode(image).latents.numpy()
    np.testing.assert_allclose(latent * SCALING_FACTOR, expected, atol=1e-4, rtol=1e-4)


def test_optimum_still_reads_the_folder(built_tiny: Built) -> None:
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    pipeline = ORTStableDiffusionPipeline.from_pretrained(built_tiny.folder)
    assert pipeline.vae_decoder is not None


def test_taesd_for_other_latents_is_refused_before_exporting(
    tmp_path: Path, tiny_loaded: LoadedModel, reference
) -> None:
    decoder, _ = madebyollin_state_dicts(reference)
    decoder["1.weight"] = torch.zeros(64, 16, 3, 3)  # taef1_/taesd3_: 16 latent channels
    save_file(decoder, tmp_path / "taef1_decoder.safetensors")
    tiny = load_taesd([tmp_path / "taef1_decoder.safetensors"])
    with pytest.raises(BuildError, match="16-channel latents"):
        build_folder(tiny_loaded, tmp_path / "out", BuildOptions(), log=lambda line: None, tiny_vae=tiny)
    assert not (tmp_path / "out").exists()


def test_inspect_shows_the_tiny_graphs(built_tiny: Built) -> None:
    result = CliRunner().invoke(main, ["inspect", str(built_tiny.folder)])
    assert result.exit_code == 0, result.output
    for component in ("vae_decoder_tiny", "vae_encoder_tiny"):
        assert f"  {component}  fp32  " in result.output
    assert "-> latent_sample: float32 [batch, 4, " in result.output  # the tiny encoder's output
    assert result.output.count("validated (") == 6
