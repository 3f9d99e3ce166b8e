"""The folder contract (sdrun.folder_layout): every key of a manifest that sdexport writes is declared
there, and sdrun's typed view of it reads what was written and refuses what no build writes."""

import json
from pathlib import Path

import pytest

from sdrun import folder_layout
from sdrun.errors import ModelFolderError
from sdrun.folder import open_model_folder
from sdrun.folder_layout import (
    COMPONENTS_KEY,
    FUSED_ATTENTIONS_KEY,
    MANIFEST_FILE,
    REQUIRED_FILES,
    TINY_VAE_KEY,
    ManifestFacts,
)

DECLARED_KEYS = {value for name, value in vars(folder_layout).items() if name.endswith("_KEY")}


def test_every_manifest_key_is_declared_once(tiny_sdexport_dir: Path) -> None:
    manifest = json.loads((tiny_sdexport_dir / MANIFEST_FILE).read_text())
    declared = {name: value for name, value in vars(folder_layout).items() if name.endswith("_KEY")}
    assert len(set(declared.values())) == len(declared), "two names for one key"
    written = set(manifest)
    assert written <= DECLARED_KEYS, written - DECLARED_KEYS
    # Every top-level key is written by a plain build but the tiny VAE's (`--tiny-vae` only).
    top_level = DECLARED_KEYS - {FUSED_ATTENTIONS_KEY, TINY_VAE_KEY}
    assert top_level <= written, top_level - written
    for entry in manifest[COMPONENTS_KEY].values():
        assert FUSED_ATTENTIONS_KEY in entry
    for name in REQUIRED_FILES:
        assert (tiny_sdexport_dir / name).is_file(), name


def test_the_facts_are_what_the_build_wrote(tiny_sdexport_dir: Path) -> None:
    facts = open_model_folder(tiny_sdexport_dir).facts
    manifest = json.loads((tiny_sdexport_dir / MANIFEST_FILE).read_text())
    fused = sum(entry[FUSED_ATTENTIONS_KEY] for entry in manifest[COMPONENTS_KEY].values())
    assert fused > 0
    assert facts == ManifestFacts(
        quantization="none", target="onnxruntime", clip_skip=1, latent_multiple=1, fused_attentions=fused
    )
    assert ManifestFacts.read({}) == ManifestFacts()


def test_the_checkpoint_digest_is_a_single_files() -> None:
    """The web UI's Model hash is of a checkpoint file; a diffusers folder's digest is of its files."""
    digest = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
    assert ManifestFacts.read({"source": {"kind": "original", "sha256": digest}}).checkpoint_sha256 == digest
    assert ManifestFacts.read({"source": {"kind": "diffusers", "sha256": digest}}).checkpoint_sha256 is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quantization": "int4"}, "quantization='int4' is not one of none, int8, int8-compact"),
        ({"target": "tensorrt"}, "target='tensorrt' is not one of onnxruntime, openvino"),
        ({"clip_skip": 0}, "clip_skip"),
        ({"clip_skip": "2"}, "clip_skip"),
        ({"latent_size_multiple": 1000}, "latent_size_multiple"),
        # It is written into every PNG's text: no words but a digest.
        ({"source": {"kind": "original", "sha256": "ab" * 31 + ", Seed: 1"}}, "source.sha256"),
    ],
)
def test_values_no_build_writes_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ModelFolderError, match=message) as caught:
        ManifestFacts.read(changes)
    assert "\n" not in str(caught.value)
