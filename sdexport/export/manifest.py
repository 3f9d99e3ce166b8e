"""sdexport_manifest.json: what was built from what, with which tools, and how well it agreed with PyTorch.

The runtime reads its files table ({relative path: {"size", "sha256"}}) to refuse a damaged folder.
"""

import hashlib
import importlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx

from sdrun.folder import read_manifest as sdrun_read_manifest
from sdrun.folder import sha256_of
from sdrun.folder_layout import FILES_KEY, MANIFEST_FILE

FORMAT_VERSION = 1
_LIBRARIES = ("torch", "onnx", "onnxscript", "onnxruntime")
SOURCE_CHECKOUT = "source checkout"


def versions() -> dict[str, str]:
    """sdexport's version and those of the libraries that made the graphs, read from the modules: an
    installed distribution's name can differ from the module's (onnxruntime-gpu)."""
    found = {"sdexport": _own_version()}
    for name in _LIBRARIES:
        found[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
    return found


def _own_version() -> str:
    try:
        return metadata.version("sdexport")
    except metadata.PackageNotFoundError:  # run from a checkout on the path (`python -m sdexport`)
        return SOURCE_CHECKOUT


def source_sha256(source: Path) -> str:
    """The file's digest; for a folder, the digest of its files' relative paths and digests, in order."""
    if source.is_file():
        return sha256_of(source)
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(source).as_posix()}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file of the folder but the manifest: relative path -> size and SHA-256."""
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_of(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }


def _value_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    return {
        "name": value.name,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
        "shape": [dim.dim_param or dim.dim_value for dim in tensor.shape.dim],
    }


def graph_signature(graph: Path) -> dict[str, list[dict[str, Any]]]:
    """The graph's inputs and outputs as its file declares them: name, dtype, shape (names: dynamic axes)."""
    model = onnx.load(graph, load_external_data=False)
    return {
        "inputs": [_value_info(value) for value in model.graph.input],
        "outputs": [_value_info(value) for value in model.graph.output],
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the file table of `folder` to `manifest` and write it (call last, once every file is in place)."""
    manifest = {**manifest, FILES_KEY: file_table(folder)}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, read through sdrun's gate and bounded JSON reader; None when it has none."""
    return sdrun_read_manifest(folder) or None
