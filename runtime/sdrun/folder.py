"""Open an exported model folder (the HF/optimum ONNX layout, see DESIGN.md) and check it is whole.

When the folder carries `sdexport_manifest.json`, every file it lists is checked against it: sizes
always, SHA-256 digests unless the caller opts out (hashing reads each file once more, about a second
per gigabyte, which is small next to building the onnxruntime sessions from the same files).
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrun.errors import ModelFolderError

MANIFEST_FILE = "sdexport_manifest.json"
# Manifest key: the multiple that latent sides must be of for the UNet graph (1 when it resizes each
# upsampling to its skip connection); folders without it get the one their UNet's depth implies.
LATENT_MULTIPLE_KEY = "latent_size_multiple"
GRAPH_FILE = "model.onnx"
CONFIG_FILE = "config.json"
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"
TOKENIZER_DIR = "tokenizer"
# Needed for text-to-image; vae_encoder is needed only for image-to-image and is checked when used.
REQUIRED_GRAPHS = ("text_encoder", "unet", "vae_decoder")
REQUIRED_FILES = (
    Path("vae_decoder") / CONFIG_FILE,
    SCHEDULER_CONFIG,
    Path(TOKENIZER_DIR) / "vocab.json",
    Path(TOKENIZER_DIR) / "merges.txt",
)
_HASH_CHUNK = 1 << 22


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"cannot read {path}: {error}; export the model folder again") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} is not a JSON object; export the model folder again")
    return data


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelFolder:
    """A model folder whose required files are present (and match its manifest, when it has one)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def graph(self, component: str) -> Path:
        """The ONNX graph of `component` (text_encoder, unet, vae_encoder, vae_decoder)."""
        path = self.path / component / GRAPH_FILE
        if not path.is_file():
            raise ModelFolderError(
                f"model folder {self.path} has no {component} ({component}/{GRAPH_FILE} is missing); "
                "export the model folder again"
            )
        return path

    def config(self, component: str) -> dict[str, Any]:
        """The diffusers config.json of `component`; empty when the folder has none."""
        path = self.path / component / CONFIG_FILE
        return _read_json(path) if path.is_file() else {}

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)

    def scheduler_config(self) -> dict[str, Any]:
        return _read_json(self.path / SCHEDULER_CONFIG)

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR


def check_manifest(folder: Path, verify_checksums: bool = True) -> None:
    """Check every file listed in the folder's manifest (if any): present, same size, same SHA-256."""
    manifest = read_manifest(folder)
    if not manifest:
        return
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise ModelFolderError(
            f'{folder / MANIFEST_FILE} has no "files" table of sizes and digests; '
            "export the model folder again"
        )
    for relpath, expected in files.items():
        path = folder / relpath
        damaged = f"model folder {folder} is damaged: {relpath}"
        if not path.is_file():
            raise ModelFolderError(f"{damaged} is missing; export the model folder again")
        size = path.stat().st_size
        if size != expected.get("size"):
            raise ModelFolderError(
                f"{damaged} has {size} bytes, the manifest says {expected.get('size')}; "
                "export the model folder again"
            )
        if verify_checksums and sha256_of(path) != expected.get("sha256"):
            raise ModelFolderError(
                f"{damaged} fails its SHA-256 check against the manifest; export the model folder again"
            )


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's sdexport manifest; empty for a folder without one (optimum's, say)."""
    path = folder / MANIFEST_FILE
    return _read_json(path) if path.is_file() else {}


def open_model_folder(path: str | Path, verify_checksums: bool = True) -> ModelFolder:
    """Check that `path` is a complete model folder and return it; any problem is a ModelFolderError."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist")
    model = ModelFolder(folder)
    for component in REQUIRED_GRAPHS:
        model.graph(component)
    for relpath in REQUIRED_FILES:
        if not (folder / relpath).is_file():
            raise ModelFolderError(
                f"model folder {folder} is incomplete: {relpath.as_posix()} is missing; "
                "export the model folder again"
            )
    check_manifest(folder, verify_checksums)
    return model
