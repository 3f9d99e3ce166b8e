"""Our TAESD, loaded from the files people have, against diffusers' AutoencoderTiny with the same weights.

Conventions checked on the way: our (madebyollin's) decoder gives [0, 1] where diffusers' gives [-1, 1],
and our encoder takes [0, 1] where diffusers' takes [-1, 1]; both take and give latents at the diffusion
model's scale (diffusers' scaling_factor is 1.0).
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sd_reference import rel_err
from taesd_reference import madebyollin_state_dicts, random_autoencoder_tiny, save_madebyollin_files

from sdexport.checkpoints import CheckpointError
from sdexport.checkpoints.taesd_files import LoadedTAESD, load_taesd

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    return random_autoencoder_tiny()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, reference) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("taesd")
    reference.save_pretrained(root / "diffusers")
    decoder, encoder = save_madebyollin_files(reference, root / "madebyollin")
    return {"diffusers": [root / "diffusers"], "madebyollin": [decoder, encoder]}


@pytest.fixture(scope="module", params=["diffusers", "madebyollin"])
def loaded(request: pytest.FixtureRequest, files: dict[str, list[Path]]) -> LoadedTAESD:
    return load_taesd(files[request.param])


def _decode_error(loaded: LoadedTAESD, reference) -> float:
    latent = torch.randn(2, 4, 9, 13, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        ours = loaded.model.decoder(latent) * 2 - 1
        ref = reference.decode(latent).sample
    assert ours.shape == ref.shape == (2, 3, 72, 104)
    return rel_err(ours, ref)


def test_decode_matches_diffusers(loaded: LoadedTAESD, reference) -> None:
    assert _decode_error(loaded, reference) < TOLERANCE


def test_encode_matches_diffusers(loaded: LoadedTAESD, reference) -> None:
    image = torch.rand(2, 3, 64, 40, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        ours = loaded.model.encoder((image + 1) / 2)
        ref = reference.encode(image).latents
    assert ours.shape == ref.shape == (2, 4, 8, 5)
    assert rel_err(ours, ref) < TOLERANCE


def test_one_perturbed_weight_fails_the_comparison(files: dict[str, list[Path]], reference) -> None:
    """The tolerance has power: a single convolution 1% off is far past it."""
    loaded = load_taesd(files["madebyollin"])
    with torch.no_grad():
        loaded.model.decoder[8].conv[2].weight.mul_(1.01)
    assert _decode_error(loaded, reference) > 10 * TOLERANCE


def test_decoder_alone_loads_without_encoder(files: dict[str, list[Path]]) -> None:
    loaded = load_taesd(files["madebyollin"][:1])
    assert loaded.model.encoder is None and loaded.layout == "madebyollin"


def test_sixteen_channel_taesd_reads_its_latent_channels(tmp_path: Path, reference) -> None:
    """SD3's and FLUX's TAESDs (taesd3_, taef1_) take 16 channels; the config follows the file."""
    decoder, _ = madebyollin_state_dicts(reference)
    decoder["1.weight"] = torch.zeros(64, 16, 3, 3)
    save_file(decoder, tmp_path / "taef1_decoder.safetensors")
    assert load_taesd([tmp_path / "taef1_decoder.safetensors"]).model.config.latent_channels == 16


def test_a_full_vae_is_refused_by_name(tmp_path: Path) -> None:
    save_file({"decoder.conv_in.weight": torch.zeros(1)}, tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match=r"not a TAESD file .*'decoder.conv_in.weight'"):
        load_taesd([tmp_path / "vae.safetensors"])


def test_missing_layers_are_named(tmp_path: Path, reference) -> None:
    decoder, _ = madebyollin_state_dicts(reference)
    del decoder["19.bias"]
    save_file(decoder, tmp_path / "taesd_decoder.safetensors")
    with pytest.raises(CheckpointError, match=r"missing 19.bias"):
        load_taesd([tmp_path / "taesd_decoder.safetensors"])


def test_an_encoder_alone_is_refused(files: dict[str, list[Path]]) -> None:
    with pytest.raises(CheckpointError, match="no decoder"):
        load_taesd(files["madebyollin"][1:])
