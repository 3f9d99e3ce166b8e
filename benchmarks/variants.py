"""Model folders derived from the int8-compact build, each differing from it in one tool, for the memory
ablation in BENCHMARKS.md:

    python benchmarks/variants.py [--work build/bench]

- sdrun-int8-compact-onefile/: the same UNet in one file (weights not memory-mapped)
- sdrun-int8-compact-whole/: the int8 build's UNet with int8 convolution weights, none sliced
Unchanged files are hard links to the source folder's; the manifest is left out (its checksums would not
match), so sdrun reads these folders as it reads optimum's.
"""

import argparse
import os
import shutil
from pathlib import Path

import onnx

from sdexport.export.conv_weights_int8 import quantize_conv_weights
from sdrun.folder_layout import GRAPH_FILE

MANIFEST = "sdexport_manifest.json"
NEVER_SLICED = 2**40


def _with_unet(source: Path, target: Path, unet: onnx.ModelProto, external: bool) -> None:
    """`source` as `target` (hard links), except for its UNet graph: `unet`."""
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if relative.parts[0] in (MANIFEST, "unet") or path.is_dir():
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target / relative)
    (target / "unet").mkdir()
    shutil.copy(source / "unet" / "config.json", target / "unet" / "config.json")
    onnx.save_model(
        unet, target / "unet" / GRAPH_FILE, save_as_external_data=external, location=f"{GRAPH_FILE}.data"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("build/bench"))
    work = parser.parse_args().work
    if not (work / "sdrun-int8-compact-onefile").is_dir():
        unet = onnx.load(work / "sdrun-int8-compact" / "unet" / GRAPH_FILE)
        _with_unet(work / "sdrun-int8-compact", work / "sdrun-int8-compact-onefile", unet, external=False)
    if not (work / "sdrun-int8-compact-whole").is_dir():
        unet = onnx.load(work / "sdrun-int8" / "unet" / GRAPH_FILE)
        quantize_conv_weights(unet, max_chunk_weights=NEVER_SLICED)
        _with_unet(work / "sdrun-int8", work / "sdrun-int8-compact-whole", unet, external=True)


if __name__ == "__main__":
    main()
