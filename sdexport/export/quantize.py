"""int8 for CPUs: dynamic quantization of the matrix products with constant weights, and optionally
int8 storage of the convolution weights.

Only MatMul is quantized dynamically: quantizing the convolutions too (ConvInteger) made the SD 1.5 UNet
2.4x slower on this machine's CPU, while MatMul-only int8 ran 1.2x faster than float32. Attention's
activation-by-activation products (Q K^T, softmax V) stay float32 (MatMulConstBOnly), as their operands
have no fixed range. The compact form also keeps the convolution weights in int8
(sdexport.export.conv_weights_int8) in an external data file that onnxruntime memory-maps: the SD 1.5
UNet's weights shrink from 2.6 to 0.86 GB, which is what sdrun's low-memory mode needs, for ~13% more
time per step at 512x512 (BENCHMARKS.md).
"""

import logging
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from sdexport.export.conv_weights_int8 import quantize_conv_weights
from sdexport.export.graph_files import GRAPH_FILE, save_graph


def quantize_int8(source: Path, destination: Path, compact: bool = False) -> None:
    """Write the int8 version of the float32 graph at `source` to `destination`; `compact`: with int8
    convolution weights too, the weights in an external data file."""
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
        model = onnx.load(quantized)
        if compact:
            quantize_conv_weights(model)
        save_graph(model, destination, external=compact)


def _quantize(source: Path, destination: Path) -> None:
    quantize_dynamic(
        source,
        destination,
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    )
