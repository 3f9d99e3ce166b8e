"""Model folders derived from the built ones, each differing in one optimisation, for BENCHMARKS.md:

    python benchmarks/variants.py [--work build/bench]

- sdrun-fp32-fused/, sdrun-int8-fused/: when a build left attention unfused, its graphs with attention
  fused (the weights files shared with the build)
- sdrun-int8-convw/: the (fused) int8 UNet with its convolution weights in int8 too, external data
- sdrun-int8-convw-onefile/: the same UNet in one file (no memory-mapped weights)
Unchanged files are hard links to the source folder's (external data files: copies); the manifest is left
out (its checksums would not match), so sdrun reads these folders as it reads optimum's.
"""

import argparse
import os
import shutil
from pathlib import Path

import onnx

from sdexport.export.attention_fusion import FUSED_OP, fuse_attention
from sdexport.export.conv_weights_int8 import quantize_conv_weights
from sdexport.export.graph_files import EXTERNAL_DATA_FILE, GRAPH_FILE

MANIFEST = "sdexport_manifest.json"


def _linked_copy(source: Path, target: Path, skip: set[str]) -> None:
    """`source` as `target`, every file a hard link, leaving out the top-level entries in `skip`."""
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if relative.parts[0] in skip or path.is_dir():
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target / relative)


def _is_fused(folder: Path) -> bool:
    graph = onnx.load(folder / "unet" / GRAPH_FILE, load_external_data=False)
    return any(node.op_type == FUSED_OP for node in graph.graph.node)


def fused_variant(source: Path, target: Path) -> None:
    """Every graph of `source` with its attention fused; the weights are not rewritten."""
    _linked_copy(source, target, {MANIFEST, "unet", "vae_decoder", "vae_encoder"})
    for component in ("unet", "vae_decoder", "vae_encoder"):
        (target / component).mkdir()
        for path in (source / component).iterdir():
            # onnx refuses external data with several hard links (a "hardlink attack"): copy that one.
            if path.name == EXTERNAL_DATA_FILE:
                shutil.copyfile(path, target / component / path.name)
            elif path.name != GRAPH_FILE:
                os.link(path, target / component / path.name)
        graph = onnx.load(source / component / GRAPH_FILE, load_external_data=False)
        fuse_attention(graph, source / component)
        onnx.save_model(graph, target / component / GRAPH_FILE)


def convw_variant(source: Path, target: Path, external: bool) -> None:
    """`source` with its UNet's convolution weights in int8, in one file or with external data."""
    _linked_copy(source, target, {MANIFEST, "unet"})
    (target / "unet").mkdir()
    shutil.copy(source / "unet" / "config.json", target / "unet" / "config.json")
    graph = onnx.load(source / "unet" / GRAPH_FILE)
    count = quantize_conv_weights(graph)
    onnx.save_model(
        graph, target / "unet" / GRAPH_FILE, save_as_external_data=external, location=EXTERNAL_DATA_FILE
    )
    print(f"{target.name}: {count} convolutions in int8", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("build/bench"))
    work = parser.parse_args().work
    for build in ("sdrun-fp32", "sdrun-int8"):
        if not _is_fused(work / build) and not (work / f"{build}-fused").is_dir():
            fused_variant(work / build, work / f"{build}-fused")
    int8 = work / "sdrun-int8-fused" if (work / "sdrun-int8-fused").is_dir() else work / "sdrun-int8"
    for name, external in (("sdrun-int8-convw", True), ("sdrun-int8-convw-onefile", False)):
        if not (work / name).is_dir():
            convw_variant(int8, work / name, external)


if __name__ == "__main__":
    main()
