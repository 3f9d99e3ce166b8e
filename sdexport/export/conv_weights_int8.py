"""int8 storage of convolution weights: each constant Conv weight kept as int8 with one scale per output
channel, turned back into float32 by a DequantizeLinear node right before its Conv.

Why: the SD 1.5 UNet holds 589 M convolution weights (2.36 GB in float32) beside 270 M in its matrix
products, so quantizing the MatMuls alone leaves a 2.6 GB graph. Dynamic quantization of the
convolutions (ConvInteger) made the UNet 2.4x slower; this weight-only form keeps the arithmetic in
float32 (activations are never quantized) and costs one dequantization per weight per call, while the
weights take a quarter of the memory. onnxruntime keeps DequantizeLinear out of constant folding, so the
int8 weights stay int8 in the session; run it with ExecutionOrder.PRIORITY_BASED so that each float
weight is made just before its Conv rather than all at once.

Symmetric quantization (sdexport.export.int8_weights), one scale per output channel.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sdexport.export.int8_weights import OwnedConstants, symmetric_int8

# Convolutions smaller than this (the UNet's first and last, a few thousand weights) are not worth a node.
MIN_WEIGHTS = 4096
# The dequantized float32 weight of a Conv exists whole while it runs, and onnxruntime's CPU Conv holds a
# second weight-sized buffer when its output is small (the SD 1.5 UNet's 8x8 and 16x16 levels): 2 x 112 MB
# for the largest. Slicing the output channels into Convs of at most this many weights (16 MB in float32)
# bounds both: SD 1.5 UNet call at 512x512, peak 1567 MiB whole, 1464 in slices of 8 M, 1438 of 4 M.
MAX_CHUNK_WEIGHTS = 4 * 2**20


def quantize_conv_weights(model: onnx.ModelProto, max_chunk_weights: int = MAX_CHUNK_WEIGHTS) -> int:
    """Replace the float32 constant weight of every large Conv in `model` (weights loaded) by int8 plus a
    DequantizeLinear; returns how many. A weight shared with other nodes is left alone. A Conv with more
    than `max_chunk_weights` weights becomes several, each over a slice of the output channels, joined by
    a Concat."""
    graph = model.graph
    owned_constant = OwnedConstants(graph).get
    nodes = []
    count = 0
    for node in graph.node:
        weight = owned_constant(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or np.prod(weight.dims) < MIN_WEIGHTS:
            nodes.append(node)
            continue
        has_bias = len(node.input) > 2 and bool(node.input[2])
        bias = owned_constant(node.input[2]) if has_bias else None
        grouped = any(attr.name == "group" and attr.i != 1 for attr in node.attribute)
        chunks = -(-int(np.prod(weight.dims)) // max_chunk_weights)
        graph.initializer.remove(weight)
        if chunks == 1 or grouped or (has_bias and bias is None):
            nodes += [_dequantize(graph, node.input[1], numpy_helper.to_array(weight)), node]
        else:
            if bias is not None:
                graph.initializer.remove(bias)
            nodes += _sliced(graph, node, numpy_helper.to_array(weight),
                             numpy_helper.to_array(bias) if bias is not None else None, chunks)
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _dequantize(graph: onnx.GraphProto, name: str, weight: np.ndarray) -> onnx.NodeProto:
    """The DequantizeLinear that makes `name` from its int8 form, whose initializers it adds to `graph`."""
    quantized, scale = symmetric_int8(weight, axis=0)
    graph.initializer.extend(
        [
            numpy_helper.from_array(quantized, f"{name}_int8"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero_point"),
        ]
    )
    return helper.make_node(
        "DequantizeLinear",
        [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
        [name],
        name=f"{name}_dequantize",
        axis=0,
    )


def _sliced(
    graph: onnx.GraphProto, conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None, chunks: int
) -> list[onnx.NodeProto]:
    """`conv` as `chunks` Convs over slices of its output channels, each with its own dequantized weight,
    concatenated into the original output."""
    nodes, outputs = [], []
    for i, channels in enumerate(np.array_split(np.arange(len(weight)), chunks)):
        inputs = [conv.input[0], f"{conv.input[1]}_{i}"]
        if bias is not None:
            inputs.append(f"{conv.input[2]}_{i}")
            graph.initializer.append(numpy_helper.from_array(bias[channels], inputs[2]))
        part = helper.make_node("Conv", inputs, [f"{conv.output[0]}_{i}"], name=f"{conv.name}_{i}")
        part.attribute.extend(conv.attribute)
        nodes += [_dequantize(graph, inputs[1], weight[channels]), part]
        outputs.append(part.output[0])
    nodes.append(helper.make_node("Concat", outputs, list(conv.output), name=f"{conv.name}_concat", axis=1))
    return nodes
