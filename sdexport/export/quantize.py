"""int8 for CPUs: dynamic quantization of the matrix products with constant weights.

Only MatMul: quantizing the convolutions too (ConvInteger) made the SD 1.5 UNet 2.4x slower on this
machine's CPU, while MatMul-only int8 ran 1.2x faster than float32. Attention's activation-by-activation
products (Q K^T, softmax V) stay float32 (MatMulConstBOnly), as their operands have no fixed range.
"""

import logging
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from sdexport.export.graph_files import GRAPH_FILE, save_graph


def quantize_int8(source: Path, destination: Path) -> None:
    """Write the int8 version of the float32 graph at `source` to `destination`."""
    with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
        quantized = Path(scratch) / GRAPH_FILE
        # The quantizer cannot tell the output's size in advance: write it with external data, then let
        # save_graph pick one file or two. Its root-logger advice to preprocess first is silenced: the
        # int8 graphs are checked against PyTorch instead.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            _quantize(source, quantized)
        finally:
            root.setLevel(level)
        save_graph(onnx.load(quantized), destination)


def _quantize(source: Path, destination: Path) -> None:
    quantize_dynamic(
        source,
        destination,
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    )
