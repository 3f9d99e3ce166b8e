"""int8 for CPUs: dynamic quantization of the matrix products with constant weights, and optionally
int8 storage of the convolution weights.

Only MatMul is quantized dynamically (sdexport.export.matmul_int8): quantizing the convolutions too
(ConvInteger) made the SD 1.5 UNet 2.4x slower on this machine's CPU, while MatMul-only int8 ran 1.3x
faster than float32. The compact form also keeps the convolution weights in int8
(sdexport.export.conv_weights_int8) in an external data file that onnxruntime memory-maps: the SD 1.5
UNet's weights shrink from 2.6 to 0.86 GB, which is what sdrun's low-memory mode needs, for ~13% more
time per step at 512x512 (BENCHMARKS.md).
"""

from pathlib import Path

import onnx

from sdexport.export.conv_weights_int8 import quantize_conv_weights
from sdexport.export.graph_files import save_graph
from sdexport.export.matmul_int8 import quantize_matmuls


def quantize_int8(source: Path, destination: Path, compact: bool = False) -> None:
    """Write the int8 version of the float32 graph at `source` to `destination`; `compact`: with int8
    convolution weights too, the weights in an external data file."""
    model = onnx.load(source)
    quantize_matmuls(model)
    if compact:
        quantize_conv_weights(model)
    save_graph(model, destination, external=compact)
