"""Open an exported model folder (the HF/optimum ONNX layout, see DESIGN.md) and check it before use.

A model folder may come from a stranger, so before any session is created every file sdrun will read is
resolved through the one gate of sdrun.folder_files (graphs, the external data their protos name, configs,
tokenizer files, manifest entries): nothing outside the folder is ever opened, whatever onnxruntime
version is installed.

When the folder carries `sdexport_manifest.json`, every file it lists is checked against it: sizes
always, SHA-256 digests unless the caller opts out (hashing reads each file once more, about a second
per gigabyte, which is small next to building the onnxruntime sessions from the same files). A folder
without a manifest (optimum's, say) can be refused (`require_manifest`), else it is run with a warning
that nothing could be verified.
"""

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdrun.errors import ModelFolderError
from sdrun.folder_files import inside, read_json
from sdrun.folder_layout import (
    CONFIG_FILE,
    FILES_KEY,
    GRAPH_FILE,
    MANIFEST_FILE,
    REQUIRED_FILES,
    REQUIRED_GRAPHS,
    SCHEDULER_CONFIG,
    TOKENIZER_DIR,
    VOCAB_FILE,
    ManifestFacts,
)
from sdrun.onnx_refs import external_data_references

# A manifest lists a few dozen files; far more is not a folder sdexport wrote.
MAX_MANIFEST_FILES = 10_000
# The largest folder sdexport writes (SD 2.x in fp32 with the tiny VAE) is about 5.5 GB; hashing runs at
# about a gigabyte a second, so this bounds a hostile manifest's check (a 200 GB sparse file) to seconds.
MAX_FOLDER_BYTES = 32 * 2**30
_HASH_CHUNK = 1 << 22


class UnverifiedFolderWarning(UserWarning):
    """The folder has no manifest, so no file of it could be checked against one."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelFolder:
    """A model folder whose files were checked: all inside it, present, and as its manifest says."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    facts: ManifestFacts = field(default_factory=ManifestFacts)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def file(self, name: str, what: str = "file") -> Path:
        """The resolved path of the folder's file `name` (refused if it leads outside the folder)."""
        return inside(self.path, name, what)

    def has(self, name: str) -> bool:
        """Whether the folder has an entry `name` (a file or a link; `file` checks where it leads)."""
        return (self.path / name).is_symlink() or (self.path / name).exists()

    def graph(self, component: str) -> Path:
        """The ONNX graph of `component` (text_encoder, unet, vae_encoder, vae_decoder)."""
        if not self.has(f"{component}/{GRAPH_FILE}"):
            raise ModelFolderError(
                f"model folder {self.path} has no {component} ({component}/{GRAPH_FILE} is missing); "
                "export the model folder again"
            )
        return self.file(f"{component}/{GRAPH_FILE}", "graph")

    def config(self, component: str) -> dict[str, Any]:
        """The diffusers config.json of `component`; empty when the folder has none."""
        name = f"{component}/{CONFIG_FILE}"
        return read_json(self.file(name, "config")) if self.has(name) else {}

    def scheduler_config(self) -> dict[str, Any]:
        return read_json(self.file(SCHEDULER_CONFIG, "scheduler config"))

    @property
    def tokenizer_dir(self) -> Path:
        """The tokenizer folder, resolved: its files are read through the gate against it."""
        return self.file(f"{TOKENIZER_DIR}/{VOCAB_FILE}", "tokenizer file").parent

    def graph_components(self) -> list[str]:
        """Every subfolder that holds a graph, the required ones first."""
        found = [entry.name for entry in sorted(self.path.iterdir()) if (entry / GRAPH_FILE).exists()]
        return [*REQUIRED_GRAPHS, *(name for name in found if name not in REQUIRED_GRAPHS)]

    def check_graph_files(self) -> None:
        """Every graph is a file inside the folder, every external-data file its proto names is one in
        the graph's own subfolder, and each external tensor's bytes lie within its file."""
        for component in self.graph_components():
            graph = self.graph(component)
            for reference in external_data_references(graph):
                # onnxruntime reads external data relative to the graph: it must stay beside it.
                data = inside(graph.parent, reference.location, f"{component} external data")
                end = reference.offset + (reference.length or 0)
                if end > data.stat().st_size:
                    raise ModelFolderError(
                        f"model folder {self.path} is damaged: the {component} tensor {reference.tensor!r} "
                        f"lies past the end of {reference.location}; export the model folder again"
                    )


def check_manifest(folder: Path, verify_checksums: bool = True, require: bool = False) -> dict[str, Any]:
    """Check every file listed in the folder's manifest: inside the folder, present, same size and
    SHA-256; returns the manifest. A folder without one (or with an empty one) is refused with `require`,
    else warned about (UnverifiedFolderWarning)."""
    manifest = read_manifest(folder)
    if not manifest:
        unverified = (
            f"model folder {folder} has no {'usable ' if folder.joinpath(MANIFEST_FILE).exists() else ''}"
        )
        if require:
            raise ModelFolderError(f"{unverified}{MANIFEST_FILE}: its files cannot be verified")
        warnings.warn(
            f"{unverified}{MANIFEST_FILE}: nothing in it could be verified (--require-manifest refuses "
            "such folders)",
            UnverifiedFolderWarning,
            stacklevel=2,
        )
        return {}
    files = manifest.get(FILES_KEY)
    if (
        not isinstance(files, dict)
        or len(files) > MAX_MANIFEST_FILES
        or not all(isinstance(entry, dict) for entry in files.values())
    ):
        raise ModelFolderError(
            f'{folder / MANIFEST_FILE} has no "{FILES_KEY}" table of sizes and digests; '
            "export the model folder again"
        )
    # Every size first, so that a hostile folder is refused before any hashing starts.
    paths = {relpath: inside(folder, relpath, "manifest entry") for relpath in files}
    total = 0
    for relpath, path in paths.items():
        size, expected = path.stat().st_size, files[relpath].get("size")
        if size != expected:
            raise ModelFolderError(
                f"model folder {folder} is damaged: {relpath} has {size} bytes, the manifest says "
                f"{str(expected)[:40]}; export the model folder again"
            )
        total += size
    if total > MAX_FOLDER_BYTES:
        raise ModelFolderError(
            f"model folder {folder} lists {total / 2**30:.0f} GiB of files, above the "
            f"{MAX_FOLDER_BYTES // 2**30} GiB that sdrun checks (six times the largest Stable Diffusion "
            "folder): it is not one sdexport wrote"
        )
    for relpath, path in paths.items():
        if verify_checksums and sha256_of(path) != files[relpath].get("sha256"):
            raise ModelFolderError(
                f"model folder {folder} is damaged: {relpath} fails its SHA-256 check against the "
                "manifest; export the model folder again"
            )
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's sdexport manifest; empty for a folder without one (optimum's, say)."""
    present = (folder / MANIFEST_FILE).is_symlink() or (folder / MANIFEST_FILE).exists()
    return read_json(inside(folder, MANIFEST_FILE, "manifest")) if present else {}


def open_model_folder(
    path: str | Path, verify_checksums: bool = True, require_manifest: bool = False
) -> ModelFolder:
    """Check that `path` is a complete model folder whose files all lie inside it, and return it; any
    problem is a ModelFolderError."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist")
    manifest = check_manifest(folder, verify_checksums, require_manifest)
    model = ModelFolder(folder, manifest, ManifestFacts.read(manifest))
    for relpath in REQUIRED_FILES:
        model.file(relpath)
    model.check_graph_files()
    return model
