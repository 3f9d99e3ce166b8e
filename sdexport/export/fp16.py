"""Half precision for the CUDA execution provider, with float32 where half precision breaks.

Inputs and outputs stay float32 (the runtime feeds the same arrays either way). Kept in float32:
- the sinusoidal timestep embedding (every node feeding Cos/Sin): float16 steps are 0.5 near t = 1000,
  which would scramble the phases t * f_i (Vaswani et al. 2017, sec. 3.5);
- InstanceNormalization (GroupNorm's core), whose variance sums squares that overflow 65504;
- with `fp32_attention` (SD 2.x), the attention: the fused MultiHeadAttention nodes, and each plain
  Softmax with the products around it. SD 2.x's attention logits overflow float16 (diffusers'
  `upcast_attention`, set in stabilityai's SD 2.1 UNet config, upcasts them for the same reason);
- onnxruntime's default list of ops without float16 kernels.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from sdexport.export.graph_files import save_graph

FP32_OPS = (*DEFAULT_OP_BLOCK_LIST, "InstanceNormalization")
_SINUSOID_OPS = ("Cos", "Sin")
_FUSED_ATTENTION = "MultiHeadAttention"
# What may stand between an attention's product and its softmax: the mask (Add), a scale (Mul, Div).
_SCORE_OPS = ("Add", "Mul", "Div")


def sinusoid_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the Cos/Sin nodes and every node they depend on."""
    producer = {output: node for node in graph.node for output in node.output}
    keep: dict[str, onnx.NodeProto] = {}
    pending = [node for node in graph.node if node.op_type in _SINUSOID_OPS]
    while pending:
        node = pending.pop()
        if node.name in keep:
            continue
        keep[node.name] = node
        pending.extend(producer[name] for name in node.input if name in producer)
    return list(keep)


def softmax_attention_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of each Softmax node, the MatMul that makes its scores (through a mask or scale) and the
    MatMul that applies it to the values."""
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep = []
    for softmax in (node for node in graph.node if node.op_type == "Softmax"):
        keep.append(softmax.name)
        keep += [node.name for node in consumers.get(softmax.output[0], []) if node.op_type == "MatMul"]
        node = producer.get(softmax.input[0])
        while node is not None and node.op_type in _SCORE_OPS:
            keep.append(node.name)
            node = next((producer[name] for name in node.input if name in producer), None)
        if node is not None and node.op_type == "MatMul":
            keep.append(node.name)
    return keep


def convert_to_fp16(source: Path, destination: Path, fp32_attention: bool = False) -> None:
    """Write the float16 version of the float32 graph at `source` to `destination`; with
    `fp32_attention`, its attention stays float32 (see the module doc)."""
    structure = onnx.load(source, load_external_data=False)
    kept = sinusoid_nodes(structure.graph)
    if fp32_attention:
        kept += softmax_attention_nodes(structure.graph)
    # A path (not a loaded model) lets the converter run shape inference on graphs past 2 GB.
    model = convert_float_to_float16(
        str(source),
        keep_io_types=True,
        op_block_list=[*FP32_OPS, *([_FUSED_ATTENTION] if fp32_attention else [])],
        node_block_list=kept,
    )
    tidy(model)
    save_graph(model, destination)


def tidy(model: onnx.ModelProto) -> None:
    """Make the converter's output a valid ONNX graph again, as strict tools (the ONNX checker) demand.

    It appends its Cast nodes at the end, out of topological order, and its value_info calls a few
    initializers that it kept in float32 (the sinusoid's constants) float16; value_info is optional, so
    those stale entries go. Before onnxruntime 1.32, it also adds one Cast per float32 consumer of a
    float16 value, all with the same name and output, which onnxruntime refuses to load: one is kept.
    """
    _drop_repeats(model.graph.node, key=lambda node: node.SerializeToString())
    _drop_repeats(model.graph.value_info, key=lambda value: value.name)
    OnnxModel(model).topological_sort()
    initializer_types = {tensor.name: tensor.data_type for tensor in model.graph.initializer}
    consistent = [
        value
        for value in model.graph.value_info
        if value.name not in initializer_types
        or initializer_types[value.name] == value.type.tensor_type.elem_type
    ]
    del model.graph.value_info[:]
    model.graph.value_info.extend(consistent)


def _drop_repeats(items: Any, key: Callable[[Any], object]) -> None:
    """Remove, in place from a repeated protobuf field, every item whose key an earlier item has."""
    seen: set[object] = set()
    kept = []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            kept.append(item)
    if len(kept) < len(items):
        copies = [type(item)() for item in kept]
        for copy, item in zip(copies, kept, strict=True):
            copy.CopyFrom(item)
        del items[:]
        items.extend(copies)
