"""A readable account of a model folder: ours (with its manifest) or any Hugging Face ONNX export."""

from pathlib import Path
from typing import Any

from sdexport.export.errors import BuildError
from sdexport.export.manifest import graph_signature, read_manifest
from sdexport.export.specs import COMPONENTS
from sdrun.folder_layout import (
    CLIP_SKIP_KEY,
    COMPONENTS_KEY,
    CREATED_KEY,
    EMBEDDINGS_KEY,
    FUSED_ATTENTIONS_KEY,
    GRAPH_FILE,
    LORAS_KEY,
    MODEL_INDEX_FILE,
    OPSET_KEY,
    PRECISION_KEY,
    QUANTIZATION_KEY,
    SOURCE_KEY,
    TARGET_KEY,
    TINY_VAE_DECODER,
    TINY_VAE_ENCODER,
    VALIDATION_KEY,
    VERSIONS_KEY,
)


def describe_folder(folder: Path) -> str:
    if not (folder / MODEL_INDEX_FILE).is_file():
        raise BuildError(f"{folder} is not a model folder (it has no {MODEL_INDEX_FILE})")
    manifest = read_manifest(folder) or {}
    try:
        return _describe(folder, manifest)
    except (AttributeError, TypeError, KeyError, ValueError, ZeroDivisionError) as error:
        # A manifest is a stranger's JSON: any value of a wrong type means a damaged one.
        raise BuildError(
            f"{folder}: its manifest is damaged ({type(error).__name__}: {str(error)[:100]}); "
            "export the model folder again"
        ) from None


def _describe(folder: Path, manifest: dict[str, Any]) -> str:
    lines = [f"{folder}"]
    lines += _summary(manifest) if manifest else ["  no sdexport manifest (not built by sdexport)"]
    components = manifest.get(COMPONENTS_KEY, {})
    for spec in COMPONENTS:
        graph = folder / spec.name / GRAPH_FILE
        if graph.is_file():
            lines += _component(spec.name, graph, components.get(spec.name, {}))
        else:
            lines.append(f"  {spec.name}: none")
    # The optional TAESD graphs (`sdexport build --tiny-vae`), shown when the folder has them.
    for name in (TINY_VAE_DECODER, TINY_VAE_ENCODER):
        graph = folder / name / GRAPH_FILE
        if graph.is_file():
            lines += _component(name, graph, components.get(name, {}))
    files = [path for path in folder.rglob("*") if path.is_file()]
    lines.append(f"  {len(files)} files, {format_size(sum(path.stat().st_size for path in files))} in all")
    return "\n".join(lines)


def _summary(manifest: dict[str, Any]) -> list[str]:
    source = manifest.get(SOURCE_KEY, {})
    versions = manifest.get(VERSIONS_KEY, {})
    tools = ", ".join(f"{name} {version}" for name, version in versions.items())
    return [
        f"  built {manifest.get(CREATED_KEY)} from {source.get('path')}",
        f"    {source.get('kind')} checkpoint, weights: {source.get('weights')}, "
        f"stored as {source.get('dtype')}, sha256 {str(source.get('sha256'))[:16]}...",
        *(
            f"    LoRA merged: {lora['file']} at scale {lora['scale']} ({lora['layout']}, {lora['layers']} "
            f"layers), sha256 {str(lora['sha256'])[:16]}..."
            for lora in manifest.get(LORAS_KEY, [])
        ),
        *(
            f"    embedding added: {embedding['file']} as {embedding['token']} ({embedding['vectors']} "
            f"vectors, token ids {embedding['token_ids'][0]}-{embedding['token_ids'][-1]}), "
            f"sha256 {str(embedding['sha256'])[:16]}..."
            for embedding in manifest.get(EMBEDDINGS_KEY, [])
        ),
        *(
            [f"    clip skip {manifest[CLIP_SKIP_KEY]} (the text encoder's output is that layer from last)"]
            if manifest.get(CLIP_SKIP_KEY, 1) > 1
            else []
        ),
        f"  precision {manifest.get(PRECISION_KEY)}, quantization {manifest.get(QUANTIZATION_KEY)}, "
        f"opset {manifest.get(OPSET_KEY)}, target {manifest.get(TARGET_KEY, 'onnxruntime')}",
        f"  {tools}",
    ]


def _component(name: str, graph: Path, recorded: dict[str, Any]) -> list[str]:
    files = [graph, graph.with_name(graph.name + ".data")]
    size = sum(path.stat().st_size for path in files if path.is_file())
    precision = recorded.get(PRECISION_KEY, "")
    fused = recorded.get(FUSED_ATTENTIONS_KEY)
    attention = f"  {fused} attentions fused" if fused else ""
    lines = [f"  {name}  {precision}  {format_size(size)}{attention}".rstrip()]
    signature = graph_signature(graph)
    for kind, arrow in (("inputs", "<-"), ("outputs", "->")):
        for value in signature[kind]:
            shape = ", ".join(str(dim) for dim in value["shape"])
            lines.append(f"    {arrow} {value['name']}: {value['dtype']} [{shape}]")
    validation = recorded.get(VALIDATION_KEY)
    if validation and validation.get("checks"):
        checks = validation["checks"]
        worst = max(checks, key=lambda check: check["max_abs_error"] / check["limit"])
        lines.append(
            f"    validated ({len(checks)} checks): worst error {worst['max_abs_error']:.1e} "
            f"against a limit of {worst['limit']:.1e}"
        )
    elif recorded:
        lines.append("    not validated (built with --skip-validation)")
    return lines


def format_size(size: int) -> str:
    """Bytes in decimal units, as file managers show them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
